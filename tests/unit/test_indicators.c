/*
 * Unit tests for daemon/indicators.c (the formulas over a period's tallies
 * and visit reports) and daemon/period.c (the periods' days).
 */
#define _DEFAULT_SOURCE /* timegm */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "indicators.h"
#include "period.h"

static const indicator_t *s_find(const indicator_t *ind, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ind[i].def->name, name) == 0)
            return &ind[i];
    fail_msg("no indicator %s", name);
    return NULL;
}

/* A reserved unit claimed and then given back (the referral cancelled after
 * its acceptance, a no-show, an expiry) is not a use of the reserve. */
static void test_indicators_reserve_utilisation_nets_released_claims(void **state)
{
    (void)state;
    tally_row_t rows[] = {
        {"reserve_offered_units_total", "resource=\"clinic\"", 4},
        {"slot_claims_total", "claim=\"reserved\",family_doctor=\"yes\",resource=\"clinic\"", 3},
        {"slot_claims_total", "claim=\"general\",family_doctor=\"no\",resource=\"clinic\"", 5},
        {"slot_claims_released_total", "claim=\"reserved\",resource=\"clinic\"", 1},
        {"slot_claims_released_total", "claim=\"general\",resource=\"clinic\"", 2},
    };
    clin_visits_t v = {0};
    size_t n;
    indicators_defs(&n);
    indicator_t ind[32];
    assert_true(n <= 32);
    indicators_compute(NULL, 0, rows, sizeof rows / sizeof rows[0], &v, ind);
    const indicator_t *u = s_find(ind, n, "reserve_utilisation");
    assert_true(u->has_value);
    assert_float_equal(u->numerator, 2, 0);
    assert_float_equal(u->value, 0.5, 1e-12);
    assert_int_equal(u->status, IND_WARNING); /* 0.5: on target, under 0.6 */

    /* One unit claimed, given back, claimed again: one unit used, not two. */
    tally_row_t again[] = {
        {"reserve_offered_units_total", "resource=\"bed\"", 1},
        {"slot_claims_total", "claim=\"reserved\",family_doctor=\"yes\",resource=\"bed\"", 2},
        {"slot_claims_released_total", "claim=\"reserved\",resource=\"bed\"", 1},
    };
    indicators_compute(NULL, 0, again, 3, &v, ind);
    u = s_find(ind, n, "reserve_utilisation");
    assert_float_equal(u->value, 1.0, 1e-12);

    /* Only releases in the period (claims made in an earlier one): 0, not < 0. */
    tally_row_t late[] = {
        {"reserve_offered_units_total", "resource=\"bed\"", 2},
        {"slot_claims_released_total", "claim=\"reserved\",resource=\"bed\"", 1},
    };
    indicators_compute(NULL, 0, late, 2, &v, ind);
    u = s_find(ind, n, "reserve_utilisation");
    assert_float_equal(u->value, 0.0, 0);
    assert_int_equal(u->status, IND_OFF_TARGET);
}

/*
 * The offered-units tallies count changes: a period whose notices lowered
 * more reserve (or capacity) than they added sums below 0.  Such a period
 * has no share to give: no_data, not a negative share off target.
 */
static void test_indicators_reserved_share_of_net_withdrawals_is_no_data(void **state)
{
    (void)state;
    size_t n;
    indicators_defs(&n);
    indicator_t ind[32];
    assert_true(n <= 32);
    clin_visits_t v = {0};
    /* Capacity raised 100 -> 120, reserve lowered 25 -> 24: still 20 %. */
    tally_row_t lowered[] = {
        {"capacity_offered_units_total", "resource=\"clinic\"", 20},
        {"reserve_offered_units_total", "resource=\"clinic\"", -1},
    };
    indicators_compute(NULL, 0, lowered, 2, &v, ind);
    const indicator_t *r = s_find(ind, n, "reserved_share");
    assert_false(r->has_value);
    assert_int_equal(r->status, IND_NO_DATA);
    const indicator_t *u = s_find(ind, n, "reserve_utilisation");
    assert_int_equal(u->status, IND_NO_DATA);
    /* Both lowered: 100 -> 50 and 25 -> 10. */
    tally_row_t both[] = {
        {"capacity_offered_units_total", "resource=\"bed\"", -50},
        {"reserve_offered_units_total", "resource=\"bed\"", -15},
    };
    indicators_compute(NULL, 0, both, 2, &v, ind);
    r = s_find(ind, n, "reserved_share");
    assert_false(r->has_value);
    assert_int_equal(r->status, IND_NO_DATA);
    /* New publications: the share. */
    tally_row_t fresh[] = {
        {"capacity_offered_units_total", "resource=\"bed\"", 10},
        {"reserve_offered_units_total", "resource=\"bed\"", 2},
    };
    indicators_compute(NULL, 0, fresh, 2, &v, ind);
    r = s_find(ind, n, "reserved_share");
    assert_float_equal(r->value, 0.2, 1e-12);
    assert_int_equal(r->status, IND_WARNING);
}

/* "yesterday" is the calendar day before today, also on a 25-hour day (the
 * end of summer time), where 24 h before 23:30 is still the same day. */
static void test_period_yesterday_is_the_day_before_across_dst(void **state)
{
    (void)state;
    const char *tz = getenv("TZ");
    char *saved = tz ? strdup(tz) : NULL;
    setenv("TZ", "America/New_York", 1);
    tzset();
    /* 2026-11-01 is 25 hours long there; 23:30 EST is 2026-11-02 04:30 UTC. */
    struct tm utc = {.tm_year = 2026 - 1900, .tm_mon = 10, .tm_mday = 2, .tm_hour = 4,
                     .tm_min = 30};
    int64_t now_ms = (int64_t)timegm(&utc) * 1000;
    period_t p;
    assert_int_equal(period_parse("today", now_ms, &p), 0);
    assert_string_equal(p.first, "2026-11-01");
    assert_int_equal(period_parse("yesterday", now_ms, &p), 0);
    assert_string_equal(p.first, "2026-10-31");
    assert_string_equal(p.last, "2026-10-31");
    /* And across a year. */
    struct tm ny = {.tm_year = 2027 - 1900, .tm_mon = 0, .tm_mday = 1, .tm_hour = 12};
    assert_int_equal(period_parse("yesterday", (int64_t)timegm(&ny) * 1000, &p), 0);
    assert_string_equal(p.first, "2026-12-31");
    if (saved) {
        setenv("TZ", saved, 1);
        free(saved);
    } else {
        unsetenv("TZ");
    }
    tzset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indicators_reserve_utilisation_nets_released_claims),
        cmocka_unit_test(test_indicators_reserved_share_of_net_withdrawals_is_no_data),
        cmocka_unit_test(test_period_yesterday_is_the_day_before_across_dst),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
