/*
 * test_security.c - only registered facilities get in, and nobody speaks
 * for another: CURVE with the daemon's own ZAP handler, over the real
 * daemon.  An unknown key cannot connect; a plaintext client cannot talk to
 * a CURVE endpoint; a registered client claiming another's source is
 * refused; operator roles hold; bad input gets its Error while others'
 * traffic flows; keys and store are owner-only; logs carry no patient data.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

typedef mrt_keys_t keys_t;

static mrt_daemon_t g_d;
static char g_keys[256];
static keys_t g_broker, g_lead, g_aihua, g_manwan, g_intruder, g_admin, g_ro;

static void s_keys(const char *name, keys_t *k)
{
    assert_int_equal(mrt_keygen(g_keys, name, k), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_keys, sizeof g_keys, "/tmp/mrkeys-XXXXXX");
    if (mkdtemp(g_keys) == NULL)
        return -1;
    s_keys("broker", &g_broker);
    s_keys("yx-lead", &g_lead);
    s_keys("t-aihua", &g_aihua);
    s_keys("t-manwan", &g_manwan);
    s_keys("intruder", &g_intruder);
    s_keys("op-admin", &g_admin);
    s_keys("op-ro", &g_ro);
    char fac[2048], extra[1024];
    snprintf(fac, sizeof fac,
             "facilities = (\n"
             " { id = \"yx-lead\"; role = \"lead\"; public_key = \"%s\"; },\n"
             " { id = \"t-aihua\"; role = \"township\"; public_key = \"%s\"; },\n"
             " { id = \"t-manwan\"; role = \"township\"; public_key = \"%s\"; }\n);\n",
             g_lead.pub, g_aihua.pub, g_manwan.pub);
    snprintf(extra, sizeof extra,
             "server_key_file = \"%s/broker.key\";\n"
             "operators = (\n"
             " { name = \"noc\"; role = \"admin\"; public_key = \"%s\"; },\n"
             " { name = \"viewer\"; role = \"read_only\"; public_key = \"%s\"; }\n);\n"
             "limits = { handshake_ms = 2000; };\n",
             g_keys, g_admin.pub, g_ro.pub);
    return mrt_daemon_start_with(&g_d, fac, extra, false);
}

static int teardown(void **state)
{
    (void)state;
    int rc = mrt_daemon_stop(&g_d);
    mrt_daemon_cleanup(&g_d);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_keys);
    if (system(cmd) != 0)
        return -1;
    return rc == 0 ? 0 : -1;
}

static mr_client_t *secure_client(const char *facility, const keys_t *k)
{
    mr_client_opts_t o = {.endpoint = g_d.facility_ep, .facility = facility,
                          .server_public_key = g_broker.pub, .public_key = k ? k->pub : NULL,
                          .secret_key = k ? k->sec : NULL, .ack_timeout_ms = 2000};
    mr_client_t *c = mr_client_new(&o);
    assert_non_null(c);
    return c;
}

/* A call that must be answered gets the harness's 10 s: the status reply
 * waits for the store thread, which can sit behind a slow disk's fsync while
 * the other tests write. A call that must fail gets 2 s. */
enum { S_ANSWERED_MS = 10000, S_REFUSED_MS = 2000 };

static char *op_call_within(const keys_t *k, const char *request, int timeout_ms)
{
    mr_operator_t *op = k ? mr_operator_new_curve(g_d.operator_ep, g_broker.pub, k->pub, k->sec)
                          : mr_operator_new(g_d.operator_ep);
    assert_non_null(op);
    char *reply = NULL, err[200];
    int rc = mr_operator_call_json(op, request, &reply, timeout_ms, err, sizeof err);
    mr_operator_destroy(&op);
    if (rc != 0 && rc != -EPROTO) {
        fprintf(stderr, "operator call: %s\n", err);
        free(reply);
        return NULL;
    }
    return reply;
}

static char *op_call(const keys_t *k, const char *request)
{
    return op_call_within(k, request, S_ANSWERED_MS);
}

