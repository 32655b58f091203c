/*
 * arena.h - a bump allocator for what one inbound frame decodes to.
 *
 * protobuf-c allocates every field of a decoded frame on its own (the
 * frame, the envelope, each string and submessage: dozens of malloc/free
 * pairs a message).  Through arena_pb() they come from one block that
 * arena_reset() gives back at once when the frame has been handled;
 * nothing decoded may be kept past that (handlers copy what they keep, as
 * they did before free_unpacked).  Requests too large for what is left of
 * the block are malloc'ed and freed at the reset.  One owner, one thread.
 */
#ifndef MR_ARENA_H
#define MR_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct arena_t arena_t;

/* An arena whose block holds block_size bytes. NULL if out of memory. */
arena_t *arena_new(size_t block_size);
void arena_destroy(arena_t **self_p);

/* size bytes aligned for any type, or NULL if out of memory. */
void *arena_alloc(arena_t *self, size_t size);
/* Gives back everything allocated since the last reset. */
void arena_reset(arena_t *self);
/* The arena as a protobuf-c allocator: pass it to unpack, and do not call
 * free_unpacked (its frees are no-ops; arena_reset() frees). */
ProtobufCAllocator *arena_pb(arena_t *self);

#endif
