/*
 * Unit tests for daemon/opapi.c: operator requests and what their replies
 * find.
 *
 * The server_t is a bare one with a stand-in operator endpoint: the test is
 * linked with -Wl,--wrap=endpoint_send,--wrap=endpoint_user_id,
 * --wrap=endpoint_src_fd,--wrap=endpoint_check_closed,--wrap=store_submit,
 * --wrap=clock_gettime,--wrap=mr_pack, and the wrappers below answer what
 * the test sets (a send's result; the key, none: plaintext; the connection's fd;
 * no close queued), keep the last reply sent, hold the store requests
 * submitted (there is no store): the test completes them when it chooses
 * (s_complete), stop the clocks once a test says so (the log's windows then
 * hold still), and fail the packing of replies without memory on demand.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frozen_clock.h"
#include "endpoint.h"
#include "log.h"
#include "opapi.h"
#include "server.h"

static int s_answer;
static int s_sends;
/* The last reply sent: its body, its error's code (0 if none), and of a
 * status its first facility's pending count and oldest_pending_ms. */
static int s_reply_body;
static int s_reply_code;
static uint64_t s_reply_pending;
static int64_t s_reply_oldest_ms;
/* The store requests submitted, in order, not yet completed. */
#define S_HELD_MAX 64
static store_req_t *s_held[S_HELD_MAX];
static int s_n_held;

int __wrap_endpoint_send(endpoint_t *self, const uint8_t *rid, size_t rid_len, const void *data,
                         size_t len);
const char *__wrap_endpoint_user_id(const endpoint_t *self);
int __wrap_endpoint_src_fd(const endpoint_t *self);
void __wrap_endpoint_check_closed(endpoint_t *self);

int __wrap_endpoint_send(endpoint_t *self, const uint8_t *rid, size_t rid_len, const void *data,
                         size_t len)
{
    (void)self;
    (void)rid;
    (void)rid_len;
    s_sends++;
    mr_op_reply_t *r = medroute__v1__op_reply__unpack(NULL, len, data);
    assert_non_null(r);
    s_reply_body = (int)r->body_case;
    s_reply_code = r->body_case == MEDROUTE__V1__OP_REPLY__BODY_ERROR ? (int)r->error->code : 0;
    if (r->body_case == MEDROUTE__V1__OP_REPLY__BODY_STATUS && r->status->n_facilities > 0) {
        s_reply_pending = r->status->facilities[0]->pending;
        s_reply_oldest_ms = r->status->facilities[0]->oldest_pending_ms;
    }
    medroute__v1__op_reply__free_unpacked(r, NULL);
    return s_answer;
}

void __wrap_store_submit(store_t *self, store_req_t *req);

void __wrap_store_submit(store_t *self, store_req_t *req)
{
    (void)self;
    assert_true(s_n_held < S_HELD_MAX);
    s_held[s_n_held++] = req;
}

/* The connection's key (User-Id): NULL, plaintext (an admin when
 * insecure), unless a test sets one. */
static const char *s_user_id;

const char *__wrap_endpoint_user_id(const endpoint_t *self)
{
    (void)self;
    return s_user_id;
}

int __wrap_endpoint_src_fd(const endpoint_t *self)
{
    (void)self;
    return 7;
}

void __wrap_endpoint_check_closed(endpoint_t *self)
{
    (void)self; /* the close of the connection, if any, was read already */
}

/* Completes the oldest request held as the store would, with status, then
 * frees it (what a request answered unavailable holds). */
static void s_complete(store_status_t status)
{
    assert_true(s_n_held > 0);
    store_req_t *req = s_held[0];
    memmove(&s_held[0], &s_held[1], (size_t)(s_n_held - 1) * sizeof s_held[0]);
    s_n_held--;
    req->status = status;
    req->cb(req, req->arg);
    store_row_clear(&req->msg);
    free(req->query);
    free(req);
}


/* mr_pack as opapi.c sees it: out of memory while s_pack_fails (the test's
 * own requests are packed by the real one). */
static bool s_pack_fails;
int __real_mr_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);
int __wrap_mr_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);

int __wrap_mr_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    if (s_pack_fails)
        return -ENOMEM;
    return __real_mr_pack(msg, out, len);
}

/* What the sends of s_request answer: 0 unless a test sets it. */
static int s_send_rc;

/* Hands opapi q from rid, its reply's send answering s_send_rc; the
 * replies sent. */
static int s_request(server_t *s, const uint8_t *rid, size_t rid_len, mr_op_request_t *q)
{
    q->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(__real_mr_pack(&q->base, &buf, &len), 0);
    const void *parts[] = {buf};
    size_t sizes[] = {len};
    s_answer = s_send_rc;
    s_sends = 0;
    s_reply_body = -1;
    opapi_on_message(s, rid, rid_len, parts, sizes, 1, 0);
    free(buf);
    return s_sends;
}

