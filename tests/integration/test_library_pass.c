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
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "sqlfile.h"
#include "harness.h"
#include "mr_codec.h"

typedef struct {
    int acks, errors, error_code;
    int ack_code;             /* of the last Ack: the refusal it overturns, 0 none */
    uint64_t ack_seq;
    char error_id[80];
} s_seen_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    s_seen_t *s = arg;
    if (ev->type == MR_EVENT_ACK) {
        s->acks++;
        s->ack_code = ev->code;
        s->ack_seq = ev->seq;
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

/* The test's broker: a ROUTER socket and the routing id of its one client. */
typedef struct {
    void *zctx, *router;
    char ep[128];
    uint8_t rid[256];
    size_t rid_len;
} s_broker_t;

static void s_broker_open(s_broker_t *b, const char *tag)
{
    memset(b, 0, sizeof *b);
    snprintf(b->ep, sizeof b->ep, "ipc:///tmp/mrt-scripted-broker-%s-%ld", tag, (long)getpid());
    b->zctx = zmq_ctx_new();
    assert_non_null(b->zctx);
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    assert_non_null(b->router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(b->router, b->ep), 0);
}

static void s_broker_close(s_broker_t *b)
{
    zmq_close(b->router);
    zmq_ctx_term(b->zctx);
}

/* The next frame client c sends (c is polled meanwhile, without handler, so
 * that it connects, says Hello and resends), 10 s at most.  Caller frees. */
static mr_frame_t *s_broker_recv(s_broker_t *b, mr_client_t *c)
{
    long long until = mrt_now_ms() + 10000;
    zmq_pollitem_t item = {.socket = b->router, .events = ZMQ_POLLIN};
    while (mrt_now_ms() < until) {
        assert_true(mr_client_poll(c, 50, NULL, NULL) >= 0);
        if (zmq_poll(&item, 1, 0) != 1)
            continue;
        int n = zmq_recv(b->router, b->rid, sizeof b->rid, 0);
        assert_true(n > 0);
        b->rid_len = (size_t)n;
        zmq_msg_t m;
        zmq_msg_init(&m);
        assert_true(zmq_msg_recv(&m, b->router, 0) >= 0);
        mr_frame_t *f = medroute__v1__frame__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        assert_non_null(f);
        return f;
    }
    fail_msg("the client sent nothing within 10 s");
    return NULL;
}

/* Waits for the next frame of c and checks its body; for an Envelope, its
 * message id is id (when not NULL).  The frame's submission_tag. */
static uint64_t s_broker_expect(s_broker_t *b, mr_client_t *c, int body_case, const char *id)
{
    mr_frame_t *f = s_broker_recv(b, c);
    /* A heartbeat, or a Hello repeated on a slow machine, may come between. */
    while ((int)f->body_case != body_case &&
           (f->body_case == MEDROUTE__V1__FRAME__BODY_HEARTBEAT ||
            f->body_case == MEDROUTE__V1__FRAME__BODY_HELLO)) {
        medroute__v1__frame__free_unpacked(f, NULL);
        f = s_broker_recv(b, c);
    }
    assert_int_equal(f->body_case, body_case);
    if (id != NULL)
        assert_string_equal(f->envelope->message_id, id);
    uint64_t tag = f->submission_tag;
    medroute__v1__frame__free_unpacked(f, NULL);
    return tag;
}

static void s_broker_welcome(s_broker_t *b, uint32_t max_message_bytes)
{
    Medroute__V1__Welcome w = MEDROUTE__V1__WELCOME__INIT;
    w.broker_id = "test";
    w.heartbeat_interval_ms = 5000;
    w.heartbeat_timeout_ms = 15000;
    w.max_message_bytes = max_message_bytes;
    w.max_inflight = 64;
    w.max_acks_per_frame = 64;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    s_send(b->router, b->rid, b->rid_len, &f);
}

/* Error{id, code, seq, submission_tag = tag}. */
static void s_broker_error_of(s_broker_t *b, const char *id, int code, uint64_t seq, uint64_t tag)
{
    Medroute__V1__Error e = MEDROUTE__V1__ERROR__INIT;
    e.message_id = (char *)id;
    e.code = (Medroute__V1__ErrorCode)code;
    e.reason = "scripted";
    e.seq = seq;
    e.submission_tag = tag;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ERROR;
    f.error = &e;
    s_send(b->router, b->rid, b->rid_len, &f);
}

/* An Error as a broker that does not echo tags sends it. */
static void s_broker_error(s_broker_t *b, const char *id, int code)
{
    s_broker_error_of(b, id, code, 0, 0);
}

/* Ack{id, seq, duplicate, submission_tag = tag}. */
static void s_broker_ack(s_broker_t *b, const char *id, uint64_t seq, bool dup, uint64_t tag)
{
    Medroute__V1__Ack a = MEDROUTE__V1__ACK__INIT;
    a.message_id = (char *)id;
    a.seq = seq;
    a.duplicate = dup;
    a.submission_tag = tag;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &a;
    s_send(b->router, b->rid, b->rid_len, &f);
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
    s_broker_t b;
    s_broker_open(&b, "welcome");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "SMALL-1", 10);
    s_submit(c, "HUGE-1", 20000);
    s_submit(c, "SMALL-2", 10);

    /* The client says Hello once its connection is up (seen in its polls). */
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);

    /* Welcome with a 4,096-byte limit, and the Acks of the two small ones,
     * all in the client's socket before its next poll. */
    s_broker_welcome(&b, 4096);
    s_send_ack(b.router, b.rid, b.rid_len, "SMALL-1", 1);
    s_send_ack(b.router, b.rid, b.rid_len, "SMALL-2", 2);
    usleep(300 * 1000);

    s_seen_t seen = {0};
    assert_true(mr_client_poll(c, 100, on_event, &seen) > 0);
    assert_int_equal(seen.acks, 2);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_TOO_LARGE);
    assert_string_equal(seen.error_id, "HUGE-1");
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * The outcomes kept for a poll with a handler are in the state directory
 * before the messages leave the outbox: a process that ends first (a kill
 * as much as a close: nothing is written at the end) hands them over at
 * the next start, once.  Worst was the library's own TOO_LARGE refusal at
 * the Welcome, kept in memory only: the message was gone from the outbox
 * and the application never heard of it.
 */
