/*
 * medroute.c - the `medroute` command line tool: send and receive messages as
 * a facility, and ask the broker's operator endpoint for status and queues.
 *
 *   medroute [GLOBAL] COMMAND [OPTIONS] [GLOBAL]
 *
 * main() looks the command up in s_commands[] and hands it argv from the
 * command name on; each command parses its own options (getopt_long) plus the
 * global ones, so --endpoint/--operator/--state-dir work before or after the
 * command name.  Everything goes through the public client library
 * (medroute.h); replies are formatted with jansson.
 *
 * Exit status: 0 success, 1 the broker refused or failed, 2 bad usage or
 * input, 3 time-out.  Single threaded; the only file-static mutable state is
 * the signal flag of `listen` (see s_stop).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "medroute.h"

#define S_EXIT_OK 0
#define S_EXIT_FAIL 1
#define S_EXIT_USAGE 2
#define S_EXIT_TIMEOUT 3

#define S_DEFAULT_ENDPOINT "tcp://127.0.0.1:7700"
#define S_DEFAULT_OPERATOR "tcp://127.0.0.1:7701"
#define S_DEFAULT_TIMEOUT_MS 10000

/* Long-option codes of the global options; above any short option char. */
enum { S_OPT_ENDPOINT = 1000, S_OPT_OPERATOR, S_OPT_STATE_DIR, S_OPT_HELP, S_OPT_KEY,
       S_OPT_SERVER_KEY };

#define S_GLOBAL_OPTIONS                                                                      \
    {"endpoint", required_argument, NULL, S_OPT_ENDPOINT},                                    \
        {"operator", required_argument, NULL, S_OPT_OPERATOR},                                \
        {"state-dir", required_argument, NULL, S_OPT_STATE_DIR},                              \
        {"key", required_argument, NULL, S_OPT_KEY},                                          \
        {"server-key", required_argument, NULL, S_OPT_SERVER_KEY},                            \
        {"help", no_argument, NULL, S_OPT_HELP}

/* What every command may be given, before or after its name. */
typedef struct {
    const char *endpoint;
    const char *operator_ep;
    const char *state_dir;
    const char *key_file;        /* our CURVE secret key (medroute keygen) */
    const char *server_key_file; /* the broker's public key */
    char secret[41], public_[41], server[41]; /* loaded keys, when given */
    bool curve;
} s_ctx_t;

typedef int (*s_command_fn)(s_ctx_t *ctx, int argc, char **argv);

typedef struct {
    const char *name;
    s_command_fn fn;
    const char *usage;
    const char *help;
} s_command_t;

/*
 * Set by the SIGINT/SIGTERM handler of `listen`, read by its poll loop.  The
 * one accepted piece of file-static mutable state: a signal handler has no
 * other way to reach the loop, and it only ever stores 1 here.
 */
static volatile sig_atomic_t s_stop;

/* The kinds, in medroute.v1.Kind order: index = enum value. */
static const char *const s_kinds[] = {
    NULL,     "referral",     "referral_update", "imaging_request", "imaging_report", "lab_order",
    "lab_result", "capacity", "critical_ack",    "visit_tally",
};
#define S_N_KINDS ((int)(sizeof s_kinds / sizeof s_kinds[0]))

/* The same kinds' payload keys in lowerCamelCase, which input accepts too
 * (protocol.md 9): index = enum value. */
static const char *const s_kinds_camel[] = {
    NULL,        "referral",  "referralUpdate", "imagingRequest", "imagingReport", "labOrder",
    "labResult", "capacity",  "criticalAck",    "visitTally",
};
_Static_assert(sizeof s_kinds_camel == sizeof s_kinds, "one camelCase key per kind");

/* ---- small helpers -------------------------------------------------------- */

static int64_t s_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Parses a whole decimal number in [min, max]. 0 or -EINVAL. */
static int s_parse_int(const char *text, long long min, long long max, long long *out)
{
    if (text == NULL || *text == '\0')
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int s_parse_u64(const char *text, uint64_t *out)
{
    if (text == NULL || *text < '0' || *text > '9')
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

/* A JSON integer, or an integer in a decimal string (the proto3 JSON form of
 * 64-bit fields); def when absent or neither. */
static long long s_json_ll(const json_t *v, long long def)
{
    long long out = def;
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v) && s_parse_int(json_string_value(v), LLONG_MIN, LLONG_MAX, &out) == 0)
        return out;
    if (json_is_string(v)) {
        uint64_t u;
        if (s_parse_u64(json_string_value(v), &u) == 0)
            return u > (uint64_t)LLONG_MAX ? LLONG_MAX : (long long)u;
    }
    return def;
}

static const char *s_json_str(const json_t *obj, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : def;
}

/* A uint64 as JSON: an integer while it fits, else a decimal string. */
static json_t *s_json_u64(uint64_t v)
{
    if (v <= (uint64_t)LLONG_MAX)
        return json_integer((json_int_t)v);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%" PRIu64, v);
    if (n < 0 || (size_t)n >= sizeof buf)
        return NULL;
    return json_string(buf);
}

/* Sets obj[key] = value, taking the reference; -ENOMEM if either is NULL. */
static int s_set(json_t *obj, const char *key, json_t *value)
{
    if (obj == NULL || value == NULL) {
        json_decref(value);
        return -ENOMEM;
    }
    return json_object_set_new(obj, key, value) == 0 ? 0 : -ENOMEM;
}

/* Writes obj as one compact JSON line to out and flushes. 0 or -EIO. */
static int s_print_line(FILE *out, const json_t *obj)
{
    if (json_dumpf(obj, out, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0)
        return -EIO;
    if (fputc('\n', out) == EOF || fflush(out) != 0)
        return -EIO;
    return 0;
}

/* "referral", "KIND_REFERRAL", "Referral", "1" -> 1; -1 if unknown. */
static int s_kind_index(const char *name)
{
    if (name == NULL)
        return -1;
    if (strncasecmp(name, "kind_", 5) == 0)
        name += 5;
    for (int i = 1; i < S_N_KINDS; i++)
        if (strcasecmp(name, s_kinds[i]) == 0)
            return i;
    long long n;
    if (s_parse_int(name, 1, S_N_KINDS - 1, &n) == 0)
        return (int)n;
    return -1;
}

/* A kind's number as an index of s_kinds, -1 if it names none: checked
 * before it is narrowed, as 4294967297 cast to int is 1, a referral. */
static int s_kind_of_number(long long n)
{
    return n > 0 && n < S_N_KINDS ? (int)n : -1;
}

/* A kind from the reply JSON: an int32 field, or an enum name. */
static const char *s_kind_label(const json_t *v)
{
    int k = json_is_string(v) ? s_kind_index(json_string_value(v))
                              : s_kind_of_number(s_json_ll(v, -1));
    return k > 0 ? s_kinds[k] : "?";
}

/* Ages for tables: "12s", "3m04s", "2h10m", "-" for none. */
static void s_age(char *buf, size_t len, int64_t then_ms, int64_t now_ms)
{
    if (then_ms <= 0) {
        snprintf(buf, len, "-");
        return;
    }
    int64_t s = (now_ms - then_ms) / 1000;
    if (s < 0)
        s = 0;
    if (s < 120)
        snprintf(buf, len, "%" PRId64 "s", s);
    else if (s < 7200)
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, (s / 60) % 60);
}

/*
 * Handles a global option from inside a command's getopt loop.  Returns 1 if
 * c was one (consumed), 0 if not, -1 for --help (caller prints usage).
 */
static int s_global_opt(s_ctx_t *ctx, int c)
{
    switch (c) {
    case S_OPT_ENDPOINT: ctx->endpoint = optarg; return 1;
    case S_OPT_OPERATOR: ctx->operator_ep = optarg; return 1;
    case S_OPT_STATE_DIR: ctx->state_dir = optarg; return 1;
    case S_OPT_KEY: ctx->key_file = optarg; return 1;
    case S_OPT_SERVER_KEY: ctx->server_key_file = optarg; return 1;
    case S_OPT_HELP: return -1;
    default: return 0;
    }
}

static void s_usage_of(FILE *out, const char *name);

