/*
 * endpoint.c - ROUTER socket on a uv_poll over ZMQ_FD, drained in budgets.
 *
 * Owns: the zmq socket, a uv_poll_t on its ZMQ_FD, a uv_idle_t that
 * continues draining, and the struct itself (freed after its handles have
 * closed).  With endpoint_watch, also a PAIR socket on the ROUTER's monitor
 * and its uv_poll: each connection that closes is reported by its fd.
 *
 * Invariants
 *   1. Whenever ZMQ_EVENTS may report POLLIN (after a wake-up, a send, or a
 *      budget cut short) the idle handle is running, so no input stalls
 *      behind the edge-triggered fd.
 *   2. The idle handle stops only after ZMQ_EVENTS was read with no POLLIN.
 */
#include "endpoint.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_MAX_PARTS 4

/* A stable option of libzmq 4.3 still declared only in its draft API. */
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define MR_ZMQ_ZAP_ENFORCE_DOMAIN 93
#else
#define MR_ZMQ_ZAP_ENFORCE_DOMAIN ZMQ_ZAP_ENFORCE_DOMAIN
#endif

struct endpoint_t {
    void *sock;
    uv_poll_t poll;
    uv_idle_t idle;
    int open_handles;
    bool paused;
    int budget;
    endpoint_msg_cb cb;
    void *arg;
    const char *user_id;      /* of the message in the callback */
    int src_fd;               /* of the message in the callback (ZMQ_SRCFD) */
    log_t *log;
    char name[32];
    /* endpoint_watch: the monitor's PAIR socket, its poll, the callback */
    void *mon;
    uv_poll_t mon_poll;
    endpoint_gone_cb gone;
    void *gone_arg;
};

