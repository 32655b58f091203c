/*
 * client.c - a facility's connection to medrouted (DEALER socket).
 *
 * Owns: the zmq context and sockets (DEALER + its monitor PAIR), the outbox
 * (memory list mirrored in cstore), the outcomes kept for a poll with a
 * handler (memory array mirrored in cstore), the seen-set (cstore), the ids
 * acknowledged after several sends (acked).
 *
 * Invariants
 *   1. Every submitted message is in the outbox until its Ack, or until a
 *      final Error (one that resending cannot cure).  Its answer is one
 *      that names its id and carries its tag (the broker echoes the tag
 *      each of its frames carries); from a broker that echoes none, one
 *      that names its id, but for a late Ack of an earlier version of that
 *      id with other content (the entry's not_seq): that answers the other
 *      version, which the broker keeps and this one conflicts with.  A
 *      dead-letter notice (EXPIRED) answers no submission.  A submission
 *      settled by a final refusal while copies of it were unanswered is
 *      remembered (refusals): the Ack of one of those copies, stored after
 *      all, is told to the application as well.
 *   2. Hello is sent on every (re)connection the monitor reports, and again
 *      when the broker answers NO_HELLO (it restarted, or our session timed
 *      out); after each Welcome the whole outbox is sent again.
 *   3. A delivery's key is marked IN_HANDLER before the handler runs and DONE
 *      after it returns 0, before the DeliveryAck is sent; a DONE key is
 *      acknowledged and not handed over again.  A refusal (non-zero) clears
 *      only a mark it set itself: one found IN_HANDLER (a crash inside the
 *      handler) stays until the handler returns 0, or S_SEEN_KEEP_MS after
 *      its last hand-off (a later copy is flagged as stored long ago).
 */
#include "medroute.h"

#include <errno.h>
#include <limits.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>

#include "acked.h"
#include "cstore.h"
#include "mr_codec.h"
#include "pbjson.h"
#include "refused.h"
#include "strmap.h"

#define S_RECV_BUDGET 1000
#define S_KEEP_ALIVE_MS 200 /* within a pass of frames: acks and heartbeats at least this often */
#define S_ACKS_MAX 256 /* seqs one DeliveryAck of ours carries at most */
#define S_HELLO_RETRY_MS 2000
#define S_PRUNE_EVERY_MS 3600000
#define S_SEEN_KEEP_MS (7LL * 86400 * 1000)

typedef struct s_out_t {
    char id[MR_MESSAGE_ID_MAX + 1];
    uint8_t *body;
    size_t len;
    int64_t sent_ms;          /* 0: not sent on this connection yet */
    unsigned sends;           /* frames of it handed to the socket, on any connection;
                                 one more for an entry read back from the outbox */
    /* This submission's, never 0 nor another entry's: sent with each copy
     * (Frame.submission_tag), the answer to it carries it back, and the
     * outcome that settles the entry carries it.  Kept in the outbox row:
     * an entry read back from it is the same submission, whose copies an
     * earlier process sent with this tag (their answers may come here). */
    uint64_t tag;
    /* An Ack of this seq answers an earlier version of this id, with other
     * content, that was acknowledged after several sends (acked.h): not
     * this one, which the broker refuses as CONFLICT.  0: none. */
    uint64_t not_seq;
    int slot;                 /* its place in out_slot, the value of its id in out_ids */
    struct s_out_t *prev, *next;
} s_out_t;

/* An event kept for a later poll (its strings copied). */
typedef struct {
    mr_event_type_t type;     /* MR_EVENT_ACK or MR_EVENT_ERROR */
    uint64_t tag;             /* the tag of the outbox entry it settled; 0: none */
    int64_t row;              /* its row in the state file (cstore_outcome_keep); 0: none */
    char message_id[MR_MESSAGE_ID_MAX + 1];
    uint64_t seq;
    bool duplicate;
    int code;
    char reason[256];
} s_held_t;

#define S_HELD_MAX 4096

/* A synchronous send (mr_client_send_json) waiting for the outcome of its
 * outbox entry: the one that settles the entry of that tag, not one that
 * only names its id (an earlier submission's). */
typedef struct {
    uint64_t tag;
    mr_result_t *res;
    bool done;
    int rc;
} s_wait_t;

struct mr_client_t {
    void *zctx;
    void *sock;
    void *mon;
    char *endpoint;
    char *facility;
    char *client_name;
    uint32_t max_inflight;
    uint32_t ack_timeout_ms;
    cstore_t *cs;
    bool persistent;
    bool welcomed;
    bool linked;              /* a TCP connection is up (monitor): frames reach the broker */
    int refused;              /* error code of a refused Hello, 0 if none */
    bool hello_waiting;       /* a Hello went out on this link, not yet answered */
    uint32_t hb_interval_ms;
    uint32_t hb_timeout_ms;
    /* last_tx_ms: our last Hello, DeliveryAck or Heartbeat, not an Envelope:
     * the broker sends a delivery again on this connection only after a
     * DeliveryAck or Heartbeat, the signs that we read (protocol.md 6.1),
     * so a client that sends Envelopes all the time still heartbeats. */
    int64_t last_rx_ms, last_tx_ms, last_hello_ms, last_prune_ms;
    s_out_t *out_head, *out_tail;
    /* The first entry not sent on this connection; every one before it has
     * been (sent_ms != 0).  Sending resumes here, so a poll does not walk
     * the entries that only wait for their Ack (up to ZMQ_SNDHWM of them
     * while a large outbox drains). */
    s_out_t *out_unsent;
    int64_t last_resend_scan_ms;
    size_t n_out;
    strmap_t *out_ids;        /* the ids in the outbox: submit and Ack find them at once */
    acked_t *acked;           /* ids acknowledged after several sends: late Acks may come */
    refused_t *refusals;      /* submissions refused with copies unanswered: one may be stored */
    /* out_slot[i]: the entry whose id out_ids maps to i (NULL: free, and i is
     * on the out_free stack), so a resubmission or an Ack finds its entry
     * without a walk of the outbox (250,000 after a night offline). */
    s_out_t **out_slot;
    int *out_free;
    size_t n_slot, cap_slot, n_free;
    /* Frames that arrived while nobody could take deliveries (a poll without
     * handler): handed over, in order, by the next poll with a handler.
     * deferred_seq[i] is the seq of deferred[i]: a redelivery of one held
     * is not held twice, so they are at most the broker's window. */
    zmq_msg_t *deferred;
    uint64_t *deferred_seq;
    size_t n_deferred, cap_deferred;
    s_wait_t *wait;           /* the synchronous send polling, or NULL */
    /* The outcomes (Ack, final Error) of our messages that came while no
     * handler of the application's could take them: handed over, in order,
     * to the next poll with one.  At most S_HELD_MAX: later ones are not kept.
     * With a state directory, each one whose row is not 0 is on disk too,
     * and every outcome on disk is here, in the order of their rows. */
    s_held_t *held;
    size_t n_held, cap_held;
    uint32_t max_frame_bytes; /* Welcome.max_message_bytes: the broker's limit; 0 unknown */
    size_t outbox_damaged;    /* damaged outbox rows: in outbox_damaged, or found at this start */
    uint64_t id_counter;
    uint64_t id_salt;
    uint64_t last_tag;        /* of the latest outbox entry; from a random start, so that
                                 another process's tags are not this one's */
    /* DeliveryAcks not sent yet: a broker that allows it (Welcome) gets one
     * frame per receive budget instead of one per delivery. */
    uint32_t max_acks;        /* Welcome.max_acks_per_frame; 0 or 1: one seq a frame */
    uint64_t acks[S_ACKS_MAX];
    size_t n_acks;
};