/* Hands opapi a QueueListRequest from rid; the replies sent. */
static int s_list(server_t *s, const uint8_t *rid, size_t rid_len)
{
    Medroute__V1__QueueListRequest l = MEDROUTE__V1__QUEUE_LIST_REQUEST__INIT;
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT;
    q.request_id = 5;
    q.body_case = MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_LIST;
    q.queue_list = &l;
    return s_request(s, rid, rid_len, &q);
}

/* Lines of out that hold what. */
static int s_lines(FILE *out, const char *what)
{
    char line[1024];
    int n = 0;
    rewind(out);
    while (fgets(line, sizeof line, out) != NULL)
        n += strstr(line, what) != NULL;
    return n;
}

/* Hands opapi a WatchRequest from rid, the reply's send answering rc. */
static void s_watch(server_t *s, const uint8_t *rid, size_t rid_len, int rc)
{
    Medroute__V1__WatchRequest w = MEDROUTE__V1__WATCH_REQUEST__INIT;
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT;
    q.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    q.request_id = 42;
    q.body_case = MEDROUTE__V1__OP_REQUEST__BODY_WATCH;
    q.watch = &w;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(&q.base, &buf, &len), 0);
    const void *parts[] = {buf};
    size_t sizes[] = {len};
    s_answer = rc;
    s_sends = 0;
    opapi_on_message(s, rid, rid_len, parts, sizes, 1, 0);
    assert_int_equal(s_sends, 1); /* the "subscribed" event */
    free(buf);
}

static int s_watchers(const server_t *s)
{
    int n = 0;
    for (int i = 0; i < MR_WATCHERS_MAX; i++)
        n += s->watchers[i].rid_len != 0;
    return n;
}

/* A WatchRequest read after its connection closed (the close read first,
 * by watch_subscribe itself, so the monitor never reports it again): its
 * "subscribed" reply finds the connection gone, and the place it took
 * among the 16 is free again, not held until the 120-s time-out. */
static void test_opapi_watch_whose_connection_is_gone_holds_no_place(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536};
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    const uint8_t gone[] = {0, 0, 0, 0, 1}, live[] = {0, 0, 0, 0, 2};
    s_watch(&s, gone, sizeof gone, -EHOSTUNREACH);
    assert_int_equal(s_watchers(&s), 0);
    /* One whose reply went out keeps its place. */
    s_watch(&s, live, sizeof live, 0);
    assert_int_equal(s_watchers(&s), 1);
    /* Sixteen gone ones in a row leave room for a live one. */
    for (uint8_t i = 0; i < MR_WATCHERS_MAX; i++) {
        const uint8_t rid[] = {0, 0, 0, 1, i};
        s_watch(&s, rid, sizeof rid, -EHOSTUNREACH);
    }
    assert_int_equal(s_watchers(&s), 1);
    log_destroy(&s.log);
    fclose(out);
}

/* A request with no body, or one this broker does not know, is answered
 * UNEXPECTED_FRAME and counted; nothing goes to the store (the switch of
 * s_store_request decides: a body none of its cases handles is refused,
 * not submitted as no request). */
static void test_opapi_request_without_known_body_is_refused(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536};
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    const uint8_t rid[] = {0, 0, 0, 0, 3};
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT;
    q.request_id = 9;
    s_n_held = 0;
    assert_int_equal(s_request(&s, rid, sizeof rid, &q), 1);
    assert_int_equal(s_reply_code, MR_E_UNEXPECTED_FRAME);
    assert_int_equal(s_n_held, 0);
    assert_int_equal(s.counters.v[CNT_OPERATOR_REJECTED], 1);
    log_destroy(&s.log);
    fclose(out);
}

/* Operator requests waiting for the store are bounded, 4 of a connection
 * and 32 in all: one more is answered QUEUE_FULL at once, counted, and not
 * submitted (a tool in a loop queued them without bound, and their backlog
 * paused the facilities' intake); an answer frees its place.  The lines of
 * a flood of refusals are bounded too, and their count told by the cron. */
