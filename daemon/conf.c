/*
 * conf.c - load medroute.conf with libconfig and check it against a schema.
 *
 * The schema is the tables below: each known key, its type, where it lands
 * in conf_t, and its range.  Anything not in a table is an unknown key and an
 * error.  Problems are collected (not just the first) so that
 * `medrouted --check-config` reports them all at once.
 */
#include "conf.h"

#include "indicators.h"
#include "log.h"
#include "mr_codec.h"
#include "mr_keyfile.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libconfig.h>
#include <zmq.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef enum { S_STR, S_BOOL, S_U32, S_DOUBLE } s_type_t;

typedef struct {
    const char *key;
    s_type_t type;
    size_t offset;
    long long min, max;
} s_field_t;

#define S_FIELD(k, t, member, lo, hi) {k, t, offsetof(conf_t, member), lo, hi}

static const s_field_t s_top[] = {
    S_FIELD("broker_id", S_STR, broker_id, 0, 0),
    S_FIELD("facility_endpoint", S_STR, facility_endpoint, 0, 0),
    S_FIELD("operator_endpoint", S_STR, operator_endpoint, 0, 0),
    S_FIELD("http_listen", S_STR, http_listen, 0, 0),
    S_FIELD("data_dir", S_STR, data_dir, 0, 0),
    S_FIELD("insecure", S_BOOL, insecure, 0, 0),
    S_FIELD("log_level", S_STR, log_level, 0, 0),
    S_FIELD("timezone", S_STR, timezone, 0, 0),
    S_FIELD("server_key_file", S_STR, server_key_file, 0, 0),
    {NULL, 0, 0, 0, 0},
};

static const s_field_t s_referrals[] = {
    S_FIELD("min_reserved_share", S_DOUBLE, min_reserved_share, 0, 1),
    S_FIELD("allow_low_reserve", S_BOOL, allow_low_reserve, 0, 0),
    S_FIELD("reserve_release_cutoff_s", S_U32, reserve_cutoff_s, 0, 30 * 86400),
    S_FIELD("appointment_grace_s", S_U32, appointment_grace_s, 0, 30 * 86400),
    {NULL, 0, 0, 0, 0},
};

static const s_field_t s_sla[] = {
    S_FIELD("urgent_accept_s", S_U32, sla_urgent_accept_s, 1, 30 * 86400),
    S_FIELD("stat_accept_s", S_U32, sla_stat_accept_s, 1, 30 * 86400),
    S_FIELD("imaging_final_s", S_U32, sla_imaging_final_s, 1, 30 * 86400),
    S_FIELD("stat_imaging_final_s", S_U32, sla_stat_imaging_final_s, 1, 30 * 86400),
    S_FIELD("lab_result_s", S_U32, sla_lab_result_s, 1, 30 * 86400),
    S_FIELD("stat_lab_result_s", S_U32, sla_stat_lab_result_s, 1, 30 * 86400),
    S_FIELD("critical_readback_s", S_U32, sla_critical_readback_s, 1, 30 * 86400),
    {NULL, 0, 0, 0, 0},
};

static const s_field_t s_limits[] = {
    S_FIELD("max_message_bytes", S_U32, max_message_bytes, 1024, 64 << 20),
    S_FIELD("max_inflight", S_U32, max_inflight, 1, 10000),
    S_FIELD("heartbeat_interval_ms", S_U32, heartbeat_interval_ms, 100, 600000),
    S_FIELD("heartbeat_timeout_ms", S_U32, heartbeat_timeout_ms, 300, 3600000),
    S_FIELD("redelivery_timeout_ms", S_U32, redelivery_timeout_ms, 100, 86400000),
    S_FIELD("handshake_ms", S_U32, handshake_ms, 100, 600000),
    S_FIELD("rate_per_s", S_U32, rate_per_s, 1, 1000000),
    S_FIELD("rate_burst", S_U32, rate_burst, 1, 10000000),
    S_FIELD("queue_quota", S_U32, queue_quota, 1, 100000000),
    {NULL, 0, 0, 0, 0},
};

static const s_field_t s_store[] = {
    S_FIELD("batch_max", S_U32, batch_max, 1, 100000),
    S_FIELD("batch_ms", S_U32, batch_ms, 0, 1000),
    S_FIELD("retention_days", S_U32, retention_days, 0, 36500),
    S_FIELD("restart_scan_rows", S_U32, restart_scan_rows, 1, 1000000000),
    S_FIELD("stall_after_s", S_U32, stall_after_s, 1, 3600),
    {NULL, 0, 0, 0, 0},
};

