/*
 * router.c - delivery queues: store -> memory window -> facility -> ack.
 *
 * Owns the queue half of each peer_t and the qmsg_t it holds.
 *
 * Invariants (per destination peer)
 *   1. ready holds its express messages first (invariant 6), then its
 *      routine ones in seq order (an ended session's in-flight ones ahead
 *      of the rest); inflight is in the order sent.  Every seq in them is
 *      pending in the store; every routine seq in them is <= cursor.
 *   2. complete => the store holds no pending message for the peer with
 *      seq > cursor, so a fresh commit can be appended to ready directly.
 *   3. At most one STORE_LOAD is in flight (loading).  Store completions run
 *      in execution order, so a commit reported while loading was executed
 *      before the load and is in its result: it is not appended.  An
 *      express-only load (on each connect: critical and stat messages first)
 *      may not hold it, so such a commit makes the queue incomplete.  A
 *      load's answer is applied only to the memory it was asked for
 *      (memory_gen): one a reload forgot meanwhile, the facility removed
 *      and added back, had another cursor.
 *   4. inflight.n <= max_inflight (a window), but for messages whose ack
 *      failed to commit, and for those a repeated Hello with a smaller
 *      window left in flight (invariant 7).  A DeliveryAck moves its
 *      message from inflight (or from ready, where an ended session's
 *      messages wait) to acked and fills the freed slot at once, without
 *      waiting for the commit; the message is freed when the ack's commit
 *      comes back (or goes back to inflight if the commit failed).  Both
 *      lists are searched from their head, where acks and commits normally
 *      land, in order.  An ack of a message never sent (never loaded, or
 *      in ready with no send) moves nothing and does not count: the store
 *      leaves it pending (req->unsent).
 *   5. Memory per destination is bounded: ready <= S_PAGE + S_READY_MAX.
 *   6. Express messages sit at the head of ready, ahead of routine ones;
 *      those loaded ahead of the cursor are skipped when a page reaches them.
 *   7. A repeated Hello on a session's own connection puts each in-flight
 *      message back to be sent again at most once in that session
 *      (hello_session == peer_t.session marks one it did): a client that
 *      says Hello over and over, reading nothing, makes the broker queue at
 *      most one extra copy of each delivery toward that connection, not one
 *      per Hello (up to max_inflight of max_message_bytes each, per Hello).
 *      One it leaves in flight is sent again by the redelivery time-out
 *      (router_cron, invariant 8), as one whose receiver never answers; a
 *      new session (a new connection) takes every one back
 *      (router_on_disconnect).
 *   8. A delivery past its redelivery time-out is sent again on the same
 *      connection (router_cron) only if its receiver has shown since its
 *      last send that it reads: a DeliveryAck or a Heartbeat (read_ms).
 *      A copy on a live connection is not lost in transit (one connection
 *      carries it in order; the library's next connection has a routing id
 *      of its own, so a new Hello and session, which take every one back),
 *      so another copy helps only a receiver that read the last one and
 *      left it unacknowledged (its handler refused it).  Without that sign,
 *      one copy more at most, if it was heard from at all (resent_unread):
 *      an Envelope is sent by an application that may never read (one that
 *      only submits), and by a busy one that does.  A session that sends
 *      and never reads thus has each delivery queued toward it twice, not
 *      once per time-out until the socket's high-water mark.
 *   9. A DeliveryAck whose commit fails (a store error) leaves its message
 *      pending; the message is sent again for an ack the store can take.
 *      Read on the connection the facility still has, it shows that the
 *      receiver reads (invariant 8): the message goes back in flight, due
 *      at the next redelivery pass whatever its back-off (qmsg_t.due), at
 *      most one copy per pass while the store keeps failing.  Otherwise
 *      (a late ack, or its session ended since) it waits in ready to be
 *      sent on the next connection, as the others of its session.
 *
 *   store --LOAD page--> ready --send--> inflight --DeliveryAck--> acked --commit--> freed
 *                          ^                 |                         |
 *                          +-- disconnect ---+------- ack failed ------+
 *   (disconnect: a session's end, or a repeated Hello for the messages no
 *   repeated Hello of the session put back before, invariant 7)
 */
