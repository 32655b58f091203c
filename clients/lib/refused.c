/*
 * refused.c - submissions refused while copies were unanswered (see
 * refused.h).
 *
 * Owns: a ring of REFUSED_MAX entries in the order they were put.
 *
 * Invariants
 *   1. The entries are ring[(head + i) % REFUSED_MAX] for i < n, oldest
 *      first; a dead one (its Ack came, or all its copies were answered)
 *      has tag 0 and keeps its place until it is the oldest.
 *   2. A live entry has a tag other than 0 and late > 0.
 */
#include "refused.h"

#include <stdlib.h>

typedef struct {
    uint64_t tag;
    int code;
    unsigned late;            /* copies whose answers may still come */
} s_entry_t;

struct refused_t {
    s_entry_t ring[REFUSED_MAX];
    size_t head, n;
};

refused_t *refused_new(void)
{
    return calloc(1, sizeof(refused_t));
}

void refused_destroy(refused_t **self_p)
{
    free(*self_p);
    *self_p = NULL;
}

void refused_put(refused_t *self, uint64_t tag, int code, unsigned late)
{
    if (tag == 0 || late == 0)
        return;
    if (self->n == REFUSED_MAX) {
        self->head = (self->head + 1) % REFUSED_MAX;
        self->n--;
    }
    self->ring[(self->head + self->n) % REFUSED_MAX] =
        (s_entry_t){.tag = tag, .code = code, .late = late};
    self->n++;
}

/* The live entry of tag, newest first, or NULL.  A walk: such entries are
 * rare, and the table is asked only of answers that settle nothing. */
static s_entry_t *s_find(refused_t *self, uint64_t tag)
{
    for (size_t i = self->n; tag != 0 && i-- > 0;) {
        s_entry_t *e = &self->ring[(self->head + i) % REFUSED_MAX];
        if (e->tag == tag)
            return e;
    }
    return NULL;
}

int refused_answered(refused_t *self, uint64_t tag, bool ack)
{
    s_entry_t *e = s_find(self, tag);
    if (e == NULL)
        return 0;
    int code = ack ? e->code : 0;
    if (ack || --e->late == 0)
        e->tag = 0;
    return code;
}
