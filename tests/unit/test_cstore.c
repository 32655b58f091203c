/*
 * Unit tests for clients/lib/cstore.c: the client's own store in a state
 * directory (its outbox, outcomes and seen-set in SQLite), under a wall
 * clock the test steps (-Wl,--wrap=clock_gettime: the seen-set's times on disk are
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

static int s_count_outcomes(void *arg, int64_t row, const cstore_outcome_t *oc)
{
    (void)row;
    assert_string_equal(oc->message_id, "m-1");
    assert_int_equal(oc->code, 6);
    assert_string_equal(oc->reason, "too large");
    (*(int *)arg)++;
    return 0;
}

static int s_count_outbox(void *arg, const char *id, const void *body, size_t len, uint64_t tag)
{
    (void)id, (void)body, (void)len, (void)tag;
    (*(int *)arg)++;
    return 0;
}

/* An outcome kept takes its message's outbox row with it, in one
 * transaction, and stays until forgotten. */
static void test_cstore_outcome_replaces_its_outbox_row(void **state)
{
    s_fixture_t *f = *state;
    /* Envelope{message_id = "m-1"}: field 1, length 3. */
    const uint8_t body[] = {0x0a, 3, 'm', '-', '1'};
    assert_int_equal(cstore_outbox_add(f->cs, "m-1", body, sizeof body, 5), 0);
    cstore_outcome_t oc = {.type = 2, .message_id = "m-1", .code = 6, .reason = "too large"};
    int64_t row = cstore_outcome_keep(f->cs, &oc, "m-1");
    assert_true(row > 0);
    int outcomes = 0, entries = 0;
    assert_int_equal(cstore_outcome_each(f->cs, s_count_outcomes, &outcomes), 0);
    assert_int_equal(cstore_outbox_each(f->cs, s_count_outbox, NULL, &entries), 0);
    assert_int_equal(outcomes, 1);
    assert_int_equal(entries, 0);
    assert_int_equal(cstore_outcome_forget(f->cs, row, row), 0);
    outcomes = 0;
    assert_int_equal(cstore_outcome_each(f->cs, s_count_outcomes, &outcomes), 0);
    assert_int_equal(outcomes, 0);
}

/* The tag of the entry an outbox row holds, kept by s_tag_outbox. */
static int s_tag_outbox(void *arg, const char *id, const void *body, size_t len, uint64_t tag)
{
    (void)id, (void)body, (void)len;
    *(uint64_t *)arg = tag;
    return 0;
}

/* An outbox row keeps its submission tag, so that a process reading it
 * back sends its copies with the tag of the earlier process's; a file an
 * earlier version wrote (its outbox without the column) is given it, its
 * rows read back with tag 0. */
static void test_cstore_outbox_row_keeps_its_tag(void **state)
{
    s_fixture_t *f = *state;
    const uint8_t body[] = {0x0a, 3, 'm', '-', '1'};
    assert_int_equal(cstore_outbox_add(f->cs, "m-1", body, sizeof body, 0xfedcba9876543210u), 0);
    cstore_close(&f->cs);
    f->cs = cstore_open(f->dir, "t-aihua");
    assert_non_null(f->cs);
    uint64_t tag = 0;
    assert_int_equal(cstore_outbox_each(f->cs, s_tag_outbox, NULL, &tag), 0);
    assert_true(tag == 0xfedcba9876543210u);
    cstore_close(&f->cs);

    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "sqlite3 '%s/client-t-older.db' \"CREATE TABLE outbox(message_id TEXT PRIMARY KEY,"
             " body BLOB NOT NULL); INSERT INTO outbox VALUES('m-1', x'0a036d2d31');\"",
             f->dir);
    assert_int_equal(system(cmd), 0);
    f->cs = cstore_open(f->dir, "t-older");
    assert_non_null(f->cs);
    tag = 1;
    assert_int_equal(cstore_outbox_each(f->cs, s_tag_outbox, NULL, &tag), 0);
    assert_true(tag == 0);
    assert_int_equal(cstore_outbox_add(f->cs, "m-2", body, sizeof body, 9), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cstore_prunes_old_in_handler_marks, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cstore_keeps_a_mark_handed_off_again, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cstore_outcome_replaces_its_outbox_row, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_cstore_outbox_row_keeps_its_tag, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