static void test_opapi_requests_waiting_for_the_store_are_bounded(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536};
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    frozen_clock_set(true);
    s_n_held = 0;
    const uint8_t a[] = {0, 0, 0, 0, 'a'}, z[] = {0, 0, 0, 2, 0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s_list(&s, a, sizeof a), 0); /* answered by the store */
        assert_int_equal(s_n_held, i + 1);
    }
    assert_int_equal(s_list(&s, a, sizeof a), 1);
    assert_int_equal(s_reply_code, MR_E_QUEUE_FULL);
    assert_int_equal(s_n_held, 4);
    assert_int_equal(s.counters.v[CNT_OPERATOR_REJECTED], 1);
    /* Seven other connections take the other 28 places. */
    for (uint8_t c = 1; c <= 7; c++) {
        const uint8_t rid[] = {0, 0, 0, 1, c};
        for (int i = 0; i < 4; i++)
            assert_int_equal(s_list(&s, rid, sizeof rid), 0);
    }
    assert_int_equal(s_n_held, 32);
    assert_int_equal(s_list(&s, z, sizeof z), 1);
    assert_int_equal(s_reply_code, MR_E_QUEUE_FULL);
    assert_int_equal(s_n_held, 32);
    /* The store answers one of a's: a may send one more. */
    s_sends = 0;
    s_complete(STORE_UNAVAILABLE);
    assert_int_equal(s_sends, 1);
    assert_int_equal(s_reply_code, MR_E_STORE_UNAVAILABLE);
    assert_int_equal(s_list(&s, a, sizeof a), 0);
    assert_int_equal(s_n_held, 32);
    /* A flood from two connections, refused for two reasons in turn (so
     * that no line repeats the one before): each refusal counted, at most
     * LOGRATE_LINES of them logged in the window. */
    int before = s_lines(out, "event=operator.rejected ");
    for (int i = 0; i < 100; i++) {
        assert_int_equal(s_list(&s, a, sizeof a), 1);
        assert_int_equal(s_list(&s, z, sizeof z), 1);
    }
    assert_int_equal(s_n_held, 32);
    assert_int_equal(s.counters.v[CNT_OPERATOR_REJECTED], 2 + 1 + 200);
    assert_int_equal(before, 3); /* two QUEUE_FULL, the STORE_UNAVAILABLE */
    assert_int_equal(s_lines(out, "event=operator.rejected "), LOGRATE_LINES);
    opapi_cron(&s, mr_mono_ms());
    assert_int_equal(s_lines(out, "event=operator.rejected_unlogged count=183 "), 1);
    while (s_n_held > 0)
        s_complete(STORE_UNAVAILABLE);
    assert_null(s.op_waiting);
    assert_int_equal(s.n_op_waiting, 0);
    frozen_clock_set(false);
    log_destroy(&s.log);
    fclose(out);
}

/* A reply that cannot be encoded (no memory) is counted as send_failed and
 * logged: it was dropped without a trace, the tool left to time out. */
static void test_opapi_reply_without_memory_is_counted_and_logged(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536};
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    const uint8_t rid[] = {0, 0, 0, 0, 4};
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT; /* no body: refused */
    s_pack_fails = true;
    assert_int_equal(s_request(&s, rid, sizeof rid, &q), 0);
    s_pack_fails = false;
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 1);
    assert_int_equal(s_lines(out, "event=operator.send_failed reason=-12 step=encode"), 1);
    log_destroy(&s.log);
    fclose(out);
}

/* A reply that cannot be sent is counted (send_failed; peer_gone for a
 * connection gone, as a facility's frame is) and its lines are bounded, the
 * count of the others told by the cron: it was logged for every reply,
 * uncounted, so a tool in a loop that did not wait for its replies filled
 * the log. */
static void test_opapi_failed_replies_are_counted_and_rate_limited(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536};
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    frozen_clock_set(true);
    const uint8_t rid[] = {0, 0, 0, 0, 9};
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT; /* no body: refused */
    /* A full queue and a connection gone in turn, so that no line repeats
     * the one before (the log's own filter of repeated lines). */
    for (int i = 0; i < 100; i++) {
        s_send_rc = i % 2 ? -EHOSTUNREACH : -EAGAIN;
        assert_int_equal(s_request(&s, rid, sizeof rid, &q), 1);
    }
    s_send_rc = 0;
    s_pack_fails = true;
    assert_int_equal(s_request(&s, rid, sizeof rid, &q), 0);
    s_pack_fails = false;
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 51);
    assert_int_equal(s.counters.v[CNT_PEER_GONE], 50);
    assert_int_equal(s_lines(out, "event=operator.send_failed "), LOGRATE_LINES);
    opapi_cron(&s, mr_mono_ms());
    assert_int_equal(s_lines(out, "event=operator.send_failed_unlogged count=81 "), 1);
    frozen_clock_set(false);
    log_destroy(&s.log);
    fclose(out);
}

/* Requests without a valid key are counted each, but their security.*
 * lines are bounded (LOGRATE_LINES per window, apart from the refusals'
 * lines), the count of the others told by the cron: a tool in a loop with
 * a key a reload removed filled the log with one line per request. */
