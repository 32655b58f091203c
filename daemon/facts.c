/*
 * facts.c - the clinical facts of a message, taken while it is validated on
 * the loop thread, so that the store thread never decodes an Envelope.
 */
#include "facts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void facts_local_day(int64_t ms, char out[11])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL || strftime(out, 11, "%Y-%m-%d", &tm) == 0)
        snprintf(out, 11, "0000-00-00");
}

/* The value of n decimal digits at p; -1 if one is not a digit. */
static int s_digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

bool facts_day_valid(const char *day)
{
    static const int s_month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (day == NULL || strlen(day) != 10 || day[4] != '-' || day[7] != '-')
        return false;
    int y = s_digits(day, 4), m = s_digits(day + 5, 2), d = s_digits(day + 8, 2);
    if (y < 1900 || m < 1 || m > 12 || d < 1)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= s_month_days[m - 1] + (m == 2 && leap ? 1 : 0);
}

/* Local midnight of a YYYY-MM-DD day, in Unix ms; 0 if it does not parse. */
#define S_DAY_MS (86400LL * 1000)
/* An appointment's time: from 2000-01-01 to two years ahead of now. */
#define S_APPOINTMENT_MIN_MS 946684800000LL
#define S_APPOINTMENT_AHEAD_MS (731 * S_DAY_MS)

/* Whether a ReferralUpdate of this step may carry appointment_at_ms: the
 * receiver sets the appointment when it accepts and moves it when it
 * schedules (docs/referrals.md 1.1).  On another step it would be stored
 * and move the expiry of a referral nobody booked anything for (one that
 * has arrived, or was cancelled).  An unknown step is the table's to say
 * first. */
static bool s_books_appointment(int step)
{
    return step == MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED ||
           step == MEDROUTE__V1__REFERRAL_STEP__STEP_SCHEDULED || referral_step_actor(step) < 0;
}

