/*
 * Unit tests for daemon/clinical.c on an SQLite database in memory, every
 * call given its time (no clock, no scan of its own): a referral step is
 * judged against the referral's deadline at the step's own time, so that
 * it gets the same answer whether or not the once-a-second expiry scan has
 * run since the deadline passed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clinical.h"
#include "mr_codec.h"

#define S_T0 1767225600000LL /* 2026-01-01T00:00:00Z */
#define S_DEADLINE (S_T0 + 3 * 86400 * 1000LL)

typedef struct {
    sqlite3 *db;
    tally_t *tally;
    clinical_t *clin;
    uint64_t seq;
} fx_t;

static int setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    int rc = SQLITE_OK;
    /* The store's messages table, which clinical_open gives a ref_key. */
    if (fx == NULL || sqlite3_open(":memory:", &fx->db) != SQLITE_OK ||
        sqlite3_exec(fx->db, "CREATE TABLE messages(seq INTEGER PRIMARY KEY)", NULL, NULL,
                     NULL) != SQLITE_OK ||
        (fx->tally = tally_new(fx->db, NULL, &rc)) == NULL ||
        (fx->clin = clinical_open(fx->db, fx->tally, &rc)) == NULL)
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fx_t *fx = *state;
    clinical_close(&fx->clin);
    tally_destroy(&fx->tally);
    int rc = sqlite3_close(fx->db);
    free(fx);
    return rc == SQLITE_OK ? 0 : -1;
}

/* t-aihua refers a patient to yx-lead at now; the referral expires at expires_ms. */
static void s_refer(fx_t *fx, const char *id, int64_t expires_ms, int64_t now)
{
    clin_facts_t f = {.kind = MEDROUTE__V1__KIND__KIND_REFERRAL,
                      .priority = MEDROUTE__V1__PRIORITY__PRIORITY_ROUTINE,
                      .direction = REF_DIR_UP,
                      .ref_id = (char *)id,
                      .service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC,
                      .unit = "cardiology",
                      .expires_ms = expires_ms};
    clin_result_t out;
    assert_int_equal(clinical_on_put(fx->clin, ++fx->seq, "t-aihua", "yx-lead", &f, now, &out),
                     SQLITE_OK);
    assert_int_equal(out.code, 0);
}

/* yx-lead, the receiver, makes a step of referral id at now. */
static clin_result_t s_step(fx_t *fx, const char *id, int step, int64_t now)
{
    clin_facts_t f = {.kind = MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE,
                      .ref_id = (char *)id,
                      .step = step,
                      .appointment_day = "2026-01-02"};
    clin_result_t out;
    assert_int_equal(clinical_on_put(fx->clin, ++fx->seq, "yx-lead", "t-aihua", &f, now, &out),
                     SQLITE_OK);
    return out;
}

/* The state of referral id among the open loops, or "none". */
static const char *s_state(fx_t *fx, const char *id, char *buf, size_t len)
{
    clin_open_t *rows = NULL;
    size_t n = 0;
    assert_int_equal(clinical_open_loops(fx->clin, NULL, INT64_MAX, &rows, &n), SQLITE_OK);
    snprintf(buf, len, "none");
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].kind, "referral") == 0 && strcmp(rows[i].key, id) == 0)
            snprintf(buf, len, "%s", rows[i].state);
    clinical_open_free(rows, n);
    return buf;
}

/* yx-lead's notice of one resource of 2026-01-02 (unit, capacity, reserved),
 * its slots starting at slot_start_ms: the answer. */
static clin_result_t s_notice(fx_t *fx, res_kind_t res, const char *unit, int64_t capacity,
                              int64_t reserved, int64_t slot_start_ms)
{
    clin_capacity_t c = {.resource = res,
                         .unit = (char *)unit,
                         .date = "2026-01-02",
                         .capacity = capacity,
                         .reserved = reserved,
                         .slot_start_ms = slot_start_ms};
    clin_facts_t f = {.kind = MEDROUTE__V1__KIND__KIND_CAPACITY, .capacity = &c, .n_capacity = 1};
    clin_result_t out;
    assert_int_equal(clinical_on_put(fx->clin, ++fx->seq, "yx-lead", "yx-medroute", &f, S_T0,
                                     &out),
                     SQLITE_OK);
    return out;
}

/* The same notice, accepted. */
static void s_publish(fx_t *fx, res_kind_t res, const char *unit, int64_t capacity,
                      int64_t reserved, int64_t slot_start_ms)
{
    assert_int_equal(s_notice(fx, res, unit, capacity, reserved, slot_start_ms).code, 0);
}

/* t-aihua refers a family-doctor patient to cardiology and yx-lead accepts:
 * the referral claims a reserved unit of clinic/cardiology/2026-01-02. */