static void test_library_pass_outcomes_kept_across_a_restart(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "kept");
    char dir[] = "/tmp/mrt-kept-XXXXXX";
    assert_non_null(mkdtemp(dir));
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "KEPT-1", 10);
    s_submit(c, "KEPT-HUGE", 20000);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 4096);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "KEPT-1");
    s_send_ack(b.router, b.rid, b.rid_len, "KEPT-1", 12);
    long long until = mrt_now_ms() + 10000;
    while (mr_client_unacked(c) > 0 && mrt_now_ms() < until)
        assert_true(mr_client_poll(c, 50, NULL, NULL) >= 0); /* both outcomes kept */
    assert_int_equal(mr_client_unacked(c), 0);
    mr_client_destroy(&c);

    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_unacked(c), 0);
    s_seen_t seen = {0};
    assert_int_equal(mr_client_poll(c, 0, on_event, &seen), 2);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_TOO_LARGE);
    assert_string_equal(seen.error_id, "KEPT-HUGE");
    mr_client_destroy(&c);

    /* Handed over: not again. */
    c = mr_client_new(&o);
    assert_non_null(c);
    seen = (s_seen_t){0};
    assert_true(mr_client_poll(c, 0, on_event, &seen) >= 0);
    assert_int_equal(seen.acks + seen.errors, 0);
    mr_client_destroy(&c);

    s_broker_close(&b);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Ends the process inside the handler taking its second event. */
static int on_die_at_second(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c, (void)ev;
    if (++*(int *)arg == 2)
        _exit(0);
    return 0;
}

/*
 * Outcomes kept on disk (a poll without handler) are handed over by the
 * next poll with one: a process that ends inside the handler taking the
 * second hands that one over again at its next start, and the third, not
 * the first, which the application had taken.  All three were forgotten
 * on disk only once all were handed, so the first was told twice.
 */
