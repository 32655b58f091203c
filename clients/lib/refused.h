/*
 * refused.h - the submissions a client saw refused for good while copies
 * of them were still unanswered, one of which may yet be stored.
 *
 * The broker answers every copy it receives, and some final refusals hold
 * for a moment only: QUEUE_FULL (the destination's queue drains), a
 * lifecycle step or an order not open yet (ILLEGAL_TRANSITION, FORBIDDEN),
 * a registry or limit a reload changes.  So one copy of a submission may
 * be refused and another, sent before that refusal came (Ack time-out,
 * reconnect), stored and acknowledged after it; a refusal made before the
 * store is also answered at once, ahead of the Ack of an earlier copy
 * still in the store's batch.  The application was told "refused": this
 * table keeps, by submission tag, the code it was told, so that the Ack
 * of such a copy is told too.
 *
 * Bounded: the oldest entries go first beyond REFUSED_MAX.  Internal to
 * libmedroute; one thread.
 */
#ifndef MR_REFUSED_H
#define MR_REFUSED_H

#include <stdbool.h>
#include <stdint.h>

#define REFUSED_MAX 1024

typedef struct refused_t refused_t;

/* NULL without memory.  Caller owns the result. */
refused_t *refused_new(void);
void refused_destroy(refused_t **self_p);

/* Remembers that the submission of tag (not 0) was reported refused with
 * code while `late` copies of it (more than 0) were unanswered. */
void refused_put(refused_t *self, uint64_t tag, int code, unsigned late);

/*
 * An answer of tag that settled no outbox entry.  An Ack: the code of the
 * refusal it overturns, and tag is forgotten (the Acks of its other copies
 * are duplicates of the same message); 0 if tag is not remembered.  A
 * refusal (ack false): one copy fewer to come; 0.
 */
int refused_answered(refused_t *self, uint64_t tag, bool ack);

#endif
