/*
 * store.c - SQLite (WAL) message store run by one dedicated thread.
 *
 * Owns: the database connection (store thread only), the submission queue
 * and the completion queue (guarded by one mutex), the uv_async handle that
 * wakes the loop, the latency histograms (store_latency: the store thread's
 * two published under the same mutex once per batch, the loop's own), and
 * when the batch now running began waiting (batch_since_us, under the same
 * mutex: what store_stalled_ms reads).
 *
 * Invariants
 *   1. Only the store thread touches the database (and store_destroy, once
 *      that thread, the checkpoint thread and any backup have ended).
 *   2. Requests are executed and completed in submission order.
 *   3. A request's callback runs only after the transaction holding its
 *      effect has committed (or failed as a whole: STORE_UNAVAILABLE).  A
 *      STATS query that fails for its own reasons completes
 *      STORE_UNAVAILABLE alone, in a batch that commits (s_execute).
 *   4. A batch holds at most batch_max requests and stays open at most
 *      batch_ms after its first request; it closes early when the queue is
 *      empty, so a lone message waits for no timer.
 *   5. batch_since_us is the submission time of the running batch's first
 *      request from when s_take hands it over until s_complete hands the
 *      batch back (both under the lock; a backup's completion leaves it),
 *      else 0: with the queue's head, the
 *      oldest request not finished is always one of those two, so a thread
 *      stuck in a batch (a disk that does not answer a write or a sync)
 *      shows as that age growing (store_stalled_ms), though the thread
 *      itself cannot say so.
 *
 * Batch life, on the store thread:
 *
 *   wait for work -> BEGIN -> execute req, take more while the batch is young
 *        ^                      and small -> COMMIT -> move batch to done
 *        |                                               -> uv_async_send
 *        +-----------------------------------------------------+
 *
 * A statement that fails with an I/O class error (disk full, read-only,
 * corrupt, locked) fails the whole batch: ROLLBACK, every request in it
 * completes with STORE_UNAVAILABLE, and the connection is reopened on the
 * next batch (so it is after any failed batch whose ROLLBACK fails).
 * The store counts as unavailable (/healthz) until a batch writes again,
 * or, after a busy lock only, until any batch commits (s_recovered).
 * Nothing is acknowledged that was not committed.  The counts of
 * store_tally (events of the loop thread, which happened whatever becomes
 * of the batch) are kept for the next batch that writes anyway and commits
 * (self->kept): like the pending floor (s_floor), a batch of reads writes
 * nothing, so that it succeeds on a full disk.
 */
#include "store.h"

#include "mr_codec.h"
#include "pending.h"
#include "walbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    S_PUT_INSERT = 0,
    S_PUT_FIND,
    S_PUT_UNDO,
    S_DONE_INSERT,
    S_ACK_STATE,
    S_REF_KEY,
    S_ROW,
    S_ROW_HEAD,
    S_LIST_DEAD_ALL,
    S_LIST_DEAD_DEST,
    S_LIST_DONE_ALL,
    S_LIST_DONE_DEST,
    S_RETRY_UNDEAD,
    S_RETRY_ROW,
    S_PRUNE_SCAN,
    S_PRUNE_DONE,
    S_FLOOR,
    S_PIN,
    S_UNPIN,
    S_BEGIN,
    S_COMMIT,
    S_STMT_COUNT
};

/* The columns a row is read from (s_read_row), in this order. */
#define S_ROW_COLS                                                                                 \
    "m.seq, m.source, m.message_id, m.dest, m.kind, m.priority, m.stored_ms, m.expires_ms"

static const char *const s_sql[S_STMT_COUNT] = {
    [S_PUT_INSERT] = "INSERT INTO messages(source, message_id, dest, kind, priority, stored_ms,"
                     " expires_ms, body, content_hash, express, ref_key)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10)"
                     " ON CONFLICT(source, message_id) DO NOTHING",
    [S_PUT_FIND] = "SELECT seq, body FROM messages WHERE source = ?1 AND message_id = ?2",
    /* A message the clinical layer refused (it writes nothing when it
     * refuses: clinical.h).  Not a SAVEPOINT: one per message made SQLite
     * journal every page the batch touched again (a third of the store
     * thread's time in the benchmark).  Also PRUNE's delete. */
    [S_PUT_UNDO] = "DELETE FROM messages WHERE seq = ?1",
    /* A message's outcome, appended: delivered (1) or dead (2). */
    [S_DONE_INSERT] = "INSERT INTO message_done(seq, state, done_ms, dead_reason)"
                      " VALUES(?1, ?2, ?3, ?4)",
    /* An ack for a message not pending: acked before, dead, or unknown. */
    [S_ACK_STATE] = "SELECT d.state FROM messages m LEFT JOIN message_done d ON d.seq = m.seq"
                    " WHERE m.seq = ?1 AND m.dest = ?2",
    [S_REF_KEY] = "SELECT ref_key FROM messages WHERE seq = ?1",
    [S_ROW] = "SELECT " S_ROW_COLS ", NULL, m.body FROM messages m WHERE m.seq = ?1",
    [S_ROW_HEAD] = "SELECT " S_ROW_COLS ", NULL, NULL FROM messages m WHERE m.seq = ?1",
    [S_LIST_DEAD_ALL] = "SELECT " S_ROW_COLS ", d.dead_reason, NULL FROM message_done d"
                        " JOIN messages m ON m.seq = d.seq WHERE d.state = 2 ORDER BY d.seq"
                        " LIMIT ?1",
    [S_LIST_DEAD_DEST] = "SELECT " S_ROW_COLS ", d.dead_reason, NULL FROM message_done d"
                         " JOIN messages m ON m.seq = d.seq WHERE d.state = 2 AND m.dest = ?2"
                         " ORDER BY d.seq LIMIT ?1",
    /* Delivered ones (no index: they are most rows, found at once). */
    [S_LIST_DONE_ALL] = "SELECT " S_ROW_COLS ", d.dead_reason, NULL FROM message_done d"
                        " JOIN messages m ON m.seq = d.seq WHERE d.state = 1 ORDER BY d.seq"
                        " LIMIT ?1",
    [S_LIST_DONE_DEST] = "SELECT " S_ROW_COLS ", d.dead_reason, NULL FROM message_done d"
                         " JOIN messages m ON m.seq = d.seq WHERE d.state = 1 AND m.dest = ?2"
                         " ORDER BY d.seq LIMIT ?1",
    [S_RETRY_UNDEAD] = "DELETE FROM message_done WHERE seq = ?1 AND state = 2",
    [S_RETRY_ROW] = "UPDATE messages SET expires_ms = max(expires_ms, ?2) WHERE seq = ?1"
                    " RETURNING seq, source, message_id, dest, kind, priority, stored_ms,"
                    " expires_ms, NULL, body, express, ref_key IS NOT NULL",
    /* Delivered before the retention cut-off (message_delivered). */
    [S_PRUNE_SCAN] = "SELECT seq FROM message_done WHERE state = 1 AND done_ms < ?1 LIMIT ?2",
    [S_PRUNE_DONE] = "DELETE FROM message_done WHERE seq = ?1",
    [S_FLOOR] = "INSERT OR REPLACE INTO meta(key, value) VALUES('pending_floor', ?1)",
    /* A pending message below the floor (s_floor), and its end. */
    [S_PIN] = "INSERT OR IGNORE INTO pending_pinned(seq) VALUES(?1)",
    [S_UNPIN] = "DELETE FROM pending_pinned WHERE seq = ?1",
    /* Prepared once: parsing these for every batch showed in profiles. */
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
};

/*
 * Schema version 2.  A message row is written once and never updated (but
 * for a retry's new expiry): its outcome is a row of message_done, and which
 * messages are pending is held in memory (pending.h), rebuilt at open from
 * the rows after meta.pending_floor that have no outcome.  So a delivery
 * appends one small row, and no index follows the pending set.
 *
 * Version 3 adds pending_pinned: the seqs of the messages still pending below
 * the floor, so that one message left pending for days (an offline
 * facility's, a referral nobody fetches) no longer holds the floor down and
 * makes every open read all the rows stored since (s_floor).  A daemon of
 * version 2 would not read them: it refuses the store (store.too_new).
 */
enum { S_SCHEMA_VERSION = 3 };

/* The floor trails the newest seq by about this many rows at most, by
 * default (store_opts_t.floor_lag): an open reads that many rows besides
 * the pinned ones, ~0.5 s here.  A raise that pins covers at most
 * S_PIN_STEP seqs by default (store_opts_t.pin_step; 10,000 pins take 7-14
 * ms in a batch), so that a large backlog is pinned over several batches
 * rather than in one long one. */
enum { S_FLOOR_LAG = 1000000, S_PIN_STEP = 10000 };

static const char *const s_schema =
    "CREATE TABLE IF NOT EXISTS messages("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " source TEXT NOT NULL, message_id TEXT NOT NULL, dest TEXT NOT NULL,"
    " kind INTEGER NOT NULL, priority INTEGER NOT NULL,"
    " stored_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
    /* content_hash: 0 since the seventh session, when a resend came to be
     * told from a conflict by its body (mr_envelope_same); a hash of older
     * rows is left unread. */
    " express INTEGER NOT NULL DEFAULT 0, ref_key TEXT, content_hash INTEGER NOT NULL,"
    " body BLOB NOT NULL,"
    " UNIQUE(source, message_id));"
    "CREATE TABLE IF NOT EXISTS message_done("
    " seq INTEGER PRIMARY KEY, state INTEGER NOT NULL, done_ms INTEGER NOT NULL,"
    " dead_reason TEXT);"
    "CREATE INDEX IF NOT EXISTS message_dead ON message_done(seq) WHERE state = 2;"
    "CREATE INDEX IF NOT EXISTS message_delivered ON message_done(done_ms) WHERE state = 1;"
    /* A daemon of version 1 creates an index of this name at open: this
     * table makes it fail there, instead of loading every message as
     * pending again. */
    "CREATE TABLE IF NOT EXISTS messages_pending(note TEXT);"
    "INSERT INTO messages_pending(note) SELECT 'schema version 2: the pending set is in"
    " message_done and in memory' WHERE NOT EXISTS (SELECT 1 FROM messages_pending);"
    "CREATE TABLE IF NOT EXISTS pending_pinned(seq INTEGER PRIMARY KEY);"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', 3);" /* S_SCHEMA_VERSION */
    "UPDATE meta SET value = 3 WHERE key = 'schema_version' AND value < 3;";

/*
 * From version 1, where a message's state, done_ms and dead_reason were
 * columns of its row and four partial indexes followed the pending set: the
 * outcomes move to message_done, the indexes go, the columns stay unused
 * (rewriting every row would take minutes on a large store).  One
 * transaction: an interrupted migration is not one.
 */
