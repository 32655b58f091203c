/*
 * Unit tests for daemon/dispatch.c: the facility protocol table and its one
 * error path, down through the handlers it names (Hello in session.c,
 * Envelope in intake.c, DeliveryAck in router.c).
 *
 * The server_t is built by hand: a config from text, its registry, peers,
 * the routing-id map and a real store (own uv loop, SQLite file in a
 * mkdtemp directory); no sockets (facility_ep = NULL).  The test is linked
 * with -Wl,--wrap=server_send_facility, so every reply the daemon sends
 * lands in __wrap_server_send_facility below, which packs it, decodes it
 * again as a medroute.v1.Frame (what a facility would read) and records it
 * with the routing id it was addressed to, after checking that a strict
 * decoder would take it (every string valid UTF-8).  Deliveries (router.c,
 * through server_send_facility_msg) are recorded the same way when a test
 * gives the server a stand-in facility endpoint (s_deliveries_on); the
 * endpoint's other uses, endpoint_user_id and endpoint_src_fd, are wrapped
 * to answer NULL and -1.  clock_gettime is wrapped too: a test may stop the
 * clocks of its own thread (the loop's; the store's threads keep theirs), so
 * that the log's windows do not move under it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "frozen_clock.h"
#include "acks.h"
#include "arena.h"
#include "dispatch.h"
#include "endpoint.h"
#include "reload.h"
#include "router.h"
#include "server.h"
#include "session.h"

#define S_WAIT_MS 10000
#define S_MAX_REPLIES 64

/* ---- the recorded replies --------------------------------------------------- */

typedef struct {
    uint8_t rid[MR_RID_MAX];
    size_t rid_len;
    mr_frame_t *f;
} s_reply_t;

static s_reply_t s_replies[S_MAX_REPLIES];
static int s_n_replies;
/* A routing id whose connection is gone: a send to it fails as unreachable. */
static const uint8_t *s_gone_rid;
static size_t s_gone_rid_len;

int __wrap_server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                                const ProtobufCMessage *frame);

int __wrap_server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                                const ProtobufCMessage *frame)
{
    (void)self;
    if (s_gone_rid != NULL && rid_len == s_gone_rid_len && memcmp(rid, s_gone_rid, rid_len) == 0)
        return -EHOSTUNREACH;
    assert_true(s_n_replies < S_MAX_REPLIES);
    assert_true(rid_len <= MR_RID_MAX);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(frame, &buf, &len), 0);
    /* What a conforming (strict) decoder requires: every string UTF-8. */
    char path[96];
    if (mr_find_bad_utf8(&medroute__v1__frame__descriptor, buf, len, path, sizeof path) != 0)
        fail_msg("the daemon sent a frame whose %s is not valid UTF-8", path);
    s_reply_t *r = &s_replies[s_n_replies++];
    memcpy(r->rid, rid, rid_len);
    r->rid_len = rid_len;
    r->f = medroute__v1__frame__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(r->f);
    return 0;
}

/* Deliveries are recorded among the replies: a facility reads one stream. */
int __wrap_server_send_facility_msg(server_t *self, const uint8_t *rid, size_t rid_len,
                                    zmq_msg_t *msg);
const char *__wrap_endpoint_user_id(const endpoint_t *ep);

int __wrap_server_send_facility_msg(server_t *self, const uint8_t *rid, size_t rid_len,
                                    zmq_msg_t *msg)
{
    (void)self;
    assert_true(s_n_replies < S_MAX_REPLIES);
    assert_true(rid_len <= MR_RID_MAX);
    s_reply_t *r = &s_replies[s_n_replies++];
    memcpy(r->rid, rid, rid_len);
    r->rid_len = rid_len;
    r->f = medroute__v1__frame__unpack(NULL, zmq_msg_size(msg), zmq_msg_data(msg));
    zmq_msg_close(msg);
    assert_non_null(r->f);
    return 0;
}

/* The connection's CURVE key, as ZAP's User-Id (NULL: insecure). */
static const char *s_user_id;

const char *__wrap_endpoint_user_id(const endpoint_t *ep)
{
    (void)ep;
    return s_user_id;
}


int __wrap_endpoint_src_fd(const endpoint_t *ep);

int __wrap_endpoint_src_fd(const endpoint_t *ep)
{
    (void)ep;
    return -1; /* no connection behind these frames */
}

/* Store loads held back while s_hold_loads: the test decides when the store
 * sees them, and so what happens between a load and its answer. */
static bool s_hold_loads;
static store_req_t *s_held_loads[4];
static int s_n_held_loads;

void __real_store_submit(store_t *self, store_req_t *req);

/* While s_fail_acks, an ack's commit is reported failed to the router (the
 * store has written it: what the router does next is the question). */
static bool s_fail_acks;
static store_cb_t s_acked_cb;

static void s_ack_failed(store_req_t *req, void *arg)
{
    req->status = STORE_UNAVAILABLE;
    s_acked_cb(req, arg);
}

void __wrap_store_submit(store_t *self, store_req_t *req);

void __wrap_store_submit(store_t *self, store_req_t *req)
{
    if (s_hold_loads && req->op == STORE_LOAD) {
        assert_true(s_n_held_loads < 4);
        s_held_loads[s_n_held_loads++] = req;
        return;
    }
    if (s_fail_acks && req->op == STORE_ACK) {
        s_acked_cb = req->cb;
        req->cb = s_ack_failed;
    }
    __real_store_submit(self, req);
}

static void s_release_loads(server_t *s)
{
    for (int i = 0; i < s_n_held_loads; i++)
        __real_store_submit(s->store, s_held_loads[i]);
    s_n_held_loads = 0;
}

/* endpoint_check_closed, for a test that gives the server a stand-in
 * endpoint (router_pump sends only with one). */
void __wrap_endpoint_check_closed(endpoint_t *ep);

void __wrap_endpoint_check_closed(endpoint_t *ep)
{
    (void)ep;
}

static void s_replies_clear(void)
{
    for (int i = 0; i < s_n_replies; i++)
        medroute__v1__frame__free_unpacked(s_replies[i].f, NULL);
    memset(s_replies, 0, sizeof s_replies);
    s_n_replies = 0;
}

/* ---- fixture ----------------------------------------------------------------- */

#define S_KEY_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define S_KEY_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
#define S_KEY_C "3^IqWsk.PS}Fp^-@8%r5ZgJmUIUzunvx3bn+l3q#"

/* The fixture's config, with t-a's public key. */
#define S_CONF_TEXT(ta_key) S_CONF_KEYS(ta_key, S_KEY_B)
/* The same with t-a's and t-b's public keys. */
#define S_CONF_KEYS(ta_key, tb_key) \
    "broker_id = \"unit-broker\";\n" \
    "facility_endpoint = \"tcp://127.0.0.1:1\";\n" \
    "operator_endpoint = \"tcp://127.0.0.1:2\";\n" \
    "data_dir = \"unused\";\n" \
    "insecure = true;\n" \
    "limits = { max_message_bytes = 1024; max_inflight = 8;\n" \
    "           heartbeat_interval_ms = 1000; heartbeat_timeout_ms = 3000; };\n" \
    "facilities = (\n" \
    "  { id = \"lead\"; role = \"lead\"; },\n" \
    "  { id = \"img\"; role = \"imaging_centre\"; host = \"lead\"; },\n" \
    "  { id = \"t-a\"; role = \"township\"; public_key = \"" ta_key "\"; },\n" \
    "  { id = \"t-b\"; role = \"township\"; public_key = \"" tb_key "\"; }\n" \
    ");\n"

static const char *const s_conf_text = S_CONF_TEXT(S_KEY_A);

enum { LEAD = 0, IMG = 1, TA = 2, TB = 3 };

typedef struct {
    server_t *s;
    FILE *logf;
    char dir[64];
    char path[256];
} s_fx_t;

static int s_setup(void **state)
{
    s_fx_t *fx = calloc(1, sizeof *fx);
    if (fx == NULL)
        return -1;
    s_replies_clear();
    s_user_id = NULL;
    frozen_clock_set(false);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/mr-test-dispatch-XXXXXX");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->path, sizeof fx->path, "%s/medroute.db", fx->dir);
    server_t *s = calloc(1, sizeof *s);
    fx->s = s;
    if (s == NULL || uv_loop_init(&s->loop) != 0)
        return -1;
    fx->logf = tmpfile();
    s->log = fx->logf ? log_new(MR_LOG_ERROR, fx->logf) : NULL;
    char err[1024];
    s->conf = conf_load_string(s_conf_text, "unit.conf", err, sizeof err);
    if (s->log == NULL || s->conf == NULL) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    s->registry = registry_new(s->conf->facilities, s->conf->n_facilities, err, sizeof err);
    if (s->registry == NULL)
        return -1;
    s->peers = calloc(registry_count(s->registry), sizeof *s->peers);
    s->by_rid = strmap_new();
    s->by_former_rid = strmap_new();
    s->arena = arena_new(4096); /* small: big frames take the malloc path too */
    store_opts_t so = {.path = fx->path, .sync_full = false, .batch_max = 100, .batch_ms = 1};
    s->store = store_new(&s->loop, &so, s->log);
    s->acks = acks_new(&s->loop, s);
    s->facility_ep = NULL;
    if (s->peers == NULL || s->by_rid == NULL || s->by_former_rid == NULL || s->arena == NULL ||
        s->store == NULL || s->acks == NULL)
        return -1;
    *state = fx;
    return 0;
}

static void s_rm(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

static int s_teardown(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    int rc = 0;
    frozen_clock_set(false); /* left stopped by a test that failed */
    store_destroy(&s->store);
    acks_close(&s->acks);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&s->loop) != 0)
        rc = -1;
    router_stop(s);
    strmap_destroy(&s->by_rid);
    strmap_destroy(&s->by_former_rid);
    arena_destroy(&s->arena);
    free(s->peers);
    registry_destroy(&s->registry);
    conf_destroy(&s->conf);
    log_destroy(&s->log);
    fclose(fx->logf);
    free(s);
    s_replies_clear();
    s_rm(fx->dir, "medroute.db");
    s_rm(fx->dir, "medroute.db-wal");
    s_rm(fx->dir, "medroute.db-shm");
    rmdir(fx->dir);
    free(fx);
    return rc;
}

/* ---- sending frames ------------------------------------------------------------ */

#define RID_A ((const uint8_t *)"\0conn-a")
#define RID_B ((const uint8_t *)"\0conn-b")
#define RID_C ((const uint8_t *)"\0conn-c")
#define RID_LEN 7

static void s_raw(server_t *s, const uint8_t *rid, const void *data, size_t len)
{
    const void *parts[1] = {data};
    size_t sizes[1] = {len};
    dispatch_facility(s, rid, RID_LEN, parts, sizes, 1, 0);
}