#define S_TTL(k, kind) {k, S_U32, offsetof(conf_t, ttl_s) + (kind) * sizeof(uint32_t), 1, 31536000}
static const s_field_t s_ttl[] = {
    S_TTL("referral", MEDROUTE__V1__KIND__KIND_REFERRAL),
    S_TTL("referral_update", MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE),
    S_TTL("imaging_request", MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST),
    S_TTL("imaging_report", MEDROUTE__V1__KIND__KIND_IMAGING_REPORT),
    S_TTL("lab_order", MEDROUTE__V1__KIND__KIND_LAB_ORDER),
    S_TTL("lab_result", MEDROUTE__V1__KIND__KIND_LAB_RESULT),
    S_TTL("critical_ack", MEDROUTE__V1__KIND__KIND_CRITICAL_ACK),
    {NULL, 0, 0, 0, 0},
};

/* Problems found so far, appended to the caller's buffer. */
typedef struct {
    char *buf;
    size_t len;
    size_t used;
    int count;
    const char *name;
} s_report_t;

__attribute__((format(printf, 3, 4))) static void s_problem(s_report_t *r, int line,
                                                             const char *fmt, ...)
{
    r->count++;
    if (r->used + 1 >= r->len)
        return;
    int n = line > 0 ? snprintf(r->buf + r->used, r->len - r->used, "%s%s:%d: ",
                                r->used ? "\n" : "", r->name, line)
                     : snprintf(r->buf + r->used, r->len - r->used, "%s%s: ",
                                r->used ? "\n" : "", r->name);
    if (n < 0)
        return;
    r->used = (size_t)n + r->used >= r->len ? r->len - 1 : r->used + (size_t)n;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(r->buf + r->used, r->len - r->used, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    r->used = (size_t)n + r->used >= r->len ? r->len - 1 : r->used + (size_t)n;
}

static void s_defaults(conf_t *c)
{
    c->max_message_bytes = 1 << 20;
    c->handshake_ms = 10000;
    c->rate_per_s = 2000;
    c->rate_burst = 20000;
    c->queue_quota = 2000000;
    c->max_inflight = 64;
    c->heartbeat_interval_ms = 5000;
    c->heartbeat_timeout_ms = 15000;
    c->redelivery_timeout_ms = 30000;
    c->sync_full = true;
    c->batch_max = 1000;
    c->batch_ms = 20;
    c->stall_after_s = 15;
    c->retention_days = 30;
    c->restart_scan_rows = 1000000;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL] = 3 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE] = 7 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST] = 2 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REPORT] = 7 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_ORDER] = 2 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_RESULT] = 7 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_CAPACITY] = 7 * 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_CRITICAL_ACK] = 86400;
    c->ttl_s[MEDROUTE__V1__KIND__KIND_VISIT_TALLY] = 86400;
    c->min_reserved_share = 0.20;
    c->reserve_cutoff_s = 86400;
    c->appointment_grace_s = 86400;
    c->sla_urgent_accept_s = 1800;
    c->sla_stat_accept_s = 600;
    c->sla_imaging_final_s = 4 * 3600;
    c->sla_stat_imaging_final_s = 3600;
    c->sla_lab_result_s = 4 * 3600;
    c->sla_stat_lab_result_s = 3600;
    c->sla_critical_readback_s = 900;
}

static const s_field_t *s_lookup(const s_field_t *fields, const char *key)
{
    for (const s_field_t *f = fields; f->key; f++)
        if (strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

/* Reads one scalar setting into conf_t according to its schema entry. */
static void s_read_field(s_report_t *r, conf_t *c, const s_field_t *f, config_setting_t *s,
                         const char *path)
{
    int line = (int)config_setting_source_line(s);
    char *base = (char *)c;
    int type = config_setting_type(s);
    switch (f->type) {
    case S_STR: {
        if (type != CONFIG_TYPE_STRING) {
            s_problem(r, line, "%s: expected a string", path);
            return;
        }
        char **dst = (char **)(base + f->offset);
        free(*dst);
        *dst = strdup(config_setting_get_string(s));
        if (*dst == NULL)
            s_problem(r, line, "%s: out of memory", path);
        return;
    }
    case S_BOOL:
        if (type != CONFIG_TYPE_BOOL) {
            s_problem(r, line, "%s: expected true or false", path);
            return;
        }
        *(bool *)(base + f->offset) = config_setting_get_bool(s) != 0;
        return;
    case S_U32: {
        long long v;
        if (type == CONFIG_TYPE_INT)
            v = config_setting_get_int(s);
        else if (type == CONFIG_TYPE_INT64)
            v = config_setting_get_int64(s);
        else {
            s_problem(r, line, "%s: expected an integer", path);
            return;
        }
        if (v < f->min || v > f->max) {
            s_problem(r, line, "%s: %lld is out of range %lld..%lld", path, v, f->min, f->max);
            return;
        }
        *(uint32_t *)(base + f->offset) = (uint32_t)v;
        return;
    }
    case S_DOUBLE: {
        double v;
        if (type == CONFIG_TYPE_FLOAT)
            v = config_setting_get_float(s);
        else if (type == CONFIG_TYPE_INT)
            v = config_setting_get_int(s);
        else {
            s_problem(r, line, "%s: expected a number", path);
            return;
        }
        if (v < (double)f->min || v > (double)f->max) {
            s_problem(r, line, "%s: %g is out of range %lld..%lld", path, v, f->min, f->max);
            return;
        }
        *(double *)(base + f->offset) = v;
        return;
    }
    }
}

/* Applies a group of scalar settings; any member not in fields is an error. */
static void s_read_group(s_report_t *r, conf_t *c, config_setting_t *group, const char *prefix,
                         const s_field_t *fields)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *key = config_setting_name(s);
        char path[128];
        snprintf(path, sizeof path, "%s%s", prefix, key ? key : "?");
        const s_field_t *f = key ? s_lookup(fields, key) : NULL;
        if (f == NULL) {
            s_problem(r, (int)config_setting_source_line(s), "%s: unknown key", path);
            continue;
        }
        s_read_field(r, c, f, s, path);
    }
}

