/*
 * test_lifecycle.c - the broker knows the medicine it carries, over the real
 * daemon: a referral walked through its whole life both ways, the reserved
 * capacity ledger, role refusals, imaging and lab loops with a critical
 * read-back, service-level escalations, open loops, and a restart that
 * loses none of it.
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

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

static mrt_daemon_t g_d;
static char g_day[11]; /* the day after tomorrow, local (Asia/Shanghai): before its cut-off */

static int setup(void **state)
{
    (void)state;
    if (mrt_daemon_start(&g_d, "sla = { urgent_accept_s = 1; stat_accept_s = 1;"
                               " imaging_final_s = 1; stat_imaging_final_s = 1;"
                               " lab_result_s = 1; stat_lab_result_s = 1;"
                               " critical_readback_s = 1; };\n"
                               "referrals = { appointment_grace_s = 2; };\n") != 0)
        return -1;
    time_t t = time(NULL) + 2 * 86400 + 8 * 3600; /* the daemon's days are UTC+8 */
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(g_day, sizeof g_day, "%Y-%m-%d", &tm);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = mrt_daemon_stop(&g_d);
    mrt_daemon_cleanup(&g_d);
    return rc == 0 ? 0 : -1;
}

static mr_client_t *client(const char *facility)
{
    mr_client_t *c = mrt_client(&g_d, facility, NULL);
    assert_non_null(c);
    assert_int_equal(mr_client_wait_connected(c, 5000), 0);
    return c;
}

static int sendp(mr_client_t *c, const char *to, const char *kind, const char *priority,
                 const char *payload, char *reason_out)
{
    int rc = mrt_send(c, to, kind, priority, payload, reason_out);
    assert_true(rc >= 0);
    return rc;
}

static int step(mr_client_t *c, const char *to, const char *ref, const char *step_name,
                const char *extra, char *reason_out)
{
    char payload[1024];
    snprintf(payload, sizeof payload, "{\"referral_id\":\"%s\",\"step\":\"%s\"%s%s}", ref,
             step_name, extra ? "," : "", extra ? extra : "");
    return sendp(c, to, "referral_update", "routine", payload, reason_out);
}

/* Takes every delivery for c (acknowledging them) for a moment. */
static int on_any(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY)
        ++*(int *)arg;
    return 0;
}

static int drain(mr_client_t *c, int ms)
{
    int n = 0;
    long long until = mrt_now_ms() + ms;
    while (mrt_now_ms() < until)
        mr_client_poll(c, 50, on_any, &n);
    return n;
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

/* The ledger row for resource/unit on g_day. */
static json_t *slot(const char *resource, const char *unit)
{
    char req[128];
    snprintf(req, sizeof req, "{\"slots\":{\"date\":\"%s\"}}", g_day);
    json_t *j = op(req);
    json_t *rows = json_object_get(json_object_get(j, "slots"), "rows");
    json_t *found = NULL;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *r = json_array_get(rows, i);
        if (strcmp(json_string_value(json_object_get(r, "resource")), resource) == 0 &&
            strcmp(json_string_value(json_object_get(r, "unit")), unit) == 0)
            found = json_incref(r);
    }
    json_decref(j);
    assert_non_null(found);
    return found;
}