/* A Frame (version 1) whose envelope field holds the n_parts byte strings
 * parts[] one after the other, as a sender may write them: its length in
 * frame (of size cap; the envelope under 128 bytes). */
static size_t s_frame_of(uint8_t *frame, size_t cap, const uint8_t *const *parts,
                         const size_t *sizes, size_t n_parts)
{
    size_t inner = 0;
    for (size_t i = 0; i < n_parts; i++)
        inner += sizes[i];
    assert_true(inner < 128 && inner + 4 <= cap);
    size_t n = 0;
    frame[n++] = 0x08; /* version = 1 */
    frame[n++] = 0x01;
    frame[n++] = 0x2a; /* field 5 (envelope), length-delimited */
    frame[n++] = (uint8_t)inner;
    for (size_t i = 0; i < n_parts; i++) {
        memcpy(frame + n, parts[i], sizes[i]);
        n += sizes[i];
    }
    return n;
}

static void s_send(server_t *s, const uint8_t *rid, const mr_frame_t *f)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    s_raw(s, rid, buf, len);
    free(buf);
}

static void s_frame_init(mr_frame_t *f, int body_case)
{
    medroute__v1__frame__init(f);
    f->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f->body_case = (Medroute__V1__Frame__BodyCase)body_case;
}

static void s_hello(server_t *s, const uint8_t *rid, const char *facility_id)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = (char *)facility_id;
    h.client_name = "unit-test/1";
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HELLO);
    f.hello = &h;
    s_send(s, rid, &f);
}

/* A valid referral from t-a to lead; tests change one field at a time. */
typedef struct {
    mr_envelope_t env;
    Medroute__V1__Referral ref;
    Medroute__V1__LabOrder lab;
} s_env_t;

static void s_env_init(s_env_t *e, const char *message_id)
{
    medroute__v1__envelope__init(&e->env);
    medroute__v1__referral__init(&e->ref);
    medroute__v1__lab_order__init(&e->lab);
    e->ref.referral_id = "R-1";
    e->ref.clinical_summary = "chest pain";
    e->lab.placer_order_number = "P-1";
    e->env.message_id = (char *)message_id;
    e->env.source = "t-a";
    e->env.destination = "lead";
    e->env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    e->env.priority = MEDROUTE__V1__PRIORITY__PRIORITY_URGENT;
    e->env.created_at_ms = 1700000000000;
    e->env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    e->env.referral = &e->ref;
}

static void s_send_env(server_t *s, const uint8_t *rid, const mr_envelope_t *env)
{
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    f.envelope = (mr_envelope_t *)env;
    s_send(s, rid, &f);
}

/* A DeliveryAck of seq alone. */
static void s_delivery_ack(server_t *s, const uint8_t *rid, uint64_t seq)
{
    Medroute__V1__DeliveryAck da = MEDROUTE__V1__DELIVERY_ACK__INIT;
    da.seq = seq;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK);
    f.delivery_ack = &da;
    s_send(s, rid, &f);
}

/* Drives the loop until n replies have been recorded; fails after S_WAIT_MS. */
static void s_wait_replies(server_t *s, int n)
{
    uint64_t start = uv_hrtime();
    while (s_n_replies < n) {
        uv_run(&s->loop, UV_RUN_NOWAIT);
        if (s_n_replies >= n)
            break;
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("%d replies after %d ms, expected %d", s_n_replies, S_WAIT_MS, n);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* Drives the loop until the store has answered everything submitted. */
static void s_settle(server_t *s)
{
    uint64_t start = uv_hrtime();
    while (store_backlog(s->store) > 0) {
        uv_run(&s->loop, UV_RUN_NOWAIT);
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("store backlog %zu after %d ms", store_backlog(s->store), S_WAIT_MS);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* The reply at index i is an Error with code, addressed to rid. */
static const Medroute__V1__Error *s_error_at(int i, const uint8_t *rid, int code)
{
    assert_true(i < s_n_replies);
    const s_reply_t *r = &s_replies[i];
    assert_int_equal(r->rid_len, RID_LEN);
    assert_memory_equal(r->rid, rid, RID_LEN);
    assert_int_equal(r->f->version, MR_PROTOCOL_VERSION);
    if (r->f->body_case != MEDROUTE__V1__FRAME__BODY_ERROR)
        fail_msg("reply %d: body case %d, expected Error %s", i, (int)r->f->body_case,
                 mr_error_name(code));
    if ((int)r->f->error->code != code)
        fail_msg("reply %d: error %s (%s), expected %s", i, mr_error_name(r->f->error->code),
                 r->f->error->reason, mr_error_name(code));
    assert_true(strlen(r->f->error->reason) > 0);
    return r->f->error;
}

/* Exactly one new reply since `before`, an Error with code. */
static const Medroute__V1__Error *s_expect_error(int before, const uint8_t *rid, int code)
{
    assert_int_equal(s_n_replies, before + 1);
    return s_error_at(before, rid, code);
}

static uint64_t s_rejected(const server_t *s, int code)
{
    return s->counters.rejected_by_code[code];
}

/* How many lines of the log hold what. */
static int s_lines(FILE *logf, const char *what)
{
    char line[2048];
    int n = 0;
    assert_int_equal(fflush(logf), 0);
    rewind(logf);
    while (fgets(line, sizeof line, logf) != NULL)
        n += strstr(line, what) != NULL;
    assert_int_equal(fseek(logf, 0, SEEK_END), 0);
    return n;
}

/* ---- frame-level checks -------------------------------------------------------- */

static void test_dispatch_part_count_malformed(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    const uint8_t one[] = {0x08, 0x01};
    const void *parts[2] = {one, one};
    size_t sizes[2] = {sizeof one, sizeof one};

    dispatch_facility(s, RID_A, RID_LEN, parts, sizes, 0, 0);
    s_expect_error(0, RID_A, MR_E_MALFORMED);
    dispatch_facility(s, RID_A, RID_LEN, parts, sizes, 2, 0);
    s_expect_error(1, RID_A, MR_E_MALFORMED);
    /* One part, but the endpoint dropped more: still malformed. */
    dispatch_facility(s, RID_A, RID_LEN, parts, sizes, 1, 1);
    const Medroute__V1__Error *e = s_expect_error(2, RID_A, MR_E_MALFORMED);
    assert_string_equal(e->reason, "expected exactly one frame part, got 1+");

    assert_int_equal(s->counters.v[CNT_RECEIVED], 3);
    assert_int_equal(s->counters.v[CNT_REJECTED], 3);
    assert_int_equal(s_rejected(s, MR_E_MALFORMED), 3);
}

static void test_dispatch_oversize_too_large(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    uint8_t big[1025];
    memset(big, 0, sizeof big);
    s_raw(s, RID_A, big, sizeof big);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_TOO_LARGE);
    assert_string_equal(e->reason, "frame of 1025 bytes exceeds the limit of 1024");
    /* At the limit the size passes (and these bytes then fail to decode). */
    memset(big, 0xff, sizeof big);
    s_raw(s, RID_A, big, 1024);
    s_expect_error(1, RID_A, MR_E_MALFORMED);
    assert_int_equal(s_rejected(s, MR_E_TOO_LARGE), 1);
    assert_int_equal(s_rejected(s, MR_E_MALFORMED), 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 2);
    assert_string_equal(e->message_id, "");

    /* An Envelope too large is refused naming its message_id (read off the
     * wire, not decoded), so that its sender knows which one. */
    s_env_t env;
    s_env_init(&env, "m-big");
    char filler[1100];
    memset(filler, 'x', sizeof filler - 1);
    filler[sizeof filler - 1] = '\0';
    env.ref.clinical_summary = filler;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    f.envelope = &env.env;
    s_send(s, RID_A, &f);
    e = s_expect_error(2, RID_A, MR_E_TOO_LARGE);
    assert_string_equal(e->message_id, "m-big");

    /* So is one whose nested fields do not decode: Frame{version = 1,
     * envelope = {message_id = "m-bad", referral (field 20) = 0xff}}. */
    static const uint8_t bad[] = {0x08, 0x01, 0x2a, 0x0b, 0x0a, 0x05, 'm', '-', 'b', 'a', 'd',
                                  0xa2, 0x01, 0x01, 0xff};
    s_raw(s, RID_A, bad, sizeof bad);
    e = s_expect_error(3, RID_A, MR_E_MALFORMED);
    assert_string_equal(e->message_id, "m-bad");
}

static void test_dispatch_undecodable_malformed(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    /* Field 2 (hello) says 100 bytes follow; 1 does. */
    const uint8_t bad[] = {0x12, 0x64, 0x0a};
    assert_null(medroute__v1__frame__unpack(NULL, sizeof bad, bad));
    s_raw(s, RID_A, bad, sizeof bad);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_MALFORMED);
    assert_string_equal(e->reason, "frame does not decode as medroute.v1.Frame");
    assert_string_equal(e->message_id, "");
    assert_int_equal(s_rejected(s, MR_E_MALFORMED), 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 1);
}

static void test_dispatch_unsupported_version(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HEARTBEAT);
    f.heartbeat = &hb;
    f.version = (Medroute__V1__ProtocolVersion)2;
    s_send(s, RID_A, &f);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_UNSUPPORTED_VERSION);
    assert_string_equal(e->reason, "protocol version 2, this broker speaks 1");
    /* No version at all (0, unspecified) is not version 1 either. */
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_UNSPECIFIED;
    s_send(s, RID_A, &f);
    s_expect_error(1, RID_A, MR_E_UNSUPPORTED_VERSION);
    /* The version is checked before the Hello rule and the body. */
    s_env_t env;
    s_env_init(&env, "m-v2");
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    f.envelope = &env.env;
    f.version = (Medroute__V1__ProtocolVersion)2;
    s_send(s, RID_A, &f);
    e = s_expect_error(2, RID_A, MR_E_UNSUPPORTED_VERSION);
    assert_string_equal(e->message_id, "m-v2");
    assert_int_equal(s_rejected(s, MR_E_UNSUPPORTED_VERSION), 3);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 3);
}

static void test_dispatch_no_body_malformed(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY__NOT_SET);
    s_send(s, RID_A, &f);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_MALFORMED);
    assert_string_equal(e->reason, "frame has no body");
    assert_int_equal(s_rejected(s, MR_E_MALFORMED), 1);
}