static const char *const s_migrate_v1 =
    "BEGIN IMMEDIATE;"
    "CREATE TABLE message_done("
    " seq INTEGER PRIMARY KEY, state INTEGER NOT NULL, done_ms INTEGER NOT NULL,"
    " dead_reason TEXT);"
    "INSERT INTO message_done(seq, state, done_ms, dead_reason)"
    " SELECT seq, state, coalesce(done_ms, stored_ms), dead_reason FROM messages"
    " WHERE state <> 0;"
    "CREATE INDEX message_delivered ON message_done(done_ms) WHERE state = 1;"
    "DROP INDEX IF EXISTS messages_pending;"
    "DROP INDEX IF EXISTS messages_express;"
    "DROP INDEX IF EXISTS messages_expiry;"
    "DROP INDEX IF EXISTS messages_done;"
    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', 2);"
    "COMMIT;";

struct store_t {
    uv_loop_t *loop;
    uv_async_t async;
    log_t *log;
    char *path;
    char path_log[512]; /* path through log_clean, for the log's quoted values */
    bool sync_full;
    uint32_t batch_max;
    uint32_t batch_ms;

    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    store_req_t *queue_head, *queue_tail;   /* submitted, not started */
    store_req_t *done_head, *done_tail;     /* committed, callback not run */
    bool stopping;
    atomic_size_t backlog;
    atomic_bool unavailable;
    atomic_int backups;          /* backup threads running (they use this struct) */
    pthread_t checkpointer;      /* moves the WAL into the database, off the commit path */
    pthread_cond_t ckpt_wake;    /* its own: sharing `wake` could steal a submission's signal */
    bool ckpt_due;               /* a commit wrote to the WAL since the last checkpoint began */
    bool checkpointer_started;
    durhist_t lat_wait, lat_commit; /* store_latency: the store thread's, published per batch */
    durhist_t lat_put;           /* loop thread only */
    int64_t batch_since_us;      /* invariant 5; under lock */
    int64_t stall_since_us;      /* store_stall_watch's: the stall it logged, else 0;
                                  * loop thread only */

    /* store thread only */
    sqlite3 *db;
    sqlite3_stmt *stmt[S_STMT_COUNT];
    clinical_t *clin;
    tally_t *tally;
    tally_kept_t *kept;  /* store_tally's counts, kept until a batch that writes commits
                          * them (tally.h); the store's, not the connection's: an
                          * outage may reopen it */
    int last_error;                          /* SQLite code of the failure being reported */
    bool outage_needs_write;  /* since then, a failure other than a busy lock (s_recovered) */
    bool opened_once;
    pending_t *pending;  /* the pending set (pending.h), rebuilt at each open */
    uint64_t last_seq;   /* the highest seq stored */
    uint64_t floor_committed; /* meta.pending_floor as committed */
    uint64_t floor_written;   /* ... as written in the open batch */
    int64_t floor_next_ms;    /* no raise without pins before this (monotonic) */
    uint64_t floor_lag;       /* store_opts_t.floor_lag, or S_FLOOR_LAG */
    uint64_t pin_step;        /* store_opts_t.pin_step, or S_PIN_STEP */
    size_t pinned_at_open;    /* pending messages read from pending_pinned */
    int64_t kept_retry_ms;    /* the idle write of kept counts met a busy lock: tried
                               * again then (monotonic), else 0; read by s_take */
    walbuf_t *walbuf;  /* the writer's VFS under synchronous=FULL (walbuf.h), or NULL */
};

const char *store_status_name(store_status_t s)
{
    static const char *const names[] = {"ok",          "duplicate", "conflict", "not_found",
                                        "unavailable", "refused"};
    return s <= STORE_REFUSED ? names[s] : "?";
}

void store_row_clear(store_row_t *row)
{
    free(row->source);
    free(row->message_id);
    free(row->dest);
    free(row->dead_reason);
    free(row->body);
    memset(row, 0, sizeof *row);
}

store_req_t *store_req_new(store_op_t op, store_cb_t cb, void *arg)
{
    store_req_t *req = calloc(1, sizeof *req);
    if (req == NULL)
        return NULL;
    req->op = op;
    req->cb = cb;
    req->arg = arg;
    return req;
}

static void s_req_free(store_req_t *req)
{
    store_row_clear(&req->msg);
    clinical_facts_free(req->facts);
    clinical_events_free(req->events, req->n_events);
    clinical_slots_free(req->slots, req->n_slots);
    clinical_open_free(req->open, req->n_open);
    tally_rows_free(req->tallies, req->n_tallies);
    free(req->outstanding);
    free(req->tally_name);
    free(req->tally_labels);
    free(req->query);
    for (size_t i = 0; req->rows != NULL && i < req->n_rows; i++)
        store_row_clear(&req->rows[i]);
    free(req->rows);
    free(req);
}

/* ---- store thread: connection -------------------------------------- */

static void s_close_db(store_t *self)
{
    clinical_close(&self->clin);
    tally_destroy(&self->tally);
    for (int i = 0; i < S_STMT_COUNT; i++) {
        sqlite3_finalize(self->stmt[i]);
        self->stmt[i] = NULL;
    }
    if (self->db != NULL)
        sqlite3_close_v2(self->db);
    self->db = NULL;
}

/* Another connection held the lock past busy_timeout (another process, an
 * operator's sqlite3): over as soon as a batch takes it again. */
static bool s_lock_error(int rc)
{
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

/* Reports a failure, once per code in a row, and notes whether only a
 * batch that writes can show it over (s_recovered). */
static void s_log_failure(store_t *self, int rc, const char *what)
{
    if (!s_lock_error(rc))
        self->outage_needs_write = true;
    if (rc == self->last_error)
        return;
    self->last_error = rc;
    log_error(self->log, "store.unavailable", "path=\"%s\" during=%s sqlite=%d reason=\"%s\"",
              self->path_log, what, rc, sqlite3_errstr(rc));
}

/* Errors after which the connection itself is suspect (file replaced,
 * remounted read-only, corrupt): close it and open again.  A full disk or a
 * busy lock leaves the connection usable. */
static bool s_needs_reopen(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_MISUSE:
        return true;
    default:
        return false;
    }
}

/* Errors that come from a query itself, not from the connection or the file. */
static bool s_query_own_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_ERROR:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return true;
    default:
        return false;
    }
}

static int s_exists(void *arg, int n, char **values, char **names)
{
    (void)n;
    (void)values;
    (void)names;
    *(bool *)arg = true;
    return 0;
}

/* One integer from a query of one row, or dflt when it has none. */
static int s_query_int(sqlite3 *db, const char *sql, int64_t dflt, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    *out = dflt;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            *out = sqlite3_column_int64(st, 0);
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Adds the pending messages that st returns (s_rebuild's columns) to the
 * set, in their order; counts them in *n. */
static int s_rebuild_rows(store_t *self, sqlite3_stmt *st, size_t *n)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* Typed before it is read: a NULL text of a value is SQLite out of
         * memory (sqlite3.h), not a corrupt row (dest is NOT NULL). */
        int dest_type = sqlite3_column_type(st, 1);
        const unsigned char *dest = sqlite3_column_text(st, 1);
        pending_entry_t e = {
            .seq = (uint64_t)sqlite3_column_int64(st, 0),
            .kind = (uint8_t)sqlite3_column_int(st, 2),
            .stored_ms = sqlite3_column_int64(st, 3),
            .expires_ms = sqlite3_column_int64(st, 4),
            .express = sqlite3_column_int(st, 5) != 0,
            .referral = sqlite3_column_int(st, 6) != 0,
        };
        if (dest == NULL)
            return dest_type == SQLITE_NULL ? SQLITE_CORRUPT : SQLITE_NOMEM;
        if (pending_add(self->pending, (const char *)dest, &e) != 0)
            return SQLITE_NOMEM;
        (*n)++;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

#define S_REBUILD_COLS                                                                             \
    "m.seq, m.dest, m.kind, m.stored_ms, m.expires_ms, m.express, m.ref_key IS NOT NULL"

/*
 * The pending set, from the database: the pinned messages below
 * meta.pending_floor, then the messages from the floor on, that have no
 * outcome (read in seq order, so the lists are built by appending).  At
 * each open, so that a reopened connection and the set agree.
 */
static int s_rebuild(store_t *self)
{
    static const char *const sql[2] = {
        "SELECT " S_REBUILD_COLS " FROM pending_pinned p JOIN messages m ON m.seq = p.seq"
        " LEFT JOIN message_done d ON d.seq = p.seq"
        " WHERE p.seq < ?1 AND d.seq IS NULL ORDER BY p.seq",
        "SELECT " S_REBUILD_COLS " FROM messages m LEFT JOIN message_done d ON d.seq = m.seq"
        " WHERE m.seq >= ?1 AND d.seq IS NULL ORDER BY m.seq",
    };
    int64_t floor = 0, last = 0;
    size_t n[2] = {0, 0};
    pending_clear(self->pending);
    int rc = s_query_int(self->db, "SELECT value FROM meta WHERE key = 'pending_floor'", 0, &floor);
    if (rc == SQLITE_OK)
        rc = s_query_int(self->db, "SELECT max(seq) FROM messages", 0, &last);
    for (int i = 0; rc == SQLITE_OK && i < 2; i++) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(self->db, sql[i], -1, &st, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 1, floor);
        if (rc == SQLITE_OK)
            rc = s_rebuild_rows(self, st, &n[i]);
        sqlite3_finalize(st);
    }
    self->last_seq = (uint64_t)last;
    self->floor_committed = self->floor_written = (uint64_t)floor;
    self->pinned_at_open = n[0];
    return rc;
}

/* The store's schema_version: 0 for a new store (no meta table yet).  Any
 * other failure to read it is the open's: taken for a new store, a
 * transient one (a busy or unreadable file, no memory) let a later
 * version's store be opened, or failed a later statement with a vaguer
 * error. */
static int s_schema_version(sqlite3 *db, int64_t *version)
{
    int64_t tables = 0;
    int rc = s_query_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                             " AND name = 'meta'", 0, &tables);
    *version = 0;
    if (rc == SQLITE_OK && tables > 0)
        rc = s_query_int(db, "SELECT value FROM meta WHERE key = 'schema_version'", 0, version);
    return rc;
}

