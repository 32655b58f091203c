/*
 * zap.c - ZAP REP socket on the loop, answering libzmq's authentication
 * requests from the registry and the operator list.
 *
 * Owns the REP socket, its uv_poll, a uv_idle and the struct (freed when
 * both handles are closed).  Each request is answered at once, so REP's
 * strict recv/send alternation holds.  ZMQ_FD signals edges only: requests
 * left when a turn's budget is spent are taken by the idle handle on the
 * next turns (as endpoint.c does), not when the next handshake happens to
 * come (a reconnect storm of more than a budget's clients waited for their
 * handshake time-out).
 */
#include "zap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_MAX_FRAMES 8
#define S_BUDGET 256 /* requests per loop turn */

struct zap_t {
    server_t *s;
    void *sock;
    uv_poll_t poll;
    uv_idle_t idle;
    int open_handles; /* freed when the last one is closed */
};

/*
 * Admits a CURVE public key (Z85) known to the domain now; 0 or -1.  The
 * User-Id it gives the connection is the key itself, not who it belongs to,
 * so that the daemon judges each frame by the key: an operator's role is its
 * key's in the configuration of that moment (opapi), and a facility's frames
 * must come with the key of its session's Hello (session.c), which a reload
 * that removes the facility revokes.
 */
static int s_authorise(server_t *s, const char *domain, const char *z85)
{
    if (strcmp(domain, MR_ZAP_DOMAIN_FACILITY) == 0) {
        for (size_t i = 0; i < registry_count(s->registry); i++) {
            const facility_t *f = registry_at(s->registry, i);
            if (!f->removed && f->public_key && strcmp(f->public_key, z85) == 0)
                return 0;
        }
        return -1;
    }
    if (strcmp(domain, MR_ZAP_DOMAIN_OPERATOR) == 0 && conf_operator_of(s->conf, z85) != NULL)
        return 0;
    return -1;
}

/* Answers the request just read; request_id may be NULL (a request of one
 * frame has none): an empty one goes, as REP takes no other request until
 * this one is answered. */
static void s_reply(zap_t *z, const zmq_msg_t *request_id, const char *code, const char *text,
                    const char *user)
{
    zmq_msg_t id;
    zmq_msg_init(&id);
    if (request_id != NULL && zmq_msg_copy(&id, (zmq_msg_t *)request_id) != 0)
        zmq_msg_init(&id); /* an empty id, still an answer */
    int rc = zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_msg_send(&id, z->sock, ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(z->sock, code, strlen(code), ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(z->sock, user, strlen(user), ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(z->sock, "", 0, 0);
    zmq_msg_close(&id);
    if (rc < 0)
        log_error(z->s->log, "zap.reply_failed", "reason=\"%s\"", zmq_strerror(zmq_errno()));
}

static void s_handle(zap_t *z)
{
    zmq_msg_t f[S_MAX_FRAMES];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t scratch, *m = n < S_MAX_FRAMES ? &f[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, z->sock, 0) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(m);
        else
            n++;
    }
    /* version, request id, domain, address, identity, mechanism, credentials */
    char domain[64] = "", mech[16] = "", addr[64] = "", z85[41] = "";
    bool ok = n >= 7 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0;
    if (ok) {
        snprintf(domain, sizeof domain, "%.*s", (int)zmq_msg_size(&f[2]),
                 (const char *)zmq_msg_data(&f[2]));
        snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&f[3]),
                 (const char *)zmq_msg_data(&f[3]));
        snprintf(mech, sizeof mech, "%.*s", (int)zmq_msg_size(&f[5]),
                 (const char *)zmq_msg_data(&f[5]));
        ok = strcmp(mech, "CURVE") == 0 && zmq_msg_size(&f[6]) == 32 &&
             zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32) != NULL &&
             s_authorise(z->s, domain, z85) == 0;
    }
    /* Every request read is answered, a malformed one too (libzmq sends
     * none, but a socket of this process could): unanswered, it left REP
     * waiting to send, and every later handshake waited for ever. */
    if (n >= 1) {
        if (ok) {
            s_reply(z, &f[1], "200", "OK", z85);
            log_debug(z->s->log, "zap.allowed", "domain=%s key=%.8s", domain, z85);
        } else {
            s_reply(z, n >= 2 ? &f[1] : NULL, "400", "unknown key", "");
            z->s->counters.v[CNT_SECURITY_EVENTS]++;
            char safe[64];
            log_warn(z->s->log, "security.unknown_key", "domain=\"%s\" address=\"%s\" key=%.8s",
                     log_clean(safe, sizeof safe, domain), addr, z85[0] ? z85 : "-");
        }
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static void on_idle(uv_idle_t *h);

/* Answers up to a budget of requests; the idle handle runs while some may
 * be left. */
static void s_drain(zap_t *z)
{
    for (int i = 0; i < S_BUDGET; i++) {
        int ev = 0;
        size_t len = sizeof ev;
        if (zmq_getsockopt(z->sock, ZMQ_EVENTS, &ev, &len) != 0 || !(ev & ZMQ_POLLIN)) {
            (void)uv_idle_stop(&z->idle);
            return;
        }
        s_handle(z);
    }
    if (uv_idle_start(&z->idle, on_idle) != 0)
        log_error(z->s->log, "zap.idle_failed", "effect=\"requests wait for the next one\"");
}

static void on_idle(uv_idle_t *h)
{
    s_drain(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    s_drain(p->data);
}

zap_t *zap_new(server_t *s)
{
    zap_t *z = calloc(1, sizeof *z);
    if (z == NULL)
        return NULL;
    z->s = s;
    int linger = 0, fd;
    size_t fdlen = sizeof fd;
    z->sock = zmq_socket(s->zctx, ZMQ_REP);
    if (z->sock == NULL || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(z->sock, "inproc://zeromq.zap.01") != 0 ||
        zmq_getsockopt(z->sock, ZMQ_FD, &fd, &fdlen) != 0 ||
        uv_poll_init(&s->loop, &z->poll, fd) != 0) {
        log_error(s->log, "zap.start_failed", "reason=\"%s\"", zmq_strerror(zmq_errno()));
        if (z->sock)
            zmq_close(z->sock);
        free(z);
        return NULL;
    }
    z->poll.data = z;
    z->open_handles = 1;
    if (uv_idle_init(&s->loop, &z->idle) != 0) {
        zap_destroy(&z);
        return NULL;
    }
    z->idle.data = z;
    z->open_handles = 2;
    if (uv_poll_start(&z->poll, UV_READABLE, on_poll) != 0) {
        zap_destroy(&z);
        return NULL;
    }
    return z;
}

static void on_close(uv_handle_t *h)
{
    zap_t *z = h->data;
    if (--z->open_handles == 0)
        free(z);
}

void zap_destroy(zap_t **self_p)
{
    zap_t *z = *self_p;
    if (z == NULL)
        return;
    *self_p = NULL;
    uv_poll_stop(&z->poll);
    zmq_close(z->sock);
    bool idle = z->open_handles == 2;
    uv_close((uv_handle_t *)&z->poll, on_close);
    if (idle) {
        uv_idle_stop(&z->idle);
        uv_close((uv_handle_t *)&z->idle, on_close);
    }
}