static void s_read_store(s_report_t *r, conf_t *c, config_setting_t *group)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *key = config_setting_name(s);
        int line = (int)config_setting_source_line(s);
        if (key && strcmp(key, "synchronous") == 0) {
            const char *v = config_setting_get_string(s);
            if (v && strcmp(v, "full") == 0)
                c->sync_full = true;
            else if (v && strcmp(v, "normal") == 0)
                c->sync_full = false;
            else
                s_problem(r, line, "store.synchronous: expected \"full\" or \"normal\"");
            continue;
        }
        const s_field_t *f = key ? s_lookup(s_store, key) : NULL;
        char path[128];
        snprintf(path, sizeof path, "store.%s", key ? key : "?");
        if (f == NULL)
            s_problem(r, line, "%s: unknown key", path);
        else
            s_read_field(r, c, f, s, path);
    }
}

/* Ids are label values in /metrics and the tallies (source="ID") and
 * key=value fields in the log: a quote, a backslash, a space or a control
 * character would break the exposition (a scrape is rejected whole) and the
 * log's fields.  Other bytes (UTF-8 included) are fine. */
static bool s_id_safe(const char *id)
{
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        if (*p <= ' ' || *p == 0x7f || *p == '"' || *p == '\\')
            return false;
    return true;
}

#define S_ID_CHARS "no quotes, backslashes, spaces or control characters"

static void s_read_facilities(s_report_t *r, conf_t *c, config_setting_t *list)
{
    int type = config_setting_type(list);
    if (type != CONFIG_TYPE_LIST) {
        s_problem(r, (int)config_setting_source_line(list),
                  "facilities: expected a list ( { id = ...; }, ... )");
        return;
    }
    int n = config_setting_length(list);
    c->facilities = calloc(n > 0 ? (size_t)n : 1, sizeof *c->facilities);
    if (c->facilities == NULL) {
        s_problem(r, 0, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        int line = (int)config_setting_source_line(g);
        facility_t *f = &c->facilities[c->n_facilities++];
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            s_problem(r, line, "facilities[%d]: expected a group { id = ...; }", i);
            continue;
        }
        int m = config_setting_length(g);
        const char *role = NULL;
        for (int j = 0; j < m; j++) {
            config_setting_t *s = config_setting_get_elem(g, (unsigned)j);
            const char *key = config_setting_name(s);
            int sline = (int)config_setting_source_line(s);
            const char *v = config_setting_get_string(s);
            if (v == NULL) {
                s_problem(r, sline, "facilities[%d].%s: expected a string", i, key ? key : "?");
                continue;
            }
            char **dst = NULL;
            if (strcmp(key, "id") == 0)
                dst = &f->id;
            else if (strcmp(key, "name") == 0)
                dst = &f->name;
            else if (strcmp(key, "host") == 0)
                dst = &f->host;
            else if (strcmp(key, "public_key") == 0)
                dst = &f->public_key;
            else if (strcmp(key, "role") == 0)
                role = v;
            else
                s_problem(r, sline, "facilities[%d].%s: unknown key", i, key);
            if (dst != NULL && (*dst = strdup(v)) == NULL)
                s_problem(r, sline, "out of memory");
            else if (dst == &f->id && !s_id_safe(v))
                s_problem(r, sline, "facilities[%d].id: " S_ID_CHARS, i);
        }
        if (f->id == NULL)
            s_problem(r, line, "facilities[%d]: id is required", i);
        if (role == NULL)
            s_problem(r, line, "facilities[%d]: role is required", i);
        else if (registry_role_parse(role, &f->role) < 0)
            s_problem(r, line,
                      "facilities[%d].role: \"%s\" is not one of lead, township, "
                      "imaging_centre, lab_centre, ecg_centre, county_member",
                      i, role);
    }
}

