/*
 * Unit tests for daemon/tally.c: the label text (tally_labels, the hot
 * path's replacement for snprintf, and tally_label_value), and the all-time
 * totals kept in memory, checked against the table's own sums on a real
 * SQLite file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally.h"

/* sqlite3_column_text as tally.c sees it (-Wl,--wrap): NULL for column
 * s_null_column (>= 0), as SQLite answers when it finds no memory to
 * convert a value; the real one otherwise. */
const unsigned char *__real_sqlite3_column_text(sqlite3_stmt *st, int i);
const unsigned char *__wrap_sqlite3_column_text(sqlite3_stmt *st, int i);
static int s_null_column = -1;
const unsigned char *__wrap_sqlite3_column_text(sqlite3_stmt *st, int i)
{
    return i == s_null_column ? NULL : __real_sqlite3_column_text(st, i);
}

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
    /* Chinese department names stay apart, whole characters only. */
    tally_label_value(out, sizeof out, "\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91"); /* 心内科 */
    assert_string_equal(out, "\xe5\xbf\x83\xe5\x86\x85\xe7\xa7\x91");
    tally_label_value(out, sizeof out, "\xe9\xaa\xa8\xe5\xa4\x96\xe7\xa7\x91"); /* 骨外科 */
    assert_string_equal(out, "\xe9\xaa\xa8\xe5\xa4\x96\xe7\xa7\x91");
    /* 11 three-byte characters: 10 fit in 32 bytes, the 11th is not cut. */
    char longer[64] = "";
    for (int i = 0; i < 11; i++)
        strcat(longer, "\xe7\xa7\x91");
    tally_label_value(out, sizeof out, longer);
    assert_int_equal(strlen(out), 30);
    /* Broken UTF-8 (a lone continuation byte, a cut sequence) becomes '_'. */
    tally_label_value(out, sizeof out, "a\x80" "b\xe5\xbf");
    assert_string_equal(out, "a_b__");
    char small[5];
    tally_label_value(small, sizeof small, "\xe5\xbf\x83\xe5\x86\x85");
    assert_string_equal(small, "\xe5\xbf\x83");
}

/* One batch: adds, flush inside a transaction, then commit or roll back. */
static void s_batch(sqlite3 *db, tally_t *t, int64_t day_ms, bool commit, int64_t k)
{
    assert_int_equal(tally_add(t, "messages_stored_total", "source=\"t-a\"", k), SQLITE_OK);
    assert_int_equal(tally_add(t, "messages_stored_total", "source=\"t-b\"", 2 * k), SQLITE_OK);
    assert_int_equal(tally_observe(t, "referral_accept_seconds", "dest=\"yx-lead\"", 90),
                     SQLITE_OK);
    assert_int_equal(tally_add(t, "zero_total", "", 0), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(t, day_ms, false), SQLITE_OK);
    if (commit) {
        assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        tally_commit(t);
    } else {
        assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
        tally_discard(t);
    }
}

/* A batch that counts nothing of its own and commits: wrote says whether it
 * wrote anything else (a batch of reads did not). */
static void s_batch_without_counts(sqlite3 *db, tally_t *t, int64_t day_ms, bool wrote)
{
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(t, day_ms, wrote), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    tally_commit(t);
}

/* The rows of a query as "name{labels}=value;..." */
static char *s_text(tally_t *t, const char *first, const char *last, const char *facility)
{
    tally_row_t *rows = NULL;
    size_t n = 0;
    assert_int_equal(tally_query(t, first, last, facility, &rows, &n), SQLITE_OK);
    size_t cap = 64 + n * 200, at = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s{%s}=%lld;", rows[i].name, rows[i].labels,
                               (long long)rows[i].value);
    tally_rows_free(rows, n);
    return out;
}

/* Checks that the all-time answer (from memory) is the table's (a period
 * covering every day goes to the table), with and without a facility. */
static void s_same_as_table(tally_t *t, const char *expect_all)
{
    char *mem = s_text(t, NULL, NULL, NULL);
    char *tab = s_text(t, "0000-00-00", "9999-99-99", NULL);
    assert_string_equal(mem, tab);
    if (expect_all != NULL)
        assert_string_equal(mem, expect_all);
    free(mem);
    free(tab);
    mem = s_text(t, NULL, NULL, "t-b");
    tab = s_text(t, "0000-00-00", "9999-99-99", "t-b");
    assert_string_equal(mem, tab);
    free(mem);
    free(tab);
}

/*
 * All time is answered from totals kept in memory: the same rows as the
 * table's sums, in the same order, over several days; a rolled-back batch
 * counts nowhere; a new tally_new on the file starts from the table.
 */
