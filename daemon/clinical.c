/*
 * clinical.c - referral lifecycles, the reserved-capacity ledger, imaging and
 * lab loops, read-backs and escalations, as tables of the message store.
 *
 * Thread: the store thread only, inside the store's open transaction (see
 * store.c).  Owns its prepared statements and the department label values
 * in use, which follow the transaction (clinical_commit, clinical_rollback).
 *
 * Invariants
 *   1. A referral row exists for every stored Referral; its state changes
 *      only through referral_next() (referral.c), in the transaction that
 *      stores the ReferralUpdate, the delivery ack or the expiry.
 *   2. A referral holds at most one claim (claim != CLAIM_NONE implies
 *      resource_key is set), and the capacity row's counters include it;
 *      a release gives back exactly what was taken (slots.c).
 *   3. A loop row exists for every stored ImagingRequest / LabOrder; reports
 *      and results only move it forward (OPEN -> PARTIAL -> FINAL -> AMENDED).
 *   4. Every escalation is raised once: its *_escalated_ms column is set in
 *      the same statement that reports it.
 *
 * Keys: a referral is "<source>/<referral_id>"; a loop is
 * "img/<orderer>/<accession>" or "lab/<orderer>/<placer order number>"; a
 * resource is "<clinic|bed|exam>/<unit>/<YYYY-MM-DD>".
 */
#include "clinical.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mr_codec.h"
#include "strmap.h"

enum { LOOP_OPEN = 0, LOOP_PARTIAL, LOOP_FINAL, LOOP_AMENDED };
enum { LOOP_IMAGING = 1, LOOP_LAB = 2 };


/*
 * The referrals table, keyed by its text key (WITHOUT ROWID: one B-tree,
 * not a table plus a key index).  Its indexes are partial on columns that
 * change only when a referral enters or leaves the sets the scans need, so
 * the step taken for every delivered referral (REQUESTED -> RECEIVED)
 * rewrites the row and no index:
 *   live = 1          while the referral can still expire (s_live());
 *   accept_due_ms     set while it awaits an answer (s_awaiting()), NULL after.
 */
#define S_REFERRALS_TABLE(name)                                                                    \
    "CREATE TABLE IF NOT EXISTS " name "("                                                         \
    " ref_key TEXT PRIMARY KEY, referral_id TEXT NOT NULL, source TEXT NOT NULL,"                 \
    " dest TEXT NOT NULL, direction INTEGER NOT NULL, service INTEGER NOT NULL, unit TEXT,"       \
    " family_doctor INTEGER NOT NULL, priority INTEGER NOT NULL, state INTEGER NOT NULL,"         \
    " created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"      \
    " accepted_ms INTEGER, appointment_ms INTEGER, resource_key TEXT,"                            \
    " claim INTEGER NOT NULL DEFAULT 0, escalated_ms INTEGER, msg_seq INTEGER NOT NULL,"          \
    " accept_due_ms INTEGER, live INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID;"

#define S_REFERRALS_COLUMNS                                                                        \
    "ref_key, referral_id, source, dest, direction, service, unit, family_doctor, priority,"      \
    " state, created_ms, updated_ms, expires_ms, accepted_ms, appointment_ms, resource_key,"      \
    " claim, escalated_ms, msg_seq, accept_due_ms"

/*
 * Stores made before the table above: a rowid table with an index on
 * referral_id and indexes partial on state.  Rebuilt once, in one
 * transaction; live and accept_due_ms follow s_live() and s_awaiting().
 */
static const char *const s_migrate_referrals =
    "BEGIN IMMEDIATE;"
    S_REFERRALS_TABLE("referrals_v2")
    "INSERT INTO referrals_v2(" S_REFERRALS_COLUMNS ", live) SELECT " S_REFERRALS_COLUMNS
    ", state IN (1, 2, 3, 5) FROM referrals;"
    "UPDATE referrals_v2 SET accept_due_ms = NULL WHERE state NOT IN (1, 2);"
    "DROP TABLE referrals;"
    "ALTER TABLE referrals_v2 RENAME TO referrals;"
    "COMMIT;";

static const char *const s_schema =
    S_REFERRALS_TABLE("referrals")
    /* The scans run every second: each reads only the rows that are due,
     * through a partial index, however many referrals wait. */
    "CREATE INDEX IF NOT EXISTS referrals_awaiting ON referrals(accept_due_ms)"
    " WHERE escalated_ms IS NULL AND accept_due_ms IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS referrals_live ON referrals(expires_ms) WHERE live = 1;"
    "CREATE TABLE IF NOT EXISTS referral_steps(ref_key TEXT NOT NULL, msg_seq INTEGER,"
    " step INTEGER NOT NULL, actor INTEGER NOT NULL, from_state INTEGER NOT NULL,"
    " to_state INTEGER NOT NULL, at_ms INTEGER NOT NULL);"
    /* referral_steps is an audit trail: written on every step, read rarely,
     * so it has no index to keep up. */
    "CREATE TABLE IF NOT EXISTS capacity(resource_key TEXT PRIMARY KEY,"
    " resource INTEGER NOT NULL, unit TEXT NOT NULL, date TEXT NOT NULL,"
    " capacity INTEGER NOT NULL, reserved INTEGER NOT NULL,"
    " claimed_reserved INTEGER NOT NULL DEFAULT 0, general_used INTEGER NOT NULL DEFAULT 0,"
    " released INTEGER NOT NULL DEFAULT 0, slot_start_ms INTEGER NOT NULL,"
    " released_at_ms INTEGER, updated_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS capacity_cutoff ON capacity(slot_start_ms)"
    " WHERE released_at_ms IS NULL;"
    "CREATE TABLE IF NOT EXISTS loops(loop_key TEXT PRIMARY KEY, kind INTEGER NOT NULL,"
    " ref_id TEXT NOT NULL, orderer TEXT NOT NULL, filler TEXT NOT NULL, modality TEXT,"
    " priority INTEGER NOT NULL, state INTEGER NOT NULL, items INTEGER NOT NULL DEFAULT 0,"
    " opened_ms INTEGER NOT NULL, first_result_ms INTEGER, final_ms INTEGER,"
    " updated_ms INTEGER NOT NULL, critical INTEGER NOT NULL DEFAULT 0, critical_at_ms INTEGER,"
    " readback_ms INTEGER, escalated_ms INTEGER, readback_escalated_ms INTEGER,"
    " due_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS loops_state ON loops(state, opened_ms);"
    "CREATE INDEX IF NOT EXISTS loops_due ON loops(due_ms) WHERE escalated_ms IS NULL AND state < 2;"
    "CREATE INDEX IF NOT EXISTS loops_readback ON loops(critical_at_ms)"
    " WHERE critical = 1 AND readback_ms IS NULL AND readback_escalated_ms IS NULL;"
    "CREATE TABLE IF NOT EXISTS visit_reports(facility TEXT NOT NULL, date TEXT NOT NULL,"
    " grassroots INTEGER NOT NULL, outpatient INTEGER NOT NULL, emergency INTEGER NOT NULL,"
    " insured_in INTEGER NOT NULL, insured_out INTEGER NOT NULL, inpatient INTEGER NOT NULL,"
    " fund INTEGER NOT NULL, fund_out INTEGER NOT NULL, tcm INTEGER NOT NULL,"
    " msg_seq INTEGER NOT NULL, PRIMARY KEY(facility, date));";

enum {
    Q_REF_INSERT = 0,
    Q_REF_BY_KEY,
    Q_REF_UPDATE,
    Q_REF_STATE,
    Q_REF_RECEIVE,
    Q_REF_STEP,
    Q_CAP_GET,
    Q_CAP_PUT,
    Q_CAP_LEDGER,
    Q_LOOP_INSERT,
    Q_LOOP_GET,
    Q_LOOP_UPDATE,
    Q_COUNT
};

