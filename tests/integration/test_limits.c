/*
 * test_limits.c - limits answer, never drop: a facility over its rate gets
 * ERROR_RATE_LIMITED (and its library resends later) while another
 * facility's traffic flows; a destination at its queue quota makes the
 * sender get ERROR_QUEUE_FULL.  Everything acknowledged is delivered.
 * A burst beyond what the store commits is held back (intake pauses), not
 * read into memory, and still arrives once.  A stream of refusals is
 * answered and counted in full but logged within a limit.  Clients that
 * trickle HTTP requests cannot keep /healthz from answering.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "harness.h"
#include "mr_codec.h"

typedef struct {
    int acks, limited, full, deliveries, duplicates;
} tally_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    tally_t *t = arg;
    if (ev->type == MR_EVENT_ACK) {
        t->acks++;
        t->duplicates += ev->duplicate;
    }
    else if (ev->type == MR_EVENT_ERROR && ev->code == MR_E_RATE_LIMITED)
        t->limited++;
    else if (ev->type == MR_EVENT_ERROR && ev->code == MR_E_QUEUE_FULL)
        t->full++;
    else if (ev->type == MR_EVENT_DELIVERY)
        t->deliveries++;
    return 0;
}

static void test_limits_rate_and_quota(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { rate_per_s = 20; rate_burst = 20;"
                                          " queue_quota = 30; };"),
                     0);
    mr_client_t *flood = mrt_client(&d, "t-aihua", NULL);
    mr_client_t *calm = mrt_client(&d, "t-manwan", NULL);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    assert_int_equal(mr_client_wait_connected(flood, 5000), 0);
    assert_int_equal(mr_client_wait_connected(calm, 5000), 0);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    /* t-aihua floods 60 messages at once: 20 pass, the rest are told to wait
     * and are resent by its library as tokens come back. */
    assert_int_equal(mrt_submit_orders(flood, "yx-lead", "F", 60), 0);
    tally_t ft = {0}, lt = {0};
    for (int i = 0; i < 10; i++)
        mr_client_poll(flood, 20, on_event, &ft);
    assert_true(ft.limited > 0);
    /* Meanwhile t-manwan's message is acknowledged at once. */
    assert_int_equal(mrt_send(calm, "yx-lead", "lab_order", "routine",
                              "{\"placer_order_number\":\"CALM\"}", NULL),
                     0);
    long long until = mrt_now_ms() + 20000;
    while (mr_client_unacked(flood) > 0 && mrt_now_ms() < until) {
        mr_client_poll(flood, 50, on_event, &ft);
        mr_client_poll(lead, 10, on_event, &lt);
    }
    printf("limits: flood acked=%d limited=%d; lead received=%d\n", ft.acks, ft.limited,
           lt.deliveries);
    assert_int_equal(ft.acks, 60);
    while (lt.deliveries < 61 && mrt_now_ms() < until)
        mr_client_poll(lead, 50, on_event, &lt);
    assert_int_equal(lt.deliveries, 61);

    /* t-lishu is offline: its queue fills to the quota of 30, the first
     * message with an id of our own. */
    const char *first = "{\"message_id\":\"Q-FIRST\",\"destination\":\"t-lishu\","
                        "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\":\"Q-F\"}}";
    mr_result_t res; /* RATE_LIMITED is resent by the library itself */
    assert_int_equal(mr_client_send_json(calm, first, &res, 10000, NULL, NULL), 0);
    assert_false(res.duplicate);
    tally_t qt = {0};
    for (int i = 0; i < 30; i++) {
        char p[128];
        snprintf(p, sizeof p, "{\"placer_order_number\":\"Q-%d\"}", i);
        int rc = mrt_send(calm, "t-lishu", "lab_order", "routine", p, NULL);
        if (rc == MR_E_QUEUE_FULL)
            qt.full++;
        else if (rc == MR_E_RATE_LIMITED)
            i--; /* resend: the rate limit is not what this part tests */
        else
            assert_int_equal(rc, 0);
    }
    assert_int_equal(qt.full, 1);
    /* A resend of a message stored before the queue filled is still a
     * duplicate, acknowledged, not QUEUE_FULL (the sender would drop it). */
    assert_int_equal(mr_client_send_json(calm, first, &res, 10000, NULL, NULL), 0);
    assert_true(res.duplicate);
    char *r = mrt_operator(&d, "{\"status\":{}}");
    assert_non_null(strstr(r, "rejected.QUEUE_FULL"));
    assert_non_null(strstr(r, "rejected.RATE_LIMITED"));
    free(r);
    mr_client_destroy(&flood);
    mr_client_destroy(&calm);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A handler that takes 40 ms a message (a hospital system over a slow link). */
