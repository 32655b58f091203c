/*
 * server.c - builds the daemon from its config, runs the loop, tears down.
 *
 * Owns everything in server_t.  The loop, in the order libuv runs it:
 *   timers (cron) -> idle (endpoint drains) -> poll (zmq fds, store async,
 *   signals) -> close callbacks.
 *
 * Shutdown (SIGTERM/SIGINT): new Envelopes get ERROR_SHUTTING_DOWN; once the
 * store has committed and answered everything submitted, sockets close and
 * the loop ends.  A second signal skips the wait; store_destroy still runs
 * every queued request, so nothing acknowledged is lost either way.  A
 * reload asked for meanwhile is ignored (reload.c): systemd, told
 * STOPPING=1, must not hear READY=1 again.  Once server_destroy closes the
 * signal watchers, these signals are ignored: the exit status stays 0.
 */
#include "server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "acks.h"
#include "arena.h"
#include "cron.h"
#include "http.h"
#include "notify.h"
#include "dispatch.h"
#include "flow.h"
#include "opapi.h"
#include "reload.h"
#include "router.h"
#include "session.h"
#include "watch.h"
#include "zap.h"

#define S_DRAIN_LIMIT_MS 10000
/* A decoded referral takes ~2 KB; larger frames use the arena's malloc path. */
#define S_ARENA_BYTES (64 * 1024)
/* Frames ZeroMQ holds for one facility connection while intake is paused
 * (flow.h); past them its TCP stream waits, then its client's outbox. */
#define S_FACILITY_RCVHWM 1000
/* ZMTP heartbeats on operator connections (as the client library keeps on
 * its own): a watcher whose host vanished without closing TCP (a network
 * cut) frees its place among the 16 once it has not answered for
 * S_OPERATOR_SILENCE_MS (its connection closes: watch_on_closed), not when
 * TCP gives up or the watch goes stale.  Facility connections have the
 * protocol's own Heartbeats (session.c). */
#define S_OPERATOR_HEARTBEAT_MS 2000
#define S_OPERATOR_SILENCE_MS 6000

/* Counts the outcome rc of a send to a facility connection; returns rc. */
static int s_counted(server_t *self, int rc)
{
    if (rc == -EHOSTUNREACH) {
        /* Its connection has closed: before the broker read the close (the
         * socket's monitor is read apart from the frames), or a notice to
         * one it knows has (a client that acknowledged and left at once is
         * told that its session ended, dispatch.c).  The client is gone, the
         * broker did nothing wrong: counted apart from the failures. */
        self->counters.v[CNT_PEER_GONE]++;
    } else if (rc < 0) {
        self->counters.v[CNT_SEND_FAILED]++;
        log_debug(self->log, "facility.send_failed", "reason=\"%s\"", zmq_strerror(-rc));
    }
    return rc;
}

int server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                         const ProtobufCMessage *frame)
{
    if (self->facility_ep == NULL)
        return -ENOTCONN;
    /* Packed straight into the message ZeroMQ sends: no buffer, no copy. */
    size_t len = protobuf_c_message_get_packed_size(frame);
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, len) != 0)
        return s_counted(self, -ENOMEM); /* dropped as surely as a refused one */
    protobuf_c_message_pack(frame, zmq_msg_data(&msg));
    return server_send_facility_msg(self, rid, rid_len, &msg);
}

int64_t server_store_stalled_ms(const server_t *self)
{
    return self->store ? store_stalled_ms(self->store, (int64_t)self->conf->stall_after_s * 1000)
                       : 0;
}

int server_send_facility_msg(server_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg)
{
    if (self->facility_ep == NULL) {
        zmq_msg_close(msg);
        return -ENOTCONN;
    }
    return s_counted(self, endpoint_send_msg(self->facility_ep, rid, rid_len, msg));
}

static void s_close_all(server_t *self)
{
    acks_flush(self->acks); /* while the sockets are there */
    flow_close(&self->flow);
    endpoint_destroy(&self->facility_ep);
    endpoint_destroy(&self->operator_ep);
    zap_destroy(&self->zap);
    if (!uv_is_closing((uv_handle_t *)&self->cron))
        uv_close((uv_handle_t *)&self->cron, NULL);
    /* The signal watchers stay installed until server_destroy (closing them
     * would restore the default action, and a late SIGTERM would kill us
     * mid-shutdown); unref'd, they no longer keep the loop running. */
    uv_unref((uv_handle_t *)&self->sig_int);
    uv_unref((uv_handle_t *)&self->sig_term);
    uv_unref((uv_handle_t *)&self->sig_hup);
    /* Runs whatever is still queued and its callbacks (which find the
     * sockets gone and only update state, or resume HTTP requests). */
    store_destroy(&self->store);
    http_destroy(&self->http);
    acks_close(&self->acks); /* after the store's last callbacks, which may add some */
}

static void on_drain_check(uv_timer_t *handle)
{
    server_t *self = handle->data;
    int64_t waited = mr_mono_ms() - self->drain_started_ms;
    if (store_backlog(self->store) == 0 || waited > S_DRAIN_LIMIT_MS) {
        log_info(self->log, "server.stopping", "waited_ms=%lld backlog=%zu", (long long)waited,
                 store_backlog(self->store));
        uv_timer_stop(&self->cron);
        s_close_all(self);
    }
}

