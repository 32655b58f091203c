/*
 * endpoint.h - a ZeroMQ ROUTER socket driven by the libuv loop.
 *
 * ZMQ_FD is edge-triggered: after a poll wake-up the socket is drained while
 * ZMQ_EVENTS reports input, at most `budget` messages per turn; the rest is
 * left to a uv_idle handle so other sockets and timers get their turn.  Any
 * send made from a callback may consume the edge, so every send re-arms the
 * idle handle to look at ZMQ_EVENTS again before the loop sleeps.
 *
 * Thread: loop thread only.
 */
#ifndef MR_ENDPOINT_H
#define MR_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zmq.h>

#include "log.h"

typedef struct endpoint_t endpoint_t;

/*
 * Called for each message received: the peer's routing id and the message
 * parts after it (parts[0..n_parts)).  The data is valid only during the
 * call.  n_parts is capped at 4; `truncated` says more parts were dropped.
 */
typedef void (*endpoint_msg_cb)(void *arg, const uint8_t *rid, size_t rid_len,
                                const void *const *parts, const size_t *sizes, size_t n_parts,
                                int truncated);

typedef struct {
    const char *name;         /* for logs: "facility", "operator" */
    const char *bind;         /* ZeroMQ endpoint */
    int hard_max_bytes;       /* ZMQ_MAXMSGSIZE: larger frames drop the connection */
    int sndhwm, rcvhwm;
    int budget;               /* messages per loop turn */
    int heartbeat_ivl_ms;     /* ZMTP heartbeats, 0 = off */
    int heartbeat_timeout_ms;
    const char *curve_secret; /* Z85 server secret key: CURVE on; NULL = plaintext */
    const char *zap_domain;   /* ZAP domain (enforced) when CURVE is on */
    int handshake_ms;         /* ZMQ_HANDSHAKE_IVL; 0 = libzmq default */
} endpoint_opts_t;

/* Creates, configures and binds the socket.  Any failing setsockopt or bind
 * fails the whole call (NULL, reason logged). */
endpoint_t *endpoint_new(uv_loop_t *loop, void *zctx, const endpoint_opts_t *opts,
                         endpoint_msg_cb cb, void *arg, log_t *log);
/* Closes the socket and the uv handles; memory is freed from close callbacks. */
void endpoint_destroy(endpoint_t **self_p);

/*
 * Sends [rid][data] without blocking.  0 on success; -EHOSTUNREACH when the
 * peer is gone; -EAGAIN when its queue is full; other negative errno codes.
 */
int endpoint_send(endpoint_t *self, const uint8_t *rid, size_t rid_len, const void *data,
                  size_t len);
/* The same with a message built in place (no copy); msg is consumed either
 * way.  endpoint_send copies data into such a message. */
int endpoint_send_msg(endpoint_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg);

/*
 * The authenticated User-Id (ZAP) of the message being handed to the
 * callback, or NULL (plaintext, or missing).  Valid only during the callback.
 */
const char *endpoint_user_id(const endpoint_t *self);

/* The fd of the connection the message being handed to the callback came
 * on (ZMQ_SRCFD), or -1.  Valid only during the callback. */
int endpoint_src_fd(const endpoint_t *self);

/* Called with the fd of each connection of the endpoint that closed. */
typedef void (*endpoint_gone_cb)(void *arg, int fd);
/*
 * Reports every connection that closes (the socket's monitor): so that a
 * session bound to a routing id ends with its connection, before another
 * client could take that routing id.  0, or -1 (logged).
 */
int endpoint_watch(endpoint_t *self, uv_loop_t *loop, void *zctx, endpoint_gone_cb gone,
                   void *arg);

/*
 * Reports now the closes the monitor has queued (endpoint_watch), as its
 * poll would on the next loop turn.  For a Hello: a close ZeroMQ reported
 * before that frame came is handled before it, so that a connection given
 * the fd number of one just closed is not taken for it (session.c).
 */
void endpoint_check_closed(endpoint_t *self);

/* Pauses or resumes reading (intake back-pressure, flow.h): while paused,
 * ZeroMQ queues up to rcvhwm frames per connection, then stops reading it. */
void endpoint_pause(endpoint_t *self, int paused);

#endif
