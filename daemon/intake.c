/*
 * intake.c - the path of a new message: validate -> PUT -> (commit) -> Ack
 * to the sender -> hand to the router for its destination.
 *
 * The Ack is sent from the store callback, so it is never sent before the
 * message is committed.  A resend of the same message id is acknowledged
 * again (duplicate = true) and not routed again.  Thread: loop.
 */
#include "intake.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acks.h"
#include "clinical.h"
#include "dispatch.h"
#include "facts.h"
#include "handlers.h"
#include "policy.h"
#include "router.h"

static int s_set(char *reason, size_t len, int code, const char *text)
{
    snprintf(reason, len, "%s", text);
    return code;
}

int intake_validate(server_t *s, int peer, const mr_envelope_t *env, int *dest_out,
                    char *reason, size_t reason_len)
{
    int dest;
    size_t id_len = env->message_id ? strlen(env->message_id) : 0;
    if (id_len == 0 || id_len > MR_MESSAGE_ID_MAX)
        return s_set(reason, reason_len, MR_E_INVALID, "message_id must be 1..64 characters");
    const facility_t *me = registry_at(s->registry, (size_t)peer);
    if (env->source == NULL || env->source[0] == '\0')
        return s_set(reason, reason_len, MR_E_INVALID, "source is required");
    if (strcmp(env->source, me->id) != 0) {
        s->counters.v[CNT_SECURITY_EVENTS]++; /* a spoofing attempt, or a broken client */
        snprintf(reason, reason_len, "source \"%.*s\" is not this connection's facility %s",
                 (int)mr_utf8_cut(env->source, 64), env->source, me->id);
        return registry_find(s->registry, env->source, strlen(env->source)) < 0
                   ? MR_E_UNKNOWN_SOURCE
                   : MR_E_FORBIDDEN;
    }
    size_t dlen = env->destination ? strlen(env->destination) : 0;
    if (dlen == 0)
        return s_set(reason, reason_len, MR_E_INVALID, "destination is required");
    const char *kind = mr_kind_name((int)env->kind);
    if (kind == NULL) {
        snprintf(reason, reason_len, "kind %d is not a known kind", (int)env->kind);
        return MR_E_UNKNOWN_KIND;
    }
    const char *why = NULL;
    if (policy_may_send(me->role, (int)env->kind, &why) != 0)
        return s_set(reason, reason_len, MR_E_FORBIDDEN, why);
    if (policy_broker_bound((int)env->kind)) {
        if (strcmp(env->destination, s->conf->broker_id) != 0) {
            snprintf(reason, reason_len, "kind %s is addressed to the broker (%s)", kind,
                     s->conf->broker_id);
            return MR_E_INVALID;
        }
        dest = -1;
        goto payload;
    }
    dest = registry_find(s->registry, env->destination, dlen);
    if (dest < 0) {
        snprintf(reason, reason_len, "destination \"%.*s\" is not in the registry",
                 (int)mr_utf8_cut(env->destination, 64), env->destination);
        return MR_E_UNKNOWN_DESTINATION;
    }
    if (dest == peer)
        return s_set(reason, reason_len, MR_E_INVALID, "destination is the sender itself");
payload:
    if ((int)env->payload_case != mr_kind_payload_case((int)env->kind)) {
        snprintf(reason, reason_len, "kind %s does not match the payload (case %d)", kind,
                 (int)env->payload_case);
        return MR_E_INVALID;
    }
    if (mr_priority_name((int)env->priority) == NULL)
        return s_set(reason, reason_len, MR_E_INVALID, "priority must be routine, urgent or stat");
    *dest_out = dest;
    return 0;
}

/* The expiry of a message: the referral's own, bounded by the kind's TTL. */
static int64_t s_expiry(const server_t *s, const mr_envelope_t *env, int64_t now_ms)
{
    int64_t ttl_end = now_ms + (int64_t)s->conf->ttl_s[env->kind] * 1000;
    if (env->payload_case == MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL && env->referral &&
        env->referral->expires_at_ms > 0 && env->referral->expires_at_ms < ttl_end)
        return env->referral->expires_at_ms;
    return ttl_end;
}

static void s_send_ack(server_t *s, int peer, const store_req_t *req, bool dup)
{
    peer_t *p = &s->peers[peer];
    if (!p->connected)
        return; /* the sender resends on reconnect and gets its Ack then */
    acks_add(s->acks, p->rid, p->rid_len, p->max_acks, req->msg.message_id, req->seq, dup,
             req->submission_tag);
}

/* Logs what a stored message did to the clinical state. */
static void s_log_effect(server_t *s, const store_req_t *req)
{
    const clin_facts_t *f = req->facts;
    if (f == NULL || (f->kind != MEDROUTE__V1__KIND__KIND_REFERRAL &&
                      f->kind != MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE))
        return;
    log_debug(s->log, "referral.step", "seq=%llu source=%s dest=%s state=%s claim=%s%s",
             (unsigned long long)req->seq, req->msg.source, req->msg.dest,
             referral_state_name((ref_state_t)req->clin.ref_state),
             slots_claim_name((claim_t)req->clin.claim),
             req->clin.claim_released ? " released=1" : "");
}