static void s_claim_reserved(fx_t *fx, const char *id)
{
    clin_facts_t f = {.kind = MEDROUTE__V1__KIND__KIND_REFERRAL,
                      .direction = REF_DIR_UP,
                      .ref_id = (char *)id,
                      .service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC,
                      .unit = "cardiology",
                      .family_doctor = true,
                      .expires_ms = S_DEADLINE};
    clin_result_t out;
    assert_int_equal(clinical_on_put(fx->clin, ++fx->seq, "t-aihua", "yx-lead", &f, S_T0, &out),
                     SQLITE_OK);
    assert_int_equal(out.code, 0);
    out = s_step(fx, id, MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED, S_T0 + 1000);
    assert_int_equal(out.code, 0);
    assert_int_equal(out.claim, CLAIM_RESERVED);
}

/* The events of one scan at now: how many of kind, and the value of the last. */
static size_t s_scan_events(fx_t *fx, int64_t now, clin_event_kind_t kind, int64_t *value)
{
    clin_sla_t sla = {0};
    clin_event_t *ev = NULL;
    size_t n = 0, found = 0;
    assert_int_equal(clinical_scan(fx->clin, &sla, now, &ev, &n), SQLITE_OK);
    for (size_t i = 0; i < n; i++)
        if (ev[i].kind == kind) {
            found++;
            *value = ev[i].value;
        }
    clinical_events_free(ev, n);
    return found;
}

/* The all-time total of tally name (all label sets), from the open batch. */
static int64_t s_tally(fx_t *fx, const char *name)
{
    assert_int_equal(sqlite3_exec(fx->db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(fx->tally, S_T0, false), SQLITE_OK);
    assert_int_equal(sqlite3_exec(fx->db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    tally_commit(fx->tally);
    tally_row_t *rows = NULL;
    size_t n = 0;
    int64_t v = 0;
    assert_int_equal(tally_query(fx->tally, NULL, NULL, NULL, &rows, &n), SQLITE_OK);
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].name, name) == 0)
            v += rows[i].value;
    tally_rows_free(rows, n);
    return v;
}

/*
 * A step that comes after the deadline, before the scan has recorded the
 * expiry, gets the answer it gets after the scan: the referral is EXPIRED,
 * and nothing is written.  One at the deadline itself is taken (the scan
 * expires a referral whose expiry is before its time, not at it).
 */
static void test_clinical_step_after_the_deadline_is_refused_before_the_scan(void **state)
{
    fx_t *fx = *state;
    const int arrived = MEDROUTE__V1__REFERRAL_STEP__STEP_ARRIVED;
    char buf[32];
    s_refer(fx, "R-LATE", S_DEADLINE, S_T0);
    s_refer(fx, "R-ON-TIME", S_DEADLINE, S_T0);
    const char *ids[] = {"R-LATE", "R-ON-TIME"};
    clin_result_t r;
    for (int i = 0; i < 2; i++) {
        r = s_step(fx, ids[i], MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED, S_T0 + 1000);
        assert_int_equal(r.code, 0);
        assert_int_equal(r.ref_state, REF_ACCEPTED);
    }

    r = s_step(fx, "R-ON-TIME", arrived, S_DEADLINE);
    assert_int_equal(r.code, 0);
    assert_int_equal(r.ref_state, REF_ARRIVED);

    clin_result_t before = s_step(fx, "R-LATE", arrived, S_DEADLINE + 1);
    assert_int_equal(before.code, MR_E_ILLEGAL_TRANSITION);
    assert_int_equal(before.ref_state, REF_EXPIRED);
    assert_string_equal(before.reason, "referral R-LATE is EXPIRED: the referral is closed");
    assert_string_equal(s_state(fx, "R-LATE", buf, sizeof buf), "ACCEPTED"); /* nothing written */

    /* The scan at the same time records the expiry; the step's answer is the same. */
    clin_sla_t sla = {0};
    clin_event_t *ev = NULL;
    size_t n = 0;
    assert_int_equal(clinical_scan(fx->clin, &sla, S_DEADLINE + 1, &ev, &n), SQLITE_OK);
    size_t expired = 0;
    for (size_t i = 0; i < n; i++)
        expired += ev[i].kind == EV_REFERRAL_EXPIRED && strcmp(ev[i].key, "t-aihua/R-LATE") == 0;
    assert_int_equal(expired, 1);
    assert_int_equal(n, 1); /* R-ON-TIME arrived: no longer subject to expiry */
    clinical_events_free(ev, n);
    assert_string_equal(s_state(fx, "R-LATE", buf, sizeof buf), "none");
    clin_result_t after = s_step(fx, "R-LATE", arrived, S_DEADLINE + 1000);
    assert_int_equal(after.code, before.code);
    assert_int_equal(after.ref_state, before.ref_state);
    assert_string_equal(after.reason, before.reason);
}

/*
 * At its cut-off a resource's unclaimed reserve goes to general use and is
 * reported (an event: the log line, the watch event and reserve_releases);
 * a resource with nothing unclaimed (its reserve all claimed, or none)
 * releases nothing and is not reported.
 */
