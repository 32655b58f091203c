/*
 * session.c - facility sessions: Hello, heartbeats, time-outs, takeover.
 *
 * Owns the connection half of each peer_t and the routing id map.
 *
 * Invariants
 *   1. by_rid maps exactly the rids of connected peers to their index.
 *   2. A peer is connected to at most one rid; a new Hello replaces it.
 *   3. by_former_rid maps exactly each peer's former_rid (its last session
 *      that ended) to its index, and holds no rid of by_rid.
 *   4. session numbers peer's sessions: it changes at each Hello that binds
 *      a connection, and only then (router.c invariant 7 counts on it).
 *
 *   DISCONNECTED --Hello--> CONNECTED --Hello from another rid--> CONNECTED (new rid)
 *        ^                      |   \
 *        +---- time-out --------+    +--Hello on its own rid--> CONNECTED (same session,
 *                                                                restarted: s_restart)
 */
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "acks.h"
#include "flow.h"
#include "handlers.h"
#include "router.h"

int session_find(const server_t *s, const uint8_t *rid, size_t rid_len)
{
    return strmap_get(s->by_rid, rid, rid_len);
}

/* True when key (Z85; NULL without CURVE) is facility peer's key now. */
static bool s_key_is(const server_t *s, int peer, const char *key)
{
    if (key == NULL)
        return true; /* no CURVE (loopback only): nothing to compare */
    const facility_t *f = registry_at(s->registry, (size_t)peer);
    return !f->removed && f->public_key != NULL && strcmp(f->public_key, key) == 0;
}

/* True when key (Z85) is the key of another identity now: another
 * facility's, or an operator's. */
static bool s_key_is_another(const server_t *s, int peer, const char *key)
{
    for (size_t i = 0; i < registry_count(s->registry); i++) {
        const facility_t *f = registry_at(s->registry, i);
        if ((int)i != peer && !f->removed && f->public_key != NULL &&
            strcmp(f->public_key, key) == 0)
            return true;
    }
    return conf_operator_of(s->conf, key) != NULL;
}

/* Whether rid is the connection of peer's session, or of its last one. */
static bool s_is_its_connection(const peer_t *p, const uint8_t *rid, size_t rid_len)
{
    return (p->connected && p->rid_len == rid_len && memcmp(p->rid, rid, rid_len) == 0) ||
           (p->former_rid_len > 0 && p->former_rid_len == rid_len &&
            memcmp(p->former_rid, rid, rid_len) == 0);
}

/* May key say Hello for facility peer on the connection of rid: its key as
 * configured now, or, on the connection of its last session, that
 * session's key, so that through a rotation the connection it has keeps
 * working until the facility switches (a removal forgets it:
 * session_revoke) -- no other connection opened with that key before the
 * reload (the stolen key a rotation may be for), and not once a reload gave
 * that key to another facility: it speaks for that one now. */
static bool s_may_hello(const server_t *s, int peer, const char *key, const uint8_t *rid,
                        size_t rid_len)
{
    const peer_t *p = &s->peers[peer];
    return s_key_is(s, peer, key) ||
           (p->key[0] != '\0' && strcmp(p->key, key) == 0 && s_is_its_connection(p, rid, rid_len) &&
            !registry_at(s->registry, (size_t)peer)->removed && !s_key_is_another(s, peer, key));
}

/* Forgets peer's former session (invariant 3). */
static void s_former_forget(server_t *s, int peer)
{
    peer_t *p = &s->peers[peer];
    if (p->former_rid_len > 0)
        (void)strmap_del(s->by_former_rid, p->former_rid, p->former_rid_len);
    p->former_rid_len = 0;
    p->former_key[0] = '\0';
}

/* A rid bound by a Hello is nobody's former session from now on: a client
 * may choose its routing id, and reuse one. */
static void s_former_unbind(server_t *s, const uint8_t *rid, size_t rid_len)
{
    int peer = strmap_get(s->by_former_rid, rid, rid_len);
    if (peer >= 0)
        s_former_forget(s, peer);
}