static void on_signal(uv_signal_t *handle, int signum)
{
    server_t *self = handle->data;
    if (signum == SIGHUP) {
        char why[512];
        if (!self->draining) /* else reload_config says it is ignored, once */
            log_info(self->log, "server.reload_requested", "signal=%d", signum);
        (void)reload_config(self, why, sizeof why); /* logs its own outcome */
        return;
    }
    if (self->store == NULL)
        return; /* already closing */
    if (++self->stop_signals > 1) {
        log_warn(self->log, "server.stop_now", "signal=%d", signum);
        uv_timer_stop(&self->cron);
        s_close_all(self);
        return;
    }
    log_info(self->log, "server.draining", "signal=%d backlog=%zu", signum,
             store_backlog(self->store));
    notify_state("STOPPING=1");
    self->draining = true;
    self->drain_started_ms = mr_mono_ms();
    /* Reuse the cron timer: from now on it only checks the drain. */
    uv_timer_stop(&self->cron);
    uv_timer_start(&self->cron, on_drain_check, 0, 10);
}

static void s_facility_closed(void *arg, int fd)
{
    session_on_closed(arg, fd);
}

static void s_operator_closed(void *arg, int fd)
{
    watch_on_closed(arg, fd);
}

static int s_make_data_dir(server_t *self, char *path, size_t len)
{
    const char *dir = self->conf->data_dir;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        char safe[512];
        log_error(self->log, "server.data_dir_failed", "dir=\"%s\" reason=\"%s\"",
                  log_clean(safe, sizeof safe, dir), strerror(e));
        return -e;
    }
    int n = snprintf(path, len, "%s/medroute.db", dir);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

server_t *server_new(conf_t *conf, log_t *log)
{
    server_t *self = calloc(1, sizeof *self);
    char why[256];
    char db_path[4096];
    if (self == NULL)
        goto fail_conf;
    self->conf = conf;
    self->log = log;
    self->started_at_ms = mr_now_ms();
    /* The CURVE key, and plaintext on loopback only (endpoints, http_listen). */
    if (conf_check_security(conf, why, sizeof why) != 0) {
        char safe[256];
        log_error(log, "server.config_refused", "reason=\"%s\"",
                  log_clean(safe, sizeof safe, why));
        goto fail;
    }
    if (conf->insecure)
        log_warn(log, "server.insecure",
                 "reason=\"plaintext links (insecure = true), loopback only\"");
    if (uv_loop_init(&self->loop) != 0)
        goto fail;
    self->loop_ready = true;
    self->registry = registry_new(conf->facilities, conf->n_facilities, why, sizeof why);
    if (self->registry == NULL) {
        char safe[256];
        log_error(log, "server.registry_failed", "reason=\"%s\"",
                  log_clean(safe, sizeof safe, why));
        goto fail;
    }
    self->peers = calloc(registry_count(self->registry), sizeof *self->peers);
    self->by_rid = strmap_new();
    self->by_former_rid = strmap_new();
    self->arena = arena_new(S_ARENA_BYTES);
    self->zctx = zmq_ctx_new();
    if (self->peers == NULL || self->by_rid == NULL || self->by_former_rid == NULL ||
        self->arena == NULL || self->zctx == NULL)
        goto fail;
    if (s_make_data_dir(self, db_path, sizeof db_path) < 0)
        goto fail;
    store_opts_t so = {.path = db_path,
                       .sync_full = conf->sync_full,
                       .batch_max = conf->batch_max,
                       .batch_ms = conf->batch_ms,
                       .floor_lag = conf->restart_scan_rows};
    self->store = store_new(&self->loop, &so, log);
    self->acks = acks_new(&self->loop, self);
    if (self->store == NULL || self->acks == NULL || router_start(self) < 0)
        goto fail;
    /* The ZAP handler must be bound before any CURVE socket binds. */
    if (!conf->insecure && (self->zap = zap_new(self)) == NULL)
        goto fail;
    const char *secret = conf->insecure ? NULL : conf->server_secret_key;
    endpoint_opts_t fo = {.name = "facility",
                          .bind = conf->facility_endpoint,
                          .hard_max_bytes = (int)(conf->max_message_bytes * 2 + 4096),
                          .budget = 512,
                          .rcvhwm = S_FACILITY_RCVHWM,
                          .curve_secret = secret,
                          .zap_domain = MR_ZAP_DOMAIN_FACILITY,
                          .handshake_ms = (int)conf->handshake_ms};
    self->facility_ep = endpoint_new(&self->loop, self->zctx, &fo, dispatch_facility, self, log);
    endpoint_opts_t oo = {.name = "operator",
                          .bind = conf->operator_endpoint,
                          .hard_max_bytes = 1 << 20,
                          .budget = 64,
                          .heartbeat_ivl_ms = S_OPERATOR_HEARTBEAT_MS,
                          .heartbeat_timeout_ms = S_OPERATOR_SILENCE_MS,
                          .curve_secret = secret,
                          .zap_domain = MR_ZAP_DOMAIN_OPERATOR,
                          .handshake_ms = (int)conf->handshake_ms};
    self->operator_ep = endpoint_new(&self->loop, self->zctx, &oo, opapi_on_message, self, log);
    if (self->facility_ep == NULL || self->operator_ep == NULL ||
        endpoint_watch(self->facility_ep, &self->loop, self->zctx, s_facility_closed, self) != 0 ||
        endpoint_watch(self->operator_ep, &self->loop, self->zctx, s_operator_closed, self) != 0)
        goto fail;
    /* Resumed with two full batches still queued, the store never waits for
     * the loop; queued beyond four, a request is only memory. */
    self->flow = flow_new(&self->loop, self, 4 * (size_t)conf->batch_max);
    if (self->flow == NULL)
        goto fail;
    if (conf->http_listen != NULL) {
        self->http = http_new(self, conf->http_listen);
        if (self->http == NULL)
            goto fail;
    }
    if (uv_timer_init(&self->loop, &self->cron) != 0 ||
        uv_signal_init(&self->loop, &self->sig_int) != 0 ||
        uv_signal_init(&self->loop, &self->sig_term) != 0 ||
        uv_signal_init(&self->loop, &self->sig_hup) != 0)
        goto fail;
    self->cron.data = self->sig_int.data = self->sig_term.data = self->sig_hup.data = self;
    self->handles_ready = true;
    if (uv_timer_start(&self->cron, cron_tick, MR_CRON_INTERVAL_MS, MR_CRON_INTERVAL_MS) != 0 ||
        uv_signal_start(&self->sig_int, on_signal, SIGINT) != 0 ||
        uv_signal_start(&self->sig_term, on_signal, SIGTERM) != 0 ||
        uv_signal_start(&self->sig_hup, on_signal, SIGHUP) != 0)
        goto fail;
    self->watchdog_ms = notify_watchdog_ms();
    char status[160];
    snprintf(status, sizeof status, "READY=1\nSTATUS=routing for %zu facilities",
             registry_count(self->registry));
    notify_state(status);
    log_info(log, "server.ready", "broker_id=%s facilities=%zu facility_endpoint=%s "
             "operator_endpoint=%s",
             conf->broker_id, registry_count(self->registry), conf->facility_endpoint,
             conf->operator_endpoint);
    return self;
fail_conf:
    conf_destroy(&conf);
    return NULL;
fail:
    server_destroy(&self);
    return NULL;
}

