/*
 * test_expiry.c - dead letters and bounded storage on the real daemon:
 * a message past its time-to-live moves to the dead letters and its sender
 * is told; an operator can list, retry and drop; delivered messages are
 * pruned after their retention while pending and dead ones stay.
 */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

typedef struct {
    int expired;
    uint64_t expired_seq;
    char expired_id[72];
    int deliveries;
    char delivered_id[8][72];
} events_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    events_t *e = arg;
    if (ev->type == MR_EVENT_ERROR && ev->code == MR_E_EXPIRED) {
        e->expired++;
        e->expired_seq = ev->seq;
        snprintf(e->expired_id, sizeof e->expired_id, "%s", ev->message_id);
    } else if (ev->type == MR_EVENT_DELIVERY) {
        if (e->deliveries < 8)
            snprintf(e->delivered_id[e->deliveries], sizeof e->delivered_id[0], "%s",
                     ev->message_id);
        e->deliveries++;
    }
    return 0;
}

static bool got_expired(void *arg)
{
    return ((events_t *)arg)->expired > 0;
}

static bool got_delivery(void *arg)
{
    return ((events_t *)arg)->deliveries > 0;
}

static mr_client_t *connected(mrt_daemon_t *d, const char *facility)
{
    mr_client_t *c = mrt_client(d, facility, NULL);
    assert_non_null(c);
    assert_int_equal(mr_client_wait_connected(c, 5000), 0);
    return c;
}

static void test_expiry_dead_letter_retry_drop_and_prune(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "ttl = { referral = 2; };\n"
                                          "store = { retention_days = 0; };\n"),
                     0);
    mr_client_t *lead = connected(&d, "yx-lead");
    mr_result_t res;
    assert_int_equal(mr_client_send_json(lead,
                                         "{\"destination\":\"t-lishu\",\"kind\":\"referral\","
                                         "\"priority\":\"urgent\",\"referral\":{\"referral_id\":"
                                         "\"R-EXP\"}}",
                                         &res, 5000, NULL, NULL),
                     0);
    /* Nobody takes it within its 2 s: the sender hears of it. */
    events_t ev = {0};
    assert_true(mrt_poll_until(lead, 8000, got_expired, &ev, on_event, &ev));
    assert_string_equal(ev.expired_id, res.message_id);
    assert_int_equal(ev.expired_seq, res.seq);
    assert_int_equal(mrt_counter(&d, "expired"), 1);

    /* It is listed with its reason among the dead letters, not as pending. */
    char *r = mrt_operator(&d, "{\"queue_list\":{\"dead\":true}}");
    assert_non_null(r);
    assert_non_null(strstr(r, res.message_id));
    assert_non_null(strstr(r, "\"dead_reason\":\"expired\""));
    free(r);
    r = mrt_operator(&d, "{\"queue_list\":{\"destination\":\"t-lishu\"}}");
    assert_null(strstr(r, res.message_id));
    free(r);

    /* Retry: pending again, and delivered when t-lishu comes. */
    char req[128];
    snprintf(req, sizeof req, "{\"queue_retry\":{\"seq\":%llu}}", (unsigned long long)res.seq);
    r = mrt_operator(&d, req);
    assert_non_null(strstr(r, "\"done\""));
    free(r);
    mr_client_t *lishu = connected(&d, "t-lishu");
    events_t got = {0};
    assert_true(mrt_poll_until(lishu, 5000, got_delivery, &got, on_event, &got));
    assert_string_equal(got.delivered_id[0], res.message_id);
    mr_client_destroy(&lishu);

    /* Drop: a pending message for t-houqing goes to the dead letters. */
    mr_result_t res2;
    assert_int_equal(mr_client_send_json(lead,
                                         "{\"destination\":\"t-houqing\",\"kind\":\"referral\","
                                         "\"referral\":{\"referral_id\":\"R-DROP\"}}",
                                         &res2, 5000, NULL, NULL),
                     0);
    snprintf(req, sizeof req, "{\"queue_drop\":{\"seq\":%llu,\"reason\":\"sent in error\"}}",
             (unsigned long long)res2.seq);
    r = mrt_operator(&d, req);
    assert_non_null(strstr(r, "\"done\""));
    free(r);
    r = mrt_operator(&d, "{\"queue_list\":{\"dead\":true}}");
    assert_non_null(strstr(r, "sent in error"));
    free(r);
    /* A second drop of the same message is refused. */
    r = mrt_operator(&d, req);
    assert_non_null(strstr(r, "\"error\""));
    free(r);
    mr_client_t *houqing = connected(&d, "t-houqing");
    events_t none = {0};
    assert_false(mrt_poll_until(houqing, 1000, got_delivery, &none, on_event, &none));
    mr_client_destroy(&houqing);
    mr_client_destroy(&lead);

    /* Retention 0 days: after a restart the delivered message is pruned,
     * the dead one stays. */
    assert_int_equal(mrt_daemon_stop(&d), 0);
    assert_int_equal(mrt_daemon_restart(&d), 0);
    long long until = mrt_now_ms() + 5000;
    while (mrt_counter(&d, "pruned") < 1 && mrt_now_ms() < until)
        ;
    assert_int_equal(mrt_counter(&d, "pruned"), 1);
    r = mrt_operator(&d, "{\"queue_list\":{\"dead\":true}}");
    assert_non_null(strstr(r, "sent in error"));
    free(r);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A referral whose own expiry has passed is refused, not acknowledged and
 * then dead-lettered unseen; one that expires later is taken. */
