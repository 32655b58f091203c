/*
 * store_path.c - bench_store_path: what one message costs a durable store,
 * by engine and batch size, with nothing else running.
 *
 * The message path alone (no clinical rows, no tallies, no sockets): per
 * message a 600-byte body is stored under a new seq with its
 * (source, message_id) key, and the message stored one batch earlier is
 * acknowledged.  One transaction per batch of B messages, durable at commit:
 *
 *   sqlite  the `messages` table as daemon/store.c has it (rowid seq, the
 *           (source, message_id) unique index, partial indexes for pending,
 *           express, expiry and done), WAL, synchronous=FULL, through the
 *           walbuf VFS as the store writes it; ack = UPDATE
 *   sqlapp  SQLite written append-only, the shape of the log proposal kept
 *           in SQLite: message rows inserted under their seq and never
 *           updated, the (source, message_id) -> seq key in a WITHOUT ROWID
 *           table, acks appended to acks(seq, done_ms); the pending set and
 *           expiry would live in memory, rebuilt at start
 *   lmdb    (when built with liblmdb) bodies under big-endian seq (append),
 *           a dedup tree, a pending tree (dest, seq), a done tree;
 *           ack = delete pending + put done; default (synced) commits
 *   rocksdb (when built with librocksdb) the same keys, prefixed, in one
 *           LSM tree; one write batch per batch with sync = true (its WAL
 *           appended and fsynced); compaction threads are counted too
 *   log     the floor: body records and 16-byte ack records appended to
 *           one file, one write and one fdatasync per batch
 *
 * B = 13 is medroute's batch at half load in the benchmark, 700 its batch
 * when saturated.  Prints one line per engine and batch: CPU (all threads of
 * this process) and wall time per message.  Stores go to a fresh temporary
 * directory (TMPDIR or /tmp), removed at the end.  Used for
 * docs/performance.md ("Next steps") and docs/proposal-message-log.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef MR_HAVE_LMDB
#include <lmdb.h>
#endif
#ifdef MR_HAVE_ROCKSDB
#include <rocksdb/c.h>
#endif

#include "bench_util.h"
#include "walbuf.h"

#define S_BODY 600

/* One engine: open a store in dir, then per batch begin, put and ack each
 * message, commit; close.  Every call: 0 or a negative errno. */
typedef struct {
    const char *name;
    void *(*open)(const char *dir, int batch, int *rc);
    int (*begin)(void *e);
    int (*put)(void *e, uint64_t seq, const char *source, const char *id, size_t id_len,
               const char *body);
    int (*ack)(void *e, uint64_t seq, int64_t done_ms);
    int (*commit)(void *e);
    void (*close)(void *e);
} s_engine_t;

static double s_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

#if defined(MR_HAVE_LMDB) || defined(MR_HAVE_ROCKSDB)
/* Keys that sort by seq. */
static void s_be64(uint8_t *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
}
#endif

/* Runs total messages through an engine in batches; prints its line. */
static int s_drive(const s_engine_t *eng, const char *dir, int batch, int total)
{
    int rc = 0;
    void *e = eng->open(dir, batch, &rc);
    if (e == NULL)
        return rc ? rc : -EIO;
    char body[S_BODY];
    memset(body, 'x', sizeof body);
    double cpu0 = s_cpu(), wall0 = (double)bu_now_ns() / 1e9;
    uint64_t seq = 0;
    for (int n = 0; rc == 0 && n < total; n += batch) {
        rc = eng->begin(e);
        for (int i = 0; rc == 0 && i < batch; i++) {
            seq++;
            char source[16], id[64];
            snprintf(source, sizeof source, "t-bench%02d", (int)(seq % 4));
            /* time-ordered, as libmedroute's message ids are */
            int id_len = snprintf(id, sizeof id, "%016llx-b%02d-%010llu",
                                  (unsigned long long)seq * 1000, (int)(seq % 4),
                                  (unsigned long long)seq);
            rc = eng->put(e, seq, source, id, (size_t)id_len, body);
            if (rc == 0 && seq > (uint64_t)batch)
                rc = eng->ack(e, seq - (uint64_t)batch, 1700000001000LL + (int64_t)seq);
        }
        if (rc == 0)
            rc = eng->commit(e);
    }
    if (rc == 0) {
        double cpu = s_cpu() - cpu0, wall = (double)bu_now_ns() / 1e9 - wall0;
        printf("%-7s batch %4d: %6.1f us CPU/msg, %6.1f us wall/msg, %8.0f msg/s\n", eng->name,
               batch, cpu / total * 1e6, wall / total * 1e6, total / wall);
        fflush(stdout);
    }
    eng->close(e);
    return rc;
}