static int s_open_db(store_t *self)
{
    bool old = false;
    /* Create the file ourselves so that it is owner-only from the start;
     * SQLite gives the -wal and -shm files the same mode. */
    int fd = open(self->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        s_log_failure(self, SQLITE_CANTOPEN, "open");
        return SQLITE_CANTOPEN;
    }
    close(fd);
    int rc = sqlite3_open_v2(self->path, &self->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             walbuf_name(self->walbuf));
    if (rc != SQLITE_OK)
        goto fail;
    /* page_size: 8 KB for a new store (an existing one keeps its own): fewer
     * pages per commit and a shallower tree; the checkpoint thread copies
     * ~20 % less per message (docs/performance.md, seventh session).
     * cache_size: 32 MB of pages.  A full batch (store.batch_max requests)
     * touches more than SQLite's default 2 MB; with the default, batches of
     * 1000 ran 10 % slower in the benchmark (docs/performance.md). */
    char pragmas[320];
    int n = snprintf(pragmas, sizeof pragmas,
                     "PRAGMA page_size=8192; PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;"
                     " PRAGMA busy_timeout=200; PRAGMA foreign_keys=OFF;"
                     " PRAGMA wal_autocheckpoint=4096; PRAGMA journal_size_limit=67108864;"
                     " PRAGMA cache_size=-32768;",
                     self->sync_full ? "FULL" : "NORMAL");
    if (n < 0 || (size_t)n >= sizeof pragmas) {
        rc = SQLITE_INTERNAL;
        goto fail;
    }
    rc = sqlite3_exec(self->db, pragmas, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* A store made by an earlier version: add the columns it lacks.  A
     * failure fails the open with its own code (a full disk, say): the
     * statements prepared below would only say "no such column". */
    rc = sqlite3_exec(self->db, "SELECT 1 FROM sqlite_master WHERE name = 'messages' AND"
                                " sql NOT LIKE '%express%' AND type = 'table'",
                      s_exists, &old, NULL);
    if (rc == SQLITE_OK && old)
        rc = sqlite3_exec(self->db,
                          "ALTER TABLE messages ADD COLUMN express INTEGER NOT NULL DEFAULT 0",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    old = false;
    rc = sqlite3_exec(self->db, "SELECT 1 FROM sqlite_master WHERE name = 'messages' AND NOT"
                                " EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'message_done')",
                      s_exists, &old, NULL);
    if (rc == SQLITE_OK && old) {
        rc = sqlite3_exec(self->db, s_migrate_v1, NULL, NULL, NULL);
        if (rc != SQLITE_OK && !sqlite3_get_autocommit(self->db))
            (void)sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            log_info(self->log, "store.migrated", "path=\"%s\" from=1 to=2", self->path_log);
    }
    if (rc != SQLITE_OK)
        goto fail;
    /* A store a later version has changed: this one would misread it. */
    int64_t version = 0;
    rc = s_schema_version(self->db, &version);
    if (rc != SQLITE_OK)
        goto fail;
    if (version > S_SCHEMA_VERSION) {
        if (self->last_error != SQLITE_CANTOPEN) /* once, not at each retry */
            log_error(self->log, "store.too_new",
                      "path=\"%s\" schema_version=%lld supported=%d", self->path_log,
                      (long long)version, S_SCHEMA_VERSION);
        rc = SQLITE_CANTOPEN;
        goto fail;
    }
    rc = sqlite3_exec(self->db, s_schema, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* No integrity scan here: it reads the whole file, and start-up must stay
     * fast with a million messages pending.  Corruption shows as
     * SQLITE_CORRUPT on the first statement that meets it. */
    self->tally = tally_new(self->db, self->kept, &rc);
    if (self->tally == NULL)
        goto fail;
    self->clin = clinical_open(self->db, self->tally, &rc);
    if (self->clin == NULL)
        goto fail;
    for (int i = 0; i < S_STMT_COUNT; i++) {
        rc = sqlite3_prepare_v3(self->db, s_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &self->stmt[i],
                                NULL);
        if (rc != SQLITE_OK)
            goto fail;
    }
    rc = s_rebuild(self);
    if (rc != SQLITE_OK)
        goto fail;
    if (!self->opened_once)
        log_info(self->log, "store.opened",
                 "path=\"%s\" synchronous=%s pending=%zu pinned=%zu", self->path_log,
                 self->sync_full ? "full" : "normal", pending_count(self->pending),
                 self->pinned_at_open);
    self->opened_once = true;
    return SQLITE_OK;
fail:
    s_log_failure(self, rc, "open");
    s_close_db(self);
    return rc;
}

/* ---- store thread: operations ---------------------------------------- */

/*
 * A prepared statement ready for new bindings.  A statement must be reset
 * before it is bound again: binding one that has run to its end fails with
 * SQLITE_MISUSE and would leave the previous (dangling) bindings in place.
 */
static const char *s_kind(int kind)
{
    const char *k = mr_kind_name(kind);
    return k ? k : "unknown";
}

/* Returns from the calling operation when a bind fails. */
#define S_BIND(call)                                                                               \
    do {                                                                                           \
        int s_bind_rc_ = (call);                                                                   \
        if (s_bind_rc_ != SQLITE_OK)                                                               \
            return s_bind_rc_;                                                                     \
    } while (0)

static sqlite3_stmt *s_stmt(store_t *self, int which)
{
    sqlite3_stmt *st = self->stmt[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

static char *s_text(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? strdup((const char *)t) : NULL;
}

/* A new, zeroed row at the end of req->rows (grown 64 at a time); NULL
 * when out of memory. */
static store_row_t *s_new_row(store_req_t *req)
{
    if (req->n_rows % 64 == 0) {
        store_row_t *rows = realloc(req->rows, (req->n_rows + 64) * sizeof *rows);
        if (rows == NULL)
            return NULL;
        req->rows = rows;
    }
    store_row_t *r = &req->rows[req->n_rows++];
    memset(r, 0, sizeof *r);
    return r;
}

/* Reads the 10 columns shared by LOAD, LIST and EXPIRE into a new row. */
static int s_read_row(sqlite3_stmt *st, store_req_t *req)
{
    store_row_t *r = s_new_row(req);
    if (r == NULL)
        return SQLITE_NOMEM;
    r->seq = (uint64_t)sqlite3_column_int64(st, 0);
    r->source = s_text(st, 1);
    r->message_id = s_text(st, 2);
    r->dest = s_text(st, 3);
    r->kind = sqlite3_column_int(st, 4);
    r->priority = sqlite3_column_int(st, 5);
    r->stored_ms = sqlite3_column_int64(st, 6);
    r->expires_ms = sqlite3_column_int64(st, 7);
    /* Typed before it is read: a NULL text of a value is SQLite (or strdup)
     * out of memory (sqlite3.h), not a message without a reason. */
    if (sqlite3_column_type(st, 8) != SQLITE_NULL) {
        r->dead_reason = s_text(st, 8);
        if (r->dead_reason == NULL)
            return SQLITE_NOMEM;
    }
    /* The pointer before its size (sqlite3.h); NULL out of memory, which a
     * size alone would show as an empty body. */
    const void *body = sqlite3_column_blob(st, 9);
    int n = sqlite3_column_bytes(st, 9);
    if (body == NULL && (n > 0 || sqlite3_errcode(sqlite3_db_handle(st)) == SQLITE_NOMEM))
        return SQLITE_NOMEM;
    if (n > 0) {
        r->body = malloc((size_t)n);
        if (r->body == NULL)
            return SQLITE_NOMEM;
        memcpy(r->body, body, (size_t)n);
        r->body_len = (size_t)n;
    }
    if (r->source == NULL || r->message_id == NULL || r->dest == NULL)
        return SQLITE_NOMEM;
    return SQLITE_OK;
}

/* Steps a row-returning statement to the end, collecting rows. */
static int s_collect(sqlite3_stmt *st, store_req_t *req)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = s_read_row(st, req);
        if (r != SQLITE_OK)
            return r;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs one of the prepared transaction-control statements. */
static int s_control(store_t *self, int which)
{
    sqlite3_stmt *st = self->stmt[which];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs a statement whose only parameter is a seq and that returns no row. */
static int s_by_seq(store_t *self, int which, uint64_t seq)
{
    sqlite3_stmt *st = s_stmt(self, which);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)seq));
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Appends a message's outcome: MSG_DELIVERED or MSG_DEAD (with reason). */
static int s_done(store_t *self, uint64_t seq, int state, int64_t at_ms, const char *reason)
{
    /* Below the floor it was pinned (s_floor); only there, so that the
     * common outcome costs no statement more. */
    if (seq < self->floor_written) {
        int rc = s_by_seq(self, S_UNPIN, seq);
        if (rc != SQLITE_OK)
            return rc;
    }
    sqlite3_stmt *st = s_stmt(self, S_DONE_INSERT);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)seq));
    S_BIND(sqlite3_bind_int(st, 2, state));
    S_BIND(sqlite3_bind_int64(st, 3, at_ms));
    if (reason != NULL)
        S_BIND(sqlite3_bind_text(st, 4, reason, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Reads message seq into a new row of req (with its body if body is set).
 * SQLITE_NOTFOUND when there is no such message. */
static int s_read_seq(store_t *self, store_req_t *req, uint64_t seq, bool body)
{
    sqlite3_stmt *st = s_stmt(self, body ? S_ROW : S_ROW_HEAD);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)seq));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = s_read_row(st, req);
    else if (rc == SQLITE_DONE)
        rc = SQLITE_NOTFOUND; /* not an error SQLite returns from a step */
    sqlite3_reset(st);
    return rc;
}

/* A PUT refused (req->clin says why): nothing of it stays, and the
 * refusal is counted. */
static int s_put_refused(store_t *self, store_req_t *req)
{
    char labels[200];
    req->status = STORE_REFUSED;
    req->seq = 0;
    snprintf(labels, sizeof labels, "code=\"%s\"", mr_error_name(req->clin.code));
    return tally_add(self->tally, "messages_rejected_total", labels, 1);
}

static int s_op_put(store_t *self, store_req_t *req)
{
    const store_row_t *m = &req->msg;
    sqlite3_stmt *st = s_stmt(self, S_PUT_INSERT);
    S_BIND(sqlite3_bind_text(st, 1, m->source, -1, SQLITE_STATIC));
    S_BIND(sqlite3_bind_text(st, 2, m->message_id, -1, SQLITE_STATIC));
    S_BIND(sqlite3_bind_text(st, 3, m->dest, -1, SQLITE_STATIC));
    S_BIND(sqlite3_bind_int(st, 4, m->kind));
    S_BIND(sqlite3_bind_int(st, 5, m->priority));
    S_BIND(sqlite3_bind_int64(st, 6, m->stored_ms));
    S_BIND(sqlite3_bind_int64(st, 7, m->expires_ms));
    S_BIND(sqlite3_bind_blob(st, 8, m->body, (int)m->body_len, SQLITE_STATIC));
    S_BIND(sqlite3_bind_int(st, 9, m->express));
    /* A referral's lifecycle key, written with the message (no second write):
     * clinical.c's key of it, in as many bytes.  Ids are bounded (a facility's
     * and a referral's MR_*_ID_MAX: 130 bytes); a key cut short would name
     * another referral (two long ids sharing a prefix), so it is refused. */
    char ref_key[200];
    bool referral = req->facts && req->facts->kind == MEDROUTE__V1__KIND__KIND_REFERRAL &&
                    req->facts->ref_id != NULL;
    if (referral) {
        int n = snprintf(ref_key, sizeof ref_key, "%s/%s", m->source, req->facts->ref_id);
        if (n < 0 || (size_t)n >= sizeof ref_key) {
            req->clin.code = MR_E_INVALID;
            snprintf(req->clin.reason, sizeof req->clin.reason,
                     "the referral's key (source/referral_id) is longer than %zu bytes",
                     sizeof ref_key - 1);
            return s_put_refused(self, req);
        }
        S_BIND(sqlite3_bind_text(st, 10, ref_key, -1, SQLITE_TRANSIENT));
    }
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return rc;
    char labels[200];
    if (sqlite3_changes(self->db) == 1) {
        req->seq = (uint64_t)sqlite3_last_insert_rowid(self->db);
        req->status = STORE_OK;
        sqlite3_reset(st);
        /* Checked here, after the duplicate check, so that a resend of a
         * message stored earlier is still acknowledged: an expiry already
         * past (it would be dead at the next scan, never delivered; often
         * seconds sent as milliseconds), and the destination's quota. */
        if (req->fresh_only && req->state == MSG_PENDING && m->expires_ms <= m->stored_ms) {
            req->clin.code = MR_E_INVALID;
            snprintf(req->clin.reason, sizeof req->clin.reason,
                     "referral.expires_at_ms is in the past (milliseconds since 1970)");
        } else if (req->quota > 0 && req->state == MSG_PENDING &&
                   pending_dest_count(self->pending, m->dest) >= req->quota) {
            req->clin.code = MR_E_QUEUE_FULL;
            snprintf(req->clin.reason, sizeof req->clin.reason,
                     "the destination's queue holds its quota of %u", req->quota);
        } else if (req->facts != NULL) {
            rc = clinical_on_put(self->clin, req->seq, m->source, m->dest, req->facts,
                                 m->stored_ms, &req->clin);
            if (rc != SQLITE_OK)
                return rc;
        }
        if (req->clin.code != 0) {
            /* Refused: the message row goes (its seq is not used again). */
            rc = s_by_seq(self, S_PUT_UNDO, req->seq);
            return rc == SQLITE_OK ? s_put_refused(self, req) : rc;
        }
        if (req->seq > self->last_seq)
            self->last_seq = req->seq;
        if (req->state == MSG_DELIVERED) {
            rc = s_done(self, req->seq, MSG_DELIVERED, m->stored_ms, NULL);
        } else {
            pending_entry_t e = {.seq = req->seq,
                                 .stored_ms = m->stored_ms,
                                 .expires_ms = m->expires_ms,
                                 .kind = (uint8_t)m->kind,
                                 .express = m->express != 0,
                                 .referral = referral};
            rc = pending_add(self->pending, m->dest, &e) == 0 ? SQLITE_OK : SQLITE_NOMEM;
        }
        if (rc != SQLITE_OK)
            return rc;
        const char *const pairs[] = {"destination", m->dest, "kind", s_kind(m->kind), "source",
                                     m->source};
        if (tally_labels(labels, sizeof labels, 3, pairs) < 0)
            return SQLITE_TOOBIG;
        return tally_add(self->tally, "messages_stored_total", labels, 1);
    }
    sqlite3_reset(st);
    /* Seen before: the same content is a resend, other content a conflict. */
    st = s_stmt(self, S_PUT_FIND);
    S_BIND(sqlite3_bind_text(st, 1, m->source, -1, SQLITE_STATIC));
    S_BIND(sqlite3_bind_text(st, 2, m->message_id, -1, SQLITE_STATIC));
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? SQLITE_CORRUPT : rc;
    req->seq = (uint64_t)sqlite3_column_int64(st, 0);
    const uint8_t *stored = sqlite3_column_blob(st, 1); /* before its size (sqlite3.h) */
    size_t stored_len = (size_t)sqlite3_column_bytes(st, 1);
    if (stored == NULL && sqlite3_errcode(self->db) == SQLITE_NOMEM) {
        sqlite3_reset(st);
        return SQLITE_NOMEM;
    }
    bool same = stored_len == 0 ? m->body_len == 0
                                : mr_envelope_same(stored, stored_len, m->body, m->body_len);
    req->status = same ? STORE_DUPLICATE : STORE_CONFLICT;
    sqlite3_reset(st);
    if (same) {
        snprintf(labels, sizeof labels, "kind=\"%s\",source=\"%s\"", s_kind(m->kind), m->source);
        return tally_add(self->tally, "messages_duplicate_total", labels, 1);
    }
    return tally_add(self->tally, "messages_rejected_total", "code=\"CONFLICT\"", 1);
}

/* An ack for a message that is not pending for its sender: delivered before
 * (a resent ack), dead, or no such message for that destination; or for
 * one the broker has not sent (req->unsent), pending or not. */
static int s_ack_not_pending(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_ACK_STATE);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    S_BIND(sqlite3_bind_text(st, 2, req->msg.dest, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    req->status = rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL &&
                          sqlite3_column_int(st, 0) == MSG_DELIVERED
                      ? STORE_DUPLICATE
                      : STORE_NOT_FOUND;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int s_op_ack(store_t *self, store_req_t *req)
{
    if (req->unsent)
        return s_ack_not_pending(self, req); /* delivered before, or left as it is */
    /* Out of the pending set first (one search): a failure of what follows
     * fails the batch, whose rollback puts it back. */
    pending_entry_t e;
    int r = pending_remove(self->pending, req->msg.dest, req->msg.seq, &e);
    if (r == -ENOENT)
        return s_ack_not_pending(self, req);
    if (r != 0)
        return SQLITE_NOMEM; /* the journal's memory */
    /* A referral's lifecycle key, read only for referrals. */
    char ref_key[200] = "";
    int rc;
    if (e.referral) {
        sqlite3_stmt *st = s_stmt(self, S_REF_KEY);
        S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)e.seq));
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
            /* A NULL text of a value: out of memory, not a message without a key. */
            const unsigned char *key = sqlite3_column_text(st, 0);
            if (key == NULL)
                rc = SQLITE_NOMEM;
            else
                snprintf(ref_key, sizeof ref_key, "%s", (const char *)key);
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
    }
    rc = s_done(self, e.seq, MSG_DELIVERED, req->now_ms, NULL);
    if (rc != SQLITE_OK)
        return rc;
    req->status = STORE_OK;
    char labels[160];
    const char *const pairs[] = {"destination", req->msg.dest, "kind", s_kind(e.kind)};
    if (tally_labels(labels, sizeof labels, 2, pairs) < 0)
        return SQLITE_TOOBIG;
    S_BIND(tally_add(self->tally, "messages_delivered_total", labels, 1));
    return clinical_on_delivered(self->clin, ref_key, req->now_ms);
}