static void test_library_pass_kept_outcome_handed_over_is_not_told_again(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "kept-crash");
    char dir[] = "/tmp/mrt-kept-crash-XXXXXX";
    assert_non_null(mkdtemp(dir));
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    const char *ids[] = {"KC-1", "KC-2", "KC-3"};
    for (int i = 0; i < 3; i++)
        s_submit(c, ids[i], 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    for (int i = 0; i < 3; i++) {
        uint64_t t = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, ids[i]);
        s_broker_ack(&b, ids[i], (uint64_t)i + 1, false, t);
    }
    long long until = mrt_now_ms() + 10000;
    while (mr_client_unacked(c) > 0 && mrt_now_ms() < until)
        assert_true(mr_client_poll(c, 50, NULL, NULL) >= 0); /* all three kept */
    assert_int_equal(mr_client_unacked(c), 0);
    mr_client_destroy(&c);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        mr_client_t *k = mr_client_new(&o);
        int n = 0;
        if (k != NULL)
            (void)mr_client_poll(k, 0, on_die_at_second, &n);
        _exit(1); /* the handler never reached its second event */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    c = mr_client_new(&o);
    assert_non_null(c);
    s_seen_t seen = {0};
    assert_int_equal(mr_client_poll(c, 0, on_event, &seen), 2);
    assert_int_equal(seen.acks, 2);
    assert_int_equal(seen.ack_seq, 3);
    mr_client_destroy(&c);

    s_broker_close(&b);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/*
 * A damaged outbox row that cannot be moved to outbox_damaged (a trigger
 * refuses the move) stays in the outbox and is found at every start; an
 * application that polls with no handler for three starts hears of it
 * once at the fourth, not four times: each start kept a notice of it on
 * disk, and the pile was handed over at the first poll with a handler.
 * The row still there, the next start tells it again, once.
 */
static void test_library_pass_damaged_row_left_in_outbox_is_told_once(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "stuck");
    char dir[] = "/tmp/mrt-stuck-XXXXXX", db[64];
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/client-t-aihua.db", dir);
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "STUCK-1", 10);
    mr_client_destroy(&c);
    sqlfile_exec(db, "UPDATE outbox SET message_id = NULL;"
              "CREATE TRIGGER no_aside BEFORE INSERT ON outbox_damaged"
              " BEGIN SELECT RAISE(ABORT, 'no room'); END;");

    for (int i = 0; i < 3; i++) {
        c = mr_client_new(&o);
        assert_non_null(c);
        assert_int_equal(mr_client_outbox_damaged(c), 1);
        assert_true(mr_client_poll(c, 0, NULL, NULL) >= 0);
        mr_client_destroy(&c);
    }
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outbox"), 1);
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outcome"), 0);

    for (int i = 0; i < 2; i++) {
        c = mr_client_new(&o);
        assert_non_null(c);
        s_seen_t seen = {0};
        assert_int_equal(mr_client_poll(c, 0, on_event, &seen), 1);
        assert_int_equal(seen.errors, 1);
        assert_int_equal(seen.error_code, MR_E_INVALID);
        assert_string_equal(seen.error_id, "");
        mr_client_destroy(&c);
    }
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outbox"), 1);

    s_broker_close(&b);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Polls c with on_event until seen has `acks` Acks and `errors` Errors, 10 s
 * at most, and then once more: what is counted is all that came. */
static void s_poll_for(mr_client_t *c, s_seen_t *seen, int acks, int errors)
{
    long long until = mrt_now_ms() + 10000;
    while ((seen->acks < acks || seen->errors < errors) && mrt_now_ms() < until)
        assert_true(mr_client_poll(c, 50, on_event, seen) >= 0);
    assert_true(mr_client_poll(c, 200, on_event, seen) >= 0);
}

/* A client on b whose message id (content of pad) went out twice, its Ack
 * being late (the client's Ack time-out), and was then acknowledged as seq
 * by the first send's Ack: the second send's Ack may still come. */
static mr_client_t *s_acked_after_two_sends(s_broker_t *b, const char *id, int pad, uint64_t seq)
{
    mr_client_opts_t o = {.endpoint = b->ep, .facility = "t-aihua", .ack_timeout_ms = 200};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, id, pad);
    s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(b, 1 << 20);
    s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, id);
    /* No Ack yet: the client sends it again after its time-out. */
    s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, id);
    s_send_ack(b->router, b->rid, b->rid_len, id, seq); /* the first send's */
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 0);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(mr_client_unacked(c), 0);
    return c;
}

/*
 * A message sent twice (its Ack was late: the client's Ack time-out) is
 * acknowledged by its first Ack; the application then submits the same id
 * with other content.  The second Ack of the first version, late, names the
 * same id: it must not acknowledge the new content, which the broker
 * refuses as CONFLICT (it keeps the first).  Until the fifteenth session it
 * did, and the application believed stored what never was.
 */