static int s_setopt(endpoint_t *self, int opt, const void *val, size_t len, const char *what)
{
    if (zmq_setsockopt(self->sock, opt, val, len) != 0) {
        log_error(self->log, "endpoint.setsockopt_failed", "endpoint=%s option=%s reason=\"%s\"",
                  self->name, what, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static int s_setint(endpoint_t *self, int opt, int val, const char *what)
{
    return s_setopt(self, opt, &val, sizeof val, what);
}

/* Receives one whole message and hands it to the callback. 0, or -errno. */
static int s_recv_one(endpoint_t *self)
{
    zmq_msg_t parts[S_MAX_PARTS + 1]; /* routing id + up to S_MAX_PARTS */
    size_t n = 0;
    int truncated = 0;
    int rc = 0;
    for (int more = 1; more;) {
        zmq_msg_t scratch;
        zmq_msg_t *m = n < S_MAX_PARTS + 1 ? &parts[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, self->sock, ZMQ_DONTWAIT) < 0) {
            rc = -zmq_errno();
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &scratch) {
            truncated = 1; /* parts beyond what we look at are dropped */
            zmq_msg_close(m);
        } else {
            n++;
        }
    }
    if (rc == 0 && n >= 1) {
        const void *data[S_MAX_PARTS];
        size_t sizes[S_MAX_PARTS];
        for (size_t i = 1; i < n; i++) {
            data[i - 1] = zmq_msg_data(&parts[i]);
            sizes[i - 1] = zmq_msg_size(&parts[i]);
        }
        /* ZAP's User-Id is metadata of every part after the routing id. */
        self->user_id = n >= 2 ? zmq_msg_gets(&parts[1], "User-Id") : NULL;
        self->src_fd = n >= 2 ? zmq_msg_get(&parts[1], ZMQ_SRCFD) : -1;
        self->cb(self->arg, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), data, sizes, n - 1,
                 truncated);
        self->user_id = NULL;
        self->src_fd = -1;
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    return rc;
}

static void on_idle(uv_idle_t *handle);
static void on_close(uv_handle_t *handle);

static bool s_readable(endpoint_t *self)
{
    int events = 0;
    size_t len = sizeof events;
    if (zmq_getsockopt(self->sock, ZMQ_EVENTS, &events, &len) != 0)
        return false;
    return (events & ZMQ_POLLIN) != 0;
}

static void s_drain(endpoint_t *self)
{
    if (self->sock == NULL)
        return;
    for (int i = 0; i < self->budget && !self->paused; i++) {
        if (!s_readable(self)) {
            uv_idle_stop(&self->idle);
            return;
        }
        int rc = s_recv_one(self);
        if (rc == -EAGAIN || rc == -EINTR)
            continue;
        if (rc < 0) {
            log_error(self->log, "endpoint.recv_failed", "endpoint=%s reason=\"%s\"", self->name,
                      zmq_strerror(-rc));
            break;
        }
    }
    /* Budget spent (or paused): come back on the next loop turn. */
    if (!self->paused)
        uv_idle_start(&self->idle, on_idle);
}

static void on_idle(uv_idle_t *handle)
{
    s_drain(handle->data);
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    (void)status;
    (void)events;
    s_drain(handle->data);
}

static void s_arm(endpoint_t *self)
{
    if (self->sock != NULL && !self->paused)
        uv_idle_start(&self->idle, on_idle);
}

endpoint_t *endpoint_new(uv_loop_t *loop, void *zctx, const endpoint_opts_t *opts,
                         endpoint_msg_cb cb, void *arg, log_t *log)
{
    endpoint_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->cb = cb;
    self->arg = arg;
    self->log = log;
    self->budget = opts->budget > 0 ? opts->budget : 256;
    self->src_fd = -1;
    snprintf(self->name, sizeof self->name, "%s", opts->name);
    self->sock = zmq_socket(zctx, ZMQ_ROUTER);
    if (self->sock == NULL) {
        log_error(log, "endpoint.socket_failed", "endpoint=%s reason=\"%s\"", self->name,
                  zmq_strerror(zmq_errno()));
        free(self);
        return NULL;
    }
    int64_t maxmsg = opts->hard_max_bytes > 0 ? opts->hard_max_bytes : -1;
    if (opts->curve_secret != NULL) {
        /* CURVE with our own ZAP handler, fail closed: a domain must be set,
         * or libzmq lets any client key in, and enforced. */
        if (s_setint(self, ZMQ_CURVE_SERVER, 1, "CURVE_SERVER") ||
            s_setopt(self, ZMQ_CURVE_SECRETKEY, opts->curve_secret, 40, "CURVE_SECRETKEY") ||
            s_setopt(self, ZMQ_ZAP_DOMAIN, opts->zap_domain, strlen(opts->zap_domain),
                     "ZAP_DOMAIN") ||
            s_setint(self, MR_ZMQ_ZAP_ENFORCE_DOMAIN, 1, "ZAP_ENFORCE_DOMAIN"))
            goto fail_sock;
    }
    if (opts->handshake_ms > 0 && s_setint(self, ZMQ_HANDSHAKE_IVL, opts->handshake_ms,
                                           "HANDSHAKE_IVL"))
        goto fail_sock;
    if (s_setint(self, ZMQ_ROUTER_MANDATORY, 1, "ROUTER_MANDATORY") ||
        s_setint(self, ZMQ_LINGER, 0, "LINGER") ||
        s_setint(self, ZMQ_SNDHWM, opts->sndhwm > 0 ? opts->sndhwm : 100000, "SNDHWM") ||
        s_setint(self, ZMQ_RCVHWM, opts->rcvhwm > 0 ? opts->rcvhwm : 100000, "RCVHWM") ||
        s_setopt(self, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg, "MAXMSGSIZE") ||
        (opts->heartbeat_ivl_ms > 0 &&
         (s_setint(self, ZMQ_HEARTBEAT_IVL, opts->heartbeat_ivl_ms, "HEARTBEAT_IVL") ||
          s_setint(self, ZMQ_HEARTBEAT_TIMEOUT, opts->heartbeat_timeout_ms,
                   "HEARTBEAT_TIMEOUT"))))
        goto fail_sock;
    if (zmq_bind(self->sock, opts->bind) != 0) {
        log_error(log, "endpoint.bind_failed", "endpoint=%s bind=%s reason=\"%s\"", self->name,
                  opts->bind, zmq_strerror(zmq_errno()));
        goto fail_sock;
    }
    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_getsockopt(self->sock, ZMQ_FD, &fd, &fdlen) != 0)
        goto fail_sock;
    if (uv_poll_init(loop, &self->poll, fd) != 0)
        goto fail_sock;
    self->poll.data = self;
    self->open_handles++;
    if (uv_idle_init(loop, &self->idle) != 0) {
        /* The poll handle still references self: its close frees it. */
        zmq_close(self->sock);
        self->sock = NULL;
        uv_close((uv_handle_t *)&self->poll, on_close);
        return NULL;
    }
    self->idle.data = self;
    self->open_handles++;
    if (uv_poll_start(&self->poll, UV_READABLE, on_poll) != 0) {
        endpoint_destroy(&self);
        return NULL;
    }
    log_info(log, "endpoint.bound", "endpoint=%s bind=%s", self->name, opts->bind);
    s_arm(self);
    return self;
fail_sock:
    zmq_close(self->sock);
    free(self);
    return NULL;
}

static void on_close(uv_handle_t *handle)
{
    endpoint_t *self = handle->data;
    if (--self->open_handles == 0)
        free(self);
}

void endpoint_destroy(endpoint_t **self_p)
{
    endpoint_t *self = *self_p;
    if (self == NULL)
        return;
    *self_p = NULL;
    uv_poll_stop(&self->poll);
    uv_idle_stop(&self->idle);
    if (self->mon != NULL) {
        uv_poll_stop(&self->mon_poll);
        zmq_close(self->mon);
        self->mon = NULL;
        uv_close((uv_handle_t *)&self->mon_poll, on_close);
    }
    zmq_close(self->sock);
    self->sock = NULL;
    uv_close((uv_handle_t *)&self->poll, on_close);
    uv_close((uv_handle_t *)&self->idle, on_close);
}

/* Reads every monitor event queued (ZMQ_FD signals edges): a closed
 * connection is [uint16 event, uint32 fd] then its address. */
static void on_mon(uv_poll_t *handle, int status, int events)
{
    (void)status;
    (void)events;
    endpoint_t *self = handle->data;
    while (self->mon != NULL) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, self->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        uint32_t fd = 0;
        bool whole = zmq_msg_size(&ev) >= 6;
        if (whole) {
            memcpy(&event, zmq_msg_data(&ev), sizeof event);
            memcpy(&fd, (const uint8_t *)zmq_msg_data(&ev) + 2, sizeof fd);
        }
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) { /* the address: all of it was sent with the first part */
            zmq_msg_init(&addr);
            (void)zmq_msg_recv(&addr, self->mon, ZMQ_DONTWAIT);
            zmq_msg_close(&addr);
        }
        if (whole && event == ZMQ_EVENT_DISCONNECTED)
            self->gone(self->gone_arg, (int)fd);
    }
}