/* ---- SQLite ------------------------------------------------------------------------- */

enum { Q_BEGIN, Q_COMMIT, Q_PUT, Q_ACK, Q_KEY, Q_N };

typedef struct {
    sqlite3 *db;
    sqlite3_stmt *st[Q_N];   /* Q_KEY: sqlapp only */
    bool append;
    walbuf_t *vfs;
} s_sqlite_t;

static const char *const s_sqlite_schema =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-32768;"
    "CREATE TABLE messages(seq INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL,"
    " message_id TEXT NOT NULL, dest TEXT NOT NULL, kind INTEGER NOT NULL,"
    " stored_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, state INTEGER NOT NULL,"
    " done_ms INTEGER, body BLOB NOT NULL, express INTEGER NOT NULL, UNIQUE(source, message_id));"
    "CREATE INDEX pending ON messages(dest, seq) WHERE state = 0;"
    "CREATE INDEX express ON messages(dest, seq) WHERE state = 0 AND express = 1;"
    "CREATE INDEX expiry ON messages(expires_ms) WHERE state = 0;"
    "CREATE INDEX done ON messages(done_ms) WHERE state = 1;";

static const char *const s_sqlapp_schema =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-32768;"
    "CREATE TABLE messages(seq INTEGER PRIMARY KEY, source TEXT NOT NULL,"
    " message_id TEXT NOT NULL, dest TEXT NOT NULL, kind INTEGER NOT NULL,"
    " stored_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, body BLOB NOT NULL,"
    " express INTEGER NOT NULL);"
    "CREATE TABLE message_keys(source TEXT NOT NULL, message_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL, PRIMARY KEY(source, message_id)) WITHOUT ROWID;"
    "CREATE TABLE acks(seq INTEGER PRIMARY KEY, done_ms INTEGER NOT NULL);";

static int s_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

static void s_sqlite_close(void *e)
{
    s_sqlite_t *q = e;
    for (int i = 0; i < Q_N; i++)
        sqlite3_finalize(q->st[i]);
    sqlite3_close(q->db);
    walbuf_destroy(&q->vfs);
    free(q);
}

static void *s_sqlite_open_as(const char *dir, int batch, int *rc, bool append)
{
    static const char *const sql[Q_N] = {
        [Q_BEGIN] = "BEGIN IMMEDIATE",
        [Q_COMMIT] = "COMMIT",
        [Q_PUT] = "INSERT INTO messages(source, message_id, dest, kind, stored_ms, expires_ms,"
                  " state, body, express) VALUES(?1, ?2, 'yx-lead', 1, ?3, ?4, 0, ?5, 0)",
        [Q_ACK] = "UPDATE messages SET state = 1, done_ms = ?2 WHERE seq = ?1"};
    static const char *const app[Q_N] = {
        [Q_BEGIN] = "BEGIN IMMEDIATE",
        [Q_COMMIT] = "COMMIT",
        [Q_PUT] = "INSERT INTO messages(seq, source, message_id, dest, kind, stored_ms,"
                  " expires_ms, body, express) VALUES(?6, ?1, ?2, 'yx-lead', 1, ?3, ?4, ?5, 0)",
        [Q_ACK] = "INSERT INTO acks(seq, done_ms) VALUES(?1, ?2)",
        [Q_KEY] = "INSERT INTO message_keys(source, message_id, seq) VALUES(?1, ?2, ?3)"};
    char path[512];
    snprintf(path, sizeof path, "%s/%s-%d.db", dir, append ? "sqlapp" : "sqlite", batch);
    s_sqlite_t *q = calloc(1, sizeof *q);
    if (q == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    q->append = append;
    q->vfs = walbuf_new();
    *rc = q->vfs != NULL &&
                  sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                  walbuf_name(q->vfs)) == SQLITE_OK &&
                  sqlite3_exec(q->db, append ? s_sqlapp_schema : s_sqlite_schema, NULL, NULL,
                               NULL) == SQLITE_OK
              ? 0
              : -EIO;
    for (int i = 0; *rc == 0 && i < Q_N; i++) {
        const char *text = (append ? app : sql)[i];
        if (text != NULL)
            *rc = sqlite3_prepare_v2(q->db, text, -1, &q->st[i], NULL) == SQLITE_OK ? 0 : -EIO;
    }
    if (*rc != 0) {
        s_sqlite_close(q);
        return NULL;
    }
    return q;
}