/* The default of a command's option switch: global options, --help, errors. */
static int s_other_opt(s_ctx_t *ctx, int c, const char *cmd, int *done)
{
    int g = s_global_opt(ctx, c);
    if (g == 1)
        return 0;
    s_usage_of(g < 0 ? stdout : stderr, cmd);
    *done = 1;
    return g < 0 ? S_EXIT_OK : S_EXIT_USAGE;
}

/* ---- keys ------------------------------------------------------------------- */

/* Loads --key and --server-key once: CURVE when both are given. 0 or exit status. */
static int s_load_keys(s_ctx_t *ctx)
{
    if (ctx->curve || (ctx->key_file == NULL && ctx->server_key_file == NULL))
        return 0;
    if (ctx->key_file == NULL || ctx->server_key_file == NULL) {
        fprintf(stderr, "medroute: CURVE needs both --key FILE and --server-key FILE\n");
        return S_EXIT_USAGE;
    }
    int rc = mr_key_read_secret(ctx->key_file, ctx->secret, ctx->public_);
    if (rc == -ENOKEY)
        fprintf(stderr, "medroute: --key %s is a public key file: give our secret key "
                        "(NAME.key), and the broker's public key to --server-key\n",
                ctx->key_file);
    else if (rc == -EPERM)
        fprintf(stderr, "medroute: --key %s may be read or changed by other users, or "
                        "another user owns it: a secret key must be private (chown it to "
                        "yourself, chmod 600 it)\n",
                ctx->key_file);
    else if (rc != 0)
        fprintf(stderr, "medroute: cannot read the key %s (%s)\n", ctx->key_file,
                rc == -EINVAL ? "no Z85 key in it" : strerror(-rc));
    if (rc != 0)
        return S_EXIT_USAGE;
    rc = mr_key_read_public(ctx->server_key_file, ctx->server);
    if (rc == -ENOKEY)
        fprintf(stderr, "medroute: --server-key %s is a secret key file: give the broker's "
                        "public key (NAME.pub)\n",
                ctx->server_key_file);
    else if (rc != 0)
        fprintf(stderr, "medroute: cannot read the key %s (%s)\n", ctx->server_key_file,
                rc == -EINVAL ? "no Z85 key in it" : strerror(-rc));
    if (rc != 0)
        return S_EXIT_USAGE;
    ctx->curve = true;
    return 0;
}

static mr_operator_t *s_operator_new(s_ctx_t *ctx)
{
    if (s_load_keys(ctx) != 0)
        return NULL;
    return ctx->curve ? mr_operator_new_curve(ctx->operator_ep, ctx->server, ctx->public_,
                                              ctx->secret)
                      : mr_operator_new(ctx->operator_ep);
}

/* Says on stderr that the state dir's outbox had rows the library set
 * aside as damaged (they are not sent; the events that name them go to a
 * handler the command may not have). */
static void s_tell_damaged(const s_ctx_t *ctx, const mr_client_t *client)
{
    size_t n = mr_client_outbox_damaged(client);
    if (n > 0)
        fprintf(stderr,
                "medroute: %zu damaged outbox row%s in %s set aside in the table "
                "outbox_damaged, not sent (said at every start until deleted from it)\n",
                n, n == 1 ? "" : "s", ctx->state_dir);
}

/* Fills the CURVE part of client options from --key/--server-key. */
static int s_client_keys(s_ctx_t *ctx, mr_client_opts_t *o)
{
    int rc = s_load_keys(ctx);
    if (rc == 0 && ctx->curve) {
        o->server_public_key = ctx->server;
        o->public_key = ctx->public_;
        o->secret_key = ctx->secret;
    }
    return rc;
}