static void test_dispatch_unexpected_frames(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    Medroute__V1__Ack ack = MEDROUTE__V1__ACK__INIT;
    Medroute__V1__Welcome wel = MEDROUTE__V1__WELCOME__INIT;
    Medroute__V1__Delivery del = MEDROUTE__V1__DELIVERY__INIT;
    Medroute__V1__Error err = MEDROUTE__V1__ERROR__INIT;
    mr_frame_t f;

    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ACK);
    f.ack = &ack;
    s_send(s, RID_A, &f);
    s_expect_error(0, RID_A, MR_E_UNEXPECTED_FRAME);
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_WELCOME);
    f.welcome = &wel;
    s_send(s, RID_A, &f);
    s_expect_error(1, RID_A, MR_E_UNEXPECTED_FRAME);
    /* After Hello too: these bodies flow from the broker only. */
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 3); /* Welcome */
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_DELIVERY);
    f.delivery = &del;
    s_send(s, RID_A, &f);
    s_expect_error(3, RID_A, MR_E_UNEXPECTED_FRAME);
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ERROR);
    f.error = &err;
    s_send(s, RID_A, &f);
    const Medroute__V1__Error *e = s_expect_error(4, RID_A, MR_E_UNEXPECTED_FRAME);
    assert_string_equal(e->reason, "a facility may not send frame body 7");

    assert_int_equal(s_rejected(s, MR_E_UNEXPECTED_FRAME), 4);
    assert_int_equal(s->counters.v[CNT_REJECTED], 4);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 5);
}

static void test_dispatch_before_hello_no_hello(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_env_t env;
    s_env_init(&env, "m-early");
    s_send_env(s, RID_A, &env.env);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_NO_HELLO);
    assert_string_equal(e->message_id, "m-early");
    assert_string_equal(e->reason, "send Hello first on this connection");

    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    Medroute__V1__DeliveryAck da = MEDROUTE__V1__DELIVERY_ACK__INIT;
    da.seq = 1;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HEARTBEAT);
    f.heartbeat = &hb;
    s_send(s, RID_A, &f);
    s_expect_error(1, RID_A, MR_E_NO_HELLO);
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK);
    f.delivery_ack = &da;
    s_send(s, RID_A, &f);
    s_expect_error(2, RID_A, MR_E_NO_HELLO);

    /* A Hello on another connection does not count for this one. */
    s_hello(s, RID_B, "t-a");
    assert_int_equal(s_n_replies, 4);
    s_send_env(s, RID_A, &env.env);
    s_expect_error(4, RID_A, MR_E_NO_HELLO);

    s_settle(s);
    assert_int_equal(s_n_replies, 5); /* nothing was stored */
    assert_int_equal(s_rejected(s, MR_E_NO_HELLO), 4);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 5);
}

/* ---- Hello ------------------------------------------------------------------------ */

static void test_dispatch_hello_unknown_facility(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-nowhere");
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_UNKNOWN_SOURCE);
    assert_string_equal(e->reason, "facility \"t-nowhere\" is not in the registry");
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    s_hello(s, RID_A, "");
    s_expect_error(1, RID_A, MR_E_INVALID);
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    assert_int_equal(s->counters.v[CNT_CONNECTS], 0);
    assert_int_equal(s_rejected(s, MR_E_UNKNOWN_SOURCE), 1);
    assert_int_equal(s_rejected(s, MR_E_INVALID), 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 2);
}

static void test_dispatch_hello_binds_session(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    s_hello(s, RID_A, "t-b");
    assert_int_equal(s_n_replies, 1);
    const s_reply_t *r = &s_replies[0];
    assert_memory_equal(r->rid, RID_A, RID_LEN);
    assert_int_equal(r->f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_string_equal(r->f->welcome->broker_id, "unit-broker");
    assert_int_equal(r->f->welcome->heartbeat_interval_ms, 1000);
    assert_int_equal(r->f->welcome->heartbeat_timeout_ms, 3000);
    assert_int_equal(r->f->welcome->max_message_bytes, 1024);
    assert_int_equal(r->f->welcome->pending, 0);

    assert_int_equal(session_find(s, RID_A, RID_LEN), TB);
    assert_true(s->peers[TB].connected);
    assert_int_equal(s->peers[TB].max_inflight, 8); /* the broker's limit */
    assert_true(s->peers[TB].heard_ms > 0);
    assert_int_equal(s->counters.v[CNT_CONNECTS], 1);
    assert_int_equal(s->counters.v[CNT_REJECTED], 0);

    /* Hello again on the same connection: welcomed again, same session. */
    s_hello(s, RID_A, "t-b");
    assert_int_equal(s_n_replies, 2);
    assert_int_equal(s_replies[1].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(s->counters.v[CNT_CONNECTS], 1);
    /* A connection speaks for one facility only. */
    s_hello(s, RID_A, "t-a");
    s_expect_error(2, RID_A, MR_E_FORBIDDEN);
    assert_int_equal(session_find(s, RID_A, RID_LEN), TB);
    assert_false(s->peers[TA].connected);

    /* A Heartbeat after Hello is accepted silently. */
    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HEARTBEAT);
    f.heartbeat = &hb;
    s_send(s, RID_A, &f);
    assert_int_equal(s_n_replies, 3);

    /* Another connection for the same facility takes the session over. */
    s_hello(s, RID_B, "t-b");
    assert_int_equal(s_n_replies, 4);
    assert_int_equal(s_replies[3].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_memory_equal(s_replies[3].rid, RID_B, RID_LEN);
    assert_int_equal(session_find(s, RID_B, RID_LEN), TB);
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    assert_int_equal(s->counters.v[CNT_CONNECTS], 2);
    assert_int_equal(s->counters.v[CNT_DISCONNECTS], 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 5);
    assert_int_equal(s_rejected(s, MR_E_FORBIDDEN), 1);
}

/* ---- Envelope ----------------------------------------------------------------------- */

/* Sends env from RID_A (bound to t-a) and expects exactly one Error. */
static const Medroute__V1__Error *s_reject(server_t *s, const mr_envelope_t *env, int code)
{
    int before = s_n_replies;
    uint64_t rejected = s_rejected(s, code);
    uint64_t received = s->counters.v[CNT_RECEIVED];
    s_send_env(s, RID_A, env);
    const Medroute__V1__Error *e = s_expect_error(before, RID_A, code);
    assert_int_equal(s_rejected(s, code), rejected + 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], received + 1);
    return e;
}

static void test_dispatch_envelope_validation(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 1);
    s_env_t e;
    const Medroute__V1__Error *err;

    s_env_init(&e, "");
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "message_id must be 1..64 characters");

    char id65[66];
    memset(id65, 'm', 65);
    id65[65] = '\0';
    s_env_init(&e, id65);
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "message_id must be 1..64 characters");
    assert_int_equal(strlen(err->message_id), 64); /* echoed, cut to the limit */
    char id64[65];
    memset(id64, 'm', 64);
    id64[64] = '\0';
    assert_string_equal(err->message_id, id64);

    s_env_init(&e, "m-src");
    e.env.source = "t-b"; /* registered, but not this connection's facility */
    err = s_reject(s, &e.env, MR_E_FORBIDDEN);
    assert_string_equal(err->message_id, "m-src");
    assert_string_equal(err->reason, "source \"t-b\" is not this connection's facility t-a");

    e.env.source = "t-ghost";
    s_reject(s, &e.env, MR_E_UNKNOWN_SOURCE);

    e.env.source = "";
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "source is required");

    s_env_init(&e, "m-dst");
    e.env.destination = "nowhere";
    err = s_reject(s, &e.env, MR_E_UNKNOWN_DESTINATION);
    assert_string_equal(err->reason, "destination \"nowhere\" is not in the registry");

    e.env.destination = "";
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "destination is required");

    e.env.destination = "t-a";
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "destination is the sender itself");

    s_env_init(&e, "m-kind");
    e.env.kind = (Medroute__V1__Kind)99;
    err = s_reject(s, &e.env, MR_E_UNKNOWN_KIND);
    assert_string_equal(err->reason, "kind 99 is not a known kind");
    e.env.kind = MEDROUTE__V1__KIND__KIND_UNSPECIFIED;
    s_reject(s, &e.env, MR_E_UNKNOWN_KIND);

    s_env_init(&e, "m-mismatch");
    e.env.kind = MEDROUTE__V1__KIND__KIND_LAB_ORDER; /* with a referral payload */
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "kind lab_order does not match the payload (case 20)");
    e.env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD__NOT_SET; /* no payload */
    e.env.referral = NULL;
    s_reject(s, &e.env, MR_E_INVALID);

    s_env_init(&e, "m-prio");
    e.env.priority = (Medroute__V1__Priority)7;
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "priority must be routine, urgent or stat");

    /* Nothing reached the store. */
    s_settle(s);
    assert_int_equal(s->counters.v[CNT_STORED], 0);
    assert_int_equal(s_rejected(s, MR_E_INVALID), 8);
    assert_int_equal(s->counters.v[CNT_REJECTED], 13);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 14); /* Hello + 13 */
}

/* Strings that are not UTF-8 (a legacy system's GBK) are refused with
 * INVALID, naming the field and not its content, and nothing is stored. */
static void test_dispatch_refuses_strings_not_utf8(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    log_set_level(s->log, MR_LOG_DEBUG); /* every line, to look for the content */
    /* A Hello whose client name is GBK: refused, no session. */
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-a";
    h.client_name = "HIS \xb0\xe6 2.1"; /* 版 in GBK */
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HELLO);
    f.hello = &h;
    s_send(s, RID_A, &f);
    const Medroute__V1__Error *err = s_expect_error(0, RID_A, MR_E_INVALID);
    assert_string_equal(err->reason, "hello.client_name is not valid UTF-8");
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    /* An Envelope before Hello is still NO_HELLO first. */
    s_env_t e;
    s_env_init(&e, "m-gbk");
    Medroute__V1__Patient pat = MEDROUTE__V1__PATIENT__INIT;
    pat.name = "\xd5\xc5\xc8\xfd"; /* 张三 in GBK */
    e.ref.patient = &pat;
    s_send_env(s, RID_A, &e.env);
    s_expect_error(1, RID_A, MR_E_NO_HELLO);

    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 3);
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "envelope.referral.patient.name is not valid UTF-8");
    assert_string_equal(err->message_id, "m-gbk");
    pat.name = "张三";
    e.ref.department = "\xd0\xc4\xc4\xda\xbf\xc6"; /* 心内科 in GBK */
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "envelope.referral.department is not valid UTF-8");
    /* A message id that is not UTF-8 is not echoed: the Error would not
     * decode either (the wrapper above checks every reply). */
    e.ref.department = "心内科";
    e.env.message_id = "\xd7\xaa\xd5\xef-1"; /* 转诊 in GBK */
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "envelope.message_id is not valid UTF-8");
    assert_string_equal(err->message_id, "");

    /* Nothing was stored; the same referral in UTF-8 is. */
    s_settle(s);
    assert_int_equal(s->counters.v[CNT_STORED], 0);
    assert_int_equal(s->peers[LEAD].pending, 0);
    e.env.message_id = "m-utf8";
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 7);
    assert_int_equal(s_replies[6].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s->counters.v[CNT_STORED], 1);
    assert_int_equal(s_rejected(s, MR_E_INVALID), 4);

    /* The log names the field, never the content. */
    assert_int_equal(fflush(fx->logf), 0);
    rewind(fx->logf);
    char line[2048];
    int rejected = 0;
    while (fgets(line, sizeof line, fx->logf) != NULL) {
        rejected += strstr(line, "is not valid UTF-8") != NULL;
        assert_null(strstr(line, "\xd5\xc5"));
        assert_null(strstr(line, "\xd0\xc4"));
        assert_null(strstr(line, "\xb0\xe6"));
    }
    assert_int_equal(rejected, 4);
}

