/*
 * server.h - the daemon: one libuv loop, its sockets, store and state.
 *
 * server_t is passed to every module that serves a request; there is no
 * global state.  Everything here runs on the loop thread, except the store's
 * own thread (see store.h).
 */
#ifndef MR_SERVER_H
#define MR_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "conf.h"
#include "counters.h"
#include "endpoint.h"
#include "log.h"
#include "peer.h"
#include "registry.h"
#include "store.h"
#include "strmap.h"

#define MR_WATCHERS_MAX 16

/* An operator connection subscribed to the live stream (watch.c). */
typedef struct {
    uint8_t rid[MR_RID_MAX];
    size_t rid_len;           /* 0: free slot */
    uint64_t request_id;
    int64_t renewed_ms;
    char key[48];             /* its operator key (Z85, the User-Id); "" when plaintext */
    int fd;                   /* its connection's fd (ZMQ_SRCFD) at subscribing; -1 unknown */
} watcher_t;

typedef struct server_t {
    uv_loop_t loop;
    log_t *log;
    conf_t *conf;              /* owned; replaced by a reload */
    const char *config_path;   /* the file to reload, or NULL: config_text */
    const char *config_text;   /* the embedded defaults (borrowed, static) */
    const char *data_dir_override; /* --data-dir, applied to every config loaded */
    registry_t *registry;      /* owned; rebuilt on reload */
    peer_t *peers;             /* one per registry index */
    strmap_t *by_rid;          /* connected routing id -> registry index */
    strmap_t *by_former_rid;   /* routing id of each facility's last ended session -> index */
    void *zctx;
    endpoint_t *facility_ep;
    endpoint_t *operator_ep;
    store_t *store;
    struct acks_t *acks;       /* Acks of a loop turn, a frame per sender (acks.c) */
    struct flow_t *flow;       /* intake back-pressure on the store queue (flow.c) */
    struct arena_t *arena;     /* what the inbound frame decodes to, reset after it (arena.c) */
    struct http_t *http;       /* /metrics, /healthz; NULL when not configured */
    struct zap_t *zap;         /* CURVE authentication; NULL when insecure */
    counters_t counters;
    lograte_t reject_log_anon; /* refusals' log lines for frames of no facility (dispatch.c) */
    lograte_t fac_security_log; /* the facility endpoint's security.no_user_id lines (dispatch.c) */
    /* operator requests waiting for the store, and their refusals' log
     * lines (opapi.c) */
    struct op_waiting_t *op_waiting;
    size_t n_op_waiting;
    lograte_t op_reject_log;
    lograte_t op_security_log; /* the operator endpoint's security.* lines (opapi.c) */
    lograte_t op_send_log;     /* operator.send_failed lines (opapi.c) */
    uv_timer_t cron;
    uv_signal_t sig_int, sig_term, sig_hup;
    int64_t started_at_ms;
    /* cron (cron.c): when each job last ran, mr_mono_ms() */
    int64_t last_redeliver_ms, last_expire_ms, last_prune_ms, last_size_ms,
        last_scan_ms;
    bool cron_pruning, cron_scanning, cron_judging;
    /* The wall time the running expiry scan compares with, 0 when none runs:
     * the router sends nothing that expires by then (router.c). */
    int64_t expiring_now_ms;
    int64_t last_watch_ms, last_judge_ms;
    /* live stream (watch.c) */
    watcher_t watchers[MR_WATCHERS_MAX];
    uint64_t watch_snapshot[CNT_COUNT];
    /* last status of each indicator over the current half-year (cron.c) */
    int indicator_status[32];
    uint64_t store_bytes;
    bool draining;             /* SIGTERM: no new messages, finish commits */
    bool reload_ignored;       /* a reload asked for while draining was logged (reload.c) */
    int64_t drain_started_ms;
    int64_t watchdog_ms, last_watchdog_ms; /* systemd watchdog pings (0: off) */
    bool loop_ready, handles_ready;
    int stop_signals;
} server_t;

/* Builds the server from conf (ownership of conf passes to the server). */
server_t *server_new(conf_t *conf, log_t *log);
/* Runs the loop until a stop signal has drained it. 0 or negative errno. */
int server_run(server_t *self);
void server_destroy(server_t **self_p);

/* Sends a frame to a facility connection; counts failures (send_failed),
 * and frames for a connection that has closed apart (peer_gone). */
int server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                         const ProtobufCMessage *frame);
/* The same for a frame already encoded in msg, which it takes (sent or closed). */
int server_send_facility_msg(server_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg);
/* How long the store's oldest request has waited, in ms, once that is past
 * store.stall_after_s (store_stalled_ms); 0 if it is not, or without a store. */
int64_t server_store_stalled_ms(const server_t *self);

#endif