static void test_library_pass_late_ack_is_not_for_other_content(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "late-ack");
    mr_client_t *c = s_acked_after_two_sends(&b, "LATE-1", 10, 7);

    /* The same id, other content: sent at once. */
    s_submit(c, "LATE-1", 20);
    assert_int_equal(mr_client_unacked(c), 1);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "LATE-1");
    /* The second send's Ack, late; then the broker's answer to the new one. */
    Medroute__V1__Ack a = MEDROUTE__V1__ACK__INIT;
    a.message_id = "LATE-1";
    a.seq = 7;
    a.duplicate = true;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &a;
    s_send(b.router, b.rid, b.rid_len, &f);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 0); /* an Ack would come now; none must */
    assert_int_equal(seen.acks, 0);
    assert_int_equal(mr_client_unacked(c), 1);
    s_broker_error(&b, "LATE-1", MR_E_CONFLICT);
    s_poll_for(c, &seen, 0, 1);
    assert_int_equal(seen.acks, 0);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_CONFLICT);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/* The same story with the same content submitted again (a retry with a new
 * created_at_ms): the late Ack is an answer for it as good as its own, the
 * broker's duplicate Ack of the same seq. */
static void test_library_pass_late_ack_counts_for_the_same_content(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "late-same");
    mr_client_t *c = s_acked_after_two_sends(&b, "SAME-1", 10, 9);

    usleep(5 * 1000); /* another created_at_ms, which does not make it other content */
    s_submit(c, "SAME-1", 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "SAME-1");
    s_send_ack(b.router, b.rid, b.rid_len, "SAME-1", 9);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 0);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * The broker sends an Ack to the facility's session of the moment (intake.c),
 * not to the connection the message came on: a copy sent by a client that
 * then ended (killed before the Ack; a clean close leaves the outbox as a
 * kill does) is answered on the connection of the next process, if the
 * store commits it after that one's Hello (a store that stalls).  The new
 * process sends the outbox again, so two Acks come: the late one may follow
 * a resubmission of the id with other content, and must not acknowledge it.
 * A message read back from the outbox used to count as sent once, by this
 * process: acknowledged, it was not remembered, and the second Ack took the
 * other content for stored (the broker refuses it as CONFLICT).
 */
static void test_library_pass_late_ack_of_an_earlier_process(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "late-restart");
    char dir[] = "/tmp/mrt-late-restart-XXXXXX";
    assert_non_null(mkdtemp(dir));
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "REST-1", 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "REST-1");
    mr_client_destroy(&c); /* gone before the Ack: the message stays in the outbox */

    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_unacked(c), 1);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "REST-1");
    /* The first process's copy, committed now: its Ack comes to this session. */
    s_send_ack(b.router, b.rid, b.rid_len, "REST-1", 11);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 0);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(mr_client_unacked(c), 0);

    /* The same id, other content; then the Ack of this process's copy. */
    s_submit(c, "REST-1", 20);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "REST-1");
    Medroute__V1__Ack a = MEDROUTE__V1__ACK__INIT;
    a.message_id = "REST-1";
    a.seq = 11;
    a.duplicate = true;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &a;
    s_send(b.router, b.rid, b.rid_len, &f);
    /* The broker's answer to the new content, behind it on the same pipe:
     * once it is in, the late Ack has been read. */
    s_broker_error(&b, "REST-1", MR_E_CONFLICT);
    seen = (s_seen_t){0};
    s_poll_for(c, &seen, 0, 1);
    assert_int_equal(seen.acks, 0);
    assert_int_equal(seen.error_code, MR_E_CONFLICT);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* A client on b whose message id (content of pad) went out twice, its
 * answer being late (the client's Ack time-out), both copies with the same
 * tag, returned. */
static mr_client_t *s_sent_twice(s_broker_t *b, const char *id, int pad, uint64_t *tag)
{
    mr_client_opts_t o = {.endpoint = b->ep, .facility = "t-aihua", .ack_timeout_ms = 200};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, id, pad);
    s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(b, 1 << 20);
    *tag = s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, id);
    assert_true(*tag != 0);
    assert_int_equal(s_broker_expect(b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, id), *tag);
    return c;
}

/*
 * A message sent twice is refused (CONFLICT) by the answer to its first
 * copy; the application then submits the id with the content the broker
 * holds.  The refusal of the second copy, late, names the same id: it must
 * not settle the new submission, which the broker acknowledges (the tag
 * tells them apart), nor be told twice.  The library took it for the new
 * one's refusal, and dropped the Ack that followed.
 */