static void s_read_indicators(s_report_t *r, conf_t *c, config_setting_t *list)
{
    if (config_setting_type(list) != CONFIG_TYPE_LIST) {
        s_problem(r, (int)config_setting_source_line(list),
                  "indicators: expected a list ( { name = ...; target = ...; warn = ...; }, ... )");
        return;
    }
    int n = config_setting_length(list);
    c->indicators = calloc(n > 0 ? (size_t)n : 1, sizeof *c->indicators);
    if (c->indicators == NULL) {
        s_problem(r, 0, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        int line = (int)config_setting_source_line(g);
        indicator_conf_t *ic = &c->indicators[c->n_indicators++];
        const char *name = NULL;
        double target = 0, warn = 0;
        int has_target = 0, has_warn = 0;
        for (int j = 0; j < config_setting_length(g); j++) {
            config_setting_t *s = config_setting_get_elem(g, (unsigned)j);
            const char *key = config_setting_name(s);
            int t = config_setting_type(s);
            double v = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(s)
                       : t == CONFIG_TYPE_INT  ? config_setting_get_int(s)
                                               : 0;
            if (key && strcmp(key, "name") == 0 && t == CONFIG_TYPE_STRING)
                name = config_setting_get_string(s);
            else if (key && strcmp(key, "target") == 0 &&
                     (t == CONFIG_TYPE_FLOAT || t == CONFIG_TYPE_INT))
                target = v, has_target = 1;
            else if (key && strcmp(key, "warn") == 0 &&
                     (t == CONFIG_TYPE_FLOAT || t == CONFIG_TYPE_INT))
                warn = v, has_warn = 1;
            else
                s_problem(r, (int)config_setting_source_line(s),
                          "indicators[%d].%s: unknown key or wrong type", i, key ? key : "?");
        }
        const indicator_def_t *def = name ? indicators_find(name) : NULL;
        if (def == NULL) {
            s_problem(r, line, "indicators[%d].name: \"%s\" is not a known indicator", i,
                      name ? name : "");
            continue;
        }
        if (!has_target || !has_warn) {
            s_problem(r, line, "indicators[%d]: target and warn are required", i);
            continue;
        }
        if ((def->cmp == CMP_AT_LEAST && warn < target) || (def->cmp == CMP_AT_MOST && warn > target))
            s_problem(r, line, "indicators[%d].warn: must be on the safe side of the target (%s)",
                      i, def->cmp == CMP_AT_LEAST ? ">= target" : "<= target");
        ic->name = strdup(name);
        ic->target = target;
        ic->warn = warn;
        if (ic->name == NULL)
            s_problem(r, 0, "out of memory");
    }
}

static bool s_z85_key_ok(const char *k)
{
    uint8_t raw[32];
    return k != NULL && strlen(k) == 40 && zmq_z85_decode(raw, k) != NULL;
}

static void s_read_operators(s_report_t *r, conf_t *c, config_setting_t *list)
{
    if (config_setting_type(list) != CONFIG_TYPE_LIST) {
        s_problem(r, (int)config_setting_source_line(list),
                  "operators: expected a list ( { name = ...; public_key = ...; role = ...; } )");
        return;
    }
    int n = config_setting_length(list);
    c->operators = calloc(n > 0 ? (size_t)n : 1, sizeof *c->operators);
    if (c->operators == NULL) {
        s_problem(r, 0, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        int line = (int)config_setting_source_line(g);
        conf_operator_t *o = &c->operators[c->n_operators++];
        const char *name = NULL, *key = NULL, *role = NULL;
        for (int j = 0; j < config_setting_length(g); j++) {
            config_setting_t *s = config_setting_get_elem(g, (unsigned)j);
            const char *k = config_setting_name(s);
            const char *v = config_setting_get_string(s);
            if (k && v && strcmp(k, "name") == 0)
                name = v;
            else if (k && v && strcmp(k, "public_key") == 0)
                key = v;
            else if (k && v && strcmp(k, "role") == 0)
                role = v;
            else
                s_problem(r, (int)config_setting_source_line(s),
                          "operators[%d].%s: unknown key or not a string", i, k ? k : "?");
        }
        if (name == NULL || !s_z85_key_ok(key) || role == NULL ||
            (strcmp(role, "admin") != 0 && strcmp(role, "read_only") != 0)) {
            s_problem(r, line,
                      "operators[%d]: name, public_key (40 Z85 characters) and role "
                      "(\"admin\" or \"read_only\") are required",
                      i);
            continue;
        }
        o->name = strdup(name);
        o->public_key = strdup(key);
        o->admin = strcmp(role, "admin") == 0;
        if (o->name == NULL || o->public_key == NULL)
            s_problem(r, 0, "out of memory");
    }
}

/* Reads the broker's secret key (first line of the file, Z85). */
static void s_read_server_key(s_report_t *r, conf_t *c)
{
    /* "$CREDENTIALS_DIRECTORY/NAME": a systemd credential (LoadCredential=),
     * readable by the service's dynamic user. */
    char path[4096];
    const char *prefix = "$CREDENTIALS_DIRECTORY/";
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    bool cred = strncmp(c->server_key_file, prefix, strlen(prefix)) == 0 && creds != NULL;
    int n = cred ? snprintf(path, sizeof path, "%s/%s", creds, c->server_key_file + strlen(prefix))
                 : snprintf(path, sizeof path, "%s", c->server_key_file);
    /* Cut, it would name another file (".../broker.ke"). */
    if (n < 0 || (size_t)n >= sizeof path) {
        s_problem(r, 0, "server_key_file: the path is longer than %zu bytes%s", sizeof path - 1,
                  cred ? " with $CREDENTIALS_DIRECTORY put in" : "");
        return;
    }
    /* The key that lets anyone pose as the broker to every facility: read
     * with libmedroute's rules (mr_keyfile.h), like PostgreSQL refused
     * where other users may read it or anyone but its owner change it, or
     * owned by another user than ours or root.  The
     * kind first: a .pub is rightly readable by all, and its mode is not the
     * problem. */
    mr_keyfile_t kf;
    int rc = mr_keyfile_read(path, &kf);
    if (rc != 0) {
        s_problem(r, 0, "server_key_file: cannot read %s (%s)", path,
                  rc == -EINVAL ? "not a regular file" : strerror(-rc));
        goto out;
    }
    if (kf.kind == MR_KEYFILE_PUBLIC) {
        s_problem(r, 0,
                  "server_key_file: %s is the broker's public key (NAME.pub); give its secret "
                  "key (NAME.key)",
                  path);
        goto out;
    }
    if (kf.foreign) {
        s_problem(r, 0,
                  "server_key_file: %s is owned by another user (uid %u), who may read or "
                  "change it: chown it to the broker's user or root",
                  path, (unsigned)kf.owner);
        goto out;
    }
    if (kf.loose) {
        s_problem(r, 0,
                  "server_key_file: %s may be read or changed by other users (mode %04o): "
                  "chmod 600 it",
                  path, (unsigned)kf.mode);
        goto out;
    }
    if (!s_z85_key_ok(kf.key)) {
        s_problem(r, 0, "server_key_file: %s holds no Z85 secret key", path);
        goto out;
    }
    c->server_secret_key = strdup(kf.key);
    if (c->server_secret_key == NULL)
        s_problem(r, 0, "out of memory");
out:
    /* Refused or taken, the key it read is wiped (a mode too loose, for
     * one, is no reason to leave it on the stack). */
    explicit_bzero(&kf, sizeof kf);
}

/* A key is one identity: shared by two facilities (or a facility and an
 * operator), it would authenticate as whichever comes first (a copy-paste
 * during a rotation makes a township the lead hospital). */
static void s_keys_unique(s_report_t *r, const conf_t *c)
{
    size_t nf = c->n_facilities, n = nf + c->n_operators;
    for (size_t i = 0; i < n; i++) {
        const char *a = i < nf ? c->facilities[i].public_key : c->operators[i - nf].public_key;
        for (size_t j = i + 1; a != NULL && j < n; j++) {
            const char *b = j < nf ? c->facilities[j].public_key : c->operators[j - nf].public_key;
            if (b == NULL || strcmp(a, b) != 0)
                continue;
            char first[96], second[96];
            snprintf(first, sizeof first, i < nf ? "facilities[%zu]" : "operators[%zu]",
                     i < nf ? i : i - nf);
            snprintf(second, sizeof second, j < nf ? "facilities[%zu]" : "operators[%zu]",
                     j < nf ? j : j - nf);
            s_problem(r, 0, "%s.public_key: the same key as %s (each key is one identity)",
                      second, first);
        }
    }
}

/* A zone glibc can load: TZ set to any other name gives UTC without a word,
 * and every local day (tallies, periods, slot cut-offs) would be off by the
 * zone's offset. */
static const char *s_tzdir(void)
{
    const char *dir = getenv("TZDIR");
    return dir != NULL ? dir : "/usr/share/zoneinfo";
}

static bool s_zone_known(const char *zone)
{
    char path[4096];
    const char *dir = s_tzdir();
    if (zone[0] == ':')
        zone++;
    if (zone[0] == '\0' || strstr(zone, "..") != NULL)
        return false;
    int n = zone[0] == '/' ? snprintf(path, sizeof path, "%s", zone)
                           : snprintf(path, sizeof path, "%s/%s", dir, zone);
    struct stat st;
    return n > 0 && (size_t)n < sizeof path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The broker is a destination of its own: a facility of its id would share
 * its label in the tallies and stats with what is addressed to the broker
 * (capacity notices, visit tallies), and the two could not be told apart. */
static void s_broker_id_unique(s_report_t *r, const conf_t *c)
{
    for (size_t i = 0; i < c->n_facilities; i++)
        if (c->facilities[i].id != NULL && strcmp(c->facilities[i].id, c->broker_id) == 0)
            s_problem(r, 0, "facilities[%zu].id: \"%s\" is the broker's own id (broker_id)", i,
                      c->broker_id);
}

static void s_validate(s_report_t *r, conf_t *c)
{
    if (c->facility_endpoint == NULL)
        s_problem(r, 0, "facility_endpoint: required");
    if (c->operator_endpoint == NULL)
        s_problem(r, 0, "operator_endpoint: required");
    if (c->data_dir == NULL)
        s_problem(r, 0, "data_dir: required");
    if (c->heartbeat_timeout_ms <= c->heartbeat_interval_ms)
        s_problem(r, 0, "limits.heartbeat_timeout_ms: must exceed heartbeat_interval_ms");
    if (c->n_facilities == 0)
        s_problem(r, 0, "facilities: at least one facility is required");
    for (size_t i = 0; i < c->n_facilities; i++)
        if (c->facilities[i].public_key && !s_z85_key_ok(c->facilities[i].public_key))
            s_problem(r, 0, "facilities[%zu].public_key: not a 40-character Z85 key", i);
    s_keys_unique(r, c);
    /* (A missing server_key_file is reported by conf_check_security, so that
     * the schema can be checked on its own.) */
    if (!c->insecure && c->server_key_file != NULL)
        s_read_server_key(r, c);
    if (r->count == 0) {
        char why[256];
        registry_t *reg = registry_new(c->facilities, c->n_facilities, why, sizeof why);
        if (reg == NULL)
            s_problem(r, 0, "facilities: %s", why);
        registry_destroy(&reg);
    }
    if (c->broker_id == NULL && (c->broker_id = strdup("medroute")) == NULL)
        s_problem(r, 0, "out of memory");
    /* The broker is a destination like a facility: its id goes into keys and
     * tally labels sized for facility ids. */
    else if (c->broker_id != NULL &&
             (c->broker_id[0] == '\0' || strlen(c->broker_id) > MR_FACILITY_ID_MAX))
        s_problem(r, 0, "broker_id: must be 1..%d characters", MR_FACILITY_ID_MAX);
    else if (c->broker_id != NULL && !s_id_safe(c->broker_id))
        s_problem(r, 0, "broker_id: " S_ID_CHARS);
    else if (c->broker_id != NULL)
        s_broker_id_unique(r, c);
    log_level_t level;
    if (c->log_level == NULL && (c->log_level = strdup("info")) == NULL)
        s_problem(r, 0, "out of memory");
    /* Here, not only at start: --check-config and a reload refuse it too. */
    else if (c->log_level != NULL && log_level_parse(c->log_level, &level) != 0)
        s_problem(r, 0, "log_level: \"%s\" is not one of error, warn, info, debug",
                  c->log_level);
    if (c->timezone == NULL && (c->timezone = strdup("Asia/Shanghai")) == NULL)
        s_problem(r, 0, "out of memory");
    else if (c->timezone != NULL && !s_zone_known(c->timezone))
        s_problem(r, 0, "timezone: \"%s\" is not a zone of the tz database (%s)",
                  c->timezone, s_tzdir());
}

/* Every string of the file must be UTF-8: names and ids reach facilities'
 * frames, the operators' replies, the log and the HTTP pages, whose readers
 * require it.  A file saved as GBK by a Windows editor is the usual cause.
 * path is the setting's, as the other problems name it ("facilities[2].name"). */
static void s_check_utf8(s_report_t *r, const config_setting_t *s, const char *path)
{
    int type = config_setting_type(s);
    if (type == CONFIG_TYPE_STRING) {
        const char *v = config_setting_get_string(s);
        if (v != NULL && !mr_utf8_valid(v, strlen(v)))
            s_problem(r, (int)config_setting_source_line(s),
                      "%s: not valid UTF-8 (save the file as UTF-8)", path);
        return;
    }
    if (type != CONFIG_TYPE_GROUP && type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
        return;
    int n = config_setting_length(s);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *key = config_setting_name(e);
        char sub[160];
        if (key != NULL)
            snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", key);
        else
            snprintf(sub, sizeof sub, "%s[%d]", path, i);
        s_check_utf8(r, e, sub);
    }
}

static conf_t *s_load(config_t *cfg, int read_ok, const char *name, char *err, size_t errlen)
{
    s_report_t r = {.buf = err, .len = errlen, .name = name};
    if (errlen)
        err[0] = '\0';
    conf_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        s_problem(&r, 0, "out of memory");
        return NULL;
    }
    s_defaults(c);
    if (!read_ok) {
        s_problem(&r, config_error_line(cfg), "%s", config_error_text(cfg));
        goto out;
    }
    config_setting_t *root = config_root_setting(cfg);
    s_check_utf8(&r, root, "");
    int n = config_setting_length(root);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *key = config_setting_name(s);
        int line = (int)config_setting_source_line(s);
        const s_field_t *f = s_lookup(s_top, key);
        if (f != NULL) {
            s_read_field(&r, c, f, s, key);
            /* Here, with its line, not at the bind: --check-config and a
             * reload refuse it too, and the start does not half happen. */
            if (strcmp(key, "http_listen") == 0 && c->http_listen != NULL &&
                conf_http_listen_parse(c->http_listen, NULL) != 0)
                s_problem(&r, line,
                          "http_listen: \"%s\" is not HOST:PORT with HOST an IPv4 address or "
                          "localhost and PORT a number from 1 to 65535",
                          c->http_listen);
        } else if (strcmp(key, "facilities") == 0)
            s_read_facilities(&r, c, s);
        else if (strcmp(key, "indicators") == 0)
            s_read_indicators(&r, c, s);
        else if (strcmp(key, "operators") == 0)
            s_read_operators(&r, c, s);
        else if (config_setting_type(s) != CONFIG_TYPE_GROUP &&
                 (strcmp(key, "limits") == 0 || strcmp(key, "store") == 0 ||
                  strcmp(key, "ttl") == 0 || strcmp(key, "referrals") == 0 ||
                  strcmp(key, "sla") == 0))
            s_problem(&r, line, "%s: expected a group { ... }", key);
        else if (strcmp(key, "limits") == 0)
            s_read_group(&r, c, s, "limits.", s_limits);
        else if (strcmp(key, "store") == 0)
            s_read_store(&r, c, s);
        else if (strcmp(key, "ttl") == 0)
            s_read_group(&r, c, s, "ttl.", s_ttl);
        else if (strcmp(key, "referrals") == 0)
            s_read_group(&r, c, s, "referrals.", s_referrals);
        else if (strcmp(key, "sla") == 0)
            s_read_group(&r, c, s, "sla.", s_sla);
        else
            s_problem(&r, line, "%s: unknown key", key);
    }
    s_validate(&r, c);
out:
    if (r.count > 0)
        conf_destroy(&c);
    return c;
}

conf_t *conf_load_file(const char *path, char *err, size_t errlen)
{
    config_t cfg;
    config_init(&cfg);
    int ok = config_read_file(&cfg, path) == CONFIG_TRUE;
    conf_t *c = s_load(&cfg, ok, path, err, errlen);
    config_destroy(&cfg);
    return c;
}

conf_t *conf_load_string(const char *text, const char *name, char *err, size_t errlen)
{
    config_t cfg;
    config_init(&cfg);
    int ok = config_read_string(&cfg, text) == CONFIG_TRUE;
    conf_t *c = s_load(&cfg, ok, name, err, errlen);
    config_destroy(&cfg);
    return c;
}

void conf_destroy(conf_t **self_p)
{
    conf_t *c = *self_p;
    if (c == NULL)
        return;
    free(c->broker_id);
    free(c->facility_endpoint);
    free(c->operator_endpoint);
    free(c->http_listen);
    free(c->server_key_file);
    if (c->server_secret_key != NULL) /* freed memory may be handed out again */
        explicit_bzero(c->server_secret_key, strlen(c->server_secret_key));
    free(c->server_secret_key);
    for (size_t i = 0; i < c->n_operators; i++) {
        free(c->operators[i].name);
        free(c->operators[i].public_key);
    }
    free(c->operators);
    free(c->data_dir);
    free(c->log_level);
    free(c->timezone);
    for (size_t i = 0; i < c->n_facilities; i++) {
        free(c->facilities[i].id);
        free(c->facilities[i].name);
        free(c->facilities[i].host);
        free(c->facilities[i].public_key);
    }
    free(c->facilities);
    for (size_t i = 0; i < c->n_indicators; i++)
        free(c->indicators[i].name);
    free(c->indicators);
    free(c);
    *self_p = NULL;
}

/* True for a port as libzmq and the HTTP listener take it: a number, or
 * libzmq's * (any free port). */
static bool s_port_ok(const char *port)
{
    if (strcmp(port, "*") == 0)
        return true;
    size_t n = strspn(port, "0123456789");
    return n > 0 && n <= 5 && port[n] == '\0';
}

int conf_http_listen_parse(const char *listen, struct sockaddr_in *sa)
{
    const char *colon = strchr(listen, ':');
    if (colon == NULL)
        return -EINVAL;
    const char *port = colon + 1;
    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || digits > 5 || port[digits] != '\0')
        return -EINVAL; /* 80junk, -1, +80, " 80", 123456 */
    long number = strtol(port, NULL, 10);
    if (number < 1 || number > 65535)
        return -EINVAL;
    size_t n = (size_t)(colon - listen);
    char host[INET_ADDRSTRLEN];
    if (n == 9 && strncmp(listen, "localhost", n) == 0) {
        snprintf(host, sizeof host, "127.0.0.1");
    } else {
        if (n >= sizeof host)
            return -EINVAL;
        memcpy(host, listen, n);
        host[n] = '\0';
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)number);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return -EINVAL;
    if (sa != NULL)
        *sa = a;
    return 0;
}