static int on_slow(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY) {
        struct timespec ms40 = {0, 40 * 1000 * 1000};
        nanosleep(&ms40, NULL);
        ((tally_t *)arg)->deliveries++;
        ((tally_t *)arg)->duplicates += ev->delivery->redelivered;
    }
    return 0;
}

/*
 * A receiver whose window of deliveries takes longer to handle than the
 * heartbeat time-out stays connected: its library sends the acks gathered
 * and a heartbeat during the pass, not only after it, so the broker does not
 * end the session and send the whole window again.
 */
static void test_limits_slow_handler_keeps_session(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { heartbeat_interval_ms = 200;"
                                          " heartbeat_timeout_ms = 1000; max_inflight = 64; };"),
                     0);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    mr_client_t *aihua = mrt_client(&d, "t-aihua", NULL);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mrt_submit_orders(aihua, "yx-lead", "SLOW", 100), 0);
    tally_t at = {0}, lt = {0};
    long long until = mrt_now_ms() + 20000;
    while (at.acks < 100 && mrt_now_ms() < until)
        mr_client_poll(aihua, 20, on_event, &at);
    assert_int_equal(at.acks, 100);
    mr_client_destroy(&aihua); /* its own session would time out unpolled */
    while (lt.deliveries < 100 && mrt_now_ms() < until)
        mr_client_poll(lead, 20, on_slow, &lt);
    assert_int_equal(lt.deliveries, 100);
    assert_int_equal(lt.duplicates, 0);
    assert_int_equal(mrt_log_count(&d, "heartbeat_timeout"), 0);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A gauge or counter of the daemon's /metrics, or -1. */
static long long s_metric(const mrt_daemon_t *d, const char *name)
{
    char *m = mrt_http_get(d, "/metrics");
    if (m == NULL)
        return -1;
    char needle[128];
    snprintf(needle, sizeof needle, "\n%s ", name);
    const char *at = strstr(m, needle);
    long long v = at ? strtoll(at + strlen(needle), NULL, 10) : -1;
    free(m);
    return v;
}

