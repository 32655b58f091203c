/*
 * arena.c - one block, bumped; larger requests malloc'ed on a list.
 *
 * Invariants: used <= size; every pointer handed out since the last reset
 * is inside the block below used or on the big list.  Under AddressSanitizer
 * the block beyond used is poisoned, so a decoded field read after the reset
 * is reported as freed memory would be.
 */
#include "arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define S_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define S_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define S_POISON(p, n) ((void)(p), (void)(n))
#define S_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct s_big_t {
    struct s_big_t *next;
    max_align_t data[];
} s_big_t;

struct arena_t {
    ProtobufCAllocator pb;
    unsigned char *block;
    size_t size, used;
    s_big_t *big;
};

#define S_ALIGN alignof(max_align_t)

static void *s_pb_alloc(void *data, size_t size)
{
    return arena_alloc(data, size);
}

static void s_pb_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr; /* arena_reset() gives it back */
}

arena_t *arena_new(size_t block_size)
{
    arena_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->block = malloc(block_size ? block_size : 1);
    if (self->block == NULL) {
        free(self);
        return NULL;
    }
    self->size = block_size;
    S_POISON(self->block, self->size);
    self->pb = (ProtobufCAllocator){.alloc = s_pb_alloc, .free = s_pb_free, .allocator_data = self};
    return self;
}

void arena_destroy(arena_t **self_p)
{
    arena_t *self = *self_p;
    if (self == NULL)
        return;
    arena_reset(self);
    S_UNPOISON(self->block, self->size);
    free(self->block);
    free(self);
    *self_p = NULL;
}

void *arena_alloc(arena_t *self, size_t size)
{
    size_t need = (size + S_ALIGN - 1) & ~(S_ALIGN - 1);
    if (need >= size && self->size - self->used >= need) {
        void *p = self->block + self->used;
        self->used += need;
        S_UNPOISON(p, size);
        return p;
    }
    if (size > SIZE_MAX - sizeof(s_big_t))
        return NULL;
    s_big_t *b = malloc(sizeof *b + size);
    if (b == NULL)
        return NULL;
    b->next = self->big;
    self->big = b;
    return b->data;
}

void arena_reset(arena_t *self)
{
    while (self->big != NULL) {
        s_big_t *next = self->big->next;
        free(self->big);
        self->big = next;
    }
    S_POISON(self->block, self->used);
    self->used = 0;
}

ProtobufCAllocator *arena_pb(arena_t *self)
{
    return &self->pb;
}
