/*
 * peer.h - what the daemon keeps per registered facility.
 *
 * One peer_t per registry index, in server_t.peers.  The connection part is
 * managed by session.c, the delivery queue by router.c.  Loop thread only.
 */
#ifndef MR_PEER_H
#define MR_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lograte.h"

#define MR_RID_MAX 256

/* A message held in memory for delivery. */
typedef struct qmsg_t {
    uint64_t seq;
    uint8_t *body;          /* packed Envelope, owned */
    size_t len;
    int64_t stored_ms;
    int64_t sent_ms;        /* last send, mr_mono_ms(); 0 = never */
    int64_t expires_ms;     /* never sent from then on; 0 = never expires */
    uint32_t attempts;      /* sends so far */
    bool express;           /* critical or stat: sent ahead of routine messages */
    uint32_t hello_session; /* the session (peer_t.session) in which a repeated Hello put it
                               back to be sent again; 0: none (router_on_hello) */
    bool resent_unread;     /* its last send was a time-out's without a sign that its receiver
                               read the copy before: not again until one comes (router_cron) */
    bool due;               /* its DeliveryAck, read on its session's connection, failed to
                               commit: sent again at the next redelivery pass (router_cron) */
    struct qmsg_t *next;
} qmsg_t;

typedef struct {
    qmsg_t *head, *tail;
    size_t n;
} qlist_t;

typedef struct {
    /* connection (session.c) */
    bool connected;
    uint8_t rid[MR_RID_MAX];
    size_t rid_len;
    char key[41];             /* the CURVE public key (Z85) its Hello came with; "" without */
    int fd;                   /* its connection's fd (ZMQ_SRCFD) at the Hello; -1 unknown */
    uint8_t former_rid[MR_RID_MAX]; /* the routing id of its last session that ended ... */
    size_t former_rid_len;    /* ... (0: none), whose late DeliveryAcks still count */
    char former_key[41];      /* ... and the key that session's Hello came with; */
    bool former_told;         /* ... and whether its connection was told it ended (dispatch.c) */
    int64_t heard_ms;       /* its last frame, mr_mono_ms(); 0 = never */
    int64_t read_ms;        /* its last DeliveryAck or Heartbeat, mr_mono_ms(): a sign that
                               it reads what it is sent (session_reads); 0 = never */
    int64_t connected_at_ms;
    /* The heartbeat interval and time-out its Welcome gave, which its client
     * keeps to until its next Hello, whatever a reload says meanwhile. */
    uint32_t heartbeat_interval_ms;
    uint32_t heartbeat_timeout_ms;
    int64_t beat_ms;        /* the last Heartbeat (or Welcome) sent to it, mr_mono_ms() */
    uint32_t session;       /* numbers its sessions: one more at each Hello that binds a
                               connection, never 0 after the first (router_on_hello) */
    uint32_t max_inflight;
    uint32_t max_acks;      /* Hello.max_acks_per_frame: Acks it takes in one frame */
    double tokens;          /* rate limit: messages it may send now (intake.c) */
    int64_t tokens_at_ms;   /* mr_mono_ms() of the last refill */

    /* delivery queue (router.c) */
    qlist_t ready;          /* loaded from the store, not yet sent; seq order */
    qlist_t inflight;       /* sent, awaiting DeliveryAck; seq order */
    qlist_t acked;          /* DeliveryAck received, its commit on the way; ack order */
    uint64_t cursor;        /* highest seq taken into memory */
    bool complete;          /* no pending message with seq > cursor in the store */
    bool loading;           /* a STORE_LOAD is in flight */
    uint32_t memory_gen;    /* one more each time a reload makes the router forget this
                               memory (31 bits): a load asked before is not applied after */
    bool loading_express;   /* ... and it fetches express messages only */
    bool express_checked;   /* stored express messages were looked for since connecting */
    uint64_t express_ahead; /* highest seq taken into memory ahead of the cursor as express */
    uint64_t pending;       /* stored, not yet acknowledged (store truth) */

    lograte_t reject_log;   /* its refusals' log lines (dispatch.c) */
    lograte_t hello_log;    /* its repeated Hellos' log lines (session.c) */
} peer_t;

#endif