static void test_library_pass_late_refusal_is_not_for_a_later_submission(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "late-refusal");
    uint64_t t1, t2;
    mr_client_t *c = s_sent_twice(&b, "TAG-1", 20, &t1);
    s_broker_error_of(&b, "TAG-1", MR_E_CONFLICT, 0, t1);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 0, 1);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(mr_client_unacked(c), 0);

    s_submit(c, "TAG-1", 10);
    t2 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "TAG-1");
    assert_true(t2 != 0 && t2 != t1);
    s_broker_error_of(&b, "TAG-1", MR_E_CONFLICT, 0, t1); /* the second copy's */
    s_broker_ack(&b, "TAG-1", 6, true, t2);
    s_poll_for(c, &seen, 1, 1);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * A message sent twice is refused (QUEUE_FULL) by the answer to its first
 * copy, and its second copy is then stored; the application meanwhile
 * submitted the id with other content.  The second copy's Ack, late, is not
 * the new submission's: the broker refuses that one as CONFLICT.  The
 * library took the Ack for the new content.  It is told as what it is, the
 * Ack of the submission refused QUEUE_FULL (its code).
 */
static void test_library_pass_late_ack_after_a_final_refusal(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "ack-after-refusal");
    uint64_t t1, t2;
    mr_client_t *c = s_sent_twice(&b, "TAG-2", 10, &t1);
    s_broker_error_of(&b, "TAG-2", MR_E_QUEUE_FULL, 0, t1);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 0, 1);
    assert_int_equal(seen.error_code, MR_E_QUEUE_FULL);

    s_submit(c, "TAG-2", 20);
    t2 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "TAG-2");
    s_broker_ack(&b, "TAG-2", 8, false, t1); /* the second copy's */
    s_broker_error_of(&b, "TAG-2", MR_E_CONFLICT, 0, t2);
    s_poll_for(c, &seen, 1, 2);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(seen.ack_code, MR_E_QUEUE_FULL);
    assert_int_equal(seen.ack_seq, 8);
    assert_int_equal(seen.errors, 2);
    assert_int_equal(seen.error_code, MR_E_CONFLICT);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * Some final refusals hold for a moment only (QUEUE_FULL: the queue
 * drains): a message sent twice is refused by the answer to its first
 * copy, and its second copy is stored.  The application, told "refused",
 * is told of the Ack too, once, with the refusal's code: the broker holds
 * the message and delivers it.  The library dropped that Ack silently.
 */
static void test_library_pass_ack_after_a_final_refusal_is_told(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "ack-told");
    uint64_t t1;
    mr_client_t *c = s_sent_twice(&b, "TAG-3", 10, &t1);
    s_broker_error_of(&b, "TAG-3", MR_E_QUEUE_FULL, 0, t1);
    s_broker_ack(&b, "TAG-3", 12, false, t1); /* the second copy's */
    s_broker_ack(&b, "TAG-3", 12, true, t1);  /* another copy's, if any: no news */
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 1);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_QUEUE_FULL);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(seen.ack_code, MR_E_QUEUE_FULL);
    assert_int_equal(seen.ack_seq, 12);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * A copy sent by a process that then ended (killed before its answer) is
 * stored late, after the next process on the same state directory said
 * Hello: its Ack comes to that one (the broker answers the facility's
 * session of the moment), behind that process's refusal of its own copy
 * (a refusal of the moment).  The message is the same submission, read
 * back from the outbox: its copies carry the same tag, and the Ack is told
 * after the refusal, with its code.  The entry read back drew a new tag,
 * so the Ack of the first process's copy answered nothing known and was
 * dropped: the application believed refused a message the broker delivers.
 */