/* n copies of the three-byte character 转 (U+8F6C) into buf. */
static char *s_cjk(char *buf, size_t size, size_t n)
{
    assert_true(3 * n < size);
    for (size_t i = 0; i < n; i++)
        memcpy(buf + 3 * i, "\xe8\xbd\xac", 3);
    buf[3 * n] = '\0';
    return buf;
}

/* Text the daemon cuts to fit a reply is cut on a character boundary: the
 * wrapper above refuses any reply a strict decoder would. */
static void test_dispatch_cuts_echoed_text_on_character_boundaries(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    char long_cjk[400], cut[400];
    log_set_level(s->log, MR_LOG_DEBUG);

    /* Hello from a facility id of 30 characters (90 bytes): 21 are quoted. */
    s_hello(s, RID_A, s_cjk(long_cjk, sizeof long_cjk, 30));
    const Medroute__V1__Error *err = s_expect_error(0, RID_A, MR_E_UNKNOWN_SOURCE);
    char want[512];
    snprintf(want, sizeof want, "facility \"%s\" is not in the registry",
             s_cjk(cut, sizeof cut, 21));
    assert_string_equal(err->reason, want);

    /* A message id of 72 bytes (24 characters): refused, echoed cut to 63. */
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 2);
    s_env_t e;
    s_env_init(&e, s_cjk(long_cjk, sizeof long_cjk, 24));
    err = s_reject(s, &e.env, MR_E_INVALID);
    assert_string_equal(err->reason, "message_id must be 1..64 characters");
    assert_string_equal(err->message_id, s_cjk(cut, sizeof cut, 21));

    /* Destination and source of 30 characters, quoted cut to 21. */
    s_env_init(&e, "m-long-dest");
    e.env.destination = s_cjk(long_cjk, sizeof long_cjk, 30);
    err = s_reject(s, &e.env, MR_E_UNKNOWN_DESTINATION);
    snprintf(want, sizeof want, "destination \"%s\" is not in the registry",
             s_cjk(cut, sizeof cut, 21));
    assert_string_equal(err->reason, want);
    s_env_init(&e, "m-long-src");
    e.env.source = long_cjk;
    err = s_reject(s, &e.env, MR_E_UNKNOWN_SOURCE);
    snprintf(want, sizeof want, "source \"%s\" is not this connection's facility t-a", cut);
    assert_string_equal(err->reason, want);

    /* An update to a referral whose id is 70 characters (210 bytes) long:
     * refused for its length (ids are at most 64 bytes), the reason whole. */
    Medroute__V1__ReferralUpdate up = MEDROUTE__V1__REFERRAL_UPDATE__INIT;
    up.referral_id = s_cjk(long_cjk, sizeof long_cjk, 70);
    up.step = MEDROUTE__V1__REFERRAL_STEP__STEP_CANCELLED;
    up.reason = "patient moved";
    s_env_init(&e, "m-long-ref");
    e.env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE;
    e.env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL_UPDATE;
    e.env.referral_update = &up;
    int before = s_n_replies;
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, before + 1);
    err = s_error_at(before, RID_A, MR_E_INVALID);
    assert_string_equal(err->reason,
                        "the referral, accession or order number is longer than 64 bytes");
    assert_string_equal(err->message_id, "m-long-ref");

    /* The log lines that quote them are whole text too. */
    assert_int_equal(fflush(fx->logf), 0);
    rewind(fx->logf);
    char line[2048];
    int lines = 0;
    while (fgets(line, sizeof line, fx->logf) != NULL) {
        lines++;
        if (!mr_utf8_valid(line, strlen(line)))
            fail_msg("log line not UTF-8: %s", line);
    }
    assert_true(lines >= 6);
}

static void test_dispatch_valid_envelope_acked_after_commit(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 1);
    s_env_t e;
    s_env_init(&e, "m-ok");
    s_send_env(s, RID_A, &e.env);
    /* No reply before the store has committed. */
    assert_int_equal(s_n_replies, 1);
    assert_int_equal(s->counters.v[CNT_REJECTED], 0);

    s_wait_replies(s, 2);
    const s_reply_t *r = &s_replies[1];
    assert_memory_equal(r->rid, RID_A, RID_LEN);
    assert_int_equal(r->f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_string_equal(r->f->ack->message_id, "m-ok");
    assert_int_equal(r->f->ack->seq, 1);
    assert_false(r->f->ack->duplicate);
    assert_int_equal(s->counters.v[CNT_STORED], 1);
    assert_int_equal(s->peers[LEAD].pending, 1);

    /* A resend (only created_at_ms differs) is acknowledged again, once stored. */
    e.env.created_at_ms += 5000;
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 3);
    r = &s_replies[2];
    assert_int_equal(r->f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(r->f->ack->seq, 1);
    assert_true(r->f->ack->duplicate);
    assert_int_equal(s->counters.v[CNT_STORED], 1);
    assert_int_equal(s->counters.v[CNT_DUPLICATE], 1);

    /* The same id with other content: CONFLICT, reported after the store. */
    e.ref.clinical_summary = "something else";
    s_send_env(s, RID_A, &e.env);
    assert_int_equal(s_n_replies, 3);
    s_wait_replies(s, 4);
    const Medroute__V1__Error *err = s_error_at(3, RID_A, MR_E_CONFLICT);
    assert_string_equal(err->message_id, "m-ok");

    /* A second message gets the next seq. */
    s_env_init(&e, "m-next");
    e.env.destination = "img";
    e.ref.referral_id = "R-2"; /* a referral number is used once per sender */
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 5);
    assert_int_equal(s_replies[4].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_true(s_replies[4].f->ack->seq > 1);
    assert_false(s_replies[4].f->ack->duplicate);

    s_settle(s);
    assert_int_equal(s_n_replies, 5);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 5);
    assert_int_equal(s->counters.v[CNT_REJECTED], 1);
    assert_int_equal(s_rejected(s, MR_E_CONFLICT), 1);
}

/* An envelope frame sent with submission_tag n. */
static void s_send_env_tagged(server_t *s, const uint8_t *rid, const mr_envelope_t *env,
                              uint64_t n)
{
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    f.envelope = (mr_envelope_t *)env;
    f.submission_tag = n;
    s_send(s, rid, &f);
}

/*
 * The answer to an envelope frame carries its submission_tag back, Ack or
 * Error, refused at once or after the store: the sender tells the answer to
 * this submission from a late one to an earlier submission of the same id
 * with other content (both name the id).
 */
static void test_dispatch_echoes_the_submission_tag(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    s_env_t e;
    s_env_init(&e, "m-tag");
    s_send_env_tagged(s, RID_A, &e.env, 77);
    s_wait_replies(s, 2);
    assert_int_equal(s_replies[1].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s_replies[1].f->ack->submission_tag, 77);
    s_send_env_tagged(s, RID_A, &e.env, UINT64_MAX);
    s_wait_replies(s, 3);
    assert_true(s_replies[2].f->ack->duplicate);
    assert_int_equal(s_replies[2].f->ack->submission_tag, UINT64_MAX);
    e.ref.clinical_summary = "something else";
    s_send_env_tagged(s, RID_A, &e.env, 78);
    s_wait_replies(s, 4);
    assert_int_equal(s_error_at(3, RID_A, MR_E_CONFLICT)->submission_tag, 78);
    e.env.destination = "nowhere";
    s_send_env_tagged(s, RID_A, &e.env, 79);
    assert_int_equal(s_error_at(4, RID_A, MR_E_UNKNOWN_DESTINATION)->submission_tag, 79);
    /* Without a tag, none comes back. */
    s_send_env(s, RID_A, &e.env);
    assert_int_equal(s_error_at(5, RID_A, MR_E_UNKNOWN_DESTINATION)->submission_tag, 0);
    s_settle(s);
}

/*
 * A refusal of an envelope frame that is not decoded (too large, or its
 * bytes do not decode) carries the frame's submission_tag, read off the
 * wire as its message id is: without it, the sender could only settle
 * whichever submission waits under the id, a later one than the copy
 * refused.  It carried none.
 */
static void test_dispatch_undecoded_envelope_echoes_its_tag(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_env_t env;
    s_env_init(&env, "m-big");
    char filler[1100];
    memset(filler, 'x', sizeof filler - 1);
    filler[sizeof filler - 1] = '\0';
    env.ref.clinical_summary = filler;
    s_send_env_tagged(s, RID_A, &env.env, 91);
    const Medroute__V1__Error *e = s_expect_error(0, RID_A, MR_E_TOO_LARGE);
    assert_string_equal(e->message_id, "m-big");
    assert_int_equal(e->submission_tag, 91);

    /* Frame{version = 1, envelope = {message_id = "m-bad", referral (field
     * 20) = 0xff}, submission_tag (field 30) = 92}. */
    static const uint8_t bad[] = {0x08, 0x01, 0x2a, 0x0b, 0x0a, 0x05, 'm', '-', 'b', 'a',
                                  'd',  0xa2, 0x01, 0x01, 0xff, 0xf0, 0x01, 0x5c};
    s_raw(s, RID_A, bad, sizeof bad);
    e = s_expect_error(1, RID_A, MR_E_MALFORMED);
    assert_string_equal(e->message_id, "m-bad");
    assert_int_equal(e->submission_tag, 92);
    /* Given twice, it is no one value: none is echoed. */
    uint8_t twice[sizeof bad + 3];
    memcpy(twice, bad, sizeof bad);
    memcpy(twice + sizeof bad, bad + sizeof bad - 3, 3);
    s_raw(s, RID_A, twice, sizeof twice);
    e = s_expect_error(2, RID_A, MR_E_MALFORMED);
    assert_int_equal(e->submission_tag, 0);
}

/* An envelope that carries an unknown field numbered above 2^29 - 1, the
 * largest field number protobuf allows: protobuf-c decodes it and keeps the
 * field, but other decoders (C++, Java) refuse the whole message, so its
 * receiver could not read the Delivery, nor acknowledge it.  Refused, never
 * stored; the same envelope without the field is taken. */