#include "router.h"

#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "handlers.h"
#include "pending.h"
#include "session.h"

#define S_PAGE 1024       /* messages per STORE_LOAD */
/* Fresh commits kept in memory for a connected destination whose queue is
 * complete (~5 MB at 600-byte messages): while delivery keeps up, messages
 * go from the commit to the socket without being read back from the store. */
#define S_READY_MAX 8192
/* The seqs of one DeliveryAck frame with the store.  Its unknown ones are
 * answered together, in one Error, when the store has answered the last of
 * them (it answers in submission order), not in an Error each: a frame of
 * 1,024 seqs it was never sent would draw 1,024 frames.  Freed then. */
typedef struct {
    server_t *s;
    int peer;
    bool late;                  /* not answered: see s_ack_frame_end */
    uint8_t rid[MR_RID_MAX];    /* the connection that sent it */
    size_t rid_len;
    size_t left;                /* its seqs the store has yet to answer */
    uint64_t first_unknown;     /* the first of them not pending for the facility */
    size_t n_unknown;
} s_ack_frame_t;

/* ---- lists ------------------------------------------------------------------ */

static void s_push(qlist_t *l, qmsg_t *m)
{
    m->next = NULL;
    if (l->tail)
        l->tail->next = m;
    else
        l->head = m;
    l->tail = m;
    l->n++;
}

/* Puts m into ready where invariant 1 has it: an express one after the
 * express ones waiting (ahead of every routine one), a routine one in seq
 * order among the routine ones. */
static void s_requeue(qlist_t *l, qmsg_t *m)
{
    qmsg_t **pp = &l->head;
    while (*pp && ((*pp)->express || (!m->express && (*pp)->seq < m->seq)))
        pp = &(*pp)->next;
    m->next = *pp;
    *pp = m;
    if (m->next == NULL)
        l->tail = m;
    l->n++;
}

static qmsg_t *s_pop(qlist_t *l)
{
    qmsg_t *m = l->head;
    if (m == NULL)
        return NULL;
    l->head = m->next;
    if (l->head == NULL)
        l->tail = NULL;
    l->n--;
    m->next = NULL;
    return m;
}

static qmsg_t *s_remove(qlist_t *l, uint64_t seq)
{
    qmsg_t *prev = NULL;
    for (qmsg_t *m = l->head; m; prev = m, m = m->next) {
        if (m->seq != seq)
            continue;
        if (prev)
            prev->next = m->next;
        else
            l->head = m->next;
        if (l->tail == m)
            l->tail = prev;
        l->n--;
        m->next = NULL;
        return m;
    }
    return NULL;
}

static qmsg_t *s_find(qlist_t *l, uint64_t seq)
{
    for (qmsg_t *m = l->head; m; m = m->next)
        if (m->seq == seq)
            return m;
    return NULL;
}

static void s_insert_sorted(qlist_t *l, qmsg_t *m)
{
    if (l->head == NULL || l->tail->seq < m->seq) {
        s_push(l, m);
        return;
    }
    qmsg_t **pp = &l->head;
    while (*pp && (*pp)->seq < m->seq)
        pp = &(*pp)->next;
    m->next = *pp;
    *pp = m;
    l->n++;
}

static void s_free(qmsg_t *m)
{
    if (m == NULL)
        return;
    free(m->body);
    free(m);
}

static void s_clear(qlist_t *l)
{
    qmsg_t *m;
    while ((m = s_pop(l)) != NULL)
        s_free(m);
}

/* A queued message for seq, taking row's body when it can (row->body is
 * then NULL). */
static qmsg_t *s_qmsg(uint64_t seq, store_row_t *row)
{
    qmsg_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->seq = seq;
    m->body = row->body;
    m->len = row->body_len;
    m->stored_ms = row->stored_ms;
    m->expires_ms = row->expires_ms;
    row->body = NULL;
    return m;
}

/* Past its expiry at now_ms: the expiry scan will dead-letter it. */
static bool s_expired(const qmsg_t *m, int64_t now_ms)
{
    return m->expires_ms > 0 && m->expires_ms <= now_ms;
}

