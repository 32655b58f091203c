/*
 * session.h - which connection speaks for which facility.
 *
 * A connection is bound to a facility by Hello; a later Hello for the same
 * facility from another connection takes its place (and its queue: unacked
 * deliveries go again, marked redelivered).  A Hello again on the same
 * connection restarts the session: its deliveries in flight go again, each
 * at most once per session that way (router_on_hello).  Silence longer than
 * the heartbeat time-out ends a session.  Loop thread only.
 */
#ifndef MR_SESSION_H
#define MR_SESSION_H

#include "server.h"

/* Registry index of the facility bound to rid, or -1. */
int session_find(const server_t *s, const uint8_t *rid, size_t rid_len);
/*
 * The facility a frame from rid speaks for, or -1: the session bound to rid,
 * if key (the connection's CURVE public key, Z85, its User-Id; NULL without
 * CURVE) is the key that session's Hello came with.  A session whose routing
 * id another key now uses (its connection gone, the id reused by another
 * client) is ended here, counted and logged: the key, never the routing id,
 * says who is speaking.
 */
int session_of(server_t *s, const uint8_t *rid, size_t rid_len, const char *key);
/*
 * The facility whose last ended session had rid, or -1: where a DeliveryAck
 * from a connection without a session counts.  A connection's acks may
 * reach the broker after its session ended: its close is read from the
 * socket's monitor, apart from its frames, and may be read first; a session
 * times out on a stalled link while its connection stays; another
 * connection's Hello replaces it.  The ack is true all the same, and
 * refusing it would hand the message to the facility a second time.  Only
 * with the key that session's Hello came with (NULL without CURVE), while
 * that key may still say Hello for the facility (not replaced by a rotation
 * the facility has switched to, not given to another facility), and not for
 * a facility removed since.  Without CURVE the routing id alone decides.
 */
int session_former(const server_t *s, const uint8_t *rid, size_t rid_len, const char *key);
/* The connection with fd closed (endpoint_watch): the session bound to it
 * ends at once, so that its routing id, free again in ZeroMQ, takes no
 * deliveries for it until another connection says Hello.  A Hello reads
 * the closes queued before it first (endpoint_check_closed), so that a new
 * connection on a reused fd number is not ended for the old one's close. */
void session_on_closed(server_t *s, int fd);
/* Ends peer's session and forgets the key it came with (a removal by a
 * reload): a connection still open with that key cannot say Hello again. */
void session_revoke(server_t *s, int peer, const char *why);
/* After a reload: revokes every session whose key is now another
 * facility's or an operator's (it speaks for that one now). */
void session_keys_reassigned(server_t *s);
/* Records that the facility was heard from now. */
void session_touch(server_t *s, int peer);
/* Records that the facility showed now that it reads (a DeliveryAck or a
 * Heartbeat on its session's connection): what it left unacknowledged may
 * be sent again (router_cron). */
void session_reads(server_t *s, int peer);
/* Ends the session of peer (connection gone or replaced). */
void session_end(server_t *s, int peer, const char *why);
/* Periodic, at every cron tick: a heartbeat (stamped now_ms) to each
 * session whose interval has passed since the last one, and the end of
 * each session found silent then for longer than its time-out (both its
 * Welcome's), on mono_ms (mr_mono_ms()). */
void session_cron(server_t *s, int64_t now_ms, int64_t mono_ms);

#endif
