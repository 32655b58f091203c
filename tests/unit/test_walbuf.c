/*
 * test_walbuf.c - the WAL write-gathering VFS (daemon/walbuf.c): a commit
 * is written in a few calls, is visible to another connection (the default
 * VFS) as soon as COMMIT returns, survives the process dying at once, and
 * large transactions (pages spilled and read back mid-transaction, writes
 * past one buffer) and WAL restarts stay intact.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "walbuf.h"

typedef struct {
    char dir[64];
    char path[128];
    walbuf_t *vfs;
} fix_t;

static int setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/mr-walbuf-XXXXXX");
    if (f == NULL || mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof f->path, "%s/t.db", f->dir);
    f->vfs = walbuf_new();
    if (f->vfs == NULL)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fix_t *f = *state;
    walbuf_destroy(&f->vfs);
    assert_null(f->vfs);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* A connection as the store opens it: WAL, synchronous=FULL. */
static sqlite3 *s_open(const fix_t *f, bool buffered, int cache_kb)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                     buffered ? walbuf_name(f->vfs) : NULL),
                     SQLITE_OK);
    char sql[200];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=2000;"
             " PRAGMA cache_size=-%d; CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, v);",
             cache_kb);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static long long s_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void s_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, err ? err : "?");
}

static void s_integrity(const fix_t *f)
{
    sqlite3 *db = s_open(f, false, 2000);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Write system calls of this process so far (/proc/self/io, syscw). */
static long long s_write_calls(void)
{
    FILE *io = fopen("/proc/self/io", "r");
    assert_non_null(io);
    char line[128];
    long long v = -1;
    while (fgets(line, sizeof line, io))
        if (strncmp(line, "syscw:", 6) == 0)
            v = atoll(line + 6);
    fclose(io);
    return v;
}

/* 40 new pages in one commit: SQLite alone makes two write calls per page
 * (frame header, page); through walbuf the commit takes a handful. */
static long long s_calls_for_one_commit(const fix_t *f, bool buffered)
{
    sqlite3 *db = s_open(f, buffered, 2000);
    s_exec(db, "INSERT INTO t(v) VALUES(zeroblob(10))"); /* the WAL exists */
    long long before = s_write_calls();
    s_exec(db, "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
               " WHERE i < 40) INSERT INTO t(v) SELECT randomblob(3500) FROM n; COMMIT;");
    long long calls = s_write_calls() - before;
    sqlite3_close(db);
    return calls;
}

static void test_walbuf_a_commit_takes_a_few_writes(void **state)
{
    fix_t *f = *state;
    long long plain = s_calls_for_one_commit(f, false);
    long long gathered = s_calls_for_one_commit(f, true);
    printf("write calls for a 40-page commit: default VFS %lld, walbuf %lld\n", plain, gathered);
    assert_true(plain >= 80);
    assert_true(gathered * 8 <= plain); /* (valgrind adds calls of its own to both) */
    s_integrity(f);
}

/* Another connection (the checkpoint thread's, the default VFS) sees each
 * commit as soon as COMMIT returns. */
static void test_walbuf_commit_is_visible_to_other_connections(void **state)
{
    fix_t *f = *state;
    sqlite3 *w = s_open(f, true, 2000);
    sqlite3 *r = s_open(f, false, 2000);
    for (int i = 1; i <= 50; i++) {
        s_exec(w, "BEGIN; INSERT INTO t(v) VALUES(randomblob(700));"
                  " INSERT INTO t(v) VALUES(randomblob(700)); COMMIT;");
        assert_int_equal(s_int(r, "SELECT count(*) FROM t"), 2 * i);
        if (i % 10 == 0) /* the reader checkpoints; the writer then restarts the WAL */
            assert_int_equal(sqlite3_wal_checkpoint_v2(r, NULL, SQLITE_CHECKPOINT_RESTART,
                                                       NULL, NULL),
                             SQLITE_OK);
    }
    sqlite3_close(r);
    sqlite3_close(w);
    s_integrity(f);
}

/* A transaction larger than the page cache and than one buffer: pages are
 * spilled to the WAL and read back before the commit. */
static void test_walbuf_large_transaction(void **state)
{
    fix_t *f = *state;
    sqlite3 *w = s_open(f, true, 512);
    s_exec(w, "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
              " WHERE i < 6000) INSERT INTO t(v) SELECT randomblob(2000) FROM n;"
              " UPDATE t SET v = randomblob(1500) WHERE k % 3 = 0; COMMIT;");
    assert_int_equal(s_int(w, "SELECT count(*) FROM t"), 6000);
    assert_int_equal(s_int(w, "SELECT sum(length(v) = 1500) FROM t"), 2000);
    sqlite3_close(w);
    s_integrity(f);
}

/* The process is killed with a transaction open: every commit that
 * returned is there, the open one is not. */
static void test_walbuf_commits_survive_sudden_exit(void **state)
{
    fix_t *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sqlite3 *w = s_open(f, true, 2000);
        for (int i = 0; i < 200; i++)
            if (sqlite3_exec(w, "BEGIN; INSERT INTO t(v) VALUES(randomblob(900)); COMMIT;", NULL,
                             NULL, NULL) != SQLITE_OK)
                _exit(2);
        /* an open transaction with buffered frames, then gone */
        sqlite3_exec(w, "BEGIN; INSERT INTO t(v) SELECT randomblob(900) FROM t;", NULL, NULL,
                     NULL);
        raise(SIGKILL);
        _exit(3);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    sqlite3 *r = s_open(f, false, 2000);
    assert_int_equal(s_int(r, "SELECT count(*) FROM t"), 200);
    sqlite3_close(r);
    s_integrity(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_walbuf_a_commit_takes_a_few_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walbuf_commit_is_visible_to_other_connections, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_walbuf_large_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walbuf_commits_survive_sudden_exit, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("walbuf", tests, NULL, NULL);
}
