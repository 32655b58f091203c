/*
 * cron.h - the daemon's periodic work, in one place (after Redis's
 * serverCron): heartbeats and session time-outs, redelivery, expiry to
 * dead letters, pruning of delivered messages, store size, the log lines of
 * a store stall.  Loop thread.
 */
#ifndef MR_CRON_H
#define MR_CRON_H

#include "server.h"

#define MR_CRON_INTERVAL_MS 100

/* The uv_timer callback; handle->data is the server. */
void cron_tick(uv_timer_t *handle);

#endif
