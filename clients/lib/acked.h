/*
 * acked.h - the messages a client saw acknowledged after sending them more
 * than once, whose later sends may still be answered (late Acks).
 *
 * The broker answers every copy it receives, so a message resent (Ack
 * time-out, reconnect) can draw a second Ack after the first took it out
 * of the outbox.  If the application meanwhile submitted the same id with
 * other content, that late Ack names the id of the new submission but
 * answers the old one: the broker refuses the new one as CONFLICT.  This
 * table keeps, for each such id, the seq it was acknowledged as and the
 * content acknowledged, so that the client can tell the two apart.
 *
 * Bounded: the oldest entries go first beyond ACKED_MAX entries or
 * ACKED_MAX_BYTES of content.  Internal to libmedroute; one thread.
 */
#ifndef MR_ACKED_H
#define MR_ACKED_H

#include <stddef.h>
#include <stdint.h>

#define ACKED_MAX 1024
#define ACKED_MAX_BYTES (16u << 20)

typedef struct acked_t acked_t;

/* NULL without memory.  Caller owns the result. */
acked_t *acked_new(void);
void acked_destroy(acked_t **self_p);

/*
 * Remembers that message id (1..MR_MESSAGE_ID_MAX bytes), with content
 * body (malloc'ed, of len bytes; ownership passes to the table, whatever
 * the result), was acknowledged as seq, and that up to `late` answers to
 * its other sends may still come.  Replaces an earlier entry of id; one of
 * the same seq (the same message, sent again) adds its late answers still
 * owed, as the Ack that acknowledged this one may have been one of them.
 * 0; -EINVAL (id empty or too long, or len over ACKED_MAX_BYTES) or -ENOMEM:
 * nothing remembered, body freed.
 */
int acked_put(acked_t *self, const char *id, uint64_t seq, uint8_t *body, size_t len,
              unsigned late);

/* The seq that id was acknowledged as, with content other than body (equal
 * but for created_at_ms counts as the same, as for the broker), or 0 when
 * id is not remembered or its content was the same. */
uint64_t acked_other_seq(const acked_t *self, const char *id, const uint8_t *body, size_t len);

/* An Ack of id as seq that answered none of the outbox: one of the late
 * answers came; once they all have, id is forgotten. */
void acked_answered(acked_t *self, const char *id, uint64_t seq);

/* Ids remembered. */
size_t acked_count(const acked_t *self);

#endif