/* True for HOST:PORT whose host is this machine's loopback: an IPv4 address
 * in 127.0.0.0/8, localhost, or [::1] with v6 (the HTTP listener is IPv4
 * only).  The address is parsed, not matched
 * by its start: 127.example.org is a name (an interface's, to libzmq's
 * bind), and in tcp://127.0.0.1:1;0.0.0.0:7700 libzmq binds what follows
 * the ';' (SOURCE;ADDRESS), here every interface. */
static bool s_hostport_is_loopback(const char *hostport, bool v6)
{
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || !s_port_ok(colon + 1))
        return false;
    size_t n = (size_t)(colon - hostport);
    if ((n == 9 && strncmp(hostport, "localhost", n) == 0) ||
        (v6 && n == 5 && strncmp(hostport, "[::1]", n) == 0))
        return true;
    char host[INET_ADDRSTRLEN];
    struct in_addr a;
    if (n >= sizeof host)
        return false;
    memcpy(host, hostport, n);
    host[n] = '\0';
    return inet_pton(AF_INET, host, &a) == 1 && ntohl(a.s_addr) >> 24 == 127;
}

bool conf_endpoint_is_local(const char *endpoint)
{
    if (endpoint == NULL)
        return false;
    if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0)
        return true;
    return strncmp(endpoint, "tcp://", 6) == 0 && s_hostport_is_loopback(endpoint + 6, true);
}

