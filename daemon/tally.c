/*
 * tally.c - per-day counts in the store, merged per batch.
 *
 * Owns: the pending batch (keys and deltas, a strmap index), the all-time
 * totals (the same shape), and two prepared statements.
 *
 * Invariants
 *   1. pending holds exactly the deltas of the requests executed since the
 *      last commit or discard, i.e. of the open transaction.
 *   2. Unless totals_lost, totals[k] is the sum of every committed day of
 *      key k: loaded at tally_new, and added to by tally_commit.  An
 *      all-time query (`/metrics` scrapes one every few seconds) is then
 *      answered from memory; summing the table took ~100 ms after a year
 *      of the demo county's keys, on the store thread, every scrape.
 *   3. kept (tally_kept_t, the caller's) holds the counts of events that
 *      happened whatever becomes of the batch that counts them (a refusal,
 *      a redelivery: store_tally): written by a tally_flush only in a batch
 *      that writes anyway (a batch of reads must not fail for want of disk:
 *      during an outage every refusal adds one, and the router's LOADs and
 *      the operator's queries would all fail), and cleared only by the
 *      tally_commit of that batch (kept_flushed), so they reach the first
 *      batch that writes and commits, once.  tally_discard leaves them, and
 *      as the caller owns them they outlive this tally (a reopened
 *      connection makes a new one).  Merged per key, they stay as small as
 *      the set of keys during an outage of any length.
 */
#include "tally.h"

#include "mr_codec.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strmap.h"

const int64_t tally_bucket_le[TALLY_BUCKETS] = {60,   300,   900,   1800,  3600,
                                                7200, 14400, 28800, 86400, -1};

typedef struct {
    char *name;
    char *labels;
    int64_t value;
} s_entry_t;

/* Keys with their values, found by "name\x1flabels". */
typedef struct {
    strmap_t *index;  /* NULL after an allocation failure: s_keys_add reports it */
    s_entry_t *v;
    size_t n, cap;
} s_keys_t;

struct tally_kept_t {
    s_keys_t keys;
};

struct tally_t {
    sqlite3 *db;
    sqlite3_stmt *upsert;
    sqlite3_stmt *query;
    s_keys_t pending;         /* the open transaction's deltas */
    s_keys_t totals;          /* all time, committed */
    bool totals_lost;         /* out of memory once: all-time queries go to the table */
    tally_kept_t *kept;       /* counts kept across rollbacks (invariant 3); borrowed, or NULL */
    bool kept_flushed;        /* the open transaction wrote them (invariant 3) */
};

static const char *const s_schema =
    "CREATE TABLE IF NOT EXISTS tallies(day TEXT NOT NULL, name TEXT NOT NULL,"
    " labels TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY(day, name, labels))"
    " WITHOUT ROWID;";

/* ---- a set of keys ---------------------------------------------------- */

static void s_keys_clear(s_keys_t *k)
{
    /* Empty already (a batch without counts, kept ones not written): keep
     * the index rather than make it again; unless an allocation failure
     * lost it. */
    if (k->n == 0 && k->index != NULL)
        return;
    for (size_t i = 0; i < k->n; i++) {
        free(k->v[i].name);
        free(k->v[i].labels);
    }
    k->n = 0;
    strmap_destroy(&k->index);
    k->index = strmap_new();
}

static void s_keys_free(s_keys_t *k)
{
    s_keys_clear(k);
    strmap_destroy(&k->index);
    free(k->v);
    k->v = NULL;
    k->cap = 0;
}

/* An all-time total loads capped at INT64_MAX (s_load_totals), and the
 * next count must not overflow it. */
int64_t tally_add_sat(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

/* Adds delta to (name, labels), made at 0 on first use, saturating.
 * SQLITE_OK or SQLITE_NOMEM (also for a key too long to index). */
static int s_keys_add(s_keys_t *k, const char *name, const char *labels, int64_t delta)
{
    /* name 0x1f labels, without snprintf: this runs for every message. */
    char key[512];
    size_t nl = strlen(name), ll = labels ? strlen(labels) : 0;
    if (nl + 1 + ll >= sizeof key || k->index == NULL)
        return SQLITE_NOMEM;
    memcpy(key, name, nl);
    key[nl] = '\x1f';
    memcpy(key + nl + 1, labels ? labels : "", ll);
    size_t kl = nl + 1 + ll;
    int at = strmap_get(k->index, key, kl);
    if (at >= 0) {
        k->v[at].value = tally_add_sat(k->v[at].value, delta);
        return SQLITE_OK;
    }
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 64;
        s_entry_t *v = realloc(k->v, cap * sizeof *v);
        if (v == NULL)
            return SQLITE_NOMEM;
        k->v = v;
        k->cap = cap;
    }
    s_entry_t *e = &k->v[k->n];
    e->name = strdup(name);
    e->labels = strdup(labels ? labels : "");
    e->value = delta;
    if (e->name == NULL || e->labels == NULL || strmap_put(k->index, key, kl, (int)k->n) != 0) {
        free(e->name);
        free(e->labels);
        return SQLITE_NOMEM;
    }
    k->n++;
    return SQLITE_OK;
}