int server_run(server_t *self)
{
    int rc = uv_run(&self->loop, UV_RUN_DEFAULT);
    return rc < 0 ? rc : 0;
}

/*
 * Closes the cron timer and the signal watchers for the last teardown.
 * Closing the last watcher of a signal restores its default action, which
 * for these three ends the process: a late SIGTERM or SIGHUP (systemd's
 * stop, a log rotation) would make a clean stop exit by a signal, which
 * systemd reports as a failure.  They are ignored from then on, and
 * blocked meanwhile so that none lands between the two (the threads still
 * running, ZeroMQ's, block every signal).
 */
static void s_close_signals(server_t *self)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    sigset_t set, old;
    /* These calls fail only for an invalid signal or `how`: none here. */
    (void)sigemptyset(&set);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        (void)sigaddset(&set, sigs[i]);
    (void)pthread_sigmask(SIG_BLOCK, &set, &old);
    uv_handle_t *hs[] = {(uv_handle_t *)&self->cron, (uv_handle_t *)&self->sig_int,
                         (uv_handle_t *)&self->sig_term, (uv_handle_t *)&self->sig_hup};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], NULL);
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        (void)sigaction(sigs[i], &ignore, NULL);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL); /* one that came is dropped: ignored */
}

void server_destroy(server_t **self_p)
{
    server_t *self = *self_p;
    if (self == NULL)
        return;
    if (self->loop_ready) {
        if (self->store != NULL || self->facility_ep || self->operator_ep || self->http ||
            self->zap) {
            endpoint_destroy(&self->facility_ep);
            endpoint_destroy(&self->operator_ep);
            zap_destroy(&self->zap);
            store_destroy(&self->store);
            http_destroy(&self->http);
        }
        acks_close(&self->acks);
        flow_close(&self->flow);
        if (self->handles_ready)
            s_close_signals(self);
        uv_run(&self->loop, UV_RUN_DEFAULT); /* close callbacks */
        if (uv_loop_close(&self->loop) != 0)
            log_warn(self->log, "server.loop_busy", "reason=\"handles still open at exit\"");
    }
    if (self->peers != NULL && self->registry != NULL)
        router_stop(self);
    if (self->zctx != NULL)
        zmq_ctx_term(self->zctx);
    strmap_destroy(&self->by_rid);
    strmap_destroy(&self->by_former_rid);
    arena_destroy(&self->arena);
    free(self->peers);
    registry_destroy(&self->registry);
    conf_destroy(&self->conf);
    free(self);
    *self_p = NULL;
}
