/*
 * store.c - SQLite (WAL) message store run by one dedicated thread.
 *
 * Owns: the database connection (store thread only), the submission queue
 * and the completion queue (guarded by one mutex), the uv_async handle that
 * wakes the loop.
 *
 * Invariants
 *   1. Only the store thread touches the database.
 *   2. Requests are executed and completed in submission order.
 *   3. A request's callback runs only after the transaction holding its
 *      effect has committed (or failed as a whole: STORE_UNAVAILABLE).
 *   4. A batch holds at most batch_max requests and stays open at most
 *      batch_ms after its first request; it closes early when the queue is
 *      empty, so a lone message waits for no timer.
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
 * next batch.  Nothing is acknowledged that was not committed.
 */
#include "store.h"

#include "mr_codec.h"
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
    S_ACK_UPDATE,
    S_ACK_FIND,
    S_LOAD,
    S_LOAD_EXPRESS,
    S_LIST_ALL,
    S_LIST_DEST,
    S_SUMMARY,
    S_DROP,
    S_RETRY,
    S_EXPIRE,
    S_PRUNE,
    S_PUT_UNDO,
    S_BEGIN,
    S_COMMIT,
    S_STMT_COUNT
};

static const char *const s_sql[S_STMT_COUNT] = {
    [S_PUT_INSERT] = "INSERT INTO messages(source, message_id, dest, kind, priority, stored_ms,"
                     " expires_ms, body, content_hash, state, done_ms, express, ref_key)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, CASE ?10 WHEN 1 THEN ?6 END,"
                     " ?11, ?12)"
                     " ON CONFLICT(source, message_id) DO NOTHING",
    [S_PUT_FIND] = "SELECT seq, content_hash FROM messages WHERE source = ?1 AND message_id = ?2",
    /* A delivery ack reads the row by its key, then updates it (an UPDATE
     * ... RETURNING would build a temporary table for each ack). */
    [S_ACK_UPDATE] = "UPDATE messages SET state = 1, done_ms = ?2 WHERE seq = ?1",
    [S_ACK_FIND] = "SELECT state, kind, ref_key FROM messages WHERE seq = ?1 AND dest = ?2",
    [S_LOAD] = "SELECT seq, source, message_id, dest, kind, priority, stored_ms, expires_ms,"
               " dead_reason, body FROM messages WHERE dest = ?1 AND state = 0 AND seq > ?2"
               " ORDER BY seq LIMIT ?3",
    [S_LOAD_EXPRESS] = "SELECT seq, source, message_id, dest, kind, priority, stored_ms,"
                       " expires_ms, dead_reason, body FROM messages WHERE dest = ?1 AND state = 0"
                       " AND express = 1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [S_LIST_ALL] = "SELECT seq, source, message_id, dest, kind, priority, stored_ms, expires_ms,"
                   " dead_reason, NULL FROM messages WHERE state = ?1 ORDER BY seq LIMIT ?2",
    [S_LIST_DEST] = "SELECT seq, source, message_id, dest, kind, priority, stored_ms, expires_ms,"
                    " dead_reason, NULL FROM messages WHERE state = ?1 AND dest = ?3"
                    " ORDER BY seq LIMIT ?2",
    [S_SUMMARY] = "SELECT dest, count(*), min(seq), min(stored_ms) FROM messages WHERE state = 0"
                  " GROUP BY dest",
    [S_DROP] = "UPDATE messages SET state = 2, done_ms = ?3, dead_reason = ?2"
               " WHERE seq = ?1 AND state = 0 RETURNING seq, source, message_id, dest, kind,"
               " priority, stored_ms, expires_ms, dead_reason, NULL",
    [S_RETRY] = "UPDATE messages SET state = 0, done_ms = NULL, dead_reason = NULL,"
                " expires_ms = max(expires_ms, ?2) WHERE seq = ?1 AND state = 2"
                " RETURNING seq, source, message_id, dest, kind, priority, stored_ms,"
                " expires_ms, dead_reason, body",
    [S_EXPIRE] = "UPDATE messages SET state = 2, done_ms = ?1, dead_reason = 'expired'"
                 " WHERE seq IN (SELECT seq FROM messages WHERE state = 0 AND expires_ms < ?1"
                 " LIMIT ?2) RETURNING seq, source, message_id, dest, kind, priority, stored_ms,"
                 " expires_ms, dead_reason, NULL",
    [S_PRUNE] = "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
                " WHERE state = 1 AND done_ms < ?1 LIMIT ?2)",
    /* A message the clinical layer refused (it writes nothing when it
     * refuses: clinical.h).  Not a SAVEPOINT: one per message made SQLite
     * journal every page the batch touched again (a third of the store
     * thread's time in the benchmark). */
    [S_PUT_UNDO] = "DELETE FROM messages WHERE seq = ?1",
    /* Prepared once: parsing these for every batch showed in profiles. */
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
};

