/*
 * test_routing.c - the real medrouted routes every kind both ways, holds
 * messages for an offline facility and delivers them in order, and answers
 * every kind of bad input with its own error code while traffic flows on
 * (strings that are not UTF-8 among it: refused, never stored).
 */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include <cmocka.h>

#include "sqlfile.h"
#include "harness.h"
#include "mr_codec.h"

#define MAX_SEEN 256

/* What a test client saw. */
typedef struct {
    int deliveries;
    char kinds[MAX_SEEN][32];
    char ids[MAX_SEEN][72];
    char json[MAX_SEEN][2048];
    bool redelivered[MAX_SEEN];
    int acks, errors;
    int last_error_code;
    char last_error_id[72];
} seen_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    seen_t *s = arg;
    if (ev->type == MR_EVENT_DELIVERY && s->deliveries < MAX_SEEN) {
        int i = s->deliveries++;
        snprintf(s->kinds[i], sizeof s->kinds[i], "%s", ev->delivery->kind);
        snprintf(s->ids[i], sizeof s->ids[i], "%s", ev->delivery->message_id);
        s->redelivered[i] = ev->delivery->redelivered;
        char *j = mr_delivery_json(ev->delivery);
        snprintf(s->json[i], sizeof s->json[i], "%s", j ? j : "");
        free(j);
    } else if (ev->type == MR_EVENT_ACK) {
        s->acks++;
    } else if (ev->type == MR_EVENT_ERROR) {
        s->errors++;
        s->last_error_code = ev->code;
        snprintf(s->last_error_id, sizeof s->last_error_id, "%s", ev->message_id);
    }
    return 0;
}

typedef struct {
    seen_t *s;
    int want;
} want_t;

static bool got_deliveries(void *arg)
{
    want_t *w = arg;
    return w->s->deliveries >= w->want;
}

static mrt_daemon_t g_daemon_storage; /* test fixture, set up once per group */

static int setup(void **state)
{
    if (mrt_daemon_start(&g_daemon_storage, NULL) != 0)
        return -1;
    *state = &g_daemon_storage;
    return 0;
}

static int teardown(void **state)
{
    mrt_daemon_t *d = *state;
    int rc = mrt_daemon_stop(d);
    mrt_daemon_cleanup(d);
    return rc == 0 ? 0 : -1;
}

static mr_client_t *connected(mrt_daemon_t *d, const char *facility)
{
    mr_client_t *c = mrt_client(d, facility, NULL);
    assert_non_null(c);
    assert_int_equal(mr_client_wait_connected(c, 5000), 0);
    return c;
}

/* One routing case: from, to, kind and the payload object's JSON. */
typedef struct {
    const char *from, *to, *kind, *payload, *probe;
} route_case_t;

static const route_case_t s_cases[] = {
    {"t-aihua", "yx-lead", "referral",
     "{\"referral_id\":\"R-UP-1\",\"patient\":{\"identifiers\":[{\"system\":\"cn-resident-id\","
     "\"value\":\"TEST0001\"}],\"name\":\"Test Patient\",\"sex\":\"SEX_MALE\"},"
     "\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"I21\"}],\"service\":\"SERVICE_INPATIENT_BED\","
     "\"department\":\"cardiology\",\"family_doctor_contract\":true,\"deductible_paid_fen\":50000}",
     "\"deductible_paid_fen\":50000"},
    {"yx-lead", "t-aihua", "referral_update",
     "{\"referral_id\":\"R-UP-1\",\"step\":\"STEP_ACCEPTED\",\"appointment_at_ms\":1795000000000,"
     "\"location\":\"Cardiology ward 3, bed 12\"}",
     "\"step\":\"STEP_ACCEPTED\""},
    {"yx-lead", "t-manwan", "referral",
     "{\"referral_id\":\"R-DOWN-1\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"E11\"}],"
     "\"service\":\"SERVICE_FOLLOW_UP\"}",
     "\"code\":\"E11\""},
    {"t-manwan", "yx-imaging", "imaging_request",
     "{\"accession_number\":\"ACC-1\",\"modality\":\"MODALITY_CT\",\"body_part\":\"HEAD\","
     "\"study_instance_uid\":\"1.2.840.113619.2.1.1\",\"clinical_question\":\"bleed?\"}",
     "\"accession_number\":\"ACC-1\""},
    {"yx-imaging", "t-manwan", "imaging_report",
     "{\"accession_number\":\"ACC-1\",\"status\":\"REPORT_FINAL\",\"impression\":\"no bleed\","
     "\"critical_finding\":false}",
     "\"status\":\"REPORT_FINAL\""},
    {"t-aihua", "yx-lab", "lab_order",
     "{\"placer_order_number\":\"PO-1\",\"tests\":[{\"system\":\"LOINC\",\"code\":\"2823-3\"}]}",
     "\"placer_order_number\":\"PO-1\""},
    {"yx-lab", "t-aihua", "lab_result",
     "{\"placer_order_number\":\"PO-1\",\"status\":\"RESULT_FINAL\",\"items\":[{\"test\":"
     "{\"system\":\"LOINC\",\"code\":\"2823-3\"},\"value\":\"6.8\",\"unit\":\"mmol/L\","
     "\"reference_range\":\"3.5-5.3\",\"abnormal\":\"ABNORMAL_CRITICAL_HIGH\",\"critical\":true}]}",
     "\"critical\":true"},
};

static void test_routing_every_kind_both_ways(void **state)
{
    mrt_daemon_t *d = *state;
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        const route_case_t *rc = &s_cases[i];
        mr_client_t *from = connected(d, rc->from);
        mr_client_t *to = connected(d, rc->to);
        char json[4096];
        snprintf(json, sizeof json,
                 "{\"destination\":\"%s\",\"kind\":\"%s\",\"priority\":\"urgent\",\"%s\":%s}", rc->to,
                 rc->kind, rc->kind, rc->payload);
        mr_result_t res;
        assert_int_equal(mr_client_send_json(from, json, &res, 5000, NULL, NULL), 0);
        assert_int_equal(res.code, 0);
        assert_true(res.seq > 0);
        seen_t seen = {0};
        want_t w = {&seen, 1};
        assert_true(mrt_poll_until(to, 5000, got_deliveries, &w, on_event, &seen));
        assert_int_equal(seen.deliveries, 1);
        assert_string_equal(seen.kinds[0], rc->kind);
        assert_string_equal(seen.ids[0], res.message_id);
        assert_non_null(strstr(seen.json[0], rc->probe));
        char src[64];
        snprintf(src, sizeof src, "\"source\":\"%s\"", rc->from);
        assert_non_null(strstr(seen.json[0], src));
        mr_client_destroy(&from);
        mr_client_destroy(&to);
    }
}

static void test_routing_offline_facility_gets_messages_in_order(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *lead = connected(d, "yx-lead");
    enum { N = 40 };
    char ids[N][72];
    for (int i = 0; i < N; i++) {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"destination\":\"t-lishu\",\"kind\":\"referral\",\"referral\":"
                 "{\"referral_id\":\"R-OFF-%03d\",\"service\":\"SERVICE_FOLLOW_UP\"}}",
                 i);
        mr_result_t res;
        assert_int_equal(mr_client_send_json(lead, json, &res, 5000, NULL, NULL), 0);
        snprintf(ids[i], sizeof ids[i], "%s", res.message_id);
    }
    /* The status shows them waiting. */
    char *status = mrt_operator(d, "{\"status\":{}}");
    assert_non_null(status);
    assert_non_null(strstr(status, "\"facility_id\":\"t-lishu\""));
    json_t *st = json_loads(status, 0, NULL);
    free(status);
    assert_non_null(st);
    json_t *facs = json_object_get(json_object_get(st, "status"), "facilities");
    long long pending = -1;
    for (size_t i = 0; i < json_array_size(facs); i++) {
        json_t *f = json_array_get(facs, i);
        if (strcmp(json_string_value(json_object_get(f, "facility_id")), "t-lishu") == 0)
            pending = json_integer_value(json_object_get(f, "pending"));
    }
    json_decref(st);
    assert_int_equal(pending, N);

    mr_client_t *lishu = connected(d, "t-lishu");
    seen_t *seen = calloc(1, sizeof *seen);
    want_t w = {seen, N};
    assert_true(mrt_poll_until(lishu, 10000, got_deliveries, &w, on_event, seen));
    assert_int_equal(seen->deliveries, N);
    for (int i = 0; i < N; i++) {
        assert_string_equal(seen->ids[i], ids[i]);
        char probe[64];
        snprintf(probe, sizeof probe, "R-OFF-%03d", i);
        assert_non_null(strstr(seen->json[i], probe));
    }
    free(seen);
    mr_client_destroy(&lishu);
    mr_client_destroy(&lead);
}

static void test_routing_resend_is_acked_and_routed_once(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *a = connected(d, "t-houqing");
    mr_client_t *lead = connected(d, "yx-lead");
    const char *json = "{\"message_id\":\"dup-1\",\"created_at_ms\":1795000000000,\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
                       "\"lab_order\":{\"placer_order_number\":\"PO-DUP\"}}";
    mr_result_t r1, r2, r3;
    assert_int_equal(mr_client_send_json(a, json, &r1, 5000, NULL, NULL), 0);
    assert_false(r1.duplicate);
    /* A retry stamped with a new creation time is still the same message. */
    const char *retry = "{\"message_id\":\"dup-1\",\"created_at_ms\":1795000009999,"
                        "\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
                        "\"lab_order\":{\"placer_order_number\":\"PO-DUP\"}}";
    assert_int_equal(mr_client_send_json(a, retry, &r2, 5000, NULL, NULL), 0);
    assert_true(r2.duplicate);
    assert_int_equal(r1.seq, r2.seq);
    /* Same id, other content: refused. */
    const char *other = "{\"message_id\":\"dup-1\",\"created_at_ms\":1795000000000,\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
                        "\"lab_order\":{\"placer_order_number\":\"PO-OTHER\"}}";
    assert_int_equal(mr_client_send_json(a, other, &r3, 5000, NULL, NULL), -EPROTO);
    assert_int_equal(r3.code, MR_E_CONFLICT);
    seen_t seen = {0};
    want_t w = {&seen, 2};
    /* Wait long enough that a second copy would have arrived. */
    assert_false(mrt_poll_until(lead, 1500, got_deliveries, &w, on_event, &seen));
    assert_int_equal(seen.deliveries, 1);
    assert_string_equal(seen.ids[0], "dup-1");
    mr_client_destroy(&a);
    mr_client_destroy(&lead);
}

static bool got_acks(void *arg)
{
    want_t *w = arg;
    return w->s->acks >= w->want;
}

/* Submitting an id that waits for its Ack again (an application retrying
 * before the Ack came) keeps one message: one Ack, one delivery. */
