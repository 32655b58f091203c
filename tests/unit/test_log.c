/*
 * Unit tests for daemon/log.c: a line longer than the log takes is cut on a
 * UTF-8 character, its quoted value closed and the cut marked, so that it
 * still parses as key=value pairs; a line that fits is written whole; the
 * repeat window of identical lines runs on the monotonic clock; an event is
 * one line whatever control characters its values hold.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "mr_codec.h"

/* clock_gettime as log.c sees it (-Wl,--wrap): the real one until a test
 * sets s_fake, then the wall and monotonic clocks the test chose. */
int __real_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
static int s_fake;
static time_t s_wall_s, s_mono_s;
int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    if (!s_fake)
        return __real_clock_gettime(id, ts);
    ts->tv_sec = id == CLOCK_REALTIME ? s_wall_s : s_mono_s;
    ts->tv_nsec = 0;
    return 0;
}

/* Logs one info line through a log_t writing to a temporary file; returns
 * the line as written (without its timestamp), or NULL. */
static char *s_logged(const char *event, const char *value)
{
    FILE *out = tmpfile();
    assert_non_null(out);
    log_t *log = log_new(MR_LOG_INFO, out);
    assert_non_null(log);
    log_info(log, event, "path=\"%s\" after=1", value);
    log_destroy(&log);
    rewind(out);
    static char line[8192];
    char *got = fgets(line, sizeof line, out);
    assert_int_equal(fclose(out), 0);
    if (got == NULL)
        return NULL;
    line[strcspn(line, "\n")] = '\0';
    char *body = strstr(line, "Z level=");
    return body ? body + 2 : NULL;
}

static size_t s_count(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static void test_log_line_that_fits_is_whole(void **state)
{
    (void)state;
    const char *body = s_logged("store.recovered", "/var/lib/medroute/store.db");
    assert_non_null(body);
    assert_string_equal(body, "level=info event=store.recovered "
                              "path=\"/var/lib/medroute/store.db\" after=1");
}

/* 3,000 bytes of two-byte characters, each "é" (0xc3 0xa9), and an odd
 * start so that the cut could fall inside one. */
static void test_log_long_line_is_cut_and_marked(void **state)
{
    (void)state;
    char value[3002];
    value[0] = 'x';
    for (size_t i = 1; i + 1 < sizeof value; i += 2)
        memcpy(value + i, "\xc3\xa9", 2);
    value[sizeof value - 1] = '\0';
    const char *body = s_logged("store.failed", value);
    assert_non_null(body);
    size_t len = strlen(body);
    assert_true(len < 2048);
    assert_true(len > 1000);
    const char *mark = "\" truncated=1";
    assert_int_equal(strcmp(body + len - strlen(mark), mark), 0);
    assert_int_equal(s_count(body, '"') % 2, 0);
    assert_true(mr_utf8_valid(body, len));
    assert_null(strstr(body, "after=1"));
}

/* A control character in a value, whoever forgot to clean it (a config
 * parser's problems are a line each), is written as '?': the event stays
 * one line, and no text after a newline passes for a line of its own. */
static void test_log_control_characters_stay_on_one_line(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    log_t *log = log_new(MR_LOG_INFO, out);
    assert_non_null(log);
    log_error(log, "server.reload_refused", "reason=\"%s\"",
              "a.conf:3: x\na.conf:9: y\r\n"
              "2024-01-01T00:00:00.000Z level=error event=forged\t\x7f");
    log_destroy(&log);
    rewind(out);
    char line[512], more[512];
    assert_non_null(fgets(line, sizeof line, out));
    assert_null(fgets(more, sizeof more, out)); /* one line */
    assert_int_equal(fclose(out), 0);
    assert_non_null(strstr(line, " level=error event=server.reload_refused reason=\"a.conf:3: x?"
                                 "a.conf:9: y??"
                                 "2024-01-01T00:00:00.000Z level=error event=forged??\"\n"));
}

/* log_clean, for a foreign string in a quoted value: no quote, backslash or
 * control character, which could end the value or the line. */
static void test_log_clean_leaves_no_quote_backslash_or_control(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(log_clean(buf, sizeof buf, "a\"b\\c\nd\x01" "e\x7f\xc3\xa9"),
                        "a?b?c?d?e?\xc3\xa9");
    assert_string_equal(log_clean(buf, 4, "abcdef"), "abc");
    assert_string_equal(log_clean(buf, sizeof buf, NULL), "");
}

static size_t s_lines(FILE *out, const char *needle)
{
    rewind(out);
    char line[512];
    size_t n = 0;
    while (fgets(line, sizeof line, out) != NULL)
        n += strstr(line, needle) != NULL;
    return n;
}

/* An identical line is held back for 10 s of the monotonic clock, not of the
 * wall clock: a step of the wall clock back (NTP correcting it) must not
 * hold a repeated line, a security event say, back for the length of the
 * step. */
static void test_log_repeat_window_ignores_a_wall_clock_step(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    log_t *log = log_new(MR_LOG_INFO, out);
    assert_non_null(log);
    s_fake = 1;
    s_wall_s = 1700000000;
    s_mono_s = 1000;
    for (int i = 0; i < 7; i++)
        log_warn(log, "security.spoofed_hello", "facility=x key=abcdefgh");
    assert_int_equal(s_lines(out, "event=security.spoofed_hello"), 5); /* 2 held back */
    s_wall_s -= 3600; /* the wall clock steps back an hour ... */
    s_mono_s += 11;   /* ... as 11 s go by */
    fseek(out, 0, SEEK_END);
    log_warn(log, "security.spoofed_hello", "facility=x key=abcdefgh");
    s_fake = 0;
    assert_int_equal(s_lines(out, "event=security.spoofed_hello"), 6);
    assert_int_equal(s_lines(out, "event=log.suppressed count=2"), 1);
    log_destroy(&log);
    assert_int_equal(fclose(out), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_line_that_fits_is_whole),
        cmocka_unit_test(test_log_long_line_is_cut_and_marked),
        cmocka_unit_test(test_log_repeat_window_ignores_a_wall_clock_step),
        cmocka_unit_test(test_log_control_characters_stay_on_one_line),
        cmocka_unit_test(test_log_clean_leaves_no_quote_backslash_or_control),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