static void test_clinical_cutoff_reports_only_a_reserve_released(void **state)
{
    fx_t *fx = *state;
    const int64_t start = S_T0 + 86400 * 1000LL;
    s_publish(fx, RES_CLINIC, "cardiology", 10, 1, start); /* claimed below */
    s_publish(fx, RES_BED, "neurology", 10, 0, start);     /* none reserved */
    s_publish(fx, RES_EXAM, "CT", 10, 3, start);           /* 3 left unclaimed */
    s_claim_reserved(fx, "R-FD");
    int64_t units = 0;
    assert_int_equal(s_scan_events(fx, start - 1, EV_RESERVE_RELEASED, &units), 0);
    assert_int_equal(s_scan_events(fx, start, EV_RESERVE_RELEASED, &units), 1);
    assert_int_equal(units, 3);
    assert_int_equal(s_tally(fx, "reserve_released_unclaimed_units_total"), 3);
    /* Each resource is past its cut-off once: a later scan finds none. */
    assert_int_equal(s_scan_events(fx, start + 1000, EV_RESERVE_RELEASED, &units), 0);
    clin_slot_t *rows = NULL;
    size_t n = 0;
    assert_int_equal(clinical_slots(fx->clin, "2026-01-02", &rows, &n), SQLITE_OK);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].released_at_ms, start);
        assert_int_equal(rows[i].ledger.released, rows[i].resource == RES_EXAM ? 3 : 0);
    }
    clinical_slots_free(rows, n);
}

/*
 * The receiver's delivery ack makes a REQUESTED referral RECEIVED, but not
 * one past its expiry at the ack's time, before the scan has recorded the
 * expiry: the referral stays REQUESTED and the scan makes it EXPIRED.  An
 * ack at the deadline itself is in time.
 */
static void test_clinical_delivery_after_the_deadline_is_not_received(void **state)
{
    fx_t *fx = *state;
    char buf[32];
    s_refer(fx, "R-LATE", S_DEADLINE, S_T0);
    s_refer(fx, "R-ON-TIME", S_DEADLINE, S_T0);
    assert_int_equal(clinical_on_delivered(fx->clin, "t-aihua/R-ON-TIME", S_DEADLINE), SQLITE_OK);
    assert_string_equal(s_state(fx, "R-ON-TIME", buf, sizeof buf), "RECEIVED");
    assert_int_equal(clinical_on_delivered(fx->clin, "t-aihua/R-LATE", S_DEADLINE + 1),
                     SQLITE_OK);
    assert_string_equal(s_state(fx, "R-LATE", buf, sizeof buf), "REQUESTED");
    int64_t age = 0;
    assert_int_equal(s_scan_events(fx, S_DEADLINE + 1, EV_REFERRAL_EXPIRED, &age), 2);
    assert_string_equal(s_state(fx, "R-LATE", buf, sizeof buf), "none");
    assert_string_equal(s_state(fx, "R-ON-TIME", buf, sizeof buf), "none");
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(fx->db,
                                        "SELECT group_concat(from_state || '>' || to_state)"
                                        " FROM referral_steps WHERE ref_key = 't-aihua/R-LATE'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    char steps[32];
    snprintf(steps, sizeof steps, "%d>%d", REF_REQUESTED, REF_EXPIRED);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), steps);
    sqlite3_finalize(st);
}

/*
 * A notice may not take back what the ledger has given: the reserved units
 * referrals claimed, the reserve the cut-off released to general use, the
 * general units referrals hold.  Each refusal says which; one after the
 * cut-off no longer blames referrals for units they do not hold.
 */
static void test_clinical_notice_below_the_ledger_says_why(void **state)
{
    fx_t *fx = *state;
    const int64_t start = S_T0 + 86400 * 1000LL;
    s_publish(fx, RES_CLINIC, "cardiology", 10, 2, start);
    s_publish(fx, RES_EXAM, "CT", 10, 3, start);
    s_claim_reserved(fx, "R-FD");
    clin_result_t r = s_notice(fx, RES_CLINIC, "cardiology", 10, 0, start);
    assert_int_equal(r.code, MR_E_INVALID);
    assert_string_equal(r.reason,
                        "reserve for clinic/cardiology/2026-01-02 is below what accepted"
                        " referrals hold");
    r = s_notice(fx, RES_CLINIC, "cardiology", 2, 2, start);
    assert_int_equal(r.code, 0); /* no general unit is held */
    int64_t units = 0;
    assert_int_equal(s_scan_events(fx, start, EV_RESERVE_RELEASED, &units), 2);
    r = s_notice(fx, RES_EXAM, "CT", 10, 2, start);
    assert_int_equal(r.code, MR_E_INVALID);
    assert_string_equal(r.reason, "reserve for exam/CT/2026-01-02 is below what referrals"
                                  " claimed and its cut-off released to general use");
    r = s_notice(fx, RES_CLINIC, "cardiology", 2, 1, start);
    assert_int_equal(r.code, MR_E_INVALID);
    assert_string_equal(r.reason, "reserve for clinic/cardiology/2026-01-02 is below what"
                                  " referrals claimed and its cut-off released to general use");
    assert_int_equal(s_notice(fx, RES_EXAM, "CT", 12, 4, start).code, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_clinical_step_after_the_deadline_is_refused_before_the_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clinical_cutoff_reports_only_a_reserve_released,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_clinical_delivery_after_the_deadline_is_not_received,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_clinical_notice_below_the_ledger_says_why, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
