/*
 * dispatch.c - decode, check and route each facility frame to its handler.
 *
 * The table below is the facility protocol: which frame bodies a facility
 * may send, whether a Hello must come first, and who handles each.
 * Refusals, and frames without a key on a CURVE endpoint, are counted
 * each, logged at most LOGRATE_LINES per window (lograte.h).  Thread: loop.
 */
#include "dispatch.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "arena.h"
#include "flow.h"
#include "handlers.h"
#include "session.h"

typedef int (*s_handler_t)(server_t *, const dispatch_ctx_t *, const mr_frame_t *, mr_err_t *);

typedef struct {
    int body;               /* Frame body case */
    const char *name;
    int needs_hello;
    s_handler_t fn;
} s_route_t;

static const s_route_t s_routes[] = {
    {MEDROUTE__V1__FRAME__BODY_HELLO, "hello", 0, handle_hello},
    {MEDROUTE__V1__FRAME__BODY_HEARTBEAT, "heartbeat", 1, handle_heartbeat},
    {MEDROUTE__V1__FRAME__BODY_ENVELOPE, "envelope", 1, handle_envelope},
    {MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK, "delivery_ack", 1, handle_delivery_ack},
};

int mr_fail(mr_err_t *err, int code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(err->reason, sizeof err->reason, fmt, ap) < 0)
        err->reason[0] = '\0';
    va_end(ap);
    return code;
}

/* Sends err as an Error frame to rid (the reason cut on a character). */
static void s_send_error(server_t *s, const uint8_t *rid, size_t rid_len, const mr_err_t *err,
                         const char *reason)
{
    Medroute__V1__Error e = MEDROUTE__V1__ERROR__INIT;
    e.message_id = (char *)err->message_id;
    e.code = (Medroute__V1__ErrorCode)err->code;
    e.reason = (char *)reason;
    e.seq = err->seq;
    e.submission_tag = err->submission_tag;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ERROR;
    f.error = &e;
    /* Counted there if it fails; a refusal is not sent twice: a client
     * resends, after its next Welcome, what it had no answer for, and the
     * monitor ends the session of one whose connection has closed. */
    (void)server_send_facility(s, rid, rid_len, &f.base);
}

void dispatch_reply_error(server_t *s, const uint8_t *rid, size_t rid_len, int peer,
                          const mr_err_t *err)
{
    /* A reason longer than its buffer was cut by snprintf at a byte count,
     * possibly inside a character: what goes out ends on a whole one. */
    char reason[sizeof err->reason];
    snprintf(reason, sizeof reason, "%.*s", (int)mr_utf8_cut(err->reason, sizeof reason - 1),
             err->reason);
    s->counters.v[CNT_REJECTED]++;
    if (err->code > 0 && err->code < MR_E_COUNT)
        s->counters.rejected_by_code[err->code]++;
    /* The durable tally, unless the store counted it with its own refusal.
     * STORE_UNAVAILABLE too: the store keeps the count through its outage
     * and writes it with the first batch that commits a write (store.h). */
    if (!err->tallied && s->store != NULL) {
        char labels[64];
        snprintf(labels, sizeof labels, "code=\"%s\"", mr_error_name(err->code));
        store_tally(s->store, "messages_rejected_total", labels, 1);
    }
    const facility_t *fac = peer >= 0 ? registry_at(s->registry, (size_t)peer) : NULL;
    lograte_t *lines = peer >= 0 ? &s->peers[peer].reject_log : &s->reject_log_anon;
    if (lograte_allow(lines, mr_mono_ms())) {
        char id[MR_MESSAGE_ID_MAX + 1], why[sizeof err->reason];
        log_warn(s->log, "message.rejected", "facility=%s message_id=\"%s\" code=%s reason=\"%s\"",
                 fac ? fac->id : "-", log_clean(id, sizeof id, err->message_id),
                 mr_error_name(err->code), log_clean(why, sizeof why, reason));
    }
    if (rid != NULL)
        s_send_error(s, rid, rid_len, err, reason);
}

/* A late DeliveryAck counted (session_former): the first one from its
 * connection is also told, as NO_HELLO, that its session ended, so that a
 * client that is only acknowledging says Hello again now rather than at its
 * next heartbeat.  Not a refusal: not counted as one. */