static void *s_sqlite_open(const char *dir, int batch, int *rc)
{
    return s_sqlite_open_as(dir, batch, rc, false);
}

static void *s_sqlapp_open(const char *dir, int batch, int *rc)
{
    return s_sqlite_open_as(dir, batch, rc, true);
}

static int s_sqlite_begin(void *e)
{
    return s_step(((s_sqlite_t *)e)->st[Q_BEGIN]);
}

static int s_sqlite_put(void *e, uint64_t seq, const char *source, const char *id, size_t id_len,
                        const char *body)
{
    s_sqlite_t *q = e;
    sqlite3_stmt *st = q->st[Q_PUT];
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, (int)id_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, 1700000000000LL + (int64_t)seq);
    sqlite3_bind_int64(st, 4, 1800000000000LL + (int64_t)seq);
    sqlite3_bind_blob(st, 5, body, S_BODY, SQLITE_STATIC);
    if (q->append)
        sqlite3_bind_int64(st, 6, (sqlite3_int64)seq);
    int rc = s_step(st);
    if (rc != 0 || !q->append)
        return rc;
    st = q->st[Q_KEY];
    sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, (int)id_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)seq);
    return s_step(st);
}

static int s_sqlite_ack(void *e, uint64_t seq, int64_t done_ms)
{
    sqlite3_stmt *st = ((s_sqlite_t *)e)->st[Q_ACK];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_int64(st, 2, done_ms);
    return s_step(st);
}

static int s_sqlite_commit(void *e)
{
    return s_step(((s_sqlite_t *)e)->st[Q_COMMIT]);
}

/* ---- LMDB --------------------------------------------------------------------------- */

#ifdef MR_HAVE_LMDB
typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi msgs, dedup, pend, done;
} s_lmdb_t;

static void s_lmdb_close(void *e)
{
    s_lmdb_t *l = e;
    if (l->txn != NULL)
        mdb_txn_abort(l->txn);
    mdb_env_close(l->env);
    free(l);
}

static void *s_lmdb_open(const char *dir, int batch, int *rc)
{
    char path[512];
    snprintf(path, sizeof path, "%s/lmdb-%d", dir, batch);
    s_lmdb_t *l = calloc(1, sizeof *l);
    if (l == NULL || mkdir(path, 0700) != 0) {
        *rc = l == NULL ? -ENOMEM : -errno;
        free(l);
        return NULL;
    }
    int r = mdb_env_create(&l->env);
    if (r == 0)
        r = mdb_env_set_mapsize(l->env, (size_t)4 << 30);
    if (r == 0)
        r = mdb_env_set_maxdbs(l->env, 4);
    if (r == 0)
        r = mdb_env_open(l->env, path, 0, 0600);
    if (r == 0)
        r = mdb_txn_begin(l->env, NULL, 0, &l->txn);
    const char *names[] = {"msgs", "dedup", "pend", "done"};
    MDB_dbi *dbis[] = {&l->msgs, &l->dedup, &l->pend, &l->done};
    for (int i = 0; r == 0 && i < 4; i++)
        r = mdb_dbi_open(l->txn, names[i], MDB_CREATE, dbis[i]);
    if (r == 0)
        r = mdb_txn_commit(l->txn);
    l->txn = NULL;
    if (r != 0) {
        fprintf(stderr, "bench_store_path: lmdb: %s\n", mdb_strerror(r));
        *rc = -EIO;
        s_lmdb_close(l);
        return NULL;
    }
    return l;
}

static int s_lmdb_begin(void *e)
{
    s_lmdb_t *l = e;
    return mdb_txn_begin(l->env, NULL, 0, &l->txn) == 0 ? 0 : -EIO;
}