void endpoint_check_closed(endpoint_t *self)
{
    if (self != NULL && self->mon != NULL)
        on_mon(&self->mon_poll, 0, 0);
}

int endpoint_watch(endpoint_t *self, uv_loop_t *loop, void *zctx, endpoint_gone_cb gone,
                   void *arg)
{
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://mr-monitor-%s-%p", self->name, (void *)self);
    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_socket_monitor(self->sock, addr, ZMQ_EVENT_DISCONNECTED) != 0)
        goto fail;
    self->mon = zmq_socket(zctx, ZMQ_PAIR);
    if (self->mon == NULL || zmq_connect(self->mon, addr) != 0 ||
        zmq_getsockopt(self->mon, ZMQ_FD, &fd, &fdlen) != 0 ||
        uv_poll_init(loop, &self->mon_poll, fd) != 0)
        goto fail_mon;
    self->mon_poll.data = self;
    self->open_handles++;
    self->gone = gone;
    self->gone_arg = arg;
    if (uv_poll_start(&self->mon_poll, UV_READABLE, on_mon) != 0)
        goto fail; /* the handle stays for endpoint_destroy to close */
    on_mon(&self->mon_poll, 0, 0); /* what came before the poll started */
    return 0;
fail_mon:
    if (self->mon != NULL)
        zmq_close(self->mon);
    self->mon = NULL;
fail:
    log_error(self->log, "endpoint.monitor_failed", "endpoint=%s reason=\"%s\"", self->name,
              zmq_strerror(zmq_errno()));
    return -1;
}

int endpoint_src_fd(const endpoint_t *self)
{
    return self ? self->src_fd : -1;
}

int endpoint_send_msg(endpoint_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg)
{
    if (self->sock == NULL) {
        zmq_msg_close(msg);
        return -ENOTCONN;
    }
    int rc = 0;
    if (zmq_send(self->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        rc = -zmq_errno();
    else if (zmq_msg_send(msg, self->sock, ZMQ_DONTWAIT) < 0)
        rc = -zmq_errno();
    if (rc < 0)
        zmq_msg_close(msg); /* sent, it belongs to ZeroMQ */
    /* A send may have consumed the fd's edge: look at ZMQ_EVENTS again. */
    s_arm(self);
    return rc;
}

int endpoint_send(endpoint_t *self, const uint8_t *rid, size_t rid_len, const void *data,
                  size_t len)
{
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, len) != 0)
        return -ENOMEM;
    memcpy(zmq_msg_data(&msg), data, len);
    return endpoint_send_msg(self, rid, rid_len, &msg);
}

const char *endpoint_user_id(const endpoint_t *self)
{
    return self ? self->user_id : NULL;
}

void endpoint_pause(endpoint_t *self, int paused)
{
    if (self->sock == NULL || self->paused == (paused != 0))
        return;
    self->paused = paused != 0;
    /* The poll handle stops too: ZMQ_FD stays readable until ZMQ_EVENTS is
     * read, and a level-triggered poll on it would spin the loop. */
    if (paused) {
        uv_idle_stop(&self->idle);
        uv_poll_stop(&self->poll);
    } else if (uv_poll_start(&self->poll, UV_READABLE, on_poll) != 0) {
        log_error(self->log, "endpoint.poll_failed", "endpoint=%s", self->name);
        s_arm(self); /* the idle handle still drains; the next send re-arms it */
    } else {
        s_arm(self);
    }
}