int session_former(const server_t *s, const uint8_t *rid, size_t rid_len, const char *key)
{
    int peer = strmap_get(s->by_former_rid, rid, rid_len);
    if (peer < 0 || registry_at(s->registry, (size_t)peer)->removed)
        return -1;
    if (key != NULL && strcmp(s->peers[peer].former_key, key) != 0)
        return -1; /* the rid, not the key, matches: somebody else */
    /* And only while that key may still speak for the facility: a key that
     * a rotation replaced (the facility has switched), or that a reload gave
     * to another facility, acknowledges nothing for it. */
    if (key != NULL && !s_may_hello(s, peer, key, rid, rid_len))
        return -1;
    return peer;
}

void session_revoke(server_t *s, int peer, const char *why)
{
    session_end(s, peer, why);
    s->peers[peer].key[0] = '\0';
    s_former_forget(s, peer);
}

void session_keys_reassigned(server_t *s)
{
    size_t n = registry_count(s->registry);
    for (size_t i = 0; i < n; i++) {
        const peer_t *p = &s->peers[i];
        if (p->key[0] == '\0' || !s_key_is_another(s, (int)i, p->key))
            continue;
        log_warn(s->log, "security.key_reassigned", "facility=%s key=%.8s action=session_ended",
                 registry_at(s->registry, i)->id, p->key);
        session_revoke(s, (int)i, "key_reassigned");
    }
}

int session_of(server_t *s, const uint8_t *rid, size_t rid_len, const char *key)
{
    int peer = session_find(s, rid, rid_len);
    if (peer < 0 || key == NULL || strcmp(s->peers[peer].key, key) == 0)
        return peer;
    s->counters.v[CNT_SECURITY_EVENTS]++;
    log_warn(s->log, "security.key_mismatch", "facility=%s key=%.8s action=session_ended",
             registry_at(s->registry, (size_t)peer)->id, key);
    session_end(s, peer, "key_mismatch");
    return -1;
}

void session_on_closed(server_t *s, int fd)
{
    size_t n = registry_count(s->registry);
    for (size_t i = 0; i < n; i++)
        if (s->peers[i].connected && s->peers[i].fd == fd)
            session_end(s, (int)i, "connection_closed");
}

void session_touch(server_t *s, int peer)
{
    s->peers[peer].heard_ms = mr_mono_ms();
}

void session_reads(server_t *s, int peer)
{
    s->peers[peer].read_ms = mr_mono_ms();
}

void session_end(server_t *s, int peer, const char *why)
{
    peer_t *p = &s->peers[peer];
    if (!p->connected)
        return;
    strmap_del(s->by_rid, p->rid, p->rid_len);
    /* Its DeliveryAcks may still be on their way (a close read before the
     * frames ahead of it, a session timed out on a stalled link, another
     * connection's Hello): they count when they come (session_former). */
    s_former_forget(s, peer);
    if (strmap_put(s->by_former_rid, p->rid, p->rid_len, peer) == 0) {
        memcpy(p->former_rid, p->rid, p->rid_len);
        p->former_rid_len = p->rid_len;
        memcpy(p->former_key, p->key, sizeof p->former_key);
        p->former_told = false;
    }
    p->connected = false;
    p->rid_len = 0;
    s->counters.v[CNT_DISCONNECTS]++;
    log_info(s->log, "facility.disconnected", "facility=%s why=%s",
             registry_at(s->registry, (size_t)peer)->id, why);
    router_on_disconnect(s, peer);
}

/* Sends peer its Welcome: 0, or the send's error (-EHOSTUNREACH: its
 * connection is gone). */