static void test_dispatch_refuses_field_numbers_beyond_the_largest(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 1);
    s_env_t e;
    s_env_init(&e, "m-big-field");
    uint8_t *env = NULL;
    size_t env_len = 0;
    assert_int_equal(mr_pack(&e.env.base, &env, &env_len), 0);
    /* Field 2^29 (wire type varint) = 1: its tag is the varint 2^32. */
    static const uint8_t big[] = {0x80, 0x80, 0x80, 0x80, 0x10, 0x01};
    uint8_t frame[256];
    const uint8_t *parts[] = {env, big};
    size_t sizes[] = {env_len, sizeof big};
    size_t n = s_frame_of(frame, sizeof frame, parts, sizes, 2);
    free(env);
    s_raw(s, RID_A, frame, n);
    s_settle(s);
    const Medroute__V1__Error *err = s_expect_error(1, RID_A, MR_E_MALFORMED);
    assert_string_equal(err->message_id, "m-big-field");
    assert_int_equal(s->counters.v[CNT_STORED], 0);
    assert_int_equal(s->peers[LEAD].pending, 0);
    /* The largest field number itself is allowed (kept, delivered as sent). */
    static const uint8_t largest[] = {0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01};
    memcpy(frame + n - sizeof big, largest, sizeof largest);
    s_raw(s, RID_A, frame, n);
    s_wait_replies(s, 3);
    assert_int_equal(s_replies[2].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s->counters.v[CNT_STORED], 1);
}

/* An envelope that carries its payload twice: protobuf-c keeps the last
 * copy alone (a oneof member read again starts afresh), every other decoder
 * merges the two, so the broker would judge (referral id, department,
 * family-doctor flag, critical values) another message than its receiver
 * reads.  Refused, not stored. */
static void test_dispatch_refuses_a_payload_carried_twice(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_n_replies, 1);
    s_env_t e;
    s_env_init(&e, "m-twice");
    e.ref.department = "cardiology";
    uint8_t *env = NULL, *second = NULL;
    size_t env_len = 0, second_len = 0;
    assert_int_equal(mr_pack(&e.env.base, &env, &env_len), 0);
    /* The referral again, without its department: what protobuf-c reads. */
    Medroute__V1__Referral again = MEDROUTE__V1__REFERRAL__INIT;
    again.referral_id = "R-1";
    mr_envelope_t only = MEDROUTE__V1__ENVELOPE__INIT;
    only.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    only.referral = &again;
    assert_int_equal(mr_pack(&only.base, &second, &second_len), 0);
    uint8_t frame[256];
    const uint8_t *parts[] = {env, second};
    size_t sizes[] = {env_len, second_len};
    size_t n = s_frame_of(frame, sizeof frame, parts, sizes, 2);
    free(env);
    free(second);
    s_raw(s, RID_A, frame, n);
    s_settle(s);
    const Medroute__V1__Error *err = s_expect_error(1, RID_A, MR_E_MALFORMED);
    assert_string_equal(err->message_id, "m-twice");
    assert_int_equal(s->counters.v[CNT_STORED], 0);
    assert_int_equal(s->peers[LEAD].pending, 0);
    /* Sent once, it is taken. */
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 3);
    assert_int_equal(s_replies[2].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s->counters.v[CNT_STORED], 1);
}

static void test_dispatch_draining_refuses_envelopes(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    s->draining = true;
    s_env_t e;
    s_env_init(&e, "m-late");
    const Medroute__V1__Error *err = s_reject(s, &e.env, MR_E_SHUTTING_DOWN);
    assert_string_equal(err->message_id, "m-late");
    /* Validation still comes first. */
    e.env.destination = "nowhere";
    s_reject(s, &e.env, MR_E_UNKNOWN_DESTINATION);
    s_settle(s);
    assert_int_equal(s->counters.v[CNT_STORED], 0);
}

static void test_dispatch_store_unavailable_reported(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    /* Swap in a store whose database cannot be opened. */
    store_destroy(&s->store);
    char path[300];
    snprintf(path, sizeof path, "%s/missing/medroute.db", fx->dir);
    store_opts_t so = {.path = path, .batch_max = 100, .batch_ms = 1};
    s->store = store_new(&s->loop, &so, s->log);
    assert_non_null(s->store);
    s_hello(s, RID_A, "t-a");
    s_env_t e;
    s_env_init(&e, "m-nostore");
    s_send_env(s, RID_A, &e.env);
    assert_int_equal(s_n_replies, 1);
    s_wait_replies(s, 2);
    const Medroute__V1__Error *err = s_error_at(1, RID_A, MR_E_STORE_UNAVAILABLE);
    assert_string_equal(err->message_id, "m-nostore");
    assert_int_equal(s->counters.v[CNT_STORED], 0);
    assert_int_equal(s_rejected(s, MR_E_STORE_UNAVAILABLE), 1);
}

/* One integer read from the file at path through a connection of its own. */
static long long s_sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/*
 * A STORE_UNAVAILABLE refusal is a refusal like the others in the durable
 * tallies too (messages_rejected_total): the count waits in the broker's
 * memory through the outage and is written with the first batch that
 * commits a write once the store is back, not lost at a restart.
 */
static void test_dispatch_store_unavailable_tallied_once_back(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    /* Swap in a store whose file is a directory for now. */
    store_destroy(&s->store);
    s_rm(fx->dir, "medroute.db");
    s_rm(fx->dir, "medroute.db-wal");
    s_rm(fx->dir, "medroute.db-shm");
    assert_int_equal(mkdir(fx->path, 0700), 0);
    store_opts_t so = {.path = fx->path, .batch_max = 100, .batch_ms = 1};
    s->store = store_new(&s->loop, &so, s->log);
    assert_non_null(s->store);
    s_hello(s, RID_A, "t-a");
    s_env_t e;
    s_env_init(&e, "m-1");
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 2);
    s_error_at(1, RID_A, MR_E_STORE_UNAVAILABLE);
    s_settle(s); /* the count has reached the store */
    /* The store is back: the resend is stored and acknowledged. */
    assert_int_equal(rmdir(fx->path), 0);
    s_send_env(s, RID_A, &e.env);
    s_wait_replies(s, 3);
    assert_int_equal(s_replies[2].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    s_settle(s);
    /* Committed with it, before any stop. */
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"
                                         " AND labels = 'code=\"STORE_UNAVAILABLE\"'"),
                     1);
}

/* ---- DeliveryAck ---------------------------------------------------------------------- */

static void test_dispatch_delivery_ack_unknown(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "lead");
    assert_int_equal(s_n_replies, 1);
    Medroute__V1__DeliveryAck da = MEDROUTE__V1__DELIVERY_ACK__INIT;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK);
    f.delivery_ack = &da;
    da.seq = 0;
    s_send(s, RID_A, &f);
    const Medroute__V1__Error *err = s_expect_error(1, RID_A, MR_E_INVALID);
    assert_string_equal(err->reason, "DeliveryAck.seq is required");
    /* A seq this facility was never sent: answered once the store looked. */
    da.seq = 77;
    s_send(s, RID_A, &f);
    assert_int_equal(s_n_replies, 2);
    s_wait_replies(s, 3);
    err = s_error_at(2, RID_A, MR_E_UNKNOWN_DELIVERY);
    assert_string_equal(err->reason, "no pending delivery 77 for this facility");
    assert_int_equal(s_rejected(s, MR_E_UNKNOWN_DELIVERY), 1);
    assert_int_equal(s->counters.v[CNT_RECEIVED], 3);
}

/* ---- Acks gathered per loop turn (acks.c) --------------------------------------- */

/* The message ids one reply carries, first and more, joined by ','. */
static void s_ack_ids(const s_reply_t *r, char *out, size_t len)
{
    assert_int_equal(r->f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    int n = snprintf(out, len, "%s", r->f->ack->message_id);
    for (size_t i = 0; i < r->f->ack->n_more; i++) {
        assert_int_equal(r->f->ack->more[i]->n_more, 0);
        n += snprintf(out + n, len - (size_t)n, ",%s", r->f->ack->more[i]->message_id);
    }
}

/* Acks for a connection that takes several go out in one frame, in order,
 * when the loop turn ends (or when the frame is full); one that takes one
 * gets each in a frame of its own at once. */
static void test_dispatch_acks_gathered_per_turn(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    acks_add(s->acks, RID_A, RID_LEN, 16, "a-1", 1, false, 0);
    acks_add(s->acks, RID_B, RID_LEN, 0, "b-1", 2, false, 0);
    acks_add(s->acks, RID_A, RID_LEN, 16, "a-2", 3, true, 0);
    acks_add(s->acks, RID_A, RID_LEN, 16, "a-3", 4, false, 0);
    assert_int_equal(s_n_replies, 1); /* b-1 alone, at once */
    char ids[256];
    s_ack_ids(&s_replies[0], ids, sizeof ids);
    assert_string_equal(ids, "b-1");
    uv_run(&s->loop, UV_RUN_NOWAIT); /* the turn ends: the check handle flushes */
    assert_int_equal(s_n_replies, 2);
    assert_memory_equal(s_replies[1].rid, RID_A, RID_LEN);
    s_ack_ids(&s_replies[1], ids, sizeof ids);
    assert_string_equal(ids, "a-1,a-2,a-3");
    assert_int_equal(s_replies[1].f->ack->more[0]->seq, 3);
    assert_true(s_replies[1].f->ack->more[0]->duplicate);
    uv_run(&s->loop, UV_RUN_NOWAIT); /* nothing more to send */
    assert_int_equal(s_n_replies, 2);

    /* A full frame goes at once. */
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "c-%d", i);
        acks_add(s->acks, RID_B, RID_LEN, 2, id, (uint64_t)(10 + i), false, 0);
    }
    assert_int_equal(s_n_replies, 4);
    acks_flush(s->acks);
    assert_int_equal(s_n_replies, 5);
    const char *want[] = {"c-0,c-1", "c-2,c-3", "c-4"};
    for (int i = 0; i < 3; i++) {
        s_ack_ids(&s_replies[2 + i], ids, sizeof ids);
        assert_string_equal(ids, want[i]);
    }

    /* A group grows past its first buffers (16) and keeps every id. */
    char expect[1024] = "";
    size_t n = 0;
    for (int i = 0; i < 40; i++) {
        char id[16];
        snprintf(id, sizeof id, "g-%02d", i);
        acks_add(s->acks, RID_A, RID_LEN, 64, id, (uint64_t)(100 + i), false, 0);
        n += (size_t)snprintf(expect + n, sizeof expect - n, "%s%s", i ? "," : "", id);
    }
    assert_int_equal(s_n_replies, 5);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s_n_replies, 6);
    char all[1024];
    s_ack_ids(&s_replies[5], all, sizeof all);
    assert_string_equal(all, expect);
    assert_int_equal(s_replies[5].f->ack->more[38]->seq, 139);
}