/* Reads the messages whose seqs are given, in that order, into req->rows. */
static int s_read_seqs(store_t *self, store_req_t *req, const uint64_t *seqs, size_t n, bool body)
{
    int rc = SQLITE_OK;
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++)
        rc = s_read_seq(self, req, seqs[i], body);
    return rc == SQLITE_NOTFOUND ? SQLITE_CORRUPT : rc; /* pending, and no row */
}

static int s_op_load(store_t *self, store_req_t *req)
{
    uint64_t *seqs = malloc((req->limit ? req->limit : 1) * sizeof *seqs);
    if (seqs == NULL)
        return SQLITE_NOMEM;
    size_t n = pending_after(self->pending, req->msg.dest, req->after, req->express_only, seqs,
                             req->limit);
    int rc = s_read_seqs(self, req, seqs, n, true);
    free(seqs);
    return rc;
}

static int s_op_list(store_t *self, store_req_t *req)
{
    if (req->state == MSG_DEAD || req->state == MSG_DELIVERED) {
        int which = req->state == MSG_DEAD ? S_LIST_DEAD_ALL : S_LIST_DONE_ALL;
        sqlite3_stmt *st = s_stmt(self, req->msg.dest ? which + 1 : which);
        S_BIND(sqlite3_bind_int(st, 1, (int)req->limit));
        if (req->msg.dest)
            S_BIND(sqlite3_bind_text(st, 2, req->msg.dest, -1, SQLITE_STATIC));
        return s_collect(st, req);
    }
    if (req->state != MSG_PENDING)
        return SQLITE_OK;
    uint64_t *seqs = malloc((req->limit ? req->limit : 1) * sizeof *seqs);
    if (seqs == NULL)
        return SQLITE_NOMEM;
    size_t n = req->msg.dest
                   ? pending_after(self->pending, req->msg.dest, 0, false, seqs, req->limit)
                   : pending_lowest(self->pending, seqs, req->limit);
    int rc = s_read_seqs(self, req, seqs, n, false);
    free(seqs);
    return rc;
}

static int s_op_summary(store_t *self, store_req_t *req)
{
    size_t n = pending_summary(self->pending, NULL, 0);
    pending_dest_t *d = malloc((n ? n : 1) * sizeof *d);
    if (d == NULL)
        return SQLITE_NOMEM;
    n = pending_summary(self->pending, d, n);
    int rc = SQLITE_OK;
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        store_row_t *r = s_new_row(req);
        if (r == NULL || (r->dest = strdup(d[i].dest)) == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        r->count = d[i].count;
        r->seq = d[i].min_seq;
        r->stored_ms = d[i].min_stored_ms;
    }
    free(d);
    return rc;
}

/* A message pending for dest becomes dead: out of the pending set, and its
 * outcome row.  SQLITE_NOTFOUND when it is not pending there. */
static int s_kill(store_t *self, const char *dest, uint64_t seq, int64_t now_ms,
                  const char *reason)
{
    int r = pending_remove(self->pending, dest, seq, NULL);
    if (r != 0)
        return r == -ENOENT ? SQLITE_NOTFOUND : SQLITE_NOMEM;
    return s_done(self, seq, MSG_DEAD, now_ms, reason);
}

static int s_op_drop(store_t *self, store_req_t *req)
{
    /* Its row first: it gives the destination, whose pending set holds it,
     * and it is what the request returns. */
    const char *reason = req->msg.dead_reason ? req->msg.dead_reason : "dropped";
    int rc = s_read_seq(self, req, req->msg.seq, false);
    if (rc == SQLITE_OK)
        rc = s_kill(self, req->rows[0].dest, req->msg.seq, req->now_ms, reason);
    if (rc == SQLITE_NOTFOUND) { /* no such message, or not pending */
        for (size_t i = 0; i < req->n_rows; i++)
            store_row_clear(&req->rows[i]);
        req->n_rows = 0;
        req->status = STORE_NOT_FOUND;
        return SQLITE_OK;
    }
    if (rc == SQLITE_OK && (req->rows[0].dead_reason = strdup(reason)) == NULL)
        rc = SQLITE_NOMEM;
    if (rc == SQLITE_OK)
        rc = tally_add(self->tally, "messages_dead_total", "reason=\"dropped\"", 1);
    return rc;
}