static void test_routing_submit_while_waiting_is_one_message(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *a = connected(d, "t-houqing");
    mr_client_t *lead = connected(d, "yx-lead");
    const char *json = "{\"message_id\":\"twice-1\",\"destination\":\"yx-lead\","
                       "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\":\"PO-T1\"}}";
    const char *json2 = "{\"message_id\":\"twice-2\",\"destination\":\"yx-lead\","
                        "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\":\"PO-T2\"}}";
    char id[72], err[256];
    assert_int_equal(mr_client_submit_json(a, json, id, err, sizeof err), 0);
    assert_int_equal(mr_client_submit_json(a, json2, id, err, sizeof err), 0);
    assert_int_equal(mr_client_submit_json(a, json, id, err, sizeof err), 0);
    assert_string_equal(id, "twice-1");
    assert_int_equal(mr_client_unacked(a), 2);
    seen_t sent = {0};
    want_t wa = {&sent, 3};
    /* Wait long enough that a third Ack would have come. */
    assert_false(mrt_poll_until(a, 1500, got_acks, &wa, on_event, &sent));
    assert_int_equal(sent.acks, 2);
    assert_int_equal(mr_client_unacked(a), 0);
    /* Once acknowledged, the same id is a new submission: the broker calls it a duplicate. */
    assert_int_equal(mr_client_submit_json(a, json, id, err, sizeof err), 0);
    assert_int_equal(mr_client_unacked(a), 1);
    seen_t again = {0};
    want_t wg = {&again, 1};
    assert_true(mrt_poll_until(a, 5000, got_acks, &wg, on_event, &again));
    assert_int_equal(mr_client_unacked(a), 0);
    seen_t got = {0};
    want_t wd = {&got, 3};
    assert_false(mrt_poll_until(lead, 1500, got_deliveries, &wd, on_event, &got));
    assert_int_equal(got.deliveries, 2);
    assert_string_equal(got.ids[0], "twice-1");
    assert_string_equal(got.ids[1], "twice-2");
    mr_client_destroy(&a);
    mr_client_destroy(&lead);
}

/* A client made while the broker is down (a township offline all night)
 * says Hello several times: at its start, every 2 s, and on connect; the
 * queued ones all reach the broker and are all answered.  Only the first
 * Welcome sends the outbox, so the broker gets every message once, not the
 * whole outbox once per Hello. */
static void test_routing_outbox_kept_offline_is_sent_once(void **state)
{
    (void)state;
    enum { N = 300 };
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mr_client_t *a = mrt_client(&d, "t-aihua", NULL);
    assert_non_null(a);
    assert_int_equal(mrt_submit_orders(a, "yx-lead", "OFF", N), 0);
    /* the broker is away for a while (its Hello retry is every 2 s) */
    seen_t *seen = calloc(1, sizeof *seen);
    mr_client_poll(a, 6500, on_event, seen);
    assert_int_equal(mr_client_unacked(a), N);
    assert_int_equal(mrt_daemon_restart(&d), 0);
    want_t w = {seen, N};
    assert_true(mrt_poll_until(a, 20000, got_acks, &w, on_event, seen));
    /* a second copy would be acknowledged (as a duplicate) within this */
    mr_client_poll(a, 1000, on_event, seen);
    assert_int_equal(seen->acks, N);
    assert_int_equal(mr_client_unacked(a), 0);
    assert_int_equal(mrt_counter(&d, "stored"), N);
    assert_int_equal(mrt_counter(&d, "duplicate"), 0);
    /* No Hellos piled up while it was away: one on connect (two if a
     * retry crossed it), not one per retry. */
    long long frames = mrt_counter(&d, "received");
    printf("offline start: frames received %lld for %d messages\n", frames, N);
    assert_true(frames >= N + 1 && frames <= N + 2);
    free(seen);
    mr_client_destroy(&a);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

typedef struct {
    int acks, errors;
    char reasons[512];
} damaged_seen_t;

static int on_damaged_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    damaged_seen_t *s = arg;
    if (ev->type == MR_EVENT_ACK) {
        s->acks++;
    } else if (ev->type == MR_EVENT_ERROR) {
        s->errors++;
        assert_int_equal(ev->code, MR_E_INVALID);
        assert_string_equal(ev->message_id, ""); /* the id is what is damaged */
        size_t n = strlen(s->reasons);
        snprintf(s->reasons + n, sizeof s->reasons - n, "%s|", ev->reason);
    }
    return 0;
}

static bool got_damaged_outcomes(void *arg)
{
    const damaged_seen_t *s = arg;
    return s->acks >= 2 && s->errors >= 2;
}

/*
 * An outbox file written by the library, then damaged outside it: one row
 * whose id is NULL, one with an id of 70 bytes.  The client still starts
 * (it failed every time, and crashed on the NULL), sends the two sound
 * messages, reports the damaged rows as INVALID errors and keeps them in
 * outbox_damaged, where a later start leaves them.
 */
static void test_routing_damaged_outbox_rows_are_set_aside(void **state)
{
    mrt_daemon_t *d = *state;
    char dir[400], db[450], ep[128];
    snprintf(dir, sizeof dir, "%s/state-damaged", d->dir);
    snprintf(db, sizeof db, "%s/client-t-aihua.db", dir);
    snprintf(ep, sizeof ep, "ipc:///tmp/mrt-nobody-%ld", (long)getpid());
    mr_client_opts_t away = {.endpoint = ep, .facility = "t-aihua", .state_dir = dir};
    mr_client_t *c = mr_client_new(&away);
    assert_non_null(c);
    const char *ids[] = {"DMG-A", "DMG-B", "DMG-C"};
    for (int i = 0; i < 3; i++) {
        char *json = mrt_lab_order_json(ids[i], 10), err[200];
        assert_non_null(json);
        assert_int_equal(mr_client_submit_json(c, json, NULL, err, sizeof err), 0);
        free(json);
    }
    mr_client_destroy(&c);
    sqlfile_exec(db, "UPDATE outbox SET message_id = NULL WHERE message_id = 'DMG-B';"
              "INSERT INTO outbox(message_id, body) SELECT printf('%.70c', 'L'), body"
              " FROM outbox WHERE message_id = 'DMG-C';");
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outbox"), 4);

    mr_client_opts_t o = {.endpoint = d->facility_ep, .facility = "t-aihua", .state_dir = dir};
    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_outbox_damaged(c), 2);
    assert_int_equal(mr_client_unacked(c), 2);
    damaged_seen_t seen = {0};
    assert_true(mrt_poll_until(c, 10000, got_damaged_outcomes, &seen, on_damaged_event, &seen));
    assert_int_equal(seen.acks, 2);
    assert_int_equal(seen.errors, 2);
    assert_non_null(strstr(seen.reasons, "no message id"));
    assert_non_null(strstr(seen.reasons, "not of 1 to 64 bytes"));
    assert_int_equal(mr_client_unacked(c), 0);
    mr_client_destroy(&c);
    /* Kept, with their bodies and reasons; not in the outbox, not sent. */
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outbox"), 0);
    assert_int_equal(sqlfile_int(db, "SELECT count(*) FROM outbox_damaged WHERE length(body) > 0"
                                   " AND reason <> ''"),
                     2);
    /* Said again at the next start, without the events (they came once),
     * until someone deletes them. */
    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_outbox_damaged(c), 2);
    damaged_seen_t again = {0};
    mrt_poll_until(c, 300, got_damaged_outcomes, &again, on_damaged_event, &again);
    assert_int_equal(again.errors, 0);
    mr_client_destroy(&c);
    sqlfile_exec(db, "DELETE FROM outbox_damaged;");
    c = mr_client_new(&o);
    assert_non_null(c);
    assert_int_equal(mr_client_outbox_damaged(c), 0);
    mr_client_destroy(&c);
}

/* An id waiting in the outbox for its Ack (the broker away, as after a
 * `medroute send` that timed out): the same message again, stamped with
 * another created_at_ms, in the same process or a new one on the same state
 * dir, stays one message; other content under that id is refused with
 * -EEXIST, never sent, and the queued version is what is delivered. */
