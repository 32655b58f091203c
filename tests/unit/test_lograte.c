/*
 * Unit tests for daemon/lograte.c: at most LOGRATE_LINES log lines per
 * source and window, the lines denied counted and told at most once a
 * window, a quiet source starting afresh.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lograte.h"

static void test_lograte_allows_a_window_of_lines(void **state)
{
    (void)state;
    lograte_t r = {0};
    int64_t t = 5000;
    for (int i = 0; i < LOGRATE_LINES; i++)
        assert_true(lograte_allow(&r, t + i));
    assert_false(lograte_allow(&r, t + LOGRATE_LINES));
    assert_false(lograte_allow(&r, t + LOGRATE_WINDOW_MS - 1));
    assert_int_equal(r.suppressed, 2);
    /* The window over: lines again, the denied ones still to tell. */
    assert_true(lograte_allow(&r, t + LOGRATE_WINDOW_MS));
    assert_int_equal(r.suppressed, 2);
}

static void test_lograte_tells_denied_lines_once_a_window(void **state)
{
    (void)state;
    lograte_t r = {0};
    assert_int_equal(lograte_take(&r, 100), 0); /* nothing denied */
    for (int i = 0; i < LOGRATE_LINES + 5; i++)
        (void)lograte_allow(&r, 100);
    assert_int_equal(lograte_take(&r, 200), 5);
    assert_int_equal(lograte_take(&r, 300), 0); /* told, reset */
    (void)lograte_allow(&r, 400);               /* still the first window: denied */
    assert_int_equal(r.suppressed, 1);
    assert_int_equal(lograte_take(&r, 200 + LOGRATE_WINDOW_MS - 1), 0); /* too soon */
    assert_int_equal(lograte_take(&r, 200 + LOGRATE_WINDOW_MS), 1);
}

static void test_lograte_sources_are_separate(void **state)
{
    (void)state;
    lograte_t noisy = {0}, quiet = {0};
    for (int i = 0; i < 3 * LOGRATE_LINES; i++)
        (void)lograte_allow(&noisy, 1000);
    assert_true(lograte_allow(&quiet, 1000));
    assert_int_equal(noisy.suppressed, 2 * LOGRATE_LINES);
    assert_int_equal(quiet.suppressed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lograte_allows_a_window_of_lines),
        cmocka_unit_test(test_lograte_tells_denied_lines_once_a_window),
        cmocka_unit_test(test_lograte_sources_are_separate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