static int s_op_retry(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_RETRY_UNDEAD);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return rc;
    if (sqlite3_changes(self->db) != 1) {
        req->status = STORE_NOT_FOUND;
        return SQLITE_OK;
    }
    st = s_stmt(self, S_RETRY_ROW);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    S_BIND(sqlite3_bind_int64(st, 2, req->now_ms));
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? SQLITE_CORRUPT : rc;
    }
    rc = s_read_row(st, req);
    pending_entry_t e = {.express = sqlite3_column_int(st, 10) != 0,
                         .referral = sqlite3_column_int(st, 11) != 0};
    sqlite3_reset(st);
    if (rc != SQLITE_OK)
        return rc;
    req->rows[0].express = e.express; /* the router queues it as it was */
    const store_row_t *r = &req->rows[0];
    e.seq = r->seq;
    e.stored_ms = r->stored_ms;
    e.expires_ms = r->expires_ms;
    e.kind = (uint8_t)r->kind;
    if (pending_add(self->pending, r->dest, &e) != 0)
        return SQLITE_NOMEM;
    /* Back below the floor: pinned, as the floor never falls (s_floor). */
    if (e.seq < self->floor_written && (rc = s_by_seq(self, S_PIN, e.seq)) != SQLITE_OK)
        return rc;
    req->status = STORE_OK;
    return tally_add(self->tally, "messages_retried_total", "", 1);
}

static int s_op_expire(store_t *self, store_req_t *req)
{
    size_t max = req->limit;
    if (max == 0)
        return SQLITE_OK;
    pending_entry_t *due = malloc(max * sizeof *due);
    const char **dests = malloc(max * sizeof *dests);
    int rc = due && dests ? SQLITE_OK : SQLITE_NOMEM;
    /* One out at the receiver, perhaps handled already, its DeliveryAck on
     * the way, is not expired under it (the sender would be told it was not
     * delivered, and the ack refused): passed over, and found again by a
     * later scan once it is back in the queue.  Passed over inside
     * pending_expired, so that however many are out, the batch takes others. */
    size_t n = rc == SQLITE_OK ? pending_expired(self->pending, req->now_ms, req->outstanding,
                                                 req->n_outstanding, due, dests, max)
                               : 0;
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        rc = s_kill(self, dests[i], due[i].seq, req->now_ms, "expired");
        if (rc == SQLITE_OK && (rc = s_read_seq(self, req, due[i].seq, false)) == SQLITE_NOTFOUND)
            rc = SQLITE_CORRUPT; /* pending, and no row */
        if (rc == SQLITE_OK && (req->rows[req->n_rows - 1].dead_reason = strdup("expired")) == NULL)
            rc = SQLITE_NOMEM;
        char labels[160];
        const char *const pairs[] = {"destination", dests[i], "kind", s_kind(due[i].kind)};
        if (rc == SQLITE_OK && tally_labels(labels, sizeof labels, 2, pairs) < 0)
            rc = SQLITE_TOOBIG;
        if (rc == SQLITE_OK)
            rc = tally_add(self->tally, "messages_expired_total", labels, 1);
        if (rc == SQLITE_OK)
            rc = tally_add(self->tally, "messages_dead_total", "reason=\"expired\"", 1);
    }
    free(due);
    free(dests);
    return rc;
}

/* Deletes messages delivered before before_ms, at most limit of them. */
static int s_op_prune(store_t *self, store_req_t *req)
{
    size_t max = req->limit, n = 0;
    uint64_t *seqs = malloc((max ? max : 1) * sizeof *seqs);
    if (seqs == NULL)
        return SQLITE_NOMEM;
    sqlite3_stmt *st = s_stmt(self, S_PRUNE_SCAN);
    int rc = sqlite3_bind_int64(st, 1, req->before_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
        seqs[n++] = (uint64_t)sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_reset(st); /* before deleting what it reads */
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        rc = SQLITE_OK;
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        rc = s_by_seq(self, S_PRUNE_DONE, seqs[i]);
        if (rc == SQLITE_OK)
            rc = s_by_seq(self, S_PUT_UNDO, seqs[i]);
    }
    free(seqs);
    req->value = rc == SQLITE_OK ? n : 0;
    return rc;
}

static int s_op_size(store_t *self, store_req_t *req)
{
    struct stat st;
    uint64_t total = 0;
    char wal[4096];
    if (stat(self->path, &st) == 0)
        total += (uint64_t)st.st_size;
    if (snprintf(wal, sizeof wal, "%s-wal", self->path) < (int)sizeof wal &&
        stat(wal, &st) == 0)
        total += (uint64_t)st.st_size;
    req->value = total;
    return SQLITE_OK;
}

/*
 * A store_tally count: an event of the loop thread (a refusal, a
 * redelivery) that happened whatever becomes of this batch, so it is kept
 * until a batch that writes anyway commits it (tally.h), not dropped with a
 * rollback as the counts of the batch's own work are.
 */
static int s_keep_tally(store_t *self, const store_req_t *req)
{
    return tally_kept_add(self->kept, req->tally_name, req->tally_labels ? req->tally_labels : "",
                          req->tally_delta);
}

/* Executes one request inside the open transaction.  Returns an SQLite code;
 * anything but SQLITE_OK fails the batch. */
static int s_execute(store_t *self, store_req_t *req)
{
    int rc;
    req->status = STORE_OK;
    switch (req->op) {
    case STORE_PUT: rc = s_op_put(self, req); break;
    case STORE_ACK: rc = s_op_ack(self, req); break;
    case STORE_LOAD: rc = s_op_load(self, req); break;
    case STORE_LIST: rc = s_op_list(self, req); break;
    case STORE_SUMMARY: rc = s_op_summary(self, req); break;
    case STORE_DROP: rc = s_op_drop(self, req); break;
    case STORE_RETRY: rc = s_op_retry(self, req); break;
    case STORE_EXPIRE: rc = s_op_expire(self, req); break;
    case STORE_PRUNE: rc = s_op_prune(self, req); break;
    case STORE_SIZE: rc = s_op_size(self, req); break;
    case STORE_SCAN:
        rc = clinical_scan(self->clin, &req->sla, req->now_ms, &req->events, &req->n_events);
        break;
    case STORE_SLOTS: rc = clinical_slots(self->clin, req->query, &req->slots, &req->n_slots); break;
    case STORE_OPEN:
        rc = clinical_open_loops(self->clin, req->query, req->older_than_ms, &req->open,
                                 &req->n_open);
        break;
    case STORE_TALLY: rc = s_keep_tally(self, req); break;
    case STORE_STATS:
        rc = tally_query(self->tally, req->first_day[0] ? req->first_day : NULL,
                         req->last_day[0] ? req->last_day : NULL, req->query, &req->tallies,
                         &req->n_tallies);
        if (rc == SQLITE_OK)
            rc = clinical_visits(self->clin, req->first_day[0] ? req->first_day : NULL,
                                 req->last_day[0] ? req->last_day : NULL, &req->visits);
        /* Only reads: a query that fails for its own reasons (an overflow,
         * a value too big) fails alone, not the batch's messages and acks.
         * Any other error fails all, and so does one after which SQLite has
         * ended the transaction itself (NOMEM, FULL, I/O: autocommit again). */
        if (rc != SQLITE_OK && s_query_own_error(rc) && !sqlite3_get_autocommit(self->db)) {
            char why[120];
            log_warn(self->log, "store.query_failed", "query=stats sqlite=%d reason=\"%s\"", rc,
                     log_clean(why, sizeof why, sqlite3_errmsg(self->db)));
            req->status = STORE_UNAVAILABLE;
            rc = SQLITE_OK;
        }
        break;
    default: rc = SQLITE_MISUSE; break;
    }
    /* Release the statements (and any read they hold) for the next request. */
    for (int i = 0; i < S_STMT_COUNT; i++)
        if (self->stmt[i] != NULL && sqlite3_stmt_busy(self->stmt[i]))
            sqlite3_reset(self->stmt[i]);
    return rc;
}

/* ---- store thread: batches ---------------------------------------------- */

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Waits, under the lock, for a submission or the stop; only until
 * kept_retry_ms while the idle write of kept counts waits for it.  False
 * once that time has come. */
static bool s_wait_work(store_t *self)
{
    if (self->kept_retry_ms == 0) {
        pthread_cond_wait(&self->wake, &self->lock);
        return true;
    }
    struct timespec at = {.tv_sec = self->kept_retry_ms / 1000,
                          .tv_nsec = self->kept_retry_ms % 1000 * 1000000};
    return pthread_cond_timedwait(&self->wake, &self->lock, &at) != ETIMEDOUT;
}

/* Takes the next request, waiting for one if wait is set (a batch's first:
 * its start, invariant 5), and counts how long it waited in waits.  NULL
 * when the queue is empty (or stopping and drained, or kept_retry_ms came). */
static store_req_t *s_take(store_t *self, bool wait, durhist_t *waits)
{
    pthread_mutex_lock(&self->lock);
    bool waiting = wait;
    while (waiting && self->queue_head == NULL && !self->stopping)
        waiting = s_wait_work(self);
    store_req_t *req = self->queue_head;
    if (req != NULL) {
        self->queue_head = req->next;
        if (self->queue_head == NULL)
            self->queue_tail = NULL;
        req->next = NULL;
        if (wait)
            self->batch_since_us = req->submitted_us;
    }
    pthread_mutex_unlock(&self->lock);
    if (req != NULL && waits != NULL)
        durhist_add(waits, s_mono_us() - req->submitted_us);
    return req;
}

/* Hands head..tail to the loop thread.  ends_batch: they are the store
 * thread's running batch (invariant 5), not a backup's request, which the
 * backup thread (or the loop, when it could not start one) completes while
 * the batch may still be stuck. */
static void s_complete(store_t *self, store_req_t *head, store_req_t *tail, bool ends_batch)
{
    if (head == NULL)
        return;
    pthread_mutex_lock(&self->lock);
    if (ends_batch)
        self->batch_since_us = 0; /* invariant 5: the batch is done, callbacks aside */
    if (self->done_tail)
        self->done_tail->next = head;
    else
        self->done_head = head;
    self->done_tail = tail;
    pthread_mutex_unlock(&self->lock);
    uv_async_send(&self->async);
}

