/*
 * indicators.c - indicator definitions and their computation.
 *
 * Referral-side indicators come from the broker's own tallies; the
 * province's monitoring indicators from the VisitTally reports (DOMAIN.md,
 * "The indicators").  A ratio over the period so far is also its
 * projection for the period end (a ratio does not grow with time), so a
 * ratio on the wrong side of its warning threshold is reported early.
 */
#include "indicators.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const indicator_def_t s_defs[] = {
    {"down_up_ratio", "Down/up referral ratio", "down-referrals requested / up-referrals requested",
     "ratio", CMP_AT_LEAST, 0.25, 0.30},
    {"reserved_share", "Reserved share of capacity (family-doctor referrals)",
     "reserved units offered / capacity units offered", "ratio", CMP_AT_LEAST, 0.20, 0.22},
    {"reserve_utilisation", "Reserve utilisation",
     "reserved units claimed by family-doctor referrals and not given back / reserved units offered",
     "ratio",
     CMP_AT_LEAST, 0.50, 0.60},
    {"referral_acceptance_p50_minutes", "Referral acceptance time, median",
     "p50 of (accepted - requested)", "minutes", CMP_AT_MOST, 30, 20},
    {"imaging_turnaround_p90_hours", "Imaging report turnaround, 90th percentile",
     "p90 of (final report - request)", "hours", CMP_AT_MOST, 4, 3},
    {"lab_turnaround_p90_hours", "Lab result turnaround, 90th percentile",
     "p90 of (final result - order)", "hours", CMP_AT_MOST, 4, 3},
    {"critical_readback_p90_minutes", "Critical value read-back time, 90th percentile",
     "p90 of (read-back - critical report)", "minutes", CMP_AT_MOST, 15, 10},
    {"in_county_consultation_rate", "In-county consultation rate (县域内就诊率)",
     "insured in-county outpatient+emergency visits / all insured outpatient+emergency visits",
     "ratio", CMP_AT_LEAST, 0.90, 0.92},
    {"grassroots_outpatient_share", "Grassroots share of county outpatient visits (基层门急诊占比)",
     "grassroots outpatient+emergency visits / county outpatient+emergency visits", "ratio",
     CMP_AT_LEAST, 0.65, 0.68},
    {"in_county_fund_share", "In-county insurance fund spend rate",
     "fund spent in county institutions / all county fund spend", "ratio", CMP_AT_LEAST, 0.60,
     0.63},
    {"grassroots_fund_share", "Grassroots share of the insurance fund",
     "grassroots fund spend / all county fund spend", "ratio", CMP_AT_LEAST, 0.25, 0.27},
    {"grassroots_tcm_share", "Grassroots TCM service share",
     "grassroots TCM visits / county outpatient visits", "ratio", CMP_AT_LEAST, 0.20, 0.22},
};

#define S_N (sizeof s_defs / sizeof s_defs[0])

const indicator_def_t *indicators_defs(size_t *n)
{
    *n = S_N;
    return s_defs;
}

const indicator_def_t *indicators_find(const char *name)
{
    for (size_t i = 0; i < S_N; i++)
        if (strcmp(s_defs[i].name, name) == 0)
            return &s_defs[i];
    return NULL;
}

const char *indicators_status_name(ind_status_t s)
{
    static const char *const names[] = {"no_data", "ok", "warning", "off_target"};
    return s <= IND_OFF_TARGET ? names[s] : "?";
}

/* Sum of a tally over all label sets that contain `match` (NULL: all). */
static double s_sum(const tally_row_t *rows, size_t n, const char *name, const char *match)
{
    double v = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].name, name) == 0 && (match == NULL || strstr(rows[i].labels, match)))
            v += (double)rows[i].value;
    return v;
}

double indicators_quantile(const tally_row_t *rows, size_t n, const char *name, double q)
{
    char bucket[96];
    snprintf(bucket, sizeof bucket, "%s_bucket", name);
    double counts[TALLY_BUCKETS] = {0}, total = 0;
    for (int b = 0; b < TALLY_BUCKETS; b++) {
        char le[40];
        if (tally_bucket_le[b] < 0)
            snprintf(le, sizeof le, "le=\"+Inf\"");
        else
            snprintf(le, sizeof le, "le=\"%lld\"", (long long)tally_bucket_le[b]);
        counts[b] = s_sum(rows, n, bucket, le);
        total += counts[b];
    }
    if (total <= 0)
        return -1;
    /* Linear interpolation inside the bucket holding the quantile, as
     * Prometheus' histogram_quantile does. */
    double rank = q * total, seen = 0, lower = 0;
    for (int b = 0; b < TALLY_BUCKETS; b++) {
        double upper = tally_bucket_le[b] < 0 ? (double)tally_bucket_le[b - 1] * 2
                                              : (double)tally_bucket_le[b];
        if (seen + counts[b] >= rank && counts[b] > 0)
            return lower + (upper - lower) * ((rank - seen) / counts[b]);
        seen += counts[b];
        lower = upper;
    }
    return lower;
}

/* A ratio of counts has a value only when both are counts of something:
 * the offered-units tallies count changes, so a period whose notices
 * lowered more capacity (or reserve) than they added sums below 0, and
 * gives no share (not a negative one, off target for resources that each
 * keep their minimum, slots_check_offer). */
