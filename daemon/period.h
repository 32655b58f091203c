/*
 * period.h - reporting periods in local time: day, month, half-year, year.
 * Pure (apart from the process's time zone, set once at start).
 */
#ifndef MR_PERIOD_H
#define MR_PERIOD_H

#include <stdint.h>

typedef struct {
    char label[16];    /* "2026-11-23", "2026-11", "2026-H2", "2026" */
    char first[11];    /* first day, YYYY-MM-DD */
    char last[11];     /* last day, inclusive */
    int64_t start_ms;  /* local midnight of first */
    int64_t end_ms;    /* local midnight after last */
} period_t;

/*
 * Parses "today", "yesterday", "YYYY-MM-DD", "YYYY-MM", "YYYY-H1", "YYYY-H2",
 * "YYYY" (NULL or "" = today) relative to now_ms.  0 or -EINVAL.
 */
int period_parse(const char *text, int64_t now_ms, period_t *out);
/* Share of the period elapsed at now_ms, 0..1. */
double period_elapsed(const period_t *p, int64_t now_ms);

#endif