static void test_library_pass_ack_of_an_earlier_process_copy_after_a_refusal(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "tag-restart");
    char dir[] = "/tmp/mrt-tag-restart-XXXXXX";
    assert_non_null(mkdtemp(dir));
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "TAGR-1", 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    uint64_t t1 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "TAGR-1");
    mr_client_destroy(&c); /* gone before the answer: the message stays in the outbox */

    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_unacked(c), 1);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    uint64_t t2 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "TAGR-1");
    s_broker_error_of(&b, "TAGR-1", MR_E_QUEUE_FULL, 0, t2); /* this process's copy */
    s_broker_ack(&b, "TAGR-1", 14, false, t1);                /* the first one's, stored */
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 1);
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.error_code, MR_E_QUEUE_FULL);
    assert_int_equal(seen.acks, 1);
    assert_int_equal(seen.ack_code, MR_E_QUEUE_FULL);
    assert_int_equal(seen.ack_seq, 14);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/*
 * An EXPIRED notice (a stored message, by its seq, became a dead letter)
 * answers no submission: the application hears of it, and a resubmission
 * of the id waiting in the outbox stays there for its own answer.  The
 * library took the notice for that submission's refusal.
 */
static void test_library_pass_expiry_notice_settles_no_submission(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "expiry");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "EXP-1", 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    uint64_t t1 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "EXP-1");
    s_broker_ack(&b, "EXP-1", 3, false, t1);
    s_seen_t seen = {0};
    s_poll_for(c, &seen, 1, 0);

    s_submit(c, "EXP-1", 20);
    uint64_t t2 = s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "EXP-1");
    s_broker_error_of(&b, "EXP-1", MR_E_EXPIRED, 3, 0);
    s_poll_for(c, &seen, 1, 1);
    assert_int_equal(seen.error_code, MR_E_EXPIRED);
    assert_int_equal(mr_client_unacked(c), 1);
    s_broker_error_of(&b, "EXP-1", MR_E_CONFLICT, 0, t2);
    s_poll_for(c, &seen, 1, 2);
    assert_int_equal(seen.error_code, MR_E_CONFLICT);
    assert_int_equal(mr_client_unacked(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * mr_client_send_json waits for the answer to its own submission.  An
 * application that polled without a handler has the Ack of an earlier
 * submission of the id kept for its next poll with one; submitted again,
 * with other content, the id is sent and waits for the broker's answer
 * (here none, then CONFLICT): the kept Ack is not it, and stays for the
 * application's handler.  The library took the first outcome kept under
 * the id, and said the new content was stored.
 */
static void test_library_pass_send_json_waits_for_its_own_answer(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "own-answer");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_submit(c, "OWN-1", 10);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "OWN-1");
    s_send_ack(b.router, b.rid, b.rid_len, "OWN-1", 4);
    long long until = mrt_now_ms() + 10000;
    while (mr_client_unacked(c) > 0 && mrt_now_ms() < until)
        assert_true(mr_client_poll(c, 50, NULL, NULL) >= 0); /* the Ack is kept */
    assert_int_equal(mr_client_unacked(c), 0);

    /* The same id, other content: no answer yet. */
    char *json = mrt_lab_order_json("OWN-1", 20);
    assert_non_null(json);
    mr_result_t res;
    assert_int_equal(mr_client_send_json(c, json, &res, 300, NULL, NULL), -ETIMEDOUT);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_ENVELOPE, "OWN-1");
    /* Again, with a handler: the kept Ack goes to it, as an Ack of OWN-1. */
    s_seen_t seen = {0};
    assert_int_equal(mr_client_send_json(c, json, &res, 300, on_event, &seen), -ETIMEDOUT);
    assert_int_equal(seen.acks, 1);
    /* The broker's answer to the new content. */
    s_broker_error(&b, "OWN-1", MR_E_CONFLICT);
    assert_int_equal(mr_client_send_json(c, json, &res, 10000, on_event, &seen), -EPROTO);
    assert_int_equal(res.code, MR_E_CONFLICT);
    assert_int_equal(seen.errors, 0);
    assert_int_equal(mr_client_unacked(c), 0);
    free(json);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/* The next frame c sent, already queued (c is not polled: a poll may send
 * frames of its own), 10 s at most.  Caller frees. */
static mr_frame_t *s_broker_recv_queued(s_broker_t *b)
{
    zmq_pollitem_t item = {.socket = b->router, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&item, 1, 10000), 1);
    uint8_t rid[256];
    assert_true(zmq_recv(b->router, rid, sizeof rid, 0) > 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, b->router, 0) >= 0);
    mr_frame_t *f = medroute__v1__frame__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(f);
    return f;
}