static void s_ratio(indicator_t *ind, double num, double den)
{
    ind->numerator = num;
    ind->denominator = den;
    ind->has_value = den > 0 && num >= 0;
    ind->value = ind->has_value ? num / den : 0;
}

static void s_time(indicator_t *ind, double seconds, double per)
{
    ind->has_value = seconds >= 0;
    ind->value = seconds >= 0 ? seconds / per : 0;
}

static void s_judge(indicator_t *ind)
{
    if (!ind->has_value) {
        ind->status = IND_NO_DATA;
        return;
    }
    bool at_least = ind->def->cmp == CMP_AT_LEAST;
    bool meets = at_least ? ind->value >= ind->target : ind->value <= ind->target;
    bool clear = at_least ? ind->value >= ind->warn : ind->value <= ind->warn;
    ind->status = !meets ? IND_OFF_TARGET : clear ? IND_OK : IND_WARNING;
}

size_t indicators_compute(const indicator_conf_t *conf, size_t n_conf, const tally_row_t *rows,
                          size_t n_rows, const clin_visits_t *v, indicator_t *out)
{
    const int64_t *g = v->sum[0], *all = v->sum[1];
    for (size_t i = 0; i < S_N; i++) {
        indicator_t *ind = &out[i];
        memset(ind, 0, sizeof *ind);
        ind->def = &s_defs[i];
        ind->target = s_defs[i].target;
        ind->warn = s_defs[i].warn;
        for (size_t c = 0; c < n_conf; c++) {
            if (strcmp(conf[c].name, s_defs[i].name) == 0) {
                ind->target = conf[c].target;
                ind->warn = conf[c].warn;
            }
        }
        const char *name = s_defs[i].name;
        if (strcmp(name, "down_up_ratio") == 0)
            s_ratio(ind, s_sum(rows, n_rows, "referrals_requested_total", "direction=\"down\""),
                    s_sum(rows, n_rows, "referrals_requested_total", "direction=\"up\""));
        else if (strcmp(name, "reserved_share") == 0)
            s_ratio(ind, s_sum(rows, n_rows, "reserve_offered_units_total", NULL),
                    s_sum(rows, n_rows, "capacity_offered_units_total", NULL));
        else if (strcmp(name, "reserve_utilisation") == 0) {
            /* A claim given back (cancel, no-show, expiry) did not use the
             * reserve: the ledger's CLAIMED no longer holds it, and its unit
             * can be claimed again.  The period's claims net of its releases;
             * not below 0 (a release of a claim made in an earlier period). */
            double used = s_sum(rows, n_rows, "slot_claims_total", "claim=\"reserved\"") -
                          s_sum(rows, n_rows, "slot_claims_released_total", "claim=\"reserved\"");
            s_ratio(ind, used > 0 ? used : 0,
                    s_sum(rows, n_rows, "reserve_offered_units_total", NULL));
        }
        else if (strcmp(name, "referral_acceptance_p50_minutes") == 0)
            s_time(ind, indicators_quantile(rows, n_rows, "referral_acceptance_seconds", 0.5), 60);
        else if (strcmp(name, "imaging_turnaround_p90_hours") == 0)
            s_time(ind, indicators_quantile(rows, n_rows, "imaging_turnaround_seconds", 0.9), 3600);
        else if (strcmp(name, "lab_turnaround_p90_hours") == 0)
            s_time(ind, indicators_quantile(rows, n_rows, "lab_turnaround_seconds", 0.9), 3600);
        else if (strcmp(name, "critical_readback_p90_minutes") == 0)
            s_time(ind, indicators_quantile(rows, n_rows, "critical_readback_seconds", 0.9), 60);
        else if (strcmp(name, "in_county_consultation_rate") == 0)
            s_ratio(ind, (double)all[VISIT_INSURED_IN_COUNTY],
                    (double)all[VISIT_INSURED_IN_COUNTY] + (double)all[VISIT_INSURED_OUT_OF_COUNTY]);
        else if (strcmp(name, "grassroots_outpatient_share") == 0)
            s_ratio(ind, (double)g[VISIT_OUTPATIENT] + (double)g[VISIT_EMERGENCY],
                    (double)all[VISIT_OUTPATIENT] + (double)all[VISIT_EMERGENCY]);
        else if (strcmp(name, "in_county_fund_share") == 0)
            s_ratio(ind, (double)all[VISIT_FUND_FEN],
                    (double)all[VISIT_FUND_FEN] + (double)all[VISIT_FUND_OUT_OF_COUNTY_FEN]);
        else if (strcmp(name, "grassroots_fund_share") == 0)
            s_ratio(ind, (double)g[VISIT_FUND_FEN],
                    (double)all[VISIT_FUND_FEN] + (double)all[VISIT_FUND_OUT_OF_COUNTY_FEN]);
        else if (strcmp(name, "grassroots_tcm_share") == 0)
            s_ratio(ind, (double)g[VISIT_TCM], (double)all[VISIT_OUTPATIENT]);
        s_judge(ind);
    }
    return S_N;
}
