/*
 * clinical.h - what the broker knows of the medicine it carries, kept in the
 * store: referral lifecycles, the reserved-capacity ledger, imaging and lab
 * loops, critical-value read-backs and service-level escalations.
 *
 * The loop thread extracts the facts of a message (clin_facts_t) when it
 * validates it; the store thread applies them with clinical_* inside the
 * same transaction that stores the message (or its delivery ack), so a
 * restart loses no state, no claim and no timer.  A refusal (an illegal
 * step, an unknown accession, ...) rolls the message back: nothing is
 * stored, and the sender gets the error.
 */
#ifndef MR_CLINICAL_H
#define MR_CLINICAL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "referral.h"
#include "slots.h"
#include "tally.h"

typedef struct {
    res_kind_t resource;
    char *unit;            /* department, ward or modality */
    char *date;            /* YYYY-MM-DD, local */
    int64_t capacity;
    int64_t reserved;
    int64_t slot_start_ms; /* when the day's slots begin */
} clin_capacity_t;

/* The figures of a VisitTally, in this order. */
enum {
    VISIT_OUTPATIENT = 0,
    VISIT_EMERGENCY,
    VISIT_INSURED_IN_COUNTY,
    VISIT_INSURED_OUT_OF_COUNTY,
    VISIT_INPATIENT,
    VISIT_FUND_FEN,
    VISIT_FUND_OUT_OF_COUNTY_FEN,
    VISIT_TCM,
    CLIN_VISIT_FIELDS
};

/* Sums of VisitTally figures over a period: [0] grassroots, [1] all. */
typedef struct {
    int64_t sum[2][CLIN_VISIT_FIELDS];
    int64_t reports;
} clin_visits_t;

/* The facts of one message that matter to the clinical state. */
typedef struct {
    int kind;              /* medroute.v1.Kind */
    int priority;
    ref_dir_t direction;   /* from the registry roles */
    char *ref_id;          /* referral_id, accession_number or placer_order_number */
    /* referral */
    int service;           /* medroute.v1.ServiceType */
    char *unit;            /* department, or requested modality for exams */
    bool family_doctor;
    int64_t expires_ms;
    int64_t due_ms;        /* referral: accept by (urgent/stat; 0 = none);
                              imaging/lab order: final report/result by */
    /* referral update */
    int step;              /* medroute.v1.ReferralStep */
    bool has_reason;
    bool has_summary;
    int64_t appointment_ms;
    int64_t open_until_ms; /* with an appointment: the referral expires no sooner than this,
                              referrals.appointment_grace_s after it (0: no appointment) */
    char *appointment_day; /* local YYYY-MM-DD of appointment_ms (or of now) */
    /* imaging report / lab result */
    int report_status;     /* ReportStatus or ResultStatus value */
    bool critical;
    int items;             /* lab tests ordered / result items */
    char *modality;        /* imaging request */
    bool imaging;          /* critical ack: of an imaging report (else a lab result) */
    /* capacity notice */
    clin_capacity_t *capacity;
    size_t n_capacity;
    /* visit tally */
    char *visit_date;
    bool grassroots;       /* sent by a township centre */
    int64_t visits[CLIN_VISIT_FIELDS];
} clin_facts_t;

void clinical_facts_free(clin_facts_t *f);

/* Why a message was refused: an MR_E_* code and a reason without patient data. */
typedef struct {
    int code;
    char reason[200];
    /* what happened, for logs and counters */
    int ref_state;          /* referral state after the step */
    int claim;              /* claim_t taken (ACCEPTED) or released */
    bool claim_released;
} clin_result_t;

typedef enum {
    EV_ACCEPT_OVERDUE = 1,  /* urgent/stat referral not accepted in time */
    EV_IMAGING_OVERDUE,     /* imaging request without a final report in time */
    EV_LAB_OVERDUE,         /* lab order without a final result in time */
    EV_READBACK_OVERDUE,    /* critical value/finding not read back in time */
    EV_RESERVE_RELEASED,    /* unclaimed reserve released to general use */
    EV_REFERRAL_EXPIRED,    /* referral passed its expiry before the patient arrived */
} clin_event_kind_t;