static const char *const s_schema =
    "CREATE TABLE IF NOT EXISTS messages("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " source TEXT NOT NULL, message_id TEXT NOT NULL, dest TEXT NOT NULL,"
    " kind INTEGER NOT NULL, priority INTEGER NOT NULL,"
    " stored_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
    " state INTEGER NOT NULL DEFAULT 0, done_ms INTEGER, dead_reason TEXT,"
    " body BLOB NOT NULL, content_hash INTEGER NOT NULL, express INTEGER NOT NULL DEFAULT 0,"
    " ref_key TEXT,"
    " UNIQUE(source, message_id));"
    "CREATE INDEX IF NOT EXISTS messages_pending ON messages(dest, seq) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS messages_express ON messages(dest, seq)"
    " WHERE state = 0 AND express = 1;"
    "CREATE INDEX IF NOT EXISTS messages_expiry ON messages(expires_ms) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS messages_done ON messages(done_ms) WHERE state = 1;"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', 1);";

struct store_t {
    uv_loop_t *loop;
    uv_async_t async;
    log_t *log;
    char *path;
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

    /* store thread only */
    sqlite3 *db;
    sqlite3_stmt *stmt[S_STMT_COUNT];
    clinical_t *clin;
    tally_t *tally;
    int last_error;                          /* SQLite code of the failure being reported */
    bool opened_once;
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

static void s_log_failure(store_t *self, int rc, const char *what)
{
    if (rc == self->last_error)
        return;
    self->last_error = rc;
    log_error(self->log, "store.unavailable", "path=%s during=%s sqlite=%d reason=\"%s\"",
              self->path, what, rc, sqlite3_errstr(rc));
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

static int s_exists(void *arg, int n, char **values, char **names)
{
    (void)n;
    (void)values;
    (void)names;
    *(bool *)arg = true;
    return 0;
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
    /* cache_size: 32 MB of pages.  A full batch (store.batch_max requests)
     * touches more than SQLite's default 2 MB; with the default, batches of
     * 1000 ran 10 % slower in the benchmark (docs/performance.md). */
    char pragmas[256];
    int n = snprintf(pragmas, sizeof pragmas,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA busy_timeout=200;"
                     " PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=4096;"
                     " PRAGMA journal_size_limit=67108864; PRAGMA cache_size=-32768;",
                     self->sync_full ? "FULL" : "NORMAL");
    if (n < 0 || (size_t)n >= sizeof pragmas) {
        rc = SQLITE_INTERNAL;
        goto fail;
    }
    rc = sqlite3_exec(self->db, pragmas, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* A store made by an earlier version: add the columns it lacks. */
    if (sqlite3_exec(self->db, "SELECT 1 FROM sqlite_master WHERE name = 'messages' AND"
                               " sql NOT LIKE '%express%' AND type = 'table'",
                     s_exists, &old, NULL) == SQLITE_OK &&
        old)
        (void)sqlite3_exec(self->db,
                           "ALTER TABLE messages ADD COLUMN express INTEGER NOT NULL DEFAULT 0",
                           NULL, NULL, NULL);
    rc = sqlite3_exec(self->db, s_schema, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* No integrity scan here: it reads the whole file, and start-up must stay
     * fast with a million messages pending.  Corruption shows as
     * SQLITE_CORRUPT on the first statement that meets it. */
    self->tally = tally_new(self->db, &rc);
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
    if (!self->opened_once)
        log_info(self->log, "store.opened", "path=%s synchronous=%s", self->path,
                 self->sync_full ? "full" : "normal");
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
    r->dead_reason = s_text(st, 8);
    int n = sqlite3_column_bytes(st, 9);
    if (n > 0) {
        r->body = malloc((size_t)n);
        if (r->body == NULL)
            return SQLITE_NOMEM;
        memcpy(r->body, sqlite3_column_blob(st, 9), (size_t)n);
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
    S_BIND(sqlite3_bind_int64(st, 9, (sqlite3_int64)m->content_hash));
    S_BIND(sqlite3_bind_int(st, 10, req->state));
    S_BIND(sqlite3_bind_int(st, 11, m->express));
    /* A referral's lifecycle key, written with the message (no second write). */
    char ref_key[200];
    if (req->facts && req->facts->kind == MEDROUTE__V1__KIND__KIND_REFERRAL &&
        req->facts->ref_id != NULL) {
        snprintf(ref_key, sizeof ref_key, "%s/%s", m->source, req->facts->ref_id);
        S_BIND(sqlite3_bind_text(st, 12, ref_key, -1, SQLITE_TRANSIENT));
    }
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return rc;
    char labels[200];
    if (sqlite3_changes(self->db) == 1) {
        req->seq = (uint64_t)sqlite3_last_insert_rowid(self->db);
        req->status = STORE_OK;
        sqlite3_reset(st);
        if (req->facts != NULL) {
            rc = clinical_on_put(self->clin, req->seq, m->source, m->dest, req->facts,
                                 m->stored_ms, &req->clin);
            if (rc != SQLITE_OK)
                return rc;
        }
        if (req->clin.code != 0) {
            /* Refused: the message row goes (its seq is not used again). */
            req->status = STORE_REFUSED;
            st = s_stmt(self, S_PUT_UNDO);
            S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->seq));
            rc = sqlite3_step(st);
            sqlite3_reset(st);
            if (rc != SQLITE_DONE)
                return rc;
            req->seq = 0;
            snprintf(labels, sizeof labels, "code=\"%s\"", mr_error_name(req->clin.code));
            return tally_add(self->tally, "messages_rejected_total", labels, 1);
        }
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
    bool same = (uint64_t)sqlite3_column_int64(st, 1) == m->content_hash;
    req->status = same ? STORE_DUPLICATE : STORE_CONFLICT;
    sqlite3_reset(st);
    if (same) {
        snprintf(labels, sizeof labels, "kind=\"%s\",source=\"%s\"", s_kind(m->kind), m->source);
        return tally_add(self->tally, "messages_duplicate_total", labels, 1);
    }
    return tally_add(self->tally, "messages_rejected_total", "code=\"CONFLICT\"", 1);
}

static int s_op_ack(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_ACK_FIND);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    S_BIND(sqlite3_bind_text(st, 2, req->msg.dest, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        req->status = STORE_NOT_FOUND;
        return SQLITE_OK;
    }
    if (rc != SQLITE_ROW)
        return rc;
    int state = sqlite3_column_int(st, 0);
    int kind = sqlite3_column_int(st, 1);
    char ref_key[200];
    const unsigned char *k = sqlite3_column_text(st, 2);
    snprintf(ref_key, sizeof ref_key, "%s", k ? (const char *)k : "");
    sqlite3_reset(st);
    if (state != MSG_PENDING) {
        req->status = state == MSG_DELIVERED ? STORE_DUPLICATE : STORE_NOT_FOUND;
        return SQLITE_OK;
    }
    st = s_stmt(self, S_ACK_UPDATE);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    S_BIND(sqlite3_bind_int64(st, 2, req->now_ms));
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return rc;
    req->status = STORE_OK;
    char labels[160];
    const char *const pairs[] = {"destination", req->msg.dest, "kind", s_kind(kind)};
    if (tally_labels(labels, sizeof labels, 2, pairs) < 0)
        return SQLITE_TOOBIG;
    S_BIND(tally_add(self->tally, "messages_delivered_total", labels, 1));
    return clinical_on_delivered(self->clin, ref_key, req->now_ms);
}

static int s_op_load(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, req->express_only ? S_LOAD_EXPRESS : S_LOAD);
    S_BIND(sqlite3_bind_text(st, 1, req->msg.dest, -1, SQLITE_STATIC));
    S_BIND(sqlite3_bind_int64(st, 2, (sqlite3_int64)req->after));
    S_BIND(sqlite3_bind_int(st, 3, (int)req->limit));
    return s_collect(st, req);
}

static int s_op_list(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, req->msg.dest ? S_LIST_DEST : S_LIST_ALL);
    S_BIND(sqlite3_bind_int(st, 1, req->state));
    S_BIND(sqlite3_bind_int(st, 2, (int)req->limit));
    if (req->msg.dest)
        S_BIND(sqlite3_bind_text(st, 3, req->msg.dest, -1, SQLITE_STATIC));
    return s_collect(st, req);
}

static int s_op_summary(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_SUMMARY);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_row_t *r = s_new_row(req);
        if (r == NULL)
            return SQLITE_NOMEM;
        r->dest = s_text(st, 0);
        r->count = (uint64_t)sqlite3_column_int64(st, 1);
        r->seq = (uint64_t)sqlite3_column_int64(st, 2);
        r->stored_ms = sqlite3_column_int64(st, 3);
        if (r->dest == NULL)
            return SQLITE_NOMEM;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int s_op_update(store_t *self, store_req_t *req, int which)
{
    sqlite3_stmt *st = s_stmt(self, which);
    S_BIND(sqlite3_bind_int64(st, 1, (sqlite3_int64)req->msg.seq));
    if (which == S_DROP) {
        S_BIND(sqlite3_bind_text(st, 2, req->msg.dead_reason ? req->msg.dead_reason : "dropped", -1,
                          SQLITE_STATIC));
        S_BIND(sqlite3_bind_int64(st, 3, req->now_ms));
    } else {
        S_BIND(sqlite3_bind_int64(st, 2, req->now_ms));
    }
    int rc = s_collect(st, req);
    if (rc != SQLITE_OK)
        return rc;
    req->status = req->n_rows == 1 ? STORE_OK : STORE_NOT_FOUND;
    if (req->status == STORE_OK)
        return tally_add(self->tally, which == S_DROP ? "messages_dead_total" : "messages_retried_total",
                         which == S_DROP ? "reason=\"dropped\"" : "", 1);
    return SQLITE_OK;
}

static int s_op_expire(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_EXPIRE);
    S_BIND(sqlite3_bind_int64(st, 1, req->now_ms));
    S_BIND(sqlite3_bind_int(st, 2, (int)req->limit));
    int rc = s_collect(st, req);
    for (size_t i = 0; rc == SQLITE_OK && i < req->n_rows; i++) {
        char labels[160];
        snprintf(labels, sizeof labels, "destination=\"%s\",kind=\"%s\"", req->rows[i].dest,
                 s_kind(req->rows[i].kind));
        rc = tally_add(self->tally, "messages_expired_total", labels, 1);
        if (rc == SQLITE_OK)
            rc = tally_add(self->tally, "messages_dead_total", "reason=\"expired\"", 1);
    }
    return rc;
}

static int s_op_prune(store_t *self, store_req_t *req)
{
    sqlite3_stmt *st = s_stmt(self, S_PRUNE);
    S_BIND(sqlite3_bind_int64(st, 1, req->before_ms));
    S_BIND(sqlite3_bind_int(st, 2, (int)req->limit));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return rc;
    req->value = (uint64_t)sqlite3_changes(self->db);
    return SQLITE_OK;
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
    case STORE_DROP: rc = s_op_update(self, req, S_DROP); break;
    case STORE_RETRY: rc = s_op_update(self, req, S_RETRY); break;
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
    case STORE_TALLY:
        rc = tally_add(self->tally, req->tally_name, req->tally_labels ? req->tally_labels : "",
                       req->tally_delta);
        break;
    case STORE_STATS:
        rc = tally_query(self->tally, req->first_day[0] ? req->first_day : NULL,
                         req->last_day[0] ? req->last_day : NULL, req->query, &req->tallies,
                         &req->n_tallies);
        if (rc == SQLITE_OK)
            rc = clinical_visits(self->clin, req->first_day[0] ? req->first_day : NULL,
                                 req->last_day[0] ? req->last_day : NULL, &req->visits);
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

/* Takes the next request, waiting for one if wait is set.  NULL when the
 * queue is empty (or stopping and drained). */
static store_req_t *s_take(store_t *self, bool wait)
{
    pthread_mutex_lock(&self->lock);
    while (wait && self->queue_head == NULL && !self->stopping)
        pthread_cond_wait(&self->wake, &self->lock);
    store_req_t *req = self->queue_head;
    if (req != NULL) {
        self->queue_head = req->next;
        if (self->queue_head == NULL)
            self->queue_tail = NULL;
        req->next = NULL;
    }
    pthread_mutex_unlock(&self->lock);
    return req;
}

static void s_complete(store_t *self, store_req_t *head, store_req_t *tail)
{
    if (head == NULL)
        return;
    pthread_mutex_lock(&self->lock);
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

static void *s_thread(void *arg)
{
    store_t *self = arg;
    (void)pthread_setname_np(pthread_self(), "mr-store"); /* top -H, the benchmark */
    for (;;) {
        store_req_t *first = s_take(self, true);
        if (first == NULL)
            break; /* stopping and drained */
        store_req_t *head = first, *tail = first;
        size_t count = 1;
        int rc = SQLITE_OK;
        if (self->db == NULL)
            rc = s_open_db(self);
        int changes_before = self->db ? sqlite3_total_changes(self->db) : 0;
        if (rc == SQLITE_OK)
            rc = s_control(self, S_BEGIN);
        if (rc == SQLITE_OK) {
            int64_t started = s_mono_ms();
            store_req_t *req = first;
            for (;;) {
                rc = s_execute(self, req);
                if (rc != SQLITE_OK)
                    break;
                if (count >= self->batch_max || s_mono_ms() - started >= self->batch_ms)
                    break;
                req = s_take(self, false);
                if (req == NULL)
                    break;
                tail->next = req;
                tail = req;
                count++;
            }
            /* The batch's counts go in its own transaction. */
            if (rc == SQLITE_OK)
                rc = tally_flush(self->tally, s_wall_ms());
            if (rc == SQLITE_OK)
                rc = s_control(self, S_COMMIT);
            if (rc != SQLITE_OK && !sqlite3_get_autocommit(self->db))
                sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        }
        if (rc != SQLITE_OK) {
            s_log_failure(self, rc, "batch");
            if (self->tally != NULL)
                tally_discard(self->tally);
            s_fail_batch(head);
            if (s_needs_reopen(rc))
                s_close_db(self); /* reopen, and re-check, on the next batch */
            atomic_store(&self->unavailable, true);
        } else if (sqlite3_total_changes(self->db) != changes_before) {
            s_checkpoint_due(self);
            /* Recovered only when something was written again: a batch of
             * reads succeeds on a full disk too. */
            if (self->last_error != 0) {
                log_info(self->log, "store.recovered", "path=%s after=\"%s\"", self->path,
                         sqlite3_errstr(self->last_error));
                self->last_error = 0;
                atomic_store(&self->unavailable, false);
            }
        }
        s_complete(self, head, tail);
    }
    s_close_db(self);
    return NULL;
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
        if (req->cb)
            req->cb(req, req->arg);
        s_req_free(req);
        req = next;
    }
}

static void *s_checkpoint_thread(void *arg);

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
    atomic_init(&self->backlog, 0);
    atomic_init(&self->unavailable, false);
    atomic_init(&self->backups, 0);
    if (self->path == NULL)
        goto fail_alloc;
    if (pthread_mutex_init(&self->lock, NULL) != 0)
        goto fail_alloc;
    if (pthread_cond_init(&self->wake, NULL) != 0)
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
 * (4096 pages, ~16 MB; 8192 and 16384 were no better in the benchmark,
 * 32768 much worse: the WAL outgrows journal_size_limit), and as
 * this thread has copied nearly everything by then, that checkpoint costs
 * the writer about a millisecond instead of copying 16 MB
 * (docs/performance.md).  journal_size_limit truncates the file back to
 * 64 MB after a restart.  An idle store wakes this thread no more.
 */
enum { S_CKPT_PACE_MS = 5 };

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

static void *s_backup_thread(void *arg)
{
    s_backup_t *b = arg;
    store_t *self = b->store;
    store_req_t *req = b->req;
    (void)pthread_setname_np(pthread_self(), "mr-backup");
    free(b);
    sqlite3 *src = NULL, *dst = NULL;
    req->status = STORE_UNAVAILABLE;
    int fd = open(req->query, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    /* A read transaction on its own connection: with WAL the writer goes on,
     * and the copy is one consistent snapshot. */
    if (fd >= 0 &&
        sqlite3_open_v2(self->path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) ==
            SQLITE_OK &&
        sqlite3_open_v2(req->query, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
            SQLITE_OK) {
        sqlite3_backup *bk = sqlite3_backup_init(dst, "main", src, "main");
        if (bk != NULL) {
            int rc = sqlite3_backup_step(bk, -1);
            req->value = (uint64_t)sqlite3_backup_pagecount(bk);
            if (sqlite3_backup_finish(bk) == SQLITE_OK && rc == SQLITE_DONE)
                req->status = STORE_OK;
        }
    }
    if (req->status != STORE_OK)
        log_error(self->log, "store.backup_failed", "to=\"%s\" reason=\"%s\"", req->query,
                  dst ? sqlite3_errmsg(dst) : src ? sqlite3_errmsg(src) : "cannot open");
    sqlite3_close_v2(dst);
    sqlite3_close_v2(src);
    req->next = NULL;
    s_complete(self, req, req);
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
    s_complete(self, req, req);
}

void store_submit(store_t *self, store_req_t *req)
{
    if (req->op == STORE_BACKUP) {
        atomic_fetch_add(&self->backlog, 1);
        s_start_backup(self, req);
        return;
    }
    req->next = NULL;
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

size_t store_backlog(const store_t *self)
{
    return atomic_load(&((store_t *)self)->backlog);
}

bool store_unavailable(const store_t *self)
{
    return atomic_load(&((store_t *)self)->unavailable);
}

static void on_close(uv_handle_t *handle)
{
    store_t *self = handle->data;
    walbuf_destroy(&self->walbuf); /* every connection is closed */
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
    /* Requests those callbacks submitted (a tally, a page load) come too
     * late to run: free them. */
    pthread_mutex_lock(&self->lock);
    store_req_t *late = self->queue_head;
    self->queue_head = self->queue_tail = NULL;
    pthread_mutex_unlock(&self->lock);
    while (late != NULL) {
        store_req_t *next = late->next;
        s_req_free(late);
        late = next;
    }
    uv_close((uv_handle_t *)&self->async, on_close);
    *self_p = NULL;
}