/*
 * mr_client_wait_connected reads nothing past the Welcome, so it sends no
 * Heartbeat either: the broker sends a delivery left unacknowledged again
 * on the same connection once a Heartbeat or DeliveryAck shows that the
 * client reads (protocol.md 6.1), and the deliveries behind the Welcome
 * are not read yet.  Here its Welcome comes after its heartbeat interval
 * (1 ms): the first frame after the Hello is the Envelope submitted next.
 * It sent a Heartbeat at the Welcome.
 */
static void test_library_pass_wait_connected_sends_no_heartbeat(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "wait-hb");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    Medroute__V1__Welcome w = MEDROUTE__V1__WELCOME__INIT;
    w.broker_id = "test";
    w.heartbeat_interval_ms = 1;
    w.heartbeat_timeout_ms = 60000;
    w.max_message_bytes = 1 << 20;
    w.max_inflight = 64;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    s_send(b.router, b.rid, b.rid_len, &f);
    /* The interval is over since the Hello went out. */
    int64_t hello_seen = mr_mono_ms(); /* the client's clock */
    while (mr_mono_ms() < hello_seen + 3) {
    }
    assert_int_equal(mr_client_wait_connected(c, 10000), 0);
    s_submit(c, "WAIT-1", 10); /* sent at once: the client is welcomed */
    mr_frame_t *next = s_broker_recv_queued(&b);
    while (next->body_case == MEDROUTE__V1__FRAME__BODY_HELLO) { /* one repeated on a slow machine */
        medroute__v1__frame__free_unpacked(next, NULL);
        next = s_broker_recv_queued(&b);
    }
    assert_int_equal(next->body_case, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    medroute__v1__frame__free_unpacked(next, NULL);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/* Sends Delivery{seq, envelope id from yx-lab to t-aihua}. */
static void s_broker_delivery(s_broker_t *b, uint64_t seq, const char *id)
{
    Medroute__V1__Envelope env = MEDROUTE__V1__ENVELOPE__INIT;
    env.message_id = (char *)id;
    env.source = "yx-lab";
    env.destination = "t-aihua";
    env.kind = MEDROUTE__V1__KIND__KIND_LAB_RESULT;
    Medroute__V1__Delivery d = MEDROUTE__V1__DELIVERY__INIT;
    d.seq = seq;
    d.envelope = &env;
    d.attempt = 1;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY;
    f.delivery = &d;
    s_send(b->router, b->rid, b->rid_len, &f);
}

static int on_take(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY)
        (*(int *)arg)++;
    return 0;
}

/*
 * A Delivery without seq (no medrouted sends one) is not acknowledged: a
 * DeliveryAck holding seq 0 draws an INVALID without message id, which the
 * library could only read as the refusal of a Hello.  The next delivery's
 * DeliveryAck holds its own seq alone.
 */
