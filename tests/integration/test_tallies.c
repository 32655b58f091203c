/*
 * test_tallies.c - a scripted day of traffic (known counts of each kind,
 * some resends, a restart in the middle) gives exactly the expected tallies
 * and indicator values in `stats`, `indicators` and /metrics.
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
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "mr_codec.h"

static mrt_daemon_t g_d;

static mr_client_t *client(const char *facility)
{
    mr_client_t *c = mrt_client(&g_d, facility, NULL);
    assert_non_null(c);
    assert_int_equal(mr_client_wait_connected(c, 5000), 0);
    return c;
}

static void ok(mr_client_t *c, const char *to, const char *kind, const char *prio,
               const char *payload)
{
    char why[200];
    int rc = mrt_send(c, to, kind, prio, payload, why);
    if (rc != 0)
        fail_msg("%s to %s refused (%d): %s", kind, to, rc, why);
}

/* A local (UTC+8) day, days_ahead from today, and 09:00 that day as Unix ms. */
static void local_day(int days_ahead, char day[11], long long *nine_ms)
{
    time_t t = time(NULL) + 8 * 3600 + days_ahead * 86400;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(day, 11, "%Y-%m-%d", &tm);
    tm.tm_hour = 1;
    tm.tm_min = tm.tm_sec = 0;
    *nine_ms = (long long)timegm(&tm) * 1000;
}

static json_t *op(const char *request)
{
    char *r = mrt_operator(&g_d, request);
    assert_non_null(r);
    json_t *j = json_loads(r, 0, NULL);
    free(r);
    assert_non_null(j);
    return j;
}

/* Sum of a tally in a stats reply over label sets containing match. */
static long long tally(const json_t *stats, const char *name, const char *match)
{
    const json_t *rows = json_object_get(json_object_get(stats, "stats"), "tallies");
    long long v = 0;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        const json_t *r = json_array_get(rows, i);
        if (strcmp(json_string_value(json_object_get(r, "name")), name) == 0 &&
            (match == NULL || strstr(json_string_value(json_object_get(r, "labels")), match)))
            v += json_integer_value(json_object_get(r, "value"));
    }
    return v;
}

static double indicator(const json_t *ind, const char *name, const char **status)
{
    const json_t *rows = json_object_get(json_object_get(ind, "indicators"), "indicators");
    for (size_t i = 0; i < json_array_size(rows); i++) {
        const json_t *r = json_array_get(rows, i);
        if (strcmp(json_string_value(json_object_get(r, "name")), name) == 0) {
            *status = json_string_value(json_object_get(r, "status"));
            return json_number_value(json_object_get(r, "value"));
        }
    }
    fail_msg("no indicator %s", name);
    return 0;
}

/* How many VisitTally reports an indicators reply counted. */
static long long visit_reports(const json_t *ind)
{
    return json_integer_value(json_object_get(json_object_get(ind, "indicators"), "visit_reports"));
}

static void ref(mr_client_t *c, const char *to, const char *id, bool fd, const char *service)
{
    char p[512];
    snprintf(p, sizeof p,
             "{\"referral_id\":\"%s\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"I21\"}],"
             "\"service\":\"%s\",\"department\":\"cardiology\",\"family_doctor_contract\":%s}",
             id, service, fd ? "true" : "false");
    ok(c, to, "referral", "urgent", p);
}