static long long num(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* The open-loop row with this id, or NULL. */
static json_t *open_loop(const char *id)
{
    json_t *j = op("{\"open_loops\":{}}");
    json_t *loops = json_object_get(json_object_get(j, "open_loops"), "loops");
    json_t *found = NULL;
    for (size_t i = 0; i < json_array_size(loops); i++) {
        json_t *l = json_array_get(loops, i);
        if (strcmp(json_string_value(json_object_get(l, "id")), id) == 0)
            found = json_incref(l);
    }
    json_decref(j);
    return found;
}

/* "appointment_at_ms": 09:00 (UTC+8) on g_day, as a JSON member. */
static void appointment(char *out, size_t len)
{
    struct tm tm = {0};
    sscanf(g_day, "%4d-%2d-%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_hour = 1;
    snprintf(out, len, "\"appointment_at_ms\":%lld", (long long)timegm(&tm) * 1000);
}

static void publish_capacity(mr_client_t *lead, const char *unit, int capacity, int reserved,
                             int expect)
{
    char payload[512];
    snprintf(payload, sizeof payload,
             "{\"items\":[{\"resource\":\"RESOURCE_CLINIC\",\"unit\":\"%s\",\"date\":\"%s\","
             "\"capacity\":%d,\"reserved\":%d}]}",
             unit, g_day, capacity, reserved);
    assert_int_equal(sendp(lead, "test", "capacity", "routine", payload, NULL), expect);
}

static void referral_to(mr_client_t *from, const char *to, const char *id, bool family_doctor,
                        const char *service, const char *priority, const char *department)
{
    char payload[512];
    snprintf(payload, sizeof payload,
             "{\"referral_id\":\"%s\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"I21\"}],"
             "\"service\":\"%s\",\"department\":\"%s\",\"family_doctor_contract\":%s}",
             id, service, department, family_doctor ? "true" : "false");
    assert_int_equal(sendp(from, to, "referral", priority, payload, NULL), 0);
}

static void referral(mr_client_t *from, const char *to, const char *id, bool family_doctor,
                     const char *service, const char *priority)
{
    referral_to(from, to, id, family_doctor, service, priority, "cardiology");
}

static void test_referral_up_whole_life_with_reserved_slot(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua"), *manwan = client("t-manwan");
    char why[200];
    /* The ledger: a 10 % reserve is refused, a township may not publish, 20 % is fine. */
    publish_capacity(lead, "cardiology", 10, 1, MR_E_INVALID);
    publish_capacity(aihua, "cardiology", 10, 2, MR_E_FORBIDDEN);
    publish_capacity(lead, "cardiology", 10, 2, 0);

    referral(aihua, "yx-lead", "R-UP-1", true, "SERVICE_SPECIALIST_CLINIC", "routine");
    assert_int_equal(drain(lead, 300), 1); /* delivered and acknowledged: RECEIVED */
    json_t *l = open_loop("R-UP-1");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "RECEIVED");
    json_decref(l);

    /* Only the receiver accepts; nobody else can touch it. */
    assert_int_equal(step(aihua, "yx-lead", "R-UP-1", "STEP_ACCEPTED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "RECEIVED"));
    assert_int_equal(step(manwan, "yx-lead", "R-UP-1", "STEP_ACCEPTED", NULL, NULL),
                     MR_E_ILLEGAL_TRANSITION);
    /* Rejecting needs a reason. */
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_REJECTED", NULL, NULL), MR_E_INVALID);

    char appt[96];
    appointment(appt, sizeof appt);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_ACCEPTED", appt, NULL), 0);
    json_t *sl = slot("clinic", "cardiology");
    assert_int_equal(num(sl, "capacity"), 10);
    assert_int_equal(num(sl, "reserved"), 2);
    assert_int_equal(num(sl, "claimed_reserved"), 1);
    assert_int_equal(num(sl, "general_used"), 0);
    json_decref(sl);

    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_SCHEDULED", appt, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_ARRIVED", NULL, NULL), 0);
    /* Cancelling after arrival is no longer possible. */
    assert_int_equal(step(aihua, "yx-lead", "R-UP-1", "STEP_CANCELLED", "\"reason\":\"x\"", NULL),
                     MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_IN_PROGRESS", NULL, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_COMPLETED", NULL, NULL), MR_E_INVALID);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_COMPLETED",
                          "\"summary\":{\"uri\":\"emr://yx-lead/discharge/1\"}", NULL),
                     0);
    assert_int_equal(step(lead, "t-aihua", "R-UP-1", "STEP_COMPLETED",
                          "\"summary\":{\"uri\":\"emr://yx-lead/discharge/1b\"}", why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "COMPLETED"));
    assert_null(open_loop("R-UP-1"));
    assert_int_equal(drain(aihua, 500), 5); /* the township saw each of the 5 steps */
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
    mr_client_destroy(&manwan);
}