static void test_routing_outbox_id_with_other_content_is_refused(void **state)
{
    (void)state;
    const char *first = "{\"message_id\":\"fix-1\",\"created_at_ms\":1795000000000,"
                        "\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
                        "\"lab_order\":{\"placer_order_number\":\"PO-FIRST\"}}";
    const char *restamped = "{\"message_id\":\"fix-1\",\"created_at_ms\":1795000005555,"
                            "\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
                            "\"lab_order\":{\"placer_order_number\":\"PO-FIRST\"}}";
    /* No created_at_ms: the library stamps the time of this submission. */
    const char *unstamped = "{\"message_id\":\"fix-1\",\"destination\":\"yx-lead\","
                            "\"kind\":\"lab_order\","
                            "\"lab_order\":{\"placer_order_number\":\"PO-FIRST\"}}";
    const char *corrected = "{\"message_id\":\"fix-1\",\"destination\":\"yx-lead\","
                            "\"kind\":\"lab_order\","
                            "\"lab_order\":{\"placer_order_number\":\"PO-CORRECTED\"}}";
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mr_client_t *a = mrt_client(&d, "t-aihua", "t-aihua");
    assert_non_null(a);
    char id[72], err[256];
    assert_int_equal(mr_client_submit_json(a, first, id, err, sizeof err), 0);
    assert_int_equal(mr_client_submit_json(a, restamped, id, err, sizeof err), 0);
    id[0] = '\0';
    assert_int_equal(mr_client_submit_json(a, corrected, id, err, sizeof err), -EEXIST);
    assert_string_equal(id, "fix-1");
    assert_non_null(strstr(err, "fix-1"));
    assert_int_equal(mr_client_unacked(a), 1);
    /* An id that is not UTF-8 is not queued at all: the broker's Error could
     * not name it, and the outbox would send it at every connect. */
    static const uint8_t env_bytes[] = {0x0a, 0x01, 0x78};
    assert_int_equal(mr_client_submit_packed(a, "fix-\xff", env_bytes, sizeof env_bytes),
                     -EINVAL);
    /* Nor bytes whose answer could not name the queued id: an Envelope
     * carrying another id, or none; bytes whose fields do not parse. */
    static const uint8_t other_id[] = {0x0a, 0x05, 'f', 'i', 'x', '-', '2'};
    static const uint8_t no_id[] = {0x30, 0x01};
    static const uint8_t cut[] = {0x0a, 0x05, 'f', 'i', 'x', '-'};
    static const uint8_t whole[] = {0x0a, 0x05, 'f', 'i', 'x', '-', '1'};
    assert_int_equal(mr_client_submit_packed(a, "fix-3", other_id, sizeof other_id), -EINVAL);
    assert_int_equal(mr_client_submit_packed(a, "fix-3", no_id, sizeof no_id), -EINVAL);
    assert_int_equal(mr_client_submit_packed(a, "fix-3", cut, sizeof cut), -EINVAL);
    /* A whole one passes the checks (and meets the queued fix-1). */
    assert_int_equal(mr_client_submit_packed(a, "fix-1", whole, sizeof whole), -EEXIST);
    assert_int_equal(mr_client_unacked(a), 1);

    /* A new process on the same state dir finds the queued one on disk. */
    mr_client_destroy(&a);
    a = mrt_client(&d, "t-aihua", "t-aihua");
    assert_non_null(a);
    assert_int_equal(mr_client_unacked(a), 1);
    mr_result_t r;
    assert_int_equal(mr_client_send_json(a, corrected, &r, 1000, NULL, NULL), -EEXIST);
    assert_string_equal(r.message_id, "fix-1");
    assert_non_null(strstr(r.reason, "other content"));
    assert_int_equal(mr_client_submit_json(a, unstamped, id, err, sizeof err), 0);
    assert_int_equal(mr_client_unacked(a), 1);

    /* The broker back: one Ack, one delivery, the queued content. */
    assert_int_equal(mrt_daemon_restart(&d), 0);
    seen_t sent = {0};
    want_t wa = {&sent, 2};
    assert_false(mrt_poll_until(a, 5000, got_acks, &wa, on_event, &sent));
    assert_int_equal(sent.acks, 1);
    assert_int_equal(sent.errors, 0);
    assert_int_equal(mr_client_unacked(a), 0);
    mr_client_t *lead = connected(&d, "yx-lead");
    seen_t got = {0};
    want_t wd = {&got, 2};
    assert_false(mrt_poll_until(lead, 1500, got_deliveries, &wd, on_event, &got));
    assert_int_equal(got.deliveries, 1);
    assert_string_equal(got.ids[0], "fix-1");
    assert_non_null(strstr(got.json[0], "PO-FIRST"));
    assert_null(strstr(got.json[0], "PO-CORRECTED"));
    assert_int_equal(mrt_counter(&d, "stored"), 1);
    mr_client_destroy(&lead);
    mr_client_destroy(&a);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A stat (or critical) message waiting behind a routine backlog is
 * delivered first when the facility comes back. */
static void test_routing_stat_travels_ahead_of_a_stored_backlog(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *lead = connected(d, "yx-lead");
    for (int i = 0; i < 10; i++) {
        char p[200];
        snprintf(p, sizeof p, "{\"referral_id\":\"R-BACK-%d\",\"service\":\"SERVICE_FOLLOW_UP\"}", i);
        assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    }
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "stat",
                              "{\"referral_id\":\"R-STAT\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    mr_client_t *hq = connected(d, "t-houqing");
    seen_t *seen = calloc(1, sizeof *seen);
    want_t w = {seen, 11};
    assert_true(mrt_poll_until(hq, 10000, got_deliveries, &w, on_event, seen));
    assert_non_null(strstr(seen->json[0], "R-STAT"));
    assert_non_null(strstr(seen->json[1], "R-BACK-0"));
    assert_non_null(strstr(seen->json[10], "R-BACK-9"));
    free(seen);
    mr_client_destroy(&hq);
    mr_client_destroy(&lead);
}

/* ---- bad input over a raw socket ------------------------------------------------ */

typedef struct {
    void *ctx, *sock;
} raw_t;

static void raw_open(raw_t *r, const mrt_daemon_t *d)
{
    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(r->sock, d->facility_ep), 0);
}

static void raw_close(raw_t *r)
{
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

static void raw_send_frame(raw_t *r, mr_frame_t *f)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    assert_int_equal(zmq_send(r->sock, buf, len, 0), (int)len);
    free(buf);
}

/* The next frame to arrive before deadline (the caller frees it), or NULL. */
static mr_frame_t *raw_recv(raw_t *r, long long deadline)
{
    zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
    while (mrt_now_ms() < deadline) {
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        assert_true(zmq_msg_recv(&m, r->sock, 0) >= 0);
        mr_frame_t *f = medroute__v1__frame__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        assert_non_null(f);
        return f;
    }
    return NULL;
}

/* Receives frames until an Error or Welcome; returns the error code or 0 for Welcome. */
static int raw_expect(raw_t *r)
{
    long long deadline = mrt_now_ms() + 5000;
    mr_frame_t *f;
    while ((f = raw_recv(r, deadline)) != NULL) {
        int code = -1;
        if (f->body_case == MEDROUTE__V1__FRAME__BODY_ERROR) {
            code = (int)f->error->code;
            assert_true(f->error->reason != NULL && strlen(f->error->reason) > 0);
        } else if (f->body_case == MEDROUTE__V1__FRAME__BODY_WELCOME) {
            code = 0;
        }
        medroute__v1__frame__free_unpacked(f, NULL);
        if (code >= 0)
            return code;
    }
    fail_msg("no reply from the broker");
    return -1;
}

static void raw_hello(raw_t *r, const char *facility)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = (char *)facility;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    raw_send_frame(r, &f);
}

/* An envelope frame from t-aihua to yx-lab with the given twists. */
/* A lab order from t-aihua to yx-lab, packed (caller frees). */
static uint8_t *s_lab_order_packed(const char *message_id, size_t *len)
{
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = "PO-RAW";
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = (char *)message_id;
    e.source = "t-aihua";
    e.destination = "yx-lab";
    e.kind = MEDROUTE__V1__KIND__KIND_LAB_ORDER;
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
    e.lab_order = &lo;
    uint8_t *env = NULL;
    assert_int_equal(mr_pack(&e.base, &env, len), 0);
    return env;
}

static int raw_envelope(raw_t *r, const char *source, const char *dest, int kind, int payload_kind,
                        int version)
{
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = "PO-BAD";
    Medroute__V1__LabResult lr = MEDROUTE__V1__LAB_RESULT__INIT;
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    char id[40];
    static int n;
    snprintf(id, sizeof id, "bad-%lld-%d", mrt_now_ms(), ++n);
    e.message_id = id;
    e.source = (char *)source;
    e.destination = (char *)dest;
    e.kind = (Medroute__V1__Kind)kind;
    if (payload_kind == MEDROUTE__V1__KIND__KIND_LAB_RESULT) {
        e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_RESULT;
        e.lab_result = &lr;
    } else {
        e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
        e.lab_order = &lo;
    }
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = (Medroute__V1__ProtocolVersion)version;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &e;
    raw_send_frame(r, &f);
    return raw_expect(r);
}

