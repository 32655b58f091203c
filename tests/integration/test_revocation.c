/*
 * test_revocation.c - with CURVE, the key says who is speaking, and the
 * configuration of the moment says what that key may do, over the real
 * daemon and its reloads:
 *   - a session is not its routing id: it ends with its connection, and
 *     another key that connects with the routing id of a gone connection
 *     neither sends as that facility nor receives its deliveries;
 *   - an operator key a reload demotes or removes loses that role on the
 *     connection it already has, and the `watch` stream it opened ends;
 *   - a facility removed by a reload and added back with a new key is not
 *     given back to a connection still open with the old key;
 *   - a limit that ZeroMQ holds from the start (limits.max_message_bytes,
 *     the socket's hard size cap) is refused by a reload, not half applied.
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
#include <zmq.h>

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

static char g_keys[256];
static mrt_keys_t g_broker, g_lead, g_aihua, g_manwan, g_new, g_admin, g_ro;
static mrt_daemon_t g_d;

static int setup(void **state)
{
    (void)state;
    snprintf(g_keys, sizeof g_keys, "/tmp/mrkeys-XXXXXX");
    if (mkdtemp(g_keys) == NULL)
        return -1;
    return mrt_keygen(g_keys, "broker", &g_broker) || mrt_keygen(g_keys, "yx-lead", &g_lead) ||
                   mrt_keygen(g_keys, "t-aihua", &g_aihua) ||
                   mrt_keygen(g_keys, "t-manwan", &g_manwan) ||
                   mrt_keygen(g_keys, "t-aihua-new", &g_new) ||
                   mrt_keygen(g_keys, "op-admin", &g_admin) || mrt_keygen(g_keys, "op-ro", &g_ro)
               ? -1
               : 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_keys);
    return system(cmd) == 0 ? 0 : -1;
}

/* Each test's daemon goes, whatever the test's outcome. */
static int s_daemon_gone(void **state)
{
    (void)state;
    mrt_daemon_cleanup(&g_d);
    memset(&g_d, 0, sizeof g_d);
    return 0;
}

/* The registry: yx-lead, t-manwan, and t-aihua with aihua_key (NULL: none). */
static void s_facilities(char *out, size_t len, const mrt_keys_t *aihua_key)
{
    int n = snprintf(out, len,
                     "facilities = (\n"
                     " { id = \"yx-lead\"; role = \"lead\"; public_key = \"%s\"; },\n"
                     " { id = \"t-manwan\"; role = \"township\"; public_key = \"%s\"; }",
                     g_lead.pub, g_manwan.pub);
    if (aihua_key != NULL)
        n += snprintf(out + n, len - (size_t)n,
                      ",\n { id = \"t-aihua\"; role = \"township\"; public_key = \"%s\"; }",
                      aihua_key->pub);
    snprintf(out + n, len - (size_t)n, "\n);\n");
}

/* The security settings, with operators (libconfig list items) and limits. */
static void s_extra(char *out, size_t len, const char *operators, const char *limits)
{
    snprintf(out, len, "server_key_file = \"%s/broker.key\";\noperators = ( %s );\n%s\n", g_keys,
             operators, limits ? limits : "");
}

static void s_start(const mrt_keys_t *aihua_key, const char *operators, const char *limits)
{
    char fac[2048], extra[1024];
    s_facilities(fac, sizeof fac, aihua_key);
    s_extra(extra, sizeof extra, operators, limits);
    assert_int_equal(mrt_daemon_start_with(&g_d, fac, extra, false), 0);
}

/* Rewrites the config as s_start does and reloads: 0 reloaded, 1 refused. */
static int s_reload(const mrt_keys_t *aihua_key, const char *operators, const char *limits)
{
    char fac[2048], extra[1024];
    s_facilities(fac, sizeof fac, aihua_key);
    s_extra(extra, sizeof extra, operators, limits);
    assert_int_equal(mrt_daemon_rewrite(&g_d, fac, extra, false), 0);
    return mrt_daemon_reload(&g_d);
}

/* ---- raw CURVE connections ------------------------------------------------ */

static void *s_dealer(void *ctx, const mrt_keys_t *k, const char *rid)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(sock);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, g_broker.pub, 40), 0);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, k->pub, 40), 0);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->sec, 40), 0);
    if (rid != NULL)
        assert_int_equal(zmq_setsockopt(sock, ZMQ_ROUTING_ID, rid, strlen(rid)), 0);
    assert_int_equal(zmq_connect(sock, g_d.facility_ep), 0);
    return sock;
}

