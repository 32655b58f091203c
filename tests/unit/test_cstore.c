/*
 * Unit tests for clients/lib/cstore.c: the client's own store in a state
 * directory (its outbox and seen-set in SQLite), under a wall clock the
 * test steps (-Wl,--wrap=clock_gettime: the seen-set's times on disk are
 * wall-clock times).
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
#include <unistd.h>

#include "cstore.h"

#define S_DAY_S 86400
#define S_KEEP_MS (7LL * S_DAY_S * 1000)

/* clock_gettime as cstore.c sees it: the real one, moved s_ahead_s seconds
 * forward. */
int __real_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
static time_t s_ahead_s;
int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    int rc = __real_clock_gettime(id, ts);
    ts->tv_sec += s_ahead_s;
    return rc;
}

typedef struct {
    char dir[64];
    cstore_t *cs;
} s_fixture_t;

static int s_setup(void **state)
{
    s_fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/mrt-cstore-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->cs = cstore_open(f->dir, "t-aihua");
    s_ahead_s = 0;
    *state = f;
    return f->cs == NULL ? -1 : 0;
}

static int s_teardown(void **state)
{
    s_fixture_t *f = *state;
    cstore_close(&f->cs);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc;
}

/*
 * An IN_HANDLER mark (the process died inside the handler) whose message
 * never comes again (it expired, an operator dropped it, or every handler
 * refused it until then) is forgotten after the keep window, as a DONE key
 * is (the prune took DONE keys only, and such marks stayed on disk for
 * ever).  Recent ones stay.
 */
static void test_cstore_prunes_old_in_handler_marks(void **state)
{
    s_fixture_t *f = *state;
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "old-mark", SEEN_IN_HANDLER), 0);
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "old-done", SEEN_DONE), 0);
    s_ahead_s = 8 * S_DAY_S;
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "new-mark", SEEN_IN_HANDLER), 0);
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "new-done", SEEN_DONE), 0);

    assert_int_equal(cstore_seen_prune(f->cs, S_KEEP_MS), 0);
    assert_int_equal(cstore_seen_get(f->cs, "yx-lab", "old-mark"), SEEN_NONE);
    assert_int_equal(cstore_seen_get(f->cs, "yx-lab", "old-done"), SEEN_NONE);
    assert_int_equal(cstore_seen_get(f->cs, "yx-lab", "new-mark"), SEEN_IN_HANDLER);
    assert_int_equal(cstore_seen_get(f->cs, "yx-lab", "new-done"), SEEN_DONE);
}

/* A mark set again (a hand-off after the crash, refused again) counts from
 * its last hand-off: the message is still coming. */
static void test_cstore_keeps_a_mark_handed_off_again(void **state)
{
    s_fixture_t *f = *state;
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "mark", SEEN_IN_HANDLER), 0);
    s_ahead_s = 6 * S_DAY_S;
    assert_int_equal(cstore_seen_set(f->cs, "yx-lab", "mark", SEEN_IN_HANDLER), 0);
    s_ahead_s = 8 * S_DAY_S;
    assert_int_equal(cstore_seen_prune(f->cs, S_KEEP_MS), 0);
    assert_int_equal(cstore_seen_get(f->cs, "yx-lab", "mark"), SEEN_IN_HANDLER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cstore_prunes_old_in_handler_marks, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cstore_keeps_a_mark_handed_off_again, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
