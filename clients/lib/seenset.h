/*
 * seenset.h - the seen-set of a client without a state directory, in memory.
 *
 * Keys are byte strings (cstore.c makes them from source and message id);
 * each has a state (cstore.h's seen_state_t) and the time it was set.  A
 * hash map finds a key; a ring in the order keys were first set lets
 * seenset_prune() forget the oldest without a scan, so a receiver that runs
 * for months holds only the keep window.  Internal to libmedroute; one thread.
 */
#ifndef MR_SEENSET_H
#define MR_SEENSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct seenset_t seenset_t;

seenset_t *seenset_new(void);
void seenset_destroy(seenset_t **self_p);

/* The state set for key, or 0 if none. */
int seenset_get(const seenset_t *self, const void *key, size_t len);
/* Sets key's state (> 0) and time, adding it if new. 0 or -ENOMEM. */
int seenset_set(seenset_t *self, const void *key, size_t len, int state, int64_t at_ms);
void seenset_del(seenset_t *self, const void *key, size_t len);
/* Forgets, oldest first, keys in state done_state set before before_ms;
 * stops at the first key that is newer or in another state. */
void seenset_prune(seenset_t *self, int done_state, int64_t before_ms);
size_t seenset_size(const seenset_t *self);

#endif