static long long counter(const char *name)
{
    char *r = op_call(&g_admin, "{\"status\":{}}");
    assert_non_null(r);
    char pat[80];
    snprintf(pat, sizeof pat, "\"name\":\"%s\",\"value\":", name);
    const char *p = strstr(r, pat);
    long long v = p ? atoll(p + strlen(pat)) : 0;
    free(r);
    return v;
}

typedef struct {
    int deliveries;
} got_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY)
        ((got_t *)arg)->deliveries++;
    return 0;
}

static bool one(void *arg)
{
    return ((got_t *)arg)->deliveries >= 1;
}

static void test_security_registered_keys_route(void **state)
{
    (void)state;
    mr_client_t *lead = secure_client("yx-lead", &g_lead);
    mr_client_t *aihua = secure_client("t-aihua", &g_aihua);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mr_client_wait_connected(aihua, 5000), 0);
    assert_int_equal(mrt_send(aihua, "yx-lead", "referral", "urgent",
                              "{\"referral_id\":\"S-1\",\"patient\":{\"name\":\"Zhang Testpatient\","
                              "\"identifiers\":[{\"system\":\"cn-resident-id\",\"value\":"
                              "\"530900199001010011\"}]}}",
                              NULL),
                     0);
    got_t got = {0};
    assert_true(mrt_poll_until(lead, 5000, one, &got, on_event, &got));
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

static void test_security_unknown_key_and_plaintext_cannot_connect(void **state)
{
    (void)state;
    long long before = counter("security_events");
    mr_client_t *in = secure_client("t-aihua", &g_intruder);
    assert_int_equal(mr_client_wait_connected(in, 2000), -ETIMEDOUT);
    mr_client_destroy(&in);
    assert_true(counter("security_events") > before);
    assert_true(mrt_log_count(&g_d, "event=security.unknown_key") >= 1);
    /* No keys at all: the CURVE endpoint does not talk plaintext. */
    mr_client_opts_t o = {.endpoint = g_d.facility_ep, .facility = "t-aihua"};
    mr_client_t *plain = mr_client_new(&o);
    assert_non_null(plain);
    assert_int_equal(mr_client_wait_connected(plain, 2000), -ETIMEDOUT);
    mr_client_destroy(&plain);
    /* Nor does the operator endpoint. */
    assert_null(op_call_within(NULL, "{\"status\":{}}", S_REFUSED_MS));
    /* The broker's secret key file is owner-only. */
    struct stat st;
    char path[400];
    snprintf(path, sizeof path, "%s/broker.key", g_keys);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/var/medroute.db", g_d.dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_security_no_spoofing(void **state)
{
    (void)state;
    long long before = counter("security_events");
    /* t-aihua's key saying Hello as t-manwan. */
    mr_client_t *spoof = secure_client("t-manwan", &g_aihua);
    assert_int_equal(mr_client_wait_connected(spoof, 10000), -EACCES);
    mr_client_destroy(&spoof);
    /* t-aihua, connected as itself, sending with t-manwan's source. */
    mr_client_t *aihua = secure_client("t-aihua", &g_aihua);
    assert_int_equal(mr_client_wait_connected(aihua, 5000), 0);
    mr_result_t res;
    assert_int_equal(mr_client_send_json(aihua,
                                         "{\"source\":\"t-manwan\",\"destination\":\"yx-lead\","
                                         "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\""
                                         ":\"X\"}}",
                                         &res, 5000, NULL, NULL),
                     -EPROTO);
    assert_int_equal(res.code, MR_E_FORBIDDEN);
    assert_true(counter("security_events") >= before + 2);
    /* Bad input from a registered facility: its Error, while others flow. */
    assert_int_equal(mrt_send(aihua, "t-nowhere", "lab_order", "routine",
                              "{\"placer_order_number\":\"Y\"}", NULL),
                     MR_E_UNKNOWN_DESTINATION);
    mr_client_t *manwan = secure_client("t-manwan", &g_manwan);
    mr_client_t *lead = secure_client("yx-lead", &g_lead);
    assert_int_equal(mr_client_wait_connected(manwan, 5000), 0);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mrt_send(manwan, "yx-lead", "lab_order", "routine",
                              "{\"placer_order_number\":\"Z\"}", NULL),
                     0);
    got_t got = {0};
    assert_true(mrt_poll_until(lead, 5000, one, &got, on_event, &got));
    mr_client_destroy(&aihua);
    mr_client_destroy(&manwan);
    mr_client_destroy(&lead);
}

