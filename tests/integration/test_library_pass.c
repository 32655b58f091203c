/*
 * test_library_pass.c - libmedroute's outcomes within one pass of its
 * poll, against a scripted broker: a ROUTER socket of the test's own that
 * sends the frames it chose, all at once, so that they reach the client in
 * a single pass.  The real daemon chooses its own timing (test_routing has
 * the same story end to end); this is a test of the library alone.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "harness.h"
#include "mr_codec.h"

typedef struct {
    int acks, errors, error_code;
    char error_id[80];
} s_seen_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    s_seen_t *s = arg;
    if (ev->type == MR_EVENT_ACK) {
        s->acks++;
    } else if (ev->type == MR_EVENT_ERROR) {
        s->errors++;
        s->error_code = ev->code;
        snprintf(s->error_id, sizeof s->error_id, "%s", ev->message_id);
    }
    return 0;
}

/* Sends frame f to the peer whose routing id is rid. */
static void s_send(void *router, const void *rid, size_t rid_len, mr_frame_t *f)
{
    uint8_t *buf;
    size_t len;
    f->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    assert_true(zmq_send(router, rid, rid_len, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(router, buf, len, 0) >= 0);
    free(buf);
}

static void s_send_ack(void *router, const void *rid, size_t rid_len, const char *id, uint64_t seq)
{
    Medroute__V1__Ack a = MEDROUTE__V1__ACK__INIT;
    a.message_id = (char *)id;
    a.seq = seq;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &a;
    s_send(router, rid, rid_len, &f);
}

static void s_submit(mr_client_t *c, const char *id, size_t pad)
{
    char *json = mrt_lab_order_json(id, pad), err[200], out_id[80];
    assert_non_null(json);
    assert_int_equal(mr_client_submit_json(c, json, out_id, err, sizeof err), 0);
    free(json);
}

/*
 * A message queued before the Welcome told the broker's size limit, and
 * over it, is refused by the library when that Welcome comes; when the
 * Acks of the messages around it come in the same pass, its refusal comes
 * in the same poll as they do (until the fourteenth session it waited for
 * the next poll: a caller that stopped polling once its Acks were in
 * never heard of it).
 */
static void test_library_pass_refusal_in_the_welcome_pass(void **state)
{
    (void)state;
    char ep[128];
    snprintf(ep, sizeof ep, "ipc:///tmp/mrt-scripted-broker-%ld", (long)getpid());
    void *zctx = zmq_ctx_new();
    assert_non_null(zctx);
    void *router = zmq_socket(zctx, ZMQ_ROUTER);
    assert_non_null(router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(router, ep), 0);

    mr_client_opts_t o = {.endpoint = ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "SMALL-1", 10);
    s_submit(c, "HUGE-1", 20000);
    s_submit(c, "SMALL-2", 10);

    /* The client says Hello once its connection is up (seen in its polls). */
    uint8_t rid[256];
    int rid_len = -1;
    long long until = mrt_now_ms() + 10000;
    zmq_pollitem_t item = {.socket = router, .events = ZMQ_POLLIN};
    while (rid_len < 0 && mrt_now_ms() < until) {
        assert_true(mr_client_poll(c, 50, NULL, NULL) >= 0);
        if (zmq_poll(&item, 1, 0) == 1)
            rid_len = zmq_recv(router, rid, sizeof rid, 0);
    }
    assert_true(rid_len > 0);
    zmq_msg_t hello;
    zmq_msg_init(&hello);
    assert_true(zmq_msg_recv(&hello, router, 0) >= 0);
    mr_frame_t *h = medroute__v1__frame__unpack(NULL, zmq_msg_size(&hello), zmq_msg_data(&hello));
    zmq_msg_close(&hello);
    assert_non_null(h);
    assert_int_equal(h->body_case, MEDROUTE__V1__FRAME__BODY_HELLO);
    medroute__v1__frame__free_unpacked(h, NULL);

    /* Welcome with a 4,096-byte limit, and the Acks of the two small ones,
     * all in the client's socket before its next poll. */
    Medroute__V1__Welcome w = MEDROUTE__V1__WELCOME__INIT;
    w.broker_id = "test";
    w.heartbeat_interval_ms = 5000;
    w.heartbeat_timeout_ms = 15000;
    w.max_message_bytes = 4096;
    w.max_inflight = 64;
    w.max_acks_per_frame = 64;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    s_send(router, rid, (size_t)rid_len, &f);
    s_send_ack(router, rid, (size_t)rid_len, "SMALL-1", 1);
    s_send_ack(router, rid, (size_t)rid_len, "SMALL-2", 2);
    usleep(300 * 1000);

    s_seen_t seen = {0};
    assert_true(mr_client_poll(c, 100, on_event, &seen) > 0);
    assert_int_equal(seen.acks, 2);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_TOO_LARGE);
    assert_string_equal(seen.error_id, "HUGE-1");
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    zmq_close(router);
    zmq_ctx_term(zctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_library_pass_refusal_in_the_welcome_pass),
    };
    return cmocka_run_group_tests_name("library_pass", tests, NULL, NULL);
}