const char *mr_error_code_name(int code)
{
    return mr_error_name(code);
}

/* ---- frames out ------------------------------------------------------------ */

static int s_send_frame(mr_client_t *c, mr_frame_t *f)
{
    f->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    uint8_t *buf;
    size_t len;
    int rc = mr_pack(&f->base, &buf, &len);
    if (rc < 0)
        return rc;
    rc = zmq_send(c->sock, buf, len, ZMQ_DONTWAIT) < 0 ? -zmq_errno() : 0;
    free(buf);
    if (rc == 0)
        c->last_tx_ms = mr_mono_ms();
    return rc;
}

static int s_send_raw(mr_client_t *c, const uint8_t *body, size_t len, uint64_t tag)
{
    /* Frame{version=1, envelope=<body>, submission_tag} without decoding body
     * again, packed straight into the message ZeroMQ sends. */
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, mr_envelope_frame_size(len, tag)) != 0)
        return -ENOMEM;
    (void)mr_envelope_frame_pack(body, len, tag, zmq_msg_data(&msg));
    int rc = zmq_msg_send(&msg, c->sock, ZMQ_DONTWAIT) < 0 ? -zmq_errno() : 0;
    if (rc < 0)
        zmq_msg_close(&msg); /* sent, it belongs to ZeroMQ */
    return rc; /* not last_tx_ms: an Envelope does not show that we read */
}

static void s_send_hello(mr_client_t *c)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = c->facility;
    h.client_name = c->client_name;
    h.max_inflight = c->max_inflight;
    h.max_acks_per_frame = MR_ACKS_PER_FRAME_MAX; /* any number: each is handled alone */
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    if (s_send_frame(c, &f) == 0) /* a failure is retried by the timer */
        c->hello_waiting = true;
    c->last_hello_ms = mr_mono_ms();
}

/* Sends the DeliveryAcks held back, in one frame. */
static void s_flush_acks(mr_client_t *c)
{
    if (c->n_acks == 0)
        return;
    Medroute__V1__DeliveryAck a = MEDROUTE__V1__DELIVERY_ACK__INIT;
    a.seq = c->acks[0];
    a.n_more_seqs = c->n_acks - 1;
    a.more_seqs = c->acks + 1;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK;
    f.delivery_ack = &a;
    c->n_acks = 0;
    (void)s_send_frame(c, &f); /* lost: the broker resends, the seen-set absorbs */
}

/* Acknowledges a delivery whose DONE mark is committed: at once, or with the
 * others of this receive budget (s_poll flushes them at its end). */
static void s_send_delivery_ack(mr_client_t *c, uint64_t seq)
{
    /* A Delivery without seq (no broker sends one) cannot be acknowledged,
     * and the broker's INVALID for it would carry no message id: read as
     * the refusal of a Hello (s_hello_refusal). */
    if (seq == 0)
        return;
    size_t cap = c->max_acks < S_ACKS_MAX ? c->max_acks : S_ACKS_MAX;
    c->acks[c->n_acks++] = seq;
    if (c->n_acks >= cap)
        s_flush_acks(c);
}

/* ---- outbox ---------------------------------------------------------------- */

/* The tag the next outbox entry gets. */
static uint64_t s_next_tag(const mr_client_t *c)
{
    return c->last_tag + 1 != 0 ? c->last_tag + 1 : 1;
}

/* A free place in out_slot (made room for if need be), or -1 without memory. */
static int s_slot_take(mr_client_t *c)
{
    if (c->n_free > 0)
        return c->out_free[--c->n_free];
    if (c->n_slot == c->cap_slot) {
        size_t cap = c->cap_slot ? 2 * c->cap_slot : 64;
        if (cap > INT_MAX)
            return -1;
        s_out_t **slot = realloc(c->out_slot, cap * sizeof *slot);
        if (slot == NULL)
            return -1;
        c->out_slot = slot;
        int *free_ = realloc(c->out_free, cap * sizeof *free_);
        if (free_ == NULL)
            return -1; /* out_slot is larger already: harmless, cap_slot says the old size */
        c->out_free = free_;
        c->cap_slot = cap;
    }
    c->out_slot[c->n_slot] = NULL;
    return (int)c->n_slot++;
}

/* Appends id's entry, of tag (0: a new one's, drawn), to the outbox. */
static int s_outbox_push(mr_client_t *c, const char *id, const uint8_t *body, size_t len,
                         bool persist, uint64_t tag)
{
    size_t id_len = strlen(id);
    if (id_len > MR_MESSAGE_ID_MAX)
        return -EINVAL;
    s_out_t *o = calloc(1, sizeof *o);
    if (o == NULL)
        return -ENOMEM;
    o->body = malloc(len ? len : 1);
    o->slot = o->body ? s_slot_take(c) : -1;
    if (o->slot < 0 || strmap_put(c->out_ids, id, id_len, o->slot) < 0) {
        if (o->slot >= 0)
            c->out_free[c->n_free++] = o->slot;
        free(o->body);
        free(o);
        return -ENOMEM;
    }
    memcpy(o->body, body, len);
    o->len = len;
    memcpy(o->id, id, id_len + 1);
    o->tag = tag != 0 ? tag : (c->last_tag = s_next_tag(c));
    if (persist && cstore_outbox_add(c->cs, id, body, len, o->tag) < 0) {
        strmap_del(c->out_ids, id, id_len);
        c->out_free[c->n_free++] = o->slot;
        free(o->body);
        free(o);
        return -EIO;
    }
    c->out_slot[o->slot] = o;
    o->prev = c->out_tail;
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    if (c->out_unsent == NULL)
        c->out_unsent = o;
    c->n_out++;
    return 0;
}

/* The outbox entry of id, or NULL. */
static s_out_t *s_outbox_find(const mr_client_t *c, const char *id)
{
    int i = strmap_get(c->out_ids, id, strlen(id));
    return i < 0 ? NULL : c->out_slot[i];
}

/* Takes o out of the outbox, in memory, and its row on disk unless
 * keep_row (the caller deletes it with the outcome it keeps); the caller
 * frees o. */
static void s_outbox_unlink(mr_client_t *c, s_out_t *o, bool keep_row)
{
    (void)strmap_del(c->out_ids, o->id, strlen(o->id)); /* o is in it: invariant of out_ids */
    if (o->prev)
        o->prev->next = o->next;
    else
        c->out_head = o->next;
    if (o->next)
        o->next->prev = o->prev;
    else
        c->out_tail = o->prev;
    if (c->out_unsent == o)
        c->out_unsent = o->next;
    c->out_slot[o->slot] = NULL;
    c->out_free[c->n_free++] = o->slot;
    c->n_out--;
    if (c->persistent && !keep_row)
        (void)cstore_outbox_remove(c->cs, o->id); /* a stale row is resent: harmless */
}

/* Whether an answer naming o's id, with tag (0: from a broker that does
 * not echo tags), answers o: one with another tag answers an earlier
 * submission of the id (a late answer to a copy of it). */
static bool s_answers(const s_out_t *o, uint64_t tag)
{
    return tag == 0 || tag == o->tag;
}

/* Hands o to the socket; 0, or the socket's error (it stays unsent). */
static int s_send_entry(mr_client_t *c, s_out_t *o, int64_t now)
{
    int rc = s_send_raw(c, o->body, o->len, o->tag);
    if (rc == 0) {
        o->sent_ms = now;
        o->sends++;
    }
    return rc;
}