/* A raw CURVE connection (t-aihua's key) sends a malformed and an oversize
 * frame: each gets its Error, and t-manwan's traffic flows on. */
static int s_expect_error(void *sock)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    long long until = mrt_now_ms() + 5000;
    while (mrt_now_ms() < until) {
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0)
            continue;
        mr_frame_t *f = medroute__v1__frame__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        int code = -1;
        if (f && f->body_case == MEDROUTE__V1__FRAME__BODY_ERROR)
            code = (int)f->error->code;
        if (f)
            medroute__v1__frame__free_unpacked(f, NULL);
        if (code >= 0)
            return code;
    }
    return -1;
}

static void test_security_bad_input_over_curve(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, g_broker.pub, 40), 0);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, g_aihua.pub, 40), 0);
    assert_int_equal(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, g_aihua.sec, 40), 0);
    assert_int_equal(zmq_connect(sock, g_d.facility_ep), 0);
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-aihua";
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    uint8_t *buf;
    size_t len;
    assert_int_equal(mr_pack(&f.base, &buf, &len), 0);
    assert_int_equal(zmq_send(sock, buf, len, 0), (int)len);
    free(buf);
    assert_int_equal(zmq_send(sock, "\xff\xfe garbage", 10, 0), 10);
    assert_int_equal(s_expect_error(sock), MR_E_MALFORMED);
    size_t big = (1 << 20) + 10;
    char *blob = calloc(1, big);
    assert_int_equal(zmq_send(sock, blob, big, 0), (int)big);
    free(blob);
    assert_int_equal(s_expect_error(sock), MR_E_TOO_LARGE);
    mr_client_t *manwan = secure_client("t-manwan", &g_manwan);
    mr_client_t *lead = secure_client("yx-lead", &g_lead);
    assert_int_equal(mr_client_wait_connected(manwan, 5000), 0);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mrt_send(manwan, "yx-lead", "lab_order", "routine",
                              "{\"placer_order_number\":\"FLOW\"}", NULL),
                     0);
    got_t got = {0};
    assert_true(mrt_poll_until(lead, 5000, one, &got, on_event, &got));
    mr_client_destroy(&manwan);
    mr_client_destroy(&lead);
    zmq_close(sock);
    zmq_ctx_term(ctx);
}

static void test_security_operator_roles(void **state)
{
    (void)state;
    char *r = op_call(&g_ro, "{\"status\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "\"status\""));
    free(r);
    long long refused = counter("operator_rejected");
    int logged = mrt_log_count(&g_d, "event=operator.rejected");
    r = op_call(&g_ro, "{\"queue_drop\":{\"seq\":1,\"reason\":\"x\"}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "ERROR_FORBIDDEN"));
    free(r);
    /* Counted and logged, as a facility's refusals are. */
    assert_int_equal(counter("operator_rejected"), refused + 1);
    assert_int_equal(mrt_log_count(&g_d, "event=operator.rejected"), logged + 1);
    /* The admin may (the seq is already delivered: refused for that, not for the role). */
    r = op_call(&g_admin, "{\"queue_drop\":{\"seq\":1,\"reason\":\"x\"}}");
    assert_non_null(r);
    assert_null(strstr(r, "ERROR_FORBIDDEN"));
    free(r);
    /* No patient name or identifier reached the log. */
    assert_int_equal(mrt_log_count(&g_d, "Testpatient"), 0);
    assert_int_equal(mrt_log_count(&g_d, "530900199001010011"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_security_registered_keys_route),
        cmocka_unit_test(test_security_unknown_key_and_plaintext_cannot_connect),
        cmocka_unit_test(test_security_no_spoofing),
        cmocka_unit_test(test_security_bad_input_over_curve),
        cmocka_unit_test(test_security_operator_roles),
    };
    return cmocka_run_group_tests_name("security", tests, setup, teardown);
}
