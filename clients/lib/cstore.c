/*
 * cstore.c - SQLite outbox and seen-set of one client.
 *
 * WAL with synchronous=NORMAL: every write survives the client process
 * being killed (the guarantee the delivery protocol needs); only a power
 * loss may forget the last writes, after which the broker's resend is
 * absorbed by the application's own key (docs/delivery.md).
 *
 * An outbox row the library could not have written (damaged by hand or by
 * a disk) is moved to outbox_damaged when the outbox is read, not deleted:
 * it may be the only copy of a patient's message.
 *
 * An outcome kept for the application (outcome) is written in the
 * transaction that deletes the outbox row it settles: a crash leaves
 * either the message, sent again, or its outcome, never neither.
 *
 * Without a directory there is nothing to outlive the process: no SQLite,
 * the outbox is not kept (the client's own list is all there is) and the
 * seen-set is a seenset_t, keyed by source, NUL, message id.
 */
#include "cstore.h"

#include "mr_codec.h"
#include "seenset.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    S_OB_ADD,
    S_OB_DEL,
    S_OB_ALL,
    S_OB_SET_ASIDE,
    S_OB_DEL_ROW,
    S_OB_DAMAGED_COUNT,
    S_SEEN_GET,
    S_SEEN_SET,
    S_SEEN_DEL,
    S_SEEN_PRUNE,
    S_OC_ADD,
    S_OC_ALL,
    S_OC_DEL,
    S_N
};

static const char *const s_sql[S_N] = {
    /* The client adds only an id its outbox in memory lacks (it checks the
     * content of one it has): a row already here is one whose delete failed
     * after its Ack, stale.  Replaced, not kept: IGNORE would put the old
     * body back in the outbox at the next start, in place of the new one. */
    [S_OB_ADD] = "INSERT OR REPLACE INTO outbox(message_id, body, tag) VALUES(?1, ?2, ?3)",
    [S_OB_DEL] = "DELETE FROM outbox WHERE message_id = ?1",
    [S_OB_ALL] = "SELECT rowid, message_id, body, tag FROM outbox ORDER BY rowid",
    [S_OB_SET_ASIDE] = "INSERT INTO outbox_damaged(row, message_id, body, reason, at_ms)"
                       " SELECT rowid, message_id, body, ?2, ?3 FROM outbox WHERE rowid = ?1",
    [S_OB_DEL_ROW] = "DELETE FROM outbox WHERE rowid = ?1",
    [S_OB_DAMAGED_COUNT] = "SELECT count(*) FROM outbox_damaged",
    [S_SEEN_GET] = "SELECT state FROM seen WHERE source = ?1 AND message_id = ?2",
    [S_SEEN_SET] = "INSERT INTO seen(source, message_id, state, at_ms) VALUES(?1, ?2, ?3, ?4) "
                   "ON CONFLICT(source, message_id) DO UPDATE SET state = ?3, at_ms = ?4",
    [S_SEEN_DEL] = "DELETE FROM seen WHERE source = ?1 AND message_id = ?2",
    /* IN_HANDLER marks too: one whose message never comes again (expired,
     * dropped by an operator, refused by every handler until then) would
     * stay for ever.  Past the window a copy is flagged anyway: it was
     * stored before the mark was set, so longer ago than the window. */
    [S_SEEN_PRUNE] = "DELETE FROM seen WHERE at_ms < ?1",
    [S_OC_ADD] = "INSERT INTO outcome(type, message_id, seq, duplicate, code, reason)"
                 " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [S_OC_ALL] = "SELECT row, type, message_id, seq, duplicate, code, reason FROM outcome"
                 " ORDER BY row",
    [S_OC_DEL] = "DELETE FROM outcome WHERE row BETWEEN ?1 AND ?2",
};

struct cstore_t {
    sqlite3 *db; /* NULL in memory */
    sqlite3_stmt *st[S_N];
    seenset_t *mem; /* the seen-set in memory */
};

/* The bytes source NUL message_id, of length *len: in buf (S_MEM_KEY_MAX
 * bytes) if they fit, as they do for every id the protocol allows, else
 * malloc'ed (the caller frees what is not buf).  NULL if out of memory. */
#define S_MEM_KEY_MAX (MR_FACILITY_ID_MAX + 1 + MR_MESSAGE_ID_MAX)
static char *s_mem_key(char *buf, const char *source, const char *message_id, size_t *len)
{
    size_t a = strlen(source), b = strlen(message_id);
    char *key = a + 1 + b <= S_MEM_KEY_MAX ? buf : malloc(a + 1 + b);
    if (key == NULL)
        return NULL;
    memcpy(key, source, a);
    key[a] = '\0';
    memcpy(key + a + 1, message_id, b);
    *len = a + 1 + b;
    return key;
}