/* A PUT the store did not accept: the Error to its sender. */
static void s_put_failed(server_t *s, const store_req_t *req, int src)
{
    mr_err_t err = {0};
    snprintf(err.message_id, sizeof err.message_id, "%s", req->msg.message_id);
    err.submission_tag = req->submission_tag;
    switch (req->status) {
    case STORE_CONFLICT:
        mr_fail(&err, MR_E_CONFLICT, "message_id was used before for different content");
        err.tallied = true;
        break;
    case STORE_REFUSED:
        err.code = req->clin.code;
        snprintf(err.reason, sizeof err.reason, "%s", req->clin.reason);
        err.tallied = true;
        break;
    default:
        mr_fail(&err, MR_E_STORE_UNAVAILABLE, "the store could not commit the message; resend");
        break;
    }
    if (src >= 0 && s->peers[src].connected)
        dispatch_reply_error(s, s->peers[src].rid, s->peers[src].rid_len, src, &err);
    else
        dispatch_reply_error(s, NULL, 0, src, &err);
}

static void on_put(store_req_t *req, void *arg)
{
    server_t *s = arg;
    int src = registry_find(s->registry, req->msg.source, strlen(req->msg.source));
    int dest = (int)req->tag;
    switch (req->status) {
    case STORE_OK:
        s->counters.v[CNT_STORED]++;
        if (src >= 0)
            s_send_ack(s, src, req, false);
        s_log_effect(s, req);
        if (dest >= 0) {
            router_on_stored(s, dest, req->seq, &req->msg, req->facts && facts_express(req->facts));
        }
        return;
    case STORE_DUPLICATE:
        s->counters.v[CNT_DUPLICATE]++;
        if (src >= 0)
            s_send_ack(s, src, req, true);
        return;
    default:
        s_put_failed(s, req, src);
        return;
    }
}

int handle_envelope(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err)
{
    const mr_envelope_t *env = f->envelope;
    int dest = -1;
    int code = intake_validate(s, ctx->peer, env, &dest, err->reason, sizeof err->reason);
    if (code != 0) {
        err->code = code;
        return code;
    }
    if (s->draining)
        return mr_fail(err, MR_E_SHUTTING_DOWN, "the broker is shutting down; resend later");
    /* What is stored is the envelope's bytes as the frame carried them: they
     * decoded into env and their strings are UTF-8 (dispatch checked), so
     * they decode at the receiver too, but for an unknown field numbered 0
     * (in an overlong tag) or above 2^29 - 1, which protobuf-c keeps and
     * other decoders refuse (mr_codec.h). */
    const uint8_t *raw;
    size_t raw_len;
    if (mr_field_slice(ctx->frame, ctx->frame_bytes, MR_FRAME_ENVELOPE_FIELD, &raw, &raw_len) != 0)
        return mr_fail(err, MR_E_MALFORMED, "the frame carries its envelope more than once");
    /* The same for the payload (a oneof member: its case is its field
     * number): protobuf-c keeps only the last copy, other decoders merge the
     * copies, so the clinical facts read here would not be what the receiver
     * reads. */
    const uint8_t *payload;
    size_t payload_len;
    if (mr_field_slice(raw, raw_len, (uint32_t)env->payload_case, &payload, &payload_len) != 0)
        return mr_fail(err, MR_E_MALFORMED, "the envelope carries its payload more than once");
    if (mr_has_bad_field_number(&env->base))
        return mr_fail(err, MR_E_MALFORMED,
                       "the envelope holds a field numbered 0 or above 536870911");
    /* Limits: one facility's flood must not delay the others, and no queue
     * grows without bound.  Both are answered, never dropped silently. */
    peer_t *me = &s->peers[ctx->peer];
    int64_t now_ms = mr_mono_ms();
    double refill = (double)(now_ms - me->tokens_at_ms) * s->conf->rate_per_s / 1000.0;
    me->tokens = me->tokens_at_ms == 0 ? s->conf->rate_burst : me->tokens + refill;
    if (me->tokens > s->conf->rate_burst)
        me->tokens = s->conf->rate_burst;
    me->tokens_at_ms = now_ms;
    if (me->tokens < 1.0)
        return mr_fail(err, MR_E_RATE_LIMITED, "over %u messages per second; resend later",
                       s->conf->rate_per_s);
    me->tokens -= 1.0;
    store_req_t *req = store_req_new(STORE_PUT, on_put, s);
    if (req == NULL)
        return mr_fail(err, MR_E_INTERNAL, "out of memory");
    /* Checked by the store after it has told a resend from a new message. */
    req->quota = dest >= 0 ? s->conf->queue_quota : 0;
    req->fresh_only = true;
    int64_t now = mr_now_ms();
    store_row_t *m = &req->msg;
    req->tag = dest;
    req->submission_tag = f->submission_tag;
    m->source = strdup(env->source);
    m->message_id = strdup(env->message_id);
    m->dest = strdup(env->destination);
    m->kind = (int)env->kind;
    m->priority = (int)env->priority;
    m->stored_ms = now;
    m->expires_ms = s_expiry(s, env, now);
    /* A message to the broker itself is delivered the moment it is stored. */
    req->state = dest < 0 ? MSG_DELIVERED : MSG_PENDING;
    code = facts_extract(s, ctx->peer, dest, env, m->expires_ms, now, &req->facts, err->reason,
                         sizeof err->reason);
    if (code > 0) {
        store_row_clear(m);
        free(req);
        err->code = code;
        return code;
    }
    m->express = req->facts && facts_express(req->facts);
    m->body = malloc(raw_len ? raw_len : 1);
    if (code < 0 || m->source == NULL || m->message_id == NULL || m->dest == NULL ||
        m->body == NULL) {
        clinical_facts_free(req->facts);
        store_row_clear(m);
        free(req);
        return mr_fail(err, MR_E_INTERNAL, "out of memory");
    }
    memcpy(m->body, raw, raw_len);
    m->body_len = raw_len;
    store_submit(s->store, req);
    return 0;
}
