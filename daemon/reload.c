/*
 * reload.c - swap in a new config and registry, keeping every facility's
 * index (and so its state, its queue and the store requests in flight that
 * name it by index).
 *
 * Invariant: a facility keeps its registry index for the life of the
 * process.  Facilities new in the config are appended; removed ones stay in
 * the registry marked removed (they cannot connect, and nothing can be sent
 * to them).
 */
#include "reload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notify.h"
#include "router.h"
#include "session.h"

static bool s_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* What a reload cannot change. */
static const char *s_needs_restart(const conf_t *o, const conf_t *n)
{
    if (!s_same(o->facility_endpoint, n->facility_endpoint))
        return "facility_endpoint";
    if (!s_same(o->operator_endpoint, n->operator_endpoint))
        return "operator_endpoint";
    if (!s_same(o->http_listen, n->http_listen))
        return "http_listen";
    if (!s_same(o->data_dir, n->data_dir))
        return "data_dir";
    if (o->insecure != n->insecure)
        return "insecure";
    if (!s_same(o->server_secret_key, n->server_secret_key))
        return "server_key_file";
    if (o->sync_full != n->sync_full || o->batch_max != n->batch_max ||
        o->batch_ms != n->batch_ms || o->restart_scan_rows != n->restart_scan_rows)
        return "store";
    if (!s_same(o->timezone, n->timezone))
        return "timezone";
    /* Connected facilities were told it in their Welcome and address their
     * capacity notices and visit tallies to it; the tallies' labels hold it. */
    if (!s_same(o->broker_id, n->broker_id))
        return "broker_id";
    /* Both are set on the sockets when they bind (ZMQ_MAXMSGSIZE is twice
     * the limit, ZMQ_HANDSHAKE_IVL): a new value would reach the Welcome
     * but not ZeroMQ, which would then cut the connections of messages the
     * Welcome allows. */
    if (o->max_message_bytes != n->max_message_bytes)
        return "limits.max_message_bytes";
    if (o->handshake_ms != n->handshake_ms)
        return "limits.handshake_ms";
    return NULL;
}

/* The new registry: old facilities at their old index (updated, or marked
 * removed), then the new ones. */
static registry_t *s_merge(const registry_t *old, const conf_t *n, size_t *added,
                           size_t *removed, char *why, size_t why_len)
{
    size_t n_old = registry_count(old), total = n_old;
    facility_t *list = calloc(n_old + n->n_facilities, sizeof *list);
    if (list == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    *added = *removed = 0;
    for (size_t i = 0; i < n_old; i++) {
        const facility_t *o = registry_at(old, i);
        list[i] = *o; /* registry_new copies the strings */
        list[i].removed = true;
        for (size_t j = 0; j < n->n_facilities; j++) {
            if (strcmp(n->facilities[j].id, o->id) == 0) {
                list[i] = n->facilities[j];
                list[i].removed = false;
            }
        }
        *removed += list[i].removed && !o->removed;
    }
    for (size_t j = 0; j < n->n_facilities; j++) {
        bool known = false;
        for (size_t i = 0; i < n_old && !known; i++)
            known = strcmp(registry_at(old, i)->id, n->facilities[j].id) == 0;
        if (!known) {
            list[total] = n->facilities[j];
            list[total++].removed = false;
            (*added)++;
        }
    }
    registry_t *reg = registry_new(list, total, why, why_len);
    free(list);
    return reg;
}

/* Stopping: a reload would tell systemd READY=1 after STOPPING=1, and
 * put a configuration in force for the drain's last seconds only.  Logged
 * once per stop: each SIGHUP of a reload loop need not say it again. */
static int s_refuse_while_stopping(server_t *s, char *why, size_t why_len)
{
    snprintf(why, why_len, "the broker is shutting down");
    if (!s->reload_ignored)
        log_info(s->log, "server.reload_ignored", "reason=\"shutting down\"");
    s->reload_ignored = true;
    return -ESHUTDOWN;
}

int reload_config(server_t *s, char *why, size_t why_len)
{
    if (s->draining)
        return s_refuse_while_stopping(s, why, why_len);
    char err[4096];
    conf_t *n = s->config_path ? conf_load_file(s->config_path, err, sizeof err)
                               : conf_load_string(s->config_text, "<embedded>", err, sizeof err);
    registry_t *reg = NULL;
    int rc = -EINVAL;
    if (n == NULL || conf_check_security(n, err, sizeof err) != 0) {
        snprintf(why, why_len, "%s", err);
        goto out;
    }
    if (s->data_dir_override != NULL) {
        /* --data-dir wins over the file, now as at start. */
        char *dir = strdup(s->data_dir_override);
        if (dir == NULL) {
            snprintf(why, why_len, "out of memory");
            goto out;
        }
        free(n->data_dir);
        n->data_dir = dir;
    }
    const char *fixed = s_needs_restart(s->conf, n);
    if (fixed != NULL) {
        snprintf(why, why_len, "%s changed: that needs a restart", fixed);
        goto out;
    }
    size_t added, removed;
    reg = s_merge(s->registry, n, &added, &removed, why, why_len);
    if (reg == NULL)
        goto out;
    size_t count = registry_count(reg), old_count = registry_count(s->registry);
    if (count > old_count) {
        peer_t *p = realloc(s->peers, count * sizeof *p);
        if (p == NULL) {
            snprintf(why, why_len, "out of memory");
            goto out;
        }
        memset(p + old_count, 0, (count - old_count) * sizeof *p);
        for (size_t i = old_count; i < count; i++)
            p[i].complete = false; /* learn its queue from the store */
        s->peers = p;
    }
    notify_state("RELOADING=1");
    registry_t *old_reg = s->registry;
    conf_t *old_conf = s->conf;
    s->registry = reg;
    s->conf = n;
    reg = NULL;
    n = NULL;
    /* Removed facilities: their sessions end, their messages stay stored. */
    for (size_t i = 0; i < old_count; i++) {
        if (registry_at(s->registry, i)->removed && !registry_at(old_reg, i)->removed) {
            session_revoke(s, (int)i, "removed_from_registry");
            router_forget_memory(s, (int)i);
        }
    }
    session_keys_reassigned(s);
    /* Added facilities: the store may hold a queue for one that an earlier
     * configuration listed; its Welcome counts it. */
    if (count > old_count && router_count_added(s, old_count) != 0)
        log_error(s->log, "router.oom", "effect=\"the added facilities' Welcome says pending=0\"");
    registry_destroy(&old_reg);
    conf_destroy(&old_conf);
    log_info(s->log, "server.reloaded", "facilities=%zu added=%zu removed=%zu",
             registry_count(s->registry), added, removed);
    notify_state("READY=1");
    rc = 0;
out:
    if (rc != 0) {
        /* The parser's problems, a line each, may quote the file's values. */
        char safe[1024];
        log_error(s->log, "server.reload_refused", "reason=\"%s\"",
                  log_clean(safe, sizeof safe, why));
    }
    registry_destroy(&reg);
    conf_destroy(&n);
    return rc;
}
