/*
 * Unit tests for daemon/indicators.c (the formulas over a period's tallies
 * and visit reports) and daemon/period.c (the periods' days).
 */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indicators_reserve_utilisation_nets_released_claims),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
