/*
 * pending.c - the store's pending set in memory (pending.h).
 *
 * Owns: one record per destination ever seen (name, the list of its pending
 * entries, the list of its express ones), the name -> record map, and the
 * journal of the open transaction.
 *
 * A list is an array sorted by seq with a head offset.  Messages arrive with
 * rising seqs and mostly leave from the front, so an add is an append and a
 * remove marks its entry dead (binary search) and moves the head past dead
 * entries.  Dead entries keep their seq, so the array stays sorted; when
 * they are more than half the window it is compacted, which keeps both
 * memory and the walks linear in what is pending.
 *
 * Invariants
 *   1. list.v[head .. len) is sorted by seq, strictly; list.live counts the
 *      live entries in it, and v[head] is live whenever head < len.
 *   2. An entry is in its destination's express list iff it is express.
 *   3. next_expiry <= the expires_ms of every live entry.
 *   4. While journalling, every change is in the journal, oldest first, and
 *      undoing them in reverse gives back the set as it was at begin.
 *
 * Store thread only.
 */
#include "pending.h"

#include "strmap.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    pending_entry_t *v;
    size_t head, len, cap;
    size_t live;
} s_list_t;

typedef struct {
    char *name;
    s_list_t all;
    s_list_t express;
} s_dest_t;

typedef struct {
    int dest;
    bool added;        /* undo: remove it; else add it back */
    pending_entry_t e;
} s_undo_t;

struct pending_t {
    strmap_t *index;   /* name -> position in dests */
    s_dest_t *dests;
    size_t n_dests, cap_dests;
    size_t count;
    int64_t next_expiry;
    bool journalling;
    s_undo_t *undo;
    size_t n_undo, cap_undo;
};

/* Room for one more element in array v of n (size bytes each) whose
 * capacity is *cap: v itself, or v moved with its capacity doubled (*cap
 * updated).  NULL without memory, v then unchanged. */
static void *s_grow(void *v, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n < *cap)
        return v;
    size_t c = *cap ? *cap * 2 : first;
    void *p = realloc(v, c * size);
    if (p != NULL)
        *cap = c;
    return p;
}

/* ---- one list ------------------------------------------------------------ */

