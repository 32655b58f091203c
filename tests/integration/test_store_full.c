/*
 * test_store_full.c - a full disk: the broker answers STORE_UNAVAILABLE, never
 * acknowledges what it could not store, logs the condition once, keeps
 * running, and recovers by itself when space is back.
 *
 * The store lives on a small tmpfs mounted for the test (needs root, as in
 * CI; skipped otherwise).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

typedef struct {
    int acks, unavailable, other_errors, deliveries;
    char last_id[72];
} count_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    count_t *n = arg;
    if (ev->type == MR_EVENT_ACK)
        n->acks++;
    else if (ev->type == MR_EVENT_ERROR && ev->code == MR_E_STORE_UNAVAILABLE)
        n->unavailable++;
    else if (ev->type == MR_EVENT_ERROR)
        n->other_errors++;
    else if (ev->type == MR_EVENT_DELIVERY)
        n->deliveries++;
    return 0;
}

static bool got_unavailable(void *arg)
{
    return ((count_t *)arg)->unavailable > 0;
}

typedef struct {
    mr_client_t *c;
} outbox_t;

static bool outbox_empty(void *arg)
{
    return mr_client_unacked(((outbox_t *)arg)->c) == 0;
}

typedef struct {
    count_t *n;
    int want;
} want_t;

static bool enough_deliveries(void *arg)
{
    want_t *w = arg;
    return w->n->deliveries >= w->want;
}

static void test_store_full_refuses_then_recovers(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        skip();
        return;
    }
    /* A daemon first, to learn its directory; then put its store on a tmpfs. */
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    char var[400];
    snprintf(var, sizeof var, "%s/var", d.dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", var, var);
    assert_int_equal(system(cmd), 0);
    if (mount("tmpfs", var, "tmpfs", 0, "size=400k,mode=0700") != 0) {
        mrt_daemon_cleanup(&d);
        skip();
        return;
    }
    assert_int_equal(mrt_daemon_restart(&d), 0);

    mr_client_t *a = mrt_client(&d, "t-aihua", NULL);
    assert_non_null(a);
    assert_int_equal(mr_client_wait_connected(a, 5000), 0);
    /* ~20 KB each: the tmpfs fills after a few dozen. */
    char *big = malloc(20000);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    char *json = malloc(21000);
    count_t n = {0};
    int submitted = 0;
    long long deadline = mrt_now_ms() + 20000;
    while (n.unavailable == 0 && mrt_now_ms() < deadline && submitted < 400) {
        snprintf(json, 21000,
                 "{\"destination\":\"yx-lead\",\"kind\":\"referral\",\"referral\":{\"referral_id\":"
                 "\"R-FULL-%d\",\"clinical_summary\":\"%s\"}}",
                 submitted, big);
        char err[200];
        assert_int_equal(mr_client_submit_json(a, json, NULL, err, sizeof err), 0);
        submitted++;
        mrt_poll_until(a, 20, got_unavailable, &n, on_event, &n);
    }
    printf("store_full: submitted=%d acked=%d unavailable=%d before space ran out\n", submitted,
           n.acks, n.unavailable);
    assert_true(n.unavailable > 0);
    assert_int_equal(n.other_errors, 0);
    /* It keeps running and answering, and says so once per condition. */
    char *status = mrt_operator(&d, "{\"status\":{}}");
    assert_non_null(status);
    free(status);
    int acked_before = n.acks;
    size_t waiting = mr_client_unacked(a);
    assert_true(waiting > 0); /* refused messages stay in the client's outbox */
    mrt_poll_until(a, 1500, got_unavailable, &(count_t){0}, on_event, &n);
    assert_int_equal(mrt_log_count(&d, "event=store.unavailable"), 1);

    /* Space comes back: the outbox's resends are stored and acknowledged. */
    assert_int_equal(mount("tmpfs", var, "tmpfs", MS_REMOUNT, "size=64m,mode=0700"), 0);
    outbox_t ob = {a};
    assert_true(mrt_poll_until(a, 20000, outbox_empty, &ob, on_event, &n));
    assert_true(mrt_log_count(&d, "event=store.recovered") >= 1);
    printf("store_full: after space returned acked=%d (was %d), outbox=%zu\n", n.acks,
           acked_before, mr_client_unacked(a));
    assert_int_equal(n.acks, submitted);

    /* Everything acknowledged reaches the destination, once. */
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    count_t got = {0};
    want_t w = {&got, submitted};
    assert_true(mrt_poll_until(lead, 20000, enough_deliveries, &w, on_event, &got));
    mrt_poll_until(lead, 500, enough_deliveries, &(want_t){&got, submitted + 1}, on_event, &got);
    assert_int_equal(got.deliveries, submitted);
    mr_client_destroy(&lead);
    mr_client_destroy(&a);
    free(json);
    free(big);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    assert_int_equal(umount(var), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_full_refuses_then_recovers),
    };
    return cmocka_run_group_tests_name("store_full", tests, NULL, NULL);
}