int conf_check_security(const conf_t *c, char *err, size_t errlen)
{
    /* Checked here, not only when the server starts, so that
     * `medrouted --check-config` (the unit's ExecStartPre) refuses what the
     * start would. */
    const char *remote = NULL;
    if (c->insecure && !conf_endpoint_is_local(c->facility_endpoint))
        remote = "facility_endpoint";
    else if (c->insecure && !conf_endpoint_is_local(c->operator_endpoint))
        remote = "operator_endpoint";
    if (remote != NULL) {
        snprintf(err, errlen,
                 "insecure = true is only allowed with loopback or ipc endpoints: %s is not "
                 "ipc://, inproc:// or tcp://HOST:PORT with HOST an IPv4 address in "
                 "127.0.0.0/8, [::1] or localhost",
                 remote);
        return -EINVAL;
    }
    if (c->insecure && c->http_listen != NULL && !s_hostport_is_loopback(c->http_listen, false)) {
        snprintf(err, errlen,
                 "insecure = true is only allowed with a loopback http_listen: HOST:PORT with "
                 "HOST an IPv4 address in 127.0.0.0/8 or localhost");
        return -EINVAL;
    }
    if (c->insecure || c->server_secret_key != NULL)
        return 0;
    snprintf(err, errlen,
             "server_key_file: required unless insecure = true (make one with "
             "`medroute keygen --out DIR --name broker`)");
    return -EINVAL;
}

const conf_operator_t *conf_operator_of(const conf_t *c, const char *key)
{
    for (size_t i = 0; i < c->n_operators; i++)
        if (strcmp(c->operators[i].public_key, key) == 0)
            return &c->operators[i];
    return NULL;
}