/* The time to judge expiry by before a send: the wall clock, or the running
 * scan's time if later (the clock stepped back since it was submitted), so
 * that no scan dead-letters a message sent while it ran. */
static int64_t s_expiry_now(const server_t *s, int64_t wall_ms)
{
    return wall_ms > s->expiring_now_ms ? wall_ms : s->expiring_now_ms;
}

/* ---- sending ------------------------------------------------------------------ */

/*
 * Sends one Delivery.  The stored Envelope bytes are placed in the frame as
 * they are (as field 2 of Delivery, carried through protobuf-c's unknown
 * fields), so a delivery costs no decode and no re-encode of the envelope.
 */
static int s_send(server_t *s, int peer, qmsg_t *m)
{
    peer_t *p = &s->peers[peer];
    /* The stored envelope framed as it is, copied once, into the message
     * ZeroMQ sends. */
    const mr_delivery_head_t d = {.seq = m->seq,
                                  .redelivered = m->attempts > 0,
                                  .attempt = m->attempts + 1,
                                  .stored_at_ms = m->stored_ms};
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, mr_delivery_frame_size(&d, m->len)) != 0)
        return -ENOMEM;
    (void)mr_delivery_frame_pack(&d, m->body, m->len, zmq_msg_data(&msg));
    int rc = server_send_facility_msg(s, p->rid, p->rid_len, &msg);
    if (rc == 0) {
        m->resent_unread = false; /* router_cron says otherwise for its own sends */
        s->counters.v[m->attempts > 0 ? CNT_REDELIVERED : CNT_SENT]++;
        if (m->attempts > 0) {
            char labels[96];
            snprintf(labels, sizeof labels, "destination=\"%s\"",
                     registry_at(s->registry, (size_t)peer)->id);
            store_tally(s->store, "messages_redelivered_total", labels, 1);
        }
        m->attempts++;
        m->sent_ms = mr_mono_ms();
    }
    return rc;
}

static void on_loaded(store_req_t *req, void *arg);

/* True when seq is already held in memory (in flight, or an express message
 * in ready).  Only express messages can be there ahead of the cursor: at the
 * head of ready (invariant 1), or in flight, or acknowledged and waiting
 * for the commit. */
static bool s_held(const peer_t *p, uint64_t seq)
{
    for (const qmsg_t *m = p->inflight.head; m; m = m->next)
        if (m->seq == seq)
            return true;
    for (const qmsg_t *m = p->acked.head; m; m = m->next)
        if (m->seq == seq)
            return true;
    for (const qmsg_t *m = p->ready.head; m; m = m->next)
        if (m->express && m->seq == seq)
            return true;
    return false;
}


/*
 * Asks the store for the next page of peer's pending messages after the
 * cursor; with express, only the critical and stat ones (on each connect,
 * so that they go ahead of everything already waiting).
 */
static void s_load(server_t *s, int peer, bool express)
{
    peer_t *p = &s->peers[peer];
    store_req_t *req = store_req_new(STORE_LOAD, on_loaded, s);
    if (req == NULL || (req->msg.dest = strdup(registry_at(s->registry, (size_t)peer)->id)) == NULL) {
        log_error(s->log, "router.oom", "facility=%s", registry_at(s->registry, (size_t)peer)->id);
        free(req);
        return; /* the cron's next pump tries again */
    }
    req->tag = (int64_t)peer | (int64_t)p->memory_gen << 32; /* peer < 2^31, gen < 2^31 */
    req->after = p->cursor;
    req->limit = express ? 64 : S_PAGE;
    req->express_only = express;
    p->loading = true;
    p->loading_express = express;
    if (express)
        p->express_checked = true;
    store_submit(s->store, req);
}