/* Through dispatch: a Hello that allows several Acks, three envelopes
 * committed before the loop runs their callbacks: one Ack frame for all
 * three; the Welcome says how many seqs a DeliveryAck may carry. */
static void test_dispatch_hello_allows_acks_in_one_frame(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-a";
    h.max_acks_per_frame = 64;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HELLO);
    f.hello = &h;
    s_send(s, RID_A, &f);
    assert_int_equal(s_n_replies, 1);
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(s_replies[0].f->welcome->max_acks_per_frame, MR_ACKS_PER_FRAME_MAX);
    const char *ids[] = {"m-1", "m-2", "m-3"};
    s_env_t e[3];
    for (int i = 0; i < 3; i++) {
        s_env_init(&e[i], ids[i]);
        e[i].ref.referral_id = (char *)ids[i];
        s_send_env(s, RID_A, &e[i].env);
    }
    /* Wait, without running the loop, until the store has committed all
     * three (read from the file): their callbacks then run in one turn. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    uint64_t start = uv_hrtime();
    int committed = 0;
    while (committed < 3 && (uv_hrtime() - start) / 1000000 < S_WAIT_MS) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM messages", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            committed = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    sqlite3_close(db);
    assert_int_equal(committed, 3);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    char got[256] = "";
    size_t n = 0;
    for (int i = 1; i < s_n_replies; i++) {
        char one[128];
        s_ack_ids(&s_replies[i], one, sizeof one);
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%s", n ? "," : "", one);
    }
    assert_string_equal(got, "m-1,m-2,m-3");
    assert_int_equal(s_n_replies, 2);
}

/* A repeated Hello that allows fewer Acks per frame holds for those already
 * gathered in its loop turn: each frame carries at most what it allows. */
static void test_dispatch_repeated_hello_lowers_acks_per_frame(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-a";
    h.max_acks_per_frame = 64;
    mr_frame_t f;
    s_frame_init(&f, MEDROUTE__V1__FRAME__BODY_HELLO);
    f.hello = &h;
    s_send(s, RID_A, &f);
    assert_int_equal(s_n_replies, 1); /* its Welcome */
    /* The Acks of commits that came back in this turn, then the Hello. */
    acks_add(s->acks, RID_A, RID_LEN, 64, "a-1", 1, false, 0);
    acks_add(s->acks, RID_A, RID_LEN, 64, "a-2", 2, false, 0);
    acks_add(s->acks, RID_A, RID_LEN, 64, "a-3", 3, false, 0);
    h.max_acks_per_frame = 2;
    s_send(s, RID_A, &f);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    char got[256] = "";
    size_t n = 0;
    for (int i = 1; i < s_n_replies; i++) {
        if (s_replies[i].f->body_case != MEDROUTE__V1__FRAME__BODY_ACK)
            continue;
        assert_in_range(s_replies[i].f->ack->n_more, 0, 1);
        char one[128];
        s_ack_ids(&s_replies[i], one, sizeof one);
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%s", n ? "," : "", one);
    }
    assert_string_equal(got, "a-1,a-2,a-3");
}

/* A delivery is only sent to a connected facility: the router needs an
 * endpoint (the sends are wrapped); none at teardown.  The stand-in is
 * zeroed and larger than an endpoint_t, which a Hello reads (no monitor,
 * fd 0: endpoint_check_closed, endpoint_src_fd). */
static void s_deliveries_on(server_t *s, bool on)
{
    static _Alignas(max_align_t) char stand_in[4096];
    s->facility_ep = on ? (endpoint_t *)stand_in : NULL;
}

static int s_count_deliveries(const uint8_t *rid)
{
    int n = 0;
    for (int i = 0; i < s_n_replies; i++)
        if (s_replies[i].f->body_case == MEDROUTE__V1__FRAME__BODY_DELIVERY &&
            memcmp(s_replies[i].rid, rid, RID_LEN) == 0)
            n++;
    return n;
}

/* A DeliveryAck whose commit fails leaves its message pending, to be
 * delivered again for an ack the store can take.  Read on t-a's connection,
 * it shows t-a reads: the copy goes at the next redelivery pass, not after
 * the back-off of its earlier sends (the time-out here: 30 s), and once.
 * A late one, from a session that ended before t-a's next Hello, leaves it
 * to be sent on the new connection at once, as the rest of that session. */
static void test_dispatch_failed_ack_commit_sends_again_soon(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_deliveries_on(s, true);
    s_hello(s, RID_A, "t-a");
    s_hello(s, RID_C, "lead");
    s_env_t e;
    s_env_init(&e, "m-down-1");
    e.env.source = "lead";
    e.env.destination = "t-a";
    s_send_env(s, RID_C, &e.env);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s_count_deliveries(RID_A), 1);
    uint64_t seq = s_replies[s_n_replies - 1].f->delivery->seq;

    s_fail_acks = true;
    s_delivery_ack(s, RID_A, seq);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    s_fail_acks = false;
    assert_int_equal(s->peers[TA].pending, 1);
    router_cron(s, mr_now_ms(), mr_mono_ms());
    assert_int_equal(s_count_deliveries(RID_A), 2);
    const Medroute__V1__Delivery *d = s_replies[s_n_replies - 1].f->delivery;
    assert_int_equal(d->seq, seq);
    assert_true(d->redelivered);
    router_cron(s, mr_now_ms(), mr_mono_ms()); /* once: then its time-out again */
    assert_int_equal(s_count_deliveries(RID_A), 2);

    s_env_init(&e, "m-down-2");
    e.env.source = "lead";
    e.env.destination = "t-a";
    e.ref.referral_id = "R-2";
    s_send_env(s, RID_C, &e.env);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s_count_deliveries(RID_A), 3);
    seq = s_replies[s_n_replies - 1].f->delivery->seq;
    session_end(s, TA, "test");
    s_fail_acks = true;
    s_delivery_ack(s, RID_A, seq); /* late: its session has ended */
    s_hello(s, RID_B, "t-a");      /* before the commit comes back */
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    s_fail_acks = false;
    assert_int_equal(s_count_deliveries(RID_B), 2); /* m-down-1, still in flight; m-down-2 */
    assert_int_equal(s_replies[s_n_replies - 1].f->delivery->seq, seq);
    s_settle(s);
    s_deliveries_on(s, false);
}

/* An expiry scan compares with the wall time of its submission; if the
 * clock stepped back since, a message the scan will dead-letter is not yet
 * past its expiry by the clock.  Sent now, the receiver would handle it and
 * its sender be told it expired: the router judges by the later time. */
static void test_dispatch_nothing_sent_that_a_running_scan_expires(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_deliveries_on(s, true);
    s_hello(s, RID_A, "t-a");
    s_hello(s, RID_B, "lead");
    s_settle(s);
    int64_t now = (int64_t)time(NULL) * 1000;

    /* With no scan running, a referral due to expire in a minute goes. */
    s_env_t e;
    s_env_init(&e, "m-goes");
    e.ref.expires_at_ms = now + 60000;
    s_send_env(s, RID_A, &e.env);
    s_settle(s);
    assert_int_equal(s_count_deliveries(RID_B), 1);

    /* A scan submitted when the clock read two minutes later is running. */
    s->expiring_now_ms = now + 120000;
    s_env_init(&e, "m-held");
    e.ref.referral_id = "R-2";
    e.ref.expires_at_ms = now + 60000;
    int before = s_n_replies;
    s_send_env(s, RID_A, &e.env);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s_n_replies, before + 1); /* its Ack, no delivery */
    assert_int_equal(s_replies[before].f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s_count_deliveries(RID_B), 1);

    /* One expiring after the scan's time still goes. */
    s_env_init(&e, "m-later");
    e.ref.referral_id = "R-3";
    e.ref.expires_at_ms = now + 180000;
    s_send_env(s, RID_A, &e.env);
    s_settle(s);
    assert_int_equal(s_count_deliveries(RID_B), 2);
    s->expiring_now_ms = 0;
    s_deliveries_on(s, false);
}

/* With CURVE, the key says who speaks: a Hello needs the facility's key,
 * and a session's frames the key of its Hello; a frame on a session's
 * routing id with another key (another client took the id of a gone
 * connection) ends that session and is refused as before any Hello. */
static void test_dispatch_session_follows_its_key(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(session_find(s, RID_A, RID_LEN), TA);
    /* t-b's key on that routing id: the session ends, the frame is refused. */
    s_user_id = S_KEY_B;
    s_env_t e;
    s_env_init(&e, "m-spoof");
    s_send_env(s, RID_A, &e.env);
    s_expect_error(1, RID_A, MR_E_NO_HELLO);
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    assert_false(s->peers[TA].connected);
    assert_int_equal(s->counters.v[CNT_SECURITY_EVENTS], 1);
    /* A Hello as t-a with t-b's key: refused. */
    s_hello(s, RID_A, "t-a");
    s_expect_error(2, RID_A, MR_E_FORBIDDEN);
    /* As itself, t-b gets in. */
    s_hello(s, RID_A, "t-b");
    assert_int_equal(s_replies[3].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(session_find(s, RID_A, RID_LEN), TB);
    s_user_id = NULL;
    s_settle(s);
}

/* A DeliveryAck from the connection of t-a's session that ended still
 * counts for t-a, with the key that session came with: here its close was
 * read (the monitor) before its ack.  The connection is told once, as
 * NO_HELLO, that its session ended; the ack is no refusal, and an ack the
 * store finds nothing for is not answered on t-a's next connection.  With
 * another key the ack is refused; a Hello that binds the routing id again
 * ends its use as t-a's former one. */
static void test_dispatch_late_ack_counts_with_its_key_only(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_deliveries_on(s, true);
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    s_user_id = NULL;
    s_hello(s, RID_C, "lead");
    s_env_t e;
    s_env_init(&e, "m-down");
    e.env.source = "lead";
    e.env.destination = "t-a";
    s_send_env(s, RID_C, &e.env);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s_count_deliveries(RID_A), 1);
    uint64_t seq = 0;
    for (int i = 0; i < s_n_replies; i++)
        if (s_replies[i].f->body_case == MEDROUTE__V1__FRAME__BODY_DELIVERY)
            seq = s_replies[i].f->delivery->seq;
    assert_int_equal(s->peers[TA].pending, 1);

    session_on_closed(s, s->peers[TA].fd);
    assert_false(s->peers[TA].connected);
    assert_int_equal(session_former(s, RID_A, RID_LEN, S_KEY_A), TA);
    s_user_id = S_KEY_A;
    int before = s_n_replies;
    uint64_t rejected = s->counters.v[CNT_REJECTED];
    s_delivery_ack(s, RID_A, seq);
    assert_int_equal(s->counters.v[CNT_LATE_ACKS], 1);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s->peers[TA].pending, 0);
    assert_int_equal(s->counters.v[CNT_DELIVERED], 1);
    assert_int_equal(s_n_replies, before + 1);
    s_expect_error(before, RID_A, MR_E_NO_HELLO); /* told once, not refused */
    assert_int_equal(s->counters.v[CNT_REJECTED], rejected);

    /* t-a back on another connection; the old one's ack of a seq the store
     * has nothing for: counted, not answered, on either connection. */
    s_hello(s, RID_B, "t-a");
    before = s_n_replies;
    s_delivery_ack(s, RID_A, 77);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s->counters.v[CNT_LATE_ACKS], 2);
    assert_int_equal(s_n_replies, before);

    /* Replaced by RID_B's Hello... */
    s_hello(s, RID_A, "t-a");
    before = s_n_replies;
    assert_int_equal(session_former(s, RID_B, RID_LEN, S_KEY_A), TA);
    /* ... t-b's key on that routing id is not t-a's word. */
    s_user_id = S_KEY_B;
    assert_int_equal(session_former(s, RID_B, RID_LEN, S_KEY_B), -1);
    s_delivery_ack(s, RID_B, 78);
    s_expect_error(before, RID_B, MR_E_NO_HELLO);
    assert_int_equal(s->counters.v[CNT_REJECTED], rejected + 1);
    assert_int_equal(s->counters.v[CNT_LATE_ACKS], 2);
    /* Bound again by a Hello, the routing id is no longer t-a's former one. */
    s_hello(s, RID_B, "t-b");
    assert_int_equal(session_former(s, RID_B, RID_LEN, S_KEY_A), -1);
    s_user_id = NULL;
    s_settle(s);
    s_deliveries_on(s, false);
}