static void test_routing_bad_input_gets_distinct_errors(void **state)
{
    mrt_daemon_t *d = *state;
    const int LO = MEDROUTE__V1__KIND__KIND_LAB_ORDER;
    raw_t r;
    raw_open(&r, d);

    /* Before Hello. */
    assert_int_equal(raw_envelope(&r, "t-aihua", "yx-lab", LO, LO, 1), MR_E_NO_HELLO);
    /* Hello from a facility nobody registered. */
    raw_hello(&r, "t-nowhere");
    assert_int_equal(raw_expect(&r), MR_E_UNKNOWN_SOURCE);
    raw_hello(&r, "t-aihua");
    assert_int_equal(raw_expect(&r), 0);

    /* Garbage bytes. */
    assert_int_equal(zmq_send(r.sock, "\xff\xff\xff\xff garbage", 12, 0), 12);
    assert_int_equal(raw_expect(&r), MR_E_MALFORMED);
    /* Two parts. */
    assert_int_equal(zmq_send(r.sock, "a", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(r.sock, "b", 1, 0), 1);
    assert_int_equal(raw_expect(&r), MR_E_MALFORMED);
    /* Over the size limit (1 MiB by default). */
    size_t big = (1 << 20) + 100;
    char *blob = calloc(1, big);
    assert_int_equal(zmq_send(r.sock, blob, big, 0), (int)big);
    free(blob);
    assert_int_equal(raw_expect(&r), MR_E_TOO_LARGE);
    /* Wrong protocol version. */
    assert_int_equal(raw_envelope(&r, "t-aihua", "yx-lab", LO, LO, 7), MR_E_UNSUPPORTED_VERSION);
    /* Unknown kind. */
    assert_int_equal(raw_envelope(&r, "t-aihua", "yx-lab", 99, LO, 1), MR_E_UNKNOWN_KIND);
    /* Kind and payload disagree. */
    assert_int_equal(
        raw_envelope(&r, "t-aihua", "yx-lab", LO, MEDROUTE__V1__KIND__KIND_LAB_RESULT, 1),
        MR_E_INVALID);
    /* Unknown destination. */
    assert_int_equal(raw_envelope(&r, "t-aihua", "yx-nowhere", LO, LO, 1),
                     MR_E_UNKNOWN_DESTINATION);
    /* Unknown source in the envelope. */
    assert_int_equal(raw_envelope(&r, "t-nowhere", "yx-lab", LO, LO, 1), MR_E_UNKNOWN_SOURCE);
    /* Another facility's source. */
    assert_int_equal(raw_envelope(&r, "t-manwan", "yx-lab", LO, LO, 1), MR_E_FORBIDDEN);
    /* An envelope protobuf-c decodes but cannot write back (an unknown field
     * number 0 in a two-byte tag): refused, never stored undecodable. */
    {
        size_t env_len;
        uint8_t *env = s_lab_order_packed("zero-tag", &env_len);
        uint8_t frame[512];
        size_t n = 0, inner = env_len + 10;
        frame[n++] = 0x08; /* version = 1 */
        frame[n++] = 0x01;
        frame[n++] = 0x2a; /* field 5 (envelope), length-delimited */
        assert_true(inner < 128);
        frame[n++] = (uint8_t)inner;
        memcpy(frame + n, env, env_len);
        n += env_len;
        frame[n++] = 0x81; /* tag of field 0, wire type 1, in two bytes */
        frame[n++] = 0x00;
        memset(frame + n, 0, 8);
        n += 8;
        free(env);
        assert_int_equal(zmq_send(r.sock, frame, n, 0), (int)n);
        assert_int_equal(raw_expect(&r), MR_E_MALFORMED);
    }
    /* A frame carrying its envelope twice (a decoder merges the two, so no
     * one copy is what was read): refused, not stored. */
    {
        size_t env_len;
        uint8_t *env = s_lab_order_packed("twice", &env_len);
        uint8_t frame[512];
        size_t n = 0;
        frame[n++] = 0x08; /* version = 1 */
        frame[n++] = 0x01;
        assert_true(env_len < 128);
        for (int i = 0; i < 2; i++) {
            frame[n++] = 0x2a; /* field 5 (envelope), length-delimited */
            frame[n++] = (uint8_t)env_len;
            memcpy(frame + n, env, env_len);
            n += env_len;
        }
        free(env);
        assert_int_equal(zmq_send(r.sock, frame, n, 0), (int)n);
        assert_int_equal(raw_expect(&r), MR_E_MALFORMED);
    }
    /* A frame a facility may not send. */
    Medroute__V1__Ack ack = MEDROUTE__V1__ACK__INIT;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &ack;
    raw_send_frame(&r, &f);
    assert_int_equal(raw_expect(&r), MR_E_UNEXPECTED_FRAME);
    raw_close(&r);

    /* Nothing else was affected: a good message still flows. */
    mr_client_t *a = connected(d, "t-aihua");
    mr_client_t *lab = connected(d, "yx-lab");
    mr_result_t res;
    assert_int_equal(
        mr_client_send_json(a,
                            "{\"destination\":\"yx-lab\",\"kind\":\"lab_order\",\"lab_order\":"
                            "{\"placer_order_number\":\"PO-GOOD\"}}",
                            &res, 5000, NULL, NULL),
        0);
    seen_t seen = {0};
    want_t w = {&seen, 1};
    assert_true(mrt_poll_until(lab, 5000, got_deliveries, &w, on_event, &seen));
    assert_non_null(strstr(seen.json[0], "PO-GOOD"));
    assert_null(strstr(seen.json[0], "PO-BAD"));
    mr_client_destroy(&a);
    mr_client_destroy(&lab);

    /* Each refusal was counted by code and logged without patient data. */
    char *status = mrt_operator(d, "{\"status\":{}}");
    assert_non_null(status);
    const char *counted[] = {"rejected.MALFORMED",        "rejected.TOO_LARGE",
                             "rejected.UNSUPPORTED_VERSION", "rejected.UNKNOWN_KIND",
                             "rejected.INVALID",           "rejected.UNKNOWN_DESTINATION",
                             "rejected.UNKNOWN_SOURCE",    "rejected.FORBIDDEN",
                             "rejected.NO_HELLO",          "rejected.UNEXPECTED_FRAME"};
    for (size_t i = 0; i < sizeof counted / sizeof counted[0]; i++)
        assert_non_null(strstr(status, counted[i]));
    free(status);
    assert_true(mrt_log_count(d, "event=message.rejected") >= 12);
    assert_int_equal(mrt_log_count(d, "Test Patient"), 0);
    assert_int_equal(mrt_log_count(d, "TEST0001"), 0);
}

/* ---- DeliveryAcks carrying several seqs (Welcome.max_acks_per_frame) ------------- */

/* The next frame with the given body (the caller frees it), or NULL. */
static mr_frame_t *raw_next(raw_t *r, int body_case, int timeout_ms)
{
    long long deadline = mrt_now_ms() + timeout_ms;
    mr_frame_t *f;
    while ((f = raw_recv(r, deadline)) != NULL) {
        if ((int)f->body_case == body_case)
            return f;
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    return NULL;
}

/* Sends e in a Frame of version 1. */
static void raw_send_envelope(raw_t *r, mr_envelope_t *e)
{
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = e;
    raw_send_frame(r, &f);
}

static void raw_delivery_ack(raw_t *r, uint64_t seq, uint64_t *more, size_t n_more)
{
    Medroute__V1__DeliveryAck a = MEDROUTE__V1__DELIVERY_ACK__INIT;
    a.seq = seq;
    a.more_seqs = more;
    a.n_more_seqs = n_more;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK;
    f.delivery_ack = &a;
    raw_send_frame(r, &f);
}

/*
 * A receiver that acknowledges its delivery and leaves at once (a `medroute
 * listen --count 1`, an application that stops after its work): the ack
 * it sent before its connection closed counts, so the message is not
 * handed to the next session again as a redelivery.  The broker learns of
 * the close from the socket's monitor, a socket apart from the frames;
 * here both reach it at once (it is stopped meanwhile), in 25 rounds.
 */
static void test_routing_ack_then_leave_is_not_redelivered(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *a = connected(d, "t-manwan");
    long long redelivered0 = mrt_counter(d, "redelivered");
    for (int i = 0; i < 25; i++) {
        char json[256];
        mr_result_t res;
        snprintf(json, sizeof json,
                 "{\"destination\":\"yx-ecg\",\"kind\":\"lab_order\","
                 "\"lab_order\":{\"placer_order_number\":\"PO-LEAVE-%d\"}}", i);
        assert_int_equal(mr_client_send_json(a, json, &res, 5000, NULL, NULL), 0);
        raw_t r;
        raw_open(&r, d);
        int linger = 2000; /* the ack goes out before the socket closes */
        assert_int_equal(zmq_setsockopt(r.sock, ZMQ_LINGER, &linger, sizeof linger), 0);
        raw_hello(&r, "yx-ecg");
        mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
        assert_non_null(f);
        bool again = f->delivery->redelivered;
        uint64_t seq = f->delivery->seq;
        medroute__v1__frame__free_unpacked(f, NULL);
        if (again)
            fail_msg("round %d: seq %llu came again after its ack", i, (unsigned long long)seq);
        /* The ack and the close reach the broker together: stopped, it
         * finds both at once when it goes on, as a busy broker would. */
        assert_int_equal(kill(d->pid, SIGSTOP), 0);
        raw_delivery_ack(&r, seq, NULL, 0);
        raw_close(&r);
        assert_int_equal(kill(d->pid, SIGCONT), 0);
    }
    mr_client_destroy(&a);
    assert_int_equal(mrt_counter(d, "redelivered"), redelivered0);
}

/*
 * A receiver on a stalled link: its session times out (no heartbeat for
 * heartbeat_timeout_ms) while its connection stays open, and then its
 * DeliveryAck arrives.  The ack still counts for the facility that
 * connection spoke for (the connection is told once, as NO_HELLO, that its
 * session ended; no refusal is counted): the message is delivered, and
 * the facility's next session is not handed it again.  Before, the ack
 * was refused with NO_HELLO and the message handed over a second time;
 * a connection's close read before its last acks (the socket's monitor
 * is a socket apart) lost them the same way.
 */
static void test_routing_ack_after_the_session_ended_counts(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { heartbeat_interval_ms = 100; "
                                          "heartbeat_timeout_ms = 400; };\n"),
                     0);
    mr_client_t *a = connected(&d, "t-manwan");
    char why[200];
    assert_int_equal(mrt_send(a, "yx-ecg", "lab_order", "routine",
                              "{\"placer_order_number\":\"PO-STALL-1\"}", why),
                     0);
    mr_client_destroy(&a);
    raw_t r;
    raw_open(&r, &d);
    raw_hello(&r, "yx-ecg");
    mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
    assert_non_null(f);
    assert_false(f->delivery->redelivered);
    uint64_t seq = f->delivery->seq;
    medroute__v1__frame__free_unpacked(f, NULL);
    /* Silent: the broker ends the session, the connection stays. */
    long long until = mrt_now_ms() + 5000;
    while (mrt_log_count(&d, "facility=yx-ecg why=heartbeat_timeout") < 1 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 50);
    assert_int_equal(mrt_log_count(&d, "facility=yx-ecg why=heartbeat_timeout"), 1);
    long long delivered0 = mrt_counter(&d, "delivered");
    long long rejected0 = mrt_counter(&d, "rejected");
    raw_delivery_ack(&r, seq, NULL, 0);
    until = mrt_now_ms() + 5000;
    while (mrt_counter(&d, "delivered") == delivered0 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "delivered"), delivered0 + 1);
    assert_int_equal(mrt_counter(&d, "late_acks"), 1);
    /* Told that its session ended (not a refusal), so it says Hello now. */
    f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_ERROR, 2000);
    assert_non_null(f);
    assert_int_equal(f->error->code, MR_E_NO_HELLO);
    assert_non_null(strstr(f->error->reason, "its acknowledgements count"));
    medroute__v1__frame__free_unpacked(f, NULL);
    assert_int_equal(mrt_counter(&d, "rejected"), rejected0);
    raw_close(&r);
    /* The next session: nothing pending, nothing handed over again. */
    raw_open(&r, &d);
    raw_hello(&r, "yx-ecg");
    f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_WELCOME, 5000);
    assert_non_null(f);
    assert_int_equal(f->welcome->pending, 0);
    medroute__v1__frame__free_unpacked(f, NULL);
    assert_null(raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 500));
    raw_close(&r);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* Five deliveries acknowledged by one frame: all five count as delivered
 * and none comes again; a seq of 0 among them, or more seqs than the
 * Welcome allows, is refused with INVALID. */
static void test_routing_one_frame_acknowledges_several_deliveries(void **state)
{
    mrt_daemon_t *d = *state;
    raw_t r;
    raw_open(&r, d);
    raw_hello(&r, "yx-imaging");
    mr_frame_t *w = raw_next(&r, MEDROUTE__V1__FRAME__BODY_WELCOME, 5000);
    assert_non_null(w);
    uint32_t max_acks = w->welcome->max_acks_per_frame;
    medroute__v1__frame__free_unpacked(w, NULL);
    assert_true(max_acks > 1);

    long long delivered0 = mrt_counter(d, "delivered");
    mr_client_t *a = connected(d, "t-manwan");
    for (int i = 0; i < 5; i++) {
        char json[256];
        mr_result_t res;
        snprintf(json, sizeof json,
                 "{\"destination\":\"yx-imaging\",\"kind\":\"imaging_request\","
                 "\"imaging_request\":{\"accession_number\":\"ACC-MULTI-%d\","
                 "\"modality\":\"MODALITY_DR\"}}",
                 i);
        assert_int_equal(mr_client_send_json(a, json, &res, 5000, NULL, NULL), 0);
    }
    mr_client_destroy(&a);
    uint64_t seqs[5];
    for (int i = 0; i < 5; i++) {
        mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
        assert_non_null(f);
        seqs[i] = f->delivery->seq;
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    raw_delivery_ack(&r, seqs[4], seqs, 4); /* any order */
    long long deadline = mrt_now_ms() + 5000;
    while (mrt_counter(d, "delivered") < delivered0 + 5 && mrt_now_ms() < deadline)
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    assert_int_equal(mrt_counter(d, "delivered"), delivered0 + 5);
    /* Nothing is delivered again after a reconnect: all five are done. */
    raw_close(&r);
    raw_open(&r, d);
    raw_hello(&r, "yx-imaging");
    w = raw_next(&r, MEDROUTE__V1__FRAME__BODY_WELCOME, 5000);
    assert_non_null(w);
    medroute__v1__frame__free_unpacked(w, NULL);
    mr_frame_t *again = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 500);
    assert_null(again);

    /* A 0 among the seqs, and one seq more than allowed. */
    uint64_t zero[2] = {seqs[0], 0};
    raw_delivery_ack(&r, seqs[1], zero, 2);
    assert_int_equal(raw_expect(&r), MR_E_INVALID);
    uint64_t *many = calloc(max_acks, sizeof *many);
    assert_non_null(many);
    for (uint32_t i = 0; i < max_acks; i++)
        many[i] = seqs[0];
    raw_delivery_ack(&r, seqs[0], many, max_acks);
    free(many);
    assert_int_equal(raw_expect(&r), MR_E_INVALID);
    raw_close(&r);
    assert_int_equal(mrt_counter(d, "delivered"), delivered0 + 5);
}