static int64_t s_day_start(const char *day)
{
    struct tm tm = {0};
    if (day == NULL || sscanf(day, "%4d-%2d-%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    return t == (time_t)-1 ? 0 : (int64_t)t * 1000;
}

static char *s_dup(const char *s)
{
    return s && s[0] ? strdup(s) : NULL;
}

static ref_dir_t s_dir(const server_t *s, int src, int dest)
{
    switch (registry_direction(s->registry, src, dest)) {
    case DIRECTION_UP: return REF_DIR_UP;
    case DIRECTION_DOWN: return REF_DIR_DOWN;
    default: return REF_DIR_LATERAL;
    }
}

static int s_capacity(const server_t *s, const Medroute__V1__CapacityNotice *cn, clin_facts_t *f,
                      char *reason, size_t len)
{
    if (cn == NULL || cn->n_items == 0) {
        snprintf(reason, len, "capacity notice has no items");
        return MR_E_INVALID;
    }
    f->capacity = calloc(cn->n_items, sizeof *f->capacity);
    if (f->capacity == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < cn->n_items; i++) {
        const Medroute__V1__CapacityItem *it = cn->items[i];
        clin_capacity_t *c = &f->capacity[f->n_capacity++];
        bool under = false;
        const char *why = NULL;
        if (slots_check_offer(it->capacity, it->reserved, s->conf->min_reserved_share, &under,
                              &why) != 0 &&
            !(under && s->conf->allow_low_reserve)) {
            const char *unit = it->unit ? it->unit : "", *date = it->date ? it->date : "";
            snprintf(reason, len, "capacity item %zu (%.*s %.*s): %s", i + 1,
                     (int)mr_utf8_cut(unit, 40), unit, (int)mr_utf8_cut(date, 10), date,
                     why ? why : "invalid");
            return MR_E_INVALID;
        }
        if (under) {
            char unit[41], date[11];
            log_warn(s->log, "capacity.low_reserve",
                     "unit=\"%s\" date=\"%s\" capacity=%u reserved=%u min_share=%.2f",
                     log_clean(unit, sizeof unit, it->unit), log_clean(date, sizeof date, it->date),
                     it->capacity, it->reserved, s->conf->min_reserved_share);
        }
        /* A day that does not parse would be a ledger no referral finds,
         * released at once (its slot start would be 0).  A missing day is
         * refused by the clinical state, with the other required fields. */
        if (it->date != NULL && it->date[0] != '\0' && !facts_day_valid(it->date)) {
            snprintf(reason, len, "capacity item %zu: date must be a calendar day, YYYY-MM-DD",
                     i + 1);
            return MR_E_INVALID;
        }
        switch (it->resource) {
        case MEDROUTE__V1__RESOURCE_TYPE__RESOURCE_CLINIC: c->resource = RES_CLINIC; break;
        case MEDROUTE__V1__RESOURCE_TYPE__RESOURCE_BED: c->resource = RES_BED; break;
        case MEDROUTE__V1__RESOURCE_TYPE__RESOURCE_EXAM: c->resource = RES_EXAM; break;
        default: c->resource = RES_KIND_COUNT; break; /* the store refuses it */
        }
        if (it->unit != NULL && strlen(it->unit) > MR_UNIT_MAX) {
            snprintf(reason, len, "capacity item %zu: unit is longer than %d bytes", i + 1,
                     MR_UNIT_MAX);
            return MR_E_INVALID;
        }
        c->unit = s_dup(it->unit);
        c->date = s_dup(it->date);
        c->capacity = it->capacity;
        c->reserved = it->reserved;
        int64_t day_start = s_day_start(it->date);
        /* A start far from the item's own day (negative, or seconds sent as
         * milliseconds: 1970) would be past its cut-off at once, and the
         * next scan would give the whole reserve to general use. */
        if (it->slot_start_ms != 0 && day_start != 0 &&
            (it->slot_start_ms < day_start - S_DAY_MS ||
             it->slot_start_ms >= day_start + 2 * S_DAY_MS)) {
            snprintf(reason, len,
                     "capacity item %zu: slot_start_ms must fall on its date, give or take a day",
                     i + 1);
            return MR_E_INVALID;
        }
        c->slot_start_ms = it->slot_start_ms ? it->slot_start_ms : day_start;
        if ((it->unit && it->unit[0] && c->unit == NULL) || (it->date && it->date[0] && !c->date))
            return -ENOMEM;
    }
    return 0;
}

/*
 * A day's figures that the indicators can add up: a calendar day (one that
 * does not parse would fall outside every period), and fund amounts from 0
 * to S_FEN_MAX (a negative one has no meaning: a later report for the same
 * day replaces the earlier one; and the sums must not overflow).
 */
#define S_FEN_MAX 10000000000000LL /* 100 billion yuan in a day */

static int s_visit_check(const Medroute__V1__VisitTally *v, int64_t now_ms, char *reason,
                         size_t len)
{
    if (v->date != NULL && v->date[0] != '\0' && !facts_day_valid(v->date)) {
        snprintf(reason, len, "visit_tally.date must be a calendar day, YYYY-MM-DD");
        return MR_E_INVALID;
    }
    /* Figures of a day to come would count in the current period now.  A
     * day of slack (the broker's day is local: a facility's clock or zone
     * a little ahead); YYYY-MM-DD days compare as text. */
    char tomorrow[11];
    facts_local_day(now_ms + S_DAY_MS, tomorrow);
    if (v->date != NULL && v->date[0] != '\0' && strcmp(v->date, tomorrow) > 0) {
        snprintf(reason, len, "visit_tally.date is later than tomorrow, %s (the broker's local day)",
                 tomorrow);
        return MR_E_INVALID;
    }
    const struct {
        const char *name;
        int64_t fen;
    } amounts[] = {{"fund_spend_fen", v->fund_spend_fen},
                   {"fund_spend_out_of_county_fen", v->fund_spend_out_of_county_fen}};
    for (size_t i = 0; i < sizeof amounts / sizeof amounts[0]; i++)
        if (amounts[i].fen < 0 || amounts[i].fen > S_FEN_MAX) {
            snprintf(reason, len, "visit_tally.%s must be from 0 to %lld", amounts[i].name,
                     (long long)S_FEN_MAX);
            return MR_E_INVALID;
        }
    return 0;
}

int facts_extract(const server_t *s, int src, int dest, const mr_envelope_t *env,
                  int64_t expires_ms, int64_t now_ms, clin_facts_t **out, char *reason,
                  size_t reason_len)
{
    clin_facts_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -ENOMEM;
    int rc = 0;
    const char *id = NULL;
    f->kind = (int)env->kind;
    f->priority = (int)env->priority;
    f->direction = dest >= 0 ? s_dir(s, src, dest) : REF_DIR_LATERAL;
    f->expires_ms = expires_ms;
    switch (env->payload_case) {
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL: {
        const Medroute__V1__Referral *r = env->referral;
        id = r->referral_id;
        f->service = (int)r->service;
        f->unit = s_dup(r->service == MEDROUTE__V1__SERVICE_TYPE__SERVICE_EXAM
                            ? r->requested_modality
                            : r->department);
        f->family_doctor = r->family_doctor_contract;
        if (env->priority == MEDROUTE__V1__PRIORITY__PRIORITY_STAT)
            f->due_ms = now_ms + (int64_t)s->conf->sla_stat_accept_s * 1000;
        else if (env->priority == MEDROUTE__V1__PRIORITY__PRIORITY_URGENT)
            f->due_ms = now_ms + (int64_t)s->conf->sla_urgent_accept_s * 1000;
        break;
    }
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL_UPDATE: {
        const Medroute__V1__ReferralUpdate *u = env->referral_update;
        id = u->referral_id;
        f->step = (int)u->step;
        f->has_reason = u->reason && u->reason[0];
        f->has_summary = u->summary && u->summary->uri && u->summary->uri[0];
        if (u->appointment_at_ms != 0 && !s_books_appointment(f->step)) {
            snprintf(reason, reason_len,
                     "referral_update.appointment_at_ms goes with STEP_ACCEPTED or "
                     "STEP_SCHEDULED only");
            rc = MR_E_INVALID;
            break;
        }
        /* A negative one would claim a unit of a day in 1969, seconds sent
         * as milliseconds (1970) nothing, and microseconds (the year 55,000)
         * would keep the referral open for ever: a later step cannot bring
         * an expiry back. */
        if (u->appointment_at_ms != 0 && (u->appointment_at_ms < S_APPOINTMENT_MIN_MS ||
                                          u->appointment_at_ms > now_ms + S_APPOINTMENT_AHEAD_MS)) {
            snprintf(reason, reason_len,
                     "referral_update.appointment_at_ms must be milliseconds since 1970, from "
                     "2000 to two years ahead");
            rc = MR_E_INVALID;
            break;
        }
        f->appointment_ms = u->appointment_at_ms;
        /* The patient who comes to a slot booked past the referral's own
         * expiry must find it open (docs/referrals.md 1.3). */
        f->open_until_ms = u->appointment_at_ms
                               ? u->appointment_at_ms + (int64_t)s->conf->appointment_grace_s * 1000
                               : 0; /* bounded above: no overflow */
        char day[11];
        facts_local_day(u->appointment_at_ms ? u->appointment_at_ms : now_ms, day);
        f->appointment_day = strdup(day);
        if (f->appointment_day == NULL)
            rc = -ENOMEM;
        break;
    }
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REQUEST: {
        const Medroute__V1__ImagingRequest *q = env->imaging_request;
        id = q->accession_number;
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
            &medroute__v1__modality__descriptor, (int)q->modality);
        f->modality = s_dup(v ? v->name + strlen("MODALITY_") : NULL);
        f->due_ms = now_ms + (int64_t)(env->priority == MEDROUTE__V1__PRIORITY__PRIORITY_STAT
                                           ? s->conf->sla_stat_imaging_final_s
                                           : s->conf->sla_imaging_final_s) *
                                 1000;
        break;
    }
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REPORT:
        id = env->imaging_report->accession_number;
        f->report_status = (int)env->imaging_report->status;
        f->critical = env->imaging_report->critical_finding;
        if (f->report_status < MEDROUTE__V1__REPORT_STATUS__REPORT_PRELIMINARY ||
            f->report_status > MEDROUTE__V1__REPORT_STATUS__REPORT_AMENDED) {
            snprintf(reason, reason_len,
                     "imaging_report.status must be preliminary, final or amended");
            rc = MR_E_INVALID;
        }
        break;
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER:
        id = env->lab_order->placer_order_number;
        f->items = (int)env->lab_order->n_tests;
        f->due_ms = now_ms + (int64_t)(env->priority == MEDROUTE__V1__PRIORITY__PRIORITY_STAT
                                           ? s->conf->sla_stat_lab_result_s
                                           : s->conf->sla_lab_result_s) *
                                 1000;
        break;
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_RESULT: {
        const Medroute__V1__LabResult *r = env->lab_result;
        id = r->placer_order_number;
        f->report_status = (int)r->status;
        f->items = (int)r->n_items;
        for (size_t i = 0; i < r->n_items; i++)
            f->critical = f->critical || r->items[i]->critical;
        if (f->report_status < MEDROUTE__V1__RESULT_STATUS__RESULT_PARTIAL ||
            f->report_status > MEDROUTE__V1__RESULT_STATUS__RESULT_CORRECTED) {
            snprintf(reason, reason_len, "lab_result.status must be partial, final or corrected");
            rc = MR_E_INVALID;
        }
        break;
    }
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_CRITICAL_ACK: {
        const Medroute__V1__CriticalAck *a = env->critical_ack;
        f->imaging = a->accession_number && a->accession_number[0];
        id = f->imaging ? a->accession_number : a->placer_order_number;
        break;
    }
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_CAPACITY:
        rc = s_capacity(s, env->capacity, f, reason, reason_len);
        break;
    case MEDROUTE__V1__ENVELOPE__PAYLOAD_VISIT_TALLY: {
        const Medroute__V1__VisitTally *v = env->visit_tally;
        f->grassroots = registry_at(s->registry, (size_t)src)->role == ROLE_TOWNSHIP;
        f->visits[VISIT_OUTPATIENT] = v->outpatient_visits;
        f->visits[VISIT_EMERGENCY] = v->emergency_visits;
        f->visits[VISIT_INSURED_IN_COUNTY] = v->insured_visits_in_county;
        f->visits[VISIT_INSURED_OUT_OF_COUNTY] = v->insured_visits_out_of_county;
        f->visits[VISIT_INPATIENT] = v->inpatient_admissions;
        f->visits[VISIT_FUND_FEN] = v->fund_spend_fen;
        f->visits[VISIT_FUND_OUT_OF_COUNTY_FEN] = v->fund_spend_out_of_county_fen;
        f->visits[VISIT_TCM] = v->tcm_visits;
        rc = s_visit_check(v, now_ms, reason, reason_len);
        if (rc == 0 && v->date && v->date[0] && (f->visit_date = strdup(v->date)) == NULL)
            rc = -ENOMEM;
        break;
    }
    default:
        break;
    }
    /* Keys are built from them in fixed buffers: bounded here, refused
     * whole rather than cut short (two long ids sharing a prefix would be
     * one referral). */
    if (rc == 0 && id != NULL && strlen(id) > MR_CLINICAL_ID_MAX) {
        snprintf(reason, reason_len,
                 "the referral, accession or order number is longer than %d bytes",
                 MR_CLINICAL_ID_MAX);
        rc = MR_E_INVALID;
    }
    if (rc == 0 && f->unit != NULL && strlen(f->unit) > MR_UNIT_MAX) {
        snprintf(reason, reason_len, "the department or modality is longer than %d bytes",
                 MR_UNIT_MAX);
        rc = MR_E_INVALID;
    }
    if (rc == 0 && id != NULL && id[0] && (f->ref_id = strdup(id)) == NULL)
        rc = -ENOMEM;
    if (rc != 0) {
        clinical_facts_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

bool facts_express(const clin_facts_t *f)
{
    return f->critical || f->priority == MEDROUTE__V1__PRIORITY__PRIORITY_STAT;
}