typedef struct {
    clin_event_kind_t kind;
    char *key;              /* referral key, loop key or resource key */
    char *facility;         /* who must act */
    int64_t value;          /* age in ms, or units released */
} clin_event_t;

typedef struct {
    uint32_t urgent_accept_s, stat_accept_s;
    uint32_t imaging_final_s, stat_imaging_final_s;
    uint32_t lab_result_s, stat_lab_result_s;
    uint32_t critical_readback_s;
    uint32_t reserve_cutoff_s;
} clin_sla_t;

typedef struct {
    char *resource_key;
    res_kind_t resource;
    char *unit, *date;
    ledger_t ledger;
    int64_t released_at_ms;
} clin_slot_t;

typedef struct {
    char *kind;             /* "referral", "imaging", "lab" */
    char *key;              /* referral id / accession / placer number */
    char *from, *to;        /* orderer / sender, filler / receiver */
    char *state;
    int priority;
    int64_t opened_ms;
    int64_t updated_ms;
    bool escalated;
} clin_open_t;

typedef struct clinical_t clinical_t;

/* Distinct values of the `department` label of the referral tallies; a
 * referral naming another one once these are in use is counted under
 * MR_DEPARTMENT_OTHER (and in referral_departments_folded_total). */
#define MR_DEPARTMENT_LABELS_MAX 256
#define MR_DEPARTMENT_OTHER "_other"

/* Creates the tables (if missing) and prepares statements; counts go to
 * tally (borrowed).  NULL on failure. */
clinical_t *clinical_open(sqlite3 *db, tally_t *tally, int *rc_out);
void clinical_close(clinical_t **self_p);

/* The store's transaction committed, or rolled back: what this module holds
 * in memory of the batch (the department label values it admitted) is kept,
 * or forgotten with the tallies that used it.  Called where tally_commit and
 * tally_discard are. */
void clinical_commit(clinical_t *self);
void clinical_rollback(clinical_t *self);

/*
 * Applies a newly stored message (seq) inside the open transaction.
 * Returns an SQLite code; a refusal is SQLITE_OK with out->code set.  Every
 * refusal is decided before anything is written or counted, so the caller
 * undoes a refused message by deleting its row alone (no savepoint).
 */
int clinical_on_put(clinical_t *self, uint64_t seq, const char *source, const char *dest,
                    const clin_facts_t *f, int64_t now_ms, clin_result_t *out);

/* The destination acknowledged a stored Referral (its messages.ref_key; NULL
 * or "" for other messages): the referral becomes RECEIVED, unless it is
 * past its expiry at now_ms (the scan makes it EXPIRED). */
int clinical_on_delivered(clinical_t *self, const char *ref_key, int64_t now_ms);

/* Service levels, referral expiry and reserve cut-offs due at now_ms; the
 * events are appended to *events (caller frees with clinical_events_free). */
int clinical_scan(clinical_t *self, const clin_sla_t *sla, int64_t now_ms, clin_event_t **events,
                  size_t *n_events);
void clinical_events_free(clin_event_t *events, size_t n);

/* Ledger rows, all or of one date (YYYY-MM-DD). Caller frees. */
int clinical_slots(clinical_t *self, const char *date, clin_slot_t **rows, size_t *n);
void clinical_slots_free(clin_slot_t *rows, size_t n);

/* Open referrals and loops, optionally of one facility and older than a time. */
int clinical_open_loops(clinical_t *self, const char *facility, int64_t older_than_ms,
                        clin_open_t **rows, size_t *n);
void clinical_open_free(clin_open_t *rows, size_t n);

/* VisitTally sums over days first..last (inclusive, YYYY-MM-DD; NULL = all). */
int clinical_visits(clinical_t *self, const char *first, const char *last, clin_visits_t *out);

const char *clinical_event_name(clin_event_kind_t k);

#endif
