/*
 * watch.c - push live events to subscribed operator connections.
 *
 * Owns server_t.watchers and the counter snapshot of the last tick.
 * Invariants: a watcher slot with rid_len == 0 is free; a watcher with a
 * key is sent nothing once that key is no longer an operator's (s_send's
 * callers drop it first); a watcher whose connection has closed holds no
 * slot once the endpoint's monitor has said so (watch_on_closed): events
 * go out only on change, so a send to it could not be counted on to
 * find it gone, and the 120-s time-out kept a killed `medroute watch`'s
 * place among the 16.
 */
#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_STALE_MS 120000

int watch_subscribe(server_t *s, const uint8_t *rid, size_t rid_len, uint64_t request_id,
                    const char *key, int fd)
{
    if (rid_len == 0 || rid_len > MR_RID_MAX ||
        (key != NULL && strlen(key) >= sizeof s->watchers[0].key))
        return -EINVAL;
    /* ZeroMQ reports a close before it accepts another connection that may
     * get its fd, but on the monitor's socket: read it first. */
    endpoint_check_closed(s->operator_ep);
    watcher_t *free_slot = NULL;
    for (int i = 0; i < MR_WATCHERS_MAX; i++) {
        watcher_t *w = &s->watchers[i];
        if (w->rid_len == rid_len && memcmp(w->rid, rid, rid_len) == 0) {
            w->renewed_ms = mr_mono_ms();
            w->request_id = request_id;
            w->fd = fd;
            snprintf(w->key, sizeof w->key, "%s", key ? key : "");
            return 0;
        }
        if (w->rid_len == 0 && free_slot == NULL)
            free_slot = w;
    }
    if (free_slot == NULL)
        return -ENOSPC;
    memcpy(free_slot->rid, rid, rid_len);
    free_slot->rid_len = rid_len;
    free_slot->request_id = request_id;
    free_slot->renewed_ms = mr_mono_ms();
    free_slot->fd = fd;
    snprintf(free_slot->key, sizeof free_slot->key, "%s", key ? key : "");
    return 0;
}

void watch_unsubscribe(server_t *s, const uint8_t *rid, size_t rid_len)
{
    for (int i = 0; i < MR_WATCHERS_MAX; i++) {
        watcher_t *w = &s->watchers[i];
        if (w->rid_len != 0 && w->rid_len == rid_len && memcmp(w->rid, rid, rid_len) == 0)
            w->rid_len = 0;
    }
}

void watch_on_closed(server_t *s, int fd)
{
    for (int i = 0; i < MR_WATCHERS_MAX; i++)
        if (s->watchers[i].rid_len != 0 && fd >= 0 && s->watchers[i].fd == fd)
            s->watchers[i].rid_len = 0;
}

/* Ends the streams of keys a reload has removed from the operators: as
 * opapi refuses their requests, the stream they opened stops too (it would
 * otherwise run until it goes stale). */
static void s_forget_revoked(server_t *s)
{
    for (int i = 0; i < MR_WATCHERS_MAX; i++) {
        watcher_t *w = &s->watchers[i];
        if (w->rid_len == 0 || w->key[0] == '\0' || conf_operator_of(s->conf, w->key) != NULL)
            continue;
        w->rid_len = 0;
        s->counters.v[CNT_SECURITY_EVENTS]++;
        log_warn(s->log, "security.revoked_key", "endpoint=operator key=%.8s action=watch_ended",
                 w->key);
    }
}

static void s_send(server_t *s, Medroute__V1__WatchEvent *ev)
{
    if (s->operator_ep == NULL)
        return;
    mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
    r.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.body_case = MEDROUTE__V1__OP_REPLY__BODY_WATCH;
    r.watch = ev;
    for (int i = 0; i < MR_WATCHERS_MAX; i++) {
        watcher_t *w = &s->watchers[i];
        if (w->rid_len == 0)
            continue;
        r.request_id = w->request_id;
        uint8_t *buf;
        size_t len;
        if (mr_pack(&r.base, &buf, &len) != 0)
            return;
        int rc = endpoint_send(s->operator_ep, w->rid, w->rid_len, buf, len);
        free(buf);
        if (rc == -EHOSTUNREACH)
            w->rid_len = 0; /* gone */
    }
}

static bool s_any(const server_t *s)
{
    for (int i = 0; i < MR_WATCHERS_MAX; i++)
        if (s->watchers[i].rid_len)
            return true;
    return false;
}

void watch_event(server_t *s, const char *kind, const char *text)
{
    s_forget_revoked(s);
    if (!s_any(s))
        return;
    Medroute__V1__WatchEvent ev = MEDROUTE__V1__WATCH_EVENT__INIT;
    ev.at_ms = mr_now_ms();
    ev.kind = (char *)kind;
    ev.text = (char *)text;
    s_send(s, &ev);
}

void watch_tick(server_t *s, int64_t mono_ms)
{
    for (int i = 0; i < MR_WATCHERS_MAX; i++)
        if (s->watchers[i].rid_len && mono_ms - s->watchers[i].renewed_ms > S_STALE_MS)
            s->watchers[i].rid_len = 0;
    s_forget_revoked(s);
    Medroute__V1__Counter changed[CNT_COUNT];
    Medroute__V1__Counter *cp[CNT_COUNT];
    size_t n = 0;
    char text[512];
    size_t used = 0;
    text[0] = '\0';
    for (int c = 0; c < CNT_COUNT; c++) {
        uint64_t delta = s->counters.v[c] - s->watch_snapshot[c];
        if (delta == 0)
            continue;
        medroute__v1__counter__init(&changed[n]);
        changed[n].name = (char *)counters_name((counter_t)c);
        changed[n].value = delta;
        cp[n] = &changed[n];
        n++;
        int k = snprintf(text + used, sizeof text - used, "%s%s +%llu", used ? " " : "",
                         counters_name((counter_t)c), (unsigned long long)delta);
        if (k > 0 && (size_t)k < sizeof text - used)
            used += (size_t)k;
    }
    memcpy(s->watch_snapshot, s->counters.v, sizeof s->watch_snapshot);
    if (n == 0 || !s_any(s))
        return;
    Medroute__V1__WatchEvent ev = MEDROUTE__V1__WATCH_EVENT__INIT;
    ev.at_ms = mr_now_ms();
    ev.kind = "counters";
    ev.text = text;
    ev.n_changed = n;
    ev.changed = cp;
    s_send(s, &ev);
}