static int s_lmdb_put(void *e, uint64_t seq, const char *source, const char *id, size_t id_len,
                      const char *body)
{
    s_lmdb_t *l = e;
    uint8_t k[8], pk[16];
    s_be64(k, seq);
    MDB_val key = {8, k}, val = {S_BODY, (void *)body};
    int r = mdb_put(l->txn, l->msgs, &key, &val, MDB_APPEND);
    char dk[96];
    int dl = snprintf(dk, sizeof dk, "%s\x1f%.*s", source, (int)id_len, id);
    MDB_val dkey = {(size_t)dl, dk}, dval = {8, k};
    if (r == 0)
        r = mdb_put(l->txn, l->dedup, &dkey, &dval, 0);
    memcpy(pk, "yx-lead", 8);
    s_be64(pk + 8, seq);
    MDB_val pkey = {16, pk}, none = {0, (void *)""};
    if (r == 0)
        r = mdb_put(l->txn, l->pend, &pkey, &none, 0);
    return r == 0 ? 0 : -EIO;
}

static int s_lmdb_ack(void *e, uint64_t seq, int64_t done_ms)
{
    s_lmdb_t *l = e;
    uint8_t pk[16];
    memcpy(pk, "yx-lead", 8);
    s_be64(pk + 8, seq);
    MDB_val pkey = {16, pk}, akey = {8, pk + 8}, aval = {sizeof done_ms, &done_ms};
    int r = mdb_del(l->txn, l->pend, &pkey, NULL);
    if (r == 0)
        r = mdb_put(l->txn, l->done, &akey, &aval, MDB_APPEND);
    return r == 0 ? 0 : -EIO;
}

static int s_lmdb_commit(void *e)
{
    s_lmdb_t *l = e;
    int r = mdb_txn_commit(l->txn);
    l->txn = NULL;
    return r == 0 ? 0 : -EIO;
}
#endif

/* ---- RocksDB ------------------------------------------------------------------------ */

#ifdef MR_HAVE_ROCKSDB
typedef struct {
    rocksdb_options_t *options;
    rocksdb_writeoptions_t *write;
    rocksdb_writebatch_t *batch;
    rocksdb_t *db;
} s_rocks_t;

/* prefix byte, an optional NUL-terminated middle, big-endian seq; its length */
static size_t s_rkey(uint8_t *k, char prefix, const char *mid, uint64_t seq)
{
    size_t n = 0;
    k[n++] = (uint8_t)prefix;
    if (mid != NULL) {
        size_t len = strlen(mid) + 1;
        memcpy(k + n, mid, len);
        n += len;
    }
    s_be64(k + n, seq);
    return n + 8;
}

static void s_rocks_close(void *e)
{
    s_rocks_t *r = e;
    if (r->db != NULL)
        rocksdb_close(r->db);
    rocksdb_writebatch_destroy(r->batch);
    rocksdb_writeoptions_destroy(r->write);
    rocksdb_options_destroy(r->options);
    free(r);
}

static void *s_rocks_open(const char *dir, int batch, int *rc)
{
    char path[512], *err = NULL;
    snprintf(path, sizeof path, "%s/rocksdb-%d", dir, batch);
    s_rocks_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    r->options = rocksdb_options_create();
    r->write = rocksdb_writeoptions_create();
    r->batch = rocksdb_writebatch_create();
    rocksdb_options_set_create_if_missing(r->options, 1);
    rocksdb_writeoptions_set_sync(r->write, 1);
    r->db = rocksdb_open(r->options, path, &err);
    if (r->db == NULL || err != NULL) {
        fprintf(stderr, "bench_store_path: rocksdb: %s\n", err ? err : "open failed");
        rocksdb_free(err);
        *rc = -EIO;
        s_rocks_close(r);
        return NULL;
    }
    return r;
}

static int s_rocks_begin(void *e)
{
    rocksdb_writebatch_clear(((s_rocks_t *)e)->batch);
    return 0;
}

static int s_rocks_put(void *e, uint64_t seq, const char *source, const char *id, size_t id_len,
                       const char *body)
{
    s_rocks_t *r = e;
    uint8_t k[96], v[9];
    size_t kl = s_rkey(k, 'm', NULL, seq);
    rocksdb_writebatch_put(r->batch, (const char *)k, kl, body, S_BODY);
    char dk[96];
    int dl = snprintf(dk, sizeof dk, "d%s\x1f%.*s", source, (int)id_len, id);
    s_rkey(v, 'x', NULL, seq);
    rocksdb_writebatch_put(r->batch, dk, (size_t)dl, (const char *)v + 1, 8);
    kl = s_rkey(k, 'p', "yx-lead", seq);
    rocksdb_writebatch_put(r->batch, (const char *)k, kl, "", 0);
    return 0;
}