static void test_expiry_past_referral_refused(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_client_t *aihua = mrt_client(&d, "t-aihua", NULL);
    assert_int_equal(mr_client_wait_connected(aihua, 5000), 0);
    char p[256], why[200] = "";
    /* seconds where milliseconds belong: 1970-01-21 */
    snprintf(p, sizeof p, "{\"referral_id\":\"R-PAST\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
                          "\"department\":\"cardiology\",\"expires_at_ms\":1764000000}");
    assert_int_equal(mrt_send(aihua, "yx-lead", "referral", "routine", p, why), MR_E_INVALID);
    assert_non_null(strstr(why, "expires_at_ms"));
    snprintf(p, sizeof p, "{\"referral_id\":\"R-LATER\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
                          "\"department\":\"cardiology\",\"expires_at_ms\":%lld}",
             mrt_now_ms() + 3600 * 1000LL);
    assert_int_equal(mrt_send(aihua, "yx-lead", "referral", "routine", p, why), 0);
    assert_int_equal(mrt_counter(&d, "stored"), 1);
    /* Stored while its expiry was ahead, resent after it passed (its Ack
     * lost): still a duplicate, acknowledged, not refused. */
    char env[512];
    snprintf(env, sizeof env,
             "{\"message_id\":\"R-SOON-1\",\"destination\":\"yx-lead\",\"kind\":\"referral\","
             "\"referral\":{\"referral_id\":\"R-SOON\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
             "\"department\":\"cardiology\",\"expires_at_ms\":%lld}}",
             mrt_now_ms() + 3000);
    mr_result_t res;
    assert_int_equal(mr_client_send_json(aihua, env, &res, 5000, NULL, NULL), 0);
    assert_false(res.duplicate);
    struct timespec wait = {3, 500 * 1000 * 1000};
    nanosleep(&wait, NULL);
    assert_int_equal(mr_client_send_json(aihua, env, &res, 5000, NULL, NULL), 0);
    assert_true(res.duplicate);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A handler that holds its delivery 3 s, past the message's expiry. */
static int on_slow_take(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY) {
        struct timespec hold = {3, 0};
        nanosleep(&hold, NULL);
        ((events_t *)arg)->deliveries++;
    }
    return 0;
}

/*
 * A message out at its receiver when its expiry passes is not expired under
 * it: the receiver's DeliveryAck commits it as delivered, and the sender is
 * not told it was dead-lettered.  Before, the expiry scan killed it while the
 * receiver handled it, and the ack was refused as an unknown delivery.
 */
