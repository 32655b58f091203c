/*
 * Unit tests for daemon/tally.c's label text: tally_labels (the hot path's
 * replacement for snprintf) and tally_label_value.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "tally.h"

static void test_tally_labels_in_prometheus_form(void **state)
{
    (void)state;
    char out[128];
    const char *const three[] = {"destination", "yx-lead", "kind", "referral", "source",
                                 "t-aihua"};
    assert_int_equal(tally_labels(out, sizeof out, 3, three),
                     (int)strlen("destination=\"yx-lead\",kind=\"referral\",source=\"t-aihua\""));
    assert_string_equal(out, "destination=\"yx-lead\",kind=\"referral\",source=\"t-aihua\"");
    const char *const one[] = {"code", NULL};
    assert_int_equal(tally_labels(out, sizeof out, 1, one), 7);
    assert_string_equal(out, "code=\"\"");
    assert_int_equal(tally_labels(out, sizeof out, 0, one), 0);
    assert_string_equal(out, "");
}

static void test_tally_labels_too_long_is_refused(void **state)
{
    (void)state;
    const char *const pairs[] = {"destination", "yx-lead"}; /* 21 bytes and the NUL */
    char out[22];
    assert_int_equal(tally_labels(out, sizeof out, 1, pairs), 21);
    char small[21];
    memset(small, 'x', sizeof small);
    assert_int_equal(tally_labels(small, sizeof small, 1, pairs), -1);
    assert_string_equal(small, ""); /* never a truncated label set */
    assert_int_equal(tally_labels(small, 0, 1, pairs), -1);
}

static void test_tally_label_value_is_made_safe(void **state)
{
    (void)state;
    char out[40];
    tally_label_value(out, sizeof out, "cardio \"x\",y=z\\");
    assert_string_equal(out, "cardio _x__y_z_");
    tally_label_value(out, sizeof out, "0123456789012345678901234567890123456789");
    assert_int_equal(strlen(out), 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tally_labels_in_prometheus_form),
        cmocka_unit_test(test_tally_labels_too_long_is_refused),
        cmocka_unit_test(test_tally_label_value_is_made_safe),
    };
    return cmocka_run_group_tests_name("tally", tests, NULL, NULL);
}
