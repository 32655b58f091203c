/*
 * indicators.h - the community's indicators, computed from the tallies and
 * the facilities' visit reports of a period.
 *
 * The definitions (name, formula, unit, direction, default target and
 * warning threshold) are one table in indicators.c; the config's
 * `indicators` list overrides targets and warning thresholds by name.
 * Pure: no I/O.
 */
#ifndef MR_INDICATORS_H
#define MR_INDICATORS_H

#include <stdbool.h>
#include <stddef.h>

#include "clinical.h"
#include "tally.h"

typedef enum { CMP_AT_LEAST = 0, CMP_AT_MOST } cmp_t;

typedef struct {
    const char *name;
    const char *title;
    const char *formula;    /* for people: numerator / denominator */
    const char *unit;       /* "ratio", "minutes", "hours" */
    cmp_t cmp;
    double target;
    double warn;            /* early warning: at_least -> warn >= target; at_most -> warn <= target */
} indicator_def_t;

typedef enum { IND_NO_DATA = 0, IND_OK, IND_WARNING, IND_OFF_TARGET } ind_status_t;

typedef struct {
    const indicator_def_t *def;
    double target, warn;    /* in force (config or default) */
    bool has_value;
    double value;
    double numerator, denominator;
    ind_status_t status;
} indicator_t;

/* Target overrides, by name (from the config). */
typedef struct indicator_conf_s {
    char *name;
    double target;
    double warn;
} indicator_conf_t;

/* The definitions; *n set to their count. */
const indicator_def_t *indicators_defs(size_t *n);
const indicator_def_t *indicators_find(const char *name);

/*
 * Computes every indicator into out (room for indicators_defs' count).
 * Returns how many were written.
 */
size_t indicators_compute(const indicator_conf_t *conf, size_t n_conf, const tally_row_t *rows,
                          size_t n_rows, const clin_visits_t *visits, indicator_t *out);

const char *indicators_status_name(ind_status_t s);

/* The q-quantile (0..1) of histogram `name` (per-bucket tallies, summed over
 * labels); seconds; -1 with no observations. */
double indicators_quantile(const tally_row_t *rows, size_t n, const char *name, double q);

#endif
