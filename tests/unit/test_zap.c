/*
 * Unit tests for daemon/zap.c: every request the ZAP handler reads is
 * answered, so that its REP socket takes the next one.
 *
 * The server_t is a bare one (its loop, a ZeroMQ context, a log, counters):
 * the test stands in for libzmq's ZAP client with a REQ socket on
 * inproc://zeromq.zap.01 and turns the loop until the reply is there.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "log.h"
#include "server.h"
#include "zap.h"

/* Only a bound on a reply that never comes, not a pace: far longer than
 * any loaded machine takes to answer over inproc. */
#define S_GIVE_UP_MS 20000

static void on_give_up(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Turns s's loop until req has a reply; false if it did not come. */
static bool s_await_reply(server_t *s, void *req)
{
    bool gave_up = false;
    uv_timer_t guard;
    assert_int_equal(uv_timer_init(&s->loop, &guard), 0);
    guard.data = &gave_up;
    assert_int_equal(uv_timer_start(&guard, on_give_up, S_GIVE_UP_MS, 0), 0);
    zmq_pollitem_t item = {.socket = req, .events = ZMQ_POLLIN};
    while (!gave_up && zmq_poll(&item, 1, 0) == 0)
        (void)uv_run(&s->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    (void)uv_run(&s->loop, UV_RUN_NOWAIT);
    return !gave_up;
}

/* Reads the reply's frames (version, request id, status code, ...): its
 * request id and status code. */
static void s_read_reply(void *req, char *id, size_t idlen, char *code, size_t codelen)
{
    char frame[6][64];
    int n = 0, more = 1;
    while (more && n < 6) {
        int len = zmq_recv(req, frame[n], sizeof frame[n] - 1, 0);
        assert_true(len >= 0 && len < (int)sizeof frame[n]);
        frame[n][len] = '\0';
        size_t sz = sizeof more;
        assert_int_equal(zmq_getsockopt(req, ZMQ_RCVMORE, &more, &sz), 0);
        n++;
    }
    assert_int_equal(n, 6);
    assert_false(more);
    assert_string_equal(frame[0], "1.0");
    snprintf(id, idlen, "%s", frame[1]);
    snprintf(code, codelen, "%s", frame[2]);
}

/* A request of one frame (no request id) is answered 400 with an empty
 * id, and counted: it got no answer, which left the REP socket waiting to
 * send, and no later handshake was answered (the one after it here). */
static void test_zap_request_of_one_frame_is_answered(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    server_t s = {.log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    assert_int_equal(uv_loop_init(&s.loop), 0);
    s.zctx = zmq_ctx_new();
    assert_non_null(s.zctx);
    zap_t *z = zap_new(&s);
    assert_non_null(z);
    void *req = zmq_socket(s.zctx, ZMQ_REQ);
    assert_non_null(req);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(req, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_connect(req, "inproc://zeromq.zap.01"), 0);

    char id[64], code[64];
    assert_int_equal(zmq_send(req, "1.0", 3, 0), 3);
    if (!s_await_reply(&s, req))
        fail_msg("a request of one frame got no reply");
    s_read_reply(req, id, sizeof id, code, sizeof code);
    assert_string_equal(id, "");
    assert_string_equal(code, "400");
    /* The next request is read and answered, with its own id. */
    assert_int_equal(zmq_send(req, "1.0", 3, ZMQ_SNDMORE), 3);
    assert_int_equal(zmq_send(req, "id-2", 4, 0), 4);
    if (!s_await_reply(&s, req))
        fail_msg("the request after it got no reply");
    s_read_reply(req, id, sizeof id, code, sizeof code);
    assert_string_equal(id, "id-2");
    assert_string_equal(code, "400");
    assert_int_equal(s.counters.v[CNT_SECURITY_EVENTS], 2);

    assert_int_equal(zmq_close(req), 0);
    zap_destroy(&z);
    assert_int_equal(uv_run(&s.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&s.loop), 0);
    assert_int_equal(zmq_ctx_term(s.zctx), 0);
    log_destroy(&s.log);
    assert_int_equal(fclose(out), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zap_request_of_one_frame_is_answered),
    };
    return cmocka_run_group_tests_name("zap", tests, NULL, NULL);
}