void router_pump(server_t *s, int peer)
{
    peer_t *p = &s->peers[peer];
    if (s->facility_ep == NULL || s->store == NULL)
        return; /* shutting down */
    if (p->connected && !p->express_checked) {
        /* Just (re)connected: first fetch what is critical or stat from the
         * store, so it goes ahead of everything already waiting. */
        if (!p->loading)
            s_load(s, peer, true);
        return;
    }
    int64_t now = p->ready.head ? s_expiry_now(s, mr_now_ms()) : 0;
    while (p->connected && p->inflight.n < p->max_inflight && p->ready.head) {
        qmsg_t *m = p->ready.head;
        if (s_expired(m, now)) {
            /* Still pending in the store, behind the cursor: only a reload
             * after a reconnect meets it again, and drops it again. */
            s_free(s_pop(&p->ready));
            continue;
        }
        int rc = s_send(s, peer, m);
        if (rc == -EHOSTUNREACH) {
            session_end(s, peer, "unreachable");
            return;
        }
        if (rc < 0)
            return; /* queue full: the cron tries again */
        s_push(&p->inflight, s_pop(&p->ready));
    }
    if (p->connected && p->ready.n < S_PAGE && !p->complete && !p->loading)
        s_load(s, peer, false);
}

static void on_loaded(store_req_t *req, void *arg)
{
    server_t *s = arg;
    int peer = (int)(req->tag & 0x7fffffff);
    peer_t *p = &s->peers[peer];
    p->loading = false;
    p->loading_express = false;
    if (registry_at(s->registry, (size_t)peer)->removed)
        return; /* a reload removed it meanwhile: memory stays forgotten */
    if ((uint32_t)(req->tag >> 32) != p->memory_gen) {
        /* Removed and added back meanwhile: this page follows the cursor of
         * the memory forgotten then, and would skip what is before it. */
        router_pump(s, peer);
        return;
    }
    if (req->status != STORE_OK) {
        if (req->express_only)
            p->express_checked = false;
        return; /* the cron's next pump tries again */
    }
    if (req->express_only) {
        /* Ahead of everything routine; the cursor stays, so the normal pages
         * skip them when they reach them (s_held). */
        for (size_t i = 0; i < req->n_rows; i++) {
            store_row_t *r = &req->rows[i];
            if (s_held(p, r->seq))
                continue;
            qmsg_t *m = s_qmsg(r->seq, r);
            if (m == NULL)
                break;
            m->express = true;
            s_requeue(&p->ready, m);
            if (r->seq > p->express_ahead)
                p->express_ahead = r->seq;
        }
        router_pump(s, peer);
        return;
    }
    bool short_of_memory = false;
    for (size_t i = 0; i < req->n_rows; i++) {
        store_row_t *r = &req->rows[i];
        if (r->seq <= p->cursor)
            continue;
        /* Only seqs up to the last express one loaded ahead can be held. */
        if (r->seq <= p->express_ahead && s_held(p, r->seq)) {
            p->cursor = r->seq; /* loaded ahead as express */
            continue;
        }
        qmsg_t *m = s_qmsg(r->seq, r);
        if (m == NULL) {
            short_of_memory = true; /* the rest is loaded again later: cursor stays */
            break;
        }
        s_push(&p->ready, m);
        p->cursor = r->seq;
    }
    /* Complete only if every row was taken: otherwise later commits would go
     * straight to ready, the cursor past the rows left behind. */
    p->complete = !short_of_memory && req->n_rows < req->limit;
    router_pump(s, peer);
}

void router_on_stored(server_t *s, int peer, uint64_t seq, store_row_t *row, bool express)
{
    peer_t *p = &s->peers[peer];
    p->pending++;
    if (p->loading) {
        /* The load in flight was executed after this commit: a full page
         * load has it; an express-only one may not, so a later page must. */
        if (p->loading_express)
            p->complete = false;
        return;
    }
    if (!p->complete || !p->connected || p->ready.n >= S_READY_MAX) {
        p->complete = false;
        return;
    }
    qmsg_t *m = s_qmsg(seq, row);
    if (m == NULL) {
        p->complete = false;
        return;
    }
    m->express = express;
    if (express)
        s_requeue(&p->ready, m);
    else
        s_push(&p->ready, m);
    p->cursor = seq;
    router_pump(s, peer);
}