static void s_fail_batch(store_req_t *head)
{
    for (store_req_t *r = head; r; r = r->next) {
        r->status = STORE_UNAVAILABLE;
        for (size_t i = 0; i < r->n_rows; i++)
            store_row_clear(&r->rows[i]);
        r->n_rows = 0;
        clinical_events_free(r->events, r->n_events);
        r->events = NULL;
        r->n_events = 0;
    }
}

/* Wakes the checkpoint thread after a commit that wrote. */
static void s_checkpoint_due(store_t *self)
{
    pthread_mutex_lock(&self->lock);
    if (!self->ckpt_due) {
        self->ckpt_due = true;
        pthread_cond_signal(&self->ckpt_wake);
    }
    pthread_mutex_unlock(&self->lock);
}

static int s_pin(void *arg, uint64_t seq)
{
    return s_by_seq(arg, S_PIN, seq);
}

/* Writes the floor f; pins the pending seqs it passes first, if pins. */
static int s_floor_write(store_t *self, uint64_t f, bool pins)
{
    int rc = pins ? pending_each_between(self->pending, self->floor_written, f, s_pin, self)
                  : SQLITE_OK;
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_stmt *st = s_stmt(self, S_FLOOR);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)f));
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/*
 * Keeps every pending seq at or above meta.pending_floor or in
 * pending_pinned, so that the next open finds them all.  The floor only
 * rises: to the lowest pending seq above it, or, when that one is at least
 * floor_lag rows behind the newest, past it, pinning the pending seqs it
 * passes (pin_step seqs' worth at most per batch).  So an open reads about
 * floor_lag rows from the floor on, plus the pinned ones, however long one
 * message has been waiting.  Only in a batch that wrote anyway (a batch of
 * reads must not fail for want of disk), and not within a second of a raise
 * that pinned nothing (a write per batch would cost more than the few rows
 * it saves at open); after one that pinned, in the next such batch, until
 * the floor has caught up.  A raise that pins runs in a savepoint: when it
 * fails (a nearly full disk), it alone is undone, and tried again a second
 * later, rather than failing the batch's messages.
 */
static int s_floor(store_t *self, bool wrote)
{
    int64_t now = s_mono_ms();
    if (!wrote || now < self->floor_next_ms)
        return SQLITE_OK;
    uint64_t top = self->last_seq + 1; /* nothing pending: every later message is above */
    uint64_t f = pending_floor_from(self->pending, self->floor_written);
    if (f == 0)
        f = top;
    uint64_t lagging = top > self->floor_lag ? top - self->floor_lag : 0;
    bool pins = f < lagging;
    if (pins)
        f = f + self->pin_step < lagging ? f + self->pin_step : lagging;
    if (f <= self->floor_written)
        return SQLITE_OK;
    if (!pins) {
        int rc = s_floor_write(self, f, false);
        if (rc != SQLITE_OK)
            return rc;
        self->floor_written = f;
        self->floor_next_ms = now + 1000;
        return SQLITE_OK;
    }
    int rc = sqlite3_exec(self->db, "SAVEPOINT floor", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = s_floor_write(self, f, true);
    if (rc == SQLITE_OK) {
        rc = sqlite3_exec(self->db, "RELEASE floor", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            self->floor_written = f;
        return rc;
    }
    /* Undone alone, if the transaction is still open; else the batch fails. */
    if (sqlite3_get_autocommit(self->db) ||
        sqlite3_exec(self->db, "ROLLBACK TO floor; RELEASE floor", NULL, NULL, NULL) != SQLITE_OK)
        return rc;
    log_warn(self->log, "store.floor_deferred", "path=\"%s\" error=\"%s\" floor=%llu to=%llu",
             self->path_log, sqlite3_errstr(rc), (unsigned long long)self->floor_written,
             (unsigned long long)f);
    self->floor_next_ms = now + 1000;
    return SQLITE_OK;
}

/*
 * Rolls the failed batch's transaction back; false when it is still open
 * after that.  The pending set and the floor follow the rollback whatever
 * happens here, so a transaction left open would keep what they no longer
 * hold (and every later BEGIN would fail within it): the caller closes the
 * connection instead, which rolls the transaction back (sqlite3_close_v2),
 * and the next batch reopens and rebuilds the set from the file.
 */
static bool s_rollback(store_t *self)
{
    int rc = sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc == SQLITE_OK && sqlite3_get_autocommit(self->db))
        return true;
    log_error(self->log, "store.rollback_failed",
              "path=\"%s\" sqlite=%d reason=\"%s\" effect=\"connection closed, reopened and"
              " rebuilt\"",
              self->path_log, rc, sqlite3_errstr(rc));
    return false;
}

/* The idle write of kept counts waits this long after a busy lock. */
enum { S_KEPT_RETRY_MS = 1000 };

/* The idle write met a busy lock (another process writing the file, an
 * operator's sqlite3 say): no request failed, and the next may well
 * succeed, so the store is not reported unavailable (/healthz); the counts
 * stay kept for a batch that writes, or for this write a second later.
 * Logged once per such wait. */
static void s_kept_deferred(store_t *self, int rc)
{
    if (self->kept_retry_ms == 0)
        log_warn(self->log, "store.kept_deferred",
                 "path=\"%s\" sqlite=%d reason=\"%s\" retry_s=1", self->path_log, rc,
                 sqlite3_errstr(rc));
    self->kept_retry_ms = s_mono_ms() + S_KEPT_RETRY_MS;
}

/*
 * Writes the kept counts no batch wrote, in a transaction no request shares,
 * so that this write fails no one: when the store is idle and healthy (else
 * they would wait for the next batch that writes anyway, on a quiet broker
 * for hours), and at stop.  When idle, a busy lock only defers it
 * (s_kept_deferred).  Any other failure is reported and handled as a failed
 * batch's (s_thread): the connection is closed when its transaction stays
 * open or the error makes it suspect (s_needs_reopen), so the next batch
 * reopens it rather than fail on it too; the store counts as unavailable
 * until a batch shows it over (s_recovered), and the counts wait for a
 * batch that writes (at stop they are lost, store.h).
 */
static void s_flush_kept(store_t *self, const char *during, bool idle)
{
    if (self->db == NULL || self->tally == NULL || tally_kept_empty(self->kept))
        return;
    int rc = s_control(self, S_BEGIN);
    if (rc == SQLITE_OK)
        rc = tally_flush(self->tally, s_wall_ms(), true);
    if (rc == SQLITE_OK)
        rc = s_control(self, S_COMMIT);
    if (rc == SQLITE_OK) {
        tally_commit(self->tally);
        self->kept_retry_ms = 0;
        s_checkpoint_due(self); /* a commit that wrote, as a batch's */
        return;
    }
    bool still_open = !sqlite3_get_autocommit(self->db) && !s_rollback(self);
    if (idle && (rc & 0xff) == SQLITE_BUSY && !still_open) {
        tally_discard(self->tally);
        s_kept_deferred(self, rc);
        return;
    }
    s_log_failure(self, rc, during);
    atomic_store(&self->unavailable, true);
    if (still_open || s_needs_reopen(rc))
        s_close_db(self); /* closing rolls back what is left open; the next batch reopens */
    else
        tally_discard(self->tally);
}

/*
 * After a batch that committed: ends the outage being reported, if this
 * batch shows it over.  A batch of reads succeeds on a full disk too, so
 * only one that wrote shows the store writing again; but a busy lock, when
 * nothing else failed since, is over once a batch, of reads or not, has
 * taken the lock again (BEGIN IMMEDIATE: every batch does): else a router's
 * page load that met it left /healthz at 503 until something was written,
 * on a quiet broker for long.
 */
static void s_recovered(store_t *self, bool wrote)
{
    if (self->last_error == 0 || (!wrote && self->outage_needs_write))
        return;
    log_info(self->log, "store.recovered", "path=\"%s\" after=\"%s\"", self->path_log,
             sqlite3_errstr(self->last_error));
    self->last_error = 0;
    self->outage_needs_write = false;
    atomic_store(&self->unavailable, false);
}

static bool s_queue_empty(store_t *self)
{
    pthread_mutex_lock(&self->lock);
    bool empty = self->queue_head == NULL;
    pthread_mutex_unlock(&self->lock);
    return empty;
}

static bool s_stopping(store_t *self)
{
    pthread_mutex_lock(&self->lock);
    bool stopping = self->stopping;
    pthread_mutex_unlock(&self->lock);
    return stopping;
}

/* Between batches: the kept counts no batch wrote are written once the
 * store is idle and healthy, after a busy lock not before kept_retry_ms. */
static void s_idle(store_t *self)
{
    if (tally_kept_empty(self->kept) || atomic_load(&self->unavailable)) {
        self->kept_retry_ms = 0; /* nothing kept, or the next batch that writes */
        return;
    }
    if (s_mono_ms() >= self->kept_retry_ms && s_queue_empty(self))
        s_flush_kept(self, "idle", true);
}

static void *s_thread(void *arg)
{
    store_t *self = arg;
    (void)pthread_setname_np(pthread_self(), "mr-store"); /* top -H, the benchmark */
    for (;;) {
        durhist_t waits = {0}, commits = {0}; /* this batch's, for store_latency */
        store_req_t *first = s_take(self, true, &waits);
        if (first == NULL && !s_stopping(self)) {
            s_idle(self); /* kept_retry_ms has come */
            continue;
        }
        if (first == NULL)
            break; /* stopping and drained */
        store_req_t *head = first, *tail = first;
        size_t count = 1;
        int rc = SQLITE_OK;
        bool still_open = false; /* a failed batch's transaction that ROLLBACK left open */
        if (self->db == NULL)
            rc = s_open_db(self);
        int changes_before = self->db ? sqlite3_total_changes(self->db) : 0;
        if (rc == SQLITE_OK)
            rc = s_control(self, S_BEGIN);
        bool journalled = rc == SQLITE_OK;
        uint64_t last_seq = self->last_seq;
        if (journalled)
            pending_begin(self->pending);
        if (rc == SQLITE_OK) {
            int64_t started = s_mono_ms();
            store_req_t *req = first;
            for (;;) {
                rc = s_execute(self, req);
                if (rc != SQLITE_OK)
                    break;
                if (count >= self->batch_max || s_mono_ms() - started >= self->batch_ms)
                    break;
                req = s_take(self, false, &waits);
                if (req == NULL)
                    break;
                tail->next = req;
                tail = req;
                count++;
            }
            /* The batch's counts go in its own transaction; store_tally's
             * kept ones only if it writes anyway, as the floor (s_floor). */
            if (rc == SQLITE_OK)
                rc = tally_flush(self->tally, s_wall_ms(),
                                 sqlite3_total_changes(self->db) != changes_before);
            if (rc == SQLITE_OK)
                rc = s_floor(self, sqlite3_total_changes(self->db) != changes_before);
            if (rc == SQLITE_OK) {
                int64_t commit_us = s_mono_us();
                rc = s_control(self, S_COMMIT);
                if (rc == SQLITE_OK && sqlite3_total_changes(self->db) != changes_before)
                    durhist_add(&commits, s_mono_us() - commit_us);
            }
            if (rc != SQLITE_OK && !sqlite3_get_autocommit(self->db))
                still_open = !s_rollback(self);
        }
        bool set_lost = false;
        if (journalled && rc == SQLITE_OK) {
            tally_commit(self->tally);
            clinical_commit(self->clin);
            pending_commit(self->pending);
            self->floor_committed = self->floor_written;
        } else if (journalled) {
            set_lost = pending_rollback(self->pending) != 0;
            self->floor_written = self->floor_committed;
            self->last_seq = last_seq;
        }
        if (rc != SQLITE_OK) {
            s_log_failure(self, rc, "batch");
            /* A batch that could not begin (no database, the lock) never
             * executed its first request: a count there is kept too. */
            if (!journalled && first->op == STORE_TALLY)
                (void)s_keep_tally(self, first); /* out of memory: best effort (store.h) */
            if (self->tally != NULL)
                tally_discard(self->tally);
            if (self->clin != NULL)
                clinical_rollback(self->clin);
            s_fail_batch(head);
            if (s_needs_reopen(rc) || set_lost || still_open)
                s_close_db(self); /* reopen, re-check and rebuild on the next batch */
            atomic_store(&self->unavailable, true);
        } else {
            bool wrote = sqlite3_total_changes(self->db) != changes_before;
            if (wrote)
                s_checkpoint_due(self);
            s_recovered(self, wrote);
        }
        pthread_mutex_lock(&self->lock);
        durhist_merge(&self->lat_wait, &waits);
        durhist_merge(&self->lat_commit, &commits);
        pthread_mutex_unlock(&self->lock);
        s_complete(self, head, tail, true);
        s_idle(self);
    }
    return NULL; /* the connection stays for store_destroy's last write (s_stop_flush) */
}

/*
 * At stop, once the store thread has ended and the last callbacks have run
 * (they may count, store_tally): writes the kept counts and closes the
 * connection.  Counts kept through an outage that closed the database are
 * written if it opens now, though no request came since to open it again.
 */
static void s_stop_flush(store_t *self)
{
    if (self->db == NULL && !tally_kept_empty(self->kept))
        (void)s_open_db(self); /* a failure is logged; the counts are lost (store.h) */
    s_flush_kept(self, "stop", false);
    s_close_db(self);
}

/* ---- loop thread ---------------------------------------------------------- */

static void on_async(uv_async_t *handle)
{
    store_t *self = handle->data;
    pthread_mutex_lock(&self->lock);
    store_req_t *req = self->done_head;
    self->done_head = self->done_tail = NULL;
    pthread_mutex_unlock(&self->lock);
    while (req != NULL) {
        store_req_t *next = req->next;
        atomic_fetch_sub(&self->backlog, 1);
        if (req->op == STORE_PUT)
            durhist_add(&self->lat_put, s_mono_us() - req->submitted_us);
        if (req->cb)
            req->cb(req, req->arg);
        s_req_free(req);
        req = next;
    }
}

static void *s_checkpoint_thread(void *arg);

/* A condition whose timed waits (s_wait_work) are on the monotonic clock. */
static int s_cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

int store_process_init(void)
{
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK ? 0 : -1;
}

store_t *store_new(uv_loop_t *loop, const store_opts_t *opts, log_t *log)
{
    store_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->loop = loop;
    self->log = log;
    self->path = strdup(opts->path);
    self->sync_full = opts->sync_full;
    self->batch_max = opts->batch_max ? opts->batch_max : 1000;
    self->batch_ms = opts->batch_ms;
    self->floor_lag = opts->floor_lag ? opts->floor_lag : S_FLOOR_LAG;
    self->pin_step = opts->pin_step ? opts->pin_step : S_PIN_STEP;
    atomic_init(&self->backlog, 0);
    atomic_init(&self->unavailable, false);
    atomic_init(&self->backups, 0);
    self->pending = pending_new();
    self->kept = tally_kept_new();
    if (self->path == NULL || self->pending == NULL || self->kept == NULL)
        goto fail_alloc;
    /* The operator's text: cleaned once, so that it cannot forge a field. */
    log_clean(self->path_log, sizeof self->path_log, self->path);
    if (pthread_mutex_init(&self->lock, NULL) != 0)
        goto fail_alloc;
    if (s_cond_init_monotonic(&self->wake) != 0)
        goto fail_mutex;
    if (pthread_cond_init(&self->ckpt_wake, NULL) != 0) {
        pthread_cond_destroy(&self->wake);
        goto fail_mutex;
    }
    if (uv_async_init(loop, &self->async, on_async) != 0)
        goto fail_cond;
    self->async.data = self;
    /* Only under FULL: walbuf.h says why.  Without it (no memory), SQLite's
     * own VFS does the same work in more calls. */
    if (self->sync_full && (self->walbuf = walbuf_new()) == NULL)
        log_warn(log, "store.no_walbuf", "effect=\"two WAL writes per page\"");
    /* Open now so that start-up says what it found before serving. */
    if (s_open_db(self) != SQLITE_OK)
        atomic_store(&self->unavailable, true);
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0)
        goto fail_async;
    self->checkpointer_started =
        pthread_create(&self->checkpointer, NULL, s_checkpoint_thread, self) == 0;
    if (!self->checkpointer_started)
        log_warn(log, "store.no_checkpointer", "reason=\"thread\" effect=\"the WAL grows\"");
    return self;
fail_async:
    s_close_db(self);
    uv_close((uv_handle_t *)&self->async, NULL);
    /* The handle is closed on the next loop turn; the struct must live
     * until then, so it is leaked on this (start-up only) path. */
    return NULL;
fail_cond:
    pthread_cond_destroy(&self->ckpt_wake);
    pthread_cond_destroy(&self->wake);
fail_mutex:
    pthread_mutex_destroy(&self->lock);
fail_alloc:
    tally_kept_destroy(&self->kept);
    pending_destroy(&self->pending);
    free(self->path);
    free(self);
    return NULL;
}

