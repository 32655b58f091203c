/*
 * acks.c - the Acks of one loop turn, one frame per sender (acks.h).
 *
 * A group per connection that has Acks waiting, found by routing id through
 * a strmap (one turn may complete messages from hundreds of senders).
 * Groups keep their buffers from turn to turn, each grown to what its
 * connection needed in one turn (at most MR_ACKS_SENT_MAX Acks: a busy
 * sender ~35 KB, a quiet one ~2 KB).  A group that fills up is sent at once.
 */
#include "acks.h"

#include <stdlib.h>
#include <string.h>

#include "mr_codec.h"
#include "server.h"
#include "strmap.h"

typedef struct {
    uint8_t rid[MR_RID_MAX];
    size_t rid_len;
    uint32_t max;                     /* Acks per frame for this connection */
    size_t n, cap;                    /* Acks waiting; room for (grows to max) */
    Medroute__V1__Ack *acks;
    Medroute__V1__Ack **more;         /* &acks[i], set when the frame is sent */
    char (*ids)[MR_MESSAGE_ID_MAX + 1];
} s_group_t;

struct acks_t {
    uv_check_t check;
    struct server_t *s;
    s_group_t **groups;
    size_t n_groups, cap_groups;      /* groups in use this turn, allocated */
    strmap_t *index;                  /* routing id -> group in use this turn */
    bool pending;
};

static void s_send(acks_t *self, const uint8_t *rid, size_t rid_len, Medroute__V1__Ack *first,
                   Medroute__V1__Ack **more, size_t n_more)
{
    first->n_more = n_more;
    first->more = n_more ? more : NULL;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = first;
    (void)server_send_facility(self->s, rid, rid_len, &f.base); /* counted there */
}

/* Sends what g holds, in frames of at most g->max Acks (more than one only
 * when a Hello lowered it meanwhile: acks_limit). */
static void s_flush_group(acks_t *self, s_group_t *g)
{
    for (size_t i = 0; i < g->n; i++)
        g->more[i] = &g->acks[i];
    for (size_t at = 0; at < g->n; at += g->max) {
        size_t k = g->n - at < g->max ? g->n - at : g->max;
        s_send(self, g->rid, g->rid_len, &g->acks[at], g->more + at + 1, k - 1);
    }
    g->n = 0;
}

/* Room for one more Ack in g; false without memory (g is then unchanged
 * in what it holds, only some of its arrays may have grown). */
static bool s_room(s_group_t *g)
{
    if (g->n < g->cap)
        return true;
    size_t cap = g->cap ? g->cap * 2 : 16;
    if (cap > MR_ACKS_SENT_MAX)
        cap = MR_ACKS_SENT_MAX;
    char(*ids)[MR_MESSAGE_ID_MAX + 1] = realloc(g->ids, cap * sizeof *ids);
    if (ids == NULL)
        return false;
    g->ids = ids;
    for (size_t i = 0; i < g->n; i++)
        g->acks[i].message_id = g->ids[i]; /* the ids may have moved */
    Medroute__V1__Ack *acks = realloc(g->acks, cap * sizeof *acks);
    if (acks == NULL)
        return false;
    g->acks = acks;
    Medroute__V1__Ack **more = realloc(g->more, cap * sizeof *more);
    if (more == NULL)
        return false;
    g->more = more;
    g->cap = cap;
    return true;
}

void acks_flush(acks_t *self)
{
    if (self == NULL || !self->pending)
        return;
    for (size_t i = 0; i < self->n_groups; i++) {
        s_group_t *g = self->groups[i];
        s_flush_group(self, g);
        strmap_del(self->index, g->rid, g->rid_len);
    }
    self->n_groups = 0;
    self->pending = false;
}

void acks_limit(acks_t *self, const uint8_t *rid, size_t rid_len, uint32_t max)
{
    int at = self != NULL ? strmap_get(self->index, rid, rid_len) : -1;
    if (at < 0)
        return; /* nothing queued for it this turn */
    s_group_t *g = self->groups[at];
    g->max = max < 1 ? 1 : max < MR_ACKS_SENT_MAX ? max : MR_ACKS_SENT_MAX;
    if (g->n >= g->max)
        s_flush_group(self, g);
}