/*
 * A DeliveryAck of seqs the facility was never sent draws one
 * UNKNOWN_DELIVERY, naming the first of them and how many more, not one
 * Error each (a frame of 1,024 such seqs drew 1,024 frames); the seqs of
 * the same frame that were sent are acknowledged all the same.  A second
 * frame, of one unknown seq, is answered after every answer to the first
 * (the store answers in order): the Errors before its own are all that
 * the first frame drew.
 */
static void test_routing_unknown_seqs_of_one_ack_answered_once(void **state)
{
    (void)state;
    enum { UNKNOWN = 100 };
    const uint64_t base = 1000000000ULL, marker = 2000000000ULL;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_client_t *a = connected(&d, "t-manwan");
    char why[200];
    for (int i = 0; i < 2; i++) {
        char order[80];
        snprintf(order, sizeof order, "{\"placer_order_number\":\"PO-UNKNOWN-%d\"}", i);
        assert_int_equal(mrt_send(a, "yx-ecg", "lab_order", "routine", order, why), 0);
    }
    mr_client_destroy(&a);
    raw_t r;
    raw_open(&r, &d);
    raw_hello(&r, "yx-ecg");
    uint64_t sent[2];
    for (int i = 0; i < 2; i++) {
        mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
        assert_non_null(f);
        sent[i] = f->delivery->seq;
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    long long delivered0 = mrt_counter(&d, "delivered");
    long long rejected0 = mrt_counter(&d, "rejected");
    uint64_t more[UNKNOWN + 1];
    for (int i = 0; i < UNKNOWN; i++)
        more[i] = base + (uint64_t)i;
    more[UNKNOWN] = sent[1];
    raw_delivery_ack(&r, sent[0], more, UNKNOWN + 1);
    raw_delivery_ack(&r, marker, NULL, 0);
    int before_marker = 0;
    mr_frame_t *f;
    while ((f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_ERROR, 5000)) != NULL) {
        assert_int_equal(f->error->code, MR_E_UNKNOWN_DELIVERY);
        bool is_marker = f->error->seq == marker;
        if (!is_marker && before_marker++ == 0) {
            assert_int_equal(f->error->seq, base);
            assert_non_null(strstr(f->error->reason, "nor 99 more seqs"));
        }
        medroute__v1__frame__free_unpacked(f, NULL);
        if (is_marker)
            break;
    }
    assert_non_null(f); /* the marker's came */
    assert_int_equal(before_marker, 1);
    assert_int_equal(mrt_counter(&d, "rejected"), rejected0 + 2);
    assert_int_equal(mrt_counter(&d, "delivered"), delivered0 + 2); /* committed before */
    raw_close(&r);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* ---- strings that are not UTF-8 ------------------------------------------------- */

typedef struct {
    seen_t *s;
    const char *probe;
} probe_t;

static bool got_probe(void *arg)
{
    probe_t *p = arg;
    for (int i = 0; i < p->s->deliveries; i++)
        if (strstr(p->s->json[i], p->probe) != NULL)
            return true;
    return false;
}

/* A referral whose patient name a legacy system wrote in GBK would be
 * stored and then delivered to a receiver that cannot decode it (not even
 * its seq, to acknowledge it): it is refused with INVALID, naming the field,
 * and nothing is stored or delivered.  The same referral in UTF-8, under the
 * same message id (so nothing was kept of the first), goes through. */
static void test_routing_gbk_patient_name_refused(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *lead = connected(d, "yx-lead");
    long long stored0 = mrt_counter(d, "stored");
    assert_true(stored0 >= 0);
    raw_t r;
    raw_open(&r, d);
    raw_hello(&r, "t-aihua");
    assert_int_equal(raw_expect(&r), 0);

    Medroute__V1__Patient pat = MEDROUTE__V1__PATIENT__INIT;
    pat.name = "\xd5\xc5\xc8\xfd"; /* 张三 in GBK */
    Medroute__V1__Referral ref = MEDROUTE__V1__REFERRAL__INIT;
    ref.referral_id = "R-GBK-1";
    ref.patient = &pat;
    ref.service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_FOLLOW_UP;
    ref.department = "心内科";
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = "gbk-name-1";
    e.source = "t-aihua";
    e.destination = "yx-lead";
    e.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    e.referral = &ref;
    raw_send_envelope(&r, &e);
    mr_frame_t *reply = raw_next(&r, MEDROUTE__V1__FRAME__BODY_ERROR, 5000);
    assert_non_null(reply);
    assert_int_equal(reply->error->code, MR_E_INVALID);
    assert_string_equal(reply->error->reason, "envelope.referral.patient.name is not valid UTF-8");
    assert_string_equal(reply->error->message_id, "gbk-name-1");
    medroute__v1__frame__free_unpacked(reply, NULL);

    assert_int_equal(mrt_counter(d, "stored"), stored0);
    seen_t *seen = calloc(1, sizeof *seen);
    assert_non_null(seen);
    probe_t gbk = {seen, "R-GBK-1"};
    assert_false(mrt_poll_until(lead, 1000, got_probe, &gbk, on_event, seen));

    pat.name = "张三";
    raw_send_envelope(&r, &e);
    reply = raw_next(&r, MEDROUTE__V1__FRAME__BODY_ACK, 5000);
    assert_non_null(reply);
    assert_string_equal(reply->ack->message_id, "gbk-name-1");
    assert_false(reply->ack->duplicate);
    medroute__v1__frame__free_unpacked(reply, NULL);
    raw_close(&r);
    assert_true(mrt_poll_until(lead, 5000, got_probe, &gbk, on_event, seen));
    int n = 0;
    for (int i = 0; i < seen->deliveries; i++)
        if (strstr(seen->json[i], "R-GBK-1") != NULL) {
            n++;
            assert_non_null(strstr(seen->json[i], "张三"));
        }
    assert_int_equal(n, 1);
    assert_int_equal(mrt_counter(d, "stored"), stored0 + 1);
    free(seen);
    mr_client_destroy(&lead);
    /* The refusal was logged by field, without the name. */
    assert_true(mrt_log_count(d, "envelope.referral.patient.name is not valid UTF-8") >= 1);
    assert_int_equal(mrt_log_count(d, "\xd5\xc5\xc8\xfd"), 0);
}

/* Whether a strict decoder would take f: every string valid UTF-8. */
static bool strict_decodes(const mr_frame_t *f)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(mr_pack(&f->base, &buf, &len), 0);
    int rc = mr_find_bad_utf8(&medroute__v1__frame__descriptor, buf, len, NULL, 0);
    free(buf);
    return rc == 0;
}

/* Sends an envelope from t-aihua with that message id and destination and
 * returns the Error that answers it (the caller frees it). */
static mr_frame_t *raw_refused(raw_t *r, const char *message_id, const char *dest)
{
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = "PO-CJK";
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = (char *)message_id;
    e.source = "t-aihua";
    e.destination = (char *)dest;
    e.kind = MEDROUTE__V1__KIND__KIND_LAB_ORDER;
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
    e.lab_order = &lo;
    raw_send_envelope(r, &e);
    mr_frame_t *reply = raw_next(r, MEDROUTE__V1__FRAME__BODY_ERROR, 5000);
    assert_non_null(reply);
    return reply;
}

/* The broker cuts what it echoes on a character boundary, so its Error to
 * a message with 72 bytes of Chinese as its id (24 characters), or with a
 * long Chinese destination, still decodes in a strict decoder. */
static void test_routing_error_echoing_chinese_decodes(void **state)
{
    mrt_daemon_t *d = *state;
    char cjk[128], cut[128];
    for (int i = 0; i < 30; i++)
        memcpy(cjk + 3 * i, "\xe8\xbd\xac", 3); /* 转 */
    memcpy(cut, cjk, 63);
    cut[63] = '\0'; /* 21 characters: the most that fits in 64 bytes */
    raw_t r;
    raw_open(&r, d);
    raw_hello(&r, "t-aihua");
    assert_int_equal(raw_expect(&r), 0);

    cjk[72] = '\0';
    mr_frame_t *f = raw_refused(&r, cjk, "yx-lab");
    assert_int_equal(f->error->code, MR_E_INVALID);
    assert_string_equal(f->error->message_id, cut);
    assert_true(strict_decodes(f));
    medroute__v1__frame__free_unpacked(f, NULL);

    cjk[90] = '\0';
    f = raw_refused(&r, "cjk-dest-1", cjk);
    assert_int_equal(f->error->code, MR_E_UNKNOWN_DESTINATION);
    assert_string_equal(f->error->message_id, "cjk-dest-1");
    assert_non_null(strstr(f->error->reason, cut));
    assert_true(strict_decodes(f));
    medroute__v1__frame__free_unpacked(f, NULL);
    raw_close(&r);
}

/*
 * A receiver that polls without a handler (an application that only sends,
 * or a synchronous send) holds its deliveries for a later poll, unacked; the
 * broker sends them again at each redelivery time-out (its polls send
 * heartbeats: it reads).  Each is held once, however often it comes, and
 * handed over once.
 */
static void test_routing_held_deliveries_are_held_once(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { redelivery_timeout_ms = 100; "
                                          "heartbeat_interval_ms = 100; };\n"),
                     0);
    mr_client_t *a = connected(&d, "t-aihua");
    mr_client_t *lead = connected(&d, "yx-lead");
    for (int i = 0; i < 3; i++) {
        char p[160], why[200];
        snprintf(p, sizeof p, "{\"placer_order_number\":\"HELD-%d\"}", i);
        assert_int_equal(mrt_send(a, "yx-lead", "lab_order", "routine", p, why), 0);
    }
    /* Resent after 0.1, 0.3, 0.7, 1.5 s ... (the time-out doubles). */
    long long until = mrt_now_ms() + 2500;
    while (mrt_now_ms() < until)
        assert_true(mr_client_poll(lead, 100, NULL, NULL) >= 0);
    assert_true(mrt_counter(&d, "redelivered") >= 6);
    assert_int_equal(mr_client_deferred(lead), 3);
    seen_t seen = {0};
    want_t w = {&seen, 4};
    assert_false(mrt_poll_until(lead, 500, got_deliveries, &w, on_event, &seen));
    assert_int_equal(seen.deliveries, 3);
    assert_int_equal(mr_client_deferred(lead), 0);
    /* Each as the broker last sent it: sent before (no state_dir here, so
     * the broker's flag is the one the application sees). */
    for (int i = 0; i < 3; i++)
        assert_true(seen.redelivered[i]);
    mr_client_destroy(&a);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* A lab order whose clinical information makes it about `pad` bytes. */