/* Errors that resending can cure: the message stays in the outbox. */
static bool s_transient(int code)
{
    return code == MR_E_STORE_UNAVAILABLE || code == MR_E_SHUTTING_DOWN ||
           code == MR_E_RATE_LIMITED || code == MR_E_NO_HELLO || code == MR_E_INTERNAL;
}

/* The outcome of one of our messages: kept when no handler takes it. */
static bool s_is_outcome(const mr_event_t *ev)
{
    return ev->type == MR_EVENT_ACK ||
           (ev->type == MR_EVENT_ERROR && !s_transient(ev->code) && ev->message_id[0] != '\0');
}

/* Appends ev, of tag and state-file row, to the outcomes kept; -ENOMEM. */
static int s_held_push(mr_client_t *c, const mr_event_t *ev, uint64_t tag, int64_t row)
{
    if (c->n_held == c->cap_held) {
        size_t cap = c->cap_held ? c->cap_held * 2 : 16;
        s_held_t *h = realloc(c->held, cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        c->held = h;
        c->cap_held = cap;
    }
    s_held_t *k = &c->held[c->n_held++];
    k->type = ev->type;
    k->tag = tag;
    k->row = row;
    snprintf(k->message_id, sizeof k->message_id, "%s", ev->message_id);
    k->seq = ev->seq;
    k->duplicate = ev->duplicate;
    k->code = ev->code;
    snprintf(k->reason, sizeof k->reason, "%s", ev->reason ? ev->reason : "");
    return 0;
}

/* Keeps the outcome ev (of the outbox entry of tag, 0: none) for the next
 * poll with a handler: with a state directory, also on disk, in the
 * transaction that deletes the outbox row of remove_id (NULL: none), so
 * that a crash before the application has it loses neither (a refusal
 * the library itself made, TOO_LARGE, is on disk nowhere else).  Without
 * memory for it, or past S_HELD_MAX, it is not kept (the row is deleted
 * all the same): an application that never polls with a handler has said
 * it does not listen.  always: kept past S_HELD_MAX (the library's own
 * refusal of a message it takes out of the outbox: there is nothing else
 * to tell of it).  If the disk fails, it is kept in memory, and the row
 * stays, resent at the next start. */
static void s_hold(mr_client_t *c, const mr_event_t *ev, uint64_t tag, bool always,
                   const char *remove_id)
{
    if ((c->n_held >= S_HELD_MAX && !always) || s_held_push(c, ev, tag, 0) < 0) {
        if (c->persistent && remove_id != NULL)
            (void)cstore_outbox_remove(c->cs, remove_id);
        return;
    }
    cstore_outcome_t oc = {.type = ev->type, .message_id = ev->message_id, .seq = ev->seq,
                           .duplicate = ev->duplicate, .code = ev->code,
                           .reason = ev->reason ? ev->reason : ""};
    int64_t row = cstore_outcome_keep(c->cs, &oc, remove_id);
    c->held[c->n_held - 1].row = row > 0 ? row : 0;
}

static mr_event_t s_held_event(const s_held_t *k)
{
    return (mr_event_t){.type = k->type,
                        .message_id = k->message_id,
                        .seq = k->seq,
                        .duplicate = k->duplicate,
                        .code = k->code,
                        .code_name = k->code != 0 ? mr_error_name(k->code) : NULL,
                        .reason = k->type == MR_EVENT_ERROR ? k->reason : NULL};
}

/* Whether the synchronous send waiting is for the outbox entry of tag. */
static bool s_wait_for(const mr_client_t *c, uint64_t tag)
{
    return c->wait != NULL && !c->wait->done && tag != 0 && tag == c->wait->tag;
}

/* Takes ev as the answer of the synchronous send waiting, if it settled
 * that send's outbox entry (tag; 0: ev settled none). */
static bool s_wait_take(mr_client_t *c, const mr_event_t *ev, uint64_t tag)
{
    s_wait_t *w = c->wait;
    if (!s_wait_for(c, tag))
        return false;
    w->done = true;
    w->res->seq = ev->seq;
    w->res->duplicate = ev->duplicate;
    w->res->code = ev->type == MR_EVENT_ACK ? 0 : ev->code;
    snprintf(w->res->reason, sizeof w->res->reason, "%s", ev->reason ? ev->reason : "");
    w->rc = ev->type == MR_EVENT_ACK ? 0 : -EPROTO;
    return true;
}

/* Hands ev, which settled the outbox entry of tag (0: none), to the
 * synchronous send waiting for that entry, else to h, else keeps it if it
 * is an outcome. */
static void s_emit(mr_client_t *c, mr_handler_t h, void *arg, const mr_event_t *ev, uint64_t tag)
{
    if (s_wait_take(c, ev, tag))
        return;
    if (h != NULL)
        h(c, ev, arg);
    else if (s_is_outcome(ev))
        s_hold(c, ev, tag, false, NULL);
}

/* Takes o out of the outbox, settled by ev (its Ack or final refusal, ev's
 * strings not o's body), and hands ev on as s_emit does; an outcome kept
 * goes to disk in the transaction that deletes o's row (s_hold).  always:
 * kept past S_HELD_MAX.  The caller frees o and its body. */
static void s_settle(mr_client_t *c, s_out_t *o, const mr_event_t *ev, mr_handler_t h, void *arg,
                     bool always)
{
    bool keep = h == NULL && !s_wait_for(c, o->tag);
    s_outbox_unlink(c, o, keep);
    if (keep)
        s_hold(c, ev, o->tag, always, o->id);
    else
        s_emit(c, h, arg, ev, o->tag);
}

/* The frame that would carry body is over the broker's limit (once known). */
static bool s_too_large(const mr_client_t *c, size_t body_len, uint64_t tag)
{
    return c->max_frame_bytes != 0 && mr_envelope_frame_size(body_len, tag) > c->max_frame_bytes;
}

/* Takes o out of the outbox as the broker would refuse it, TOO_LARGE, and
 * keeps the refusal for the application: sent, it would be refused without
 * its id (or cut the connection), and stay in the outbox for ever. */
static void s_refuse_too_large(mr_client_t *c, s_out_t *o)
{
    char reason[160];
    snprintf(reason, sizeof reason,
             "a frame of %zu bytes exceeds the broker's limit of %u (not sent)",
             mr_envelope_frame_size(o->len, o->tag), c->max_frame_bytes);
    mr_event_t ev = {.type = MR_EVENT_ERROR, .message_id = o->id, .code = MR_E_TOO_LARGE,
                     .code_name = mr_error_name(MR_E_TOO_LARGE), .reason = reason};
    /* Its copies sent on earlier connections (a broker whose limit a
     * reload lowered) may have been stored. */
    refused_put(c->refusals, o->tag, MR_E_TOO_LARGE, o->sends);
    s_settle(c, o, &ev, NULL, NULL, true);
    free(o->body);
    free(o);
}

/*
 * Sends what is due: with all (a new session), the whole outbox again;
 * otherwise, what was never sent on this connection (in order, until the
 * socket's queue is full) and, a few times per Ack time-out, what waited
 * longer than the time-out for its Ack.
 */
static void s_outbox_send_due(mr_client_t *c, bool all)
{
    if (!c->welcomed)
        return;
    int64_t now = mr_mono_ms();
    if (all) {
        for (s_out_t *o = c->out_head; o; o = o->next)
            o->sent_ms = 0;
        c->out_unsent = c->out_head;
    } else if (now - c->last_resend_scan_ms >= (int64_t)c->ack_timeout_ms / 4) {
        c->last_resend_scan_ms = now;
        for (s_out_t *o = c->out_head; o && o != c->out_unsent; o = o->next) {
            if (now - o->sent_ms < (int64_t)c->ack_timeout_ms)
                continue;
            if (s_send_entry(c, o, now) != 0)
                return;
        }
    }
    for (s_out_t *o = c->out_unsent, *next; o; o = next) {
        next = o->next;
        if (s_too_large(c, o->len, o->tag)) {
            s_refuse_too_large(c, o); /* queued before the limit was known */
            continue;
        }
        if (s_send_entry(c, o, now) != 0)
            break;
        c->out_unsent = next;
    }
}

/* An entry read back from the outbox may have been sent by the process
 * that wrote it, and the broker answers a copy on the facility's session of
 * the moment (this one's, if its store commits that copy after our Hello):
 * counted as sent once, so that an Ack after this process's own send is
 * known to leave a late one to come (acked, refusals), and with the tag
 * that process gave it, which that answer carries (a row without one, of
 * an earlier version, gets a new one). */
static int s_load_outbox(void *arg, const char *id, const void *body, size_t len, uint64_t tag)
{
    mr_client_t *c = arg;
    int rc = s_outbox_push(c, id, body, len, false, tag);
    if (rc == 0)
        c->out_tail->sends = 1;
    return rc;
}

/* An outcome a process on this state directory kept and did not hand over
 * (it ended first): kept again, for the first poll with a handler. */
static int s_load_outcome(void *arg, int64_t row, const cstore_outcome_t *oc)
{
    mr_client_t *c = arg;
    mr_event_t ev = {.type = (mr_event_type_t)oc->type, .message_id = oc->message_id,
                     .seq = oc->seq, .duplicate = oc->duplicate, .code = oc->code,
                     .reason = oc->reason};
    return s_held_push(c, &ev, 0, row);
}

/* An outbox row cstore found unusable: told to the first poll with a
 * handler as an ERROR event, INVALID (it is never sent), and counted until
 * the table's own count is read (mr_client_new).  Moved to outbox_damaged,
 * it is never found again: the notice is kept on disk (s_hold), so that a
 * process ending before it polls with a handler does not lose it.  Left in the
 * outbox (the move failed), the row itself is found, and told, again at the
 * next start: the notice is kept in memory only, or every start would add
 * one more on disk, each handed over at the first poll with a handler. */
static void s_load_damaged(void *arg, int64_t row, const char *id, const char *why, bool moved)
{
    mr_client_t *c = arg;
    char reason[200];
    (void)snprintf(reason, sizeof reason, "outbox row %lld holds %s: not sent, %s",
                   (long long)row, why,
                   moved ? "kept in the table outbox_damaged"
                         : "left in the outbox (it could not be moved; tried again next start)");
    mr_event_t ev = {.type = MR_EVENT_ERROR, .message_id = id, .code = MR_E_INVALID,
                     .code_name = mr_error_name(MR_E_INVALID), .reason = reason};
    if (moved)
        s_hold(c, &ev, 0, true, NULL);
    else /* -ENOMEM: not told at this start; the row, still there, is at the next */
        (void)s_held_push(c, &ev, 0, 0);
    c->outbox_damaged++;
}

/* ---- life ------------------------------------------------------------------- */

static char *s_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int s_setint(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

/* Whether key is a CURVE key in Z85 text: 40 characters.  Read as
 * ZeroMQ reads it, 40 bytes whatever its length, a shorter string would
 * be read past its end. */
static bool s_z85_key(const char *key)
{
    return key != NULL && strnlen(key, 41) == 40;
}

mr_client_t *mr_client_new(const mr_client_opts_t *opts)
{
    if (opts == NULL || opts->endpoint == NULL || opts->facility == NULL ||
        strlen(opts->facility) == 0 || strlen(opts->facility) > MR_FACILITY_ID_MAX)
        return NULL;
    mr_client_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->endpoint = s_dup(opts->endpoint);
    c->facility = s_dup(opts->facility);
    c->client_name = s_dup(opts->client_name ? opts->client_name : "libmedroute/" MR_CLIENT_VERSION);
    c->max_inflight = opts->max_inflight;
    c->ack_timeout_ms = opts->ack_timeout_ms ? opts->ack_timeout_ms : 10000;
    c->hb_interval_ms = 5000;
    c->hb_timeout_ms = 15000;
    uint64_t r[2];
    if (getrandom(r, sizeof r, 0) != sizeof r) {
        r[0] = (uint64_t)mr_now_ms() ^ (uint64_t)(uintptr_t)c;
        r[1] = r[0] * 0x9e3779b97f4a7c15u; /* another value all the same */
    }
    c->id_salt = r[0];
    c->last_tag = r[1];
    if (c->endpoint == NULL || c->facility == NULL || c->client_name == NULL)
        goto fail;
    c->persistent = opts->state_dir != NULL;
    c->cs = cstore_open(opts->state_dir, c->facility);
    c->out_ids = strmap_new();
    c->acked = acked_new();
    c->refusals = refused_new();
    if (c->cs == NULL || c->out_ids == NULL || c->acked == NULL || c->refusals == NULL)
        goto fail;
    if (c->persistent) {
        if (cstore_seen_prune(c->cs, S_SEEN_KEEP_MS) < 0 ||
            cstore_outcome_each(c->cs, s_load_outcome, c) < 0 ||
            cstore_outbox_each(c->cs, s_load_outbox, s_load_damaged, c) < 0)
            goto fail;
        /* Those set aside at an earlier start too: until someone deals with
         * them, every start says so (the events came once). */
        int64_t kept = cstore_outbox_damaged_count(c->cs);
        if (kept > (int64_t)c->outbox_damaged)
            c->outbox_damaged = (size_t)kept;
    }
    c->zctx = zmq_ctx_new();
    if (c->zctx == NULL)
        goto fail;
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (c->sock == NULL)
        goto fail;
    if (opts->server_public_key != NULL &&
        (!s_z85_key(opts->server_public_key) || !s_z85_key(opts->public_key) ||
         !s_z85_key(opts->secret_key) ||
         zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, opts->server_public_key, 40) != 0 ||
         zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, opts->public_key, 40) != 0 ||
         zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, opts->secret_key, 40) != 0))
        goto fail;
    if (s_setint(c->sock, ZMQ_LINGER, 1000) || s_setint(c->sock, ZMQ_RECONNECT_IVL, 100) ||
        s_setint(c->sock, ZMQ_RECONNECT_IVL_MAX, 2000) ||
        s_setint(c->sock, ZMQ_HEARTBEAT_IVL, 2000) ||
        s_setint(c->sock, ZMQ_HEARTBEAT_TIMEOUT, 6000) || s_setint(c->sock, ZMQ_SNDHWM, 100000) ||
        s_setint(c->sock, ZMQ_RCVHWM, 100000))
        goto fail;
    char mon_addr[64];
    snprintf(mon_addr, sizeof mon_addr, "inproc://mr-monitor-%p", (void *)c);
    if (zmq_socket_monitor(c->sock, mon_addr, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
        goto fail;
    c->mon = zmq_socket(c->zctx, ZMQ_PAIR);
    if (c->mon == NULL || zmq_connect(c->mon, mon_addr) != 0)
        goto fail;
    if (zmq_connect(c->sock, c->endpoint) != 0)
        goto fail;
    c->last_prune_ms = mr_mono_ms();
    return c;
fail:
    mr_client_destroy(&c);
    return NULL;
}

void mr_client_destroy(mr_client_t **self_p)
{
    mr_client_t *c = *self_p;
    if (c == NULL)
        return;
    if (c->sock) {
        s_flush_acks(c); /* best effort: unsent, they are delivered again */
        zmq_socket_monitor(c->sock, NULL, 0);
    }
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    for (size_t i = 0; i < c->n_deferred; i++)
        zmq_msg_close(&c->deferred[i]);
    free(c->deferred);
    free(c->deferred_seq);
    free(c->held);
    while (c->out_head) {
        s_out_t *o = c->out_head;
        c->out_head = o->next;
        free(o->body);
        free(o);
    }
    cstore_close(&c->cs);
    strmap_destroy(&c->out_ids);
    acked_destroy(&c->acked);
    refused_destroy(&c->refusals);
    free(c->out_slot);
    free(c->out_free);
    free(c->endpoint);
    free(c->facility);
    free(c->client_name);
    free(c);
    *self_p = NULL;
}

size_t mr_client_unacked(const mr_client_t *self)
{
    return self->n_out;
}

size_t mr_client_deferred(const mr_client_t *self)
{
    return self->n_deferred;
}

bool mr_client_connected(const mr_client_t *self)
{
    return self->welcomed;
}

int mr_client_refused(const mr_client_t *self)
{
    return self->refused;
}

size_t mr_client_outbox_damaged(const mr_client_t *self)
{
    return self->outbox_damaged;
}

/* ---- submitting ----------------------------------------------------------- */

static void s_new_id(mr_client_t *c, char *out, size_t len)
{
    snprintf(out, len, "%llx-%016llx-%llu", (unsigned long long)mr_now_ms(),
             (unsigned long long)c->id_salt, (unsigned long long)++c->id_counter);
}

/* mr_client_submit_packed, telling the tag of the outbox entry that carries
 * the message (the new one, or the one queued with the same content). */
static int s_submit_packed(mr_client_t *self, const char *message_id, const void *envelope,
                           size_t len, uint64_t *tag)
{
    /* An id that is not UTF-8 is refused by the broker with an Error that
     * cannot name it, so the outbox would send it again at every connect. */
    size_t id_len = message_id ? strlen(message_id) : 0;
    if (id_len == 0 || id_len > MR_MESSAGE_ID_MAX || !mr_utf8_valid(message_id, id_len))
        return -EINVAL;
    /* The envelope must carry that id, readable off the wire: the broker
     * answers (Ack or refusal) naming the id it reads there, and an answer
     * that cannot name the queued one would leave it in the outbox, sent
     * again for ever.  (Deeper faults, a string that is not UTF-8 or a
     * nested field that does not decode, the broker refuses naming it.) */
    const uint8_t *inner;
    size_t inner_len;
    if (mr_envelope_id(envelope, len, &inner, &inner_len) != 0 || inner_len != id_len ||
        memcmp(inner, message_id, id_len) != 0)
        return -EINVAL;
    if (s_too_large(self, len, s_next_tag(self)))
        return -EMSGSIZE;
    /* Already waiting for its Ack (e.g. resubmitted after a restart): the
     * outbox sends it, so the same message again is idempotent.  Other
     * content under that id is refused here: the queued version is what
     * goes out, and dropping the new one silently would let the caller
     * believe it was sent.  "The same" is the broker's rule (protocol.md
     * 4.3): equal but for created_at_ms, which a retry stamps anew. */
    const s_out_t *queued = s_outbox_find(self, message_id);
    if (queued != NULL) {
        *tag = queued->tag;
        return mr_envelope_same(queued->body, queued->len, envelope, len) ? 0 : -EEXIST;
    }
    int rc = s_outbox_push(self, message_id, envelope, len, self->persistent, 0);
    if (rc < 0)
        return rc;
    /* Sent at once unless older ones still wait for room in the socket's
     * queue: the outbox goes out in order. */
    s_out_t *o = self->out_tail;
    o->not_seq = acked_other_seq(self->acked, message_id, envelope, len);
    *tag = o->tag;
    if (self->welcomed && self->out_unsent == o && s_send_entry(self, o, mr_mono_ms()) == 0)
        self->out_unsent = NULL;
    return 0;
}

int mr_client_submit_packed(mr_client_t *self, const char *message_id, const void *envelope,
                            size_t len)
{
    uint64_t tag;
    return s_submit_packed(self, message_id, envelope, len, &tag);
}

/* Sets key to value (a new reference, taken) unless the object gives the
 * field, as key or as its lowerCamelCase spelling camel (pbjson takes both),
 * with anything but null ("not set").  A null under either is dropped first:
 * pbjson refuses a field given under both spellings. */
static int s_default(json_t *obj, const char *key, const char *camel, json_t *value)
{
    const json_t *snake_v = json_object_get(obj, key), *camel_v = json_object_get(obj, camel);
    if ((snake_v != NULL && !json_is_null(snake_v)) || (camel_v != NULL && !json_is_null(camel_v))) {
        json_decref(value);
        return 0;
    }
    (void)json_object_del(obj, camel); /* -1 when absent */
    return json_object_set_new(obj, key, value);
}

/* mr_client_submit_json, telling the tag of the outbox entry (s_submit_packed). */
static int s_submit_json(mr_client_t *self, const char *json, char *id_out, char *err,
                         size_t errlen, uint64_t *tag)
{
    json_error_t jerr;
    ProtobufCMessage *msg = NULL;
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = -EINVAL;
    /* A key given twice is refused, as pbjson refuses a field under both its
     * spellings: jansson would keep the last value without a word. */
    json_t *obj = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (obj == NULL) {
        snprintf(err, errlen, "JSON line %d: %s", jerr.line, jerr.text);
        goto out;
    }
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "the envelope must be a JSON object");
        goto out;
    }
    char id[MR_MESSAGE_ID_MAX + 1];
    s_new_id(self, id, sizeof id);
    if (s_default(obj, "source", "source", json_string(self->facility)) < 0 ||
        s_default(obj, "message_id", "messageId", json_string(id)) < 0 ||
        s_default(obj, "created_at_ms", "createdAtMs", json_integer(mr_now_ms())) < 0) {
        rc = -ENOMEM;
        goto out;
    }
    rc = pbjson_to_message(&medroute__v1__envelope__descriptor, obj, &msg, err, errlen);
    if (rc < 0)
        goto out;
    const mr_envelope_t *env = (const mr_envelope_t *)msg;
    if (strlen(env->message_id) == 0 || strlen(env->message_id) > MR_MESSAGE_ID_MAX) {
        snprintf(err, errlen, "message_id must be 1..%d characters", MR_MESSAGE_ID_MAX);
        rc = -EINVAL;
        goto out;
    }
    rc = mr_pack(msg, &body, &len);
    if (rc < 0)
        goto out;
    rc = s_submit_packed(self, env->message_id, body, len, tag);
    if ((rc == 0 || rc == -EEXIST) && id_out != NULL)
        snprintf(id_out, MR_MESSAGE_ID_MAX + 1, "%s", env->message_id);
    if (rc == -EEXIST)
        snprintf(err, errlen,
                 "message id %s is already queued with other content, not yet acknowledged; "
                 "the queued version is the one sent",
                 env->message_id);
    else if (rc == -EMSGSIZE)
        snprintf(err, errlen, "a frame of %zu bytes exceeds the broker's limit of %u",
                 mr_envelope_frame_size(len, s_next_tag(self)), self->max_frame_bytes);
    else if (rc < 0)
        snprintf(err, errlen, "could not queue the message (%s)", strerror(-rc));
