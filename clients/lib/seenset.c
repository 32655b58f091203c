/*
 * seenset.c - in-memory seen-set: strmap (key -> ring slot) and a ring of
 * entries in the order their keys were first set.
 *
 * Invariants: ring capacity is a power of two; the live entries are the
 * slots from head to tail (positions, taken modulo the capacity) whose key
 * is not NULL, and exactly those keys are in the map, each with its slot.
 * A deleted key leaves a NULL slot that prune and growth skip.
 */
#include "seenset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"

typedef struct {
    char *key; /* NULL: deleted */
    size_t len;
    int64_t at_ms;
    int state;
} s_entry_t;

struct seenset_t {
    strmap_t *map;
    s_entry_t *ring;
    size_t cap;
    uint64_t head, tail;
};

seenset_t *seenset_new(void)
{
    seenset_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->cap = 64;
    self->ring = calloc(self->cap, sizeof *self->ring);
    self->map = strmap_new();
    if (self->ring == NULL || self->map == NULL)
        seenset_destroy(&self);
    return self;
}

void seenset_destroy(seenset_t **self_p)
{
    seenset_t *self = *self_p;
    if (self == NULL)
        return;
    if (self->ring != NULL)
        for (uint64_t p = self->head; p < self->tail; p++)
            free(self->ring[p & (self->cap - 1)].key);
    free(self->ring);
    strmap_destroy(&self->map);
    free(self);
    *self_p = NULL;
}

/* Moves the live entries to a ring with room for twice as many, from slot
 * 0, and points the map at their new slots. */
static int s_regrow(seenset_t *self)
{
    size_t live = strmap_size(self->map);
    size_t cap = 64;
    while (cap < live * 2 + 1)
        cap *= 2;
    s_entry_t *ring = calloc(cap, sizeof *ring);
    if (ring == NULL)
        return -ENOMEM;
    size_t n = 0;
    for (uint64_t p = self->head; p < self->tail; p++) {
        s_entry_t *e = &self->ring[p & (self->cap - 1)];
        if (e->key == NULL)
            continue;
        if (strmap_put(self->map, e->key, e->len, (int)n) < 0) { /* the key is in: a rewrite */
            free(ring);
            return -ENOMEM;
        }
        ring[n++] = *e;
    }
    free(self->ring);
    self->ring = ring;
    self->cap = cap;
    self->head = 0;
    self->tail = n;
    return 0;
}

int seenset_get(const seenset_t *self, const void *key, size_t len)
{
    int i = strmap_get(self->map, key, len);
    return i < 0 ? 0 : self->ring[i].state;
}

int seenset_set(seenset_t *self, const void *key, size_t len, int state, int64_t at_ms)
{
    int i = strmap_get(self->map, key, len);
    if (i >= 0) {
        self->ring[i].state = state;
        self->ring[i].at_ms = at_ms;
        return 0;
    }
    if (self->tail - self->head == self->cap && s_regrow(self) < 0)
        return -ENOMEM;
    s_entry_t e = {.key = malloc(len ? len : 1), .len = len, .at_ms = at_ms, .state = state};
    if (e.key == NULL)
        return -ENOMEM;
    memcpy(e.key, key, len);
    size_t slot = (size_t)(self->tail & (self->cap - 1));
    if (strmap_put(self->map, key, len, (int)slot) < 0) {
        free(e.key);
        return -ENOMEM;
    }
    self->ring[slot] = e;
    self->tail++;
    return 0;
}

void seenset_del(seenset_t *self, const void *key, size_t len)
{
    int i = strmap_del(self->map, key, len);
    if (i < 0)
        return;
    free(self->ring[i].key);
    self->ring[i].key = NULL;
}

void seenset_prune(seenset_t *self, int done_state, int64_t before_ms)
{
    for (; self->head < self->tail; self->head++) {
        s_entry_t *e = &self->ring[self->head & (self->cap - 1)];
        if (e->key != NULL) {
            if (e->state != done_state || e->at_ms >= before_ms)
                break;
            strmap_del(self->map, e->key, e->len);
            free(e->key);
            e->key = NULL;
        }
    }
}

size_t seenset_size(const seenset_t *self)
{
    return strmap_size(self->map);
}