void store_tally(store_t *self, const char *name, const char *labels, int64_t delta)
{
    store_req_t *req = store_req_new(STORE_TALLY, NULL, NULL);
    if (req == NULL)
        return;
    req->tally_name = strdup(name);
    req->tally_labels = strdup(labels ? labels : "");
    req->tally_delta = delta;
    if (req->tally_name == NULL || req->tally_labels == NULL) {
        s_req_free(req);
        return;
    }
    store_submit(self, req);
}

/* ---- checkpoints: their own thread and connection ------------------------------ */

/*
 * This thread copies the WAL back into the database (PASSIVE: it never
 * blocks the writer) after commits, at most once every S_CKPT_PACE_MS, so
 * that the commit path mostly only appends.  Under sustained writes a
 * passive checkpoint rarely catches up, and the WAL can only restart after
 * one that does: the writer keeps SQLite's auto-checkpoint as that bound
 * (4096 pages, 32 MB of 8 KB pages, 16 MB of the 4 KB pages of stores made
 * before; 8192 and 16384 4-KB pages were no better in the benchmark,
 * 32768 much worse: the WAL outgrows journal_size_limit), and as
 * this thread has copied nearly everything by then, that checkpoint costs
 * the writer about a millisecond instead of copying the whole WAL
 * (docs/performance.md).  journal_size_limit truncates the file back to
 * 64 MB after a restart.  An idle store wakes this thread no more.
 * The pace: a page that many commits rewrite (an index's leaf, the file's
 * first page) is copied once per pass, so fewer passes copy less (25 ms
 * instead of 5 took the thread from 2.6 to 1.6 us per message at
 * saturation, sixth session), but a pass's copy and the sync of the
 * database that ends it delay the commits running meanwhile, the more so
 * the more it copies: at 28 k msg/s the Ack p99 was 3.7-4.7 ms at 10 ms
 * against 4.6-6.2 ms at 25 ms and 6.4-8.9 at 100 ms, for 0.4-0.7 us more of
 * this thread per message (docs/performance.md, seventh session).
 */
enum { S_CKPT_PACE_MS = 10 };

/* A connection of its own; NULL if the file cannot be opened now. */
static sqlite3 *s_checkpoint_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        sqlite3_close_v2(db);
        return NULL;
    }
    /* A connection that has never read the database has not opened its WAL
     * either, and its checkpoints do nothing at all (they report -1 frames):
     * read once. */
    if (sqlite3_exec(db, "SELECT 1 FROM sqlite_master LIMIT 1", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_close_v2(db);
        return NULL;
    }
    return db;
}

static void *s_checkpoint_thread(void *arg)
{
    store_t *self = arg;
    (void)pthread_setname_np(pthread_self(), "mr-checkpoint");
    sqlite3 *db = NULL;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        while (!self->ckpt_due && !self->stopping)
            pthread_cond_wait(&self->ckpt_wake, &self->lock);
        self->ckpt_due = false;
        bool stop = self->stopping;
        pthread_mutex_unlock(&self->lock);
        if (stop)
            break;
        if (db == NULL)
            db = s_checkpoint_open(self->path);
        int wal = 0, done = 0;
        int rc = db ? sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &wal, &done)
                    : SQLITE_CANTOPEN;
        /* BUSY: the writer's own auto-checkpoint is running. */
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            sqlite3_close_v2(db); /* reopen next time: the file may have changed */
            db = NULL;
        }
        struct timespec pace = {0, S_CKPT_PACE_MS * 1000 * 1000};
        nanosleep(&pace, NULL);
    }
    sqlite3_close_v2(db);
    return NULL;
}

/* ---- backup: its own thread and read connection ------------------------------ */

typedef struct {
    store_t *store;
    store_req_t *req;
} s_backup_t;

/*
 * Whether path names the store's own database or one of its companion files
 * (by device and inode, so a symlink or hard link counts): a backup written
 * there would replace the live store with an older snapshot of itself.
 */
static bool s_is_store_file(const store_t *self, const char *path)
{
    struct stat target;
    if (stat(path, &target) != 0)
        return false; /* nothing there: not one of the store's existing files */
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char own[4200];
        struct stat st;
        if (snprintf(own, sizeof own, "%s%s", self->path, suffixes[i]) < (int)sizeof own &&
            stat(own, &st) == 0 && st.st_dev == target.st_dev && st.st_ino == target.st_ino)
            return true;
    }
    return false;
}

/*
 * Whether the SQLite database at path holds the broker's own tables, as a
 * store and each of its backups have since the first schema: another one (a
 * client's state file, with its outbox of messages not yet accepted) is not
 * an earlier backup.  Read-only; a file that cannot be read so is not one.
 */