static void s_tell_session_ended(server_t *s, const uint8_t *rid, size_t rid_len, int peer)
{
    peer_t *p = &s->peers[peer];
    if (p->former_told)
        return;
    p->former_told = true;
    mr_err_t err = {.code = MR_E_NO_HELLO};
    snprintf(err.reason, sizeof err.reason, "%s",
             "this connection's session has ended (its acknowledgements count): send Hello");
    s_send_error(s, rid, rid_len, &err, err.reason);
}

void dispatch_cron(server_t *s, int64_t mono_ms)
{
    for (size_t i = 0; i < registry_count(s->registry); i++)
        lograte_tell(&s->peers[i].reject_log, s->log, "message.rejected_unlogged",
                     registry_at(s->registry, i)->id, mono_ms);
    lograte_tell(&s->reject_log_anon, s->log, "message.rejected_unlogged", "-", mono_ms);
    lograte_tell(&s->fac_security_log, s->log, "security.facility_unlogged", NULL, mono_ms);
}

/* The message id of an Envelope frame, read off the wire for an error reply
 * (also for a frame too large to decode, or that does not decode), so that
 * the sender can tell which message was refused: cut to MR_MESSAGE_ID_MAX
 * bytes on a character boundary.  Only one UTF-8 occurrence without NUL is
 * echoed: a decoded id ends at its first NUL and could name another
 * message of the sender's outbox, and one that is not UTF-8 would not
 * decode in the Error either. */
static void s_note_raw_message_id(const uint8_t *frame, size_t len, mr_err_t *err)
{
    const uint8_t *env, *id;
    size_t env_len, id_len;
    if (mr_field_slice(frame, len, MR_FRAME_ENVELOPE_FIELD, &env, &env_len) != 0 ||
        mr_envelope_id(env, env_len, &id, &id_len) != 0 ||
        mr_text_check((const char *)id, id_len) != 0)
        return;
    size_t n = id_len < MR_MESSAGE_ID_MAX ? id_len : MR_MESSAGE_ID_MAX;
    memcpy(err->message_id, id, n);
    err->message_id[n] = '\0';
    err->message_id[mr_utf8_cut(err->message_id, n)] = '\0';
}

/* The submission tag of an Envelope frame that does not decode (too
 * large, or malformed), read off the wire as its message id is, so that
 * its sender settles that submission, not whichever waits under the id
 * (protocol.md 4.6).  Taken only from one occurrence: a decoder would keep
 * the last of several, but this frame was never decoded. */
static void s_note_raw_submission_tag(const uint8_t *frame, size_t len, mr_err_t *err)
{
    const uint8_t *env;
    size_t env_len;
    uint64_t tag;
    if (mr_field_slice(frame, len, MR_FRAME_ENVELOPE_FIELD, &env, &env_len) == 0 &&
        mr_field_varint(frame, len, MR_FRAME_SUBMISSION_TAG_FIELD, &tag) == 0)
        err->submission_tag = tag;
}

int dispatch_check_utf8(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                        mr_err_t *err)
{
    char path[96];
    int rc = mr_find_bad_utf8(d, buf, len, path, sizeof path);
    if (rc < 0)
        return mr_fail(err, MR_E_MALFORMED, "frame does not decode as %s", d->name);
    if (rc == 2)
        return mr_fail(err, MR_E_INVALID, "%s holds a NUL character", path);
    if (rc > 0)
        return mr_fail(err, MR_E_INVALID, "%s is not valid UTF-8", path);
    return 0;
}