out:
    free(body);
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    json_decref(obj);
    return rc;
}

int mr_client_submit_json(mr_client_t *self, const char *json, char *id_out, char *err,
                          size_t errlen)
{
    uint64_t tag;
    return s_submit_json(self, json, id_out, err, errlen, &tag);
}

/* ---- frames in -------------------------------------------------------------- */

static int s_on_delivery(mr_client_t *c, const Medroute__V1__Delivery *d, mr_handler_t h,
                         void *arg)
{
    const mr_envelope_t *env = d->envelope;
    if (env == NULL || env->source == NULL || env->message_id == NULL) {
        s_send_delivery_ack(c, d->seq); /* nothing to hand over; do not loop on it */
        return 0;
    }
    seen_state_t seen = cstore_seen_get(c->cs, env->source, env->message_id);
    if (seen == SEEN_UNKNOWN)
        return 0; /* it may have been handled: leave it unacknowledged, try again later */
    if (seen == SEEN_DONE) {
        s_send_delivery_ack(c, d->seq);
        return 0;
    }
    /* On disk, the mark says after a crash that this handler may have run.
     * In memory it would not outlive the process: not written. */
    if (c->persistent &&
        cstore_seen_set(c->cs, env->source, env->message_id, SEEN_IN_HANDLER) < 0)
        return 0; /* cannot promise once-only: leave it unacknowledged */
    const char *kind = mr_kind_name((int)env->kind);
    const char *prio = mr_priority_name((int)env->priority);
    /* Stored longer ago than the seen-set keeps a key, it may have been
     * handled and its key forgotten (its DeliveryAck lost, then a ttl above
     * that or an operator's retry of an old dead letter): the seen-set
     * cannot say it was not. */
    bool older_than_seen =
        d->stored_at_ms > 0 && mr_now_ms() - d->stored_at_ms > S_SEEN_KEEP_MS;
    mr_delivery_t dv = {
        .seq = d->seq,
        .message_id = env->message_id,
        .source = env->source,
        .destination = env->destination,
        .kind = kind ? kind : "unknown",
        .priority = prio ? prio : "routine",
        .correlation_id = env->correlation_id,
        /* With a seen-set on disk, it knows whether a handler ran; in
         * memory only, the broker's "sent before" is the best hint. */
        .redelivered = seen == SEEN_IN_HANDLER || older_than_seen ||
                       (!c->persistent && d->redelivered),
        .attempt = d->attempt,
        .envelope = &env->base,
    };
    mr_event_t ev = {.type = MR_EVENT_DELIVERY, .message_id = env->message_id, .seq = d->seq,
                     .delivery = &dv};
    int rc = h(c, &ev, arg);
    if (rc != 0) {
        /* Refused for now: the mark this hand-off set goes, so the next one
         * is not called a redelivery.  A mark found IN_HANDLER stays: the
         * run that died inside the handler may have applied the message, and
         * every later hand-off must still say so. */
        if (c->persistent && seen == SEEN_NONE)
            (void)cstore_seen_clear(c->cs, env->source, env->message_id);
        return 1;
    }
    if (cstore_seen_set(c->cs, env->source, env->message_id, SEEN_DONE) == 0)
        s_send_delivery_ack(c, d->seq);
    return 1;
}