/* Moves every message of from to the end of to, in order. */
static void s_append(qlist_t *to, qlist_t *from)
{
    if (from->head == NULL)
        return;
    if (to->tail)
        to->tail->next = from->head;
    else
        to->head = from->head;
    to->tail = from->tail;
    to->n += from->n;
    *from = (qlist_t){0};
}

/*
 * Puts peer's in-flight messages back at the front of ready (the acked ones
 * wait for their commit where they are), but behind every express one:
 * express messages stay ahead of routine ones and in their order, those
 * that were out first, so that one loaded or stored later goes after them
 * (s_requeue), not ahead of them.  With session non-zero (a repeated Hello,
 * invariant 7) only those no repeated Hello of that session put back
 * already, marked so; the others stay in flight, in the order sent, their
 * count in *kept.  Returns the count put back.
 */
static size_t s_put_back(peer_t *p, uint32_t session, size_t *kept)
{
    qlist_t express = {0}, routine = {0}, stay = {0};
    size_t back = 0;
    qmsg_t *m;
    while ((m = s_pop(&p->inflight)) != NULL) {
        if (session != 0 && m->hello_session == session) {
            s_push(&stay, m);
            continue;
        }
        if (session != 0)
            m->hello_session = session;
        m->due = false; /* sent again from ready, as the others */
        s_push(m->express ? &express : &routine, m);
        back++;
    }
    p->inflight = stay;
    *kept = stay.n;
    if (back == 0)
        return 0; /* ready is as it was: not walked for a Hello that changes nothing */
    qlist_t waiting = p->ready;
    p->ready = (qlist_t){0};
    while ((m = s_pop(&waiting)) != NULL)
        s_push(m->express ? &express : &p->ready, m);
    s_append(&express, &routine);
    s_append(&express, &p->ready);
    p->ready = express;
    return back;
}

void router_on_disconnect(server_t *s, int peer)
{
    peer_t *p = &s->peers[peer];
    p->express_checked = false; /* look again on the next connection */
    size_t kept;
    (void)s_put_back(p, 0, &kept);
    (void)s;
}

size_t router_on_hello(server_t *s, int peer, size_t *kept)
{
    peer_t *p = &s->peers[peer];
    size_t back = s_put_back(p, p->session, kept);
    /* A restart that sends again looks for express messages again, as a new
     * connection does; one that sends nothing again costs no store query. */
    if (back > 0)
        p->express_checked = false;
    s->counters.v[CNT_RESENDS_SKIPPED] += *kept;
    return back;
}

void router_forget(server_t *s, int peer, uint64_t seq)
{
    peer_t *p = &s->peers[peer];
    qmsg_t *m = s_remove(&p->acked, seq);
    if (m == NULL)
        m = s_remove(&p->inflight, seq);
    if (m == NULL)
        m = s_remove(&p->ready, seq);
    s_free(m);
    if (p->pending > 0)
        p->pending--;
}

void router_on_retried(server_t *s, int peer, store_row_t *row)
{
    peer_t *p = &s->peers[peer];
    uint64_t seq = row->seq;
    p->pending++;
    if (seq > p->cursor) {
        /* Beyond what memory holds: the next page load picks it up. */
        p->complete = false;
        router_pump(s, peer);
        return;
    }
    /* Below the cursor no load will see it again: into the window directly. */
    qmsg_t *m = s_find(&p->ready, seq) || s_find(&p->inflight, seq) || s_find(&p->acked, seq)
                    ? NULL
                    : s_qmsg(seq, row);
    if (m == NULL)
        return;
    /* Express as it was stored: ahead of the routine ones, as before it died. */
    m->express = row->express != 0;
    s_requeue(&p->ready, m);
    router_pump(s, peer);
}

/* ---- acknowledgements ---------------------------------------------------------- */

/* Whether fr came on the connection the facility has now (not a late ack,
 * nor one its session ended since). */
static bool s_acked_on_connection(const s_ack_frame_t *fr)
{
    const peer_t *p = &fr->s->peers[fr->peer];
    return !fr->late && p->connected && p->rid_len == fr->rid_len &&
           memcmp(p->rid, fr->rid, fr->rid_len) == 0;
}