/* The first position in [head, len) whose seq is >= seq (len if none). */
static size_t s_search(const s_list_t *l, uint64_t seq)
{
    size_t lo = l->head, hi = l->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->v[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void s_compact(s_list_t *l)
{
    size_t w = 0;
    for (size_t r = l->head; r < l->len; r++)
        if (l->v[r].live)
            l->v[w++] = l->v[r];
    l->head = 0;
    l->len = w;
    /* After a backlog has drained: give back what it took. */
    if (l->cap > 4 * w + 256) {
        size_t cap = 2 * w + 64;
        pending_entry_t *v = realloc(l->v, cap * sizeof *v);
        if (v != NULL) {
            l->v = v;
            l->cap = cap;
        }
    }
}

/* Room for one more at the end; compacts first when half the window is dead. */
static int s_reserve(s_list_t *l)
{
    if (l->len - l->head > 2 * l->live + 64 || (l->head > 0 && l->len == l->cap))
        s_compact(l);
    pending_entry_t *v = s_grow(l->v, &l->cap, l->len, sizeof *v, 64);
    if (v == NULL)
        return -ENOMEM;
    l->v = v;
    return 0;
}

static int s_list_add(s_list_t *l, const pending_entry_t *e)
{
    /* The usual case, a new message: after everything held. */
    if (l->len == l->head || l->v[l->len - 1].seq < e->seq) {
        if (s_reserve(l) != 0)
            return -ENOMEM;
        l->v[l->len] = *e;
        l->v[l->len++].live = true;
        l->live++;
        return 0;
    }
    size_t at = s_search(l, e->seq);
    if (at < l->len && l->v[at].seq == e->seq) {
        if (l->v[at].live)
            return -EEXIST;
        l->v[at] = *e; /* a dead entry in its place: revive it */
        l->v[at].live = true;
        l->live++;
        return 0;
    }
    if (s_reserve(l) != 0)
        return -ENOMEM;
    at = s_search(l, e->seq); /* compaction moves entries */
    memmove(&l->v[at + 1], &l->v[at], (l->len - at) * sizeof *l->v);
    l->v[at] = *e;
    l->v[at].live = true;
    l->len++;
    l->live++;
    return 0;
}

static pending_entry_t *s_list_find(const s_list_t *l, uint64_t seq)
{
    size_t at = s_search(l, seq);
    return at < l->len && l->v[at].seq == seq && l->v[at].live ? &l->v[at] : NULL;
}

static void s_list_remove(s_list_t *l, pending_entry_t *e)
{
    e->live = false;
    l->live--;
    while (l->head < l->len && !l->v[l->head].live)
        l->head++;
    if (l->head == l->len) {
        l->head = l->len = 0;
        if (l->cap > 1024) { /* drained after a backlog */
            free(l->v);
            l->v = NULL;
            l->cap = 0;
        }
    } else if (l->len - l->head > 2 * l->live + 64)
        s_compact(l); /* a list that drains without adds: also here */
}

/* ---- the set --------------------------------------------------------------- */

pending_t *pending_new(void)
{
    pending_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->index = strmap_new();
    if (self->index == NULL) {
        free(self);
        return NULL;
    }
    self->next_expiry = INT64_MAX;
    return self;
}

void pending_destroy(pending_t **self_p)
{
    pending_t *self = *self_p;
    if (self == NULL)
        return;
    for (size_t i = 0; i < self->n_dests; i++) {
        free(self->dests[i].name);
        free(self->dests[i].all.v);
        free(self->dests[i].express.v);
    }
    free(self->dests);
    free(self->undo);
    strmap_destroy(&self->index);
    free(self);
    *self_p = NULL;
}

void pending_clear(pending_t *self)
{
    for (size_t i = 0; i < self->n_dests; i++) {
        s_dest_t *d = &self->dests[i];
        d->all.head = d->all.len = d->all.live = 0;
        d->express.head = d->express.len = d->express.live = 0;
    }
    self->count = 0;
    self->next_expiry = INT64_MAX;
    self->n_undo = 0;
    self->journalling = false;
}

void pending_begin(pending_t *self)
{
    assert(!self->journalling);
    self->n_undo = 0;
    self->journalling = true;
}

void pending_commit(pending_t *self)
{
    self->n_undo = 0;
    self->journalling = false;
    if (self->cap_undo > 65536) { /* a large batch's journal is not kept */
        free(self->undo);
        self->undo = NULL;
        self->cap_undo = 0;
    }
}

static s_dest_t *s_dest(const pending_t *self, const char *dest)
{
    int i = strmap_get(self->index, dest, strlen(dest));
    return i < 0 ? NULL : &self->dests[i];
}

/* dest's record, made on first use; -1 without memory. */
static int s_dest_make(pending_t *self, const char *dest)
{
    size_t len = strlen(dest);
    int i = strmap_get(self->index, dest, len);
    if (i >= 0)
        return i;
    s_dest_t *d = s_grow(self->dests, &self->cap_dests, self->n_dests, sizeof *d, 16);
    if (d == NULL)
        return -1;
    self->dests = d;
    d = &self->dests[self->n_dests];
    memset(d, 0, sizeof *d);
    d->name = strdup(dest);
    if (d->name == NULL || strmap_put(self->index, dest, len, (int)self->n_dests) != 0) {
        free(d->name);
        return -1;
    }
    return (int)self->n_dests++;
}

static int s_journal(pending_t *self, int dest, bool added, const pending_entry_t *e)
{
    if (!self->journalling)
        return 0;
    s_undo_t *u = s_grow(self->undo, &self->cap_undo, self->n_undo, sizeof *u, 256);
    if (u == NULL)
        return -ENOMEM;
    self->undo = u;
    self->undo[self->n_undo++] = (s_undo_t){.dest = dest, .added = added, .e = *e};
    return 0;
}

static int s_add(pending_t *self, int i, const pending_entry_t *e)
{
    s_dest_t *d = &self->dests[i];
    int rc = s_list_add(&d->all, e);
    if (rc != 0)
        return rc;
    if (e->express && (rc = s_list_add(&d->express, e)) != 0) {
        s_list_remove(&d->all, s_list_find(&d->all, e->seq));
        return rc;
    }
    self->count++;
    if (e->expires_ms < self->next_expiry)
        self->next_expiry = e->expires_ms;
    return 0;
}

static void s_remove(pending_t *self, s_dest_t *d, pending_entry_t *at)
{
    uint64_t seq = at->seq;
    if (at->express) {
        pending_entry_t *x = s_list_find(&d->express, seq);
        if (x != NULL)
            s_list_remove(&d->express, x);
    }
    s_list_remove(&d->all, at);
    self->count--;
}

int pending_add(pending_t *self, const char *dest, const pending_entry_t *e)
{
    int i = s_dest_make(self, dest);
    if (i < 0)
        return -ENOMEM;
    /* Journal first: an entry that could not be journalled is not added
     * (and one that was not added, -EEXIST too, leaves the journal). */
    if (s_journal(self, i, true, e) != 0)
        return -ENOMEM;
    int rc = s_add(self, i, e);
    if (rc != 0 && self->journalling)
        self->n_undo--;
    return rc;
}

int pending_remove(pending_t *self, const char *dest, uint64_t seq, pending_entry_t *out)
{
    int i = strmap_get(self->index, dest, strlen(dest));
    if (i < 0)
        return -ENOENT;
    s_dest_t *d = &self->dests[i];
    pending_entry_t *at = s_list_find(&d->all, seq);
    if (at == NULL)
        return -ENOENT;
    if (s_journal(self, i, false, at) != 0)
        return -ENOMEM;
    if (out != NULL)
        *out = *at;
    s_remove(self, d, at);
    return 0;
}

int pending_rollback(pending_t *self)
{
    int rc = 0;
    self->journalling = false;
    while (self->n_undo > 0) {
        const s_undo_t *u = &self->undo[--self->n_undo];
        s_dest_t *d = &self->dests[u->dest];
        if (u->added) {
            pending_entry_t *at = s_list_find(&d->all, u->e.seq);
            if (at != NULL)
                s_remove(self, d, at);
        } else {
            /* Usually revives the dead entry still in its place; after a
             * compaction it is inserted again, which may need memory. */
            if (s_add(self, u->dest, &u->e) != 0)
                rc = -ENOMEM;
        }
    }
    return rc;
}

bool pending_get(const pending_t *self, const char *dest, uint64_t seq, pending_entry_t *out)
{
    const s_dest_t *d = s_dest(self, dest);
    const pending_entry_t *at = d ? s_list_find(&d->all, seq) : NULL;
    if (at != NULL && out != NULL)
        *out = *at;
    return at != NULL;
}

size_t pending_after(const pending_t *self, const char *dest, uint64_t after, bool express_only,
                     uint64_t *seqs, size_t max)
{
    const s_dest_t *d = s_dest(self, dest);
    if (d == NULL)
        return 0;
    const s_list_t *l = express_only ? &d->express : &d->all;
    size_t n = 0;
    if (after == UINT64_MAX)
        return 0;
    for (size_t at = s_search(l, after + 1); at < l->len && n < max; at++)
        if (l->v[at].live)
            seqs[n++] = l->v[at].seq;
    return n;
}

size_t pending_lowest(const pending_t *self, uint64_t *seqs, size_t max)
{
    /* A merge without memory of its own: each step takes the lowest seq
     * above the last one over the destinations (operators' lists are short). */
    size_t n = 0;
    uint64_t last = 0;
    while (n < max) {
        uint64_t best = 0;
        for (size_t i = 0; i < self->n_dests; i++) {
            const s_list_t *l = &self->dests[i].all;
            for (size_t at = s_search(l, last + 1); at < l->len; at++)
                if (l->v[at].live) {
                    if (best == 0 || l->v[at].seq < best)
                        best = l->v[at].seq;
                    break;
                }
        }
        if (best == 0)
            break;
        seqs[n++] = last = best;
    }
    return n;
}

int pending_seq_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

size_t pending_expired(pending_t *self, int64_t now, const uint64_t *skip, size_t n_skip,
                       pending_entry_t *out, const char **dests, size_t max)
{
    if (now <= self->next_expiry || max == 0)
        return 0;
    size_t n = 0;
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < self->n_dests; i++) {
        const s_list_t *l = &self->dests[i].all;
        for (size_t at = l->head; at < l->len; at++) {
            const pending_entry_t *e = &l->v[at];
            if (!e->live)
                continue;
            if (e->expires_ms < now && n < max &&
                (n_skip == 0 || bsearch(&e->seq, skip, n_skip, sizeof *skip, pending_seq_cmp) == NULL)) {
                out[n] = *e;
                dests[n++] = self->dests[i].name;
            }
            /* Those returned count too: until the caller removes them they
             * are still pending, and must be found again. */
            if (e->expires_ms < next)
                next = e->expires_ms;
        }
    }
    self->next_expiry = next;
    return n;
}

size_t pending_summary(const pending_t *self, pending_dest_t *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < self->n_dests; i++) {
        const s_list_t *l = &self->dests[i].all;
        if (l->live == 0)
            continue;
        if (n < max) {
            pending_dest_t *o = &out[n];
            o->dest = self->dests[i].name;
            o->count = l->live;
            o->min_seq = l->v[l->head].seq;
            o->min_stored_ms = INT64_MAX;
            for (size_t at = l->head; at < l->len; at++)
                if (l->v[at].live && l->v[at].stored_ms < o->min_stored_ms)
                    o->min_stored_ms = l->v[at].stored_ms;
        }
        n++;
    }
    return n;
}

uint64_t pending_floor_from(const pending_t *self, uint64_t from)
{
    uint64_t low = 0;
    for (size_t i = 0; i < self->n_dests; i++) {
        const s_list_t *l = &self->dests[i].all;
        for (size_t at = s_search(l, from); at < l->len; at++)
            if (l->v[at].live) {
                if (low == 0 || l->v[at].seq < low)
                    low = l->v[at].seq;
                break;
            }
    }
    return low;
}

int pending_each_between(const pending_t *self, uint64_t from, uint64_t to,
                         int (*fn)(void *arg, uint64_t seq), void *arg)
{
    for (size_t i = 0; i < self->n_dests; i++) {
        const s_list_t *l = &self->dests[i].all;
        for (size_t at = s_search(l, from); at < l->len && l->v[at].seq < to; at++) {
            if (!l->v[at].live)
                continue;
            int rc = fn(arg, l->v[at].seq);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

size_t pending_count(const pending_t *self)
{
    return self->count;
}

size_t pending_dest_count(const pending_t *self, const char *dest)
{
    const s_dest_t *d = s_dest(self, dest);
    return d == NULL ? 0 : d->all.live;
}
