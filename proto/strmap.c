/*
 * strmap.c - linear-probing hash map, tombstones on delete, grown to keep the
 * load under 1/2.
 *
 * Keys come from peers (routing ids, message ids in a seen-set), so the hash
 * is keyed: SipHash-1-3 (Aumasson and Bernstein, "SipHash: a fast short-input
 * PRF", 2012; 1-3 is the round count hash tables use) under a 128-bit key
 * each map draws from getrandom(2).  With an unkeyed hash a sender can choose
 * ids that all share one hash, and every lookup then walks all of them.
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
#include <sys/random.h>

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
    uint64_t k0, k1; /* the hash key */
};

static char s_tomb_mark;
#define S_TOMB ((void *)&s_tomb_mark)

static uint64_t s_rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* Little-endian whatever the host, so that a key hashes alike everywhere;
 * n <= 8. */
static uint64_t s_load_le(const unsigned char *p, size_t n)
{
    uint64_t w = 0;
    memcpy(&w, p, n);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static void s_sipround(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = s_rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = s_rotl(v[0], 32);
    v[2] += v[3];
    v[3] = s_rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = s_rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = s_rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = s_rotl(v[2], 32);
}

static void s_compress(uint64_t v[4], uint64_t m)
{
    v[3] ^= m;
    s_sipround(v);
    v[0] ^= m;
}

/* SipHash-1-3 of key under (k0, k1), its low 32 bits: one round per 8-byte
 * word, the last word holding the tail and the length's low byte, then three
 * rounds. */
static uint32_t s_hash(const strmap_t *self, const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t v[4] = {
        self->k0 ^ 0x736f6d6570736575ULL, /* "somepseudorandomlygeneratedbytes" */
        self->k1 ^ 0x646f72616e646f6dULL,
        self->k0 ^ 0x6c7967656e657261ULL,
        self->k1 ^ 0x7465646279746573ULL,
    };
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8)
        s_compress(v, s_load_le(p + i, 8));
    /* The tail by hand: a memcpy of a variable length is a call, a loop
     * slower still (keys of 16 bytes: 25 against 30 ns a lookup). */
    uint64_t last = (uint64_t)len << 56;
    switch (len % 8) {
    case 7: last |= (uint64_t)p[whole + 6] << 48; /* fall through */
    case 6: last |= (uint64_t)p[whole + 5] << 40; /* fall through */
    case 5: last |= (uint64_t)p[whole + 4] << 32; /* fall through */
    case 4: last |= (uint64_t)p[whole + 3] << 24; /* fall through */
    case 3: last |= (uint64_t)p[whole + 2] << 16; /* fall through */
    case 2: last |= (uint64_t)p[whole + 1] << 8; /* fall through */
    case 1: last |= (uint64_t)p[whole]; /* fall through */
    default: break;
    }
    s_compress(v, last);
    v[2] ^= 0xff;
    s_sipround(v);
    s_sipround(v);
    s_sipround(v);
    return (uint32_t)(v[0] ^ v[1] ^ v[2] ^ v[3]);
}

strmap_t *strmap_new_keyed(const uint8_t key[16])
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
    self->k0 = s_load_le(key, 8);
    self->k1 = s_load_le(key + 8, 8);
    return self;
}

strmap_t *strmap_new(void)
{
    uint8_t key[16];
    /* At most 256 bytes: once the pool is ready (it blocks before), never
     * cut short by a signal. */
    if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key)
        return NULL;
    return strmap_new_keyed(key);
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
    uint32_t h = s_hash(self, key, len);
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
    s_slot_t *s = s_find(self, key, len, s_hash(self, key, len), 0);
    return s ? s->value : -1;
}

int strmap_del(strmap_t *self, const void *key, size_t len)
{
    s_slot_t *s = s_find(self, key, len, s_hash(self, key, len), 0);
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

uint32_t strmap_hash(const strmap_t *self, const void *key, size_t len)
{
    return s_hash(self, key, len);
}