static bool s_holds_store_tables(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    bool yes = false;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                           " AND name IN ('messages', 'referrals')",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        yes = sqlite3_column_int(st, 0) == 2;
    sqlite3_finalize(st);
    sqlite3_close_v2(db);
    return yes;
}

/*
 * Whether path names something a backup may not replace: anything there but
 * an empty file or an earlier backup (an SQLite database with the store's
 * tables).  The daemon may write more than its backups (under the unit, its
 * whole state directory; elsewhere, what its user may), and an operator's
 * typo must not replace a configuration, a key or a client's state file with
 * a copy of the store.  A symbolic link is judged by itself: rename() would
 * replace the link, not its target.
 */
static bool s_is_foreign_file(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno != ENOENT; /* nothing there is fine; what cannot be looked at is not */
    if (!S_ISREG(st.st_mode))
        return true;
    if (st.st_size == 0)
        return false;
    static const char magic[16] = "SQLite format 3"; /* and its NUL: 16 bytes */
    char head[sizeof magic];
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return true;
    ssize_t n = read(fd, head, sizeof head);
    bool sqlite = n == (ssize_t)sizeof head && memcmp(head, magic, sizeof magic) == 0;
    return close(fd) != 0 || !sqlite || !s_holds_store_tables(path);
}

/* Copies the store into tmp (a new, empty file); the page count in *pages.
 * 0, or -1 with the reason in why. */
static int s_backup_copy(const store_t *self, const char *tmp, uint64_t *pages, char *why,
                         size_t why_len)
{
    sqlite3 *src = NULL, *dst = NULL;
    int rc = -1;
    /* A read transaction on its own connection: with WAL the writer goes on,
     * and the copy is one consistent snapshot. */
    if (sqlite3_open_v2(self->path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(why, why_len, "store: %s", sqlite3_errmsg(src));
    } else if (sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
               SQLITE_OK) {
        snprintf(why, why_len, "target: %s", sqlite3_errmsg(dst));
    } else {
        sqlite3_backup *bk = sqlite3_backup_init(dst, "main", src, "main");
        int step = bk ? sqlite3_backup_step(bk, -1) : SQLITE_ERROR;
        *pages = bk ? (uint64_t)sqlite3_backup_pagecount(bk) : 0;
        if (bk == NULL || sqlite3_backup_finish(bk) != SQLITE_OK || step != SQLITE_DONE)
            snprintf(why, why_len, "%s", sqlite3_errmsg(dst));
        else
            rc = 0;
    }
    if (dst != NULL && sqlite3_close(dst) != SQLITE_OK) {
        sqlite3_close_v2(dst); /* freed once nothing holds it */
        if (rc == 0)
            snprintf(why, why_len, "closing the copy failed");
        rc = -1;
    }
    sqlite3_close_v2(src);
    return rc;
}

/* The reason of errno e, in buf. */
static const char *s_errno(int e, char *buf, size_t len)
{
    return strerror_r(e, buf, len); /* GNU's: a static string or buf */
}

/* Makes the rename of the copy durable: the directory holding path, synced
 * ("." for a bare file name, which names one in the working directory). */
static int s_sync_parent(const char *path)
{
    char dir[4200];
    const char *slash = strrchr(path, '/');
    size_t n = slash == NULL || slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof dir)
        return -1;
    memcpy(dir, slash == NULL ? "." : path, n);
    dir[n] = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    return close(fd) == 0 ? rc : -1;
}

/*
 * The copy goes to a new file beside the target and replaces the target
 * only when complete (rename, then the directory synced), so a failed
 * backup leaves an earlier one of the same name whole; the target may not
 * be one of the store's own files, nor any other file but an earlier
 * backup (s_is_foreign_file).
 */
static void *s_backup_thread(void *arg)
{
    s_backup_t *b = arg;
    store_t *self = b->store;
    store_req_t *req = b->req;
    (void)pthread_setname_np(pthread_self(), "mr-backup");
    free(b);
    req->status = STORE_UNAVAILABLE;
    char why[240] = "", tmp[4200] = "";
    const char *reason = NULL;
    int fd = -1;
    if (s_is_store_file(self, req->query))
        reason = "the target is the store itself (or one of its files)";
    else if (s_is_foreign_file(req->query))
        reason = "the target exists and is not an earlier backup (a copy of the store): left as it is";
    else if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", req->query) >= (int)sizeof tmp)
        reason = "path too long";
    else if ((fd = mkstemp(tmp)) < 0)
        reason = s_errno(errno, why, sizeof why);
    if (fd >= 0) {
        if (close(fd) != 0) /* mkstemp made it 0600, as the store's own files */
            reason = s_errno(errno, why, sizeof why);
        else if (s_backup_copy(self, tmp, &req->value, why, sizeof why) != 0)
            reason = why;
        else if (rename(tmp, req->query) != 0)
            reason = s_errno(errno, why, sizeof why);
        else if (s_sync_parent(req->query) != 0)
            reason = "the backup is written, but its directory could not be synced";
        char path[512]; /* the operator's text: cleaned, so it cannot forge log lines */
        if (reason != NULL && unlink(tmp) != 0 && errno != ENOENT)
            log_warn(self->log, "store.backup_leftover", "path=\"%s\"",
                     log_clean(path, sizeof path, tmp));
    }
    char path[512];
    if (reason == NULL)
        req->status = STORE_OK;
    else /* the reason first: a long path is cut at the end of the line */
        log_error(self->log, "store.backup_failed", "reason=\"%s\" to=\"%s\"", reason,
                  log_clean(path, sizeof path, req->query));
    req->next = NULL;
    s_complete(self, req, req, false);
    atomic_fetch_sub(&self->backups, 1);
    return NULL;
}

static void s_start_backup(store_t *self, store_req_t *req)
{
    s_backup_t *b = malloc(sizeof *b);
    pthread_t t;
    pthread_attr_t attr;
    if (b != NULL && pthread_attr_init(&attr) == 0) {
        b->store = self;
        b->req = req;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&self->backups, 1);
        int rc = pthread_create(&t, &attr, s_backup_thread, b);
        pthread_attr_destroy(&attr);
        if (rc == 0)
            return;
        atomic_fetch_sub(&self->backups, 1);
    }
    free(b);
    req->status = STORE_UNAVAILABLE;
    req->next = NULL;
    s_complete(self, req, req, false);
}

void store_submit(store_t *self, store_req_t *req)
{
    if (req->op == STORE_BACKUP) {
        atomic_fetch_add(&self->backlog, 1);
        s_start_backup(self, req);
        return;
    }
    req->next = NULL;
    req->submitted_us = s_mono_us();
    atomic_fetch_add(&self->backlog, 1);
    pthread_mutex_lock(&self->lock);
    if (self->queue_tail)
        self->queue_tail->next = req;
    else
        self->queue_head = req;
    self->queue_tail = req;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
}

void store_latency(const store_t *self, store_latency_t *out)
{
    store_t *mut = (store_t *)self; /* the lock only */
    pthread_mutex_lock(&mut->lock);
    out->wait = self->lat_wait;
    out->commit = self->lat_commit;
    pthread_mutex_unlock(&mut->lock);
    out->put = self->lat_put;
}

size_t store_backlog(const store_t *self)
{
    return atomic_load(&((store_t *)self)->backlog);
}

bool store_unavailable(const store_t *self)
{
    return atomic_load(&((store_t *)self)->unavailable);
}

/* The submission time of the oldest request not finished (invariant 5), or
 * 0.  Any thread but the store's (it takes the lock). */
static int64_t s_oldest_since_us(const store_t *self)
{
    store_t *mut = (store_t *)self; /* the lock only */
    pthread_mutex_lock(&mut->lock);
    int64_t since = self->batch_since_us;
    if (since == 0 && self->queue_head != NULL)
        since = self->queue_head->submitted_us;
    pthread_mutex_unlock(&mut->lock);
    return since;
}

int64_t store_stalled_ms(const store_t *self, int64_t after_ms)
{
    int64_t since = s_oldest_since_us(self);
    if (since == 0)
        return 0;
    int64_t age_ms = (s_mono_us() - since) / 1000;
    return age_ms >= after_ms ? age_ms : 0;
}

void store_stall_watch(store_t *self, int64_t after_ms)
{
    int64_t since = s_oldest_since_us(self);
    int64_t now = s_mono_us();
    bool stalled = since != 0 && now - since >= after_ms * 1000;
    if (stalled && self->stall_since_us == 0) {
        self->stall_since_us = since;
        log_warn(self->log, "store.stalled", "path=\"%s\" waited_s=%lld queued=%zu",
                 self->path_log, (long long)((now - since) / 1000000), store_backlog(self));
    } else if (!stalled && self->stall_since_us != 0) {
        log_info(self->log, "store.stall_ended", "path=\"%s\" lasted_s=%lld", self->path_log,
                 (long long)((now - self->stall_since_us) / 1000000));
        self->stall_since_us = 0;
    }
}

static void on_close(uv_handle_t *handle)
{
    store_t *self = handle->data;
    walbuf_destroy(&self->walbuf); /* every connection is closed */
    tally_kept_destroy(&self->kept);
    pending_destroy(&self->pending);
    pthread_cond_destroy(&self->ckpt_wake);
    pthread_cond_destroy(&self->wake);
    pthread_mutex_destroy(&self->lock);
    free(self->path);
    free(self);
}

void store_destroy(store_t **self_p)
{
    store_t *self = *self_p;
    if (self == NULL)
        return;
    pthread_mutex_lock(&self->lock);
    self->stopping = true;
    pthread_cond_broadcast(&self->wake);
    pthread_cond_broadcast(&self->ckpt_wake);
    pthread_mutex_unlock(&self->lock);
    pthread_join(self->thread, NULL);
    if (self->checkpointer_started)
        pthread_join(self->checkpointer, NULL);
    /* A backup in progress finishes first: its thread uses this struct. */
    while (atomic_load(&self->backups) > 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* Everything has committed: run the callbacks still waiting. */
    on_async(&self->async);
    /* Requests those callbacks submitted come too late to run (a page
     * load): freed; but a count (a refusal they answered) is written with
     * the other kept ones. */
    pthread_mutex_lock(&self->lock);
    store_req_t *late = self->queue_head;
    self->queue_head = self->queue_tail = NULL;
    pthread_mutex_unlock(&self->lock);
    while (late != NULL) {
        store_req_t *next = late->next;
        if (late->op == STORE_TALLY)
            (void)s_keep_tally(self, late); /* out of memory: best effort (store.h) */
        s_req_free(late);
        late = next;
    }
    s_stop_flush(self);
    uv_close((uv_handle_t *)&self->async, on_close);
    *self_p = NULL;
}