/* t-a's key A rotated to C by a reload, and t-a's client switched (a Hello
 * with C on another connection): a connection still open with A, whose
 * session that Hello replaced, acknowledges nothing for t-a any more (A might
 * be the stolen key the rotation was for). */
static void test_dispatch_late_ack_needs_a_key_still_allowed(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    s->config_text = S_CONF_TEXT(S_KEY_C);
    char why[256] = "";
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    s_user_id = S_KEY_C;
    s_hello(s, RID_B, "t-a");
    assert_int_equal(session_find(s, RID_B, RID_LEN), TA);
    s_user_id = S_KEY_A;
    assert_int_equal(session_former(s, RID_A, RID_LEN, S_KEY_A), -1);
    int before = s_n_replies;
    s_delivery_ack(s, RID_A, 1);
    s_expect_error(before, RID_A, MR_E_NO_HELLO);
    assert_int_equal(s->counters.v[CNT_LATE_ACKS], 0);
    s_user_id = NULL;
    s_settle(s);
}

/*
 * Through a rotation (t-a's key A replaced by C in the registry), the
 * connection of t-a's session may say Hello again with A, on it only
 * (security.md): another connection opened with A before the reload (the
 * stolen key a rotation may be for) does not take t-a's session over,
 * neither while that session lasts nor once it has ended.
 */
