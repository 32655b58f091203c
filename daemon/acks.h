/*
 * acks.h - the Acks of one loop turn, sent to each sender in one frame.
 *
 * A store batch completes many messages at once.  A sender whose Hello
 * allows it (max_acks_per_frame > 1) gets the Acks of a loop turn in one
 * frame, sent when the turn's I/O is done (a uv_check handle), instead of
 * one frame each: fewer frames on a slow link, less work on both sides.
 * Acks are grouped by connection (routing id), not by facility index, so a
 * reload or a new session later in the same turn cannot misdirect them.
 * Loop thread only.
 */
#ifndef MR_ACKS_H
#define MR_ACKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server_t;
typedef struct acks_t acks_t;

/* Acks one of our frames carries at most, whatever a Hello allows. */
#define MR_ACKS_SENT_MAX 256

acks_t *acks_new(uv_loop_t *loop, struct server_t *s);
/* Queues an Ack for the connection rid; max is what its Hello allows (0 or 1:
 * sent at once, in a frame of its own).  Nothing after acks_close. */
void acks_add(acks_t *self, const uint8_t *rid, size_t rid_len, uint32_t max,
              const char *message_id, uint64_t seq, bool duplicate, uint64_t submission_tag);
/* The connection rid said Hello again and allows max Acks per frame from
 * now on: those queued for it this turn go in frames of at most that many
 * (a group otherwise keeps the max of its first Ack until the turn ends). */
void acks_limit(acks_t *self, const uint8_t *rid, size_t rid_len, uint32_t max);
/* Sends every queued Ack now. */
void acks_flush(acks_t *self);
/* Flushes, then closes the handle; the memory goes with its close callback. */
void acks_close(acks_t **self_p);

#endif
