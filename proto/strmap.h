/*
 * strmap.h - a small open-addressing hash map from byte strings to ints.
 *
 * Keys are copied in; values are non-negative ints (indexes into a table the
 * caller owns).  In the daemon: facility id -> registry index, ZeroMQ routing
 * id -> facility index, tally keys; in libmedroute: the seen-set in memory.
 * Not thread-safe: one owner.
 */
#ifndef MR_STRMAP_H
#define MR_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct strmap_t strmap_t;

/* A map hashing under a key of its own from getrandom(2); NULL if out of
 * memory or if no random bytes could be had. */
strmap_t *strmap_new(void);
/* A map hashing under the key given: for tests, which need to know where
 * keys go.  Anything else calls strmap_new. */
strmap_t *strmap_new_keyed(const uint8_t key[16]);
void strmap_destroy(strmap_t **self_p);

/* Sets key -> value (value >= 0), replacing any earlier value. 0 or -ENOMEM. */
int strmap_put(strmap_t *self, const void *key, size_t len, int value);
/* The value for key, or -1. */
int strmap_get(const strmap_t *self, const void *key, size_t len);
/* Removes key if present: its value, or -1 if it was not there. */
int strmap_del(strmap_t *self, const void *key, size_t len);
size_t strmap_size(const strmap_t *self);
/* The hash a key is placed by in this map (its slot: the hash modulo the
 * capacity, a power of two): for tests. */
uint32_t strmap_hash(const strmap_t *self, const void *key, size_t len);

#endif