/* Gives the outbox its tag column (a row's submission tag) if a file of
 * an earlier version lacks it: its rows read back with tag 0, none.  0 or
 * -EIO. */
static int s_outbox_tag_column(sqlite3 *db)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT tag FROM outbox LIMIT 0", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_finalize(st);
        return 0;
    }
    return sqlite3_exec(db, "ALTER TABLE outbox ADD COLUMN tag INTEGER NOT NULL DEFAULT 0", NULL,
                        NULL, NULL) == SQLITE_OK
               ? 0
               : -EIO;
}

cstore_t *cstore_open(const char *dir, const char *facility)
{
    cstore_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    if (dir == NULL) {
        self->mem = seenset_new();
        if (self->mem == NULL)
            cstore_close(&self);
        return self;
    }
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/client-%s.db", dir, facility);
    if (n < 0 || (size_t)n >= sizeof path)
        goto fail;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        goto fail;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    close(fd);
    if (sqlite3_open_v2(path, &self->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    if (sqlite3_exec(self->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                     " PRAGMA busy_timeout=2000;"
                     "CREATE TABLE IF NOT EXISTS outbox(message_id TEXT PRIMARY KEY,"
                     " body BLOB NOT NULL, tag INTEGER NOT NULL DEFAULT 0);"
                     "CREATE TABLE IF NOT EXISTS outbox_damaged(row INTEGER, message_id,"
                     " body BLOB, reason TEXT NOT NULL, at_ms INTEGER NOT NULL);"
                     "CREATE TABLE IF NOT EXISTS seen(source TEXT NOT NULL,"
                     " message_id TEXT NOT NULL, state INTEGER NOT NULL, at_ms INTEGER NOT NULL,"
                     " PRIMARY KEY(source, message_id));"
                     "CREATE TABLE IF NOT EXISTS outcome(row INTEGER PRIMARY KEY,"
                     " type INTEGER NOT NULL, message_id TEXT NOT NULL, seq INTEGER NOT NULL,"
                     " duplicate INTEGER NOT NULL, code INTEGER NOT NULL, reason TEXT NOT NULL);",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (s_outbox_tag_column(self->db) < 0)
        goto fail;
    for (int i = 0; i < S_N; i++)
        if (sqlite3_prepare_v2(self->db, s_sql[i], -1, &self->st[i], NULL) != SQLITE_OK)
            goto fail;
    return self;
fail:
    cstore_close(&self);
    return NULL;
}

void cstore_close(cstore_t **self_p)
{
    cstore_t *self = *self_p;
    if (self == NULL)
        return;
    for (int i = 0; i < S_N; i++)
        sqlite3_finalize(self->st[i]);
    sqlite3_close_v2(self->db);
    seenset_destroy(&self->mem);
    free(self);
    *self_p = NULL;
}

/* Steps a write statement to completion if its parameters all bound, and
 * resets it and clears its parameters either way: a parameter left bound
 * (SQLITE_STATIC) would point at a caller's freed memory at the next use
 * whose own bind failed.  0 or -EIO. */
static int s_run(sqlite3_stmt *st, bool bound)
{
    int rc = bound ? sqlite3_step(st) : SQLITE_MISUSE;
    sqlite3_reset(st);
    (void)sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

int cstore_outbox_add(cstore_t *self, const char *message_id, const void *body, size_t len,
                      uint64_t tag)
{
    if (self->db == NULL)
        return 0;
    if (len > INT_MAX)
        return -EFBIG;
    sqlite3_stmt *st = self->st[S_OB_ADD];
    return s_run(st, sqlite3_bind_text(st, 1, message_id, -1, SQLITE_STATIC) == SQLITE_OK &&
                         sqlite3_bind_blob(st, 2, body, (int)len, SQLITE_STATIC) == SQLITE_OK &&
                         sqlite3_bind_int64(st, 3, (sqlite3_int64)tag) == SQLITE_OK);
}

int cstore_outbox_remove(cstore_t *self, const char *message_id)
{
    if (self->db == NULL)
        return 0;
    sqlite3_stmt *st = self->st[S_OB_DEL];
    return s_run(st, sqlite3_bind_text(st, 1, message_id, -1, SQLITE_STATIC) == SQLITE_OK);
}

/* A row of the outbox that cannot be an entry. */
typedef struct {
    int64_t row;
    char id[MR_MESSAGE_ID_MAX + 1]; /* "" when the id itself is what is wrong */
    char why[80];
} s_damaged_t;

/* Why the outbox row (id of id_len bytes, NULL if missing; body) cannot be
 * an entry, written into d->why, or false if it can.  The rules are those
 * mr_client_submit_packed applies to what it puts there. */
static bool s_row_damaged(const char *id, size_t id_len, const void *body, size_t len,
                          s_damaged_t *d)
{
    const uint8_t *inner;
    size_t inner_len;
    const char *why = NULL;
    if (id == NULL)
        why = "no message id";
    else if (id_len == 0 || id_len > MR_MESSAGE_ID_MAX)
        why = "a message id not of 1 to 64 bytes";
    else if (mr_text_check(id, id_len) != 0)
        why = "a message id not UTF-8, or holding a NUL";
    if (why == NULL) {
        memcpy(d->id, id, id_len + 1);
        if (body == NULL || mr_envelope_id(body, len, &inner, &inner_len) != 0 ||
            inner_len != id_len || memcmp(inner, id, id_len) != 0)
            why = "a body that does not carry its message id";
    }
    if (why == NULL)
        return false;
    snprintf(d->why, sizeof d->why, "%s", why);
    return true;
}

/* Moves outbox row d->row to outbox_damaged, with its reason, in one
 * transaction.  0 or -EIO (then it stays where it was). */
static int s_set_aside(cstore_t *self, const s_damaged_t *d)
{
    if (sqlite3_exec(self->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return -EIO;
    sqlite3_stmt *ins = self->st[S_OB_SET_ASIDE], *del = self->st[S_OB_DEL_ROW];
    int rc = s_run(ins, sqlite3_bind_int64(ins, 1, d->row) == SQLITE_OK &&
                            sqlite3_bind_text(ins, 2, d->why, -1, SQLITE_STATIC) == SQLITE_OK &&
                            sqlite3_bind_int64(ins, 3, mr_now_ms()) == SQLITE_OK);
    if (rc == 0)
        rc = s_run(del, sqlite3_bind_int64(del, 1, d->row) == SQLITE_OK);
    if (sqlite3_exec(self->db, rc == 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK) {
        (void)sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        rc = -EIO;
    }
    return rc;
}

int cstore_outbox_each(cstore_t *self,
                       int (*fn)(void *arg, const char *id, const void *body, size_t len,
                                 uint64_t tag),
                       void (*damaged)(void *arg, int64_t row, const char *id, const char *why,
                                       bool moved),
                       void *arg)
{
    if (self->db == NULL)
        return 0;
    sqlite3_stmt *st = self->st[S_OB_ALL];
    s_damaged_t *bad = NULL;
    size_t n_bad = 0, cap_bad = 0;
    int rc, out = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* column_text before column_bytes: the length of the text form. */
        const char *id = (const char *)sqlite3_column_text(st, 1);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 1);
        const void *body = sqlite3_column_blob(st, 2);
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        s_damaged_t d = {.row = sqlite3_column_int64(st, 0)};
        if (!s_row_damaged(id, id_len, body, len, &d)) {
            out = fn(arg, id, body, len, (uint64_t)sqlite3_column_int64(st, 3));
            if (out != 0)
                break;
            continue;
        }
        /* Set aside once the walk is over: SQLite leaves undefined what a
         * walk sees of rows its own connection changes under it. */
        if (n_bad == cap_bad) {
            size_t cap = cap_bad ? 2 * cap_bad : 8;
            s_damaged_t *b = realloc(bad, cap * sizeof *b);
            if (b == NULL) {
                out = -ENOMEM;
                break;
            }
            bad = b;
            cap_bad = cap;
        }
        bad[n_bad++] = d;
    }
    sqlite3_reset(st);
    if (out == 0 && rc != SQLITE_DONE)
        out = -EIO;
    for (size_t i = 0; out == 0 && i < n_bad; i++) {
        bool moved = s_set_aside(self, &bad[i]) == 0; /* else skipped again next time */
        if (damaged != NULL)
            damaged(arg, bad[i].row, bad[i].id, bad[i].why, moved);
    }
    free(bad);
    return out;
}

int64_t cstore_outbox_damaged_count(cstore_t *self)
{
    if (self->db == NULL)
        return 0;
    sqlite3_stmt *st = self->st[S_OB_DAMAGED_COUNT];
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -EIO;
    sqlite3_reset(st);
    return n;
}

seen_state_t cstore_seen_get(cstore_t *self, const char *source, const char *message_id)
{
    if (self->db == NULL) {
        char buf[S_MEM_KEY_MAX];
        size_t len;
        char *key = s_mem_key(buf, source, message_id, &len);
        seen_state_t s = key ? (seen_state_t)seenset_get(self->mem, key, len) : SEEN_UNKNOWN;
        if (key != buf)
            free(key);
        return s;
    }
    sqlite3_stmt *st = self->st[S_SEEN_GET];
    seen_state_t s = SEEN_UNKNOWN;
    if (sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            s = (seen_state_t)sqlite3_column_int(st, 0);
        else if (rc == SQLITE_DONE)
            s = SEEN_NONE;
    }
    sqlite3_reset(st);
    return s;
}

int cstore_seen_set(cstore_t *self, const char *source, const char *message_id,
                    seen_state_t state)
{
    if (self->db == NULL) {
        char buf[S_MEM_KEY_MAX];
        size_t len;
        char *key = s_mem_key(buf, source, message_id, &len);
        int rc = key ? seenset_set(self->mem, key, len, (int)state, mr_mono_ms()) : -ENOMEM;
        if (key != buf)
            free(key);
        return rc;
    }
    sqlite3_stmt *st = self->st[S_SEEN_SET];
    return s_run(st, sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC) == SQLITE_OK &&
                         sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC) == SQLITE_OK &&
                         sqlite3_bind_int(st, 3, (int)state) == SQLITE_OK &&
                         sqlite3_bind_int64(st, 4, mr_now_ms()) == SQLITE_OK);
}

int cstore_seen_clear(cstore_t *self, const char *source, const char *message_id)
{
    if (self->db == NULL) {
        char buf[S_MEM_KEY_MAX];
        size_t len;
        char *key = s_mem_key(buf, source, message_id, &len);
        if (key == NULL)
            return -ENOMEM;
        seenset_del(self->mem, key, len);
        if (key != buf)
            free(key);
        return 0;
    }
    sqlite3_stmt *st = self->st[S_SEEN_DEL];
    return s_run(st, sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC) == SQLITE_OK &&
                         sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC) == SQLITE_OK);
}

int cstore_seen_prune(cstore_t *self, int64_t keep_ms)
{
    if (self->db == NULL) {
        seenset_prune(self->mem, SEEN_DONE, mr_mono_ms() - keep_ms);
        return 0;
    }
    sqlite3_stmt *st = self->st[S_SEEN_PRUNE];
    return s_run(st, sqlite3_bind_int64(st, 1, mr_now_ms() - keep_ms) == SQLITE_OK);
}

/* Runs BEGIN IMMEDIATE, COMMIT or ROLLBACK.  0 or -EIO. */
static int s_exec(cstore_t *self, const char *sql)
{
    return sqlite3_exec(self->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

int64_t cstore_outcome_keep(cstore_t *self, const cstore_outcome_t *oc, const char *remove_id)
{
    if (self->db == NULL)
        return 0;
    if (s_exec(self, "BEGIN IMMEDIATE") < 0)
        return -EIO;
    sqlite3_stmt *add = self->st[S_OC_ADD], *del = self->st[S_OB_DEL];
    int rc = s_run(add, sqlite3_bind_int(add, 1, oc->type) == SQLITE_OK &&
                            sqlite3_bind_text(add, 2, oc->message_id, -1, SQLITE_STATIC) ==
                                SQLITE_OK &&
                            sqlite3_bind_int64(add, 3, (sqlite3_int64)oc->seq) == SQLITE_OK &&
                            sqlite3_bind_int(add, 4, oc->duplicate) == SQLITE_OK &&
                            sqlite3_bind_int(add, 5, oc->code) == SQLITE_OK &&
                            sqlite3_bind_text(add, 6, oc->reason, -1, SQLITE_STATIC) == SQLITE_OK);
    int64_t row = sqlite3_last_insert_rowid(self->db);
    if (rc == 0 && remove_id != NULL)
        rc = s_run(del, sqlite3_bind_text(del, 1, remove_id, -1, SQLITE_STATIC) == SQLITE_OK);
    if (rc == 0 && s_exec(self, "COMMIT") == 0)
        return row;
    (void)s_exec(self, "ROLLBACK");
    return -EIO;
}

int cstore_outcome_each(cstore_t *self,
                        int (*fn)(void *arg, int64_t row, const cstore_outcome_t *oc), void *arg)
{
    if (self->db == NULL)
        return 0;
    sqlite3_stmt *st = self->st[S_OC_ALL];
    int rc, out = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 2);
        const char *reason = (const char *)sqlite3_column_text(st, 6);
        cstore_outcome_t oc = {.type = sqlite3_column_int(st, 1),
                               .message_id = id ? id : "",
                               .seq = (uint64_t)sqlite3_column_int64(st, 3),
                               .duplicate = sqlite3_column_int(st, 4) != 0,
                               .code = sqlite3_column_int(st, 5),
                               .reason = reason ? reason : ""};
        out = fn(arg, sqlite3_column_int64(st, 0), &oc);
        if (out != 0)
            break;
    }
    sqlite3_reset(st);
    return out == 0 && rc != SQLITE_DONE ? -EIO : out;
}

int cstore_outcome_forget(cstore_t *self, int64_t first, int64_t last)
{
    if (self->db == NULL)
        return 0;
    sqlite3_stmt *st = self->st[S_OC_DEL];
    return s_run(st, sqlite3_bind_int64(st, 1, first) == SQLITE_OK &&
                         sqlite3_bind_int64(st, 2, last) == SQLITE_OK);
}