static void test_tally_all_time_totals_match_the_table(void **state)
{
    (void)state;
    char path[] = "/tmp/mr-test-tally-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    int rc = 0;
    tally_t *t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    s_same_as_table(t, "");
    int64_t day = 86400LL * 1000;
    s_batch(db, t, 20000 * day, true, 1);
    s_batch(db, t, 20001 * day, true, 10);
    s_batch(db, t, 20001 * day, false, 100); /* rolled back */
    s_batch(db, t, 20002 * day, true, 1000);
    const char *expect = "messages_stored_total{source=\"t-a\"}=1011;"
                         "messages_stored_total{source=\"t-b\"}=2022;"
                         "referral_accept_seconds_bucket{dest=\"yx-lead\",le=\"300\"}=3;"
                         "referral_accept_seconds_count{dest=\"yx-lead\"}=3;"
                         "referral_accept_seconds_sum{dest=\"yx-lead\"}=270;";
    s_same_as_table(t, expect);
    char *one = s_text(t, NULL, NULL, "t-b");
    assert_string_equal(one, "messages_stored_total{source=\"t-b\"}=2022;");
    free(one);
    tally_destroy(&t);
    assert_null(t);
    t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    s_same_as_table(t, expect);
    tally_destroy(&t);
    sqlite3_close(db);
    unlink(path);
}

/*
 * Kept counts (tally_kept_*): written by a flush only in a batch that
 * writes (its own counts, or wrote), left by a discard and by the commit of
 * a batch of reads, cleared by the commit of the batch that wrote them, and
 * carried from one tally to the next (a reopened connection), merged per
 * key; they join the all-time totals once.
 */
static void test_tally_kept_counts_wait_for_a_commit(void **state)
{
    (void)state;
    char path[] = "/tmp/mr-test-tally-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    tally_kept_t *kept = tally_kept_new();
    assert_non_null(kept);
    int rc = 0;
    tally_t *t = tally_new(db, kept, &rc);
    assert_non_null(t);
    int64_t day = 20000 * 86400LL * 1000;
    assert_int_equal(tally_kept_add(kept, "messages_redelivered_total", "destination=\"lab\"", 1),
                     SQLITE_OK);
    s_batch(db, t, day, false, 1); /* rolled back: the kept count stays */
    assert_int_equal(tally_kept_add(kept, "messages_redelivered_total", "destination=\"lab\"", 1),
                     SQLITE_OK);
    tally_destroy(&t); /* the connection goes; the kept counts do not */
    t = tally_new(db, kept, &rc);
    assert_non_null(t);
    /* Batches of reads commit without writing them, and keep them. */
    s_batch_without_counts(db, t, day, false);
    s_batch_without_counts(db, t, day, false);
    char *all = s_text(t, "0000-00-00", "9999-99-99", "lab");
    assert_string_equal(all, "");
    free(all);
    all = s_text(t, NULL, NULL, "lab");
    assert_string_equal(all, "");
    free(all);
    s_batch(db, t, day, true, 1);
    s_batch(db, t, day, true, 1); /* commits nothing kept a second time */
    all = s_text(t, NULL, NULL, "lab");
    assert_string_equal(all, "messages_redelivered_total{destination=\"lab\"}=2;");
    free(all);
    all = s_text(t, "0000-00-00", "9999-99-99", "lab");
    assert_string_equal(all, "messages_redelivered_total{destination=\"lab\"}=2;");
    free(all);
    /* A batch that wrote something else, with no counts of its own, writes
     * them too. */
    assert_int_equal(tally_kept_add(kept, "messages_redelivered_total", "destination=\"lab\"", 1),
                     SQLITE_OK);
    s_batch_without_counts(db, t, day, true);
    all = s_text(t, NULL, NULL, "lab");
    assert_string_equal(all, "messages_redelivered_total{destination=\"lab\"}=3;");
    free(all);
    all = s_text(t, "0000-00-00", "9999-99-99", "lab");
    assert_string_equal(all, "messages_redelivered_total{destination=\"lab\"}=3;");
    free(all);
    tally_destroy(&t);
    tally_kept_destroy(&kept);
    assert_null(kept);
    sqlite3_close(db);
    unlink(path);
}

/*
 * A facility filter keeps the label sets whose source or destination is
 * that facility, in memory (all time) as in the table (a period): not
 * resource="bed" for a facility named "bed", nor a free-text department
 * holding another facility's id.
 */
