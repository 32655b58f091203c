/*
 * acked.c - ids acknowledged after more than one send (see acked.h).
 *
 * Owns: a ring of ACKED_MAX entries in the order they were put, each with
 * its id, seq and content; a map id -> ring index.
 *
 * Invariants
 *   1. A live entry's id maps to its ring index, and no dead entry's does.
 *   2. bytes is the sum of the live entries' content lengths, at most
 *      ACKED_MAX_BYTES.
 *   3. The entries are ring[(head + i) % ACKED_MAX] for i < n, oldest
 *      first; dead ones (replaced, or all their late answers in) keep their
 *      place until they are the oldest.
 */
#include "acked.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mr_codec.h"
#include "strmap.h"

typedef struct {
    char id[MR_MESSAGE_ID_MAX + 1];
    uint64_t seq;
    uint8_t *body;
    size_t len;
    unsigned late;           /* answers to other sends that may still come */
    bool live;
} s_entry_t;

struct acked_t {
    s_entry_t *ring;
    size_t head, n, bytes;
    strmap_t *index;
};

acked_t *acked_new(void)
{
    acked_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->ring = calloc(ACKED_MAX, sizeof *self->ring);
    self->index = strmap_new();
    if (self->ring == NULL || self->index == NULL)
        acked_destroy(&self);
    return self;
}

void acked_destroy(acked_t **self_p)
{
    acked_t *self = *self_p;
    if (self == NULL)
        return;
    for (size_t i = 0; self->ring && i < ACKED_MAX; i++)
        free(self->ring[i].body);
    free(self->ring);
    strmap_destroy(&self->index);
    free(self);
    *self_p = NULL;
}

static void s_kill(acked_t *self, s_entry_t *e)
{
    if (!e->live)
        return;
    (void)strmap_del(self->index, e->id, strlen(e->id));
    self->bytes -= e->len;
    free(e->body);
    e->body = NULL;
    e->len = 0;
    e->live = false;
}

static void s_evict_oldest(acked_t *self)
{
    s_kill(self, &self->ring[self->head]);
    self->head = (self->head + 1) % ACKED_MAX;
    self->n--;
}

static s_entry_t *s_find(const acked_t *self, const char *id)
{
    int i = strmap_get(self->index, id, strlen(id));
    return i < 0 ? NULL : &self->ring[i];
}

int acked_put(acked_t *self, const char *id, uint64_t seq, uint8_t *body, size_t len,
              unsigned late)
{
    size_t id_len = strlen(id);
    if (id_len == 0 || id_len > MR_MESSAGE_ID_MAX || len > ACKED_MAX_BYTES) {
        free(body);
        return -EINVAL;
    }
    s_entry_t *old = s_find(self, id);
    if (old != NULL) {
        /* The same message (its seq) sent again: the Ack that acknowledged
         * it may have been one of the late answers still owed to the old
         * entry, so those still to come are the old ones' and the new
         * sends' but one. */
        if (old->seq == seq)
            late = old->late > UINT_MAX - late ? UINT_MAX : late + old->late;
        s_kill(self, old);
    }
    while (self->n > 0 && (self->n == ACKED_MAX || self->bytes + len > ACKED_MAX_BYTES))
        s_evict_oldest(self);
    size_t at = (self->head + self->n) % ACKED_MAX;
    if (strmap_put(self->index, id, id_len, (int)at) < 0) {
        free(body);
        return -ENOMEM;
    }
    s_entry_t *e = &self->ring[at];
    memcpy(e->id, id, id_len + 1);
    e->seq = seq;
    e->body = body;
    e->len = len;
    e->late = late;
    e->live = true;
    self->bytes += len;
    self->n++;
    return 0;
}

uint64_t acked_other_seq(const acked_t *self, const char *id, const uint8_t *body, size_t len)
{
    if (self->n == 0)
        return 0; /* every submission asks: most find the table empty */
    const s_entry_t *e = s_find(self, id);
    if (e == NULL || mr_envelope_same(e->body, e->len, body, len))
        return 0;
    return e->seq;
}

void acked_answered(acked_t *self, const char *id, uint64_t seq)
{
    s_entry_t *e = s_find(self, id);
    if (e == NULL || e->seq != seq)
        return;
    if (e->late > 0)
        e->late--;
    if (e->late == 0)
        s_kill(self, e);
}

size_t acked_count(const acked_t *self)
{
    return strmap_size(self->index);
}