static void test_limits_burst_is_held_back_not_buffered(void **state)
{
    (void)state;
    /* No rate limit, and batches of 50: intake pauses at 200 queued requests. */
    enum { N = 5000, HIGH = 200, BUDGET = 512 };
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { rate_per_s = 1000000;"
                                          " rate_burst = 1000000; };"
                                          " store = { batch_max = 50; };"),
                     0);
    mr_client_t *flood = mrt_client(&d, "t-aihua", NULL);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    assert_int_equal(mr_client_wait_connected(flood, 5000), 0);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    /* The whole burst goes out at once, far faster than batches of 50 commit. */
    assert_int_equal(mrt_submit_orders(flood, "yx-lead", "B", N), 0);
    tally_t ft = {0}, lt = {0};
    long long until = mrt_now_ms() + 60000;
    while ((mr_client_unacked(flood) > 0 || lt.deliveries < N) && mrt_now_ms() < until) {
        mr_client_poll(flood, 5, on_event, &ft);
        mr_client_poll(lead, 5, on_event, &lt);
    }
    long long paused = mrt_counter(&d, "intake_paused");
    long long peak = s_metric(&d, "medroute_store_queue_peak");
    printf("burst: acked=%d duplicates=%d delivered=%d intake_paused=%lld queue_peak=%lld\n",
           ft.acks, ft.duplicates, lt.deliveries, paused, peak);
    /* Every message once: acknowledged, stored and delivered. */
    assert_int_equal(ft.acks, N);
    assert_int_equal(ft.duplicates, 0);
    assert_int_equal(lt.deliveries, N);
    assert_int_equal(mrt_counter(&d, "stored"), N);
    assert_int_equal(mrt_counter(&d, "duplicate"), 0);
    /* Held back: the endpoint stopped reading, and the store's queue stayed
     * within a loop turn's reading of the mark (it held most of the burst,
     * 4,887 of 5,000, without flow.c).  A turn reads at most BUDGET frames:
     * a Submit is one request, a frame of the receiver's DeliveryAcks up to
     * MR_ACKS_PER_FRAME_MAX.  The receiver's acks come back within the same
     * turn's reading, since each ack read sends the next delivery at once,
     * so more than max_inflight (64) of them can be read in one turn: 256,
     * one full frame of the client's, in 1 of ~30 runs. */
    assert_true(paused > 0);
    assert_true(peak >= HIGH);
    assert_true(peak <= HIGH + BUDGET + MR_ACKS_PER_FRAME_MAX);
    assert_true(mrt_log_count(&d, "event=flow.paused") >= 1);
    mr_client_destroy(&flood);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* Sends f over the raw DEALER sock. */
static void s_raw_send(void *sock, mr_frame_t *f)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    assert_int_equal(zmq_send(sock, buf, len, 0), (int)len);
    free(buf);
}

/* Reads and drops what sock has waiting. */
static void s_raw_drain(void *sock)
{
    char buf[512];
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0)
        ;
}

/*
 * A facility that sends DeliveryAcks of 1,024 seqs each, none of them its
 * (a broken or hostile client), costs the broker a store request per seq:
 * intake must stop reading at the frame that brought the store's queue to
 * the mark, not at the end of a loop turn that read up to 512 such frames
 * (half a million requests, ~400 MB, from 2.5 MB of input).
 */
static void test_limits_delivery_acks_held_back_per_frame(void **state)
{
    (void)state;
    enum { HIGH = 200, FRAMES = 64, SEQS = MR_ACKS_PER_FRAME_MAX };
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "store = { batch_max = 50; };"), 0);
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(sock, d.facility_ep), 0);
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-aihua";
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    s_raw_send(sock, &f);
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1); /* the Welcome */
    s_raw_drain(sock);
    long long before = mrt_counter(&d, "rejected");
    uint64_t *more = calloc(SEQS - 1, sizeof *more);
    assert_non_null(more);
    for (int i = 0; i < FRAMES; i++) {
        uint64_t base = 1000000000ULL + (uint64_t)i * SEQS;
        for (size_t j = 0; j < SEQS - 1; j++)
            more[j] = base + 1 + j;
        Medroute__V1__DeliveryAck a = MEDROUTE__V1__DELIVERY_ACK__INIT;
        a.seq = base;
        a.more_seqs = more;
        a.n_more_seqs = SEQS - 1;
        f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK;
        f.delivery_ack = &a;
        s_raw_send(sock, &f);
    }
    free(more);
    /* Every frame is answered UNKNOWN_DELIVERY in the end, once. */
    long long until = mrt_now_ms() + 60000, rejected = 0;
    while (mrt_now_ms() < until &&
           (rejected = mrt_counter(&d, "rejected") - before) < (long long)FRAMES) {
        s_raw_drain(sock);
        zmq_poll(&it, 1, 100);
    }
    assert_int_equal(rejected, (long long)FRAMES);
    long long peak = s_metric(&d, "medroute_store_queue_peak");
    long long paused = mrt_counter(&d, "intake_paused");
    printf("acks: rejected=%lld intake_paused=%lld queue_peak=%lld\n", rejected, paused, peak);
    /* Below the mark before a frame, at most one frame's seqs (and the few
     * requests of the cron) after it. */
    assert_true(paused > 0);
    assert_true(peak <= HIGH + SEQS + 16);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * A facility that sends a stream of bad messages gets every refusal, and
 * every one is counted, but it puts at most LOGRATE_LINES lines in the
 * daemon's log per 10 s; the rest are told as a count.  Another
 * facility's refusal is still logged meanwhile.
 */
