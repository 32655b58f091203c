/*
 * operator.c - a connection to medrouted's operator endpoint.
 *
 * One DEALER socket; each call sends one OpRequest and waits for the OpReply
 * with the same request_id.  Replies to other requests that arrive meanwhile
 * (a `watch` stream's events, a late reply to an earlier call) are held, up
 * to S_HELD_MAX, for mr_operator_next_json, which returns them first.
 */
#include "medroute.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "mr_codec.h"
#include "pbjson.h"

#define S_HELD_MAX 1024

struct mr_operator_t {
    void *zctx;
    void *sock;
    uint64_t next_id;
    mr_op_reply_t **held; /* replies to other requests, oldest first: a ring */
    size_t held_head, n_held, cap_held;
};

/* Whether key is a CURVE key in Z85 text: 40 characters.  Read as
 * ZeroMQ reads it, 40 bytes whatever its length, a shorter string would
 * be read past its end. */
static bool s_z85_key(const char *key)
{
    return key != NULL && strnlen(key, 41) == 40;
}

mr_operator_t *mr_operator_new(const char *endpoint)
{
    return mr_operator_new_curve(endpoint, NULL, NULL, NULL);
}

mr_operator_t *mr_operator_new_curve(const char *endpoint, const char *server_public_key,
                                     const char *public_key, const char *secret_key)
{
    mr_operator_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    int linger = 0;
    self->zctx = zmq_ctx_new();
    if (self->zctx == NULL)
        goto fail;
    self->sock = zmq_socket(self->zctx, ZMQ_DEALER);
    if (self->sock == NULL || zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger))
        goto fail;
    if (server_public_key != NULL &&
        (!s_z85_key(server_public_key) || !s_z85_key(public_key) || !s_z85_key(secret_key) ||
         zmq_setsockopt(self->sock, ZMQ_CURVE_SERVERKEY, server_public_key, 40) != 0 ||
         zmq_setsockopt(self->sock, ZMQ_CURVE_PUBLICKEY, public_key, 40) != 0 ||
         zmq_setsockopt(self->sock, ZMQ_CURVE_SECRETKEY, secret_key, 40) != 0))
        goto fail;
    if (zmq_connect(self->sock, endpoint) != 0)
        goto fail;
    self->next_id = (uint64_t)mr_now_ms();
    return self;
fail:
    mr_operator_destroy(&self);
    return NULL;
}

void mr_operator_destroy(mr_operator_t **self_p)
{
    mr_operator_t *self = *self_p;
    if (self == NULL)
        return;
    if (self->sock)
        zmq_close(self->sock);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    for (size_t i = 0; i < self->n_held; i++)
        medroute__v1__op_reply__free_unpacked(
            self->held[(self->held_head + i) % self->cap_held], NULL);
    free(self->held);
    free(self);
    *self_p = NULL;
}

/* Keeps r for mr_operator_next_json; dropped when S_HELD_MAX are held or
 * memory runs out. */
static void s_hold(mr_operator_t *self, mr_op_reply_t *r)
{
    if (self->n_held == self->cap_held && self->cap_held < S_HELD_MAX) {
        size_t cap = self->cap_held ? self->cap_held * 2 : 16;
        mr_op_reply_t **h = malloc(cap * sizeof *h);
        if (h != NULL) {
            for (size_t i = 0; i < self->n_held; i++)
                h[i] = self->held[(self->held_head + i) % self->cap_held];
            free(self->held);
            self->held = h;
            self->held_head = 0;
            self->cap_held = cap;
        }
    }
    if (self->n_held == self->cap_held) {
        medroute__v1__op_reply__free_unpacked(r, NULL);
        return;
    }
    self->held[(self->held_head + self->n_held) % self->cap_held] = r;
    self->n_held++;
}

/* Waits for the reply to request_id (any request when request_id is
 * UINT64_MAX); *out owned by the caller. */
static int s_wait_reply(mr_operator_t *self, uint64_t request_id, int timeout_ms,
                        mr_op_reply_t **out)
{
    int64_t deadline = mr_mono_ms() + timeout_ms;
    zmq_pollitem_t item = {.socket = self->sock, .events = ZMQ_POLLIN};
    for (;;) {
        int64_t left = deadline - mr_mono_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        int n = zmq_poll(&item, 1, (long)left);
        if (n < 0)
            return zmq_errno() == EINTR ? -EINTR : -zmq_errno();
        if (n == 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        mr_op_reply_t *r = medroute__v1__op_reply__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        if (r != NULL &&
            (request_id == UINT64_MAX || r->request_id == request_id || r->request_id == 0)) {
            *out = r;
            return 0;
        }
        if (r != NULL)
            s_hold(self, r);
    }
}

int mr_operator_call_json(mr_operator_t *self, const char *request_json, char **reply,
                          int timeout_ms, char *err, size_t errlen)
{
    json_error_t jerr;
    ProtobufCMessage *msg = NULL;
    mr_op_reply_t *r = NULL;
    uint8_t *buf = NULL;
    size_t len;
    json_t *out = NULL;
    int rc = -EINVAL;
    *reply = NULL;
    json_t *req = json_loads(request_json, JSON_REJECT_DUPLICATES, &jerr); /* as submit_json */
    if (req == NULL) {
        snprintf(err, errlen, "JSON line %d: %s", jerr.line, jerr.text);
        goto out;
    }
    rc = pbjson_to_message(&medroute__v1__op_request__descriptor, req, &msg, err, errlen);
    if (rc < 0)
        goto out;
    mr_op_request_t *q = (mr_op_request_t *)msg;
    q->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    q->request_id = ++self->next_id;
    rc = mr_pack(msg, &buf, &len);
    if (rc < 0)
        goto out;
    if (zmq_send(self->sock, buf, len, 0) < 0) {
        rc = -zmq_errno();
        snprintf(err, errlen, "send failed: %s", zmq_strerror(-rc));
        goto out;
    }
    rc = s_wait_reply(self, q->request_id, timeout_ms, &r);
    if (rc < 0) {
        snprintf(err, errlen, "no reply from the broker within %d ms", timeout_ms);
        goto out;
    }
    out = pbjson_from_message(&r->base);
    *reply = out ? json_dumps(out, JSON_COMPACT) : NULL;
    if (*reply == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    rc = r->body_case == MEDROUTE__V1__OP_REPLY__BODY_ERROR ? -EPROTO : 0;
    if (rc == -EPROTO)
        snprintf(err, errlen, "%s: %s", mr_error_name(r->error->code),
                 r->error->reason ? r->error->reason : "");
out:
    json_decref(out);
    if (r != NULL)
        medroute__v1__op_reply__free_unpacked(r, NULL);
    free(buf);
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    json_decref(req);
    return rc;
}

int mr_operator_next_json(mr_operator_t *self, char **reply, int timeout_ms)
{
    mr_op_reply_t *r = NULL;
    *reply = NULL;
    if (self->n_held > 0) {
        r = self->held[self->held_head];
        self->held_head = (self->held_head + 1) % self->cap_held;
        self->n_held--;
    } else {
        int rc = s_wait_reply(self, UINT64_MAX, timeout_ms, &r);
        if (rc < 0)
            return rc;
    }
    json_t *j = pbjson_from_message(&r->base);
    medroute__v1__op_reply__free_unpacked(r, NULL);
    if (j == NULL)
        return -ENOMEM;
    *reply = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return *reply ? 0 : -ENOMEM;
}