static void test_opapi_security_lines_are_rate_limited(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = false, .max_message_bytes = 65536}; /* no operators */
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    frozen_clock_set(true);
    s_n_held = 0;
    const uint8_t rid[] = {0, 0, 0, 0, 8};
    Medroute__V1__StatusRequest st = MEDROUTE__V1__STATUS_REQUEST__INIT;
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT;
    q.request_id = 12;
    q.body_case = MEDROUTE__V1__OP_REQUEST__BODY_STATUS;
    q.status = &st;
    /* Two removed keys in turn, so that no line repeats the one before
     * (the log's own filter of repeated lines holds those back). */
    static const char *const keys[] = {"rEvOkEdArEvOkEdArEvOkEdArEvOkEdArEvOkEdA",
                                       "rEvOkEdBrEvOkEdBrEvOkEdBrEvOkEdBrEvOkEdB"};
    for (int i = 0; i < 100; i++) {
        s_user_id = keys[i % 2];
        assert_int_equal(s_request(&s, rid, sizeof rid, &q), 1);
        assert_int_equal(s_reply_code, MR_E_FORBIDDEN);
    }
    /* Without a key on a CURVE endpoint: dropped, unanswered. */
    s_user_id = NULL;
    for (int i = 0; i < 10; i++)
        assert_int_equal(s_request(&s, rid, sizeof rid, &q), 0);
    assert_int_equal(s_n_held, 0);
    assert_int_equal(s.counters.v[CNT_SECURITY_EVENTS], 110);
    assert_int_equal(s_lines(out, "event=security.revoked_key ") +
                         s_lines(out, "event=security.no_user_id "),
                     LOGRATE_LINES);
    opapi_cron(&s, mr_mono_ms());
    assert_int_equal(s_lines(out, "event=security.operator_unlogged count=90 "), 1);
    frozen_clock_set(false);
    log_destroy(&s.log);
    fclose(out);
}

/* oldest_pending_ms is the store's (the stored_at of the oldest message
 * its pending set holds for the facility), set for a facility without a
 * session too, as protocol.md 10 says. */
static void test_opapi_status_oldest_pending_is_the_stores(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    conf_t conf = {.insecure = true, .max_message_bytes = 65536, .broker_id = "medroute"};
    facility_t f = {.id = "tw-a", .name = "Township A", .role = ROLE_TOWNSHIP};
    char err[128];
    peer_t peer = {0}; /* no session */
    server_t s = {.operator_ep = (endpoint_t *)&stand_in, .conf = &conf,
                  .log = log_new(MR_LOG_DEBUG, out), .peers = &peer,
                  .registry = registry_new(&f, 1, err, sizeof err)};
    assert_non_null(s.log);
    assert_non_null(s.registry);
    const uint8_t rid[] = {0, 0, 0, 0, 6};
    Medroute__V1__StatusRequest st = MEDROUTE__V1__STATUS_REQUEST__INIT;
    mr_op_request_t q = MEDROUTE__V1__OP_REQUEST__INIT;
    q.request_id = 11;
    q.body_case = MEDROUTE__V1__OP_REQUEST__BODY_STATUS;
    q.status = &st;
    s_n_held = 0;
    assert_int_equal(s_request(&s, rid, sizeof rid, &q), 0);
    assert_int_equal(s_n_held, 1);
    store_req_t *req = s_held[0];
    req->rows = calloc(1, sizeof *req->rows);
    assert_non_null(req->rows);
    req->n_rows = 1;
    req->rows[0].dest = strdup("tw-a");
    assert_non_null(req->rows[0].dest);
    req->rows[0].count = 3;
    req->rows[0].stored_ms = 1700000000123;
    s_reply_pending = 0;
    s_reply_oldest_ms = 0;
    s_sends = 0;
    store_row_t *rows = req->rows;
    s_complete(STORE_OK);
    store_row_clear(&rows[0]);
    free(rows);
    assert_int_equal(s_sends, 1);
    assert_int_equal(s_reply_body, MEDROUTE__V1__OP_REPLY__BODY_STATUS);
    assert_int_equal(s_reply_pending, 3);
    assert_int_equal(s_reply_oldest_ms, 1700000000123);
    registry_destroy(&s.registry);
    log_destroy(&s.log);
    fclose(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opapi_watch_whose_connection_is_gone_holds_no_place),
        cmocka_unit_test(test_opapi_request_without_known_body_is_refused),
        cmocka_unit_test(test_opapi_requests_waiting_for_the_store_are_bounded),
        cmocka_unit_test(test_opapi_reply_without_memory_is_counted_and_logged),
        cmocka_unit_test(test_opapi_status_oldest_pending_is_the_stores),
        cmocka_unit_test(test_opapi_security_lines_are_rate_limited),
        cmocka_unit_test(test_opapi_failed_replies_are_counted_and_rate_limited),
    };
    return cmocka_run_group_tests_name("opapi", tests, NULL, NULL);
}