static void test_tally_facility_is_a_whole_source_or_destination(void **state)
{
    (void)state;
    char path[] = "/tmp/mr-test-tally-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    int rc = 0;
    tally_t *t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    assert_int_equal(tally_add(t, "slot_claims_total",
                               "claim=\"general\",family_doctor=\"no\",resource=\"bed\"", 1),
                     SQLITE_OK);
    assert_int_equal(tally_add(t, "messages_stored_total",
                               "destination=\"bed\",kind=\"lab_order\",source=\"t-a\"", 2),
                     SQLITE_OK);
    assert_int_equal(tally_add(t, "referrals_requested_total",
                               "department=\"t-b\",destination=\"yx-lead\",direction=\"up\","
                               "priority=\"routine\",source=\"t-a\"",
                               4),
                     SQLITE_OK);
    assert_int_equal(tally_add(t, "lab_orders_total", "source=\"t-b\"", 8), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(t, 20000 * 86400LL * 1000, false), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    tally_commit(t);
    const char *const bounds[][2] = {{NULL, NULL}, {"0000-00-00", "9999-99-99"}};
    for (size_t i = 0; i < 2; i++) {
        char *bed = s_text(t, bounds[i][0], bounds[i][1], "bed");
        assert_string_equal(bed, "messages_stored_total{destination=\"bed\",kind=\"lab_order\","
                                 "source=\"t-a\"}=2;");
        free(bed);
        char *tb = s_text(t, bounds[i][0], bounds[i][1], "t-b");
        assert_string_equal(tb, "lab_orders_total{source=\"t-b\"}=8;");
        free(tb);
        char *ta = s_text(t, bounds[i][0], bounds[i][1], "t-a");
        assert_non_null(strstr(ta, "referrals_requested_total{"));
        assert_null(strstr(ta, "slot_claims_total"));
        free(ta);
    }
    tally_destroy(&t);
    sqlite3_close(db);
    unlink(path);
}

/*
 * An all-time total past INT64_MAX (only a store edited by hand holds one)
 * loads capped at INT64_MAX; the counts added to it later stay there rather
 * than overflow (to a negative total, and undefined behaviour).
 */
static void test_tally_all_time_total_saturates(void **state)
{
    (void)state;
    char path[] = "/tmp/mr-test-tally-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    int rc = 0;
    tally_t *t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    tally_destroy(&t);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO tallies VALUES('2024-01-01', 'lab_orders_total',"
                                  " 'source=\"t-b\"', 9223372036854775807),"
                                  " ('2024-01-02', 'lab_orders_total', 'source=\"t-b\"', 5)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    char *all = s_text(t, NULL, NULL, NULL);
    assert_string_equal(all, "lab_orders_total{source=\"t-b\"}=9223372036854775807;");
    free(all);
    assert_int_equal(tally_add(t, "lab_orders_total", "source=\"t-b\"", 1), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(t, 20000 * 86400LL * 1000, false), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    tally_commit(t);
    all = s_text(t, NULL, NULL, NULL);
    assert_string_equal(all, "lab_orders_total{source=\"t-b\"}=9223372036854775807;");
    free(all);
    tally_destroy(&t);
    sqlite3_close(db);
    unlink(path);
}

/*
 * Out of memory while reading a row (sqlite3_column_text answers NULL for
 * a NOT NULL column): loading the all-time totals and a period's query fail
 * with SQLITE_NOMEM, neither reads the NULL.
 */
static void test_tally_text_without_memory_is_nomem(void **state)
{
    (void)state;
    char path[] = "/tmp/mr-test-tally-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    int rc = 0;
    tally_t *t = tally_new(db, NULL, &rc);
    assert_non_null(t);
    assert_int_equal(tally_add(t, "lab_orders_total", "source=\"t-b\"", 8), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(tally_flush(t, 20000 * 86400LL * 1000, false), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    tally_commit(t);
    for (int column = 0; column < 2; column++) {
        s_null_column = column;
        tally_row_t *rows = NULL;
        size_t n = 0;
        assert_int_equal(tally_query(t, "0000-00-00", "9999-99-99", NULL, &rows, &n),
                         SQLITE_NOMEM);
        tally_rows_free(rows, n);
        tally_t *t2 = tally_new(db, NULL, &rc);
        assert_null(t2);
        assert_int_equal(rc, SQLITE_NOMEM);
        s_null_column = -1;
    }
    tally_destroy(&t);
    sqlite3_close(db);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tally_labels_in_prometheus_form),
        cmocka_unit_test(test_tally_labels_too_long_is_refused),
        cmocka_unit_test(test_tally_label_value_is_made_safe),
        cmocka_unit_test(test_tally_all_time_totals_match_the_table),
        cmocka_unit_test(test_tally_kept_counts_wait_for_a_commit),
        cmocka_unit_test(test_tally_facility_is_a_whole_source_or_destination),
        cmocka_unit_test(test_tally_all_time_total_saturates),
        cmocka_unit_test(test_tally_text_without_memory_is_nomem),
    };
    return cmocka_run_group_tests_name("tally", tests, NULL, NULL);
}