static void test_library_pass_no_delivery_ack_for_seq_0(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "seq0");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    s_broker_delivery(&b, 0, "NOSEQ-1");
    s_broker_delivery(&b, 5, "SEQ-5");
    int taken = 0;
    long long until = mrt_now_ms() + 10000;
    while (taken < 2 && mrt_now_ms() < until)
        assert_true(mr_client_poll(c, 50, on_take, &taken) >= 0);
    assert_int_equal(taken, 2);
    mr_frame_t *f = s_broker_recv(&b, c);
    while (f->body_case == MEDROUTE__V1__FRAME__BODY_HEARTBEAT) {
        medroute__v1__frame__free_unpacked(f, NULL);
        f = s_broker_recv(&b, c);
    }
    assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK);
    assert_int_equal(f->delivery_ack->seq, 5);
    assert_int_equal(f->delivery_ack->n_more_seqs, 0);
    medroute__v1__frame__free_unpacked(f, NULL);
    assert_int_equal(mr_client_refused(c), 0);

    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * What mr_client_submit_json fills in (source, message_id, created_at_ms)
 * it fills in only when the JSON does not give it, under either spelling
 * the mapping accepts: the lowerCamelCase "messageId" and "createdAtMs"
 * (what protobuf's own JSON printers write by default) are the caller's
 * values, and a null one is missing.  Until the seventeenth session the
 * library looked for the snake_case key alone, added it beside the camel
 * one, and the mapping then refused the JSON ("field given twice").
 */
static void test_library_pass_submit_json_camel_case_keys(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "camel");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    char err[200] = "", out_id[80] = "";
    assert_int_equal(mr_client_submit_json(c,
                                           "{\"messageId\":\"CAMEL-1\",\"createdAtMs\":1714540800123,"
                                           "\"destination\":\"yx-lab\",\"kind\":\"lab_order\","
                                           "\"labOrder\":{\"placerOrderNumber\":\"P-1\"}}",
                                           out_id, err, sizeof err),
                     0);
    assert_string_equal(out_id, "CAMEL-1");
    /* null is "not set": filled in as if absent */
    assert_int_equal(mr_client_submit_json(c,
                                           "{\"message_id\":\"NULLS-1\",\"source\":null,"
                                           "\"createdAtMs\":null,\"destination\":\"yx-lab\","
                                           "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\":\"P-2\"}}",
                                           out_id, err, sizeof err),
                     0);
    assert_string_equal(out_id, "NULLS-1");

    s_broker_expect(&b, c, MEDROUTE__V1__FRAME__BODY_HELLO, NULL);
    s_broker_welcome(&b, 1 << 20);
    for (int k = 0; k < 2; k++) {
        mr_frame_t *f = s_broker_recv(&b, c);
        while (f->body_case == MEDROUTE__V1__FRAME__BODY_HEARTBEAT ||
               f->body_case == MEDROUTE__V1__FRAME__BODY_HELLO) {
            medroute__v1__frame__free_unpacked(f, NULL);
            f = s_broker_recv(&b, c);
        }
        assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
        assert_string_equal(f->envelope->source, "t-aihua");
        if (strcmp(f->envelope->message_id, "CAMEL-1") == 0) {
            assert_true(f->envelope->created_at_ms == 1714540800123LL);
        } else {
            assert_string_equal(f->envelope->message_id, "NULLS-1");
            assert_true(f->envelope->created_at_ms > 1714540800123LL);
        }
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    mr_client_destroy(&c);
    s_broker_close(&b);
}

/*
 * A key given twice in the JSON of mr_client_submit_json is refused, as
 * the same field under its two spellings is: jansson kept the last value
 * silently, so {"destination": "yx-lab", ..., "destination": "yx-lead"}
 * went to yx-lead.
 */
static void test_library_pass_submit_json_duplicate_key(void **state)
{
    (void)state;
    s_broker_t b;
    s_broker_open(&b, "dupkey");
    mr_client_opts_t o = {.endpoint = b.ep, .facility = "t-aihua"};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    char err[200] = "", out_id[80] = "";
    assert_int_equal(mr_client_submit_json(c,
                                           "{\"message_id\":\"DUP-1\",\"destination\":\"yx-lab\","
                                           "\"kind\":\"lab_order\",\"destination\":\"yx-lead\","
                                           "\"lab_order\":{\"placer_order_number\":\"P-1\"}}",
                                           out_id, err, sizeof err),
                     -EINVAL);
    assert_non_null(strstr(err, "duplicate"));
    mr_client_destroy(&c);
    s_broker_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_library_pass_refusal_in_the_welcome_pass),
        cmocka_unit_test(test_library_pass_outcomes_kept_across_a_restart),
        cmocka_unit_test(test_library_pass_kept_outcome_handed_over_is_not_told_again),
        cmocka_unit_test(test_library_pass_damaged_row_left_in_outbox_is_told_once),
        cmocka_unit_test(test_library_pass_late_ack_is_not_for_other_content),
        cmocka_unit_test(test_library_pass_late_ack_counts_for_the_same_content),
        cmocka_unit_test(test_library_pass_late_ack_of_an_earlier_process),
        cmocka_unit_test(test_library_pass_send_json_waits_for_its_own_answer),
        cmocka_unit_test(test_library_pass_late_refusal_is_not_for_a_later_submission),
        cmocka_unit_test(test_library_pass_late_ack_after_a_final_refusal),
        cmocka_unit_test(test_library_pass_ack_after_a_final_refusal_is_told),
        cmocka_unit_test(test_library_pass_ack_of_an_earlier_process_copy_after_a_refusal),
        cmocka_unit_test(test_library_pass_expiry_notice_settles_no_submission),
        cmocka_unit_test(test_library_pass_no_delivery_ack_for_seq_0),
        cmocka_unit_test(test_library_pass_wait_connected_sends_no_heartbeat),
        cmocka_unit_test(test_library_pass_submit_json_camel_case_keys),
        cmocka_unit_test(test_library_pass_submit_json_duplicate_key),
    };
    return cmocka_run_group_tests_name("library_pass", tests, NULL, NULL);
}