static void test_expiry_spares_a_message_out_at_its_receiver(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "ttl = { lab_order = 2; };\n"), 0);
    mr_client_t *aihua = connected(&d, "t-aihua"), *lab = connected(&d, "yx-lab");
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-SLOW\"}", NULL),
                     0);
    events_t took = {0}, sender = {0};
    long long until = mrt_now_ms() + 10000;
    while (took.deliveries < 1 && mrt_now_ms() < until)
        mr_client_poll(lab, 100, on_slow_take, &took);
    assert_int_equal(took.deliveries, 1);
    while (mrt_counter(&d, "delivered") < 1 && mrt_now_ms() < until) {
        mr_client_poll(lab, 100, on_slow_take, &took);
        mr_client_poll(aihua, 100, on_event, &sender);
    }
    assert_int_equal(mrt_counter(&d, "delivered"), 1);
    for (int i = 0; i < 15; i++) /* 1.5 s more: two expiry scans */
        mr_client_poll(aihua, 100, on_event, &sender);
    assert_int_equal(mrt_counter(&d, "expired"), 0);
    assert_int_equal(sender.expired, 0);
    assert_int_equal(took.deliveries, 1);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

static int on_refuse(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    (void)arg;
    return ev->type == MR_EVENT_DELIVERY ? 1 : 0; /* never taken */
}

/* ... but one its receiver never answers still expires: it is out only for
 * the redelivery time-out after each send. */
static void test_expiry_unanswered_message_still_expires(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "ttl = { lab_order = 2; };\n"
                                          "limits = { redelivery_timeout_ms = 300; };\n"),
                     0);
    mr_client_t *aihua = connected(&d, "t-aihua"), *lab = connected(&d, "yx-lab");
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-NEVER\"}", NULL),
                     0);
    long long until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "expired") < 1 && mrt_now_ms() < until)
        mr_client_poll(lab, 100, on_refuse, NULL);
    assert_int_equal(mrt_counter(&d, "expired"), 1);
    assert_int_equal(mrt_counter(&d, "delivered"), 0);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * A message whose expiry has passed is never sent, even before the scan
 * (once a second) has dead-lettered it.  Before, one sent in that moment was
 * spared by the scan as out at its receiver, or, sent between the scan's
 * start and its commit, expired under it: its sender told "not delivered"
 * about a message the receiver handled.  Twenty referrals expire 50 ms
 * apart while their receiver is offline; it connects after the last one.
 */
static void test_expiry_never_sent_past_its_expiry(void **state)
{
    (void)state;
    enum { N = 20 };
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_client_t *aihua = connected(&d, "t-aihua");
    long long t0 = mrt_now_ms();
    for (int k = 0; k < N; k++) {
        char p[300];
        snprintf(p, sizeof p,
                 "{\"referral_id\":\"R-LATE-%d\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
                 "\"department\":\"cardiology\",\"expires_at_ms\":%lld}",
                 k, t0 + 5000 + 50LL * k);
        assert_int_equal(mrt_send(aihua, "yx-lead", "referral", "routine", p, NULL), 0);
    }
    assert_true(mrt_now_ms() < t0 + 5000); /* all stored before the first expiry */
    events_t got = {0}, told = {0};
    while (mrt_now_ms() < t0 + 5000 + 50LL * N)
        mr_client_poll(aihua, 50, on_event, &told);
    mr_client_t *lead = connected(&d, "yx-lead");
    long long until = mrt_now_ms() + 10000;
    while ((mrt_counter(&d, "expired") < N || told.expired < N) && mrt_now_ms() < until) {
        mr_client_poll(lead, 50, on_event, &got);
        mr_client_poll(aihua, 50, on_event, &told);
    }
    assert_int_equal(got.deliveries, 0);
    assert_int_equal(mrt_counter(&d, "sent"), 0);
    assert_int_equal(mrt_counter(&d, "expired"), N);
    assert_int_equal(told.expired, N);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expiry_dead_letter_retry_drop_and_prune),
        cmocka_unit_test(test_expiry_past_referral_refused),
        cmocka_unit_test(test_expiry_spares_a_message_out_at_its_receiver),
        cmocka_unit_test(test_expiry_unanswered_message_still_expires),
        cmocka_unit_test(test_expiry_never_sent_past_its_expiry),
    };
    return cmocka_run_group_tests_name("expiry", tests, NULL, NULL);
}
