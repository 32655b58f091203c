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

typedef struct strmap_t strmap_t;

strmap_t *strmap_new(void);
void strmap_destroy(strmap_t **self_p);

/* Sets key -> value (value >= 0), replacing any earlier value. 0 or -ENOMEM. */
int strmap_put(strmap_t *self, const void *key, size_t len, int value);
/* The value for key, or -1. */
int strmap_get(const strmap_t *self, const void *key, size_t len);
/* Removes key if present: its value, or -1 if it was not there. */
int strmap_del(strmap_t *self, const void *key, size_t len);
size_t strmap_size(const strmap_t *self);

#endif