/* Holds the frame of delivery seq for the next poll with a handler; one
 * the broker sent again meanwhile takes the place of the copy held (its
 * attempt and redelivered are the latest).  On -ENOMEM it is dropped
 * unacknowledged: the broker sends it again. */
static int s_defer(mr_client_t *c, const void *data, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < c->n_deferred; i++) {
        if (c->deferred_seq[i] != seq)
            continue;
        zmq_msg_t m;
        if (zmq_msg_init_size(&m, len) != 0)
            return -ENOMEM; /* the older copy stays */
        memcpy(zmq_msg_data(&m), data, len);
        zmq_msg_close(&c->deferred[i]);
        c->deferred[i] = m;
        return 0;
    }
    if (c->n_deferred == c->cap_deferred) {
        size_t cap = c->cap_deferred ? c->cap_deferred * 2 : 16;
        zmq_msg_t *d = realloc(c->deferred, cap * sizeof *d);
        if (d == NULL)
            return -ENOMEM;
        c->deferred = d;
        uint64_t *s = realloc(c->deferred_seq, cap * sizeof *s);
        if (s == NULL)
            return -ENOMEM; /* the larger frame array is kept: cap_deferred unchanged */
        c->deferred_seq = s;
        c->cap_deferred = cap;
    }
    if (zmq_msg_init_size(&c->deferred[c->n_deferred], len) != 0)
        return -ENOMEM;
    memcpy(zmq_msg_data(&c->deferred[c->n_deferred]), data, len);
    c->deferred_seq[c->n_deferred] = seq;
    c->n_deferred++;
    return 0;
}