static int s_send_welcome(server_t *s, int peer)
{
    peer_t *p = &s->peers[peer];
    Medroute__V1__Welcome w = MEDROUTE__V1__WELCOME__INIT;
    w.broker_id = s->conf->broker_id;
    w.heartbeat_interval_ms = p->heartbeat_interval_ms;
    w.heartbeat_timeout_ms = p->heartbeat_timeout_ms;
    w.pending = p->pending;
    w.max_message_bytes = s->conf->max_message_bytes;
    w.max_inflight = p->max_inflight;
    w.max_acks_per_frame = MR_ACKS_PER_FRAME_MAX;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    int rc = server_send_facility(s, p->rid, p->rid_len, &f.base);
    p->beat_ms = mr_mono_ms();
    return rc;
}

/*
 * A repeated Hello on the session's own connection: the client restarted its
 * session (it may have dropped what it was sent), so what it has in flight
 * is sent again -- but each delivery at most once per session by such a
 * Hello (router.c invariant 7).  The library says Hello again on the same
 * connection only when its Welcome is late (every 2 s: Hellos that cross the
 * Welcome) or when the broker has been silent for heartbeat_timeout_ms, and
 * neither needs more than one copy again; a client that repeats Hello and
 * reads nothing would otherwise make the broker queue a window of deliveries
 * (max_inflight of up to max_message_bytes) toward it per Hello.  It is
 * still answered with a Welcome each time (a client may wait for one: it is
 * as small as the Hello), counted (hellos_repeated, resends_skipped), and
 * logged at most LOGRATE_LINES times per LOGRATE_WINDOW_MS (hello_log; the
 * rest as a count, session_cron).
 */
static void s_restart(server_t *s, int peer, const char *client)
{
    peer_t *p = &s->peers[peer];
    size_t kept = 0;
    size_t back = router_on_hello(s, peer, &kept);
    s->counters.v[CNT_HELLOS_REPEATED]++;
    if (!lograte_allow(&p->hello_log, mr_mono_ms()))
        return;
    const char *id = registry_at(s->registry, (size_t)peer)->id;
    if (kept == 0)
        log_info(s->log, "facility.connected",
                 "facility=%s client=\"%s\" pending=%llu again=1 resent=%zu", id, client,
                 (unsigned long long)p->pending, back);
    else
        log_warn(s->log, "facility.hello_repeated",
                 "facility=%s client=\"%s\" resent=%zu kept=%zu", id, client, back, kept);
}