static char *big_order(const char *id, size_t pad)
{
    char *json = mrt_lab_order_json(id, pad);
    assert_non_null(json);
    return json;
}

static bool got_errors(void *arg)
{
    want_t *w = arg;
    return w->s->errors >= w->want;
}

/*
 * A message over the broker's size limit is refused by the library, naming
 * it, and never sent: sent, the broker's refusal could not name it (it does
 * not decode what is too large) and it would stay in the outbox for ever, or
 * (past twice the limit) cut the connection and every message behind it.
 */
static void test_routing_too_large_refused_by_the_library(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { max_message_bytes = 4096; };\n"), 0);
    /* Queued before any Welcome told the limit, with small ones around it. */
    mr_client_t *a = mrt_client(&d, "t-aihua", "a");
    assert_non_null(a);
    char id[80], err[200];
    assert_int_equal(mr_client_submit_json(a, "{\"message_id\":\"SMALL-1\",\"destination\":"
                                              "\"yx-lab\",\"kind\":\"lab_order\",\"lab_order\":"
                                              "{\"placer_order_number\":\"S1\"}}",
                                           id, err, sizeof err),
                     0);
    char *huge = big_order("HUGE-1", 20000); /* past 2 x 4096 + 4096: ZMQ_MAXMSGSIZE */
    assert_int_equal(mr_client_submit_json(a, huge, id, err, sizeof err), 0);
    free(huge);
    assert_int_equal(mr_client_submit_json(a, "{\"message_id\":\"SMALL-2\",\"destination\":"
                                              "\"yx-lab\",\"kind\":\"lab_order\",\"lab_order\":"
                                              "{\"placer_order_number\":\"S2\"}}",
                                           id, err, sizeof err),
                     0);
    seen_t seen = {0};
    want_t w = {&seen, 2};
    assert_true(mrt_poll_until(a, 10000, got_acks, &w, on_event, &seen));
    assert_int_equal(seen.errors, 1);
    assert_int_equal(seen.last_error_code, MR_E_TOO_LARGE);
    assert_string_equal(seen.last_error_id, "HUGE-1");
    assert_int_equal(mr_client_unacked(a), 0);
    mr_client_destroy(&a);
    /* Gone from the state directory too. */
    a = mrt_client(&d, "t-aihua", "a");
    assert_non_null(a);
    assert_int_equal(mr_client_unacked(a), 0);
    assert_int_equal(mr_client_wait_connected(a, 10000), 0);

    /* Once the limit is known: refused at once, not queued. */
    char *big = big_order("BIG-1", 6000);
    assert_int_equal(mr_client_submit_json(a, big, id, err, sizeof err), -EMSGSIZE);
    assert_non_null(strstr(err, "4096"));
    mr_result_t r;
    assert_int_equal(mr_client_send_json(a, big, &r, 5000, NULL, NULL), -EPROTO);
    assert_int_equal(r.code, MR_E_TOO_LARGE);
    free(big);
    assert_int_equal(mr_client_unacked(a), 0);
    assert_int_equal(mrt_counter(&d, "rejected"), 0);
    assert_int_equal(mrt_log_count(&d, "event=facility.connected"), 2);
    mr_client_destroy(&a);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * The refusal of a message submitted earlier, arriving while a synchronous
 * send without handler waits for its own Ack, is kept for the next poll
 * with a handler (before, it was dropped: nobody learnt the referral step
 * was refused).
 */
static void test_routing_refusal_kept_for_the_next_handler(void **state)
{
    mrt_daemon_t *d = *state;
    mr_client_t *a = connected(d, "t-manwan");
    char id[80], err[200];
    assert_int_equal(mr_client_submit_json(a, "{\"message_id\":\"UPD-NOPE\",\"destination\":"
                                              "\"yx-lead\",\"kind\":\"referral_update\","
                                              "\"referral_update\":{\"referral_id\":\"RF-NOPE\","
                                              "\"step\":\"STEP_CANCELLED\",\"reason\":\"x\"}}",
                                           id, err, sizeof err),
                     0);
    mr_result_t r;
    assert_int_equal(mr_client_send_json(a, "{\"message_id\":\"LO-KEPT\",\"destination\":"
                                            "\"yx-lab\",\"kind\":\"lab_order\",\"lab_order\":"
                                            "{\"placer_order_number\":\"L-KEPT\"}}",
                                         &r, 5000, NULL, NULL),
                     0);
    assert_int_equal(mr_client_unacked(a), 0);
    seen_t seen = {0};
    want_t w = {&seen, 1};
    assert_true(mrt_poll_until(a, 2000, got_errors, &w, on_event, &seen));
    assert_string_equal(seen.last_error_id, "UPD-NOPE");
    assert_int_equal(seen.last_error_code, MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(seen.acks, 0); /* LO-KEPT's Ack went to the send */
    mr_client_destroy(&a);
}

/* Hello for facility with a delivery window of max_inflight. */
static void raw_hello_window(raw_t *r, const char *facility, uint32_t max_inflight)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = (char *)facility;
    h.max_inflight = max_inflight;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    raw_send_frame(r, &f);
}

/* The referral_id of the next Delivery to arrive within timeout_ms, in id
 * (64 bytes); false when none came. */
static bool raw_next_referral(raw_t *r, int timeout_ms, char *id)
{
    mr_frame_t *f = raw_next(r, MEDROUTE__V1__FRAME__BODY_DELIVERY, timeout_ms);
    if (f == NULL)
        return false;
    const mr_envelope_t *e = f->delivery->envelope;
    snprintf(id, 64, "%s", e && e->referral && e->referral->referral_id ? e->referral->referral_id
                                                                       : "?");
    medroute__v1__frame__free_unpacked(f, NULL);
    return true;
}

/* A daemon of its own (extra added to its config, may be NULL), yx-lead
 * connected, and t-houqing as a raw peer that said Hello with a window of
 * `window` and has its Welcome. */
static void s_raw_houqing_with(mrt_daemon_t *d, const char *extra, mr_client_t **lead, raw_t *r,
                               uint32_t window)
{
    assert_int_equal(mrt_daemon_start(d, extra), 0);
    *lead = connected(d, "yx-lead");
    raw_open(r, d);
    raw_hello_window(r, "t-houqing", window);
    mr_frame_t *f = raw_next(r, MEDROUTE__V1__FRAME__BODY_WELCOME, 5000);
    assert_non_null(f);
    medroute__v1__frame__free_unpacked(f, NULL);
}

static void s_raw_houqing(mrt_daemon_t *d, mr_client_t **lead, raw_t *r, uint32_t window)
{
    s_raw_houqing_with(d, NULL, lead, r, window);
}

static void s_raw_houqing_done(mrt_daemon_t *d, mr_client_t **lead, raw_t *r)
{
    raw_close(r);
    mr_client_destroy(lead);
    assert_int_equal(mrt_daemon_stop(d), 0);
    mrt_daemon_cleanup(d);
}

/*
 * Express messages keep their order among themselves across a session that
 * ends: a stat referral waiting behind a full window when the receiver's
 * session ends, and a stat referral from the same sender stored while it
 * is away, reach the next session in the order they were stored (both
 * ahead of the routine one that was out).  Before, the one stored while
 * away was put ahead of everything, the first one behind the routine
 * message that had been in flight.
 */
static void test_routing_express_order_kept_across_sessions(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    mr_client_t *lead;
    raw_t r;
    s_raw_houqing(&d, &lead, &r, 1);
    char id[64];
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine",
                              "{\"referral_id\":\"R-XO-ROUTINE\",\"service\":"
                              "\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    assert_true(raw_next_referral(&r, 5000, id));
    assert_string_equal(id, "R-XO-ROUTINE"); /* out, unacknowledged: the window is full */
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "stat",
                              "{\"referral_id\":\"R-XO-STAT-1\",\"service\":"
                              "\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    assert_false(raw_next_referral(&r, 300, id)); /* waits behind the window */
    raw_close(&r);
    long long until = mrt_now_ms() + 5000;
    while (mrt_log_count(&d, "facility=t-houqing why=connection_closed") < 1 &&
           mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_log_count(&d, "facility=t-houqing why=connection_closed"), 1);
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "stat",
                              "{\"referral_id\":\"R-XO-STAT-2\",\"service\":"
                              "\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    raw_open(&r, &d);
    raw_hello_window(&r, "t-houqing", 0);
    const char *want[] = {"R-XO-STAT-1", "R-XO-STAT-2", "R-XO-ROUTINE"};
    for (int i = 0; i < 3; i++) {
        assert_true(raw_next_referral(&r, 5000, id));
        if (strcmp(id, want[i]) != 0)
            fail_msg("delivery %d is %s, expected %s", i + 1, id, want[i]);
    }
    s_raw_houqing_done(&d, &lead, &r);
}

/*
 * A DeliveryAck for a message waiting to be sent again (back in the queue
 * after a new session, a window made smaller) takes it out of the queue:
 * it is not sent once more while its ack is being committed.  Before, the
 * slot freed by the other ack of the same frame sent it again at once,
 * acknowledged as it was; so did the Hello after a stalled link whose late
 * acks came in just before it.
 */
static void test_routing_ack_for_a_queued_resend_is_not_sent_again(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    mr_client_t *lead;
    raw_t r;
    s_raw_houqing(&d, &lead, &r, 2);
    mr_frame_t *f;
    uint64_t seq[3];
    char id[64];
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof p, "{\"referral_id\":\"R-QA-%d\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                 i);
        assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    }
    for (int i = 0; i < 2; i++) {
        f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
        assert_non_null(f);
        seq[i] = f->delivery->seq;
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    assert_false(raw_next_referral(&r, 300, id)); /* the third waits behind the window */
    /* The session starts again with a window of one: the first goes out again. */
    raw_hello_window(&r, "t-houqing", 1);
    f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
    assert_non_null(f);
    assert_int_equal(f->delivery->seq, seq[0]);
    assert_true(f->delivery->redelivered);
    medroute__v1__frame__free_unpacked(f, NULL);
    /* Both acknowledged in one frame: the second, waiting, and the first. */
    uint64_t more[1] = {seq[0]};
    raw_delivery_ack(&r, seq[1], more, 1);
    assert_true(raw_next_referral(&r, 5000, id));
    assert_string_equal(id, "R-QA-2");
    assert_false(raw_next_referral(&r, 500, id));
    s_raw_houqing_done(&d, &lead, &r);
}

/* What a raw peer read: Welcomes, and Deliveries (the first 64 kept). */
typedef struct {
    int welcomes, deliveries;
    uint64_t seq[64];
    bool again[64]; /* Delivery.redelivered */
} raw_tally_t;

/* Reads frames into t until it has counted `welcomes` Welcomes and
 * `deliveries` Deliveries in all (10 s at most, then fails). */
static void raw_tally(raw_t *r, raw_tally_t *t, int welcomes, int deliveries)
{
    long long deadline = mrt_now_ms() + 10000;
    while (t->welcomes < welcomes || t->deliveries < deliveries) {
        mr_frame_t *f = raw_recv(r, deadline);
        if (f == NULL)
            fail_msg("%d Welcomes and %d Deliveries came, %d and %d expected", t->welcomes,
                     t->deliveries, welcomes, deliveries);
        if (f->body_case == MEDROUTE__V1__FRAME__BODY_WELCOME) {
            t->welcomes++;
        } else if (f->body_case == MEDROUTE__V1__FRAME__BODY_DELIVERY) {
            if (t->deliveries < 64) {
                t->seq[t->deliveries] = f->delivery->seq;
                t->again[t->deliveries] = f->delivery->redelivered;
            }
            t->deliveries++;
        }
        medroute__v1__frame__free_unpacked(f, NULL);
    }
}

/*
 * A client that says Hello over and over on one connection and reads
 * nothing, while deliveries are out to it (a bug, or a hostile holder of a
 * valid key): the first repeated Hello restarts its session and what is in
 * flight goes again, as a client that restarted needs; the later ones send
 * nothing again.  The broker queues one extra copy of each delivery toward
 * it, not one per Hello (before: a whole window per Hello, up to 64 of
 * 1 MiB, bounded only by the socket's 100,000-message high-water mark).  A
 * restart after the client read and acknowledged gets again what was sent
 * since; a new connection gets everything again; nothing is lost.
 */
static void test_routing_repeated_hellos_send_again_once(void **state)
{
    (void)state;
    enum { WINDOW = 4, MSGS = 6, HELLOS = 30 };
    mrt_daemon_t d = {0};
    mr_client_t *lead;
    raw_t r;
    /* No redelivery time-out within the test: every copy sent again is a
     * Hello's.  Short store batches: a Hello's store query is done before
     * the next Hello comes. */
    s_raw_houqing_with(&d, "limits = { redelivery_timeout_ms = 600000; }; store = { batch_ms = 2; };",
                       &lead, &r, WINDOW);
    for (int i = 0; i < MSGS; i++) {
        char p[160];
        snprintf(p, sizeof p, "{\"referral_id\":\"R-RH-%d\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                 i);
        assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    }
    long long until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "sent") < WINDOW && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "sent"), WINDOW); /* the window is out, unread */

    /* Hello after Hello, one every 20 ms, nothing read; each with a client
     * name of its own, so that no two log lines are alike. */
    for (int i = 0; i < HELLOS; i++) {
        char name[32];
        snprintf(name, sizeof name, "flood-%d", i);
        Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
        h.facility_id = "t-houqing";
        h.client_name = name;
        h.max_inflight = WINDOW;
        mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
        f.version = 1;
        f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
        f.hello = &h;
        raw_send_frame(&r, &f);
        (void)poll(NULL, 0, 20);
    }
    /* Read now: every Hello was answered, so every one was handled ... */
    raw_tally_t t = {0};
    raw_tally(&r, &t, HELLOS, 0);
    /* ... and whatever store query a Hello started (express messages are
     * looked for first) came back before a later commit's Ack: store
     * completions come in order. */
    assert_int_equal(mrt_send(lead, "t-aihua", "referral", "routine",
                              "{\"referral_id\":\"R-RH-BARRIER\",\"service\":"
                              "\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    long long again = mrt_counter(&d, "redelivered");
    if (again != WINDOW)
        fail_msg("%d repeated Hellos had %lld deliveries sent again; %d expected (the window, "
                 "once)",
                 HELLOS, again, WINDOW);
    assert_int_equal(mrt_counter(&d, "sent"), WINDOW);
    assert_int_equal(mrt_counter(&d, "hellos_repeated"), HELLOS);
    assert_int_equal(mrt_counter(&d, "resends_skipped"), WINDOW * (HELLOS - 1));
    /* Logged, but not a line per Hello (20 per 10 s, lograte.h). */
    int lines = mrt_log_count(&d, "client=\"flood-");
    if (lines < 1 || lines > 20)
        fail_msg("%d repeated Hellos wrote %d log lines; 1 to 20 expected", HELLOS, lines);
    /* What arrived: the window, then the window again, marked, and no more. */
    raw_tally(&r, &t, HELLOS, 2 * WINDOW);
    assert_null(raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 300));
    assert_int_equal(t.deliveries, 2 * WINDOW);
    uint64_t seq[MSGS];
    for (int i = 0; i < WINDOW; i++) {
        seq[i] = t.seq[i];
        assert_false(t.again[i]);
        assert_int_equal(t.seq[WINDOW + i], seq[i]);
        assert_true(t.again[WINDOW + i]);
    }

    /* It acknowledges two: the next two go out. */
    uint64_t more[1] = {seq[1]};
    raw_delivery_ack(&r, seq[0], more, 1);
    raw_tally_t u = {0};
    raw_tally(&r, &u, 0, 2);
    for (int i = 0; i < 2; i++) {
        seq[WINDOW + i] = u.seq[i];
        assert_false(u.again[i]);
    }
    /* Its session restarts again: those two, never sent again on this
     * connection, go again; the two sent again already stay in flight. */
    raw_hello_window(&r, "t-houqing", WINDOW);
    raw_tally(&r, &u, 1, 4);
    assert_null(raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 300));
    assert_int_equal(u.deliveries, 4);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(u.seq[2 + i], seq[WINDOW + i]);
        assert_true(u.again[2 + i]);
    }
    assert_int_equal(mrt_counter(&d, "redelivered"), WINDOW + 2);
    assert_int_equal(mrt_counter(&d, "resends_skipped"), WINDOW * (HELLOS - 1) + 2);

    /* A new connection gets all four in flight again; acknowledged, every
     * message is delivered, none twice. */
    raw_close(&r);
    raw_open(&r, &d);
    raw_hello_window(&r, "t-houqing", WINDOW);
    raw_tally_t v = {0};
    raw_tally(&r, &v, 1, 4);
    uint64_t want[4] = {seq[2], seq[3], seq[4], seq[5]};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(v.seq[i], want[i]);
        assert_true(v.again[i]);
    }
    raw_delivery_ack(&r, want[0], want + 1, 3);
    until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "delivered") < MSGS && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "delivered"), MSGS);
    assert_null(raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 300));
    s_raw_houqing_done(&d, &lead, &r);
}