static void test_tallies_scripted_day_exact(void **state)
{
    (void)state;
    /* Slots the day after tomorrow: before their reserve cut-off (24 h). */
    char day[11], slot_day[11], p[1024];
    long long nine, slot_nine;
    local_day(0, day, &nine);
    local_day(2, slot_day, &slot_nine);
    assert_int_equal(mrt_daemon_start(&g_d, NULL), 0);
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua"), *manwan = client("t-manwan");

    /* Capacity: clinic cardiology 10 (2 reserved), exam CT 5 (1 reserved). */
    snprintf(p, sizeof p,
             "{\"items\":[{\"resource\":\"RESOURCE_CLINIC\",\"unit\":\"cardiology\",\"date\":\"%s\","
             "\"capacity\":10,\"reserved\":2},{\"resource\":\"RESOURCE_EXAM\",\"unit\":\"CT\","
             "\"date\":\"%s\",\"capacity\":5,\"reserved\":1}]}",
             slot_day, slot_day);
    ok(lead, "test", "capacity", "routine", p);

    /* 4 up-referrals (2 from family doctors), 2 down-referrals. */
    ref(aihua, "yx-lead", "U1", true, "SERVICE_SPECIALIST_CLINIC");
    ref(aihua, "yx-lead", "U2", true, "SERVICE_SPECIALIST_CLINIC");
    ref(aihua, "yx-lead", "U3", false, "SERVICE_SPECIALIST_CLINIC");
    ref(manwan, "yx-lead", "U4", false, "SERVICE_SPECIALIST_CLINIC");
    ref(lead, "t-aihua", "D1", false, "SERVICE_FOLLOW_UP");
    ref(lead, "t-manwan", "D2", false, "SERVICE_FOLLOW_UP");
    /* A resend of U1 with the same id: acknowledged, counted once, as a duplicate. */
    mr_result_t r1, r2;
    const char *env = "{\"message_id\":\"fixed-U5\",\"destination\":\"yx-lead\",\"kind\":\"referral\","
                      "\"priority\":\"urgent\",\"referral\":{\"referral_id\":\"U5\",\"service\":"
                      "\"SERVICE_SPECIALIST_CLINIC\",\"department\":\"cardiology\"}}";
    assert_int_equal(mr_client_send_json(aihua, env, &r1, 5000, NULL, NULL), 0);
    assert_int_equal(mr_client_send_json(aihua, env, &r2, 5000, NULL, NULL), 0);
    assert_true(r2.duplicate);

    /* The lead accepts U1, U2, U3 for 09:00 that day, rejects U4. */
    const char *acc[] = {"U1", "U2", "U3"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "{\"referral_id\":\"%s\",\"step\":\"STEP_ACCEPTED\","
                              "\"appointment_at_ms\":%lld}", acc[i], slot_nine);
        ok(lead, "t-aihua", "referral_update", "routine", p);
    }
    ok(lead, "t-manwan", "referral_update", "routine",
       "{\"referral_id\":\"U4\",\"step\":\"STEP_REJECTED\",\"reason\":\"no bed\"}");
    /* U2's patient no longer comes: its reserved unit goes back to the reserve,
     * so it is not a use of the reserve (reserve_utilisation below). */
    ok(aihua, "yx-lead", "referral_update", "routine",
       "{\"referral_id\":\"U2\",\"step\":\"STEP_CANCELLED\",\"reason\":\"recovered\"}");

    /* A refusal is counted by its code, durably. */
    assert_int_equal(mrt_send(aihua, "t-nowhere", "lab_order", "routine",
                              "{\"placer_order_number\":\"PX\"}", NULL),
                     MR_E_UNKNOWN_DESTINATION);

    /* Restart in the middle of the day. */
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
    mr_client_destroy(&manwan);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    assert_int_equal(mrt_daemon_restart(&g_d), 0);
    lead = client("yx-lead");
    aihua = client("t-aihua");
    mr_client_t *img = client("yx-imaging"), *lab = client("yx-lab");

    /* Imaging: 2 CT requests, 1 final report.  Lab: 1 order of 2 tests, a final
     * result with a critical value, read back. */
    ok(aihua, "yx-imaging", "imaging_request", "urgent",
       "{\"accession_number\":\"A1\",\"modality\":\"MODALITY_CT\"}");
    ok(aihua, "yx-imaging", "imaging_request", "routine",
       "{\"accession_number\":\"A2\",\"modality\":\"MODALITY_CT\"}");
    ok(img, "t-aihua", "imaging_report", "urgent",
       "{\"accession_number\":\"A1\",\"status\":\"REPORT_FINAL\"}");
    ok(aihua, "yx-lab", "lab_order", "routine",
       "{\"placer_order_number\":\"P1\",\"tests\":[{\"code\":\"2823-3\"},{\"code\":\"2951-2\"}]}");
    ok(lab, "t-aihua", "lab_result", "stat",
       "{\"placer_order_number\":\"P1\",\"status\":\"RESULT_FINAL\",\"items\":[{\"test\":"
       "{\"code\":\"2823-3\"},\"value\":\"6.9\",\"critical\":true},{\"test\":{\"code\":\"2951-2\"},"
       "\"value\":\"140\"}]}");
    ok(aihua, "yx-lab", "critical_ack", "stat", "{\"placer_order_number\":\"P1\"}");

    /* Visit reports: t-aihua (grassroots) and yx-lead; yx-lead corrects its own. */
    snprintf(p, sizeof p, "{\"date\":\"%s\",\"outpatient_visits\":100,\"emergency_visits\":10,"
                          "\"insured_visits_in_county\":90,\"fund_spend_fen\":30000,"
                          "\"tcm_visits\":25}", day);
    ok(aihua, "test", "visit_tally", "routine", p);
    snprintf(p, sizeof p, "{\"date\":\"%s\",\"outpatient_visits\":40,\"emergency_visits\":10,"
                          "\"insured_visits_in_county\":45,\"insured_visits_out_of_county\":5,"
                          "\"fund_spend_fen\":60000,\"fund_spend_out_of_county_fen\":10000}", day);
    ok(lead, "test", "visit_tally", "routine", p);
    snprintf(p, sizeof p, "{\"date\":\"%s\",\"outpatient_visits\":50,\"emergency_visits\":10,"
                          "\"insured_visits_in_county\":45,\"insured_visits_out_of_county\":5,"
                          "\"fund_spend_fen\":60000,\"fund_spend_out_of_county_fen\":10000}", day);
    ok(lead, "test", "visit_tally", "routine", p);

    /* ---- stats ---- */
    json_t *st = op("{\"stats\":{\"period\":\"today\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", "direction=\"up\""), 5);
    assert_int_equal(tally(st, "referrals_requested_total", "direction=\"down\""), 2);
    assert_int_equal(tally(st, "referral_outcomes_total", "outcome=\"accepted\""), 3);
    assert_int_equal(tally(st, "referral_outcomes_total", "outcome=\"rejected\""), 1);
    assert_int_equal(tally(st, "slot_claims_total", "claim=\"reserved\""), 2);
    assert_int_equal(tally(st, "slot_claims_total", "claim=\"general\""), 1);
    assert_int_equal(tally(st, "capacity_offered_units_total", NULL), 15);
    assert_int_equal(tally(st, "reserve_offered_units_total", NULL), 3);
    assert_int_equal(tally(st, "messages_duplicate_total", NULL), 1);
    assert_int_equal(tally(st, "imaging_requests_total", "modality=\"CT\""), 2);
    assert_int_equal(tally(st, "imaging_reports_total", NULL), 1);
    assert_int_equal(tally(st, "imaging_turnaround_seconds_count", NULL), 1);
    assert_int_equal(tally(st, "lab_orders_total", NULL), 1);
    assert_int_equal(tally(st, "lab_tests_ordered_total", NULL), 2);
    assert_int_equal(tally(st, "lab_result_items_total", NULL), 2);
    assert_int_equal(tally(st, "critical_values_total", "kind=\"lab\""), 1);
    assert_int_equal(tally(st, "critical_readback_seconds_count", NULL), 1);
    assert_int_equal(tally(st, "referral_acceptance_seconds_count", NULL), 3);
    assert_int_equal(tally(st, "slot_claims_released_total", "claim=\"reserved\""), 1);
    /* 1 capacity + 5 up + 2 down + 5 updates + 2 img req + 1 report + 1 order
     * + 1 result + 1 read-back + 3 visit reports = 22 stored once each. */
    assert_int_equal(tally(st, "messages_stored_total", NULL), 22);
    assert_int_equal(tally(st, "messages_rejected_total", "code=\"UNKNOWN_DESTINATION\""), 1);
    json_decref(st);
    /* The same over the year, and filtered to one facility. */
    char req[128];
    snprintf(req, sizeof req, "{\"stats\":{\"period\":\"%.4s\"}}", day);
    st = op(req);
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 7);
    json_decref(st);
    st = op("{\"stats\":{\"period\":\"today\",\"facility\":\"t-manwan\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 2); /* U4 from, D2 to */
    json_decref(st);
    st = op("{\"stats\":{\"period\":\"2001-H1\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 0);
    json_decref(st);

    /* ---- indicators ---- */
    json_t *ind = op("{\"indicators\":{\"period\":\"today\"}}");
    const char *status;
    assert_float_equal(indicator(ind, "down_up_ratio", &status), 2.0 / 5.0, 1e-9);
    assert_string_equal(status, "ok");
    assert_float_equal(indicator(ind, "reserved_share", &status), 3.0 / 15.0, 1e-9);
    assert_string_equal(status, "warning"); /* 20 %: on target, under the 22 % warning line */
    /* 2 reserved units claimed, 1 given back by the cancel: 1 of 3 used. */
    assert_float_equal(indicator(ind, "reserve_utilisation", &status), 1.0 / 3.0, 1e-9);
    assert_string_equal(status, "off_target");
    assert_float_equal(indicator(ind, "in_county_consultation_rate", &status), 135.0 / 140.0,
                       1e-9);
    assert_string_equal(status, "ok");
    assert_float_equal(indicator(ind, "grassroots_outpatient_share", &status), 110.0 / 170.0,
                       1e-9);
    assert_string_equal(status, "off_target"); /* 64.7 % < 65 % */
    assert_float_equal(indicator(ind, "in_county_fund_share", &status), 90000.0 / 100000.0, 1e-9);
    assert_float_equal(indicator(ind, "grassroots_fund_share", &status), 30000.0 / 100000.0,
                       1e-9);
    assert_float_equal(indicator(ind, "grassroots_tcm_share", &status), 25.0 / 150.0, 1e-9);
    assert_string_equal(status, "off_target");
    assert_int_equal(visit_reports(ind), 2);
    json_decref(ind);

    /* ---- /metrics: the same all-time figures ---- */
    char *m = mrt_http_get(&g_d, "/metrics");
    assert_non_null(m);
    assert_non_null(strstr(m, "medroute_messages_duplicate_total{kind=\"referral\",source=\"t-aihua\"} 1\n"));
    assert_non_null(strstr(m, "medroute_slot_claims_total{claim=\"reserved\",family_doctor=\"yes\","
                              "resource=\"clinic\"} 2\n"));
    assert_non_null(strstr(m, "medroute_lab_tests_ordered_total{source=\"t-aihua\"} 2\n"));
    assert_non_null(strstr(m, "medroute_critical_readback_seconds_count{kind=\"lab\"} 1\n"));
    assert_non_null(strstr(m, "# TYPE medroute_imaging_turnaround_seconds histogram\n"));
    free(m);
    char *h = mrt_http_get(&g_d, "/healthz");
    assert_non_null(h);
    assert_non_null(strstr(h, "\"insecure\":true"));
    free(h);

    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
    mr_client_destroy(&img);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

/* `watch`: a subscriber sees counter changes as traffic flows. */
/* The daemon started, and an operator connection subscribed to `watch`. */
static mr_operator_t *s_watching(void)
{
    assert_int_equal(mrt_daemon_start(&g_d, NULL), 0);
    mr_operator_t *op = mr_operator_new(g_d.operator_ep);
    assert_non_null(op);
    char *reply = NULL, err[200];
    assert_int_equal(mr_operator_call_json(op, "{\"watch\":{}}", &reply, 5000, err, sizeof err), 0);
    assert_non_null(strstr(reply, "\"subscribed\""));
    free(reply);
    return op;
}

static void test_tallies_watch_streams_counter_changes(void **state)
{
    (void)state;
    mr_operator_t *op = s_watching();
    char *reply = NULL;
    mr_client_t *aihua = client("t-aihua");
    ok(aihua, "yx-lab", "lab_order", "routine", "{\"placer_order_number\":\"PW\"}");
    bool seen = false;
    long long until = mrt_now_ms() + 5000;
    while (!seen && mrt_now_ms() < until) {
        if (mr_operator_next_json(op, &reply, 200) == 0) {
            seen = strstr(reply, "\"kind\":\"counters\"") && strstr(reply, "stored +1");
            free(reply);
        }
    }
    assert_true(seen);
    mr_client_destroy(&aihua);
    mr_operator_destroy(&op);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

/*
 * A `watch` event that arrives while the same connection waits for the
 * reply to another call (medroute watch renews its subscription every 30 s)
 * is kept, and the next read of the stream returns it.
 */
static void test_tallies_watch_event_during_a_call_is_kept(void **state)
{
    (void)state;
    mr_operator_t *op = s_watching();
    char *reply = NULL, err[200];
    mr_client_t *aihua = client("t-aihua");
    ok(aihua, "yx-lab", "lab_order", "routine", "{\"placer_order_number\":\"PW-HELD\"}");
    usleep(1500 * 1000); /* the second's tick has sent "stored +1" */
    assert_int_equal(mr_operator_call_json(op, "{\"status\":{}}", &reply, 5000, err, sizeof err), 0);
    assert_non_null(strstr(reply, "\"status\""));
    free(reply);
    /* No traffic since: a later tick could not bring it again. */
    assert_int_equal(mr_operator_next_json(op, &reply, 300), 0);
    assert_non_null(strstr(reply, "stored +1"));
    free(reply);
    mr_client_destroy(&aihua);
    mr_operator_destroy(&op);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

/*
 * A day's figures that cannot be added up are refused at intake (a day that
 * is not a calendar day, a negative or absurd fund amount), and a store that
 * already holds amounts whose sum overflows (as one written before intake
 * bounded them may) still answers stats, indicators and /metrics, without
 * failing the messages stored meanwhile.
 */
static void test_tallies_bad_visit_figures(void **state)
{
    (void)state;
    char day[11], p[512], why[200];
    long long nine;
    local_day(0, day, &nine);
    assert_int_equal(mrt_daemon_start(&g_d, NULL), 0);
    mr_client_t *aihua = client("t-aihua"), *lead = client("yx-lead");
    const char *bad[] = {
        "{\"date\":\"2026/11/20\",\"outpatient_visits\":1}",
        "{\"date\":\"2026-02-29\",\"outpatient_visits\":1}", /* not a leap year */
        "{\"date\":\"2026-13-01\",\"outpatient_visits\":1}",
        "{\"date\":\"%s\",\"fund_spend_fen\":-1}",
        "{\"date\":\"%s\",\"fund_spend_fen\":9223372036854775807}",
        "{\"date\":\"%s\",\"fund_spend_out_of_county_fen\":10000000000001}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(p, sizeof p, bad[i], day);
        assert_int_equal(mrt_send(aihua, "test", "visit_tally", "routine", p, why), MR_E_INVALID);
        assert_non_null(strstr(why, "visit_tally."));
    }
    ok(aihua, "test", "visit_tally", "routine",
       "{\"date\":\"2024-02-29\",\"fund_spend_fen\":10000000000000}");
    /* A day to come would count in the current period now: tomorrow is the
     * last day taken (a clock or zone a little ahead); three days on (a
     * margin for midnight passing during the test) and later are refused. */
    char ahead[11];
    local_day(3, ahead, &nine);
    const char *future[] = {ahead, "2999-01-01"};
    for (size_t i = 0; i < sizeof future / sizeof future[0]; i++) {
        snprintf(p, sizeof p, "{\"date\":\"%s\",\"outpatient_visits\":1}", future[i]);
        assert_int_equal(mrt_send(aihua, "test", "visit_tally", "routine", p, why), MR_E_INVALID);
        assert_non_null(strstr(why, "visit_tally.date is later than tomorrow"));
    }
    local_day(1, ahead, &nine);
    snprintf(p, sizeof p, "{\"date\":\"%s\",\"outpatient_visits\":1}", ahead);
    ok(aihua, "test", "visit_tally", "routine", p);
    local_day(0, day, &nine);
    snprintf(p, sizeof p,
             "{\"items\":[{\"resource\":\"RESOURCE_BED\",\"unit\":\"neurology\","
             "\"date\":\"2026/12/05\",\"capacity\":10,\"reserved\":2}]}");
    assert_int_equal(mrt_send(lead, "test", "capacity", "routine", p, why), MR_E_INVALID);
    assert_non_null(strstr(why, "date"));
    /* A slot start far from its day (negative; seconds sent as ms) would be
     * past its cut-off at once and give the whole reserve away. */
    const long long starts[] = {-1, nine / 1000, nine + 3LL * 86400 * 1000};
    for (size_t i = 0; i < sizeof starts / sizeof starts[0]; i++) {
        snprintf(p, sizeof p,
                 "{\"items\":[{\"resource\":\"RESOURCE_BED\",\"unit\":\"neurology\","
                 "\"date\":\"%s\",\"capacity\":10,\"reserved\":2,\"slot_start_ms\":%lld}]}",
                 day, starts[i]);
        assert_int_equal(mrt_send(lead, "test", "capacity", "routine", p, why), MR_E_INVALID);
        assert_non_null(strstr(why, "slot_start_ms"));
    }
    snprintf(p, sizeof p,
             "{\"items\":[{\"resource\":\"RESOURCE_BED\",\"unit\":\"neurology\","
             "\"date\":\"%s\",\"capacity\":10,\"reserved\":2,\"slot_start_ms\":%lld}]}",
             day, nine);
    assert_int_equal(mrt_send(lead, "test", "capacity", "routine", p, why), 0);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);

    /* Two reports whose fund amounts sum past INT64_MAX, written directly. */
    char path[400];
    snprintf(path, sizeof path, "%s/var/medroute.db", g_d.dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(p, sizeof p,
             "INSERT INTO visit_reports VALUES('t-aihua', '%s', 1, 1, 0, 0, 0, 0,"
             " 9223372036854775807, 0, 0, 1), ('t-manwan', '%s', 1, 1, 0, 0, 0, 0,"
             " 9223372036854775807, 0, 0, 2)", day, day);
    assert_int_equal(sqlite3_exec(db, p, NULL, NULL, NULL), SQLITE_OK);
    /* And a counter whose two days sum past INT64_MAX: a stats query over
     * both fails (SQLite's sum() refuses to overflow), alone. */
    char other[11];
    snprintf(other, sizeof other, "%.4s-%s", day, strcmp(day + 5, "01-01") ? "01-01" : "12-31");
    snprintf(p, sizeof p,
             "INSERT INTO tallies VALUES('%s', 'lab_orders_total', 'source=\"t-x\"',"
             " 9223372036854775807), ('%s', 'lab_orders_total', 'source=\"t-x\"', 1)",
             day, other);
    assert_int_equal(sqlite3_exec(db, p, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);

    assert_int_equal(mrt_daemon_restart(&g_d), 0);
    aihua = client("t-aihua");
    for (int i = 0; i < 3; i++) {
        json_t *st = op("{\"stats\":{\"period\":\"today\"}}");
        assert_non_null(json_object_get(st, "stats"));
        json_decref(st);
        json_t *ind = op("{\"indicators\":{\"period\":\"today\"}}");
        assert_int_equal(visit_reports(ind), 2);
        json_decref(ind);
        char *m = mrt_http_get(&g_d, "/metrics");
        assert_non_null(m);
        free(m);
        /* A message stored while the reports are read is acknowledged. */
        snprintf(p, sizeof p, "{\"placer_order_number\":\"BIG-%d\"}", i);
        ok(aihua, "yx-lab", "lab_order", "routine", p);
        /* The year's stats fail (an error reply), and nothing else does. */
        char req[64];
        snprintf(req, sizeof req, "{\"stats\":{\"period\":\"%.4s\"}}", day);
        st = op(req);
        assert_null(json_object_get(st, "stats"));
        json_decref(st);
        snprintf(p, sizeof p, "{\"placer_order_number\":\"BIG-%d-B\"}", i);
        ok(aihua, "yx-lab", "lab_order", "routine", p);
    }
    assert_true(mrt_log_count(&g_d, "store.query_failed") >= 1);
    char *h = mrt_http_get(&g_d, "/healthz");
    assert_non_null(h);
    assert_null(strstr(h, "unavailable"));
    free(h);
    assert_int_equal(mrt_log_count(&g_d, "store.unavailable"), 0);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

static void dept_ref(mr_client_t *c, const char *id, const char *department)
{
    char p[512];
    snprintf(p, sizeof p,
             "{\"referral_id\":\"%s\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
             "\"department\":\"%s\"}", id, department);
    ok(c, "yx-lead", "referral", "routine", p);
}

/* Referrals counted today under department="value". */
static long long dept_today(const char *value)
{
    char match[96];
    snprintf(match, sizeof match, "department=\"%s\"", value);
    json_t *st = op("{\"stats\":{\"period\":\"today\"}}");
    long long v = tally(st, "referrals_requested_total", match);
    json_decref(st);
    return v;
}

/* `stats --facility F` keeps what F sent or received: not a label set that
 * holds F's id as another value (a department is free text). */
static void test_tallies_stats_facility_is_source_or_destination(void **state)
{
    (void)state;
    assert_int_equal(mrt_daemon_start(&g_d, NULL), 0);
    mr_client_t *aihua = client("t-aihua");
    dept_ref(aihua, "F1", "t-manwan");
    json_t *st = op("{\"stats\":{\"period\":\"today\",\"facility\":\"t-manwan\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 0);
    json_decref(st);
    st = op("{\"stats\":{\"period\":\"today\",\"facility\":\"t-aihua\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 1);
    json_decref(st);
    st = op("{\"stats\":{\"period\":\"today\",\"facility\":\"yx-lead\"}}");
    assert_int_equal(tally(st, "referrals_requested_total", NULL), 1);
    json_decref(st);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

/* The department label takes at most 256 values, counted from the stored
 * tallies: the 256th is admitted, later new ones are counted as "_other",
 * and a restart keeps the same set. */
static void test_tallies_department_labels_bounded(void **state)
{
    (void)state;
    assert_int_equal(mrt_daemon_start(&g_d, NULL), 0);
    mr_client_t *aihua = client("t-aihua");
    dept_ref(aihua, "K1", "cardiology");
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);

    /* 254 more departments in use, from an old day: 255 in all. */
    char path[400], sql[512];
    snprintf(path, sizeof path, "%s/var/medroute.db", g_d.dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < 254; i++) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO tallies VALUES('2000-01-01', 'referrals_requested_total',"
                 " 'department=\"d-%03d\",destination=\"yx-lead\",direction=\"up\","
                 "priority=\"routine\",source=\"t-aihua\"', 1)", i);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);

    assert_int_equal(mrt_daemon_restart(&g_d), 0);
    aihua = client("t-aihua");
    mr_client_t *lead = client("yx-lead");
    dept_ref(aihua, "K2", "\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91"); /* 心内科: the 256th */
    dept_ref(aihua, "K3", "Zhang San, bed 12");                      /* one too many */
    dept_ref(aihua, "K4", "cardiology");
    dept_ref(aihua, "K5", "d-007");
    ok(lead, "t-aihua", "referral_update", "routine",
       "{\"referral_id\":\"K3\",\"step\":\"STEP_REJECTED\",\"reason\":\"no such clinic\"}");
    assert_int_equal(dept_today("\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91"), 1);
    assert_int_equal(dept_today("cardiology"), 2);
    assert_int_equal(dept_today("d-007"), 1);
    assert_int_equal(dept_today("_other"), 1);
    assert_int_equal(dept_today("Zhang"), 0);
    json_t *st = op("{\"stats\":{\"period\":\"today\"}}");
    assert_int_equal(tally(st, "referral_departments_folded_total", NULL), 1);
    /* Its later steps carry the same label. */
    assert_int_equal(tally(st, "referral_outcomes_total", "department=\"_other\""), 1);
    json_decref(st);
    char *m = mrt_http_get(&g_d, "/metrics");
    assert_non_null(m);
    assert_null(strstr(m, "Zhang"));
    assert_non_null(strstr(m, "medroute_referral_departments_folded_total{} 1"));
    free(m);

    /* After a restart: the same 256, so the 256th is still itself. */
    mr_client_destroy(&aihua);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    assert_int_equal(mrt_daemon_restart(&g_d), 0);
    aihua = client("t-aihua");
    dept_ref(aihua, "K6", "\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91");
    dept_ref(aihua, "K7", "neurology");
    assert_int_equal(dept_today("\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91"), 2);
    assert_int_equal(dept_today("neurology"), 0);
    assert_int_equal(dept_today("_other"), 2);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    mrt_daemon_cleanup(&g_d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tallies_scripted_day_exact),
        cmocka_unit_test(test_tallies_watch_streams_counter_changes),
        cmocka_unit_test(test_tallies_watch_event_during_a_call_is_kept),
        cmocka_unit_test(test_tallies_bad_visit_figures),
        cmocka_unit_test(test_tallies_department_labels_bounded),
        cmocka_unit_test(test_tallies_stats_facility_is_source_or_destination),
    };
    return cmocka_run_group_tests_name("tallies", tests, NULL, NULL);
}