/*
 * One event per submitted message.  An Ack for a message no longer in the
 * outbox answers a resend that crossed the first Ack; so does one with
 * another entry's tag, and, without a tag, one whose seq is the entry's
 * not_seq: it answers the version of that id acknowledged before, with
 * other content, which the broker keeps (it refuses this one as CONFLICT).
 * A message acknowledged after several sends is remembered in acked for as
 * long as such late Acks may come.  But the first Ack of a submission
 * reported refused (refusals) is told, with the refusal's code: a copy
 * sent before that refusal was stored, and will be delivered.  The
 * events: 0 or 1.
 */
static int s_on_ack(mr_client_t *c, const Medroute__V1__Ack *a, mr_handler_t h, void *arg)
{
    if (a->message_id == NULL)
        return 0;
    s_out_t *o = s_outbox_find(c, a->message_id);
    if (o == NULL || !s_answers(o, a->submission_tag) ||
        (a->submission_tag == 0 && o->not_seq != 0 && a->seq == o->not_seq)) {
        int overturned = refused_answered(c->refusals, a->submission_tag, true);
        if (overturned == 0) {
            acked_answered(c->acked, a->message_id, a->seq);
            return 0;
        }
        mr_event_t ev = {.type = MR_EVENT_ACK, .message_id = a->message_id, .seq = a->seq,
                         .duplicate = a->duplicate, .code = overturned,
                         .code_name = mr_error_name(overturned)};
        s_emit(c, h, arg, &ev, 0); /* no submission waits for it: settled already */
        return 1;
    }
    /* Remembered before the handler runs: it may submit the id again. */
    if (o->sends > 1)
        (void)acked_put(c->acked, o->id, a->seq, o->body, o->len, o->sends - 1); /* takes body */
    else
        free(o->body);
    o->body = NULL;
    mr_event_t ev = {.type = MR_EVENT_ACK, .message_id = a->message_id, .seq = a->seq,
                     .duplicate = a->duplicate};
    s_settle(c, o, &ev, h, arg, false);
    free(o);
    return 1;
}

/*
 * Whether Error e answers our Hello with a refusal.  An Error does not say
 * which frame it answers, so this rests on what this library sends: its
 * Envelopes carry an id the broker can echo (checked at submit and when
 * the outbox is loaded), so their Errors name it; its DeliveryAcks hold no
 * seq 0 and at most S_ACKS_MAX seqs, so they draw no INVALID; Heartbeats
 * draw only NO_HELLO.  What remains of INVALID, FORBIDDEN and
 * UNKNOWN_SOURCE without a message id is the answer to a Hello, the
 * codes protocol.md 3.1 calls final, and only while one is unanswered.
 */