/* A delivery handler that refuses every delivery (its application cannot
 * take them now), counting the copies it was handed. */
static int on_refuse_all(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    (*(int *)arg)++;
    return 1;
}

/* A lab order from t-houqing to yx-lab, id "<prefix>-<n>", sent raw. */
static void raw_houqing_order(raw_t *r, const char *prefix, int n)
{
    char id[64];
    snprintf(id, sizeof id, "%s-%d", prefix, n);
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = id;
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = id;
    e.source = "t-houqing";
    e.destination = "yx-lab";
    e.kind = MEDROUTE__V1__KIND__KIND_LAB_ORDER;
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
    e.lab_order = &lo;
    raw_send_envelope(r, &e);
}

/*
 * A session that sends and never reads (an application that only submits,
 * or one whose reading loop hangs while another thread sends): each
 * delivery out to it is sent again on its connection once at most.  Before,
 * a copy went at each redelivery time-out (backing off to 32 of them), each
 * queued toward a connection that nobody read, up to the socket's
 * high-water mark of 100,000 messages over the days.  A receiver that reads
 * and refuses (its handler failed) still gets copy after copy: it serves
 * as the test's clock, as its copies go out in the same rounds of the
 * broker's cron, after the other's.  Once the first reads, the copies
 * already on its connection bring every message, and its acks deliver them.
 */
static void test_routing_a_session_that_never_reads_gets_one_copy_more(void **state)
{
    (void)state;
    enum { WINDOW = 4, CLOCK_COPIES = 4 };
    mrt_daemon_t d = {0};
    mr_client_t *lead;
    raw_t r;
    /* The library heartbeats every 100 ms while it polls; no session ends
     * for silence within the test. */
    s_raw_houqing_with(&d,
                       "limits = { redelivery_timeout_ms = 100; heartbeat_interval_ms = 100; "
                       "heartbeat_timeout_ms = 600000; };",
                       &lead, &r, WINDOW);
    mr_client_t *aihua = connected(&d, "t-aihua");
    for (int i = 0; i < WINDOW; i++) {
        char p[160];
        snprintf(p, sizeof p, "{\"referral_id\":\"R-NR-%d\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                 i);
        assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    }
    long long until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "sent") < WINDOW && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "sent"), WINDOW); /* out to t-houqing, unread */
    assert_int_equal(mrt_send(lead, "t-aihua", "referral", "routine",
                              "{\"referral_id\":\"R-NR-CLOCK\",\"service\":"
                              "\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);

    /* t-houqing sends a message at every turn and reads nothing, while
     * t-aihua reads and refuses until its delivery came CLOCK_COPIES times:
     * t-houqing's were due again as often by then. */
    int copies = 0, sent = 0;
    until = mrt_now_ms() + 30000;
    while (copies < CLOCK_COPIES && mrt_now_ms() < until) {
        raw_houqing_order(&r, "NR-OUT", sent++);
        assert_true(mr_client_poll(aihua, 50, on_refuse_all, &copies) >= 0);
    }
    assert_int_equal(copies, CLOCK_COPIES);

    /* It reads now: each delivery came once, and once more at most. */
    raw_tally_t t = {0};
    mr_frame_t *f;
    while ((f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 500)) != NULL) {
        if (t.deliveries < 64)
            t.seq[t.deliveries] = f->delivery->seq;
        t.deliveries++;
        medroute__v1__frame__free_unpacked(f, NULL);
    }
    printf("never read: %d deliveries of %d messages queued, t-aihua's copies %d\n",
           t.deliveries, WINDOW, copies);
    if (t.deliveries > 2 * WINDOW)
        fail_msg("%d deliveries queued toward a session that never read them; %d expected at "
                 "most (each once, and once more)",
                 t.deliveries, 2 * WINDOW);
    uint64_t seq[WINDOW];
    for (int i = 0; i < WINDOW; i++)
        seq[i] = t.seq[i]; /* the first sends, in order; then the copies */
    for (int i = WINDOW; i < t.deliveries; i++)
        assert_int_equal(t.seq[i], seq[i - WINDOW]);

    /* Acknowledged, every one is delivered, and nothing more comes. */
    raw_delivery_ack(&r, seq[0], seq + 1, WINDOW - 1);
    until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "delivered") < WINDOW && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "delivered"), WINDOW);
    assert_null(raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 300));
    mr_client_destroy(&aihua);
    s_raw_houqing_done(&d, &lead, &r);
}