int handle_hello(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err)
{
    const Medroute__V1__Hello *h = f->hello;
    size_t len = h->facility_id ? strlen(h->facility_id) : 0;
    if (len == 0)
        return mr_fail(err, MR_E_INVALID, "Hello.facility_id is required");
    if (ctx->rid_len > MR_RID_MAX)
        return mr_fail(err, MR_E_INTERNAL, "routing id too long");
    int peer = registry_find(s->registry, h->facility_id, len);
    if (peer < 0)
        return mr_fail(err, MR_E_UNKNOWN_SOURCE, "facility \"%.*s\" is not in the registry",
                       (int)mr_utf8_cut(h->facility_id, 64), h->facility_id);
    if (ctx->peer >= 0 && ctx->peer != peer)
        return mr_fail(err, MR_E_FORBIDDEN, "this connection already speaks for another facility");
    /* With CURVE the key decides who this is: a Hello for a facility whose
     * key it is not is a spoofing attempt, or a key a reload has revoked. */
    if (!s_may_hello(s, peer, ctx->user_id, ctx->rid, ctx->rid_len)) {
        s->counters.v[CNT_SECURITY_EVENTS]++;
        log_warn(s->log, "security.spoofed_hello", "facility=%s key=%.8s",
                 registry_at(s->registry, (size_t)peer)->id, ctx->user_id);
        return mr_fail(err, MR_E_FORBIDDEN, "this key is not this facility's");
    }
    /* ZeroMQ reports a connection's close (the monitor) before it accepts
     * another that may get the same fd number, but on a socket of its own:
     * read it first, or a close read after this Hello would end the session
     * it starts (its fd is the closed one's), and drop what it acknowledges
     * meanwhile. */
    endpoint_check_closed(s->facility_ep);
    peer_t *p = &s->peers[peer];
    bool same_rid = p->connected && p->rid_len == ctx->rid_len &&
                    memcmp(p->rid, ctx->rid, ctx->rid_len) == 0;
    if (p->connected && !same_rid)
        session_end(s, peer, "replaced");
    if (!same_rid) {
        if (strmap_put(s->by_rid, ctx->rid, ctx->rid_len, peer) < 0)
            return mr_fail(err, MR_E_INTERNAL, "out of memory");
        s_former_unbind(s, ctx->rid, ctx->rid_len);
        memcpy(p->rid, ctx->rid, ctx->rid_len);
        p->rid_len = ctx->rid_len;
        snprintf(p->key, sizeof p->key, "%s", ctx->user_id ? ctx->user_id : "");
        p->fd = endpoint_src_fd(s->facility_ep);
        p->connected = true;
        p->connected_at_ms = mr_now_ms();
        if (++p->session == 0)
            p->session = 1; /* wrapped: 0 marks no session (qmsg_t.hello_session) */
        s->counters.v[CNT_CONNECTS]++;
    }
    p->heard_ms = mr_mono_ms();
    uint32_t want = h->max_inflight ? h->max_inflight : s->conf->max_inflight;
    p->max_inflight = want < s->conf->max_inflight ? want : s->conf->max_inflight;
    p->max_acks = h->max_acks_per_frame;
    acks_limit(s->acks, ctx->rid, ctx->rid_len, p->max_acks); /* those queued this turn too */
    p->heartbeat_interval_ms = s->conf->heartbeat_interval_ms;
    p->heartbeat_timeout_ms = s->conf->heartbeat_timeout_ms;
    char client[41];
    (void)log_clean(client, sizeof client, h->client_name);
    if (!same_rid)
        log_info(s->log, "facility.connected", "facility=%s client=\"%s\" pending=%llu",
                 registry_at(s->registry, (size_t)peer)->id, client,
                 (unsigned long long)p->pending);
    if (s_send_welcome(s, peer) == -EHOSTUNREACH) {
        /* Its connection closed before its Hello was read (and the Hello
         * read that close: endpoint_check_closed): bound, the session would
         * wait for a failed heartbeat with a routing id nobody holds, that
         * the next client to take it would be sent its deliveries on. */
        session_end(s, peer, "unreachable");
        return 0;
    }
    if (same_rid)
        s_restart(s, peer, client);
    router_pump(s, peer);
    return 0;
}

int handle_heartbeat(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err)
{
    (void)f;
    (void)err;
    /* Dispatch has already touched the session.  A client sends heartbeats
     * from the loop that reads its deliveries (libmedroute: while it
     * polls), an application that only submits sends none. */
    session_reads(s, ctx->peer);
    return 0;
}

void session_cron(server_t *s, int64_t now_ms, int64_t mono_ms)
{
    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    hb.sent_at_ms = now_ms;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    int64_t heard = flow_heard_since(s->flow);
    size_t n = registry_count(s->registry);
    for (size_t i = 0; i < n; i++) {
        peer_t *p = &s->peers[i];
        lograte_tell(&p->hello_log, s->log, "facility.hello_unlogged",
                     registry_at(s->registry, i)->id, mono_ms);
        /* Each session on the interval and time-out of its Welcome: a
         * reload's apply from its next Hello (its client heartbeats at the
         * old interval, and takes the broker for gone after the old
         * time-out). */
        if (!p->connected || mono_ms - p->beat_ms < (int64_t)p->heartbeat_interval_ms)
            continue;
        /* Silence counts only while the broker reads: a store that holds
         * intake back (flow.h) for longer than the time-out must not end
         * every session. */
        int64_t since = p->heard_ms > heard ? p->heard_ms : heard;
        if (mono_ms - since > (int64_t)p->heartbeat_timeout_ms) {
            session_end(s, (int)i, "heartbeat_timeout");
            continue;
        }
        p->beat_ms = mono_ms;
        if (server_send_facility(s, p->rid, p->rid_len, &f.base) == -EHOSTUNREACH)
            session_end(s, (int)i, "unreachable"); /* its connection is gone */
    }
}