static bool s_hello_refusal(const mr_client_t *c, const Medroute__V1__Error *e)
{
    return c->hello_waiting && !c->welcomed && (e->message_id == NULL || e->message_id[0] == '\0') &&
           ((int)e->code == MR_E_UNKNOWN_SOURCE || (int)e->code == MR_E_FORBIDDEN ||
            (int)e->code == MR_E_INVALID);
}

/*
 * An Error: a session's (NO_HELLO), a Hello's refusal, or one about a
 * message.  A final refusal of one of our envelopes settles its entry
 * (s_answers).  One with a tag that settles none is a late answer to
 * a copy of a submission answered already (or to an earlier process's copy
 * of an entry this one sends again, and answers itself): not told again.
 * A dead-letter notice (a seq: EXPIRED) answers no submission: it is told,
 * and the entry of that id, if any (a copy of that message, or other
 * content under its id), draws its own answer.  The events: 0 or 1.
 */
static int s_on_error(mr_client_t *c, const Medroute__V1__Error *e, mr_handler_t h, void *arg)
{
    if ((int)e->code == MR_E_NO_HELLO) {
        c->welcomed = false;
        if (mr_mono_ms() - c->last_hello_ms > 1000)
            s_send_hello(c);
    }
    /* A refused Hello: this client cannot connect. */
    if (s_hello_refusal(c, e)) {
        c->refused = (int)e->code;
        c->hello_waiting = false;
    }
    bool answer = !s_transient(e->code) && e->message_id && e->message_id[0] && e->seq == 0;
    s_out_t *o = answer ? s_outbox_find(c, e->message_id) : NULL;
    if (o != NULL && !s_answers(o, e->submission_tag))
        o = NULL;
    if (answer && o == NULL && e->submission_tag != 0) {
        (void)refused_answered(c->refusals, e->submission_tag, false);
        return 0;
    }
    mr_event_t ev = {.type = MR_EVENT_ERROR,
                     .message_id = e->message_id ? e->message_id : "",
                     .seq = e->seq,
                     .code = e->code,
                     .code_name = mr_error_name(e->code),
                     .reason = e->reason ? e->reason : ""};
    if (o != NULL) {
        /* Its other copies may yet be stored (a refusal of the moment). */
        refused_put(c->refusals, o->tag, (int)e->code, o->sends > 0 ? o->sends - 1 : 0);
        s_settle(c, o, &ev, h, arg, false);
        free(o->body);
        free(o);
    } else if ((int)e->code != MR_E_NO_HELLO) {
        s_emit(c, h, arg, &ev, 0);
    }
    return 1;
}

static int s_on_frame(mr_client_t *c, const void *data, size_t len, mr_handler_t h, void *arg)
{
    mr_frame_t *f = medroute__v1__frame__unpack(NULL, len, data);
    if (f == NULL)
        return 0;
    int events = 0;
    bool deferred = false;
    uint64_t deferred_seq = 0;
    switch (f->body_case) {
    case MEDROUTE__V1__FRAME__BODY_WELCOME: {
        const Medroute__V1__Welcome *w = f->welcome;
        bool again = c->welcomed;
        c->welcomed = true;
        c->hello_waiting = false;
        c->refused = 0;
        if (w->heartbeat_interval_ms)
            c->hb_interval_ms = w->heartbeat_interval_ms;
        if (w->heartbeat_timeout_ms)
            c->hb_timeout_ms = w->heartbeat_timeout_ms;
        c->max_acks = w->max_acks_per_frame;
        c->max_frame_bytes = w->max_message_bytes;
        /* A second Welcome answers a Hello that crossed the first (several
         * queue up while the broker is away): the same session, its outbox
         * already sent, so one send and one event.  A session that really
         * ended clears welcomed first (disconnect, silence, NO_HELLO). */
        if (again)
            break;
        s_outbox_send_due(c, true);
        mr_event_t ev = {.type = MR_EVENT_CONNECTED, .message_id = "", .pending = w->pending};
        if (h)
            h(c, &ev, arg);
        events++;
        break;
    }
    case MEDROUTE__V1__FRAME__BODY_ACK:
        /* The frame's Ack and the ones it carries (Hello.max_acks_per_frame). */
        events += s_on_ack(c, f->ack, h, arg);
        for (size_t i = 0; i < f->ack->n_more; i++)
            events += s_on_ack(c, f->ack->more[i], h, arg);
        break;
    case MEDROUTE__V1__FRAME__BODY_ERROR:
        events += s_on_error(c, f->error, h, arg);
        break;
    case MEDROUTE__V1__FRAME__BODY_DELIVERY:
        if (h == NULL) {
            deferred = true; /* nobody to take it now: kept for the next poll */
            deferred_seq = f->delivery->seq;
        } else {
            events += s_on_delivery(c, f->delivery, h, arg);
        }
        break;
    default:
        break; /* heartbeats: last_rx_ms is enough */
    }
    medroute__v1__frame__free_unpacked(f, NULL);
    if (deferred)
        (void)s_defer(c, data, len, deferred_seq);
    return events;
}

static void s_on_monitor(mr_client_t *c)
{
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), sizeof event);
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            if (zmq_msg_recv(&addr, c->mon, 0) >= 0) { /* second part is already here */
            }
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_CONNECTED) {
            c->linked = true;
            s_send_hello(c);
        } else if (event == ZMQ_EVENT_DISCONNECTED) {
            c->linked = false;
            c->welcomed = false;
            c->hello_waiting = false; /* the next link says Hello again */
        }
    }
}

/* Hello retries, heartbeats (only if `reading`: a Heartbeat tells the
 * broker that we read, and earns a copy of what it sent unacknowledged),
 * the broker's silence, resends and the seen-set's pruning. */
static void s_timers(mr_client_t *c, bool reading)
{
    int64_t now = mr_mono_ms();
    /* Retried only over a connection: without one, ZeroMQ would queue every
     * retry and deliver them all when the broker is back (one per 2 s of an
     * outage, each answered with a Welcome). */
    if (!c->welcomed && c->linked && now - c->last_hello_ms > S_HELLO_RETRY_MS)
        s_send_hello(c);
    if (reading && c->welcomed && now - c->last_tx_ms >= (int64_t)c->hb_interval_ms) {
        Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
        hb.sent_at_ms = mr_now_ms();
        mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
        f.body_case = MEDROUTE__V1__FRAME__BODY_HEARTBEAT;
        f.heartbeat = &hb;
        (void)s_send_frame(c, &f);
    }
    if (c->welcomed && c->last_rx_ms && now - c->last_rx_ms > (int64_t)c->hb_timeout_ms) {
        c->welcomed = false; /* the broker is silent: say Hello until it answers */
        s_send_hello(c);
    }
    s_outbox_send_due(c, false);
    if (now - c->last_prune_ms > S_PRUNE_EVERY_MS) {
        c->last_prune_ms = now;
        (void)cstore_seen_prune(c->cs, S_SEEN_KEEP_MS);
    }
}

/*
 * Inside a pass over many frames whose handler is slow (a hospital system
 * over a slow link): the DeliveryAcks gathered so far and a heartbeat go
 * out every S_KEEP_ALIVE_MS, not only after the pass, or the broker would
 * end a live session for silence and send the whole window again.
 */