static const char *const s_sql[Q_COUNT] = {
    [Q_REF_INSERT] = "INSERT INTO referrals(ref_key, referral_id, source, dest, direction, service,"
                     " unit, family_doctor, priority, state, created_ms, updated_ms, expires_ms,"
                     " msg_seq, accept_due_ms)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14)"
                     " ON CONFLICT(ref_key) DO NOTHING",
    [Q_REF_BY_KEY] = "SELECT ref_key, source, dest, direction, service, unit, family_doctor,"
                     " state, resource_key, claim, priority, created_ms, expires_ms FROM referrals"
                     " WHERE ref_key = ?1",
    [Q_REF_UPDATE] = "UPDATE referrals SET state = ?2, updated_ms = ?3,"
                     " accepted_ms = CASE WHEN ?2 = 3 THEN ?3 ELSE accepted_ms END,"
                     " appointment_ms = coalesce(?4, appointment_ms),"
                     " expires_ms = max(expires_ms, coalesce(?9, expires_ms)),"
                     " resource_key = ?5, claim = ?6, live = ?7,"
                     " accept_due_ms = CASE WHEN ?8 THEN accept_due_ms END WHERE ref_key = ?1",
    /* A step that changes neither the ledger nor the indexed columns. */
    [Q_REF_STATE] = "UPDATE referrals SET state = ?2, updated_ms = ?3 WHERE ref_key = ?1",
    /* The broker's step for a delivered referral, without reading it first;
     * none past its expiry (s_expired). */
    [Q_REF_RECEIVE] = "UPDATE referrals SET state = ?2, updated_ms = ?3 WHERE ref_key = ?1"
                      " AND state = ?4 AND expires_ms >= ?3",
    [Q_REF_STEP] = "INSERT INTO referral_steps(ref_key, msg_seq, step, actor, from_state,"
                   " to_state, at_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [Q_CAP_GET] = "SELECT capacity, reserved, claimed_reserved, general_used, released,"
                  " released_at_ms IS NOT NULL FROM capacity WHERE resource_key = ?1",
    /* A notice that leaves reserve unclaimed and unreleased (more reserve
     * than was claimed and released, e.g. a larger one after the cut-off)
     * makes the resource due again (released_at_ms NULL): the next scan
     * past the cut-off releases those units, and only those (the released
     * ones stay released).  Left set, they stayed reserved for good. */
    [Q_CAP_PUT] = "INSERT INTO capacity(resource_key, resource, unit, date, capacity, reserved,"
                  " slot_start_ms, updated_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                  " ON CONFLICT(resource_key) DO UPDATE SET capacity = ?5, reserved = ?6,"
                  " slot_start_ms = ?7, updated_ms = ?8,"
                  " released_at_ms = CASE WHEN ?6 > claimed_reserved + released THEN NULL"
                  " ELSE released_at_ms END",
    [Q_CAP_LEDGER] = "UPDATE capacity SET claimed_reserved = ?2, general_used = ?3,"
                     " released = ?4, updated_ms = ?5 WHERE resource_key = ?1",
    [Q_LOOP_INSERT] = "INSERT INTO loops(loop_key, kind, ref_id, orderer, filler, modality,"
                      " priority, state, items, opened_ms, updated_ms, due_ms)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?9, ?10)"
                      " ON CONFLICT(loop_key) DO NOTHING",
    [Q_LOOP_GET] = "SELECT filler, state, critical, readback_ms, coalesce(modality, ''), opened_ms,"
                   " critical_at_ms FROM loops WHERE loop_key = ?1",
    [Q_LOOP_UPDATE] = "UPDATE loops SET state = ?2, updated_ms = ?3,"
                      " first_result_ms = coalesce(first_result_ms, ?3),"
                      " final_ms = CASE WHEN ?2 >= 2 THEN coalesce(final_ms, ?3) ELSE final_ms END,"
                      " critical = max(critical, ?4),"
                      " critical_at_ms = CASE WHEN ?4 = 1 THEN coalesce(critical_at_ms, ?3)"
                      " ELSE critical_at_ms END,"
                      " readback_ms = coalesce(readback_ms, ?5) WHERE loop_key = ?1",
};

/* A department label value: at most 32 bytes (tally_label_value) and the NUL. */
#define S_DEPT_LEN 40

struct clinical_t {
    sqlite3 *db;
    tally_t *tally;
    sqlite3_stmt *q[Q_COUNT];
    /* RECEIVED is, in every direction, a plain step from REQUESTED (no
     * ledger effect, no count, same index sets): Q_REF_RECEIVE applies it. */
    bool receive_plain;
    /* The department label values in use (s_dept_label), at most
     * MR_DEPARTMENT_LABELS_MAX: read from the tallies at open, then grown
     * as new ones come.  Those admitted in the open batch are journalled
     * (a subset of depts, so never more than its bound): clinical_rollback
     * takes them out again, as its tallies are, clinical_commit keeps them. */
    strmap_t *depts;
    char admitted[MR_DEPARTMENT_LABELS_MAX][S_DEPT_LEN];
    size_t n_admitted;
};

static const char *const s_dir_names[] = {"lateral", "up", "down"};
static const char *const s_prio_names[] = {"routine", "urgent", "stat"};

static const char *s_prio(int p)
{
    return p >= 0 && p <= 2 ? s_prio_names[p] : "routine";
}

#define S_TRY(call)                                                                                \
    do {                                                                                           \
        int s_try_rc_ = (call);                                                                    \
        if (s_try_rc_ != SQLITE_OK)                                                                \
            return s_try_rc_;                                                                      \
    } while (0)