/* ---- counts kept across rollbacks ------------------------------------------ */

tally_kept_t *tally_kept_new(void)
{
    tally_kept_t *self = calloc(1, sizeof *self);
    if (self == NULL || (self->keys.index = strmap_new()) == NULL) {
        free(self);
        return NULL;
    }
    return self;
}

void tally_kept_destroy(tally_kept_t **self_p)
{
    tally_kept_t *self = *self_p;
    if (self == NULL)
        return;
    s_keys_free(&self->keys);
    free(self);
    *self_p = NULL;
}

int tally_kept_add(tally_kept_t *self, const char *name, const char *labels, int64_t delta)
{
    return s_keys_add(&self->keys, name, labels, delta);
}

bool tally_kept_empty(const tally_kept_t *self)
{
    return self->keys.n == 0;
}

/* ---- the tallies ---------------------------------------------------------- */

/* Sums every day of the table into self->totals.  total(), not sum(): an
 * all-time sum past INT64_MAX (only a store edited by hand holds one) must
 * not keep the store from opening; read as an integer, it saturates. */
static int s_load_totals(tally_t *self)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(self->db,
                                "SELECT name, labels, total(value) FROM tallies GROUP BY name, labels",
                                -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* NOT NULL columns: NULL text is out of memory. */
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *labels = (const char *)sqlite3_column_text(st, 1);
        rc = name == NULL || labels == NULL
                 ? SQLITE_NOMEM
                 : s_keys_add(&self->totals, name, labels, sqlite3_column_int64(st, 2));
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

tally_t *tally_new(sqlite3 *db, tally_kept_t *kept, int *rc_out)
{
    tally_t *self = calloc(1, sizeof *self);
    int rc = SQLITE_NOMEM;
    if (self == NULL || (self->pending.index = strmap_new()) == NULL ||
        (self->totals.index = strmap_new()) == NULL)
        goto fail;
    self->db = db;
    self->kept = kept;
    rc = sqlite3_exec(db, s_schema, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(db,
                                "INSERT INTO tallies(day, name, labels, value) VALUES(?1, ?2, ?3, ?4)"
                                " ON CONFLICT(day, name, labels) DO UPDATE SET value = value + ?4",
                                -1, SQLITE_PREPARE_PERSISTENT, &self->upsert, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(db,
                                "SELECT name, labels, sum(value) FROM tallies"
                                " WHERE day BETWEEN ?1 AND ?2"
                                " GROUP BY name, labels ORDER BY name, labels",
                                -1, SQLITE_PREPARE_PERSISTENT, &self->query, NULL);
    if (rc == SQLITE_OK)
        rc = s_load_totals(self);
    if (rc != SQLITE_OK)
        goto fail;
    *rc_out = SQLITE_OK;
    return self;
fail:
    tally_destroy(&self);
    *rc_out = rc;
    return NULL;
}

void tally_discard(tally_t *self)
{
    s_keys_clear(&self->pending);
    self->kept_flushed = false;
}

/* Adds committed deltas to the all-time totals. */
static void s_totals_add(tally_t *self, const s_keys_t *k)
{
    for (size_t i = 0; i < k->n && !self->totals_lost; i++) {
        const s_entry_t *e = &k->v[i];
        if (e->value != 0 && s_keys_add(&self->totals, e->name, e->labels, e->value) != SQLITE_OK)
            self->totals_lost = true;
    }
}

void tally_commit(tally_t *self)
{
    s_totals_add(self, &self->pending);
    s_keys_clear(&self->pending);
    if (self->kept_flushed) {
        s_totals_add(self, &self->kept->keys);
        s_keys_clear(&self->kept->keys);
        self->kept_flushed = false;
    }
}

void tally_destroy(tally_t **self_p)
{
    tally_t *self = *self_p;
    if (self == NULL)
        return;
    s_keys_free(&self->pending);
    s_keys_free(&self->totals);
    sqlite3_finalize(self->upsert);
    sqlite3_finalize(self->query);
    free(self);
    *self_p = NULL;
}

int tally_add(tally_t *self, const char *name, const char *labels, int64_t delta)
{
    return s_keys_add(&self->pending, name, labels, delta);
}

int tally_observe(tally_t *self, const char *name, const char *labels, int64_t seconds)
{
    char n[96], l[400];
    if (seconds < 0)
        seconds = 0;
    for (int b = 0; b < TALLY_BUCKETS; b++) {
        if (tally_bucket_le[b] >= 0 && seconds > tally_bucket_le[b])
            continue;
        /* Stored per bucket (not cumulative): the one it falls in. */
        char le[24];
        if (tally_bucket_le[b] < 0)
            snprintf(le, sizeof le, "+Inf");
        else
            snprintf(le, sizeof le, "%lld", (long long)tally_bucket_le[b]);
        snprintf(n, sizeof n, "%s_bucket", name);
        snprintf(l, sizeof l, "%s%sle=\"%s\"", labels && labels[0] ? labels : "",
                 labels && labels[0] ? "," : "", le);
        int rc = tally_add(self, n, l, 1);
        if (rc != SQLITE_OK)
            return rc;
        break;
    }
    snprintf(n, sizeof n, "%s_sum", name);
    int rc = tally_add(self, n, labels, seconds);
    if (rc != SQLITE_OK)
        return rc;
    snprintf(n, sizeof n, "%s_count", name);
    return tally_add(self, n, labels, 1);
}

/* Writes the deltas of k to day (upserts: the same key from pending and
 * kept adds up); *wrote set if a row was. */
static int s_flush_keys(tally_t *self, const s_keys_t *k, const char *day, bool *wrote)
{
    int rc = SQLITE_OK;
    for (size_t i = 0; i < k->n && rc == SQLITE_OK; i++) {
        const s_entry_t *e = &k->v[i];
        if (e->value == 0)
            continue;
        sqlite3_stmt *st = self->upsert;
        sqlite3_reset(st);
        rc = sqlite3_bind_text(st, 1, day, -1, SQLITE_TRANSIENT);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(st, 2, e->name, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(st, 3, e->labels, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 4, e->value);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(self->db);
        sqlite3_reset(st);
        *wrote = *wrote || rc == SQLITE_OK;
    }
    return rc;
}

int tally_flush(tally_t *self, int64_t now_ms, bool wrote)
{
    const s_keys_t *kept = self->kept != NULL ? &self->kept->keys : NULL;
    bool keep_due = kept != NULL && kept->n > 0;
    if (self->pending.n == 0 && !(keep_due && wrote))
        return SQLITE_OK;
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    char day[11];
    if (localtime_r(&t, &tm) == NULL || strftime(day, sizeof day, "%Y-%m-%d", &tm) == 0)
        return SQLITE_ERROR;
    int rc = s_flush_keys(self, &self->pending, day, &wrote);
    /* The kept ones only with other writes (invariant 3). */
    if (rc == SQLITE_OK && keep_due && wrote) {
        bool unused = false;
        rc = s_flush_keys(self, kept, day, &unused);
        self->kept_flushed = rc == SQLITE_OK;
    }
    return rc;
}

static int s_row_cmp(const void *a, const void *b)
{
    const tally_row_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

/*
 * Whether a label set names facility as its source or destination: a whole
 * label of one of those keys, not the same text under another key (a
 * free-text department, resource="bed" for a facility "bed").  Values hold
 * no quote (tally_label_value; facility ids), so each ends at the next one;
 * they may hold commas and equals signs (facility ids).  NULL or "": all.
 */
static bool s_names_facility(const char *labels, const char *facility)
{
    if (facility == NULL || facility[0] == '\0')
        return true;
    size_t fl = strlen(facility);
    for (const char *p = labels; *p != '\0';) {
        const char *eq = strchr(p, '='); /* keys hold none */
        const char *end = eq != NULL && eq[1] == '"' ? strchr(eq + 2, '"') : NULL;
        if (end == NULL)
            return false;
        size_t kl = (size_t)(eq - p), vl = (size_t)(end - (eq + 2));
        bool key = (kl == 6 && memcmp(p, "source", 6) == 0) ||
                   (kl == 11 && memcmp(p, "destination", 11) == 0);
        if (key && vl == fl && memcmp(eq + 2, facility, fl) == 0)
            return true;
        p = end[1] == ',' ? end + 2 : end + 1;
    }
    return false;
}

/* An all-time query, from memory: the table's answer, without reading it. */
static int s_query_totals(tally_t *self, const char *facility, tally_row_t **rows, size_t *n)
{
    *rows = calloc(self->totals.n ? self->totals.n : 1, sizeof **rows);
    *n = 0;
    if (*rows == NULL)
        return SQLITE_NOMEM;
    for (size_t i = 0; i < self->totals.n; i++) {
        const s_entry_t *e = &self->totals.v[i];
        if (!s_names_facility(e->labels, facility))
            continue;
        tally_row_t *r = &(*rows)[(*n)++];
        r->name = strdup(e->name);
        r->labels = strdup(e->labels);
        r->value = e->value;
        if (r->name == NULL || r->labels == NULL)
            return SQLITE_NOMEM; /* the caller frees rows and n */
    }
    qsort(*rows, *n, sizeof **rows, s_row_cmp);
    return SQLITE_OK;
}

int tally_query(tally_t *self, const char *first, const char *last, const char *facility,
                tally_row_t **rows, size_t *n)
{
    if (first == NULL && last == NULL && !self->totals_lost)
        return s_query_totals(self, facility, rows, n);
    sqlite3_stmt *st = self->query;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    int rc = sqlite3_bind_text(st, 1, first ? first : "0000-00-00", -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, last ? last : "9999-99-99", -1, SQLITE_TRANSIENT);
    if (rc != SQLITE_OK)
        return rc;
    *rows = NULL;
    *n = 0;
    size_t cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* NOT NULL columns: NULL text is out of memory. */
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *labels = (const char *)sqlite3_column_text(st, 1);
        if (name == NULL || labels == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (!s_names_facility(labels, facility))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            tally_row_t *r = realloc(*rows, cap * sizeof *r);
            if (r == NULL) {
                rc = SQLITE_NOMEM;
                break;
            }
            *rows = r;
        }
        tally_row_t *r = &(*rows)[(*n)++];
        r->name = strdup(name);
        r->labels = strdup(labels);
        r->value = sqlite3_column_int64(st, 2);
        if (r->name == NULL || r->labels == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void tally_rows_free(tally_row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].name);
        free(rows[i].labels);
    }
    free(rows);
}

/* Appends n bytes at out[*at] if they fit (one byte stays for the NUL). */
static bool s_put(char *out, size_t len, size_t *at, const char *s, size_t n)
{
    if (*at + n >= len)
        return false;
    memcpy(out + *at, s, n);
    *at += n;
    return true;
}

int tally_labels(char *out, size_t len, size_t n, const char *const pairs[])
{
    size_t at = 0;
    bool ok = len > 0;
    for (size_t i = 0; ok && i < n; i++) {
        const char *k = pairs[2 * i], *v = pairs[2 * i + 1] ? pairs[2 * i + 1] : "";
        ok = (i == 0 || s_put(out, len, &at, ",", 1)) && s_put(out, len, &at, k, strlen(k)) &&
             s_put(out, len, &at, "=\"", 2) && s_put(out, len, &at, v, strlen(v)) &&
             s_put(out, len, &at, "\"", 1);
    }
    if (!ok) {
        if (len > 0)
            out[0] = '\0';
        return -1;
    }
    out[at] = '\0';
    return (int)at;
}

void tally_label_value(char *out, size_t len, const char *s)
{
    size_t i = 0, o = 0, slen = s ? strlen(s) : 0;
    const unsigned char *u = (const unsigned char *)s;
    while (i < slen && o + 1 < len && o < 32) {
        unsigned char c = u[i];
        if (c >= 0x80) {
            /* Whole characters only (department names are often Chinese):
             * one that would not fit ends the value; a broken one is '_'. */
            size_t n = mr_utf8_char(s + i, slen - i);
            if (n == 0) {
                out[o++] = '_';
                i++;
                continue;
            }
            if (o + n + 1 > len || o + n > 32)
                break;
            memcpy(out + o, u + i, n);
            o += n;
            i += n;
            continue;
        }
        out[o++] = c < 0x20 || c == '"' || c == '\\' || c == ',' || c == '=' || c == 0x7f
                       ? '_'
                       : (char)c;
        i++;
    }
    if (len)
        out[o] = '\0';
}