static int s_rocks_ack(void *e, uint64_t seq, int64_t done_ms)
{
    s_rocks_t *r = e;
    uint8_t k[96];
    size_t kl = s_rkey(k, 'p', "yx-lead", seq);
    rocksdb_writebatch_delete(r->batch, (const char *)k, kl);
    kl = s_rkey(k, 'o', NULL, seq);
    rocksdb_writebatch_put(r->batch, (const char *)k, kl, (const char *)&done_ms,
                           sizeof done_ms);
    return 0;
}

static int s_rocks_commit(void *e)
{
    s_rocks_t *r = e;
    char *err = NULL;
    rocksdb_write(r->db, r->write, r->batch, &err);
    int rc = err == NULL ? 0 : -EIO;
    rocksdb_free(err);
    return rc;
}
#endif

/* ---- append-only log ------------------------------------------------------------------ */

typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
} s_log_t;

static void s_log_close(void *e)
{
    s_log_t *g = e;
    if (g->fd >= 0)
        close(g->fd);
    free(g->buf);
    free(g);
}

static void *s_log_open(const char *dir, int batch, int *rc)
{
    char path[512];
    snprintf(path, sizeof path, "%s/log-%d", dir, batch);
    s_log_t *g = calloc(1, sizeof *g);
    if (g == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    g->cap = (size_t)batch * (16 + S_BODY + 16);
    g->buf = malloc(g->cap);
    g->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (g->buf == NULL || g->fd < 0) {
        *rc = g->buf == NULL ? -ENOMEM : -errno;
        s_log_close(g);
        return NULL;
    }
    return g;
}

static int s_log_begin(void *e)
{
    ((s_log_t *)e)->len = 0;
    return 0;
}

/* Appends a record of n bytes (a header of 16 and the payload, all 'x'). */
static int s_log_add(s_log_t *g, size_t n)
{
    if (g->len + n > g->cap)
        return -ENOSPC;
    memset(g->buf + g->len, 'x', n);
    g->len += n;
    return 0;
}

static int s_log_put(void *e, uint64_t seq, const char *source, const char *id, size_t id_len,
                     const char *body)
{
    (void)seq;
    (void)source;
    (void)id;
    (void)id_len;
    (void)body;
    return s_log_add(e, 16 + S_BODY);
}

static int s_log_ack(void *e, uint64_t seq, int64_t done_ms)
{
    (void)seq;
    (void)done_ms;
    return s_log_add(e, 16);
}

static int s_log_commit(void *e)
{
    s_log_t *g = e;
    if (write(g->fd, g->buf, g->len) != (ssize_t)g->len || fdatasync(g->fd) != 0)
        return -errno;
    return 0;
}

int main(void)
{
    static const s_engine_t engines[] = {
        {"sqlite", s_sqlite_open, s_sqlite_begin, s_sqlite_put, s_sqlite_ack, s_sqlite_commit,
         s_sqlite_close},
        {"sqlapp", s_sqlapp_open, s_sqlite_begin, s_sqlite_put, s_sqlite_ack, s_sqlite_commit,
         s_sqlite_close},
#ifdef MR_HAVE_LMDB
        {"lmdb", s_lmdb_open, s_lmdb_begin, s_lmdb_put, s_lmdb_ack, s_lmdb_commit, s_lmdb_close},
#endif
#ifdef MR_HAVE_ROCKSDB
        {"rocksdb", s_rocks_open, s_rocks_begin, s_rocks_put, s_rocks_ack, s_rocks_commit,
         s_rocks_close},
#endif
        {"log", s_log_open, s_log_begin, s_log_put, s_log_ack, s_log_commit, s_log_close},
    };
    char dir[256];
    snprintf(dir, sizeof dir, "%s/mrstore-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("bench_store_path: mkdtemp");
        return 1;
    }
    static const int batches[] = {13, 100, 700};
    int rc = 0;
    for (size_t b = 0; rc == 0 && b < sizeof batches / sizeof batches[0]; b++) {
        int total = batches[b] * (batches[b] == 13 ? 4000 : 300); /* a bounded run each */
        for (size_t i = 0; rc == 0 && i < sizeof engines / sizeof engines[0]; i++)
            rc = s_drive(&engines[i], dir, batches[b], total);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_store_path: could not remove %s\n", dir);
    if (rc != 0)
        fprintf(stderr, "bench_store_path: failed: %s\n", strerror(-rc));
    return rc == 0 ? 0 : 1;
}