static void s_send_frame(void *sock, mr_frame_t *f)
{
    uint8_t *buf;
    size_t len;
    f->version = MR_PROTOCOL_VERSION;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    assert_int_equal(zmq_send(sock, buf, len, 0), (int)len);
    free(buf);
}

static void s_hello(void *sock, const char *facility)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = (char *)facility;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    s_send_frame(sock, &f);
}

static void s_lab_order(void *sock, const char *source, const char *dest, const char *id)
{
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = (char *)id;
    Medroute__V1__Envelope e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = (char *)id;
    e.source = (char *)source;
    e.destination = (char *)dest;
    e.kind = MEDROUTE__V1__KIND__KIND_LAB_ORDER;
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
    e.lab_order = &lo;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &e;
    s_send_frame(sock, &f);
}

/* Waits (10 s at most) for a line of the daemon's log holding needle. */
static void s_wait_log(const char *needle)
{
    for (long long until = mrt_now_ms() + 10000;
         mrt_log_count(&g_d, needle) < 1 && mrt_now_ms() < until;)
        usleep(20 * 1000);
}

/* The body case of the next frame other than a Heartbeat within timeout_ms
 * (an Error's code in *code), or -1 if none came. */
static int s_next(void *sock, int timeout_ms, int *code)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    for (long long until = mrt_now_ms() + timeout_ms; mrt_now_ms() < until;) {
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        mr_frame_t *f = medroute__v1__frame__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        assert_non_null(f);
        int body = (int)f->body_case;
        if (body == MEDROUTE__V1__FRAME__BODY_ERROR && code != NULL)
            *code = (int)f->error->code;
        medroute__v1__frame__free_unpacked(f, NULL);
        if (body != MEDROUTE__V1__FRAME__BODY_HEARTBEAT)
            return body;
    }
    return -1;
}

/* A connection with key k (on routing id rid, or one of ZeroMQ's) that
 * said Hello as facility and was welcomed. */
static void *s_connected(void *ctx, const mrt_keys_t *k, const char *rid, const char *facility)
{
    void *sock = s_dealer(ctx, k, rid);
    s_hello(sock, facility);
    assert_int_equal(s_next(sock, 10000, NULL), MEDROUTE__V1__FRAME__BODY_WELCOME);
    return sock;
}

static char *s_op(mr_operator_t *op, const char *request)
{
    char *reply = NULL, err[200];
    int rc = mr_operator_call_json(op, request, &reply, 10000, err, sizeof err);
    if (rc != 0 && rc != -EPROTO) {
        fprintf(stderr, "operator call: %s\n", err);
        free(reply);
        return NULL;
    }
    return reply;
}

/* ---- the tests ---------------------------------------------------------------- */

