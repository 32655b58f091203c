/*
 * test_flow.c - intake back-pressure (daemon/flow.c) on a real store and a
 * real ROUTER endpoint: while the store's queue is at the mark the endpoint
 * reads nothing (a frame waits in ZeroMQ), each pause is counted, the peak
 * kept, and the endpoint reads again once half the queue is done; since
 * when it has been listening is what a facility's silence is judged from.
 *
 * The store is held back by a write lock that the test takes on its
 * database from another connection, so the queue stays long for as long
 * as the test wants.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>
#include <zmq.h>

#include "flow.h"
#include "server.h"

typedef struct {
    server_t s;               /* only what flow.c reads: store, facility_ep, log, counters */
    FILE *logf;
    char dir[64], path[128], ep[64];
    void *dealer;
    int frames;               /* frames the endpoint handed over */
    flow_t *flow;             /* closed by the teardown, also after a failed assertion */
    sqlite3 *lock;            /* the test's write lock on the store's database */
} fx_t;

static void on_frame(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                     const size_t *sizes, size_t n_parts, int truncated)
{
    (void)rid;
    (void)rid_len;
    (void)parts;
    (void)sizes;
    (void)n_parts;
    (void)truncated;
    ((fx_t *)arg)->frames++;
}

static int setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    if (fx == NULL || uv_loop_init(&fx->s.loop) != 0)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/mr-test-flow-XXXXXX");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->path, sizeof fx->path, "%s/medroute.db", fx->dir);
    fx->logf = tmpfile();
    fx->s.log = fx->logf ? log_new(MR_LOG_INFO, fx->logf) : NULL;
    store_opts_t so = {.path = fx->path, .sync_full = false, .batch_max = 100, .batch_ms = 2};
    fx->s.store = fx->s.log ? store_new(&fx->s.loop, &so, fx->s.log) : NULL;
    fx->s.zctx = zmq_ctx_new();
    snprintf(fx->ep, sizeof fx->ep, "inproc://test-flow-%p", (void *)fx);
    endpoint_opts_t eo = {.name = "facility", .bind = fx->ep, .hard_max_bytes = 1 << 16,
                          .budget = 64};
    fx->s.facility_ep = fx->s.zctx ? endpoint_new(&fx->s.loop, fx->s.zctx, &eo, on_frame, fx,
                                                  fx->s.log)
                                   : NULL;
    fx->dealer = fx->s.zctx ? zmq_socket(fx->s.zctx, ZMQ_DEALER) : NULL;
    if (fx->s.store == NULL || fx->s.facility_ep == NULL || fx->dealer == NULL ||
        zmq_connect(fx->dealer, fx->ep) != 0)
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fx_t *fx = *state;
    if (fx->lock != NULL) {
        sqlite3_exec(fx->lock, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(fx->lock);
    }
    flow_close(&fx->flow);
    zmq_close(fx->dealer);
    endpoint_destroy(&fx->s.facility_ep);
    store_destroy(&fx->s.store);
    uv_run(&fx->s.loop, UV_RUN_DEFAULT); /* close callbacks */
    int rc = uv_loop_close(&fx->s.loop) == 0 ? 0 : -1;
    zmq_ctx_term(fx->s.zctx);
    log_destroy(&fx->s.log);
    fclose(fx->logf);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0)
        rc = -1;
    free(fx);
    return rc;
}

/* Runs loop turns for about ms milliseconds. */
static void s_turns(fx_t *fx, int ms)
{
    for (int i = 0; i < ms; i++) {
        uv_run(&fx->s.loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static void test_flow_pauses_at_the_mark_and_resumes_at_half(void **state)
{
    fx_t *fx = *state;
    flow_t *flow = fx->flow = flow_new(&fx->s.loop, &fx->s, 8);
    assert_non_null(flow);
    assert_int_equal(flow_heard_since(flow), 0); /* never paused */
    s_turns(fx, 20);                             /* the store has opened its database */

    /* Another connection holds the write lock: the store's batch waits. */
    assert_int_equal(sqlite3_open(fx->path, &fx->lock), SQLITE_OK);
    sqlite3 *lock = fx->lock;
    assert_int_equal(sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < 20; i++)
        store_tally(fx->s.store, "test_total", "", 1);
    assert_true(store_backlog(fx->s.store) >= 8);
    s_turns(fx, 5);
    assert_int_equal(fx->s.counters.v[CNT_INTAKE_PAUSED], 1);
    assert_int_equal(flow_heard_since(flow), INT64_MAX);
    assert_true(flow_peak(flow) >= 20);
    int64_t paused_at = mr_mono_ms();

    /* A frame sent now waits in ZeroMQ: no turn reads it while paused (the
     * store gives up on the lock after its busy time-out of 200 ms, so the
     * pause may end before the lock does). */
    assert_int_equal(zmq_send(fx->dealer, "hello", 5, 0), 5);
    int paused_turns = 0;
    for (int i = 0; i < 50; i++) {
        s_turns(fx, 1);
        if (flow_heard_since(flow) == INT64_MAX) {
            assert_int_equal(fx->frames, 0);
            paused_turns++;
        }
    }
    assert_true(paused_turns > 0);

    /* The lock goes: the queue drains, reading resumes, the frame comes. */
    assert_int_equal(sqlite3_exec(lock, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(lock);
    fx->lock = NULL;
    for (int i = 0; i < 3000 && (store_backlog(fx->s.store) > 0 || fx->frames == 0); i++)
        s_turns(fx, 1);
    assert_int_equal(store_backlog(fx->s.store), 0);
    assert_int_equal(fx->frames, 1);
    int64_t since = flow_heard_since(flow);
    assert_true(since >= paused_at && since <= mr_mono_ms());
    assert_int_equal(fx->s.counters.v[CNT_INTAKE_PAUSED], 1);
    flow_close(&fx->flow);
    assert_null(fx->flow);
}

static void test_flow_without_a_flow_listens_since_ever(void **state)
{
    (void)state;
    assert_int_equal(flow_heard_since(NULL), 0);
    assert_int_equal(flow_peak(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flow_pauses_at_the_mark_and_resumes_at_half, setup,
                                        teardown),
        cmocka_unit_test(test_flow_without_a_flow_listens_since_ever),
    };
    return cmocka_run_group_tests_name("flow", tests, NULL, NULL);
}