static void test_dispatch_rotation_keeps_only_the_sessions_connection(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    s->config_text = S_CONF_TEXT(S_KEY_C);
    char why[256] = "";
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    uint64_t events = s->counters.v[CNT_SECURITY_EVENTS];
    s_hello(s, RID_B, "t-a");
    s_expect_error(1, RID_B, MR_E_FORBIDDEN);
    assert_int_equal(session_find(s, RID_A, RID_LEN), TA);
    s_hello(s, RID_A, "t-a"); /* its own connection: restarted */
    assert_int_equal(s_replies[2].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    session_end(s, TA, "heartbeat_timeout");
    s_hello(s, RID_B, "t-a");
    s_expect_error(3, RID_B, MR_E_FORBIDDEN);
    assert_false(s->peers[TA].connected);
    assert_int_equal(s->counters.v[CNT_SECURITY_EVENTS], events + 2);
    s_hello(s, RID_A, "t-a"); /* the ended session's connection: welcomed */
    assert_int_equal(s_replies[4].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(session_find(s, RID_A, RID_LEN), TA);
    s_user_id = NULL;
    s_settle(s);
}

/* A reload that gives t-a's key A to t-b (t-a gets C): A speaks for t-b
 * now.  A Hello for t-a with it is refused, and its late ack does not count
 * for t-a; as t-b it gets in. */
static void test_dispatch_key_given_to_another_speaks_for_it_only(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    session_end(s, TA, "test");
    s->config_text = S_CONF_KEYS(S_KEY_C, S_KEY_A);
    char why[256] = "";
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    assert_int_equal(session_former(s, RID_A, RID_LEN, S_KEY_A), -1);
    uint64_t events = s->counters.v[CNT_SECURITY_EVENTS];
    s_hello(s, RID_B, "t-a");
    s_expect_error(1, RID_B, MR_E_FORBIDDEN);
    assert_false(s->peers[TA].connected);
    assert_int_equal(s->counters.v[CNT_SECURITY_EVENTS], events + 1);
    s_hello(s, RID_B, "t-b");
    assert_int_equal(s_replies[2].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(session_find(s, RID_B, RID_LEN), TB);
    s_user_id = NULL;
    s_settle(s);
}

/*
 * A reload that gives the key of t-a's live session to t-b ends that
 * session: its connection would otherwise go on sending as t-a with what is
 * now t-b's key.
 */
static void test_dispatch_reload_ends_a_session_whose_key_moved(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_user_id = S_KEY_A;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_true(s->peers[TA].connected);
    s->config_text = S_CONF_KEYS(S_KEY_C, S_KEY_A);
    char why[256] = "";
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    assert_false(s->peers[TA].connected);
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    assert_int_equal(session_former(s, RID_A, RID_LEN, S_KEY_A), -1);
    s_user_id = NULL;
    s_settle(s);
}

/*
 * A Hello read after its connection closed (the Hello reads the closes
 * queued before it, endpoint_check_closed, that one's included): its
 * Welcome cannot be sent (unreachable), and the session it would bind ends
 * there, not bound to a routing id nobody holds until a heartbeat fails
 * (a client that takes that routing id next would be sent the facility's
 * deliveries).  Its client, back on another connection, is welcomed.
 */
static void test_dispatch_hello_from_a_gone_connection_binds_nothing(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_gone_rid = RID_A;
    s_gone_rid_len = RID_LEN;
    s_hello(s, RID_A, "t-a");
    s_gone_rid = NULL;
    assert_false(s->peers[TA].connected);
    assert_int_equal(session_find(s, RID_A, RID_LEN), -1);
    assert_int_equal(s_n_replies, 0);
    s_hello(s, RID_B, "t-a");
    assert_int_equal(s_n_replies, 1);
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(session_find(s, RID_B, RID_LEN), TA);
    s_settle(s);
}

/* The fixture's config with other heartbeat limits. */
#define S_CONF_BEATS(interval, timeout) \
    "broker_id = \"unit-broker\";\n" \
    "facility_endpoint = \"tcp://127.0.0.1:1\";\n" \
    "operator_endpoint = \"tcp://127.0.0.1:2\";\n" \
    "data_dir = \"unused\";\n" \
    "insecure = true;\n" \
    "limits = { max_message_bytes = 1024; max_inflight = 8;\n" \
    "           heartbeat_interval_ms = " interval "; heartbeat_timeout_ms = " timeout "; };\n" \
    "facilities = (\n" \
    "  { id = \"lead\"; role = \"lead\"; },\n" \
    "  { id = \"img\"; role = \"imaging_centre\"; host = \"lead\"; },\n" \
    "  { id = \"t-a\"; role = \"township\"; public_key = \"" S_KEY_A "\"; },\n" \
    "  { id = \"t-b\"; role = \"township\"; public_key = \"" S_KEY_B "\"; }\n" \
    ");\n"

static int s_count_heartbeats(const uint8_t *rid)
{
    int n = 0;
    for (int i = 0; i < s_n_replies; i++)
        if (s_replies[i].f->body_case == MEDROUTE__V1__FRAME__BODY_HEARTBEAT &&
            memcmp(s_replies[i].rid, rid, RID_LEN) == 0)
            n++;
    return n;
}

/*
 * A session keeps the heartbeat interval and time-out of its Welcome until
 * its next Hello: its client heartbeats at that interval, and takes the
 * broker for gone after that time-out.  A reload that shortens them does
 * not end the session for a silence its Welcome allows; one that lengthens
 * them does not leave it without a heartbeat for longer than its time-out.
 * Its next Hello is told the new ones.
 */
static void test_dispatch_session_keeps_its_welcome_heartbeat(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_hello(s, RID_A, "t-a");
    assert_int_equal(s_replies[0].f->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(s_replies[0].f->welcome->heartbeat_interval_ms, 1000);
    assert_int_equal(s_replies[0].f->welcome->heartbeat_timeout_ms, 3000);
    int64_t heard = s->peers[TA].heard_ms;
    char why[256] = "";

    /* Shortened: a silence of 1.5 s, allowed by its Welcome, ends nothing. */
    s->config_text = S_CONF_BEATS("100", "300");
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    session_cron(s, 0, heard + 1500);
    assert_true(s->peers[TA].connected);
    assert_int_equal(s_count_heartbeats(RID_A), 1);

    /* Lengthened: it still hears from the broker every second. */
    s->config_text = S_CONF_BEATS("10000", "30000");
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    session_cron(s, 0, heard + 2000);
    assert_int_equal(s_count_heartbeats(RID_A), 1); /* not due: 0.5 s since the last */
    session_cron(s, 0, heard + 2600);
    assert_int_equal(s_count_heartbeats(RID_A), 2);
    assert_true(s->peers[TA].connected);
    /* Silent past its Welcome's time-out: ended, as before the reloads. */
    session_cron(s, 0, heard + 3600);
    assert_false(s->peers[TA].connected);

    /* A new session is told, and kept to, the limits of now. */
    s_hello(s, RID_A, "t-a");
    const mr_frame_t *w = s_replies[s_n_replies - 1].f;
    assert_int_equal(w->body_case, MEDROUTE__V1__FRAME__BODY_WELCOME);
    assert_int_equal(w->welcome->heartbeat_interval_ms, 10000);
    assert_int_equal(w->welcome->heartbeat_timeout_ms, 30000);
    heard = s->peers[TA].heard_ms;
    session_cron(s, 0, heard + 5000);
    assert_int_equal(s_count_heartbeats(RID_A), 2);
    session_cron(s, 0, heard + 25000);
    assert_true(s->peers[TA].connected);
    s_settle(s);
}

/* The config without t-b, as a reload that removes it reads it. */
#define S_CONF_WITHOUT_TB \
    "broker_id = \"unit-broker\";\n" \
    "facility_endpoint = \"tcp://127.0.0.1:1\";\n" \
    "operator_endpoint = \"tcp://127.0.0.1:2\";\n" \
    "data_dir = \"unused\";\n" \
    "insecure = true;\n" \
    "limits = { max_message_bytes = 1024; max_inflight = 8;\n" \
    "           heartbeat_interval_ms = 1000; heartbeat_timeout_ms = 3000; };\n" \
    "facilities = (\n" \
    "  { id = \"lead\"; role = \"lead\"; },\n" \
    "  { id = \"img\"; role = \"imaging_centre\"; host = \"lead\"; },\n" \
    "  { id = \"t-a\"; role = \"township\"; public_key = \"" S_KEY_A "\"; }\n" \
    ");\n"

#define RID_D ((const uint8_t *)"\0conn-d")
#define RID_E ((const uint8_t *)"\0conn-e")

/* The seqs of the Deliveries recorded for rid, as a bit set of seqs 1..63. */
static uint64_t s_delivered_to(const uint8_t *rid)
{
    uint64_t seen = 0;
    for (int i = 0; i < s_n_replies; i++)
        if (memcmp(s_replies[i].rid, rid, RID_LEN) == 0 &&
            s_replies[i].f->body_case == MEDROUTE__V1__FRAME__BODY_DELIVERY &&
            s_replies[i].f->delivery->seq < 64)
            seen |= 1ULL << s_replies[i].f->delivery->seq;
    return seen;
}

/*
 * A page of t-b's queue loaded from the store while two reloads remove t-b
 * and add it back: the page was asked for after the cursor of the memory
 * the first reload forgot.  Applied to the new memory (cursor 0) it moved
 * the cursor past the messages before it, which then waited for the next
 * restart; it is dropped, and the queue is loaded again from its start.
 */
static void test_dispatch_page_asked_before_a_reload_is_not_applied_after_it(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    static char stand_in;
    s->facility_ep = (endpoint_t *)&stand_in; /* router_pump sends only with one */
    s->config_text = s_conf_text;
    s_hello(s, RID_C, "lead");
    s_hello(s, RID_B, "t-b");
    s_settle(s);
    char ids[5][16], refs[5][16];
    s_env_t e[5];
    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof ids[i], "m-down-%d", i + 1);
        snprintf(refs[i], sizeof refs[i], "R-DOWN-%d", i + 1);
        s_env_init(&e[i], ids[i]);
        e[i].env.source = "lead";
        e[i].env.destination = "t-b";
        e[i].ref.referral_id = refs[i];
    }
    for (int i = 0; i < 3; i++)
        s_send_env(s, RID_C, &e[i].env);
    s_settle(s);
    assert_int_equal(s_delivered_to(RID_B), 0xeULL); /* seqs 1-3, not acknowledged */
    /* t-b goes; two more come for it; it comes back, and the page after
     * the three it holds in memory is asked for (held here). */
    session_end(s, TB, "test");
    for (int i = 3; i < 5; i++)
        s_send_env(s, RID_C, &e[i].env);
    s_settle(s);
    s_hold_loads = true;
    s_hello(s, RID_D, "t-b");
    while (!(s->peers[TB].loading && !s->peers[TB].loading_express)) {
        assert_int_equal(s_n_held_loads, 1);
        s_release_loads(s); /* the express-only one first */
        s_settle(s);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(s_n_held_loads, 1);
    assert_true(s->peers[TB].cursor > 0);
    /* Removed and added back before that page comes. */
    char why[256] = "";
    s->config_text = S_CONF_WITHOUT_TB;
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    s->config_text = s_conf_text;
    if (reload_config(s, why, sizeof why) != 0)
        fail_msg("reload: %s", why);
    s_hold_loads = false;
    s_release_loads(s);
    s_settle(s);
    /* Its next session gets all five. */
    s_hello(s, RID_E, "t-b");
    for (int i = 0; i < 20 && s_delivered_to(RID_E) != 0x3eULL; i++) {
        s_settle(s);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(s_delivered_to(RID_E), 0x3eULL); /* seqs 1-5 */
    s->facility_ep = NULL;
    s_settle(s);
}

/*
 * t-b comes back to a routine message and a stat one stored after it: the
 * stat one is loaded ahead (express) and sent, the page of routine ones
 * not yet loaded (held here).  An ack of the routine one, which t-b was
 * never sent, is refused as UNKNOWN_DELIVERY and the message stays pending,
 * to be delivered when its page comes.  Before, a seq below the last
 * express one loaded ahead was taken for one sent: the ack marked it
 * delivered, and t-b never received it.
 */
static void test_dispatch_ack_below_an_express_one_loaded_ahead_is_refused(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s_deliveries_on(s, true);
    s_hello(s, RID_C, "lead");
    s_env_t e[2];
    s_env_init(&e[0], "m-routine");
    s_env_init(&e[1], "m-stat");
    for (int i = 0; i < 2; i++) {
        e[i].env.source = "lead";
        e[i].env.destination = "t-b";
    }
    e[0].env.priority = MEDROUTE__V1__PRIORITY__PRIORITY_ROUTINE;
    e[1].env.priority = MEDROUTE__V1__PRIORITY__PRIORITY_STAT;
    e[1].ref.referral_id = "R-2";
    s_send_env(s, RID_C, &e[0].env);
    s_send_env(s, RID_C, &e[1].env);
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    assert_int_equal(s->peers[TB].pending, 2);
    s_hold_loads = true;
    s_hello(s, RID_B, "t-b");
    assert_int_equal(s_n_held_loads, 1);
    s_release_loads(s); /* the express-only one */
    while (s_n_held_loads == 0) {
        s_settle(s);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(s_delivered_to(RID_B), 1ULL << 2); /* the stat one, seq 2 */
    int before = s_n_replies;
    s_delivery_ack(s, RID_B, 1); /* the routine one: not sent */
    s_settle(s);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    const Medroute__V1__Error *err = s_expect_error(before, RID_B, MR_E_UNKNOWN_DELIVERY);
    assert_int_equal(err->seq, 1);
    assert_int_equal(s->counters.v[CNT_DELIVERED], 0);
    /* Its page comes: it is delivered, for the first time. */
    s_hold_loads = false;
    s_release_loads(s);
    for (int i = 0; i < 20 && !(s_delivered_to(RID_B) & 2ULL); i++) {
        s_settle(s);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(s_delivered_to(RID_B), 0x6ULL);
    s_deliveries_on(s, false);
    s_settle(s);
}

/* Frames without a key on a CURVE endpoint are dropped and counted each,
 * but their security.no_user_id lines are bounded (LOGRATE_LINES per
 * window), the count of the others told by dispatch_cron: each line names
 * its frame's size, so a flood of frames of sizes in turn passed the log's
 * filter of repeated lines and filled the log. */
static void test_dispatch_no_user_id_lines_are_rate_limited(void **state)
{
    s_fx_t *fx = *state;
    server_t *s = fx->s;
    s->conf->insecure = false;
    log_set_level(s->log, MR_LOG_DEBUG);
    frozen_clock_set(true);
    uint8_t frame[64] = {0}; /* never decoded: no key, nothing is trusted */
    for (int i = 0; i < 100; i++)
        s_raw(s, RID_A, frame, 1 + (size_t)(i % 50));
    assert_int_equal(s_n_replies, 0);
    assert_int_equal(s->counters.v[CNT_SECURITY_EVENTS], 100);
    assert_int_equal(s_lines(fx->logf, "event=security.no_user_id "), LOGRATE_LINES);
    dispatch_cron(s, mr_mono_ms());
    assert_int_equal(s_lines(fx->logf, "event=security.facility_unlogged count=80 "), 1);
    /* Told, and no more than once a window. */
    s_raw(s, RID_A, frame, 7);
    dispatch_cron(s, mr_mono_ms());
    assert_int_equal(s->counters.v[CNT_SECURITY_EVENTS], 101);
    assert_int_equal(s_lines(fx->logf, "event=security.facility_unlogged "), 1);
    frozen_clock_set(false);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_dispatch_part_count_malformed),
        T(test_dispatch_oversize_too_large),
        T(test_dispatch_undecodable_malformed),
        T(test_dispatch_unsupported_version),
        T(test_dispatch_no_body_malformed),
        T(test_dispatch_unexpected_frames),
        T(test_dispatch_before_hello_no_hello),
        T(test_dispatch_hello_unknown_facility),
        T(test_dispatch_hello_binds_session),
        T(test_dispatch_envelope_validation),
        T(test_dispatch_refuses_strings_not_utf8),
        T(test_dispatch_cuts_echoed_text_on_character_boundaries),
        T(test_dispatch_valid_envelope_acked_after_commit),
        T(test_dispatch_echoes_the_submission_tag),
        T(test_dispatch_undecoded_envelope_echoes_its_tag),
        T(test_dispatch_refuses_field_numbers_beyond_the_largest),
        T(test_dispatch_refuses_a_payload_carried_twice),
        T(test_dispatch_page_asked_before_a_reload_is_not_applied_after_it),
        T(test_dispatch_ack_below_an_express_one_loaded_ahead_is_refused),
    T(test_dispatch_no_user_id_lines_are_rate_limited),
        T(test_dispatch_draining_refuses_envelopes),
        T(test_dispatch_store_unavailable_reported),
        T(test_dispatch_store_unavailable_tallied_once_back),
        T(test_dispatch_delivery_ack_unknown),
        T(test_dispatch_acks_gathered_per_turn),
        T(test_dispatch_hello_allows_acks_in_one_frame),
        T(test_dispatch_repeated_hello_lowers_acks_per_frame),
        T(test_dispatch_nothing_sent_that_a_running_scan_expires),
        T(test_dispatch_failed_ack_commit_sends_again_soon),
        T(test_dispatch_session_follows_its_key),
        T(test_dispatch_late_ack_counts_with_its_key_only),
        T(test_dispatch_late_ack_needs_a_key_still_allowed),
        T(test_dispatch_rotation_keeps_only_the_sessions_connection),
        T(test_dispatch_key_given_to_another_speaks_for_it_only),
        T(test_dispatch_reload_ends_a_session_whose_key_moved),
        T(test_dispatch_session_keeps_its_welcome_heartbeat),
        T(test_dispatch_hello_from_a_gone_connection_binds_nothing),
    };
    /* MR_TEST_FILTER / MR_TEST_SKIP: glob patterns of test names to run or
     * skip (e.g. to run the rest under valgrind while a known bug is open). */
    if (getenv("MR_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MR_TEST_FILTER"));
    if (getenv("MR_TEST_SKIP"))
        cmocka_set_skip_filter(getenv("MR_TEST_SKIP"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