static void test_revocation_routing_id_is_not_identity(void **state)
{
    (void)state;
    /* A long heartbeat interval: the broker notices a gone connection only
     * at its next heartbeat, so the gone one's session stays bound a while. */
    s_start(&g_aihua, "", "limits = { heartbeat_interval_ms = 20000; heartbeat_timeout_ms = 60000; };");
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *aihua = s_connected(ctx, &g_aihua, "RID-A", "t-aihua");
    zmq_close(aihua); /* its connection goes; the session is still bound to "RID-A" */
    usleep(200 * 1000);

    /* t-manwan's key on routing id "RID-A", no Hello. */
    void *intruder = s_dealer(ctx, &g_manwan, "RID-A");
    usleep(300 * 1000);
    s_lab_order(intruder, "t-aihua", "yx-lead", "SPOOF-1");
    int code = 0;
    assert_int_equal(s_next(intruder, 10000, &code), MEDROUTE__V1__FRAME__BODY_ERROR);
    assert_int_equal(code, MR_E_NO_HELLO);

    /* Nor does t-aihua's mail go to it. */
    void *lead = s_connected(ctx, &g_lead, NULL, "yx-lead");
    s_lab_order(lead, "yx-lead", "t-aihua", "FOR-AIHUA-1");
    assert_int_equal(s_next(lead, 10000, NULL), MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s_next(intruder, 1500, NULL), -1);

    /* Its own Hello, as t-manwan, works on that routing id. */
    s_hello(intruder, "t-manwan");
    assert_int_equal(s_next(intruder, 10000, NULL), MEDROUTE__V1__FRAME__BODY_WELCOME);
    /* And t-aihua, back with its key, gets its mail. */
    aihua = s_connected(ctx, &g_aihua, NULL, "t-aihua");
    assert_int_equal(s_next(aihua, 10000, NULL), MEDROUTE__V1__FRAME__BODY_DELIVERY);
    zmq_close(aihua);
    zmq_close(intruder);
    zmq_close(lead);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

/* The same intruder, silent: the session ended with its connection, so
 * nothing of t-aihua's is sent to whoever takes the routing id next. */
static void test_revocation_silent_intruder_gets_nothing(void **state)
{
    (void)state;
    s_start(&g_aihua, "", "limits = { heartbeat_interval_ms = 20000; heartbeat_timeout_ms = 60000; };");
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *aihua = s_connected(ctx, &g_aihua, "RID-A", "t-aihua");
    zmq_close(aihua);
    /* The broker ends the session as the connection closes. */
    s_wait_log("why=connection_closed");
    assert_int_equal(mrt_log_count(&g_d, "facility=t-aihua why=connection_closed"), 1);
    void *intruder = s_dealer(ctx, &g_manwan, "RID-A");
    usleep(300 * 1000);
    void *lead = s_connected(ctx, &g_lead, NULL, "yx-lead");
    s_lab_order(lead, "yx-lead", "t-aihua", "FOR-AIHUA-2");
    assert_int_equal(s_next(lead, 10000, NULL), MEDROUTE__V1__FRAME__BODY_ACK);
    assert_int_equal(s_next(intruder, 1500, NULL), -1);
    zmq_close(intruder);
    zmq_close(lead);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

static void test_revocation_operator_roles_follow_reload(void **state)
{
    (void)state;
    char admin[200], viewer[200], demoted[200];
    snprintf(admin, sizeof admin, "{ name = \"noc\"; role = \"admin\"; public_key = \"%s\"; }",
             g_admin.pub);
    snprintf(viewer, sizeof viewer,
             "{ name = \"viewer\"; role = \"read_only\"; public_key = \"%s\"; }", g_ro.pub);
    snprintf(demoted, sizeof demoted,
             "{ name = \"noc\"; role = \"read_only\"; public_key = \"%s\"; }", g_admin.pub);
    char both[420];
    snprintf(both, sizeof both, "%s, %s", admin, viewer);
    s_start(&g_aihua, both, NULL);
    mr_operator_t *op = mr_operator_new_curve(g_d.operator_ep, g_broker.pub, g_admin.pub,
                                              g_admin.sec);
    assert_non_null(op);
    char backup[400];
    snprintf(backup, sizeof backup, "{\"backup\":{\"path\":\"%s/copy.db\"}}", g_d.dir);
    char *r = s_op(op, backup);
    assert_non_null(r);
    assert_null(strstr(r, "ERROR_"));
    free(r);

    /* Demoted by a reload: the open connection is read-only now. */
    snprintf(both, sizeof both, "%s, %s", demoted, viewer);
    assert_int_equal(s_reload(&g_aihua, both, NULL), 0);
    r = s_op(op, "{\"reload\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "ERROR_FORBIDDEN"));
    free(r);
    r = s_op(op, "{\"status\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "\"status\""));
    free(r);

    /* Removed by a reload: nothing at all. */
    assert_int_equal(s_reload(&g_aihua, viewer, NULL), 0);
    r = s_op(op, "{\"status\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "ERROR_FORBIDDEN"));
    free(r);
    assert_int_equal(mrt_log_count(&g_d, "event=security.revoked_key endpoint=operator"), 1);
    mr_operator_destroy(&op);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

/* Whether a `counters` event saying "stored +1" reaches op within ms. */
static bool s_watch_sees_stored(mr_operator_t *op, int ms)
{
    bool seen = false;
    for (long long until = mrt_now_ms() + ms; !seen && mrt_now_ms() < until;) {
        char *reply = NULL;
        if (mr_operator_next_json(op, &reply, 200) == 0)
            seen = strstr(reply, "\"kind\":\"counters\"") && strstr(reply, "stored +1");
        free(reply);
    }
    return seen;
}

/* A removed operator's `watch` stream ends with its key, as its requests
 * are refused, not when the stream would go stale (120 s). */
static void test_revocation_removed_operator_watch_ends(void **state)
{
    (void)state;
    char viewer[200];
    snprintf(viewer, sizeof viewer,
             "{ name = \"viewer\"; role = \"read_only\"; public_key = \"%s\"; }", g_ro.pub);
    s_start(&g_aihua, viewer, NULL);
    mr_operator_t *op = mr_operator_new_curve(g_d.operator_ep, g_broker.pub, g_ro.pub, g_ro.sec);
    assert_non_null(op);
    char *r = s_op(op, "{\"watch\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "\"subscribed\""));
    free(r);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *aihua = s_connected(ctx, &g_aihua, NULL, "t-aihua");
    s_lab_order(aihua, "t-aihua", "yx-lead", "W-1");
    assert_int_equal(s_next(aihua, 10000, NULL), MEDROUTE__V1__FRAME__BODY_ACK);
    assert_true(s_watch_sees_stored(op, 5000)); /* the stream works */

    assert_int_equal(s_reload(&g_aihua, "", NULL), 0);
    s_wait_log("action=watch_ended");
    assert_int_equal(mrt_log_count(&g_d, "event=security.revoked_key endpoint=operator"), 1);
    s_lab_order(aihua, "t-aihua", "yx-lead", "W-2");
    assert_int_equal(s_next(aihua, 10000, NULL), MEDROUTE__V1__FRAME__BODY_ACK);
    assert_false(s_watch_sees_stored(op, 3000));
    zmq_close(aihua);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    mr_operator_destroy(&op);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

static void test_revocation_removed_facility_stays_out(void **state)
{
    (void)state;
    s_start(&g_aihua, "", NULL);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *old = s_connected(ctx, &g_aihua, NULL, "t-aihua");
    /* Revoked as operations.md says: removed, reloaded ... */
    assert_int_equal(s_reload(NULL, "", NULL), 0);
    assert_int_equal(mrt_log_count(&g_d, "why=removed_from_registry"), 1);
    /* ... and added back with the key of its rebuilt machine. */
    assert_int_equal(s_reload(&g_new, "", NULL), 0);
    int code = 0;
    s_hello(old, "t-aihua");
    assert_int_equal(s_next(old, 10000, &code), MEDROUTE__V1__FRAME__BODY_ERROR);
    assert_int_equal(code, MR_E_FORBIDDEN);
    /* The new key gets in. */
    void *fresh = s_connected(ctx, &g_new, NULL, "t-aihua");
    zmq_close(old);
    zmq_close(fresh);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

/* A rotation: once the registry has the facility's new key, the connection
 * it has with the old one keeps working, even if its session is lost (here
 * to a heartbeat time-out on a poor link) and it says Hello again. */
static void test_revocation_rotation_keeps_the_open_connection(void **state)
{
    (void)state;
    const char *limits = "limits = { heartbeat_interval_ms = 300; heartbeat_timeout_ms = 1000; };";
    s_start(&g_aihua, "", limits);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *old = s_connected(ctx, &g_aihua, NULL, "t-aihua");
    assert_int_equal(s_reload(&g_new, "", limits), 0);
    /* Silent past the time-out: the broker ends the session. */
    s_wait_log("why=heartbeat_timeout");
    assert_int_equal(mrt_log_count(&g_d, "facility=t-aihua why=heartbeat_timeout"), 1);
    s_hello(old, "t-aihua");
    assert_int_equal(s_next(old, 10000, NULL), MEDROUTE__V1__FRAME__BODY_WELCOME);
    /* A new connection needs the new key. */
    void *fresh = s_connected(ctx, &g_new, NULL, "t-aihua");
    zmq_close(old);
    zmq_close(fresh);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

static void test_revocation_message_limit_needs_a_restart(void **state)
{
    (void)state;
    s_start(&g_aihua, "", "limits = { max_message_bytes = 4096; };");
    assert_int_equal(s_reload(&g_aihua, "", "limits = { max_message_bytes = 65536; };"), 1);
    assert_int_equal(mrt_log_count(&g_d, "limits.max_message_bytes"), 1);
    /* The other limits still change live. */
    assert_int_equal(s_reload(&g_aihua, "", "limits = { max_message_bytes = 4096; max_inflight = 64; };"),
                     0);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_teardown(fn, s_daemon_gone)
    const struct CMUnitTest tests[] = {
        T(test_revocation_routing_id_is_not_identity),
        T(test_revocation_silent_intruder_gets_nothing),
        T(test_revocation_operator_roles_follow_reload),
        T(test_revocation_removed_operator_watch_ends),
        T(test_revocation_removed_facility_stays_out),
        T(test_revocation_rotation_keeps_the_open_connection),
        T(test_revocation_message_limit_needs_a_restart),
    };
    return cmocka_run_group_tests_name("revocation", tests, setup, teardown);
}
