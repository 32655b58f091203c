/*
 * period.c - parse a period and find its days and bounds in local time.
 * The monitoring of a county medical community is half-yearly (H1 =
 * January-June, H2 = July-December) and its assessment yearly.
 */
#include "period.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdbool.h>
#include <time.h>

static int64_t s_midnight(int y, int m, int d)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d, .tm_isdst = -1};
    time_t t = mktime(&tm);
    return t == (time_t)-1 ? 0 : (int64_t)t * 1000;
}

static int s_days_in(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

static void s_fill(period_t *p, int y, int m1, int d1, int m2, int d2)
{
    snprintf(p->first, sizeof p->first, "%04d-%02d-%02d", y, m1, d1);
    snprintf(p->last, sizeof p->last, "%04d-%02d-%02d", y, m2, d2);
    p->start_ms = s_midnight(y, m1, d1);
    /* mktime normalises day 32 etc. into the next month/year. */
    p->end_ms = s_midnight(y, m2, d2 + 1);
}

int period_parse(const char *text, int64_t now_ms, period_t *out)
{
    memset(out, 0, sizeof *out);
    time_t now = (time_t)(now_ms / 1000);
    struct tm tm;
    if (localtime_r(&now, &tm) == NULL)
        return -EINVAL;
    int y = tm.tm_year + 1900, m = tm.tm_mon + 1, d = tm.tm_mday;
    if (text == NULL || text[0] == '\0' || strcmp(text, "today") == 0 ||
        strcmp(text, "yesterday") == 0) {
        /* The calendar day before today, not the day of 24 h ago: a local
         * day is 23 or 25 hours long where the time zone changes to or from
         * summer time, and 24 h before 23:30 on a 25-hour day is that day. */
        if (text && strcmp(text, "yesterday") == 0) {
            if (d > 1)
                d--;
            else if (m > 1)
                m--, d = s_days_in(y, m);
            else
                y--, m = 12, d = 31;
        }
        s_fill(out, y, m, d, m, d);
        snprintf(out->label, sizeof out->label, "%s", out->first);
        return 0;
    }
    int n = 0;
    if (sscanf(text, "%4d-%2d-%2d%n", &y, &m, &d, &n) == 3 && text[n] == '\0') {
        if (y < 1970 || m < 1 || m > 12 || d < 1 || d > s_days_in(y, m))
            return -EINVAL;
        s_fill(out, y, m, d, m, d);
    } else if (sscanf(text, "%4d-H%1d%n", &y, &m, &n) == 2 && text[n] == '\0') {
        if (y < 1970 || (m != 1 && m != 2))
            return -EINVAL;
        if (m == 1)
            s_fill(out, y, 1, 1, 6, 30);
        else
            s_fill(out, y, 7, 1, 12, 31);
    } else if (sscanf(text, "%4d-%2d%n", &y, &m, &n) == 2 && text[n] == '\0') {
        if (y < 1970 || m < 1 || m > 12)
            return -EINVAL;
        s_fill(out, y, m, 1, m, s_days_in(y, m));
    } else if (sscanf(text, "%4d%n", &y, &n) == 1 && text[n] == '\0' && n == 4) {
        if (y < 1970)
            return -EINVAL;
        s_fill(out, y, 1, 1, 12, 31);
    } else {
        return -EINVAL;
    }
    snprintf(out->label, sizeof out->label, "%s", text);
    return 0;
}

double period_elapsed(const period_t *p, int64_t now_ms)
{
    if (now_ms <= p->start_ms || p->end_ms <= p->start_ms)
        return 0.0;
    if (now_ms >= p->end_ms)
        return 1.0;
    return (double)(now_ms - p->start_ms) / (double)(p->end_ms - p->start_ms);
}
