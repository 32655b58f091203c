/*
 * flow.h - intake back-pressure: the facility endpoint stops reading while
 * the store's queue is long.
 *
 * The loop reads frames faster than the store commits them only in a burst:
 * the outboxes of townships back after a night offline, a morning of lab
 * results from many facilities at once, each within its rate limit.  Read
 * whole, such a burst sat in memory as store requests (~3.5 KB each: 650-730
 * MB for 200,000 messages in the benchmark), and every frame read after it
 * waited for all of it, a critical value from another facility included.
 * Not reading leaves the burst where it is bounded and safe: in ZeroMQ's
 * queue per connection (RCVHWM), in the TCP buffers, and in the senders'
 * outboxes, which keep every message until its Ack.  ZeroMQ reads its
 * connections in turn, so a quiet facility's frame waits behind at most a
 * queue's worth of the others', not behind the whole burst.
 *
 * Loop thread only.
 */
#ifndef MR_FLOW_H
#define MR_FLOW_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server_t;
typedef struct flow_t flow_t;

/*
 * Watches the store's queue once per loop turn (and after each frame read,
 * flow_after_frame): at high requests or more it pauses the server's
 * facility endpoint, at high / 2 or fewer it resumes it.
 * Store completions wake the loop, so no timer is needed to resume.  Each
 * pause is counted (CNT_INTAKE_PAUSED).  NULL without memory or handle.
 */
flow_t *flow_new(uv_loop_t *loop, struct server_t *s, size_t high);
/*
 * After each frame the facility endpoint hands over: pauses it at once if
 * that frame brought the store's queue to high, so that the rest of the
 * turn's budget is not read (a DeliveryAck is up to MR_ACKS_PER_FRAME_MAX
 * requests).  Nothing without self.
 */
void flow_after_frame(flow_t *self);
/* The store queue's longest length seen after a frame or at a loop turn's end. */
size_t flow_peak(const flow_t *self);
/*
 * Since when the endpoint has been reading without a pause: INT64_MAX while
 * paused, the time it last resumed, or 0 if it never paused (or self is
 * NULL).  A facility's silence can only be judged from then (session.c).
 */
int64_t flow_heard_since(const flow_t *self);
/* Resumes the endpoint if it is paused (and still there), then closes the
 * handle; the memory goes with its close callback. */
void flow_close(flow_t **self_p);

#endif
