/*
 * strmap.c - linear-probing hash map, FNV-1a hashed, tombstones on delete,
 * grown to keep the load under 1/2.
 *
 * Invariants: capacity is a power of two; used + tombstones < capacity / 2;
 * a slot keeps its key's hash, so that a probe compares key bytes (another
 * cache line) only when the hashes are equal, and growth does not rehash.
 */
#include "strmap.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *key;     /* NULL: empty; s_tomb: deleted */
    size_t len;
    int value;
    uint32_t hash; /* the low half of s_hash(key) */
} s_slot_t;

struct strmap_t {
    s_slot_t *slots;
    size_t cap;
    size_t used;
    size_t tombs;
};

static char s_tomb_mark;
#define S_TOMB ((void *)&s_tomb_mark)

static uint32_t s_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return (uint32_t)h;
}

strmap_t *strmap_new(void)
{
    strmap_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->cap = 16;
    self->slots = calloc(self->cap, sizeof *self->slots);
    if (self->slots == NULL) {
        free(self);
        return NULL;
    }
    return self;
}

void strmap_destroy(strmap_t **self_p)
{
    strmap_t *self = *self_p;
    if (self == NULL)
        return;
    for (size_t i = 0; i < self->cap; i++)
        if (self->slots[i].key != NULL && self->slots[i].key != S_TOMB)
            free(self->slots[i].key);
    free(self->slots);
    free(self);
    *self_p = NULL;
}

/* The slot holding key (of hash h), or the first free slot where it would go. */
static s_slot_t *s_find(const strmap_t *self, const void *key, size_t len, uint32_t h,
                        int for_insert)
{
    size_t mask = self->cap - 1;
    size_t i = (size_t)h & mask;
    s_slot_t *first_tomb = NULL;
    for (;;) {
        s_slot_t *s = &self->slots[i];
        if (s->key == NULL)
            return for_insert && first_tomb ? first_tomb : (for_insert ? s : NULL);
        if (s->key == S_TOMB) {
            if (first_tomb == NULL)
                first_tomb = s;
        } else if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) {
            return s;
        }
        i = (i + 1) & mask;
    }
}

static int s_grow(strmap_t *self)
{
    s_slot_t *old = self->slots;
    size_t old_cap = self->cap;
    size_t cap = self->used * 4 > old_cap ? old_cap * 2 : old_cap;
    s_slot_t *slots = calloc(cap, sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    self->slots = slots;
    self->cap = cap;
    self->tombs = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key == NULL || old[i].key == S_TOMB)
            continue;
        s_slot_t *s = s_find(self, old[i].key, old[i].len, old[i].hash, 1);
        *s = old[i];
    }
    free(old);
    return 0;
}

int strmap_put(strmap_t *self, const void *key, size_t len, int value)
{
    uint32_t h = s_hash(key, len);
    s_slot_t *s = s_find(self, key, len, h, 0);
    if (s != NULL) {
        s->value = value;
        return 0;
    }
    if ((self->used + self->tombs + 1) * 2 > self->cap) {
        int rc = s_grow(self);
        if (rc < 0)
            return rc;
    }
    s = s_find(self, key, len, h, 1);
    void *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, key, len);
    if (s->key == S_TOMB)
        self->tombs--;
    s->key = copy;
    s->len = len;
    s->value = value;
    s->hash = h;
    self->used++;
    return 0;
}

int strmap_get(const strmap_t *self, const void *key, size_t len)
{
    s_slot_t *s = s_find(self, key, len, s_hash(key, len), 0);
    return s ? s->value : -1;
}

int strmap_del(strmap_t *self, const void *key, size_t len)
{
    s_slot_t *s = s_find(self, key, len, s_hash(key, len), 0);
    if (s == NULL)
        return -1;
    int value = s->value;
    free(s->key);
    s->key = S_TOMB;
    s->len = 0;
    self->used--;
    self->tombs++;
    return value;
}

size_t strmap_size(const strmap_t *self)
{
    return self->used;
}
