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
 *           expiry and done), WAL, synchronous=FULL; ack = UPDATE state
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
 * when saturated.  Prints one line per engine and batch: CPU and wall time
 * per message.  Stores go to a fresh temporary directory (TMPDIR or /tmp),
 * removed at the end.  Used for docs/performance.md ("Next steps").
 */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef MR_HAVE_LMDB
#include <lmdb.h>
#endif
#ifdef MR_HAVE_ROCKSDB
#include <rocksdb/c.h>
#endif

#include "bench_util.h"

#define S_BODY 600

typedef struct {
    double cpu0, wall0;
} s_clock_t;

static double s_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void s_start(s_clock_t *c)
{
    c->cpu0 = s_cpu();
    c->wall0 = (double)bu_now_ns() / 1e9;
}

static void s_report(const s_clock_t *c, const char *engine, int batch, int total)
{
    double cpu = s_cpu() - c->cpu0, wall = (double)bu_now_ns() / 1e9 - c->wall0;
    printf("%-7s batch %4d: %6.1f us CPU/msg, %6.1f us wall/msg, %8.0f msg/s\n", engine, batch,
           cpu / total * 1e6, wall / total * 1e6, total / wall);
    fflush(stdout);
}

/* The message id of seq, time-ordered as libmedroute's are; its length. */
static int s_id(char *out, size_t len, uint64_t seq)
{
    return snprintf(out, len, "%016llx-b%02d-%010llu", (unsigned long long)seq * 1000,
                    (int)(seq % 4), (unsigned long long)seq);
}

/* ---- SQLite ------------------------------------------------------------------------- */

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

static int s_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

static int s_sqlite(const char *dir, int batch, int total)
{
    char path[512];
    snprintf(path, sizeof path, "%s/sqlite-%d.db", dir, batch);
    sqlite3 *db = NULL;
    sqlite3_stmt *st[4] = {NULL};
    static const char *const sql[4] = {
        "BEGIN IMMEDIATE", "COMMIT",
        "INSERT INTO messages(source, message_id, dest, kind, stored_ms, expires_ms, state, body,"
        " express) VALUES(?1, ?2, 'yx-lead', 1, ?3, ?4, 0, ?5, 0)",
        "UPDATE messages SET state = 1, done_ms = ?2 WHERE seq = ?1"};
    int rc = sqlite3_open(path, &db) == SQLITE_OK &&
                     sqlite3_exec(db, s_sqlite_schema, NULL, NULL, NULL) == SQLITE_OK
                 ? 0
                 : -EIO;
    for (int i = 0; rc == 0 && i < 4; i++)
        rc = sqlite3_prepare_v2(db, sql[i], -1, &st[i], NULL) == SQLITE_OK ? 0 : -EIO;
    char body[S_BODY];
    memset(body, 'x', sizeof body);
    s_clock_t c;
    s_start(&c);
    uint64_t seq = 0;
    for (int n = 0; rc == 0 && n < total; n += batch) {
        rc = s_step(st[0]);
        for (int i = 0; rc == 0 && i < batch; i++) {
            seq++;
            char src[16], id[64];
            snprintf(src, sizeof src, "t-bench%02d", (int)(seq % 4));
            int idl = s_id(id, sizeof id, seq);
            sqlite3_bind_text(st[2], 1, src, -1, SQLITE_STATIC);
            sqlite3_bind_text(st[2], 2, id, idl, SQLITE_STATIC);
            sqlite3_bind_int64(st[2], 3, 1700000000000LL + (int64_t)seq);
            sqlite3_bind_int64(st[2], 4, 1800000000000LL + (int64_t)seq);
            sqlite3_bind_blob(st[2], 5, body, sizeof body, SQLITE_STATIC);
            rc = s_step(st[2]);
            if (rc == 0 && seq > (uint64_t)batch) {
                sqlite3_bind_int64(st[3], 1, (sqlite3_int64)(seq - (uint64_t)batch));
                sqlite3_bind_int64(st[3], 2, 1700000001000LL + (int64_t)seq);
                rc = s_step(st[3]);
            }
        }
        if (rc == 0)
            rc = s_step(st[1]);
    }
    if (rc == 0)
        s_report(&c, "sqlite", batch, total);
    for (int i = 0; i < 4; i++)
        sqlite3_finalize(st[i]);
    sqlite3_close(db);
    return rc;
}

/* ---- LMDB --------------------------------------------------------------------------- */

#ifdef MR_HAVE_LMDB
static void s_be64(uint8_t *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
}