static int s_cmd_keygen(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},
        {"name", required_argument, NULL, 'n'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *name = "medroute";
    int c, done = 0, status;
    while ((c = getopt_long(argc, argv, "o:n:", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'n': name = optarg; break;
        default:
            status = s_other_opt(ctx, c, "keygen", &done);
            if (done)
                return status;
        }
    }
    if (out == NULL || optind != argc) {
        s_usage_of(stderr, "keygen");
        return S_EXIT_USAGE;
    }
    char pub[41];
    int rc = mr_keygen(out, name, pub);
    if (rc == -EINVAL) {
        fprintf(stderr, "medroute keygen: --name wants a file name, not empty and without '/'\n");
        return S_EXIT_USAGE;
    }
    if (rc != 0) {
        fprintf(stderr, "medroute keygen: %s/%s.key: %s\n", out, name, strerror(-rc));
        return S_EXIT_FAIL;
    }
    printf("%s/%s.key (secret, mode 0600) and %s/%s.pub written\npublic_key = \"%s\";\n", out,
           name, out, name, pub);
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

/* ---- the operator endpoint -------------------------------------------------- */

/*
 * Sends one operator request and returns the parsed reply in *reply_out
 * (caller owns it).  Prints what went wrong on stderr and returns the exit
 * status: 0; 1 for an Error reply (the reply is still returned) or a broken
 * connection; 2 for a request the library rejects; 3 on time-out.
 */
static int s_operator_call(s_ctx_t *ctx, json_t *request, int timeout_ms,
                           json_t **reply_out)
{
    int status = S_EXIT_FAIL;
    char *req_text = NULL, *reply_text = NULL;
    char err[256] = "";
    mr_operator_t *op = NULL;
    *reply_out = NULL;

    req_text = json_dumps(request, JSON_COMPACT);
    if (req_text == NULL) {
        fprintf(stderr, "medroute: out of memory\n");
        goto out;
    }
    /* Bad --key / --server-key is bad usage (2), not a broker failure. */
    if ((status = s_load_keys(ctx)) != 0)
        goto out;
    status = S_EXIT_FAIL;
    op = s_operator_new(ctx);
    if (op == NULL) {
        fprintf(stderr, "medroute: cannot open the operator endpoint %s\n", ctx->operator_ep);
        goto out;
    }
    int rc = mr_operator_call_json(op, req_text, &reply_text, timeout_ms, err, sizeof err);
    if (rc == -ETIMEDOUT) {
        fprintf(stderr, "medroute: no reply from %s within %d ms\n", ctx->operator_ep,
                timeout_ms);
        status = S_EXIT_TIMEOUT;
        goto out;
    }
    if (rc == -EINVAL) {
        fprintf(stderr, "medroute: bad request: %s\n", err);
        status = S_EXIT_USAGE;
        goto out;
    }
    if (rc < 0 && rc != -EPROTO) {
        fprintf(stderr, "medroute: operator call failed: %s%s%s\n", strerror(-rc),
                err[0] ? ": " : "", err);
        goto out;
    }
    json_error_t jerr;
    *reply_out = reply_text ? json_loads(reply_text, 0, &jerr) : NULL;
    if (*reply_out == NULL) {
        fprintf(stderr, "medroute: unreadable reply from the broker\n");
        goto out;
    }
    if (rc == -EPROTO) {
        const json_t *e = json_object_get(*reply_out, "error");
        const char *name = s_json_str(e, "code", "ERROR_UNSPECIFIED");
        if (strncmp(name, "ERROR_", 6) == 0)
            name += 6;
        fprintf(stderr, "medroute: the broker refused: %s: %s\n", name,
                s_json_str(e, "reason", ""));
        goto out;
    }
    status = S_EXIT_OK;
out:
    free(reply_text);
    mr_operator_destroy(&op);
    free(req_text);
    return status;
}

/* ---- send ------------------------------------------------------------------- */

/* The kind whose payload key obj holds, in either spelling; -1 if none. */
static int s_payload_kind(const json_t *obj)
{
    for (int i = 1; i < S_N_KINDS; i++)
        if (json_object_get(obj, s_kinds[i]) != NULL ||
            json_object_get(obj, s_kinds_camel[i]) != NULL)
            return i;
    return -1;
}

/* A "kind" or a payload key of the Envelope's oneof marks a whole envelope. */
static int s_is_envelope(const json_t *obj)
{
    return json_object_get(obj, "kind") != NULL || s_payload_kind(obj) > 0;
}

/* The kind of an envelope: its "kind", else the payload key it carries. */
static int s_envelope_kind(const json_t *env)
{
    const json_t *k = json_object_get(env, "kind");
    if (json_is_string(k))
        return s_kind_index(json_string_value(k));
    if (json_is_integer(k))
        return s_kind_of_number(json_integer_value(k));
    return s_payload_kind(env);
}

/* 0 if kind is the kind of env's payload (or env has none); else prints why
 * on stderr and returns -EINVAL.  The broker refuses a kind that is not its
 * payload's (INVALID, or FORBIDDEN first when the sender may not send that
 * kind), so --kind must not relabel an envelope's payload. */
static int s_check_payload_kind(const json_t *env, int kind, bool from_option)
{
    int payload = s_payload_kind(env);
    if (payload <= 0 || payload == kind)
        return 0;
    fprintf(stderr, "medroute: %s %s does not match the envelope's payload \"%s\"\n",
            from_option ? "--kind" : "the envelope's kind", s_kinds[kind], s_kinds[payload]);
    return -EINVAL;
}

/* Sets env[key] to the string value from the command line, in place of the
 * field's lowerCamelCase spelling if the input used it: both spellings at
 * once are a field given twice, which the library refuses. */
static int s_override(json_t *env, const char *key, const char *camel, const char *value)
{
    if (json_object_get(env, camel) != NULL && json_object_del(env, camel) != 0)
        return -ENOMEM;
    return s_set(env, key, json_string(value));
}

typedef struct {
    const char *as, *to, *kind, *priority, *id, *correlation, *file;
    long long timeout_ms;
} s_send_args_t;

/*
 * Reads the --json input and returns the Envelope to send (caller owns it),
 * with the command-line overrides applied; NULL after printing why on stderr.
 */
static json_t *s_build_envelope(const s_send_args_t *a)
{
    json_error_t jerr;
    /* A key given twice is refused (as by mr_client_submit_json), not
     * collapsed to its last value here before the library could see it. */
    json_t *in = strcmp(a->file, "-") == 0 ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &jerr)
                                           : json_load_file(a->file, JSON_REJECT_DUPLICATES, &jerr);
    json_t *env = NULL;
    if (in == NULL) {
        fprintf(stderr, "medroute: %s:%d:%d: %s\n", strcmp(a->file, "-") == 0 ? "<stdin>" : a->file,
                jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(in)) {
        fprintf(stderr, "medroute: %s: expected a JSON object\n", a->file);
        goto fail;
    }
    int kind = a->kind ? s_kind_index(a->kind) : -1;
    if (a->kind && kind < 0) {
        fprintf(stderr, "medroute: unknown kind \"%s\"\n", a->kind);
        goto fail;
    }
    if (s_is_envelope(in)) {
        env = json_incref(in);
        int env_kind = s_envelope_kind(env);
        if (kind < 0)
            kind = env_kind;
        if (kind <= 0 || kind >= S_N_KINDS) {
            fprintf(stderr, "medroute: the envelope has no known kind; give --kind\n");
            goto fail;
        }
        if (s_check_payload_kind(env, kind, a->kind != NULL) != 0)
            goto fail;
    } else {
        if (kind < 0) {
            fprintf(stderr, "medroute: --kind is required when the JSON is a bare payload\n");
            goto fail;
        }
        env = json_object();
        if (s_set(env, s_kinds[kind], json_incref(in)) != 0)
            goto oom;
    }
    if (s_set(env, "kind", json_string(s_kinds[kind])) != 0)
        goto oom;
    if (a->to && s_set(env, "destination", json_string(a->to)) != 0)
        goto oom;
    if (a->priority && s_set(env, "priority", json_string(a->priority)) != 0)
        goto oom;
    if (a->id && s_override(env, "message_id", "messageId", a->id) != 0)
        goto oom;
    if (a->correlation && s_override(env, "correlation_id", "correlationId", a->correlation) != 0)
        goto oom;
    if (!json_is_string(json_object_get(env, "destination"))) {
        fprintf(stderr, "medroute: no destination: give --to\n");
        goto fail;
    }
    const char *src = s_json_str(env, "source", NULL);
    if (src != NULL && strcmp(src, a->as) != 0) {
        fprintf(stderr, "medroute: the envelope's source \"%s\" is not --as %s\n", src, a->as);
        goto fail;
    }
    json_decref(in);
    return env;
oom:
    fprintf(stderr, "medroute: out of memory\n");
fail:
    json_decref(env);
    json_decref(in);
    return NULL;
}

/* Deliveries that reach `send` are left for a later `listen`.  An Error
 * about no message (the broker refusing our Hello, e.g. UNKNOWN_SOURCE) is
 * kept in *arg, to be reported instead of a bare time-out. */
static int on_send_event(mr_client_t *client, const mr_event_t *event, void *arg)
{
    mr_result_t *hello = arg;
    (void)client;
    if (event->type == MR_EVENT_ERROR && (event->message_id == NULL || !event->message_id[0])) {
        hello->code = event->code;
        snprintf(hello->reason, sizeof hello->reason, "%s", event->reason ? event->reason : "");
    }
    return event->type == MR_EVENT_DELIVERY ? -1 : 0;
}

static int s_print_result(int rc, const mr_result_t *res, int timeout_ms)
{
    json_t *o = json_object();
    int status = S_EXIT_FAIL;
    if (rc == 0) {
        if (s_set(o, "ack", json_true()) || s_set(o, "message_id", json_string(res->message_id)) ||
            s_set(o, "seq", s_json_u64(res->seq)) || s_set(o, "duplicate", json_boolean(res->duplicate)))
            goto oom;
        status = S_EXIT_OK;
    } else if (rc == -EPROTO || (rc == -EACCES && res->code != 0)) {
        /* A refused message, or a refused Hello (this facility may not connect). */
        if (s_set(o, "ack", json_false()) || s_set(o, "code", json_integer(res->code)) ||
            s_set(o, "code_name", json_string(mr_error_code_name(res->code))) ||
            s_set(o, "reason", json_string(res->reason)))
            goto oom;
    } else if (rc == -ETIMEDOUT) {
        fprintf(stderr, "medroute: no Ack within %d ms (is medrouted running?)\n", timeout_ms);
        json_decref(o);
        return S_EXIT_TIMEOUT;
    } else if (rc == -EINVAL) {
        fprintf(stderr, "medroute: invalid message: %s\n", res->reason);
        json_decref(o);
        return S_EXIT_USAGE;
    } else if (rc == -EEXIST) {
        /* A corrected message under the id of one still in the state dir's
         * outbox: this one was not sent, and the user must know which is. */
        fprintf(stderr,
                "medroute: not sent: message id %s is queued in the --state-dir outbox with "
                "other content, not yet acknowledged; the queued version is the one that will "
                "be sent. Send the corrected message under a new --id.\n",
                res->message_id);
        json_decref(o);
        return S_EXIT_FAIL;
    } else {
        fprintf(stderr, "medroute: send failed: %s\n", strerror(-rc));
        json_decref(o);
        return S_EXIT_FAIL;
    }
    if (s_print_line(stdout, o) != 0) {
        fprintf(stderr, "medroute: cannot write the result\n");
        status = S_EXIT_FAIL;
    }
    json_decref(o);
    return status;
oom:
    fprintf(stderr, "medroute: out of memory\n");
    json_decref(o);
    return S_EXIT_FAIL;
}

static int s_cmd_send(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"as", required_argument, NULL, 'a'},       {"to", required_argument, NULL, 't'},
        {"kind", required_argument, NULL, 'k'},     {"priority", required_argument, NULL, 'p'},
        {"id", required_argument, NULL, 'i'},       {"correlation", required_argument, NULL, 'c'},
        {"timeout", required_argument, NULL, 'T'},  {"json", required_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,                           {NULL, 0, NULL, 0},
    };
    s_send_args_t a = {.timeout_ms = S_DEFAULT_TIMEOUT_MS};
    int c, done = 0, status;
    while ((c = getopt_long(argc, argv, "a:t:k:p:i:c:T:j:", opts, NULL)) != -1) {
        switch (c) {
        case 'a': a.as = optarg; break;
        case 't': a.to = optarg; break;
        case 'k': a.kind = optarg; break;
        case 'p': a.priority = optarg; break;
        case 'i': a.id = optarg; break;
        case 'c': a.correlation = optarg; break;
        case 'j': a.file = optarg; break;
        case 'T':
            if (s_parse_int(optarg, 1, INT_MAX, &a.timeout_ms) != 0) {
                fprintf(stderr, "medroute send: --timeout wants milliseconds > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        default:
            status = s_other_opt(ctx, c, "send", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc || a.as == NULL || a.file == NULL) {
        fprintf(stderr, "medroute send: %s\n",
                optind != argc ? "unexpected argument" : "--as and --json are required");
        s_usage_of(stderr, "send");
        return S_EXIT_USAGE;
    }
    if (a.priority && strcmp(a.priority, "routine") && strcmp(a.priority, "urgent") &&
        strcmp(a.priority, "stat")) {
        fprintf(stderr, "medroute send: --priority is routine, urgent or stat\n");
        return S_EXIT_USAGE;
    }
    if (a.id && (strlen(a.id) == 0 || strlen(a.id) > 64)) {
        fprintf(stderr, "medroute send: --id must be 1..64 characters\n");
        return S_EXIT_USAGE;
    }

    mr_client_t *client = NULL;
    char *text = NULL;
    json_t *env = s_build_envelope(&a);
    status = S_EXIT_USAGE;
    if (env == NULL)
        goto out;
    text = json_dumps(env, JSON_COMPACT);
    status = S_EXIT_FAIL;
    if (text == NULL) {
        fprintf(stderr, "medroute: out of memory\n");
        goto out;
    }
    mr_client_opts_t o = {.endpoint = ctx->endpoint, .facility = a.as,
                          .state_dir = ctx->state_dir, .client_name = "medroute-cli " MR_CLIENT_VERSION};
    if ((status = s_client_keys(ctx, &o)) != 0)
        goto out;
    client = mr_client_new(&o);
    if (client == NULL) {
        fprintf(stderr, "medroute: cannot create a client for %s at %s%s%s\n", a.as,
                ctx->endpoint, ctx->state_dir ? " with state dir " : "",
                ctx->state_dir ? ctx->state_dir : "");
        goto out;
    }
    s_tell_damaged(ctx, client);
    mr_result_t res, hello;
    memset(&res, 0, sizeof res);
    memset(&hello, 0, sizeof hello);
    int rc = mr_client_send_json(client, text, &res, (int)a.timeout_ms, on_send_event, &hello);
    if (rc == -ETIMEDOUT && hello.code != 0) {
        /* No Ack because the broker would not take us at all: say why. */
        rc = -EPROTO;
        snprintf(hello.message_id, sizeof hello.message_id, "%s", res.message_id);
        res = hello;
    }
    status = s_print_result(rc, &res, (int)a.timeout_ms);
out:
    mr_client_destroy(&client);
    free(text);
    json_decref(env);
    return status;
}

/* ---- listen ----------------------------------------------------------------- */

typedef struct {
    long long count;        /* stop after this many deliveries; 0: no limit */
    long long delivered;
    int failed;             /* stdout is gone: stop */
} s_listen_t;

static void on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* One JSON line for an Error or Connected event on stderr. */
static void s_print_event(const mr_event_t *ev)
{
    json_t *o = json_object();
    int bad = 0;
    if (ev->type == MR_EVENT_ERROR) {
        bad = s_set(o, "event", json_string("error")) ||
              s_set(o, "message_id", json_string(ev->message_id ? ev->message_id : "")) ||
              s_set(o, "code", json_integer(ev->code)) ||
              s_set(o, "code_name", json_string(ev->code_name ? ev->code_name : "")) ||
              s_set(o, "reason", json_string(ev->reason ? ev->reason : "")) ||
              (ev->seq && s_set(o, "seq", s_json_u64(ev->seq)));
    } else {
        bad = s_set(o, "event", json_string("connected")) ||
              s_set(o, "pending", s_json_u64(ev->pending));
    }
    if (bad || s_print_line(stderr, o) != 0)
        fprintf(stderr, "medroute: cannot report an event\n");
    json_decref(o);
}

static int on_listen_event(mr_client_t *client, const mr_event_t *ev, void *arg)
{
    s_listen_t *l = arg;
    (void)client;
    if (ev->type == MR_EVENT_ERROR || ev->type == MR_EVENT_CONNECTED) {
        s_print_event(ev);
        return 0;
    }
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    /* Past --count, or after a failed write: leave it for the next listener. */
    if (l->failed || (l->count > 0 && l->delivered >= l->count) || s_stop)
        return -1;
    const mr_delivery_t *d = ev->delivery;
    int rc = -1;
    json_error_t jerr;
    char *text = mr_delivery_json(d);
    json_t *env = text ? json_loads(text, 0, &jerr) : NULL;
    json_t *o = json_object();
    if (env == NULL) {
        fprintf(stderr, "medroute: delivery %" PRIu64 " does not convert to JSON\n", d->seq);
        goto out;
    }
    if (s_set(o, "seq", s_json_u64(d->seq)) || s_set(o, "redelivered", json_boolean(d->redelivered)) ||
        s_set(o, "attempt", json_integer(d->attempt)) || s_set(o, "envelope", json_incref(env)))
        goto out;
    if (s_print_line(stdout, o) != 0) {
        fprintf(stderr, "medroute: cannot write to stdout; stopping\n");
        l->failed = 1;
        goto out;
    }
    l->delivered++;
    rc = 0; /* printed and flushed: only now is it ours to acknowledge */
out:
    json_decref(o);
    json_decref(env);
    free(text);
    return rc;
}

static int s_cmd_listen(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"as", required_argument, NULL, 'a'},
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *as = NULL;
    long long timeout_ms = 0;
    s_listen_t l = {0};
    int c, done = 0, status;
    while ((c = getopt_long(argc, argv, "a:n:T:", opts, NULL)) != -1) {
        switch (c) {
        case 'a': as = optarg; break;
        case 'n':
            if (s_parse_int(optarg, 1, LLONG_MAX, &l.count) != 0) {
                fprintf(stderr, "medroute listen: --count wants a number > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        case 'T':
            if (s_parse_int(optarg, 1, LLONG_MAX / 2, &timeout_ms) != 0) {
                fprintf(stderr, "medroute listen: --timeout wants milliseconds > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        default:
            status = s_other_opt(ctx, c, "listen", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc || as == NULL) {
        fprintf(stderr, "medroute listen: %s\n",
                optind != argc ? "unexpected argument" : "--as is required");
        s_usage_of(stderr, "listen");
        return S_EXIT_USAGE;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
        sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("medroute: sigaction");
        return S_EXIT_FAIL;
    }
    mr_client_opts_t o = {.endpoint = ctx->endpoint, .facility = as,
                          .state_dir = ctx->state_dir, .client_name = "medroute-cli " MR_CLIENT_VERSION};
    int krc = s_client_keys(ctx, &o);
    if (krc != 0)
        return krc;
    mr_client_t *client = mr_client_new(&o);
    if (client == NULL) {
        fprintf(stderr, "medroute: cannot create a client for %s at %s\n", as, ctx->endpoint);
        return S_EXIT_FAIL;
    }
    s_tell_damaged(ctx, client);
    status = S_EXIT_OK;
    int64_t deadline = timeout_ms > 0 ? s_mono_ms() + timeout_ms : 0;
    while (!s_stop && !l.failed && (l.count == 0 || l.delivered < l.count)) {
        int wait = 200; /* short, so that a signal is noticed soon */
        if (deadline) {
            int64_t left = deadline - s_mono_ms();
            if (left <= 0) {
                /* Fewer than --count arrived in time: a time-out. */
                if (l.count > 0 && l.delivered < l.count)
                    status = S_EXIT_TIMEOUT;
                break;
            }
            if (left < wait)
                wait = (int)left;
        }
        int rc = mr_client_poll(client, wait, on_listen_event, &l);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
            fprintf(stderr, "medroute: poll failed: %s\n", strerror(-rc));
            status = S_EXIT_FAIL;
            break;
        }
        /* Our Hello refused (a facility the broker does not know, a key not
         * its own): listening longer cannot help, as `send` says at once. */
        if (mr_client_refused(client)) {
            fprintf(stderr, "medroute listen: the broker refused us as %s\n", as);
            status = S_EXIT_FAIL;
            break;
        }
    }
    if (l.failed)
        status = S_EXIT_FAIL;
    mr_client_destroy(&client);
    return status;
}

/* ---- status ----------------------------------------------------------------- */

static int s_print_status(const json_t *reply)
{
    const json_t *st = json_object_get(reply, "status");
    if (!json_is_object(st)) {
        fprintf(stderr, "medroute: the reply is not a status reply\n");
        return S_EXIT_FAIL;
    }
    int64_t now = s_now_ms();
    char up[32], seen[32], oldest[32];
    s_age(up, sizeof up, s_json_ll(json_object_get(st, "started_at_ms"), 0), now);
    printf("broker %s, up %s, store %lld bytes\n\n", s_json_str(st, "broker_id", "?"), up,
           s_json_ll(json_object_get(st, "store_bytes"), 0));
    printf("%-14s %-15s %-9s %-9s %8s %8s %10s\n", "FACILITY", "ROLE", "CONNECTED", "LAST SEEN",
           "PENDING", "INFLIGHT", "OLDEST");
    size_t i;
    const json_t *f;
    json_array_foreach(json_object_get(st, "facilities"), i, f) {
        int64_t last = s_json_ll(json_object_get(f, "last_seen_ms"), 0);
        s_age(seen, sizeof seen, last, now);
        s_age(oldest, sizeof oldest, s_json_ll(json_object_get(f, "oldest_pending_ms"), 0), now);
        printf("%-14s %-15s %-9s %-9s %8lld %8lld %10s\n", s_json_str(f, "facility_id", "?"),
               s_json_str(f, "role", "?"),
               json_is_true(json_object_get(f, "connected")) ? "yes" : "no",
               last > 0 ? seen : "never", s_json_ll(json_object_get(f, "pending"), 0),
               s_json_ll(json_object_get(f, "inflight"), 0), oldest);
    }
    printf("\n%-28s %12s\n", "COUNTER", "VALUE");
    json_array_foreach(json_object_get(st, "counters"), i, f)
        printf("%-28s %12lld\n", s_json_str(f, "name", "?"), s_json_ll(json_object_get(f, "value"), 0));
    const json_t *lat = json_object_get(st, "latencies");
    if (json_array_size(lat) > 0) {
        printf("\n%-28s %12s %10s %10s %10s\n", "LATENCY (since start, us)", "COUNT", "P50",
               "P99", "P99.9");
        json_array_foreach(lat, i, f)
            printf("%-28s %12lld %10lld %10lld %10lld\n", s_json_str(f, "name", "?"),
                   s_json_ll(json_object_get(f, "count"), 0),
                   s_json_ll(json_object_get(f, "p50_us"), 0),
                   s_json_ll(json_object_get(f, "p99_us"), 0),
                   s_json_ll(json_object_get(f, "p999_us"), 0));
    }
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

/* Prints the raw reply for --json; the status passes through. */
static int s_print_raw(const json_t *reply, int status)
{
    if (reply != NULL && s_print_line(stdout, reply) != 0) {
        fprintf(stderr, "medroute: cannot write the reply\n");
        return S_EXIT_FAIL;
    }
    return status;
}

static int s_cmd_status(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 'T'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int as_json = 0, c, done = 0, status;
    long long timeout_ms = 5000;
    while ((c = getopt_long(argc, argv, "jT:", opts, NULL)) != -1) {
        switch (c) {
        case 'j': as_json = 1; break;
        case 'T':
            if (s_parse_int(optarg, 1, INT_MAX, &timeout_ms) != 0) {
                fprintf(stderr, "medroute status: --timeout wants milliseconds > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        default:
            status = s_other_opt(ctx, c, "status", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, "status");
        return S_EXIT_USAGE;
    }
    json_t *req = json_pack("{s:{}}", "status");
    json_t *reply = NULL;
    if (req == NULL)
        return S_EXIT_FAIL;
    status = s_operator_call(ctx, req, (int)timeout_ms, &reply);
    if (as_json)
        status = s_print_raw(reply, status);
    else if (status == S_EXIT_OK)
        status = s_print_status(reply);
    json_decref(reply);
    json_decref(req);
    return status;
}

/* ---- queue ------------------------------------------------------------------ */

/* The broker's default and cap of queue ls (opapi.c, medroute(1)). */
#define S_LIST_DEFAULT 100
#define S_LIST_MAX 10000

/* limit: the rows asked for (0: the broker's default). */
static int s_print_queue(const json_t *reply, int dead, long long limit)
{
    const json_t *ql = json_object_get(reply, "queue_list");
    if (!json_is_object(ql)) {
        fprintf(stderr, "medroute: the reply is not a queue list\n");
        return S_EXIT_FAIL;
    }
    const json_t *msgs = json_object_get(ql, "messages");
    int64_t now = s_now_ms();
    char age[32];
    printf("%-8s %-38s %-14s %-14s %-16s %-8s %8s  %s\n", "SEQ", "MESSAGE_ID", "SOURCE",
           "DESTINATION", "KIND", "AGE", "ATTEMPTS", dead ? "DEAD REASON" : "");
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m) {
        s_age(age, sizeof age, s_json_ll(json_object_get(m, "stored_at_ms"), 0), now);
        printf("%-8lld %-38s %-14s %-14s %-16s %-8s %8lld  %s\n",
               s_json_ll(json_object_get(m, "seq"), 0), s_json_str(m, "message_id", ""),
               s_json_str(m, "source", ""), s_json_str(m, "destination", ""),
               s_kind_label(json_object_get(m, "kind")), age,
               s_json_ll(json_object_get(m, "attempts"), 0), s_json_str(m, "dead_reason", ""));
    }
    /* As many as the broker sends at most: the count is not what waits. */
    size_t n = json_array_size(msgs);
    long long most = limit == 0 ? S_LIST_DEFAULT : limit > S_LIST_MAX ? S_LIST_MAX : limit;
    if (n > 0 && (long long)n >= most)
        printf("(first %zu %s: more may wait; raise --limit)\n", n,
               dead ? "dead letters" : "pending");
    else
        printf("(%zu %s)\n", n, dead ? "dead letters" : "pending");
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

static int s_queue_ls(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"dest", required_argument, NULL, 'd'},
        {"dead", no_argument, NULL, 'D'},
        {"limit", required_argument, NULL, 'l'},
        {"json", no_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *dest = NULL;
    int dead = 0, as_json = 0, c, done = 0, status;
    long long limit = 0;
    while ((c = getopt_long(argc, argv, "d:Dl:j", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dest = optarg; break;
        case 'D': dead = 1; break;
        case 'j': as_json = 1; break;
        case 'l':
            if (s_parse_int(optarg, 1, UINT32_MAX, &limit) != 0) {
                fprintf(stderr, "medroute queue ls: --limit wants a number > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        default:
            status = s_other_opt(ctx, c, "queue", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, "queue");
        return S_EXIT_USAGE;
    }
    json_t *list = json_object();
    json_t *req = json_object();
    json_t *reply = NULL;
    status = S_EXIT_FAIL;
    if (s_set(req, "queue_list", json_incref(list)) || s_set(list, "dead", json_boolean(dead)) ||
        (dest && s_set(list, "destination", json_string(dest))) ||
        (limit && s_set(list, "limit", json_integer(limit))))
        goto out;
    status = s_operator_call(ctx, req, 5000, &reply);
    if (as_json)
        status = s_print_raw(reply, status);
    else if (status == S_EXIT_OK)
        status = s_print_queue(reply, dead, limit);
out:
    json_decref(reply);
    json_decref(req);
    json_decref(list);
    return status;
}

/* queue retry SEQ / queue drop SEQ --reason TEXT */
static int s_queue_change(s_ctx_t *ctx, int argc, char **argv, int drop)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'r'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *reason = NULL;
    int c, done = 0, status;
    uint64_t seq = 0;
    while ((c = getopt_long(argc, argv, drop ? "r:" : "", drop ? opts : opts + 1, NULL)) != -1) {
        if (c == 'r') {
            reason = optarg;
            continue;
        }
        status = s_other_opt(ctx, c, "queue", &done);
        if (done)
            return status;
    }
    if (optind + 1 != argc || s_parse_u64(argv[optind], &seq) != 0 || seq == 0 ||
        (drop && (reason == NULL || reason[0] == '\0'))) {
        fprintf(stderr, "medroute queue %s: %s\n", argv[0],
                drop ? "wants SEQ and --reason TEXT" : "wants one SEQ");
        s_usage_of(stderr, "queue");
        return S_EXIT_USAGE;
    }
    json_t *body = json_object();
    json_t *req = json_object();
    json_t *reply = NULL;
    status = S_EXIT_FAIL;
    if (s_set(req, drop ? "queue_drop" : "queue_retry", json_incref(body)) ||
        s_set(body, "seq", s_json_u64(seq)) || (drop && s_set(body, "reason", json_string(reason))))
        goto out;
    status = s_operator_call(ctx, req, 5000, &reply);
    if (status == S_EXIT_OK) {
        const char *detail = s_json_str(json_object_get(reply, "done"), "detail", "done");
        printf("%s\n", detail);
        if (fflush(stdout) != 0)
            status = S_EXIT_FAIL;
    }
out:
    json_decref(reply);
    json_decref(req);
    json_decref(body);
    return status;
}

static int s_cmd_queue(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {S_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    int c, done = 0, status;
    /* "+": global options may come before the action, which ends them. */
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        status = s_other_opt(ctx, c, "queue", &done);
        if (done)
            return status;
    }
    int i = optind;
    if (i >= argc) {
        s_usage_of(stderr, "queue");
        return S_EXIT_USAGE;
    }
    const char *action = argv[i];
    argc -= i;
    argv += i;
    optind = 0; /* the action parses its own options */
    if (strcmp(action, "ls") == 0 || strcmp(action, "list") == 0)
        return s_queue_ls(ctx, argc, argv);
    if (strcmp(action, "retry") == 0)
        return s_queue_change(ctx, argc, argv, 0);
    if (strcmp(action, "drop") == 0)
        return s_queue_change(ctx, argc, argv, 1);
    fprintf(stderr, "medroute queue: unknown action \"%s\"\n", action);
    s_usage_of(stderr, "queue");
    return S_EXIT_USAGE;
}

/* ---- slots and open loops ------------------------------------------------ */

/* The most rows the broker lists for slots (the latest days) and for open
 * (the oldest loops) (clinical.c, medroute(1)): a list that long was cut. */
#define S_CLINICAL_ROWS_MAX 1000

static int s_print_slots(const json_t *reply)
{
    const json_t *rows = json_object_get(json_object_get(reply, "slots"), "rows");
    printf("%-10s %-7s %-24s %8s %8s %7s %8s %8s %8s\n", "DATE", "RESOURCE", "UNIT", "CAPACITY",
           "RESERVED", "SHARE", "CLAIMED", "GENERAL", "RELEASED");
    size_t i;
    const json_t *r;
    json_array_foreach(rows, i, r) {
        double share = json_number_value(json_object_get(r, "reserved_share"));
        printf("%-10s %-7s %-24s %8lld %8lld %6.1f%% %8lld %8lld %8lld\n",
               s_json_str(r, "date", ""), s_json_str(r, "resource", ""), s_json_str(r, "unit", ""),
               s_json_ll(json_object_get(r, "capacity"), 0),
               s_json_ll(json_object_get(r, "reserved"), 0), share * 100.0,
               s_json_ll(json_object_get(r, "claimed_reserved"), 0),
               s_json_ll(json_object_get(r, "general_used"), 0),
               s_json_ll(json_object_get(r, "released"), 0));
    }
    size_t n = json_array_size(rows);
    if (n >= S_CLINICAL_ROWS_MAX)
        printf("(the latest %zu resources: earlier ones are not listed; narrow with --date)\n", n);
    else
        printf("(%zu resources)\n", n);
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

/* A local date as the ledger keys it: YYYY-MM-DD, month 01-12, day 01-31. */
static bool s_is_date(const char *text)
{
    for (int i = 0; i < 10; i++)
        if (text[i] == '\0' || (i == 4 || i == 7 ? text[i] != '-' : text[i] < '0' || text[i] > '9'))
            return false;
    int month = (text[5] - '0') * 10 + (text[6] - '0');
    int day = (text[8] - '0') * 10 + (text[9] - '0');
    return text[10] == '\0' && month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

static int s_cmd_slots(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"date", required_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *date = NULL;
    int as_json = 0, c, done = 0, status;
    while ((c = getopt_long(argc, argv, "d:j", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            /* The broker matches the date as a string: a typo would list
             * nothing, as if nothing were published that day. */
            if (!s_is_date(optarg)) {
                fprintf(stderr, "medroute slots: --date wants YYYY-MM-DD\n");
                return S_EXIT_USAGE;
            }
            date = optarg;
            break;
        case 'j': as_json = 1; break;
        default:
            status = s_other_opt(ctx, c, "slots", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, "slots");
        return S_EXIT_USAGE;
    }
    json_t *req = date ? json_pack("{s:{s:s}}", "slots", "date", date) : json_pack("{s:{}}", "slots");
    json_t *reply = NULL;
    if (req == NULL)
        return S_EXIT_FAIL;
    status = s_operator_call(ctx, req, 5000, &reply);
    if (as_json)
        status = s_print_raw(reply, status);
    else if (status == S_EXIT_OK)
        status = s_print_slots(reply);
    json_decref(reply);
    json_decref(req);
    return status;
}

/* "90s", "30m", "2h", "1d" (or plain seconds) -> milliseconds; -1 if bad. */
static long long s_parse_age(const char *text)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text || v < 0)
        return -1;
    long long unit = 1000;
    if (*end == 'm')
        unit = 60000;
    else if (*end == 'h')
        unit = 3600000;
    else if (*end == 'd')
        unit = 86400000;
    else if (*end != 's' && *end != '\0')
        return -1;
    if (*end != '\0' && end[1] != '\0')
        return -1;
    if (v > LLONG_MAX / unit)
        return -1; /* no age is that old, and the product would overflow */
    return v * unit;
}

static int s_print_open(const json_t *reply)
{
    const json_t *rows = json_object_get(json_object_get(reply, "open_loops"), "loops");
    int64_t now = s_now_ms();
    char age[32];
    printf("%-9s %-24s %-14s %-14s %-18s %-8s %-8s %s\n", "KIND", "ID", "FROM", "TO", "STATE",
           "PRIORITY", "AGE", "ESCALATED");
    size_t i;
    const json_t *r;
    static const char *const prio[] = {"routine", "urgent", "stat"};
    json_array_foreach(rows, i, r) {
        long long p = s_json_ll(json_object_get(r, "priority"), 0);
        s_age(age, sizeof age, s_json_ll(json_object_get(r, "opened_at_ms"), 0), now);
        printf("%-9s %-24s %-14s %-14s %-18s %-8s %-8s %s\n", s_json_str(r, "kind", ""),
               s_json_str(r, "id", ""), s_json_str(r, "from", ""), s_json_str(r, "to", ""),
               s_json_str(r, "state", ""), p >= 0 && p <= 2 ? prio[p] : "?", age,
               json_is_true(json_object_get(r, "escalated")) ? "yes" : "");
    }
    size_t n = json_array_size(rows);
    if (n >= S_CLINICAL_ROWS_MAX)
        printf("(the oldest %zu open: more may be open; narrow with --facility)\n", n);
    else
        printf("(%zu open)\n", n);
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

static int s_cmd_open(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"facility", required_argument, NULL, 'f'},
        {"older-than", required_argument, NULL, 'o'},
        {"json", no_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *facility = NULL;
    long long older = 0;
    int as_json = 0, c, done = 0, status;
    while ((c = getopt_long(argc, argv, "f:o:j", opts, NULL)) != -1) {
        switch (c) {
        case 'f': facility = optarg; break;
        case 'j': as_json = 1; break;
        case 'o':
            if ((older = s_parse_age(optarg)) < 0) {
                fprintf(stderr, "medroute open: --older-than wants e.g. 90s, 30m, 2h, 1d\n");
                return S_EXIT_USAGE;
            }
            break;
        default:
            status = s_other_opt(ctx, c, "open", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, "open");
        return S_EXIT_USAGE;
    }
    json_t *body = json_object();
    json_t *req = json_object();
    json_t *reply = NULL;
    status = S_EXIT_FAIL;
    if (s_set(req, "open_loops", json_incref(body)) ||
        (facility && s_set(body, "facility", json_string(facility))) ||
        s_set(body, "older_than_ms", json_integer(older)))
        goto out;
    status = s_operator_call(ctx, req, 5000, &reply);
    if (as_json)
        status = s_print_raw(reply, status);
    else if (status == S_EXIT_OK)
        status = s_print_open(reply);
out:
    json_decref(reply);
    json_decref(req);
    json_decref(body);
    return status;
}

/* ---- stats, indicators, watch ---------------------------------------------- */

static int s_print_stats(const json_t *reply)
{
    const json_t *st = json_object_get(reply, "stats");
    const json_t *rows = json_object_get(st, "tallies");
    printf("period %s (%s .. %s)\n\n", s_json_str(st, "period", ""), s_json_str(st, "first_day", ""),
           s_json_str(st, "last_day", ""));
    printf("%-40s %-70s %10s\n", "TALLY", "LABELS", "VALUE");
    size_t i;
    const json_t *r;
    json_array_foreach(rows, i, r) {
        printf("%-40s %-70s %10lld\n", s_json_str(r, "name", ""), s_json_str(r, "labels", ""),
               s_json_ll(json_object_get(r, "value"), 0));
    }
    printf("(%zu tallies)\n", json_array_size(rows));
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

static int s_print_indicators(const json_t *reply)
{
    const json_t *ir = json_object_get(reply, "indicators");
    const json_t *rows = json_object_get(ir, "indicators");
    printf("period %s (%s .. %s), %lld visit reports\n\n", s_json_str(ir, "period", ""),
           s_json_str(ir, "first_day", ""), s_json_str(ir, "last_day", ""),
           s_json_ll(json_object_get(ir, "visit_reports"), 0));
    printf("%-34s %12s %4s %10s %10s  %-10s %s\n", "INDICATOR", "VALUE", "", "TARGET", "WARN AT",
           "STATUS", "FORMULA");
    size_t i;
    const json_t *r;
    json_array_foreach(rows, i, r) {
        char value[32] = "-";
        if (json_is_true(json_object_get(r, "has_value")))
            snprintf(value, sizeof value, "%.4g", json_number_value(json_object_get(r, "value")));
        printf("%-34s %12s %4s %10.4g %10.4g  %-10s %s\n", s_json_str(r, "name", ""), value,
               s_json_str(r, "compare", ""), json_number_value(json_object_get(r, "target")),
               json_number_value(json_object_get(r, "warn")), s_json_str(r, "status", ""),
               s_json_str(r, "formula", ""));
    }
    return fflush(stdout) == 0 ? S_EXIT_OK : S_EXIT_FAIL;
}

/* stats and indicators: one period, a table or JSON. */
static int s_period_cmd(s_ctx_t *ctx, int argc, char **argv, const char *what)
{
    static const struct option opts[] = {
        {"period", required_argument, NULL, 'p'},
        {"facility", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *period = "today", *facility = NULL;
    int as_json = 0, c, done = 0, status;
    bool stats = strcmp(what, "stats") == 0;
    while ((c = getopt_long(argc, argv, "p:f:j", opts, NULL)) != -1) {
        switch (c) {
        case 'p': period = optarg; break;
        case 'f':
            if (!stats) {
                s_usage_of(stderr, what);
                return S_EXIT_USAGE;
            }
            facility = optarg;
            break;
        case 'j': as_json = 1; break;
        default:
            status = s_other_opt(ctx, c, what, &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, what);
        return S_EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s}", "period", period);
    json_t *req = json_object();
    json_t *reply = NULL;
    status = S_EXIT_FAIL;
    if (body == NULL || s_set(req, what, json_incref(body)) ||
        (facility && s_set(body, "facility", json_string(facility))))
        goto out;
    status = s_operator_call(ctx, req, 10000, &reply);
    if (as_json)
        status = s_print_raw(reply, status);
    else if (status == S_EXIT_OK)
        status = stats ? s_print_stats(reply) : s_print_indicators(reply);
out:
    json_decref(reply);
    json_decref(req);
    json_decref(body);
    return status;
}

static int s_cmd_stats(s_ctx_t *ctx, int argc, char **argv)
{
    return s_period_cmd(ctx, argc, argv, "stats");
}

static int s_cmd_indicators(s_ctx_t *ctx, int argc, char **argv)
{
    return s_period_cmd(ctx, argc, argv, "indicators");
}

/* Prints one watch event line; returns true for a printable event. */
static bool s_print_watch(const char *reply_json, int as_json)
{
    json_t *j = json_loads(reply_json, 0, NULL);
    const json_t *w = json_object_get(j, "watch");
    bool ok = json_is_object(w);
    if (ok && as_json) {
        printf("%s\n", reply_json);
    } else if (ok) {
        long long at = s_json_ll(json_object_get(w, "at_ms"), 0);
        time_t t = (time_t)(at / 1000);
        struct tm tm;
        char when[32] = "";
        if (localtime_r(&t, &tm))
            strftime(when, sizeof when, "%H:%M:%S", &tm);
        printf("%s %-16s %s\n", when, s_json_str(w, "kind", ""), s_json_str(w, "text", ""));
    }
    fflush(stdout);
    json_decref(j);
    return ok;
}

static int s_cmd_watch(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        {"json", no_argument, NULL, 'j'},
        S_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    long long count = 0, timeout_ms = 0;
    int as_json = 0, c, done = 0, status;
    while ((c = getopt_long(argc, argv, "n:T:j", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (s_parse_int(optarg, 1, INT_MAX, &count) != 0) {
                fprintf(stderr, "medroute watch: --count wants a number > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        case 'T':
            if (s_parse_int(optarg, 1, INT_MAX, &timeout_ms) != 0) {
                fprintf(stderr, "medroute watch: --timeout wants milliseconds > 0\n");
                return S_EXIT_USAGE;
            }
            break;
        case 'j': as_json = 1; break;
        default:
            status = s_other_opt(ctx, c, "watch", &done);
            if (done)
                return status;
        }
    }
    if (optind != argc) {
        s_usage_of(stderr, "watch");
        return S_EXIT_USAGE;
    }
    if ((status = s_load_keys(ctx)) != 0)
        return status;
    mr_operator_t *op = s_operator_new(ctx);
    if (op == NULL) {
        fprintf(stderr, "medroute: cannot connect to %s\n", ctx->operator_ep);
        return S_EXIT_FAIL;
    }
    status = S_EXIT_OK;
    int64_t start = s_mono_ms(), renewed = 0;
    long long seen = 0;
    while (!s_stop && (count == 0 || seen < count)) {
        int64_t now = s_mono_ms();
        if (timeout_ms && now - start >= timeout_ms) {
            status = count ? S_EXIT_TIMEOUT : S_EXIT_OK;
            break;
        }
        if (renewed == 0 || now - renewed >= 30000) {
            char *reply = NULL, err[256] = "";
            int rc = mr_operator_call_json(op, "{\"watch\":{}}", &reply, 5000, err, sizeof err);
            if (rc != 0) {
                fprintf(stderr, "medroute watch: %s\n", err);
                free(reply);
                status = rc == -ETIMEDOUT ? S_EXIT_TIMEOUT : S_EXIT_FAIL;
                break;
            }
            /* The reply confirms the subscription ("subscribed"): shown,
             * but not one of the --count events. */
            if (renewed == 0)
                (void)s_print_watch(reply, as_json);
            free(reply);
            renewed = now;
        }
        char *reply = NULL;
        int rc = mr_operator_next_json(op, &reply, 200);
        if (rc == 0 && s_print_watch(reply, as_json))
            seen++;
        free(reply);
    }
    if (renewed != 0) { /* its place among the broker's 16 watchers, freed now */
        char *reply = NULL, err[256] = "";
        (void)mr_operator_call_json(op, "{\"watch\":{\"stop\":true}}", &reply, 1000, err,
                                    sizeof err);
        free(reply);
    }
    mr_operator_destroy(&op);
    return status;
}

/* ---- admin ------------------------------------------------------------------- */

/* FILE made absolute from our working directory (the daemon's is another)
 * into out.  0; -ENAMETOOLONG when it would not fit in len bytes: cut, it
 * would name another file; or getcwd's -errno. */
static int s_absolute_path(const char *file, char *out, size_t len)
{
    int n;
    if (file[0] == '/') {
        n = snprintf(out, len, "%s", file);
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL)
            return errno == ERANGE ? -ENAMETOOLONG : -errno;
        n = snprintf(out, len, "%s/%s", cwd, file);
    }
    if (n < 0)
        return -EINVAL;
    return (size_t)n < len ? 0 : -ENAMETOOLONG;
}

/* admin backup FILE | admin reload */
static int s_cmd_admin(s_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {S_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    int c, done = 0, status;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        status = s_other_opt(ctx, c, "admin", &done);
        if (done)
            return status;
    }
    int i = optind;
    json_t *req = NULL;
    if (i + 2 == argc && strcmp(argv[i], "backup") == 0) {
        char path[PATH_MAX];
        int rc = s_absolute_path(argv[i + 1], path, sizeof path);
        if (rc == -ENAMETOOLONG) {
            fprintf(stderr, "medroute admin backup: FILE is longer than %zu bytes once made "
                    "absolute; nothing was sent\n", sizeof path - 1);
            return S_EXIT_USAGE;
        }
        if (rc < 0) {
            fprintf(stderr, "medroute admin backup: cannot tell the working directory: %s\n",
                    strerror(-rc));
            return S_EXIT_FAIL;
        }
        req = json_pack("{s:{s:s}}", "backup", "path", path);
    } else if (i + 1 == argc && strcmp(argv[i], "reload") == 0) {
        req = json_pack("{s:{}}", "reload");
    } else {
        s_usage_of(stderr, "admin");
        return S_EXIT_USAGE;
    }
    json_t *reply = NULL;
    if (req == NULL)
        return S_EXIT_FAIL;
    status = s_operator_call(ctx, req, 600000, &reply);
    if (status == S_EXIT_OK) {
        printf("%s\n", s_json_str(json_object_get(reply, "done"), "detail", "done"));
        if (fflush(stdout) != 0)
            status = S_EXIT_FAIL;
    }
    json_decref(reply);
    json_decref(req);
    return status;
}

/* ---- the command table ----------------------------------------------------- */

static int s_cmd_help(s_ctx_t *ctx, int argc, char **argv);

static const s_command_t s_commands[] = {
    {"send", s_cmd_send,
     "send --as FACILITY --to FACILITY --kind KIND [--priority routine|urgent|stat]\n"
     "             [--id MESSAGE_ID] [--correlation ID] [--timeout MS] --json FILE|-",
     "send one message (a payload, or a whole Envelope) and print its Ack as JSON"},
    {"listen", s_cmd_listen, "listen --as FACILITY [--count N] [--timeout MS]",
     "receive messages for FACILITY, one JSON line each, acknowledging each"},
    {"status", s_cmd_status, "status [--json] [--timeout MS]",
     "show the facilities' connections and queues, and the broker's counters"},
    {"queue", s_cmd_queue,
     "queue ls [--dest FACILITY] [--dead] [--limit N] [--json]\n"
     "       medroute queue retry SEQ\n"
     "       medroute queue drop SEQ --reason TEXT",
     "list pending messages or dead letters; retry a dead letter; drop a message"},
    {"slots", s_cmd_slots, "slots [--date YYYY-MM-DD] [--json]",
     "show the reserved-capacity ledger: capacity, reserved, claimed, released per resource"},
    {"open", s_cmd_open, "open [--facility FACILITY] [--older-than 2h] [--json]",
     "list referrals, imaging requests and lab orders not yet closed, with state and age"},
    {"stats", s_cmd_stats,
     "stats [--period today|yesterday|YYYY-MM-DD|YYYY-MM|YYYY-H1|YYYY-H2|YYYY] [--facility F] [--json]",
     "the community's tallies for a period (local time)"},
    {"indicators", s_cmd_indicators, "indicators [--period P] [--json]",
     "the indicators of a period with their targets and status"},
    {"watch", s_cmd_watch, "watch [--count N] [--timeout MS] [--json]",
     "a live stream of counter changes, escalations and indicator warnings"},
    {"admin", s_cmd_admin, "admin backup FILE\n       medroute admin reload",
     "an online copy of the store to FILE (on the broker's machine); reload the config"},
    {"keygen", s_cmd_keygen, "keygen --out DIR [--name NAME]",
     "make a CURVE keypair: DIR/NAME.key (secret, 0600) and DIR/NAME.pub (for the registry)"},
    {"help", s_cmd_help, "help [COMMAND]", "show this help"},
};
#define S_N_COMMANDS (sizeof s_commands / sizeof s_commands[0])

static void s_usage_of(FILE *out, const char *name)
{
    for (size_t i = 0; i < S_N_COMMANDS; i++)
        if (strcmp(s_commands[i].name, name) == 0)
            fprintf(out, "usage: medroute %s\n  %s\n", s_commands[i].usage, s_commands[i].help);
}

static void s_usage(FILE *out)
{
    fprintf(out, "usage: medroute [--endpoint URL] [--operator URL] [--state-dir DIR]\n"
                 "                [--key FILE --server-key FILE] COMMAND ...\n\n"
                 "commands:\n");
    for (size_t i = 0; i < S_N_COMMANDS; i++)
        fprintf(out, "  %-8s %s\n", s_commands[i].name, s_commands[i].help);
    fprintf(out,
            "\nglobal options (before or after the command):\n"
            "  --endpoint URL   the broker's facility endpoint (default " S_DEFAULT_ENDPOINT ")\n"
            "  --operator URL   the broker's operator endpoint (default " S_DEFAULT_OPERATOR ")\n"
            "  --state-dir DIR  keep the client's outbox and seen-set in DIR\n"
            "\nkinds: referral referral_update imaging_request imaging_report lab_order lab_result\n"
            "       critical_ack capacity visit_tally\n"
            "exit status: 0 ok, 1 refused or failed, 2 bad usage or input, 3 time-out\n"
            "`medroute help COMMAND` shows a command's options.\n");
}

static int s_cmd_help(s_ctx_t *ctx, int argc, char **argv)
{
    (void)ctx;
    if (argc > 1) {
        for (size_t i = 0; i < S_N_COMMANDS; i++)
            if (strcmp(s_commands[i].name, argv[1]) == 0) {
                s_usage_of(stdout, argv[1]);
                return S_EXIT_OK;
            }
        fprintf(stderr, "medroute: unknown command \"%s\"\n", argv[1]);
        return S_EXIT_USAGE;
    }
    s_usage(stdout);
    return S_EXIT_OK;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {S_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    s_ctx_t ctx = {.endpoint = S_DEFAULT_ENDPOINT, .operator_ep = S_DEFAULT_OPERATOR};
    int c;
    /* "+": stop at the command name; the rest belongs to the command. */
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        int g = s_global_opt(&ctx, c);
        if (g <= 0) {
            s_usage(g < 0 ? stdout : stderr);
            return g < 0 ? S_EXIT_OK : S_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        s_usage(stderr);
        return S_EXIT_USAGE;
    }
    const char *name = argv[optind];
    for (size_t i = 0; i < S_N_COMMANDS; i++) {
        if (strcmp(s_commands[i].name, name) == 0) {
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 0; /* restart getopt (GNU) for the command's own options */
            return s_commands[i].fn(&ctx, sub_argc, sub_argv);
        }
    }
    fprintf(stderr, "medroute: unknown command \"%s\"; try `medroute help`\n", name);
    return S_EXIT_USAGE;
}