/* The store has answered every seq of fr: its unknown ones get one Error,
 * on the connection that sent them if it is still the facility's (a late
 * ack's is not: its session ended, the facility may have another now). */
static void s_ack_frame_end(s_ack_frame_t *fr)
{
    server_t *s = fr->s;
    if (fr->n_unknown > 0 && s_acked_on_connection(fr)) {
        mr_err_t err = {0};
        if (fr->n_unknown == 1)
            mr_fail(&err, MR_E_UNKNOWN_DELIVERY, "no pending delivery %llu for this facility",
                    (unsigned long long)fr->first_unknown);
        else
            mr_fail(&err, MR_E_UNKNOWN_DELIVERY,
                    "no pending delivery %llu for this facility, nor %zu more seqs of this "
                    "DeliveryAck",
                    (unsigned long long)fr->first_unknown, fr->n_unknown - 1);
        err.seq = fr->first_unknown;
        dispatch_reply_error(s, fr->rid, fr->rid_len, fr->peer, &err);
    }
    free(fr);
}

static void on_acked(store_req_t *req, void *arg)
{
    s_ack_frame_t *fr = arg;
    server_t *s = fr->s;
    int peer = fr->peer;
    peer_t *p = &s->peers[peer];
    uint64_t seq = req->msg.seq;
    switch (req->status) {
    case STORE_OK:
        s->counters.v[CNT_DELIVERED]++;
        router_forget(s, peer, seq);
        break;
    case STORE_DUPLICATE:
        s_free(s_remove(&p->acked, seq));
        break;
    case STORE_NOT_FOUND:
        s_free(s_remove(&p->acked, seq)); /* not pending: nothing to keep */
        if (fr->n_unknown++ == 0)
            fr->first_unknown = seq;
        break;
    default: {
        /* Not recorded: delivered again, for an ack that the store can
         * take, the client's seen-set absorbs the copy (invariant 9). */
        qmsg_t *m = s_remove(&p->acked, seq);
        if (m == NULL)
            break;
        m->due = s_acked_on_connection(fr);
        if (m->due)
            s_insert_sorted(&p->inflight, m);
        else
            s_requeue(&p->ready, m);
        break;
    }
    }
    if (--fr->left == 0)
        s_ack_frame_end(fr);
    router_pump(s, peer);
}

/* One acknowledged seq of fr: its window slot is free at once (*freed), its
 * commit follows (on_acked).  0, or the error of an out-of-memory. */
static int s_ack_one(s_ack_frame_t *fr, uint64_t seq, int64_t now, bool *freed, mr_err_t *err)
{
    server_t *s = fr->s;
    peer_t *p = &s->peers[fr->peer];
    qmsg_t *m = s_remove(&p->inflight, seq); /* normally at its head */
    bool was_out = m != NULL, unsent = false;
    if (m == NULL && s_find(&p->acked, seq) != NULL)
        return 0; /* a repeat while the first is being committed */
    /* Or waiting to be sent again (a session ended, a smaller window): not
     * sent once more while its ack is committed.  (ready is the longer
     * list: looked through last.)  One loaded and never sent, or never
     * loaded, cannot have reached the facility: its ack would mark it
     * delivered unseen.  Beyond the cursor, only express ones loaded ahead
     * can have been sent, and those still pending are in the lists above;
     * a routine one below the last of them (express_ahead) was not loaded.
     * The store only tells whether it was delivered before (the ack
     * repeated) or is unknown; it stays pending. */
    if (m == NULL) {
        const qmsg_t *r = s_find(&p->ready, seq);
        unsent = r != NULL ? r->attempts == 0 : seq > p->cursor;
        if (r != NULL && !unsent)
            m = s_remove(&p->ready, seq);
    }
    if (m != NULL)
        s_push(&p->acked, m); /* its window slot is free from now on */
    store_req_t *req = store_req_new(STORE_ACK, on_acked, fr);
    if (req != NULL) {
        req->tag = fr->peer;
        req->unsent = unsent;
        req->msg.seq = seq;
        req->msg.dest = strdup(registry_at(s->registry, (size_t)fr->peer)->id);
        req->now_ms = now;
    }
    if (req == NULL || req->msg.dest == NULL) {
        free(req);
        qmsg_t *back = m != NULL ? s_remove(&p->acked, seq) : NULL;
        if (back != NULL && was_out)
            s_insert_sorted(&p->inflight, back);
        else if (back != NULL)
            s_requeue(&p->ready, back);
        return mr_fail(err, MR_E_INTERNAL, "out of memory");
    }
    store_submit(s->store, req);
    fr->left++;
    *freed = *freed || was_out;
    return 0;
}

