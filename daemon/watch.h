/*
 * watch.h - the live stream for operators (`medroute watch`): counter
 * changes, escalations, indicator warnings.  Watchers subscribe with a
 * WatchRequest on the operator endpoint and renew it; they are dropped when
 * they stop (WatchRequest.stop), when their connection closes (the
 * endpoint's monitor: a `medroute watch` killed says no goodbye), when a
 * send finds it gone, after 120 s without renewal, or before the next
 * event once a reload has removed their operator key.  Loop thread.
 */
#ifndef MR_WATCH_H
#define MR_WATCH_H

#include "server.h"

/* Subscribes (or renews) the operator connection rid, admitted with key
 * (its User-Id; NULL when plaintext), whose fd is fd (ZMQ_SRCFD; -1
 * unknown).  Reads first the closes the endpoint's monitor has queued, so
 * that a connection given the fd number of one just closed is not taken
 * for it.  0, -EINVAL or -ENOSPC. */
int watch_subscribe(server_t *s, const uint8_t *rid, size_t rid_len, uint64_t request_id,
                    const char *key, int fd);
/* Ends the stream of the operator connection rid, if it has one. */
void watch_unsubscribe(server_t *s, const uint8_t *rid, size_t rid_len);
/* The operator connection of fd closed (the endpoint's monitor): its
 * stream ends, and its place among the MR_WATCHERS_MAX is free. */
void watch_on_closed(server_t *s, int fd);
/* Sends an event of kind with one line of text to every watcher. */
void watch_event(server_t *s, const char *kind, const char *text);
/* Periodic: sends counter changes since the last tick, drops watchers not
 * renewed for a while by mono_ms (mr_mono_ms()). */
void watch_tick(server_t *s, int64_t mono_ms);

#endif