static sqlite3_stmt *s_q(clinical_t *self, int which)
{
    sqlite3_stmt *st = self->q[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* Runs a statement that returns no row. */
static int s_exec(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int s_text(sqlite3_stmt *st, int i, const char *v)
{
    return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

static char *s_col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t ? (const char *)t : "");
}

static int s_refuse(clin_result_t *out, int code, const char *fmt, const char *a, const char *b)
{
    out->code = code;
    snprintf(out->reason, sizeof out->reason, fmt, a ? a : "", b ? b : "");
    return SQLITE_OK;
}

void clinical_facts_free(clin_facts_t *f)
{
    if (f == NULL)
        return;
    free(f->ref_id);
    free(f->unit);
    free(f->appointment_day);
    free(f->modality);
    for (size_t i = 0; i < f->n_capacity; i++) {
        free(f->capacity[i].unit);
        free(f->capacity[i].date);
    }
    free(f->capacity);
    free(f->visit_date);
    free(f);
}

/* States in which a referral can still expire (the referrals_live index). */
static bool s_live(ref_state_t s)
{
    return s == REF_REQUESTED || s == REF_RECEIVED || s == REF_ACCEPTED || s == REF_SCHEDULED;
}

/* States in which a referral awaits the receiver's answer (referrals_awaiting). */
static bool s_awaiting(ref_state_t s)
{
    return s == REF_REQUESTED || s == REF_RECEIVED;
}

/* The department values the tallies hold, each label set starting
 * `department="` (tally_labels sorts the names), first used first. */
static int s_depts_load(clinical_t *self)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        self->db,
        "SELECT substr(labels, 13, instr(substr(labels, 13), '\"') - 1) AS dept"
        " FROM tallies WHERE name = 'referrals_requested_total'"
        " AND substr(labels, 1, 12) = 'department=\"' AND dept != ?2"
        " GROUP BY dept ORDER BY min(day), dept LIMIT ?1",
        -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 1, MR_DEPARTMENT_LABELS_MAX);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, MR_DEPARTMENT_OTHER, -1, SQLITE_STATIC);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *d = (const char *)sqlite3_column_text(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        rc = d == NULL || strmap_put(self->depts, d, (size_t)n, 0) == 0 ? SQLITE_OK
                                                                        : SQLITE_NOMEM;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/*
 * Stores written before Q_CAP_PUT made a resource due again: reserve a
 * notice added after the cut-off stayed unreleased for good.  Due again,
 * it is released (and counted) by the next scan.  Written only when such a
 * resource exists: opening must not need the disk otherwise.
 */
static int s_cap_repair(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT 1 FROM capacity WHERE released_at_ms IS NOT NULL"
                                " AND reserved > claimed_reserved + released LIMIT 1",
                                -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW)
        rc = sqlite3_exec(db,
                          "UPDATE capacity SET released_at_ms = NULL WHERE released_at_ms IS NOT"
                          " NULL AND reserved > claimed_reserved + released",
                          NULL, NULL, NULL);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

clinical_t *clinical_open(sqlite3 *db, tally_t *tally, int *rc_out)
{
    clinical_t *self = calloc(1, sizeof *self);
    int rc = SQLITE_NOMEM;
    if (self == NULL)
        goto fail;
    self->db = db;
    self->tally = tally;
    /* messages.ref_key links a stored Referral to its lifecycle row. */
    rc = sqlite3_exec(db, "SELECT ref_key FROM messages LIMIT 0", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        rc = sqlite3_exec(db, "ALTER TABLE messages ADD COLUMN ref_key TEXT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* A referrals table without the `live` column is the old one. */
    bool old = sqlite3_table_column_metadata(db, NULL, "referrals", NULL, NULL, NULL, NULL, NULL,
                                             NULL) == SQLITE_OK &&
               sqlite3_table_column_metadata(db, NULL, "referrals", "live", NULL, NULL, NULL,
                                             NULL, NULL) != SQLITE_OK;
    if (old) {
        rc = sqlite3_exec(db, s_migrate_referrals, NULL, NULL, NULL);
        if (rc != SQLITE_OK && !sqlite3_get_autocommit(db))
            (void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_exec(db, s_schema, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* Not fatal: a store that cannot be written now (a full disk) still
     * serves its reads, and is repaired at a later open. */
    (void)s_cap_repair(db);
    for (int i = 0; i < Q_COUNT; i++) {
        rc = sqlite3_prepare_v3(db, s_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &self->q[i], NULL);
        if (rc != SQLITE_OK)
            goto fail;
    }
    if ((self->depts = strmap_new()) == NULL) {
        rc = SQLITE_NOMEM;
        goto fail;
    }
    rc = s_depts_load(self);
    if (rc != SQLITE_OK)
        goto fail;
    self->receive_plain = true;
    for (ref_dir_t d = REF_DIR_LATERAL; d <= REF_DIR_DOWN; d++) {
        ref_transition_t t;
        const char *why;
        self->receive_plain =
            self->receive_plain &&
            referral_next(REF_REQUESTED, MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED, ACTOR_BROKER,
                          d, &t, &why) == 0 &&
            t.to == REF_RECEIVED && t.ledger == LEDGER_NONE &&
            s_live(REF_REQUESTED) == s_live(REF_RECEIVED) &&
            s_awaiting(REF_REQUESTED) == s_awaiting(REF_RECEIVED);
    }
    *rc_out = SQLITE_OK;
    return self;
fail:
    clinical_close(&self);
    *rc_out = rc;
    return NULL;
}

void clinical_close(clinical_t **self_p)
{
    clinical_t *self = *self_p;
    if (self == NULL)
        return;
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(self->q[i]);
    strmap_destroy(&self->depts);
    free(self);
    *self_p = NULL;
}

/* ---- the ledger ------------------------------------------------------------ */

static res_kind_t s_resource_of(int service)
{
    switch (service) {
    case MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC: return RES_CLINIC;
    case MEDROUTE__V1__SERVICE_TYPE__SERVICE_INPATIENT_BED: return RES_BED;
    case MEDROUTE__V1__SERVICE_TYPE__SERVICE_EXAM: return RES_EXAM;
    default: return RES_KIND_COUNT;
    }
}

static void s_resource_key(char *out, size_t len, res_kind_t r, const char *unit, const char *day)
{
    snprintf(out, len, "%s/%s/%s", slots_kind_name(r), unit ? unit : "", day ? day : "");
}

/* Reads a ledger; *found = false when the resource was never published;
 * *past_cutoff when its unclaimed reserve has been released already. */
static int s_ledger_get(clinical_t *self, const char *key, ledger_t *l, bool *found,
                        bool *past_cutoff)
{
    sqlite3_stmt *st = s_q(self, Q_CAP_GET);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    if (*found) {
        l->capacity = sqlite3_column_int64(st, 0);
        l->reserved = sqlite3_column_int64(st, 1);
        l->claimed_reserved = sqlite3_column_int64(st, 2);
        l->general_used = sqlite3_column_int64(st, 3);
        l->released = sqlite3_column_int64(st, 4);
        if (past_cutoff)
            *past_cutoff = sqlite3_column_int(st, 5) != 0;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Counts units of the reserve of resource key ("<resource>/<unit>/<day>")
 * that went to general use unclaimed. */
static int s_tally_released(clinical_t *self, const char *key, int64_t units)
{
    if (units <= 0)
        return SQLITE_OK;
    const char *slash = strchr(key, '/');
    char labels[64];
    snprintf(labels, sizeof labels, "resource=\"%.*s\"", (int)(slash ? slash - key : 0), key);
    return tally_add(self->tally, "reserve_released_unclaimed_units_total", labels, units);
}

static int s_ledger_put(clinical_t *self, const char *key, const ledger_t *l, int64_t now)
{
    sqlite3_stmt *st = s_q(self, Q_CAP_LEDGER);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_int64(st, 2, l->claimed_reserved));
    S_TRY(sqlite3_bind_int64(st, 3, l->general_used));
    S_TRY(sqlite3_bind_int64(st, 4, l->released));
    S_TRY(sqlite3_bind_int64(st, 5, now));
    return s_exec(st);
}

/* Why a new notice c cannot replace the ledger old, or NULL if it can: it
 * may not take back what referrals hold, nor the reserve the cut-off has
 * released to general use (general referrals may hold those units). */
static const char *s_capacity_shrinks(const ledger_t *old, const clin_capacity_t *c)
{
    if (c->reserved < old->claimed_reserved)
        return "reserve for %.80s is below what accepted referrals hold%s";
    if (c->reserved < old->claimed_reserved + old->released)
        return "reserve for %.80s is below what referrals claimed and its cut-off released to"
               " general use%s";
    if (c->capacity - c->reserved < old->general_used - old->released)
        return "capacity for %.80s is below what accepted referrals hold%s";
    return NULL;
}

static int s_on_capacity(clinical_t *self, const clin_facts_t *f, int64_t now, clin_result_t *out)
{
    /* Check every item before changing anything (and counting anything). */
    for (size_t i = 0; i < f->n_capacity; i++) {
        const clin_capacity_t *c = &f->capacity[i];
        if (c->resource >= RES_KIND_COUNT || c->unit == NULL || c->unit[0] == '\0' ||
            c->date == NULL || strlen(c->date) != 10)
            return s_refuse(out, MR_E_INVALID,
                            "capacity item: resource, unit and date (YYYY-MM-DD) are required%s%s",
                            NULL, NULL);
        /* A new notice cannot take back what referrals already hold. */
        char key[160];
        s_resource_key(key, sizeof key, c->resource, c->unit, c->date);
        ledger_t old;
        bool found;
        S_TRY(s_ledger_get(self, key, &old, &found, NULL));
        const char *why = found ? s_capacity_shrinks(&old, c) : NULL;
        if (why != NULL) {
            key[mr_utf8_cut(key, 80)] = '\0'; /* the unit may be Chinese: cut whole */
            return s_refuse(out, MR_E_INVALID, why, key, NULL);
        }
    }
    for (size_t i = 0; i < f->n_capacity; i++) {
        const clin_capacity_t *c = &f->capacity[i];
        char key[160];
        s_resource_key(key, sizeof key, c->resource, c->unit, c->date);
        /* Offered units count once per resource: a new notice counts the change. */
        ledger_t old = {0};
        bool found;
        S_TRY(s_ledger_get(self, key, &old, &found, NULL));
        char labels[64];
        snprintf(labels, sizeof labels, "resource=\"%s\"", slots_kind_name(c->resource));
        S_TRY(tally_add(self->tally, "capacity_offered_units_total", labels,
                        c->capacity - (found ? old.capacity : 0)));
        S_TRY(tally_add(self->tally, "reserve_offered_units_total", labels,
                        c->reserved - (found ? old.reserved : 0)));
        sqlite3_stmt *st = s_q(self, Q_CAP_PUT);
        S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_int(st, 2, (int)c->resource));
        S_TRY(sqlite3_bind_text(st, 3, c->unit, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_text(st, 4, c->date, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_int64(st, 5, c->capacity));
        S_TRY(sqlite3_bind_int64(st, 6, c->reserved));
        S_TRY(sqlite3_bind_int64(st, 7, c->slot_start_ms));
        S_TRY(sqlite3_bind_int64(st, 8, now));
        S_TRY(s_exec(st));
    }
    return SQLITE_OK;
}

/* ---- referrals ---------------------------------------------------------------- */

/* The department label of a referral's tallies: its department (or
 * modality) as a label value, or MR_DEPARTMENT_OTHER for a new one once
 * MR_DEPARTMENT_LABELS_MAX are in use.  The field is the sender's free
 * text: unbounded, it would grow the tallies, the broker's memory and the
 * metrics page with every value a faulty system sends (a patient's name,
 * a note).  Each referral folded is counted at its request. */
static int s_dept_label(clinical_t *self, char *out, size_t len, const char *unit,
                        bool *folded)
{
    tally_label_value(out, len, unit && unit[0] ? unit : "-");
    size_t n = strlen(out);
    *folded = false;
    if (strmap_get(self->depts, out, n) >= 0 || strcmp(out, MR_DEPARTMENT_OTHER) == 0)
        return SQLITE_OK;
    if (strmap_size(self->depts) >= MR_DEPARTMENT_LABELS_MAX) {
        snprintf(out, len, "%s", MR_DEPARTMENT_OTHER);
        *folded = true;
        return SQLITE_OK;
    }
    assert(self->n_admitted < MR_DEPARTMENT_LABELS_MAX && n < S_DEPT_LEN);
    if (strmap_put(self->depts, out, n, 0) != 0)
        return SQLITE_NOMEM;
    memcpy(self->admitted[self->n_admitted++], out, n + 1);
    return SQLITE_OK;
}

void clinical_commit(clinical_t *self)
{
    self->n_admitted = 0;
}

void clinical_rollback(clinical_t *self)
{
    for (size_t i = 0; i < self->n_admitted; i++)
        (void)strmap_del(self->depts, self->admitted[i], strlen(self->admitted[i]));
    self->n_admitted = 0;
}

/* The label set of a referral's tallies; *folded as s_dept_label's. */
static int s_ref_labels(clinical_t *self, char *out, size_t len, ref_dir_t dir,
                        const char *source, const char *dest, const char *unit, int priority,
                        bool *folded)
{
    char dept[S_DEPT_LEN];
    S_TRY(s_dept_label(self, dept, sizeof dept, unit, folded));
    const char *const pairs[] = {"department", dept,
                                 "destination", dest,
                                 "direction", s_dir_names[dir <= REF_DIR_DOWN ? dir : 0],
                                 "priority", s_prio(priority),
                                 "source", source};
    /* Facility ids are at most 64 bytes, the department 32: 320 bytes hold it. */
    (void)tally_labels(out, len, 5, pairs);
    return SQLITE_OK;
}


static int s_on_referral(clinical_t *self, uint64_t seq, const char *source, const char *dest,
                         const clin_facts_t *f, int64_t now, clin_result_t *out)
{
    if (f->ref_id == NULL || f->ref_id[0] == '\0')
        return s_refuse(out, MR_E_INVALID, "referral.referral_id is required%s%s", NULL, NULL);
    char key[200];
    snprintf(key, sizeof key, "%s/%s", source, f->ref_id);
    sqlite3_stmt *st = s_q(self, Q_REF_INSERT);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_text(st, 2, f->ref_id, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_text(st, 3, source, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_text(st, 4, dest, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_int(st, 5, (int)f->direction));
    S_TRY(sqlite3_bind_int(st, 6, f->service));
    S_TRY(s_text(st, 7, f->unit));
    S_TRY(sqlite3_bind_int(st, 8, f->family_doctor));
    S_TRY(sqlite3_bind_int(st, 9, f->priority));
    S_TRY(sqlite3_bind_int(st, 10, REF_REQUESTED));
    S_TRY(sqlite3_bind_int64(st, 11, now));
    S_TRY(sqlite3_bind_int64(st, 12, f->expires_ms));
    S_TRY(sqlite3_bind_int64(st, 13, (sqlite3_int64)seq));
    S_TRY(f->due_ms ? sqlite3_bind_int64(st, 14, f->due_ms) : sqlite3_bind_null(st, 14));
    S_TRY(s_exec(st));
    if (sqlite3_changes(self->db) != 1)
        return s_refuse(out, MR_E_INVALID, "referral %s from %s exists already", f->ref_id, source);
    char labels[320];
    bool folded;
    S_TRY(s_ref_labels(self, labels, sizeof labels, f->direction, source, dest, f->unit,
                       f->priority, &folded));
    S_TRY(tally_add(self->tally, "referrals_requested_total", labels, 1));
    if (folded)
        S_TRY(tally_add(self->tally, "referral_departments_folded_total", "", 1));
    out->ref_state = REF_REQUESTED; /* messages.ref_key was written by the INSERT (store.c) */
    return SQLITE_OK;
}

typedef struct {
    char key[200];
    char source[80];
    char dest[80];
    ref_dir_t direction;
    int service;
    char unit[80];
    bool family_doctor;
    ref_state_t state;
    char resource_key[160];
    claim_t claim;
    int priority;
    int64_t created_ms;
    int64_t expires_ms;
} s_ref_t;

static void s_copy(char *dst, size_t len, sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, len, "%s", t ? (const char *)t : "");
}

static int s_ref_by_key(clinical_t *self, const char *key, s_ref_t *r, bool *found)
{
    sqlite3_stmt *st = s_q(self, Q_REF_BY_KEY);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    if (*found) {
        s_copy(r->key, sizeof r->key, st, 0);
        s_copy(r->source, sizeof r->source, st, 1);
        s_copy(r->dest, sizeof r->dest, st, 2);
        r->direction = (ref_dir_t)sqlite3_column_int(st, 3);
        r->service = sqlite3_column_int(st, 4);
        s_copy(r->unit, sizeof r->unit, st, 5);
        r->family_doctor = sqlite3_column_int(st, 6) != 0;
        r->state = (ref_state_t)sqlite3_column_int(st, 7);
        s_copy(r->resource_key, sizeof r->resource_key, st, 8);
        r->claim = (claim_t)sqlite3_column_int(st, 9);
        r->priority = sqlite3_column_int(st, 10);
        r->created_ms = sqlite3_column_int64(st, 11);
        r->expires_ms = sqlite3_column_int64(st, 12);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/*
 * The referral ref_id between facilities a and b, sent by either: its key
 * is "<sender>/<ref_id>", so at most two lookups by key, the one sent by a
 * first.
 */
static int s_ref_find(clinical_t *self, const char *ref_id, const char *a, const char *b,
                      s_ref_t *r, bool *found)
{
    const char *pair[2][2] = {{a, b}, {b, a}};
    for (int i = 0; i < 2; i++) {
        char key[200];
        snprintf(key, sizeof key, "%s/%s", pair[i][0], ref_id);
        S_TRY(s_ref_by_key(self, key, r, found));
        if (*found && strcmp(r->source, pair[i][0]) == 0 && strcmp(r->dest, pair[i][1]) == 0)
            return SQLITE_OK;
    }
    *found = false;
    return SQLITE_OK;
}

/* Counts what a step did: outcomes, acceptance time, claims and releases. */
static int s_tally_step(clinical_t *self, const s_ref_t *r, ref_state_t to, claim_t claimed,
                        claim_t released, int64_t now)
{
    static const struct {
        ref_state_t state;
        const char *outcome;
    } outcomes[] = {{REF_ACCEPTED, "accepted"},   {REF_REJECTED, "rejected"},
                    {REF_COMPLETED, "completed"}, {REF_CANCELLED, "cancelled"},
                    {REF_NO_SHOW, "no_show"},     {REF_EXPIRED, "expired"}};
    char labels[320], l2[400];
    bool folded; /* counted at the request */
    S_TRY(s_ref_labels(self, labels, sizeof labels, r->direction, r->source, r->dest, r->unit,
                       r->priority, &folded));
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++) {
        if (outcomes[i].state != to)
            continue;
        snprintf(l2, sizeof l2, "%s,outcome=\"%s\"", labels, outcomes[i].outcome);
        S_TRY(tally_add(self->tally, "referral_outcomes_total", l2, 1));
    }
    if (to == REF_ACCEPTED) {
        snprintf(l2, sizeof l2, "direction=\"%s\",priority=\"%s\"",
                 s_dir_names[r->direction <= REF_DIR_DOWN ? r->direction : 0], s_prio(r->priority));
        S_TRY(tally_observe(self->tally, "referral_acceptance_seconds", l2,
                            (now - r->created_ms) / 1000));
    }
    res_kind_t res = s_resource_of(r->service);
    const char *rname = res < RES_KIND_COUNT ? slots_kind_name(res) : "none";
    if (to == REF_ACCEPTED && r->direction == REF_DIR_UP) {
        /* claim="none": nothing published for it, or over capacity */
        snprintf(l2, sizeof l2, "claim=\"%s\",family_doctor=\"%s\",resource=\"%s\"",
                 slots_claim_name(claimed), r->family_doctor ? "yes" : "no", rname);
        S_TRY(tally_add(self->tally, "slot_claims_total", l2, 1));
    }
    if (released != CLAIM_NONE) {
        snprintf(l2, sizeof l2, "claim=\"%s\",resource=\"%s\"", slots_claim_name(released),
                 rname);
        S_TRY(tally_add(self->tally, "slot_claims_released_total", l2, 1));
    }
    return SQLITE_OK;
}

/* The audit row of one step (referral_steps). */
static int s_step_row(clinical_t *self, const char *key, uint64_t seq, int step,
                      ref_actor_t actor, ref_state_t from, ref_state_t to, int64_t now)
{
    sqlite3_stmt *st = s_q(self, Q_REF_STEP);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    S_TRY(seq ? sqlite3_bind_int64(st, 2, (sqlite3_int64)seq) : sqlite3_bind_null(st, 2));
    S_TRY(sqlite3_bind_int(st, 3, step));
    S_TRY(sqlite3_bind_int(st, 4, (int)actor));
    S_TRY(sqlite3_bind_int(st, 5, (int)from));
    S_TRY(sqlite3_bind_int(st, 6, (int)to));
    S_TRY(sqlite3_bind_int64(st, 7, now));
    return s_exec(st);
}

/* Moves a referral through one step and applies its ledger effect. */
static int s_apply_step(clinical_t *self, s_ref_t *r, uint64_t seq, int step, ref_actor_t actor,
                        const ref_transition_t *t, int64_t appointment_ms, int64_t open_until_ms,
                        const char *day, int64_t now, clin_result_t *out)
{
    claim_t claimed = CLAIM_NONE, released = CLAIM_NONE;
    if (t->ledger == LEDGER_CLAIM && r->direction == REF_DIR_UP && r->claim == CLAIM_NONE) {
        res_kind_t res = s_resource_of(r->service);
        if (res < RES_KIND_COUNT) {
            char key[160];
            s_resource_key(key, sizeof key, res, r->unit, day);
            ledger_t l;
            bool found;
            S_TRY(s_ledger_get(self, key, &l, &found, NULL));
            if (found) {
                r->claim = slots_claim(&l, r->family_doctor);
                claimed = r->claim;
                S_TRY(s_ledger_put(self, key, &l, now));
                snprintf(r->resource_key, sizeof r->resource_key, "%s", key);
                out->claim = (int)r->claim;
            }
        }
    } else if (t->ledger == LEDGER_RELEASE && r->claim != CLAIM_NONE && r->resource_key[0]) {
        ledger_t l;
        bool found, past_cutoff = false;
        S_TRY(s_ledger_get(self, r->resource_key, &l, &found, &past_cutoff));
        if (found) {
            slots_release(&l, r->claim);
            /* After the cut-off a reserved unit given back is general at once,
             * and counted as the scan counts what it releases: the tally then
             * sums the ledgers' `released` (the reserve that went unused). */
            if (past_cutoff)
                S_TRY(s_tally_released(self, r->resource_key, slots_release_unclaimed(&l)));
            S_TRY(s_ledger_put(self, r->resource_key, &l, now));
        }
        out->claim = (int)r->claim;
        out->claim_released = true;
        released = r->claim;
        r->claim = CLAIM_NONE;
    }
    if (actor != ACTOR_BROKER || t->to == REF_EXPIRED)
        S_TRY(s_tally_step(self, r, t->to, claimed, released, now));
    sqlite3_stmt *st;
    if (t->ledger == LEDGER_NONE && appointment_ms <= 0 && t->to != REF_ACCEPTED &&
        s_live(r->state) == s_live(t->to) && s_awaiting(r->state) == s_awaiting(t->to)) {
        /* The common case (every delivered referral): no index to rewrite. */
        st = s_q(self, Q_REF_STATE);
        S_TRY(sqlite3_bind_text(st, 1, r->key, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_int(st, 2, (int)t->to));
        S_TRY(sqlite3_bind_int64(st, 3, now));
        S_TRY(s_exec(st));
    } else {
        st = s_q(self, Q_REF_UPDATE);
        S_TRY(sqlite3_bind_text(st, 1, r->key, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_int(st, 2, (int)t->to));
        S_TRY(sqlite3_bind_int64(st, 3, now));
        S_TRY(appointment_ms > 0 ? sqlite3_bind_int64(st, 4, appointment_ms)
                                 : sqlite3_bind_null(st, 4));
        /* A referral given an appointment stays open until a while after it
         * (open_until_ms), however soon its own expiry: an expected patient
         * is expected. */
        S_TRY(open_until_ms > 0 ? sqlite3_bind_int64(st, 9, open_until_ms)
                                : sqlite3_bind_null(st, 9));
        S_TRY(r->resource_key[0] ? sqlite3_bind_text(st, 5, r->resource_key, -1, SQLITE_STATIC)
                                 : sqlite3_bind_null(st, 5));
        S_TRY(sqlite3_bind_int(st, 6, (int)r->claim));
        S_TRY(sqlite3_bind_int(st, 7, s_live(t->to)));
        S_TRY(sqlite3_bind_int(st, 8, s_awaiting(t->to)));
        S_TRY(s_exec(st));
    }
    S_TRY(s_step_row(self, r->key, seq, step, actor, r->state, t->to, now));
    r->state = t->to;
    out->ref_state = (int)t->to;
    return SQLITE_OK;
}

/* Past its expiry (expires_ms < now, as the scan compares) a referral is
 * EXPIRED at a step's own time, whether or not the scan, once a second, has
 * recorded it yet: else a step just after the deadline was taken (an
 * arrival, an acceptance, the delivery's RECEIVED) and one a second later
 * refused. */
static bool s_expired(const s_ref_t *r, int64_t now)
{
    return s_live(r->state) && r->expires_ms < now;
}

static int s_on_update(clinical_t *self, uint64_t seq, const char *source, const char *dest,
                       const clin_facts_t *f, int64_t now, clin_result_t *out)
{
    if (f->ref_id == NULL || f->ref_id[0] == '\0')
        return s_refuse(out, MR_E_INVALID, "referral_update.referral_id is required%s%s", NULL,
                        NULL);
    s_ref_t r;
    bool found;
    /* Referral numbers are unique per sender only: the lead's own RF-7 to a
     * township and the township's RF-7 to the lead can both be open.  The
     * step says which one is meant: a step the receiver makes looks first
     * for the referral sent to the updater. */
    bool receiver_step = referral_step_actor(f->step) == (int)ACTOR_RECEIVER;
    S_TRY(s_ref_find(self, f->ref_id, receiver_step ? dest : source,
                     receiver_step ? source : dest, &r, &found));
    /* An unknown step is said before a missing referral (referral_next's
     * order, docs/referrals.md 1.1). */
    if (!found && referral_step_actor(f->step) < 0)
        return s_refuse(out, MR_E_ILLEGAL_TRANSITION, "referral %s is NONE: unknown referral step%s",
                        f->ref_id, NULL);
    if (!found)
        return s_refuse(out, MR_E_ILLEGAL_TRANSITION,
                        "no referral %s between these facilities (state NONE)%s", f->ref_id, NULL);
    ref_actor_t actor = strcmp(source, r.source) == 0 ? ACTOR_SENDER : ACTOR_RECEIVER;
    /* Only judged here (a refusal writes nothing); the scan records it and
     * raises its escalation. */
    if (s_expired(&r, now))
        r.state = REF_EXPIRED;
    ref_transition_t t;
    const char *why = NULL;
    if (referral_next(r.state, f->step, actor, r.direction, &t, &why) != 0) {
        out->code = MR_E_ILLEGAL_TRANSITION;
        snprintf(out->reason, sizeof out->reason, "referral %.*s is %s: %s",
                 (int)mr_utf8_cut(f->ref_id, 60), f->ref_id, referral_state_name(r.state),
                 why ? why : "step not allowed");
        out->ref_state = (int)r.state;
        return SQLITE_OK;
    }
    if (t.needs_reason && !f->has_reason)
        return s_refuse(out, MR_E_INVALID, "this step needs a reason%s%s", NULL, NULL);
    if (t.needs_summary && !f->has_summary)
        return s_refuse(out, MR_E_INVALID,
                        "completing needs the discharge or visit summary reference%s%s", NULL,
                        NULL);
    return s_apply_step(self, &r, seq, f->step, actor, &t, f->appointment_ms, f->open_until_ms,
                        f->appointment_day, now, out);
}

int clinical_on_delivered(clinical_t *self, const char *key, int64_t now_ms)
{
    if (key == NULL || key[0] == '\0')
        return SQLITE_OK;
    if (self->receive_plain) {
        sqlite3_stmt *st = s_q(self, Q_REF_RECEIVE);
        S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
        S_TRY(sqlite3_bind_int(st, 2, REF_RECEIVED));
        S_TRY(sqlite3_bind_int64(st, 3, now_ms));
        S_TRY(sqlite3_bind_int(st, 4, REF_REQUESTED));
        S_TRY(s_exec(st));
        if (sqlite3_changes(self->db) != 1)
            return SQLITE_OK; /* no such referral, already past REQUESTED, or expired */
        return s_step_row(self, key, 0, MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED, ACTOR_BROKER,
                          REF_REQUESTED, REF_RECEIVED, now_ms);
    }
    s_ref_t r;
    bool found;
    S_TRY(s_ref_by_key(self, key, &r, &found));
    if (!found || s_expired(&r, now_ms))
        return SQLITE_OK; /* past its expiry: the scan makes it EXPIRED */
    ref_transition_t t;
    const char *why;
    if (referral_next(r.state, MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED, ACTOR_BROKER,
                      r.direction, &t, &why) != 0)
        return SQLITE_OK; /* already past RECEIVED (accepted before the ack was committed) */
    clin_result_t ignored = {0};
    return s_apply_step(self, &r, 0, MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED, ACTOR_BROKER, &t,
                        0, 0, NULL, now_ms, &ignored);
}

/* ---- imaging and lab loops ------------------------------------------------------ */

static int s_on_order(clinical_t *self, const char *prefix, int kind, const char *source,
                      const char *dest, const clin_facts_t *f, int64_t now, clin_result_t *out)
{
    if (f->ref_id == NULL || f->ref_id[0] == '\0')
        return s_refuse(out, MR_E_INVALID, "%s number is required%s",
                        kind == LOOP_IMAGING ? "accession" : "placer order", NULL);
    char key[200];
    snprintf(key, sizeof key, "%s/%s/%s", prefix, source, f->ref_id);
    sqlite3_stmt *st = s_q(self, Q_LOOP_INSERT);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_int(st, 2, kind));
    S_TRY(sqlite3_bind_text(st, 3, f->ref_id, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_text(st, 4, source, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_text(st, 5, dest, -1, SQLITE_STATIC));
    S_TRY(s_text(st, 6, f->modality));
    S_TRY(sqlite3_bind_int(st, 7, f->priority));
    S_TRY(sqlite3_bind_int(st, 8, f->items));
    S_TRY(sqlite3_bind_int64(st, 9, now));
    S_TRY(sqlite3_bind_int64(st, 10, f->due_ms ? f->due_ms : INT64_MAX));
    S_TRY(s_exec(st));
    if (sqlite3_changes(self->db) != 1)
        return s_refuse(out, MR_E_INVALID, "order %s from %s exists already", f->ref_id, source);
    char labels[200];
    if (kind == LOOP_IMAGING) {
        snprintf(labels, sizeof labels, "modality=\"%s\",source=\"%s\"",
                 f->modality ? f->modality : "UNSPECIFIED", source);
        return tally_add(self->tally, "imaging_requests_total", labels, 1);
    }
    snprintf(labels, sizeof labels, "source=\"%s\"", source);
    S_TRY(tally_add(self->tally, "lab_orders_total", labels, 1));
    return tally_add(self->tally, "lab_tests_ordered_total", labels, f->items);
}

/* A report/result (from the filler to the orderer) or a read-back (from the
 * orderer to the filler) moving a loop forward. */
static int s_on_result(clinical_t *self, const char *prefix, const char *orderer,
                       const char *filler, const clin_facts_t *f, bool readback, int64_t now,
                       clin_result_t *out)
{
    if (f->ref_id == NULL || f->ref_id[0] == '\0')
        return s_refuse(out, MR_E_INVALID, "the %s number is required%s",
                        strcmp(prefix, "img") == 0 ? "accession" : "placer order", NULL);
    char key[200];
    snprintf(key, sizeof key, "%s/%s/%s", prefix, orderer, f->ref_id);
    sqlite3_stmt *st = s_q(self, Q_LOOP_GET);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return rc;
        return s_refuse(out, MR_E_ILLEGAL_TRANSITION, "no open order %s from %s", f->ref_id,
                        orderer);
    }
    char loop_filler[80];
    s_copy(loop_filler, sizeof loop_filler, st, 0);
    int state = sqlite3_column_int(st, 1);
    bool critical = sqlite3_column_int(st, 2) != 0;
    bool read_back = sqlite3_column_type(st, 3) != SQLITE_NULL;
    char modality[24];
    s_copy(modality, sizeof modality, st, 4);
    int64_t opened_ms = sqlite3_column_int64(st, 5);
    int64_t critical_at_ms = sqlite3_column_int64(st, 6);
    sqlite3_reset(st);
    /* Not naming the facility the order went to: that is the orderer's
     * business, not the wrong reporter's. */
    if (strcmp(loop_filler, filler) != 0)
        return s_refuse(out, MR_E_FORBIDDEN, "order %s was not sent to this facility%s",
                        f->ref_id, NULL);
    int next = state;
    if (readback) {
        if (!critical || read_back)
            return s_refuse(out, MR_E_ILLEGAL_TRANSITION,
                            "order %s has no critical value awaiting read-back%s", f->ref_id,
                            NULL);
    } else {
        bool is_final = f->report_status == MEDROUTE__V1__REPORT_STATUS__REPORT_FINAL;
        bool is_prelim = f->report_status == MEDROUTE__V1__REPORT_STATUS__REPORT_PRELIMINARY;
        bool is_amend = f->report_status == MEDROUTE__V1__REPORT_STATUS__REPORT_AMENDED;
        /* Lab ResultStatus uses the same numbers: PARTIAL=1, FINAL=2, CORRECTED=3. */
        if (is_prelim && state <= LOOP_PARTIAL)
            next = LOOP_PARTIAL;
        else if (is_final && state <= LOOP_PARTIAL)
            next = LOOP_FINAL;
        else if (is_amend && state >= LOOP_FINAL)
            next = LOOP_AMENDED;
        else
            return s_refuse(out, MR_E_ILLEGAL_TRANSITION,
                            "order %s cannot take this report status now%s", f->ref_id, NULL);
    }
    /* Counts: reports/results, turnaround at the first final, critical values
     * and read-back delay. */
    bool imaging = strcmp(prefix, "img") == 0;
    char labels[96];
    if (imaging)
        snprintf(labels, sizeof labels, "modality=\"%s\"", modality[0] ? modality : "UNSPECIFIED");
    else
        labels[0] = '\0';
    if (readback) {
        char l2[64];
        snprintf(l2, sizeof l2, "kind=\"%s\"", imaging ? "imaging" : "lab");
        S_TRY(tally_observe(self->tally, "critical_readback_seconds", l2,
                            (now - critical_at_ms) / 1000));
    } else {
        S_TRY(tally_add(self->tally, imaging ? "imaging_reports_total" : "lab_results_total",
                        labels, 1));
        if (!imaging)
            S_TRY(tally_add(self->tally, "lab_result_items_total", "", f->items));
        if (next == LOOP_FINAL && state < LOOP_FINAL)
            S_TRY(tally_observe(self->tally,
                                imaging ? "imaging_turnaround_seconds" : "lab_turnaround_seconds",
                                labels, (now - opened_ms) / 1000));
        if (f->critical && !critical) {
            char l2[64];
            snprintf(l2, sizeof l2, "kind=\"%s\"", imaging ? "imaging" : "lab");
            S_TRY(tally_add(self->tally, "critical_values_total", l2, 1));
        }
    }
    st = s_q(self, Q_LOOP_UPDATE);
    S_TRY(sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC));
    S_TRY(sqlite3_bind_int(st, 2, next));
    S_TRY(sqlite3_bind_int64(st, 3, now));
    S_TRY(sqlite3_bind_int(st, 4, !readback && f->critical ? 1 : 0));
    S_TRY(readback ? sqlite3_bind_int64(st, 5, now) : sqlite3_bind_null(st, 5));
    return s_exec(st);
}

/* A facility's figures for a day: a later report for the same day replaces it. */
static int s_on_visits(clinical_t *self, uint64_t seq, const char *source, const clin_facts_t *f,
                       clin_result_t *out)
{
    if (f->visit_date == NULL || strlen(f->visit_date) != 10)
        return s_refuse(out, MR_E_INVALID, "visit_tally.date (YYYY-MM-DD) is required%s%s", NULL,
                        NULL);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        self->db,
        "INSERT OR REPLACE INTO visit_reports(facility, date, grassroots, outpatient, emergency,"
        " insured_in, insured_out, inpatient, fund, fund_out, tcm, msg_seq)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, f->visit_date, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 3, f->grassroots);
    for (int i = 0; i < CLIN_VISIT_FIELDS && rc == SQLITE_OK; i++)
        rc = sqlite3_bind_int64(st, 4 + i, f->visits[i]);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 12, (sqlite3_int64)seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int clinical_visits(clinical_t *self, const char *first, const char *last, clin_visits_t *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        self->db,
        /* total(), not sum(): sum() fails the query on an integer overflow
         * (rows stored before intake bounded the amounts); total() adds in
         * floating point, and reading it as an integer saturates. */
        "SELECT grassroots, count(*), total(outpatient), total(emergency), total(insured_in),"
        " total(insured_out), total(inpatient), total(fund), total(fund_out), total(tcm)"
        " FROM visit_reports WHERE date BETWEEN ?1 AND ?2 GROUP BY grassroots",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_bind_text(st, 1, first ? first : "0000-00-00", -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, last ? last : "9999-99-99", -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK) /* the binds */
        rc = sqlite3_step(st);
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        int g = sqlite3_column_int(st, 0) ? 0 : -1;
        out->reports += sqlite3_column_int64(st, 1);
        for (int i = 0; i < CLIN_VISIT_FIELDS; i++) {
            int64_t v = sqlite3_column_int64(st, 2 + i);
            out->sum[1][i] = tally_add_sat(out->sum[1][i], v);
            if (g == 0)
                out->sum[0][i] = tally_add_sat(out->sum[0][i], v);
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int clinical_on_put(clinical_t *self, uint64_t seq, const char *source, const char *dest,
                    const clin_facts_t *f, int64_t now_ms, clin_result_t *out)
{
    memset(out, 0, sizeof *out);
    switch (f->kind) {
    case MEDROUTE__V1__KIND__KIND_REFERRAL:
        return s_on_referral(self, seq, source, dest, f, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE:
        return s_on_update(self, seq, source, dest, f, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST:
        return s_on_order(self, "img", LOOP_IMAGING, source, dest, f, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_LAB_ORDER:
        return s_on_order(self, "lab", LOOP_LAB, source, dest, f, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_IMAGING_REPORT:
        return s_on_result(self, "img", dest, source, f, false, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_LAB_RESULT:
        return s_on_result(self, "lab", dest, source, f, false, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_CRITICAL_ACK:
        /* The ref_id says which kind: an accession or a placer number. */
        return s_on_result(self, f->imaging ? "img" : "lab", source, dest, f, true, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_CAPACITY:
        return s_on_capacity(self, f, now_ms, out);
    case MEDROUTE__V1__KIND__KIND_VISIT_TALLY:
        return s_on_visits(self, seq, source, f, out);
    default:
        return SQLITE_OK;
    }
}

/* ---- scans -------------------------------------------------------------------------- */

static int s_event(clin_event_t **events, size_t *n, clin_event_kind_t kind, const char *key,
                   const char *facility, int64_t value)
{
    /* (counted by clinical_scan once all events are in) */
    if (*n % 32 == 0) {
        clin_event_t *e = realloc(*events, (*n + 32) * sizeof *e);
        if (e == NULL)
            return SQLITE_NOMEM;
        *events = e;
    }
    clin_event_t *e = &(*events)[(*n)++];
    e->kind = kind;
    e->key = strdup(key ? key : "");
    e->facility = strdup(facility ? facility : "");
    e->value = value;
    return e->key && e->facility ? SQLITE_OK : SQLITE_NOMEM;
}

/* Runs an UPDATE ... RETURNING key, facility, value and records each row. */
static int s_scan(clinical_t *self, const char *sql, int64_t now, int64_t a, int64_t b,
                  clin_event_kind_t kind, clin_event_t **events, size_t *n)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v3(self->db, sql, -1, 0, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_bind_int64(st, 1, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, a);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, b);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rc = s_event(events, n, kind, (const char *)sqlite3_column_text(st, 0),
                     (const char *)sqlite3_column_text(st, 1), sqlite3_column_int64(st, 2));
        if (rc != SQLITE_OK)
            break;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_OK ? SQLITE_OK : rc;
}

/* Referrals past their expiry before the patient arrived: EXPIRED, claims released. */
static int s_expire_referrals(clinical_t *self, int64_t now, clin_event_t **events, size_t *n)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(self->db,
                                "SELECT ref_key FROM referrals WHERE live = 1 AND expires_ms < ?1"
                                " LIMIT 200",
                                /* (referrals_live: only the expired are read) */
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_bind_int64(st, 1, now);
    char (*due)[200] = malloc(200 * sizeof *due);
    if (due == NULL) {
        sqlite3_finalize(st);
        return SQLITE_NOMEM;
    }
    int nd = 0;
    if (rc == SQLITE_OK) /* the bind */
        rc = sqlite3_step(st);
    for (; rc == SQLITE_ROW && nd < 200; rc = sqlite3_step(st))
        s_copy(due[nd++], sizeof due[0], st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        free(due);
        return rc;
    }
    rc = SQLITE_OK;
    for (int i = 0; i < nd && rc == SQLITE_OK; i++) {
        s_ref_t r;
        bool found;
        rc = s_ref_by_key(self, due[i], &r, &found);
        ref_transition_t t;
        const char *why;
        if (rc != SQLITE_OK || !found ||
            referral_next(r.state, MEDROUTE__V1__REFERRAL_STEP__STEP_EXPIRED, ACTOR_BROKER,
                          r.direction, &t, &why) != 0)
            continue;
        clin_result_t res = {0};
        rc = s_apply_step(self, &r, 0, MEDROUTE__V1__REFERRAL_STEP__STEP_EXPIRED, ACTOR_BROKER, &t,
                          0, 0, NULL, now, &res);
        if (rc == SQLITE_OK)
            rc = s_event(events, n, EV_REFERRAL_EXPIRED, r.key, r.dest, now - r.created_ms);
    }
    free(due);
    return rc;
}

/* Reserve cut-off: unclaimed reserved units become general. */
static int s_release_reserves(clinical_t *self, int64_t now, int64_t cutoff_ms,
                              clin_event_t **events, size_t *n)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(self->db,
                                "SELECT resource_key FROM capacity WHERE released_at_ms IS NULL"
                                " AND slot_start_ms - ?2 <= ?1 LIMIT 200",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_bind_int64(st, 1, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, cutoff_ms);
    char keys[200][160];
    int nk = 0;
    if (rc == SQLITE_OK) /* the binds */
        rc = sqlite3_step(st);
    for (; rc == SQLITE_ROW && nk < 200; rc = sqlite3_step(st))
        s_copy(keys[nk++], sizeof keys[0], st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return rc;
    for (int i = 0; i < nk; i++) {
        ledger_t l;
        bool found;
        S_TRY(s_ledger_get(self, keys[i], &l, &found, NULL));
        if (!found)
            continue;
        int64_t freed = slots_release_unclaimed(&l);
        S_TRY(s_ledger_put(self, keys[i], &l, now));
        sqlite3_stmt *u;
        rc = sqlite3_prepare_v2(self->db,
                                "UPDATE capacity SET released_at_ms = ?2 WHERE resource_key = ?1",
                                -1, &u, NULL);
        if (rc != SQLITE_OK)
            return rc;
        rc = sqlite3_bind_text(u, 1, keys[i], -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(u, 2, now);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(u);
        sqlite3_finalize(u);
        if (rc != SQLITE_DONE)
            return rc;
        /* Nothing left unclaimed (the reserve all claimed, or none): the
         * resource is past its cut-off all the same, but nothing went to
         * general use, so there is nothing to report or count. */
        if (freed > 0)
            S_TRY(s_event(events, n, EV_RESERVE_RELEASED, keys[i], "", freed));
    }
    return SQLITE_OK;
}

int clinical_scan(clinical_t *self, const clin_sla_t *sla, int64_t now_ms, clin_event_t **events,
                  size_t *n_events)
{
    /* Urgent (1) and stat (2) referrals not accepted within their limits. */
    /* Due times were set when each referral and order came in (facts.c),
     * so every scan reads only what is due through its partial index. */
    (void)sla;
    S_TRY(s_scan(self,
                 "UPDATE referrals SET escalated_ms = ?1 WHERE escalated_ms IS NULL"
                 " AND accept_due_ms IS NOT NULL AND accept_due_ms < ?1"
                 " RETURNING ref_key, dest, ?1 - created_ms + 0 * ?2 + 0 * ?3",
                 now_ms, 0, 0, EV_ACCEPT_OVERDUE, events, n_events));
    S_TRY(s_scan(self,
                 "UPDATE loops SET escalated_ms = ?1 WHERE escalated_ms IS NULL AND state < 2"
                 " AND due_ms < ?1 AND kind = 1 RETURNING loop_key, filler,"
                 " ?1 - opened_ms + 0 * ?2 + 0 * ?3",
                 now_ms, 0, 0, EV_IMAGING_OVERDUE, events, n_events));
    S_TRY(s_scan(self,
                 "UPDATE loops SET escalated_ms = ?1 WHERE escalated_ms IS NULL AND state < 2"
                 " AND due_ms < ?1 AND kind = 2 RETURNING loop_key, filler,"
                 " ?1 - opened_ms + 0 * ?2 + 0 * ?3",
                 now_ms, 0, 0, EV_LAB_OVERDUE, events, n_events));
    S_TRY(s_scan(self,
                 "UPDATE loops SET readback_escalated_ms = ?1 WHERE critical = 1"
                 " AND readback_ms IS NULL AND readback_escalated_ms IS NULL"
                 " AND critical_at_ms < ?1 - ?2"
                 " RETURNING loop_key, orderer, ?1 - critical_at_ms + 0 * ?3",
                 now_ms, (int64_t)sla->critical_readback_s * 1000, 0, EV_READBACK_OVERDUE, events,
                 n_events));
    S_TRY(s_expire_referrals(self, now_ms, events, n_events));
    S_TRY(s_release_reserves(self, now_ms, (int64_t)sla->reserve_cutoff_s * 1000, events,
                             n_events));
    for (size_t i = 0; i < *n_events; i++) {
        const clin_event_t *e = &(*events)[i];
        char labels[200];
        if (e->kind == EV_RESERVE_RELEASED) {
            S_TRY(s_tally_released(self, e->key, e->value));
        } else if (e->kind != EV_REFERRAL_EXPIRED) {
            snprintf(labels, sizeof labels, "kind=\"%s\"", clinical_event_name(e->kind));
            S_TRY(tally_add(self->tally, "escalations_total", labels, 1));
        }
    }
    return SQLITE_OK;
}

void clinical_events_free(clin_event_t *events, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(events[i].key);
        free(events[i].facility);
    }
    free(events);
}

const char *clinical_event_name(clin_event_kind_t k)
{
    switch (k) {
    case EV_ACCEPT_OVERDUE: return "referral_accept_overdue";
    case EV_IMAGING_OVERDUE: return "imaging_report_overdue";
    case EV_LAB_OVERDUE: return "lab_result_overdue";
    case EV_READBACK_OVERDUE: return "critical_readback_overdue";
    case EV_RESERVE_RELEASED: return "reserve_released";
    case EV_REFERRAL_EXPIRED: return "referral_expired";
    }
    return "?";
}

/* ---- operator queries ---------------------------------------------------------------- */

int clinical_slots(clinical_t *self, const char *date, clin_slot_t **rows, size_t *n)
{
    sqlite3_stmt *st;
    /* Every day ever published stays in the ledger: past 1,000 rows the
     * listing keeps the latest days (today's and the coming ones), in date
     * order, not the oldest. */
    int rc = sqlite3_prepare_v2(self->db,
                                "SELECT * FROM (SELECT resource_key, resource, unit, date, capacity,"
                                " reserved, claimed_reserved, general_used, released,"
                                " released_at_ms FROM capacity WHERE ?1 IS NULL OR date = ?1"
                                " ORDER BY date DESC, resource DESC, unit DESC LIMIT 1000)"
                                " ORDER BY date, resource, unit",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    if (date && date[0])
        rc = sqlite3_bind_text(st, 1, date, -1, SQLITE_STATIC);
    *rows = NULL;
    *n = 0;
    if (rc == SQLITE_OK) /* the binds */
        rc = sqlite3_step(st);
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        if (*n % 32 == 0) {
            clin_slot_t *r = realloc(*rows, (*n + 32) * sizeof *r);
            if (r == NULL) {
                rc = SQLITE_NOMEM;
                break;
            }
            *rows = r;
        }
        clin_slot_t *r = &(*rows)[(*n)++];
        r->resource_key = s_col(st, 0);
        r->resource = (res_kind_t)sqlite3_column_int(st, 1);
        r->unit = s_col(st, 2);
        r->date = s_col(st, 3);
        r->ledger.capacity = sqlite3_column_int64(st, 4);
        r->ledger.reserved = sqlite3_column_int64(st, 5);
        r->ledger.claimed_reserved = sqlite3_column_int64(st, 6);
        r->ledger.general_used = sqlite3_column_int64(st, 7);
        r->ledger.released = sqlite3_column_int64(st, 8);
        r->released_at_ms = sqlite3_column_int64(st, 9);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void clinical_slots_free(clin_slot_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].resource_key);
        free(rows[i].unit);
        free(rows[i].date);
    }
    free(rows);
}

int clinical_open_loops(clinical_t *self, const char *facility, int64_t older_than_ms,
                        clin_open_t **rows, size_t *n)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        self->db,
        "SELECT 'referral', referral_id, source, dest, state, priority, created_ms, updated_ms,"
        " escalated_ms IS NOT NULL FROM referrals WHERE state IN (1, 2, 3, 5, 6, 7)"
        " AND (?1 IS NULL OR source = ?1 OR dest = ?1) AND created_ms <= ?2"
        " UNION ALL "
        "SELECT CASE kind WHEN 1 THEN 'imaging' ELSE 'lab' END, ref_id, orderer, filler,"
        " -1 - state, priority, opened_ms, updated_ms,"
        " escalated_ms IS NOT NULL OR readback_escalated_ms IS NOT NULL FROM loops"
        " WHERE (state < 2 OR (critical = 1 AND readback_ms IS NULL))"
        " AND (?1 IS NULL OR orderer = ?1 OR filler = ?1) AND opened_ms <= ?2"
        " ORDER BY 7 LIMIT 1000",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    if (facility && facility[0])
        rc = sqlite3_bind_text(st, 1, facility, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, older_than_ms);
    *rows = NULL;
    *n = 0;
    if (rc == SQLITE_OK) /* the binds */
        rc = sqlite3_step(st);
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        if (*n % 32 == 0) {
            clin_open_t *r = realloc(*rows, (*n + 32) * sizeof *r);
            if (r == NULL) {
                rc = SQLITE_NOMEM;
                break;
            }
            *rows = r;
        }
        clin_open_t *r = &(*rows)[(*n)++];
        r->kind = s_col(st, 0);
        r->key = s_col(st, 1);
        r->from = s_col(st, 2);
        r->to = s_col(st, 3);
        int state = sqlite3_column_int(st, 4);
        static const char *const loop_states[] = {"OPEN", "PARTIAL", "FINAL", "AMENDED"};
        const char *sname = state >= 0 ? referral_state_name((ref_state_t)state)
                                       : loop_states[(-1 - state) & 3];
        /* A final report still open is waiting for its critical read-back. */
        if (state < 0 && -1 - state >= LOOP_FINAL)
            sname = "AWAITING_READBACK";
        r->state = strdup(sname);
        r->priority = sqlite3_column_int(st, 5);
        r->opened_ms = sqlite3_column_int64(st, 6);
        r->updated_ms = sqlite3_column_int64(st, 7);
        r->escalated = sqlite3_column_int(st, 8) != 0;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void clinical_open_free(clin_open_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].kind);
        free(rows[i].key);
        free(rows[i].from);
        free(rows[i].to);
        free(rows[i].state);
    }
    free(rows);
}