int handle_delivery_ack(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f,
                        mr_err_t *err)
{
    const Medroute__V1__DeliveryAck *a = f->delivery_ack;
    if (a->seq == 0)
        return mr_fail(err, MR_E_INVALID, "DeliveryAck.seq is required");
    if (a->n_more_seqs >= MR_ACKS_PER_FRAME_MAX)
        return mr_fail(err, MR_E_INVALID,
                       "DeliveryAck carries more seqs than Welcome.max_acks_per_frame");
    s_ack_frame_t *fr = calloc(1, sizeof *fr);
    if (fr == NULL)
        return mr_fail(err, MR_E_INTERNAL, "out of memory");
    fr->s = s;
    fr->peer = ctx->peer;
    fr->late = ctx->late;
    if (ctx->rid_len <= sizeof fr->rid) { /* a session's rid always is */
        memcpy(fr->rid, ctx->rid, ctx->rid_len);
        fr->rid_len = ctx->rid_len;
    }
    int64_t now = mr_now_ms();
    bool freed = false, zero = false;
    if (!ctx->late)
        session_reads(s, ctx->peer); /* it read what it acknowledges */
    int rc = s_ack_one(fr, a->seq, now, &freed, err);
    for (size_t i = 0; rc == 0 && i < a->n_more_seqs; i++) {
        if (a->more_seqs[i] == 0)
            zero = true; /* the others still count */
        else
            rc = s_ack_one(fr, a->more_seqs[i], now, &freed, err);
    }
    /* The store answers on a later loop turn, never within store_submit:
     * none of them has come back yet. */
    if (fr->left == 0)
        free(fr); /* nothing went to the store: repeats only, or out of memory */
    if (freed)
        router_pump(s, ctx->peer); /* the freed slots: the next messages go now */
    if (rc == 0 && zero)
        return mr_fail(err, MR_E_INVALID, "DeliveryAck.more_seqs holds a 0");
    return rc;
}

/* ---- start, cron, stop ---------------------------------------------------------- */

/*
 * The pending counts of the facilities at indices [first, last) (the tag),
 * from the store's summary: at start every facility's; after a reload that
 * added some, theirs, as the store may hold a queue for a facility that an
 * earlier configuration listed (router.orphan_queue).  Store completions
 * run in execution order, so the commits counted one by one
 * (router_on_stored) are those executed after the summary.
 */
static void on_summary(store_req_t *req, void *arg)
{
    server_t *s = arg;
    size_t first = (size_t)(req->tag & 0xffffffff), last = (size_t)(req->tag >> 32);
    bool start = first == 0;
    if (req->status != STORE_OK) {
        log_error(s->log, "router.summary_failed", "status=%s", store_status_name(req->status));
        return; /* every queue stays incomplete: loads find the truth */
    }
    uint64_t total = 0;
    for (size_t i = 0; i < req->n_rows; i++) {
        const store_row_t *r = &req->rows[i];
        /* A facility removed meanwhile keeps its messages, and its count. */
        int peer = registry_find_any(s->registry, r->dest, strlen(r->dest));
        if (peer >= 0 && ((size_t)peer < first || (size_t)peer >= last))
            continue; /* counted by a summary of its own, or already */
        total += r->count;
        if (peer < 0 && start)
            log_warn(s->log, "router.orphan_queue", "dest=%s pending=%llu", r->dest,
                     (unsigned long long)r->count);
        if (peer >= 0)
            s->peers[peer].pending += r->count;
    }
    for (size_t i = first; i < last; i++)
        if (s->peers[i].pending == 0 && !s->peers[i].loading)
            s->peers[i].complete = true;
    if (start)
        log_info(s->log, "router.recovered", "pending=%llu destinations=%zu",
                 (unsigned long long)total, req->n_rows);
}