static void s_keep_alive(mr_client_t *c, int64_t *flushed, bool reading)
{
    int64_t now = mr_mono_ms();
    if (now - *flushed < S_KEEP_ALIVE_MS)
        return;
    *flushed = now;
    s_flush_acks(c);
    s_timers(c, reading);
}

/* Hands the outcomes kept while nobody could take them to handler (or to
 * the synchronous send whose they are), in order, and forgets each on
 * disk once handed (a crash inside handler hands that one again at the
 * next start, with those after it, not those handed before it); the
 * count. */
static int s_emit_held(mr_client_t *self, mr_handler_t handler, void *arg)
{
    if (handler == NULL || self->n_held == 0)
        return 0;
    s_held_t *held = self->held;
    size_t n = self->n_held;
    self->held = NULL;
    self->n_held = self->cap_held = 0;
    for (size_t i = 0; i < n; i++) {
        mr_event_t ev = s_held_event(&held[i]);
        s_emit(self, handler, arg, &ev, held[i].tag);
        if (held[i].row > 0) /* else handed again: harmless */
            (void)cstore_outcome_forget(self->cs, held[i].row, held[i].row);
    }
    free(held);
    return (int)n;
}

/* Polls; with until_welcome, stops reading as soon as a Welcome is in, so
 * that what follows it stays queued for the application's own poll, and
 * sends no Heartbeat: it would show the broker a reader, and earn a copy
 * of the deliveries behind the Welcome at their time-out (protocol.md
 * 6.1) while nobody reads the first. */
static int s_poll(mr_client_t *self, int timeout_ms, mr_handler_t handler, void *arg,
                  bool until_welcome)
{
    zmq_pollitem_t items[2] = {
        {.socket = self->sock, .events = ZMQ_POLLIN},
        {.socket = self->mon, .events = ZMQ_POLLIN},
    };
    int64_t wait = timeout_ms;
    if (wait > 100 || wait < 0)
        wait = 100; /* wake up for timers */
    /* A negative time-out waits until something is handled (zmq_poll's -1). */
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : mr_mono_ms() + timeout_ms;
    int events = s_emit_held(self, handler, arg);
    if (handler != NULL && self->n_deferred > 0) {
        /* First what arrived while nobody could take it, in order. */
        size_t n = self->n_deferred;
        zmq_msg_t *held = self->deferred;
        self->deferred = NULL;
        free(self->deferred_seq);
        self->deferred_seq = NULL;
        self->n_deferred = self->cap_deferred = 0;
        int64_t flushed = mr_mono_ms();
        for (size_t i = 0; i < n; i++) {
            events += s_on_frame(self, zmq_msg_data(&held[i]), zmq_msg_size(&held[i]), handler,
                                 arg);
            zmq_msg_close(&held[i]);
            s_keep_alive(self, &flushed, true);
        }
        free(held);
        s_flush_acks(self);
    }
    if (events > 0)
        return events;
    int64_t flushed = mr_mono_ms();
    for (;;) {
        int n = zmq_poll(items, 2, (long)wait);
        if (n < 0 && zmq_errno() != EINTR)
            return -zmq_errno();
        if (n < 0)
            return events ? events : -EINTR;
        if (items[1].revents & ZMQ_POLLIN)
            s_on_monitor(self);
        for (int i = 0; i < S_RECV_BUDGET && !(until_welcome && self->welcomed); i++) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, self->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                break;
            }
            /* Heard from now: not when a held frame is handed over later. */
            self->last_rx_ms = mr_mono_ms();
            events += s_on_frame(self, zmq_msg_data(&m), zmq_msg_size(&m), handler, arg);
            zmq_msg_close(&m);
            s_keep_alive(self, &flushed, !until_welcome);
        }
        s_flush_acks(self);
        s_timers(self, !until_welcome);
        /* Outcomes this pass made without a frame of their own (a message
         * over the limit a Welcome told), with the handler still at hand. */
        events += s_emit_held(self, handler, arg);
        if (events > 0 || mr_mono_ms() >= deadline || (until_welcome && self->welcomed) ||
            (self->wait != NULL && self->wait->done))
            return events;
        /* Read again after the check: a thread descheduled in between may
         * find the deadline past, and zmq_poll takes -1 as "for ever". */
        int64_t left = deadline - mr_mono_ms();
        wait = left < 0 ? 0 : left < 100 ? left : 100;
    }
}

int mr_client_poll(mr_client_t *self, int timeout_ms, mr_handler_t handler, void *arg)
{
    return s_poll(self, timeout_ms, handler, arg, false);
}

int mr_client_wait_connected(mr_client_t *self, int timeout_ms)
{
    int64_t deadline = mr_mono_ms() + timeout_ms;
    while (!self->welcomed) {
        int64_t left = deadline - mr_mono_ms();
        if (self->refused)
            return -EACCES;
        if (left <= 0)
            return -ETIMEDOUT;
        int rc = s_poll(self, (int)left, NULL, NULL, true);
        if (rc < 0 && rc != -EINTR)
            return rc;
    }
    return 0;
}

/* ---- synchronous send -------------------------------------------------------- */

/* Takes the kept outcome of w's outbox entry, if any, as w's result (an
 * outcome of an earlier submission of the same id stays kept). */
static bool s_take_held(mr_client_t *c, s_wait_t *w)
{
    for (size_t i = 0; i < c->n_held; i++) {
        if (c->held[i].tag != w->tag)
            continue;
        mr_event_t ev = s_held_event(&c->held[i]);
        (void)s_wait_take(c, &ev, c->held[i].tag);
        if (c->held[i].row > 0)
            (void)cstore_outcome_forget(c->cs, c->held[i].row, c->held[i].row);
        memmove(c->held + i, c->held + i + 1, (c->n_held - i - 1) * sizeof *c->held);
        c->n_held--;
        return w->done;
    }
    return false;
}

int mr_client_send_json(mr_client_t *self, const char *json, mr_result_t *res, int timeout_ms,
                        mr_handler_t handler, void *arg)
{
    memset(res, 0, sizeof *res);
    s_wait_t w = {.res = res};
    int rc = s_submit_json(self, json, res->message_id, res->reason, sizeof res->reason, &w.tag);
    if (rc == -EMSGSIZE) {
        res->code = MR_E_TOO_LARGE; /* what the broker would answer */
        return -EPROTO;
    }
    if (rc < 0)
        return rc;
    int64_t deadline = mr_mono_ms() + timeout_ms;
    /* Its outcome goes to w (s_emit); the others to handler, or, without
     * one, they and the deliveries wait for the caller's next poll. */
    self->wait = &w;
    /* Its outcome may have been kept while no handler ran (e.g. refused as
     * too large at the Welcome that told the limit). */
    while (!w.done && !s_take_held(self, &w)) {
        int64_t left = deadline - mr_mono_ms();
        if (self->refused) {
            res->code = self->refused;
            snprintf(res->reason, sizeof res->reason, "the broker refused this facility's Hello");
            w.rc = -EACCES;
            break;
        }
        if (left <= 0) {
            w.rc = -ETIMEDOUT;
            break;
        }
        rc = s_poll(self, (int)left, handler, arg, false);
        if (rc < 0 && rc != -EINTR) {
            w.rc = rc;
            break;
        }
    }
    self->wait = NULL;
    return w.rc;
}

char *mr_delivery_json(const mr_delivery_t *delivery)
{
    json_t *j = pbjson_from_message(delivery->envelope);
    if (j == NULL)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}