void dispatch_facility(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                       const size_t *sizes, size_t n_parts, int truncated)
{
    server_t *s = arg;
    mr_err_t err = {0};
    dispatch_ctx_t ctx = {.rid = rid, .rid_len = rid_len};
    mr_frame_t *f = NULL;
    int rc = 0;
    s->counters.v[CNT_RECEIVED]++;
    ctx.user_id = endpoint_user_id(s->facility_ep);
    if (!s->conf->insecure && ctx.user_id == NULL) {
        /* CURVE is on and this message carries no authenticated identity:
         * nothing about it can be trusted, not even to answer it. */
        s->counters.v[CNT_SECURITY_EVENTS]++;
        /* Each counted, its line bounded: bytes= differs from one to the
         * next, past the log's filter of repeated lines, so a flood would
         * fill the log (the count told by dispatch_cron). */
        if (lograte_allow(&s->fac_security_log, mr_mono_ms()))
            log_warn(s->log, "security.no_user_id", "action=dropped bytes=%zu",
                     n_parts ? sizes[0] : 0);
        return;
    }
    ctx.peer = session_of(s, rid, rid_len, ctx.user_id);
    if (n_parts != 1 || truncated) {
        rc = mr_fail(&err, MR_E_MALFORMED, "expected exactly one frame part, got %zu%s", n_parts,
                     truncated ? "+" : "");
        goto out;
    }
    ctx.frame = parts[0];
    ctx.frame_bytes = sizes[0];
    if (sizes[0] > s->conf->max_message_bytes) {
        rc = mr_fail(&err, MR_E_TOO_LARGE, "frame of %zu bytes exceeds the limit of %u", sizes[0],
                     s->conf->max_message_bytes);
        goto out;
    }
    f = medroute__v1__frame__unpack(arena_pb(s->arena), sizes[0], parts[0]);
    if (f == NULL) {
        rc = mr_fail(&err, MR_E_MALFORMED, "frame does not decode as medroute.v1.Frame");
        goto out;
    }
    if (f->version != MR_PROTOCOL_VERSION) {
        rc = mr_fail(&err, MR_E_UNSUPPORTED_VERSION, "protocol version %d, this broker speaks %d",
                     (int)f->version, MR_PROTOCOL_VERSION);
        goto out;
    }
    const s_route_t *route = NULL;
    for (size_t i = 0; i < sizeof s_routes / sizeof s_routes[0]; i++)
        if (s_routes[i].body == (int)f->body_case)
            route = &s_routes[i];
    if (route == NULL) {
        rc = f->body_case == MEDROUTE__V1__FRAME__BODY__NOT_SET
                 ? mr_fail(&err, MR_E_MALFORMED, "frame has no body")
                 : mr_fail(&err, MR_E_UNEXPECTED_FRAME, "a facility may not send frame body %d",
                           (int)f->body_case);
        goto out;
    }
    if (route->needs_hello && ctx.peer < 0 &&
        f->body_case == MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK) {
        ctx.peer = session_former(s, rid, rid_len, ctx.user_id);
        ctx.late = ctx.peer >= 0;
    }
    if (route->needs_hello && ctx.peer < 0) {
        rc = mr_fail(&err, MR_E_NO_HELLO, "send Hello first on this connection");
        goto out;
    }
    if (ctx.peer >= 0 && !ctx.late)
        session_touch(s, ctx.peer); /* a late ack keeps no session alive */
    rc = dispatch_check_utf8(&medroute__v1__frame__descriptor, ctx.frame, ctx.frame_bytes, &err);
    if (rc != 0)
        goto out;
    rc = route->fn(s, &ctx, f, &err);
    if (rc == 0 && ctx.late) {
        s->counters.v[CNT_LATE_ACKS]++;
        s_tell_session_ended(s, rid, rid_len, ctx.peer);
    }
out:
    if (rc != 0) {
        if (err.message_id[0] == '\0' && ctx.frame != NULL)
            s_note_raw_message_id(ctx.frame, ctx.frame_bytes, &err);
        if (f != NULL && f->body_case == MEDROUTE__V1__FRAME__BODY_ENVELOPE)
            err.submission_tag = f->submission_tag; /* the sender tells which submission */
        else if (f == NULL && ctx.frame != NULL)
            s_note_raw_submission_tag(ctx.frame, ctx.frame_bytes, &err);
        dispatch_reply_error(s, rid, rid_len, ctx.peer, &err);
    }
    arena_reset(s->arena); /* f and all it holds */
    /* What it submitted may have filled the store's queue: stop reading now,
     * not at the end of a turn of up to a budget of frames (flow.c). */
    flow_after_frame(s->flow);
}