/*
 * A receiver that reads and refuses (its hospital system is down) while it
 * sends a message every few milliseconds still gets copy after copy: the
 * library heartbeats at its interval while it polls, Envelopes or not.
 * Before, any frame put its heartbeat off, so such a receiver sent only
 * Envelopes, which do not show the broker that it reads: after the one
 * copy more the broker allows then, its refused delivery waited for a
 * pause in its sending.
 */
static void test_routing_a_busy_receiver_that_refuses_gets_copies(void **state)
{
    (void)state;
    enum { COPIES = 4 };
    mrt_daemon_t d = {0};
    /* A second between heartbeats, many Envelopes in it. */
    assert_int_equal(mrt_daemon_start(&d, "limits = { redelivery_timeout_ms = 100; "
                                          "heartbeat_interval_ms = 1000; };\n"),
                     0);
    mr_client_t *aihua = connected(&d, "t-aihua");
    mr_client_t *lead = connected(&d, "yx-lead");
    assert_int_equal(mrt_send(lead, "t-aihua", "referral", "routine",
                              "{\"referral_id\":\"R-BUSY\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                              NULL),
                     0);
    int copies = 0, sent = 0;
    long long until = mrt_now_ms() + 30000;
    while (copies < COPIES && mrt_now_ms() < until) {
        char id[32], err[200];
        snprintf(id, sizeof id, "BUSY-%d", sent++);
        char *json = mrt_lab_order_json(id, 0);
        assert_non_null(json);
        assert_int_equal(mr_client_submit_json(aihua, json, NULL, err, sizeof err), 0);
        free(json);
        /* One every 20 ms, polling meanwhile (Acks end a poll early). */
        for (long long next = mrt_now_ms() + 20; mrt_now_ms() < next;)
            assert_true(mr_client_poll(aihua, 20, on_refuse_all, &copies) >= 0);
    }
    printf("busy refuser: %d copies while it sent %d messages\n", copies, sent);
    assert_int_equal(copies, COPIES);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * A stat message an operator retries from the dead letters goes ahead of
 * the routine ones waiting, as it did before it died.  Before, it came back
 * as a routine one, in seq order, behind an older routine message.
 */
static void test_routing_retried_stat_goes_ahead_of_routine(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    mr_client_t *lead;
    raw_t r;
    s_raw_houqing(&d, &lead, &r, 1);
    const char *routine = "{\"referral_id\":\"%s\",\"service\":\"SERVICE_FOLLOW_UP\"}";
    char p[512], id[64];
    snprintf(p, sizeof p, routine, "R-RS-A");
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
    assert_non_null(f);
    uint64_t a_seq = f->delivery->seq; /* out, unacknowledged: the window is full */
    medroute__v1__frame__free_unpacked(f, NULL);
    snprintf(p, sizeof p, routine, "R-RS-B");
    assert_int_equal(mrt_send(lead, "t-houqing", "referral", "routine", p, NULL), 0);
    /* A stat one that dies waiting behind the window. */
    snprintf(p, sizeof p,
             "{\"destination\":\"t-houqing\",\"kind\":\"referral\",\"priority\":\"stat\","
             "\"referral\":{\"referral_id\":\"R-RS-STAT\",\"service\":\"SERVICE_FOLLOW_UP\","
             "\"expires_at_ms\":%lld}}",
             (long long)time(NULL) * 1000 + 1500);
    mr_result_t res;
    assert_int_equal(mr_client_send_json(lead, p, &res, 5000, NULL, NULL), 0);
    long long until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "expired") < 1 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 100);
    assert_int_equal(mrt_counter(&d, "expired"), 1);
    char req[128];
    snprintf(req, sizeof req, "{\"queue_retry\":{\"seq\":%llu}}", (unsigned long long)res.seq);
    char *reply = mrt_operator(&d, req);
    assert_non_null(reply);
    assert_non_null(strstr(reply, "\"done\""));
    free(reply);
    raw_delivery_ack(&r, a_seq, NULL, 0);
    assert_true(raw_next_referral(&r, 5000, id));
    assert_string_equal(id, "R-RS-STAT");
    s_raw_houqing_done(&d, &lead, &r);
}

/* ---- acks of messages not sent ------------------------------------------------- */

/* Sends n lab orders from t-manwan to yx-ecg, their Acks in res. */
static void s_orders_to_ecg(mrt_daemon_t *d, const char *tag, mr_result_t *res, int n)
{
    mr_client_t *a = connected(d, "t-manwan");
    for (int i = 0; i < n; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"destination\":\"yx-ecg\",\"kind\":\"lab_order\","
                 "\"lab_order\":{\"placer_order_number\":\"PO-%s-%d\"}}", tag, i);
        assert_int_equal(mr_client_send_json(a, json, &res[i], 5000, NULL, NULL), 0);
    }
    mr_client_destroy(&a);
}

/*
 * A DeliveryAck for a message its facility was not sent yet (it waits
 * behind the delivery window) is refused as UNKNOWN_DELIVERY, and the
 * message stays pending: it is delivered when the window opens.  Before,
 * the ack marked it delivered, and the facility never received it.
 */
static void test_routing_ack_of_a_message_not_sent_yet_is_refused(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_result_t res[2];
    s_orders_to_ecg(&d, "WINDOW", res, 2);
    long long delivered0 = mrt_counter(&d, "delivered");
    raw_t r;
    raw_open(&r, &d);
    raw_hello_window(&r, "yx-ecg", 1);
    mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
    assert_non_null(f);
    assert_int_equal(f->delivery->seq, res[0].seq);
    medroute__v1__frame__free_unpacked(f, NULL);
    raw_delivery_ack(&r, res[1].seq, NULL, 0); /* behind the window: not sent */
    f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_ERROR, 5000);
    assert_non_null(f);
    assert_int_equal(f->error->code, MR_E_UNKNOWN_DELIVERY);
    assert_int_equal(f->error->seq, res[1].seq);
    medroute__v1__frame__free_unpacked(f, NULL);
    /* The window opens: it comes, for the first time. */
    raw_delivery_ack(&r, res[0].seq, NULL, 0);
    f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_DELIVERY, 5000);
    assert_non_null(f);
    assert_int_equal(f->delivery->seq, res[1].seq);
    assert_false(f->delivery->redelivered);
    medroute__v1__frame__free_unpacked(f, NULL);
    raw_delivery_ack(&r, res[1].seq, NULL, 0);
    long long until = mrt_now_ms() + 5000;
    while (mrt_counter(&d, "delivered") < delivered0 + 2 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "delivered"), delivered0 + 2);
    raw_close(&r);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/*
 * The same for a late DeliveryAck (its session ended, section 3.3 of
 * protocol.md) of a message stored after that: never loaded for the
 * facility, it cannot have been sent.  Not answered (a late ack is not),
 * and the message stays pending.  Before, it was marked delivered.
 */
static void test_routing_late_ack_of_a_message_never_sent_is_refused(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, "limits = { heartbeat_interval_ms = 100; "
                                          "heartbeat_timeout_ms = 400; };\n"),
                     0);
    raw_t r;
    raw_open(&r, &d);
    raw_hello(&r, "yx-ecg");
    mr_frame_t *f = raw_next(&r, MEDROUTE__V1__FRAME__BODY_WELCOME, 5000);
    assert_non_null(f);
    medroute__v1__frame__free_unpacked(f, NULL);
    long long until = mrt_now_ms() + 5000;
    while (mrt_log_count(&d, "facility=yx-ecg why=heartbeat_timeout") < 1 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 50);
    assert_int_equal(mrt_log_count(&d, "facility=yx-ecg why=heartbeat_timeout"), 1);
    mr_result_t res;
    s_orders_to_ecg(&d, "AWAY", &res, 1);
    long long delivered0 = mrt_counter(&d, "delivered");
    raw_delivery_ack(&r, res.seq, NULL, 0);
    until = mrt_now_ms() + 5000;
    while (mrt_counter(&d, "late_acks") < 1 && mrt_now_ms() < until)
        (void)poll(NULL, 0, 20);
    assert_int_equal(mrt_counter(&d, "late_acks"), 1);
    /* Listed after the ack's answer (the store answers in order): pending. */
    char *q = mrt_operator(&d, "{\"queue_list\":{\"destination\":\"yx-ecg\"}}");
    assert_non_null(q);
    assert_non_null(strstr(q, res.message_id));
    free(q);
    assert_int_equal(mrt_counter(&d, "delivered"), delivered0);
    raw_close(&r);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_every_kind_both_ways),
        cmocka_unit_test(test_routing_offline_facility_gets_messages_in_order),
        cmocka_unit_test(test_routing_resend_is_acked_and_routed_once),
        cmocka_unit_test(test_routing_submit_while_waiting_is_one_message),
        cmocka_unit_test(test_routing_outbox_kept_offline_is_sent_once),
        cmocka_unit_test(test_routing_outbox_id_with_other_content_is_refused),
        cmocka_unit_test(test_routing_stat_travels_ahead_of_a_stored_backlog),
        cmocka_unit_test(test_routing_bad_input_gets_distinct_errors),
        cmocka_unit_test(test_routing_one_frame_acknowledges_several_deliveries),
        cmocka_unit_test(test_routing_unknown_seqs_of_one_ack_answered_once),
        cmocka_unit_test(test_routing_ack_of_a_message_not_sent_yet_is_refused),
        cmocka_unit_test(test_routing_late_ack_of_a_message_never_sent_is_refused),
        cmocka_unit_test(test_routing_ack_then_leave_is_not_redelivered),
        cmocka_unit_test(test_routing_ack_after_the_session_ended_counts),
        cmocka_unit_test(test_routing_gbk_patient_name_refused),
        cmocka_unit_test(test_routing_error_echoing_chinese_decodes),
        cmocka_unit_test(test_routing_held_deliveries_are_held_once),
        cmocka_unit_test(test_routing_too_large_refused_by_the_library),
        cmocka_unit_test(test_routing_refusal_kept_for_the_next_handler),
        cmocka_unit_test(test_routing_express_order_kept_across_sessions),
        cmocka_unit_test(test_routing_ack_for_a_queued_resend_is_not_sent_again),
        cmocka_unit_test(test_routing_retried_stat_goes_ahead_of_routine),
        cmocka_unit_test(test_routing_repeated_hellos_send_again_once),
        cmocka_unit_test(test_routing_a_session_that_never_reads_gets_one_copy_more),
        cmocka_unit_test(test_routing_a_busy_receiver_that_refuses_gets_copies),
        cmocka_unit_test(test_routing_damaged_outbox_rows_are_set_aside),
    };
    return cmocka_run_group_tests_name("routing", tests, setup, teardown);
}