int router_start(server_t *s)
{
    return router_count_added(s, 0);
}

int router_count_added(server_t *s, size_t first)
{
    store_req_t *req = store_req_new(STORE_SUMMARY, on_summary, s);
    if (req == NULL)
        return -ENOMEM;
    req->tag = (int64_t)((uint64_t)registry_count(s->registry) << 32 | first);
    store_submit(s->store, req);
    return 0;
}

uint64_t *router_outstanding(const server_t *s, int64_t mono_ms, size_t *n)
{
    int64_t fresh = s->conf->redelivery_timeout_ms;
    size_t total = 0;
    for (size_t i = 0; i < registry_count(s->registry); i++)
        total += s->peers[i].inflight.n + s->peers[i].acked.n;
    *n = 0;
    uint64_t *seqs = total ? malloc(total * sizeof *seqs) : NULL;
    if (seqs == NULL)
        return NULL;
    for (size_t i = 0; i < registry_count(s->registry); i++) {
        const peer_t *p = &s->peers[i];
        for (const qmsg_t *m = p->inflight.head; m && *n < total; m = m->next)
            if (mono_ms - m->sent_ms < fresh)
                seqs[(*n)++] = m->seq;
        for (const qmsg_t *m = p->acked.head; m && *n < total; m = m->next)
            seqs[(*n)++] = m->seq;
    }
    qsort(seqs, *n, sizeof *seqs, pending_seq_cmp); /* the store passes them to pending_expired */
    return seqs;
}

/* Whether m, out at p past its time-out, is sent again on p's connection
 * (invariant 8): p read since m's last send, or was heard from and m's last
 * send was not already one without that sign.  *unread: p has not read. */
static bool s_may_resend(const peer_t *p, const qmsg_t *m, bool *unread)
{
    *unread = p->read_ms <= m->sent_ms;
    return !*unread || (!m->resent_unread && p->heard_ms > m->sent_ms);
}

void router_cron(server_t *s, int64_t now_ms, int64_t mono_ms)
{
    size_t n = registry_count(s->registry);
    int64_t timeout = s->conf->redelivery_timeout_ms;
    now_ms = s_expiry_now(s, now_ms);
    for (size_t i = 0; i < n; i++) {
        peer_t *p = &s->peers[i];
        if (!p->connected)
            continue;
        for (qmsg_t *m = p->inflight.head; m; m = m->next) {
            /* Back off: each unanswered send doubles the wait, up to 32x. */
            unsigned shift = m->attempts > 1 ? (m->attempts - 1 < 5 ? m->attempts - 1 : 5) : 0;
            bool unread = false; /* a due one's receiver read it: its ack (invariant 9) */
            if ((!m->due && (mono_ms - m->sent_ms < (timeout << shift) ||
                             !s_may_resend(p, m, &unread))) ||
                s_expired(m, now_ms))
                continue; /* not due; its copy unread; or expired, left for the scan */
            int rc = s_send(s, (int)i, m);
            if (rc == -EHOSTUNREACH) {
                session_end(s, (int)i, "unreachable");
                break;
            }
            if (rc < 0)
                break;
            m->resent_unread = unread;
            m->due = false;
        }
        if (p->connected)
            router_pump(s, (int)i);
    }
}

void router_forget_memory(server_t *s, int peer)
{
    peer_t *p = &s->peers[peer];
    s_clear(&p->ready);
    s_clear(&p->inflight);
    s_clear(&p->acked);
    p->complete = false;
    p->cursor = 0;
    p->express_ahead = 0;
    p->memory_gen = (p->memory_gen + 1) & 0x7fffffff;
}

void router_stop(server_t *s)
{
    size_t n = registry_count(s->registry);
    for (size_t i = 0; i < n; i++) {
        s_clear(&s->peers[i].ready);
        s_clear(&s->peers[i].inflight);
        s_clear(&s->peers[i].acked);
    }
}
