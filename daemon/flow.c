/*
 * flow.c - intake back-pressure (flow.h).
 *
 * A uv_check handle runs after each loop turn's I/O, when the turn has run
 * the store completions that woke it: it resumes reading.  The pause is
 * checked after each frame as well (flow_after_frame), not only at the
 * turn's end: a turn reads up to an endpoint budget of frames (512), and a
 * DeliveryAck frame is up to MR_ACKS_PER_FRAME_MAX requests, so a turn
 * could queue half a million of them (~400 MB) from a facility sending
 * acks of seqs it was never sent.  Hysteresis (pause at high, resume at
 * high / 2) keeps a saturated store fed with full batches without pausing
 * and resuming every turn.
 *
 * Invariants
 *   1. paused == true exactly while this module holds the endpoint paused.
 *   2. The queue exceeds high by at most one frame's requests (a DeliveryAck's
 *      MR_ACKS_PER_FRAME_MAX): the endpoint stops reading at the frame that
 *      brought it to high.
 */
#include "flow.h"

#include <stdbool.h>
#include <stdlib.h>

#include "server.h"

#define S_LOG_EVERY_MS 10000

struct flow_t {
    uv_check_t check;
    struct server_t *s;
    size_t high, low;
    size_t peak;
    bool paused;
    int64_t resumed_ms;     /* when reading last resumed, mr_mono_ms(); 0: never paused */
    int64_t last_log_ms;
    uint64_t pauses_unlogged;
};

static void s_check(flow_t *self)
{
    server_t *s = self->s;
    if (s->store == NULL || s->facility_ep == NULL)
        return;
    size_t queued = store_backlog(s->store);
    if (queued > self->peak)
        self->peak = queued;
    if (!self->paused && queued >= self->high) {
        self->paused = true;
        endpoint_pause(s->facility_ep, 1);
        s->counters.v[CNT_INTAKE_PAUSED]++;
        self->pauses_unlogged++;
        /* A burst pauses many times a second: one line per 10 s says so. */
        int64_t now = mr_mono_ms();
        if (now - self->last_log_ms >= S_LOG_EVERY_MS) {
            log_info(s->log, "flow.paused", "store_queue=%zu high=%zu pauses=%llu", queued,
                     self->high, (unsigned long long)self->pauses_unlogged);
            self->last_log_ms = now;
            self->pauses_unlogged = 0;
        }
    } else if (self->paused && queued <= self->low) {
        self->paused = false;
        self->resumed_ms = mr_mono_ms();
        endpoint_pause(s->facility_ep, 0);
    }
}

static void on_check(uv_check_t *handle)
{
    s_check(handle->data);
}

void flow_after_frame(flow_t *self)
{
    if (self != NULL && !self->paused)
        s_check(self);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle->data);
}

flow_t *flow_new(uv_loop_t *loop, struct server_t *s, size_t high)
{
    flow_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->s = s;
    self->high = high > 2 ? high : 2;
    self->low = self->high / 2;
    if (uv_check_init(loop, &self->check) != 0) {
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

size_t flow_peak(const flow_t *self)
{
    return self ? self->peak : 0;
}

int64_t flow_heard_since(const flow_t *self)
{
    if (self == NULL)
        return 0;
    return self->paused ? INT64_MAX : self->resumed_ms;
}

void flow_close(flow_t **self_p)
{
    flow_t *self = *self_p;
    if (self == NULL)
        return;
    if (self->paused && self->s->facility_ep != NULL)
        endpoint_pause(self->s->facility_ep, 0);
    self->paused = false;
    uv_close((uv_handle_t *)&self->check, on_closed);
    *self_p = NULL;
}