static void test_limits_refusals_logged_within_a_limit(void **state)
{
    (void)state;
    enum { N = 100, LINES = 20 }; /* LINES: lograte.h's LOGRATE_LINES */
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_client_t *bad = mrt_client(&d, "t-aihua", NULL), *other = mrt_client(&d, "t-manwan", NULL);
    assert_int_equal(mr_client_wait_connected(bad, 5000), 0);
    assert_int_equal(mr_client_wait_connected(other, 5000), 0);
    int refused = 0;
    for (int i = 0; i < N; i++)
        refused += mrt_send(bad, "yx-nowhere", "lab_order", "routine",
                            "{\"placer_order_number\":\"P\"}", NULL) == MR_E_UNKNOWN_DESTINATION;
    assert_int_equal(refused, N);
    assert_int_equal(mrt_send(other, "yx-nowhere", "lab_order", "routine",
                              "{\"placer_order_number\":\"Q\"}", NULL),
                     MR_E_UNKNOWN_DESTINATION);
    assert_int_equal(mrt_counter(&d, "rejected"), N + 1);
    assert_int_equal(mrt_log_count(&d, "event=message.rejected facility=t-aihua"), LINES);
    assert_int_equal(mrt_log_count(&d, "event=message.rejected facility=t-manwan"), 1);
    /* The others, as one count, within a second of the window's end. */
    char told[128];
    snprintf(told, sizeof told, "event=message.rejected_unlogged facility=t-aihua count=%d",
             N - LINES);
    for (long long until = mrt_now_ms() + 15000;
         mrt_log_count(&d, told) < 1 && mrt_now_ms() < until;)
        mr_client_poll(bad, 200, NULL, NULL);
    assert_int_equal(mrt_log_count(&d, told), 1);
    assert_int_equal(mrt_log_count(&d, "event=message.rejected_unlogged facility=t-manwan"), 0);
    mr_client_destroy(&bad);
    mr_client_destroy(&other);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * 64 connections (the HTTP server's limit) that send a request a byte at a
 * time, never finishing it, kept /healthz from answering for as long as
 * they went on (each byte renewed the idle time-out).  A request's head
 * must come within S_HEAD_DEADLINE_MS (10 s): then they are cut, and
 * /healthz answers while they still try.
 */
static void test_limits_trickling_http_clients_are_cut(void **state)
{
    (void)state;
    enum { CONNS = 64, TRIES = 40 };
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    int fds[CONNS];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d.http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < CONNS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fds[i] >= 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&a, sizeof a), 0);
        assert_int_equal(write(fds[i], "GET /healthz HTTP/1.1\r\nX-Slow: ", 31), 31);
    }
    int status = 0;
    for (int t = 0; t < TRIES && status != 200; t++) {
        for (int i = 0; i < CONNS; i++)
            (void)!send(fds[i], "a", 1, MSG_NOSIGNAL); /* a cut one fails: fine */
        free(mrt_http_fetch(&d, "/healthz", 1, &status));
    }
    assert_int_equal(status, 200);
    assert_true(mrt_log_count(&d, "event=http.slow_clients") >= 1);
    for (int i = 0; i < CONNS; i++)
        close(fds[i]);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_rate_and_quota),
        cmocka_unit_test(test_limits_slow_handler_keeps_session),
        cmocka_unit_test(test_limits_burst_is_held_back_not_buffered),
        cmocka_unit_test(test_limits_delivery_acks_held_back_per_frame),
        cmocka_unit_test(test_limits_refusals_logged_within_a_limit),
        cmocka_unit_test(test_limits_trickling_http_clients_are_cut),
    };
    return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
