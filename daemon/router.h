/*
 * router.h - per-destination delivery: from the store to the facility, in
 * order, with a window of unacknowledged deliveries.
 *
 * Only a bounded window of each destination's queue is in memory (ready +
 * inflight); the rest stays in the store and is loaded in pages, so a
 * backlog of millions costs no memory.  Loop thread only.
 */
#ifndef MR_ROUTER_H
#define MR_ROUTER_H

#include "server.h"

/* Start-up: learns every destination's pending count from the store. */
int router_start(server_t *s);
/* After a reload that added facilities (indices first..count-1): learns
 * their pending counts from the store, which may hold a queue for one that
 * an earlier configuration listed.  0 or -ENOMEM. */
int router_count_added(server_t *s, size_t first);
/* A message for peer committed with seq; its body (packed Envelope) is
 * taken from row (row->body is then NULL) and freed by the router.  An
 * express message (a critical value or finding, or stat) goes ahead of
 * routine messages waiting in memory.  No message is sent once its expiry
 * has passed: the expiry scan dead-letters it, and a send racing the scan
 * would have the receiver handle what its sender is told was not delivered. */
void router_on_stored(server_t *s, int peer, uint64_t seq, store_row_t *row, bool express);
/* Sends what the window allows; loads more from the store when needed. */
void router_pump(server_t *s, int peer);
/* The facility's session ended: in-flight deliveries will be sent again. */
void router_on_disconnect(server_t *s, int peer);
/*
 * A repeated Hello on the connection of peer's session (a client that
 * restarted its session, which may have dropped what it was sent): its
 * in-flight deliveries will be sent again, but each at most once per
 * session by such a Hello.  One a repeated Hello of this session already put
 * back stays in flight, for its redelivery time-out (router_cron), and is
 * counted (resends_skipped), its count in *kept.  Returns the count put back.
 * The caller pumps (router_pump).
 */
size_t router_on_hello(server_t *s, int peer, size_t *kept);
/* Periodic: resends deliveries unacknowledged past the redelivery time-out,
 * measured on mono_ms (mr_mono_ms()), unless past their expiry at now_ms,
 * once their receiver has shown it reads (a DeliveryAck or a Heartbeat
 * since the last send; without one, once more at most: router.c
 * invariant 8). */
void router_cron(server_t *s, int64_t now_ms, int64_t mono_ms);

/* The seqs out at a facility at now_ms, sorted, their count in *n: sent less
 * than limits.redelivery_timeout_ms ago (a send not yet due again; one its
 * receiver never answers is out only for that long after each send), or
 * acknowledged with the commit on its way.  NULL when there are none or
 * without memory (*n is then 0). */
uint64_t *router_outstanding(const server_t *s, int64_t mono_ms, size_t *n);
/* A message of peer left the pending state outside a DeliveryAck (dead, expired). */
void router_forget(server_t *s, int peer, uint64_t seq);
/* A dead message of peer was put back to pending by an operator: row as the
 * store read it back, its body taken as by router_on_stored. */
void router_on_retried(server_t *s, int peer, store_row_t *row);
/* Frees the messages of peer held in memory (they stay in the store). */
void router_forget_memory(server_t *s, int peer);
/* Frees every message held in memory. */
void router_stop(server_t *s);

#endif