static void test_referral_down_completes_on_follow_up(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *manwan = client("t-manwan");
    referral(lead, "t-manwan", "R-DOWN-1", false, "SERVICE_FOLLOW_UP", "routine");
    assert_int_equal(step(manwan, "yx-lead", "R-DOWN-1", "STEP_ACCEPTED", NULL, NULL), 0);
    assert_int_equal(step(manwan, "yx-lead", "R-DOWN-1", "STEP_ARRIVED", NULL, NULL), 0);
    char why[200];
    /* The lead hospital (the sender) cannot complete it, nor can COMPLETED. */
    assert_int_equal(step(lead, "t-manwan", "R-DOWN-1", "STEP_FOLLOW_UP_CONFIRMED", NULL, NULL),
                     MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(step(manwan, "yx-lead", "R-DOWN-1", "STEP_COMPLETED",
                          "\"summary\":{\"uri\":\"x\"}", why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "follow-up"));
    assert_int_equal(step(manwan, "yx-lead", "R-DOWN-1", "STEP_FOLLOW_UP_CONFIRMED", NULL, NULL),
                     0);
    assert_null(open_loop("R-DOWN-1"));
    mr_client_destroy(&lead);
    mr_client_destroy(&manwan);
}

/*
 * Referral numbers are unique per sender only: a township's RF-7 to the lead
 * and the lead's own RF-7 to that township are two referrals, and each
 * update reaches the one whose side the step belongs to.
 */
static void test_referral_same_number_both_ways(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    referral(aihua, "yx-lead", "RF-7", false, "SERVICE_SPECIALIST_CLINIC", "routine");
    referral(lead, "t-aihua", "RF-7", false, "SERVICE_FOLLOW_UP", "routine");
    char why[200] = "";
    /* Receiver steps: each accepts the other's. */
    int rc = step(aihua, "yx-lead", "RF-7", "STEP_ACCEPTED", NULL, why);
    if (rc != 0)
        fail_msg("t-aihua accepting the lead's RF-7: %d %s", rc, why);
    rc = step(lead, "t-aihua", "RF-7", "STEP_ACCEPTED", NULL, why);
    if (rc != 0)
        fail_msg("yx-lead accepting t-aihua's RF-7: %d %s", rc, why);
    /* A sender step: the lead cancels its own; the township's goes on. */
    assert_int_equal(step(lead, "t-aihua", "RF-7", "STEP_CANCELLED", "\"reason\":\"bed freed\"",
                          NULL),
                     0);
    assert_int_equal(step(lead, "t-aihua", "RF-7", "STEP_ARRIVED", NULL, NULL), 0);
    /* ARRIVED again: the up-referral has arrived, the down one is cancelled. */
    assert_int_equal(step(lead, "t-aihua", "RF-7", "STEP_ARRIVED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(step(aihua, "yx-lead", "RF-7", "STEP_ARRIVED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "CANCELLED"));
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

/* An unknown step is said first (docs/referrals.md 1.1: unknown step, then
 * no such referral, ...), whether or not the referral exists. */
static void test_referral_unknown_step_is_said_first(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    char why[200] = "";
    assert_int_equal(step(lead, "t-aihua", "RF-NONE", "STEP_UNSPECIFIED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    if (strstr(why, "unknown referral step") == NULL)
        fail_msg("no referral, unknown step: \"%s\"", why);
    referral(aihua, "yx-lead", "RF-US", false, "SERVICE_SPECIALIST_CLINIC", "routine");
    assert_int_equal(step(lead, "t-aihua", "RF-US", "STEP_UNSPECIFIED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "unknown referral step"));
    /* A known step on no referral still says so. */
    assert_int_equal(step(lead, "t-aihua", "RF-NONE", "STEP_ACCEPTED", NULL, why),
                     MR_E_ILLEGAL_TRANSITION);
    assert_non_null(strstr(why, "state NONE"));
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

/* Numbers and units longer than the keys hold are refused whole. */
static void test_referral_long_numbers_refused(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    char id[80], p[512], why[200] = "";
    memset(id, 'N', 65);
    id[65] = '\0';
    snprintf(p, sizeof p, "{\"referral_id\":\"%s\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
                          "\"department\":\"cardiology\"}", id);
    assert_int_equal(sendp(aihua, "yx-lead", "referral", "routine", p, why), MR_E_INVALID);
    assert_non_null(strstr(why, "longer than 64"));
    id[64] = '\0'; /* 64 bytes: taken */
    snprintf(p, sizeof p, "{\"referral_id\":\"%s\",\"service\":\"SERVICE_SPECIALIST_CLINIC\","
                          "\"department\":\"cardiology\"}", id);
    assert_int_equal(sendp(aihua, "yx-lead", "referral", "routine", p, why), 0);
    char unit[80];
    memset(unit, 'u', 65);
    unit[65] = '\0';
    snprintf(p, sizeof p, "{\"items\":[{\"resource\":\"RESOURCE_BED\",\"unit\":\"%s\","
                          "\"date\":\"%s\",\"capacity\":10,\"reserved\":2}]}", unit, g_day);
    assert_int_equal(sendp(lead, "test", "capacity", "routine", p, why), MR_E_INVALID);
    assert_non_null(strstr(why, "unit"));
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

static void test_referral_ledger_reserve_general_and_release(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    /* 5 slots, 1 reserved for family-doctor referrals. */
    publish_capacity(lead, "neurology", 5, 1, 0);
    const char *ids[] = {"R-N1", "R-N2", "R-N3"};
    const bool fd[] = {true, true, false};
    char appt[96];
    appointment(appt, sizeof appt);
    for (int i = 0; i < 3; i++) {
        referral_to(aihua, "yx-lead", ids[i], fd[i], "SERVICE_SPECIALIST_CLINIC", "routine",
                    "neurology");
        assert_int_equal(step(lead, "t-aihua", ids[i], "STEP_ACCEPTED", appt, NULL), 0);
    }
    /* R-N1 took the reserve; R-N2 found it gone and used a general slot, as R-N3. */
    json_t *sl = slot("clinic", "neurology");
    assert_int_equal(num(sl, "claimed_reserved"), 1);
    assert_int_equal(num(sl, "general_used"), 2);
    json_decref(sl);
    /* The sender cancels R-N1 (a reason is required): the reserved unit comes back. */
    assert_int_equal(step(aihua, "yx-lead", "R-N1", "STEP_CANCELLED", NULL, NULL), MR_E_INVALID);
    assert_int_equal(
        step(aihua, "yx-lead", "R-N1", "STEP_CANCELLED", "\"reason\":\"patient declined\"", NULL),
        0);
    sl = slot("clinic", "neurology");
    assert_int_equal(num(sl, "claimed_reserved"), 0);
    assert_int_equal(num(sl, "general_used"), 2);
    json_decref(sl);
    /* No-show only from SCHEDULED, and it releases the general slot. */
    assert_int_equal(step(lead, "t-aihua", "R-N3", "STEP_NO_SHOW", NULL, NULL),
                     MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(step(lead, "t-aihua", "R-N3", "STEP_SCHEDULED", NULL, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-N3", "STEP_NO_SHOW", NULL, NULL), 0);
    sl = slot("clinic", "neurology");
    assert_int_equal(num(sl, "general_used"), 1);
    json_decref(sl);
    drain(aihua, 200);
    drain(lead, 200);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

/*
 * A referral given an appointment stays open past its own expiry, until a
 * day after the appointment: the patient who comes is expected and the
 * unit stays held for them.  One accepted without an appointment expires
 * as before, which shows the broker's expiry scan ran meanwhile.
 */
static void test_referral_appointment_outlives_its_expiry(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    publish_capacity(lead, "dermatology", 4, 1, 0);
    long long soon = (long long)time(NULL) * 1000 + 3000;
    const char *ids[] = {"R-EXP-APPT", "R-EXP-NONE"};
    for (int i = 0; i < 2; i++) {
        char payload[512];
        snprintf(payload, sizeof payload,
                 "{\"referral_id\":\"%s\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"L40\"}],"
                 "\"service\":\"SERVICE_SPECIALIST_CLINIC\",\"department\":\"dermatology\","
                 "\"family_doctor_contract\":true,\"expires_at_ms\":%lld}",
                 ids[i], soon);
        assert_int_equal(sendp(aihua, "yx-lead", "referral", "routine", payload, NULL), 0);
    }
    char appt[96];
    appointment(appt, sizeof appt); /* two days from now */
    assert_int_equal(step(lead, "t-aihua", "R-EXP-APPT", "STEP_ACCEPTED", appt, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-EXP-NONE", "STEP_ACCEPTED", NULL, NULL), 0);
    json_t *l = NULL;
    long long until = mrt_now_ms() + 10000;
    while ((l = open_loop("R-EXP-NONE")) != NULL && mrt_now_ms() < until) {
        json_decref(l);
        drain(aihua, 200);
    }
    assert_null(l); /* expired */
    l = open_loop("R-EXP-APPT");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "ACCEPTED");
    json_decref(l);
    json_t *sl = slot("clinic", "dermatology");
    assert_int_equal(num(sl, "claimed_reserved"), 1);
    json_decref(sl);
    assert_int_equal(step(lead, "t-aihua", "R-EXP-APPT", "STEP_ARRIVED", NULL, NULL), 0);
    /* An appointment before 1970 would claim a unit of a day in 1969 (said
     * before the state, which allows no SCHEDULED any more). */
    char why[200] = "";
    assert_int_equal(step(lead, "t-aihua", "R-EXP-APPT", "STEP_SCHEDULED",
                          "\"appointment_at_ms\":-1", why),
                     MR_E_INVALID);
    assert_non_null(strstr(why, "from 2000"));
    /* Nor one in seconds (1970: nothing claimed), or in microseconds (the
     * year 55,000: the referral would never expire). */
    long long now_s = (long long)time(NULL);
    char bad[96];
    snprintf(bad, sizeof bad, "\"appointment_at_ms\":%lld", now_s + 86400);
    assert_int_equal(step(lead, "t-aihua", "R-EXP-APPT", "STEP_SCHEDULED", bad, why),
                     MR_E_INVALID);
    assert_non_null(strstr(why, "from 2000"));
    snprintf(bad, sizeof bad, "\"appointment_at_ms\":%lld", (now_s + 86400) * 1000000);
    assert_int_equal(step(lead, "t-aihua", "R-EXP-APPT", "STEP_SCHEDULED", bad, why),
                     MR_E_INVALID);
    assert_non_null(strstr(why, "from 2000"));
    drain(aihua, 200);
    drain(lead, 200);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

/*
 * An appointment is set when the receiver accepts and moved when it
 * schedules (docs/referrals.md 1.1); any other step that carries one is
 * refused as INVALID: it would be stored, and move the expiry of a referral
 * nobody booked anything for (one arrived, cancelled or being cared for).
 */
static void test_referral_appointment_only_when_booking(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    char appt[96], why[200] = "";
    appointment(appt, sizeof appt);
    referral(aihua, "yx-lead", "R-BOOK-1", false, "SERVICE_SPECIALIST_CLINIC", "routine");
    referral(aihua, "yx-lead", "R-BOOK-2", false, "SERVICE_SPECIALIST_CLINIC", "routine");
    assert_int_equal(step(lead, "t-aihua", "R-BOOK-1", "STEP_ACCEPTED", appt, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-BOOK-1", "STEP_SCHEDULED", appt, NULL), 0);
    char cancel[160];
    snprintf(cancel, sizeof cancel, "\"reason\":\"declined\",%s", appt);
    assert_int_equal(step(aihua, "yx-lead", "R-BOOK-2", "STEP_CANCELLED", cancel, why),
                     MR_E_INVALID);
    assert_non_null(strstr(why, "STEP_ACCEPTED or STEP_SCHEDULED only"));
    assert_int_equal(step(lead, "t-aihua", "R-BOOK-1", "STEP_ARRIVED", appt, why), MR_E_INVALID);
    assert_non_null(strstr(why, "STEP_ACCEPTED or STEP_SCHEDULED only"));
    /* Refused whole: the referrals are where they were. */
    json_t *l = open_loop("R-BOOK-1");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "SCHEDULED");
    json_decref(l);
    assert_non_null(l = open_loop("R-BOOK-2"));
    json_decref(l);
    assert_int_equal(step(lead, "t-aihua", "R-BOOK-1", "STEP_ARRIVED", NULL, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-BOOK-1", "STEP_IN_PROGRESS", appt, NULL),
                     MR_E_INVALID);
    assert_int_equal(step(aihua, "yx-lead", "R-BOOK-2", "STEP_CANCELLED",
                          "\"reason\":\"declined\"", NULL),
                     0);
    drain(aihua, 200);
    drain(lead, 200);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

/*
 * The while a referral stays open after its appointment is the operator's
 * (referrals.appointment_grace_s, 2 s in this file's daemon; a day by
 * default): one whose appointment has passed expires that long after it,
 * not a day later.
 */
static void test_referral_open_after_appointment_is_a_setting(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    long long now = (long long)time(NULL) * 1000;
    char payload[512], appt[96];
    snprintf(payload, sizeof payload,
             "{\"referral_id\":\"R-GRACE\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"L40\"}],"
             "\"service\":\"SERVICE_SPECIALIST_CLINIC\",\"department\":\"dermatology\","
             "\"expires_at_ms\":%lld}",
             now + 2000);
    assert_int_equal(sendp(aihua, "yx-lead", "referral", "routine", payload, NULL), 0);
    snprintf(appt, sizeof appt, "\"appointment_at_ms\":%lld", now + 1000);
    assert_int_equal(step(lead, "t-aihua", "R-GRACE", "STEP_ACCEPTED", appt, NULL), 0);
    json_t *l = NULL;
    long long until = mrt_now_ms() + 15000;
    while ((l = open_loop("R-GRACE")) != NULL && mrt_now_ms() < until) {
        json_decref(l);
        drain(aihua, 200);
    }
    assert_null(l); /* expired: 2 s after its appointment, not a day */
    drain(aihua, 200);
    drain(lead, 200);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
}

static int on_error_code(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    (void)ev;
    (void)arg;
    return 0;
}

static void test_referral_imaging_lab_loops_and_critical_readback(void **state)
{
    (void)state;
    mr_client_t *img = client("yx-imaging"), *lab = client("yx-lab"), *aihua = client("t-aihua");
    (void)on_error_code;
    /* A township cannot report or send results. */
    assert_int_equal(sendp(aihua, "yx-imaging", "imaging_report", "routine",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_FINAL\"}", NULL),
                     MR_E_FORBIDDEN);
    assert_int_equal(sendp(aihua, "yx-lab", "lab_result", "routine",
                           "{\"placer_order_number\":\"P-1\",\"status\":\"RESULT_FINAL\"}",
                           NULL),
                     MR_E_FORBIDDEN);
    /* A report for an accession nobody ordered. */
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "routine",
                           "{\"accession_number\":\"A-NONE\",\"status\":\"REPORT_FINAL\"}",
                           NULL),
                     MR_E_ILLEGAL_TRANSITION);

    assert_int_equal(sendp(aihua, "yx-imaging", "imaging_request", "urgent",
                           "{\"accession_number\":\"A-1\",\"modality\":\"MODALITY_CT\"}", NULL),
                     0);
    /* A status that is none of the known ones is a bad message, not a step
     * out of order (docs/protocol.md 11); so is one left unset. */
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "urgent",
                           "{\"accession_number\":\"A-1\",\"status\":7}", NULL),
                     MR_E_INVALID);
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "urgent",
                           "{\"accession_number\":\"A-1\"}", NULL),
                     MR_E_INVALID);
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "urgent",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_PRELIMINARY\"}",
                           NULL),
                     0);
    json_t *l = open_loop("A-1");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "PARTIAL");
    json_decref(l);
    /* Another centre reporting on it is refused without learning where the
     * order went. */
    mr_client_t *ecg = client("yx-ecg");
    char why[200] = "";
    assert_int_equal(sendp(ecg, "t-aihua", "imaging_report", "urgent",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_FINAL\"}", why),
                     MR_E_FORBIDDEN);
    assert_string_equal(why, "order A-1 was not sent to this facility");
    mr_client_destroy(&ecg);
    /* Amending before a final report is not a step there is. */
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "urgent",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_AMENDED\"}", NULL),
                     MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "stat",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_FINAL\","
                           "\"critical_finding\":true}",
                           NULL),
                     0);
    l = open_loop("A-1");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "AWAITING_READBACK");
    json_decref(l);

    /* Lab: partial then final with a critical potassium. */
    assert_int_equal(sendp(aihua, "yx-lab", "lab_order", "routine",
                           "{\"placer_order_number\":\"P-1\",\"tests\":[{\"system\":\"LOINC\","
                           "\"code\":\"2823-3\"},{\"system\":\"LOINC\",\"code\":\"2951-2\"}]}",
                           NULL),
                     0);
    assert_int_equal(sendp(lab, "t-aihua", "lab_result", "routine",
                           "{\"placer_order_number\":\"P-1\",\"status\":\"RESULT_PARTIAL\","
                           "\"items\":[{\"test\":{\"code\":\"2951-2\"},\"value\":\"140\"}]}",
                           NULL),
                     0);
    assert_int_equal(sendp(lab, "t-aihua", "lab_result", "stat",
                           "{\"placer_order_number\":\"P-1\",\"status\":\"RESULT_FINAL\","
                           "\"items\":[{\"test\":{\"code\":\"2823-3\"},\"value\":\"6.9\","
                           "\"critical\":true}]}",
                           NULL),
                     0);
    /* Nobody reads them back within 1 s: escalated and counted. */
    long long until = mrt_now_ms() + 5000;
    while (mrt_counter(&g_d, "escalations") < 2 && mrt_now_ms() < until)
        drain(aihua, 100);
    assert_true(mrt_counter(&g_d, "escalations") >= 2);
    l = open_loop("P-1");
    assert_non_null(l);
    assert_true(json_is_true(json_object_get(l, "escalated")) ||
                strcmp(json_string_value(json_object_get(l, "state")), "AWAITING_READBACK") == 0);
    json_decref(l);
    /* The read-backs close both loops; a second read-back is refused. */
    assert_int_equal(sendp(aihua, "yx-imaging", "critical_ack", "stat",
                           "{\"accession_number\":\"A-1\",\"read_back_by\":\"Dr W\"}", NULL),
                     0);
    assert_int_equal(sendp(aihua, "yx-lab", "critical_ack", "stat",
                           "{\"placer_order_number\":\"P-1\",\"read_back_by\":\"Nurse L\"}",
                           NULL),
                     0);
    assert_int_equal(sendp(aihua, "yx-lab", "critical_ack", "stat",
                           "{\"placer_order_number\":\"P-1\"}", NULL),
                     MR_E_ILLEGAL_TRANSITION);
    assert_null(open_loop("A-1"));
    assert_null(open_loop("P-1"));
    /* An amendment after the final report is fine. */
    assert_int_equal(sendp(img, "t-aihua", "imaging_report", "routine",
                           "{\"accession_number\":\"A-1\",\"status\":\"REPORT_AMENDED\"}", NULL),
                     0);
    drain(img, 100);
    drain(lab, 100);
    mr_client_destroy(&img);
    mr_client_destroy(&lab);
    mr_client_destroy(&aihua);
}

static void test_referral_escalation_and_restart_keep_state(void **state)
{
    (void)state;
    mr_client_t *lead = client("yx-lead"), *aihua = client("t-aihua");
    long long before = mrt_counter(&g_d, "escalations");
    referral(aihua, "yx-lead", "R-STAT-1", false, "SERVICE_INPATIENT_BED", "stat");
    long long until = mrt_now_ms() + 5000;
    json_t *l = NULL;
    while (mrt_now_ms() < until) {
        json_decref(l);
        l = open_loop("R-STAT-1");
        if (l && json_is_true(json_object_get(l, "escalated")))
            break;
        drain(lead, 100);
    }
    assert_non_null(l);
    assert_true(json_is_true(json_object_get(l, "escalated")));
    json_decref(l);
    assert_true(mrt_counter(&g_d, "escalations") > before);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);

    /* After a restart the referral, its state and the ledger are all there. */
    assert_int_equal(mrt_daemon_stop(&g_d), 0);
    assert_int_equal(mrt_daemon_restart(&g_d), 0);
    l = open_loop("R-STAT-1");
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "state")), "RECEIVED");
    json_decref(l);
    json_t *sl = slot("clinic", "neurology");
    assert_int_equal(num(sl, "general_used"), 1);
    json_decref(sl);
    lead = client("yx-lead");
    assert_int_equal(step(lead, "t-aihua", "R-STAT-1", "STEP_ACCEPTED", NULL, NULL), 0);
    assert_int_equal(step(lead, "t-aihua", "R-STAT-1", "STEP_ACCEPTED", NULL, NULL),
                     MR_E_ILLEGAL_TRANSITION);
    mr_client_destroy(&lead);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_referral_up_whole_life_with_reserved_slot),
        cmocka_unit_test(test_referral_down_completes_on_follow_up),
        cmocka_unit_test(test_referral_same_number_both_ways),
        cmocka_unit_test(test_referral_unknown_step_is_said_first),
        cmocka_unit_test(test_referral_long_numbers_refused),
        cmocka_unit_test(test_referral_ledger_reserve_general_and_release),
        cmocka_unit_test(test_referral_appointment_outlives_its_expiry),
        cmocka_unit_test(test_referral_appointment_only_when_booking),
        cmocka_unit_test(test_referral_open_after_appointment_is_a_setting),
        cmocka_unit_test(test_referral_imaging_lab_loops_and_critical_readback),
        cmocka_unit_test(test_referral_escalation_and_restart_keep_state),
    };
    return cmocka_run_group_tests_name("lifecycle", tests, setup, teardown);
}