static void on_check(uv_check_t *handle)
{
    acks_flush(handle->data);
}

/* The group of this connection, a new one, or NULL without memory. */
static s_group_t *s_group(acks_t *self, const uint8_t *rid, size_t rid_len, uint32_t max)
{
    int at = strmap_get(self->index, rid, rid_len);
    if (at >= 0)
        return self->groups[at];
    if (self->n_groups == self->cap_groups) {
        size_t cap = self->cap_groups ? self->cap_groups * 2 : 8;
        s_group_t **gs = realloc(self->groups, cap * sizeof *gs);
        if (gs == NULL)
            return NULL;
        memset(gs + self->cap_groups, 0, (cap - self->cap_groups) * sizeof *gs);
        self->groups = gs;
        self->cap_groups = cap;
    }
    s_group_t *g = self->groups[self->n_groups];
    if (g == NULL) {
        g = calloc(1, sizeof *g);
        if (g == NULL)
            return NULL;
        self->groups[self->n_groups] = g;
    }
    if (strmap_put(self->index, rid, rid_len, (int)self->n_groups) != 0)
        return NULL;
    self->n_groups++;
    self->pending = true; /* the group is released at the end of the turn */
    memcpy(g->rid, rid, rid_len);
    g->rid_len = rid_len;
    g->max = max < MR_ACKS_SENT_MAX ? max : MR_ACKS_SENT_MAX;
    g->n = 0;
    return g;
}

void acks_add(acks_t *self, const uint8_t *rid, size_t rid_len, uint32_t max,
              const char *message_id, uint64_t seq, bool duplicate, uint64_t submission_tag)
{
    if (self == NULL)
        return; /* closed: the sockets are gone, the sender resends */
    Medroute__V1__Ack one = MEDROUTE__V1__ACK__INIT;
    one.message_id = (char *)message_id;
    one.seq = seq;
    one.duplicate = duplicate;
    one.submission_tag = submission_tag;
    size_t id_len = strlen(message_id);
    s_group_t *g = max > 1 && rid_len <= MR_RID_MAX && id_len <= MR_MESSAGE_ID_MAX
                       ? s_group(self, rid, rid_len, max)
                       : NULL;
    if (g != NULL && !s_room(g))
        s_flush_group(self, g); /* no memory to grow: what it holds goes now */
    if (g == NULL || g->n == g->cap) {
        s_send(self, rid, rid_len, &one, NULL, 0); /* a frame of its own */
        return;
    }
    Medroute__V1__Ack *a = &g->acks[g->n];
    *a = one;
    memcpy(g->ids[g->n], message_id, id_len + 1);
    a->message_id = g->ids[g->n];
    g->n++;
    self->pending = true;
    if (g->n >= g->max)
        s_flush_group(self, g);
}

static void on_closed(uv_handle_t *handle)
{
    acks_t *self = handle->data;
    for (size_t i = 0; i < self->cap_groups; i++) {
        s_group_t *g = self->groups[i];
        if (g != NULL) {
            free(g->acks);
            free(g->more);
            free(g->ids);
        }
        free(g);
    }
    free(self->groups);
    strmap_destroy(&self->index);
    free(self);
}

acks_t *acks_new(uv_loop_t *loop, struct server_t *s)
{
    acks_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->s = s;
    self->index = strmap_new();
    if (self->index == NULL || uv_check_init(loop, &self->check) != 0) {
        strmap_destroy(&self->index);
        free(self);
        return NULL;
    }
    self->check.data = self;
    if (uv_check_start(&self->check, on_check) != 0) {
        uv_close((uv_handle_t *)&self->check, on_closed); /* the teardown's loop run frees it */
        return NULL;
    }
    return self;
}

void acks_close(acks_t **self_p)
{
    acks_t *self = *self_p;
    if (self == NULL)
        return;
    acks_flush(self);
    uv_close((uv_handle_t *)&self->check, on_closed);
    *self_p = NULL;
}