static int s_lmdb(const char *dir, int batch, int total)
{
    char path[512];
    snprintf(path, sizeof path, "%s/lmdb-%d", dir, batch);
    if (mkdir(path, 0700) != 0)
        return -errno;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi msgs, dedup, pend, done;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(env, (size_t)4 << 30);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, 4);
    if (rc == 0)
        rc = mdb_env_open(env, path, 0, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "msgs", MDB_CREATE, &msgs);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "dedup", MDB_CREATE, &dedup);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "pend", MDB_CREATE, &pend);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "done", MDB_CREATE, &done);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    char body[S_BODY];
    memset(body, 'x', sizeof body);
    s_clock_t c;
    s_start(&c);
    uint64_t seq = 0;
    for (int n = 0; rc == 0 && n < total; n += batch) {
        rc = mdb_txn_begin(env, NULL, 0, &txn);
        for (int i = 0; rc == 0 && i < batch; i++) {
            seq++;
            uint8_t k[8], pk[16];
            s_be64(k, seq);
            MDB_val key = {8, k}, val = {sizeof body, body};
            rc = mdb_put(txn, msgs, &key, &val, MDB_APPEND);
            char dk[96];
            int dl = snprintf(dk, sizeof dk, "t-bench%02d\x1f", (int)(seq % 4));
            dl += s_id(dk + dl, sizeof dk - (size_t)dl, seq);
            MDB_val dkey = {(size_t)dl, dk}, dval = {8, k};
            if (rc == 0)
                rc = mdb_put(txn, dedup, &dkey, &dval, 0);
            memcpy(pk, "yx-lead", 8);
            s_be64(pk + 8, seq);
            MDB_val pkey = {16, pk}, none = {0, (void *)""};
            if (rc == 0)
                rc = mdb_put(txn, pend, &pkey, &none, 0);
            if (rc == 0 && seq > (uint64_t)batch) {
                s_be64(pk + 8, seq - (uint64_t)batch);
                rc = mdb_del(txn, pend, &pkey, NULL);
                int64_t done_ms = 1700000001000LL + (int64_t)seq;
                MDB_val akey = {8, pk + 8}, aval = {sizeof done_ms, &done_ms};
                if (rc == 0)
                    rc = mdb_put(txn, done, &akey, &aval, MDB_APPEND);
            }
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
    }
    if (rc == 0)
        s_report(&c, "lmdb", batch, total);
    else
        fprintf(stderr, "bench_store_path: lmdb: %s\n", mdb_strerror(rc));
    mdb_env_close(env);
    return rc == 0 ? 0 : -EIO;
}
#endif

/* ---- RocksDB ------------------------------------------------------------------------ */

#ifdef MR_HAVE_ROCKSDB
/* prefix byte + big-endian seq */
static size_t s_key(char *k, char prefix, const char *mid, uint64_t seq)
{
    size_t n = 0;
    k[n++] = prefix;
    if (mid != NULL) {
        size_t l = strlen(mid);
        memcpy(k + n, mid, l + 1);
        n += l + 1;
    }
    for (int i = 7; i >= 0; i--)
        k[n + (size_t)(7 - i)] = (char)(seq >> (8 * i));
    return n + 8;
}

static int s_rocksdb(const char *dir, int batch, int total)
{
    char path[512];
    snprintf(path, sizeof path, "%s/rocksdb-%d", dir, batch);
    char *err = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, 1);
    rocksdb_t *db = rocksdb_open(o, path, &err);
    rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(w, 1);
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    int rc = db != NULL && err == NULL ? 0 : -EIO;
    char body[S_BODY];
    memset(body, 'x', sizeof body);
    s_clock_t c;
    s_start(&c);
    uint64_t seq = 0;
    for (int n = 0; rc == 0 && n < total; n += batch) {
        rocksdb_writebatch_clear(b);
        for (int i = 0; i < batch; i++) {
            seq++;
            char k[96], v[8];
            size_t kl = s_key(k, 'm', NULL, seq);
            rocksdb_writebatch_put(b, k, kl, body, sizeof body);
            char dk[96];
            int dl = snprintf(dk, sizeof dk, "dt-bench%02d\x1f", (int)(seq % 4));
            dl += s_id(dk + dl, sizeof dk - (size_t)dl, seq);
            s_key(v, 'x', NULL, seq);
            rocksdb_writebatch_put(b, dk, (size_t)dl, v + 1, 8);
            kl = s_key(k, 'p', "yx-lead", seq);
            rocksdb_writebatch_put(b, k, kl, "", 0);
            if (seq > (uint64_t)batch) {
                kl = s_key(k, 'p', "yx-lead", seq - (uint64_t)batch);
                rocksdb_writebatch_delete(b, k, kl);
                int64_t done_ms = 1700000001000LL + (int64_t)seq;
                kl = s_key(k, 'o', NULL, seq - (uint64_t)batch);
                rocksdb_writebatch_put(b, k, kl, (const char *)&done_ms, sizeof done_ms);
            }
        }
        rocksdb_write(db, w, b, &err);
        if (err != NULL)
            rc = -EIO;
    }
    if (rc == 0)
        s_report(&c, "rocksdb", batch, total);
    else
        fprintf(stderr, "bench_store_path: rocksdb: %s\n", err ? err : "open failed");
    rocksdb_free(err);
    rocksdb_writebatch_destroy(b);
    rocksdb_writeoptions_destroy(w);
    if (db != NULL)
        rocksdb_close(db);
    rocksdb_options_destroy(o);
    return rc;
}
#endif

/* ---- append-only log ------------------------------------------------------------------ */

static int s_log(const char *dir, int batch, int total)
{
    char path[512];
    snprintf(path, sizeof path, "%s/log-%d", dir, batch);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t rec = 16 + S_BODY + 16; /* header + body, then an ack record */
    char *buf = malloc((size_t)batch * rec);
    int rc = buf ? 0 : -ENOMEM;
    s_clock_t c;
    s_start(&c);
    for (int n = 0; rc == 0 && n < total; n += batch) {
        size_t len = 0;
        for (int i = 0; i < batch; i++, len += rec)
            memset(buf + len, 'x', rec);
        if (write(fd, buf, len) != (ssize_t)len || fdatasync(fd) != 0)
            rc = -errno;
    }
    if (rc == 0)
        s_report(&c, "log", batch, total);
    free(buf);
    close(fd);
    return rc;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
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
        rc = s_sqlite(dir, batches[b], total);
#ifdef MR_HAVE_LMDB
        if (rc == 0)
            rc = s_lmdb(dir, batches[b], total);
#endif
#ifdef MR_HAVE_ROCKSDB
        if (rc == 0)
            rc = s_rocksdb(dir, batches[b], total);
#endif
        if (rc == 0)
            rc = s_log(dir, batches[b], total);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_store_path: could not remove %s\n", dir);
    if (rc != 0)
        fprintf(stderr, "bench_store_path: failed: %s\n", strerror(-rc));
    return rc == 0 ? 0 : 1;
}
