/*
 * opapi.c - operator requests: status, queue ls / retry / drop.
 *
 * Requests that need the store reply from the store callback; the caller's
 * routing id travels with the request in an s_pending_t, listed in
 * s->op_waiting until its callback.  While the store is stalled
 * (store_stalled_ms past store.stall_after_s) they are answered
 * STORE_UNAVAILABLE at once instead; past S_WAITING_PER_CONNECTION of one
 * connection, or S_WAITING_MAX of all, QUEUE_FULL.  Refusals are counted
 * each, logged at most LOGRATE_LINES per window (lograte.h); so are the
 * security events of requests without a valid key, apart.  Thread: loop.
 */
#include "opapi.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "indicators.h"
#include "reload.h"
#include "period.h"
#include "router.h"
#include "watch.h"

#define S_LIST_DEFAULT 100
#define S_LIST_MAX 10000
/* Operator requests that may wait for the store: a tool in a loop would
 * otherwise queue them without bound, and their backlog pauses every
 * facility's intake (flow.c).  A tool waits for each reply (clients/lib). */
#define S_WAITING_PER_CONNECTION 4
#define S_WAITING_MAX 32

typedef struct op_waiting_t {
    server_t *s;
    uint64_t request_id;
    uint8_t rid[MR_RID_MAX];
    size_t rid_len;
    period_t period;
    struct op_waiting_t *prev, *next; /* s->op_waiting, once submitted */
} s_pending_t;

/* Sends r to rid.  A reply that cannot be encoded (no memory) or queued is
 * counted as send_failed, one for a connection found gone (EHOSTUNREACH) as
 * peer_gone (the tool left: no fault of the broker's), as server.c counts
 * a facility's; either logged at most LOGRATE_LINES per window, so that a
 * tool in a loop that leaves at once cannot fill the log.  A connection
 * found gone ends its watch:
 * a WatchRequest read after its connection closed read that close first
 * (watch_subscribe), so the monitor would never free the place it took. */
static void s_reply(server_t *s, const uint8_t *rid, size_t rid_len, mr_op_reply_t *r)
{
    uint8_t *buf;
    size_t len;
    r->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    if (s->operator_ep == NULL)
        return; /* shutting down */
    int rc = mr_pack(&r->base, &buf, &len);
    if (rc != 0) {
        /* No memory: counted and told, not only timed out by the tool. */
        s->counters.v[CNT_SEND_FAILED]++;
        if (lograte_allow(&s->op_send_log, mr_mono_ms()))
            log_warn(s->log, "operator.send_failed", "reason=%d step=encode", rc);
        return;
    }
    rc = endpoint_send(s->operator_ep, rid, rid_len, buf, len);
    if (rc < 0) {
        s->counters.v[rc == -EHOSTUNREACH ? CNT_PEER_GONE : CNT_SEND_FAILED]++;
        if (lograte_allow(&s->op_send_log, mr_mono_ms()))
            log_warn(s->log, "operator.send_failed", "reason=%d", rc);
    }
    if (rc == -EHOSTUNREACH)
        watch_unsubscribe(s, rid, rid_len);
    free(buf);
}

static void s_reply_error(server_t *s, const uint8_t *rid, size_t rid_len, uint64_t request_id,
                          int code, const char *reason)
{
    /* Counted and logged as a facility's refusals are (not in their tallies:
     * an operator's request is not a message). */
    s->counters.v[CNT_OPERATOR_REJECTED]++;
    if (lograte_allow(&s->op_reject_log, mr_mono_ms())) {
        char why[200];
        log_warn(s->log, "operator.rejected", "code=%s reason=\"%s\"", mr_error_name(code),
                 log_clean(why, sizeof why, reason));
    }
    Medroute__V1__Error e = MEDROUTE__V1__ERROR__INIT;
    e.code = (Medroute__V1__ErrorCode)code;
    e.reason = (char *)reason;
    mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
    r.request_id = request_id;
    r.body_case = MEDROUTE__V1__OP_REPLY__BODY_ERROR;
    r.error = &e;
    s_reply(s, rid, rid_len, &r);
}

static s_pending_t *s_pending(server_t *s, const uint8_t *rid, size_t rid_len,
                              uint64_t request_id)
{
    if (rid_len > MR_RID_MAX)
        return NULL;
    s_pending_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->s = s;
    p->request_id = request_id;
    memcpy(p->rid, rid, rid_len);
    p->rid_len = rid_len;
    return p;
}

/* Lists pd as waiting for the store. */
static void s_pending_wait(s_pending_t *pd)
{
    server_t *s = pd->s;
    pd->prev = NULL;
    pd->next = s->op_waiting;
    if (pd->next != NULL)
        pd->next->prev = pd;
    s->op_waiting = pd;
    s->n_op_waiting++;
}

/* The end of pd, whose store request has been answered. */
static void s_pending_done(s_pending_t *pd)
{
    server_t *s = pd->s;
    if (pd->prev != NULL)
        pd->prev->next = pd->next;
    else
        s->op_waiting = pd->next;
    if (pd->next != NULL)
        pd->next->prev = pd->prev;
    s->n_op_waiting--;
    free(pd);
}

/* Whether another request of rid may not wait for the store now: if so,
 * why is written to why. */
static bool s_busy(const server_t *s, const uint8_t *rid, size_t rid_len, char *why, size_t len)
{
    int mine = 0;
    for (const s_pending_t *p = s->op_waiting; p != NULL; p = p->next)
        mine += p->rid_len == rid_len && memcmp(p->rid, rid, rid_len) == 0;
    if (mine >= S_WAITING_PER_CONNECTION)
        snprintf(why, len, "%d requests of this connection wait for the store already: send "
                 "another once one is answered", S_WAITING_PER_CONNECTION);
    else if (s->n_op_waiting >= S_WAITING_MAX)
        snprintf(why, len, "%d operator requests wait for the store already: try again "
                 "shortly", S_WAITING_MAX);
    else
        return false;
    return true;
}

/* One histogram of the status: l points into h, which must outlive it. */
static void s_latency(Medroute__V1__Latency *l, const char *name, durhist_t *h)
{
    medroute__v1__latency__init(l);
    l->name = (char *)name;
    l->count = h->count;
    l->sum_us = h->sum_us;
    l->n_bucket_le_us = DURHIST_BUCKETS;
    l->bucket_le_us = (uint64_t *)durhist_le_us; /* packed, never written */
    l->n_bucket_count = DURHIST_BUCKETS;
    l->bucket_count = h->counts;
    l->p50_us = durhist_quantile_us(h, 0.50);
    l->p99_us = durhist_quantile_us(h, 0.99);
    l->p999_us = durhist_quantile_us(h, 0.999);
}

/* Builds the status reply once the store has counted what is pending. */
static void on_status_summary(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    server_t *s = pd->s;
    size_t n = registry_count(s->registry);
    Medroute__V1__FacilityStatus *fs = calloc(n, sizeof *fs);
    Medroute__V1__FacilityStatus **fsp = calloc(n, sizeof *fsp);
    Medroute__V1__Counter *cs = calloc(CNT_COUNT + MR_E_COUNT, sizeof *cs);
    Medroute__V1__Counter **csp = calloc(CNT_COUNT + MR_E_COUNT, sizeof *csp);
    char (*names)[48] = calloc(MR_E_COUNT, sizeof *names);
    if (!fs || !fsp || !cs || !csp || !names) {
        s_reply_error(s, pd->rid, pd->rid_len, pd->request_id, MR_E_INTERNAL, "out of memory");
        goto out;
    }
    if (req->status != STORE_OK) {
        s_reply_error(s, pd->rid, pd->rid_len, pd->request_id, MR_E_STORE_UNAVAILABLE,
                      "the store is unavailable");
        goto out;
    }
    size_t shown = 0;
    /* Last heard is kept on the monotonic clock; shown as a wall time. */
    int64_t now = mr_now_ms(), mono = mr_mono_ms();
    for (size_t i = 0; i < n; i++) {
        const facility_t *f = registry_at(s->registry, i);
        const peer_t *p = &s->peers[i];
        medroute__v1__facility_status__init(&fs[i]);
        fs[i].facility_id = f->id;
        fs[i].name = f->name;
        /* A facility a reload removed, shown while messages wait for it. */
        fs[i].role = f->removed ? "removed" : (char *)registry_role_name(f->role);
        fs[i].connected = p->connected;
        fs[i].last_seen_ms = p->heard_ms ? now - (mono - p->heard_ms) : 0;
        fs[i].inflight = p->inflight.n;
    }
    /* Pending counts and ages are the store's, not memory's. */
    for (size_t r = 0; r < req->n_rows; r++) {
        int i = registry_find_any(s->registry, req->rows[r].dest, strlen(req->rows[r].dest));
        if (i < 0)
            continue;
        fs[i].pending = req->rows[r].count;
        fs[i].oldest_pending_ms = req->rows[r].stored_ms;
    }
    for (size_t i = 0; i < n; i++)
        if (!registry_at(s->registry, i)->removed || fs[i].pending > 0)
            fsp[shown++] = &fs[i];
    size_t nc = 0;
    for (int c = 0; c < CNT_COUNT; c++) {
        medroute__v1__counter__init(&cs[nc]);
        cs[nc].name = (char *)counters_name((counter_t)c);
        cs[nc].value = s->counters.v[c];
        csp[nc] = &cs[nc];
        nc++;
    }
    for (int code = 1; code < MR_E_COUNT; code++) {
        if (s->counters.rejected_by_code[code] == 0)
            continue;
        snprintf(names[code], sizeof names[code], "rejected.%s", mr_error_name(code));
        medroute__v1__counter__init(&cs[nc]);
        cs[nc].name = names[code];
        cs[nc].value = s->counters.rejected_by_code[code];
        csp[nc] = &cs[nc];
        nc++;
    }
    Medroute__V1__StatusReply st = MEDROUTE__V1__STATUS_REPLY__INIT;
    st.broker_id = s->conf->broker_id;
    st.started_at_ms = s->started_at_ms;
    st.n_facilities = shown;
    st.facilities = fsp;
    st.n_counters = nc;
    st.counters = csp;
    st.store_bytes = s->store_bytes;
    store_latency_t lat;
    Medroute__V1__Latency ls[3], *lsp[3] = {&ls[0], &ls[1], &ls[2]};
    if (s->store != NULL) {
        store_latency(s->store, &lat);
        s_latency(&ls[0], "store_wait", &lat.wait);
        s_latency(&ls[1], "store_commit", &lat.commit);
        s_latency(&ls[2], "store_put", &lat.put);
        st.n_latencies = 3;
        st.latencies = lsp;
    }
    mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
    r.request_id = pd->request_id;
    r.body_case = MEDROUTE__V1__OP_REPLY__BODY_STATUS;
    r.status = &st;
    s_reply(s, pd->rid, pd->rid_len, &r);
out:
    free(names);
    free(csp);
    free(cs);
    free(fsp);
    free(fs);
    s_pending_done(pd);
}

/* The arrays of a repeated message field: n messages of desc's type, each
 * initialised, and the pointer array protobuf-c packs from. */
typedef struct {
    void *items;
    void **ptrs;
} s_rows_t;

static int s_rows_new(s_rows_t *r, size_t n, const ProtobufCMessageDescriptor *desc)
{
    size_t size = desc->sizeof_message;
    r->items = calloc(n ? n : 1, size);
    r->ptrs = calloc(n ? n : 1, sizeof *r->ptrs);
    if (r->items == NULL || r->ptrs == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        r->ptrs[i] = (char *)r->items + i * size;
        desc->message_init(r->ptrs[i]);
    }
    return 0;
}

static void s_rows_free(s_rows_t *r)
{
    free(r->ptrs);
    free(r->items);
}

/* Answers a store request that failed, or that cannot be answered for lack
 * of memory; true when it did (the caller then only cleans up). */
static bool s_failed(const s_pending_t *pd, const store_req_t *req, int rows_rc, const char *what)
{
    if (req->status == STORE_OK && rows_rc == 0)
        return false;
    s_reply_error(pd->s, pd->rid, pd->rid_len, pd->request_id,
                  req->status != STORE_OK ? MR_E_STORE_UNAVAILABLE : MR_E_INTERNAL, what);
    return true;
}

/* Sends r as the answer to pd's request. */
static void s_answer(const s_pending_t *pd, mr_op_reply_t *r)
{
    r->request_id = pd->request_id;
    s_reply(pd->s, pd->rid, pd->rid_len, r);
}

static void on_listed(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    server_t *s = pd->s;
    s_rows_t rows;
    int rc = s_rows_new(&rows, req->n_rows, &medroute__v1__queued_message__descriptor);
    if (!s_failed(pd, req, rc, "could not list the queue")) {
        for (size_t i = 0; i < req->n_rows; i++) {
            const store_row_t *r = &req->rows[i];
            Medroute__V1__QueuedMessage *q = rows.ptrs[i];
            q->seq = r->seq;
            q->message_id = r->message_id;
            q->source = r->source;
            q->destination = r->dest;
            q->kind = r->kind;
            q->priority = r->priority;
            q->stored_at_ms = r->stored_ms;
            q->dead_reason = r->dead_reason ? r->dead_reason : (char *)"";
            int peer = registry_find(s->registry, r->dest, strlen(r->dest));
            for (qmsg_t *m = peer >= 0 ? s->peers[peer].inflight.head : NULL; m; m = m->next)
                if (m->seq == r->seq)
                    q->attempts = m->attempts;
        }
        Medroute__V1__QueueListReply ql = MEDROUTE__V1__QUEUE_LIST_REPLY__INIT;
        ql.n_messages = req->n_rows;
        ql.messages = (Medroute__V1__QueuedMessage **)rows.ptrs;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_QUEUE_LIST;
        r.queue_list = &ql;
        s_answer(pd, &r);
    }
    s_rows_free(&rows);
    s_pending_done(pd);
}

static void on_slots(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    s_rows_t rows;
    int rc = s_rows_new(&rows, req->n_slots, &medroute__v1__slot_row__descriptor);
    if (!s_failed(pd, req, rc, "could not read the ledger")) {
        for (size_t i = 0; i < req->n_slots; i++) {
            const clin_slot_t *c = &req->slots[i];
            Medroute__V1__SlotRow *row = rows.ptrs[i];
            row->resource = (char *)slots_kind_name(c->resource);
            row->unit = c->unit;
            row->date = c->date;
            row->capacity = (uint32_t)c->ledger.capacity;
            row->reserved = (uint32_t)c->ledger.reserved;
            row->claimed_reserved = (uint32_t)c->ledger.claimed_reserved;
            row->general_used = (uint32_t)c->ledger.general_used;
            row->released = (uint32_t)c->ledger.released;
            row->released_at_ms = c->released_at_ms;
            row->reserved_share = slots_reserved_share(&c->ledger);
        }
        Medroute__V1__SlotsReply sr = MEDROUTE__V1__SLOTS_REPLY__INIT;
        sr.n_rows = req->n_slots;
        sr.rows = (Medroute__V1__SlotRow **)rows.ptrs;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_SLOTS;
        r.slots = &sr;
        s_answer(pd, &r);
    }
    s_rows_free(&rows);
    s_pending_done(pd);
}

static void on_open_loops(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    s_rows_t rows;
    int rc = s_rows_new(&rows, req->n_open, &medroute__v1__open_loop__descriptor);
    if (!s_failed(pd, req, rc, "could not read the open loops")) {
        for (size_t i = 0; i < req->n_open; i++) {
            const clin_open_t *o = &req->open[i];
            Medroute__V1__OpenLoop *l = rows.ptrs[i];
            l->kind = o->kind;
            l->id = o->key;
            l->from = o->from;
            l->to = o->to;
            l->state = o->state;
            l->priority = o->priority;
            l->opened_at_ms = o->opened_ms;
            l->updated_at_ms = o->updated_ms;
            l->escalated = o->escalated;
        }
        Medroute__V1__OpenLoopsReply olr = MEDROUTE__V1__OPEN_LOOPS_REPLY__INIT;
        olr.n_loops = req->n_open;
        olr.loops = (Medroute__V1__OpenLoop **)rows.ptrs;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_OPEN_LOOPS;
        r.open_loops = &olr;
        s_answer(pd, &r);
    }
    s_rows_free(&rows);
    s_pending_done(pd);
}

static void on_stats(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    s_rows_t rows;
    int rc = s_rows_new(&rows, req->n_tallies, &medroute__v1__tally_row__descriptor);
    if (!s_failed(pd, req, rc, "could not read the tallies")) {
        for (size_t i = 0; i < req->n_tallies; i++) {
            Medroute__V1__TallyRow *t = rows.ptrs[i];
            t->name = req->tallies[i].name;
            t->labels = req->tallies[i].labels;
            t->value = req->tallies[i].value;
        }
        Medroute__V1__StatsReply sr = MEDROUTE__V1__STATS_REPLY__INIT;
        sr.period = pd->period.label;
        sr.first_day = pd->period.first;
        sr.last_day = pd->period.last;
        sr.n_tallies = req->n_tallies;
        sr.tallies = (Medroute__V1__TallyRow **)rows.ptrs;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_STATS;
        r.stats = &sr;
        s_answer(pd, &r);
    }
    s_rows_free(&rows);
    s_pending_done(pd);
}

static void on_indicators(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    server_t *s = pd->s;
    size_t n_defs;
    indicators_defs(&n_defs);
    indicator_t *ind = calloc(n_defs, sizeof *ind);
    s_rows_t rows;
    int rc = s_rows_new(&rows, n_defs, &medroute__v1__indicator_row__descriptor);
    if (!s_failed(pd, req, ind == NULL ? -ENOMEM : rc, "could not compute the indicators")) {
        size_t n = indicators_compute(s->conf->indicators, s->conf->n_indicators, req->tallies,
                                      req->n_tallies, &req->visits, ind);
        for (size_t i = 0; i < n; i++) {
            Medroute__V1__IndicatorRow *row = rows.ptrs[i];
            row->name = (char *)ind[i].def->name;
            row->title = (char *)ind[i].def->title;
            row->formula = (char *)ind[i].def->formula;
            row->unit = (char *)ind[i].def->unit;
            row->compare = ind[i].def->cmp == CMP_AT_LEAST ? ">=" : "<=";
            row->target = ind[i].target;
            row->warn = ind[i].warn;
            row->has_value = ind[i].has_value;
            row->value = ind[i].value;
            row->numerator = ind[i].numerator;
            row->denominator = ind[i].denominator;
            row->status = (char *)indicators_status_name(ind[i].status);
        }
        Medroute__V1__IndicatorsReply ir = MEDROUTE__V1__INDICATORS_REPLY__INIT;
        ir.period = pd->period.label;
        ir.first_day = pd->period.first;
        ir.last_day = pd->period.last;
        ir.n_indicators = n;
        ir.indicators = (Medroute__V1__IndicatorRow **)rows.ptrs;
        ir.visit_reports = (uint64_t)req->visits.reports;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_INDICATORS;
        r.indicators = &ir;
        s_answer(pd, &r);
    }
    s_rows_free(&rows);
    free(ind);
    s_pending_done(pd);
}

static void s_done(server_t *s, const uint8_t *rid, size_t rid_len, uint64_t request_id,
                   const char *detail)
{
    Medroute__V1__OpDone done = MEDROUTE__V1__OP_DONE__INIT;
    done.detail = (char *)detail;
    mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
    r.request_id = request_id;
    r.body_case = MEDROUTE__V1__OP_REPLY__BODY_DONE;
    r.done = &done;
    s_reply(s, rid, rid_len, &r);
}

static void on_backup(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    char detail[600];
    if (req->status == STORE_OK) {
        snprintf(detail, sizeof detail, "backup of %llu pages written to %s",
                 (unsigned long long)req->value, req->query);
        detail[mr_utf8_cut(detail, sizeof detail)] = '\0'; /* a long path, cut */
        char path[512]; /* the operator's text: cleaned, so it cannot forge log lines */
        log_info(pd->s->log, "store.backup", "to=\"%s\" pages=%llu",
                 log_clean(path, sizeof path, req->query), (unsigned long long)req->value);
        s_done(pd->s, pd->rid, pd->rid_len, pd->request_id, detail);
    } else {
        s_reply_error(pd->s, pd->rid, pd->rid_len, pd->request_id, MR_E_STORE_UNAVAILABLE,
                      "the backup failed (see the broker's log)");
    }
    s_pending_done(pd);
}

static void on_changed(store_req_t *req, void *arg)
{
    s_pending_t *pd = arg;
    server_t *s = pd->s;
    if (req->status == STORE_OK) {
        Medroute__V1__OpDone done = MEDROUTE__V1__OP_DONE__INIT;
        char detail[64];
        snprintf(detail, sizeof detail, "%s %llu", req->op == STORE_DROP ? "dropped" : "retried",
                 (unsigned long long)req->msg.seq);
        done.detail = detail;
        mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
        r.request_id = pd->request_id;
        r.body_case = MEDROUTE__V1__OP_REPLY__BODY_DONE;
        r.done = &done;
        s_reply(s, pd->rid, pd->rid_len, &r);
        log_info(s->log, "operator.queue_changed", "action=%s seq=%llu",
                 req->op == STORE_DROP ? "drop" : "retry", (unsigned long long)req->msg.seq);
        /* Tell the router, which keeps the pending counts and the memory
         * window: of a removed facility's message too (how operations.md has
         * them cleared), so that its count is right should it be added back
         * (its memory is forgotten already, and nothing is sent to it). */
        store_row_t *row = &req->rows[0];
        int peer = registry_find_any(s->registry, row->dest, strlen(row->dest));
        if (req->op == STORE_DROP) {
            s->counters.v[CNT_DEAD]++;
            if (peer >= 0)
                router_forget(s, peer, row->seq);
        } else if (peer >= 0) {
            router_on_retried(s, peer, row);
        }
    } else {
        s_reply_error(s, pd->rid, pd->rid_len, pd->request_id,
                      req->status == STORE_NOT_FOUND ? MR_E_INVALID : MR_E_STORE_UNAVAILABLE,
                      req->status == STORE_NOT_FOUND ? "no such message in that state"
                                                     : "the store is unavailable");
    }
    s_pending_done(pd);
}

/* Builds and submits the store request of q, whose reply comes from its
 * callback; or answers q at once: a field out of range, a body no case
 * here knows (a new one not handled yet), a stalled store, no memory. */
static void s_store_request(server_t *s, const uint8_t *rid, size_t rid_len,
                            const mr_op_request_t *q)
{
    int code = MR_E_INTERNAL;
    const char *reason = "out of memory";
    char why[160];
    store_req_t *req = NULL;
    s_pending_t *pd = s_pending(s, rid, rid_len, q->request_id);
    if (pd == NULL)
        goto refuse;
    switch (q->body_case) {
    case MEDROUTE__V1__OP_REQUEST__BODY_STATUS:
        req = store_req_new(STORE_SUMMARY, on_status_summary, pd);
        if (req == NULL)
            goto refuse;
        break;
    case MEDROUTE__V1__OP_REQUEST__BODY_STATS:
    case MEDROUTE__V1__OP_REQUEST__BODY_INDICATORS: {
        bool stats = q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_STATS;
        const char *period = stats ? q->stats->period : q->indicators->period;
        if (period_parse(period, mr_now_ms(), &pd->period) != 0) {
            code = MR_E_INVALID;
            reason = "period: today, yesterday, YYYY-MM-DD, YYYY-MM, YYYY-H1, YYYY-H2 or YYYY";
            goto refuse;
        }
        req = store_req_new(STORE_STATS, stats ? on_stats : on_indicators, pd);
        if (req == NULL)
            goto refuse;
        snprintf(req->first_day, sizeof req->first_day, "%s", pd->period.first);
        snprintf(req->last_day, sizeof req->last_day, "%s", pd->period.last);
        if (stats && q->stats->facility && q->stats->facility[0] &&
            (req->query = strdup(q->stats->facility)) == NULL)
            goto refuse;
        break;
    }
    case MEDROUTE__V1__OP_REQUEST__BODY_BACKUP:
        if (q->backup->path == NULL || q->backup->path[0] != '/') {
            code = MR_E_INVALID;
            reason = "backup.path must be an absolute path on the broker's machine";
            goto refuse;
        }
        req = store_req_new(STORE_BACKUP, on_backup, pd);
        if (req == NULL || (req->query = strdup(q->backup->path)) == NULL)
            goto refuse;
        break;
    case MEDROUTE__V1__OP_REQUEST__BODY_SLOTS:
        req = store_req_new(STORE_SLOTS, on_slots, pd);
        if (req == NULL)
            goto refuse;
        if (q->slots->date && q->slots->date[0] && (req->query = strdup(q->slots->date)) == NULL)
            goto refuse;
        break;
    case MEDROUTE__V1__OP_REQUEST__BODY_OPEN_LOOPS: {
        /* The operator's number: a negative age means nothing (and
         * INT64_MIN would overflow the subtraction below), nor does one from
         * before 1970.  0 is always "all". */
        int64_t now = mr_now_ms(), age = q->open_loops->older_than_ms;
        if (age < 0 || (age > 0 && age > now)) {
            code = MR_E_INVALID;
            reason = "open_loops.older_than_ms must be from 0 to the milliseconds since 1970";
            goto refuse;
        }
        req = store_req_new(STORE_OPEN, on_open_loops, pd);
        if (req == NULL)
            goto refuse;
        if (q->open_loops->facility && q->open_loops->facility[0] &&
            (req->query = strdup(q->open_loops->facility)) == NULL)
            goto refuse;
        req->older_than_ms = now - age;
        break;
    }
    case MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_LIST: {
        const Medroute__V1__QueueListRequest *l = q->queue_list;
        req = store_req_new(STORE_LIST, on_listed, pd);
        if (req == NULL)
            goto refuse;
        req->state = l->dead ? MSG_DEAD : MSG_PENDING;
        req->limit = l->limit == 0 ? S_LIST_DEFAULT : l->limit > S_LIST_MAX ? S_LIST_MAX : l->limit;
        if (l->destination && l->destination[0] && (req->msg.dest = strdup(l->destination)) == NULL)
            goto refuse;
        break;
    }
    case MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_RETRY:
        req = store_req_new(STORE_RETRY, on_changed, pd);
        if (req == NULL)
            goto refuse;
        req->msg.seq = q->queue_retry->seq;
        req->now_ms = mr_now_ms() + 3600 * 1000; /* a retried message gets at least an hour */
        break;
    case MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_DROP:
        req = store_req_new(STORE_DROP, on_changed, pd);
        if (req == NULL)
            goto refuse;
        req->msg.seq = q->queue_drop->seq;
        req->now_ms = mr_now_ms();
        if ((req->msg.dead_reason = strdup(q->queue_drop->reason && q->queue_drop->reason[0]
                                               ? q->queue_drop->reason
                                               : "dropped by operator")) == NULL)
            goto refuse;
        break;
    default:
        /* No body, or one this broker does not know (or handles nowhere). */
        code = MR_E_UNEXPECTED_FRAME;
        reason = "unknown operator request";
        goto refuse;
    }
    /* A stalled store would answer when it moves again, long after the
     * operator's tool has given up (and a retry or drop would then happen
     * unseen): say so now, as /healthz does. */
    int64_t stalled_ms = server_store_stalled_ms(s);
    if (stalled_ms > 0) {
        snprintf(why, sizeof why,
                 "the store is stalled: its oldest request has waited %lld s (store.stalled in "
                 "the log)",
                 (long long)(stalled_ms / 1000));
        code = MR_E_STORE_UNAVAILABLE;
        reason = why;
        goto refuse;
    }
    if (s_busy(s, rid, rid_len, why, sizeof why)) {
        code = MR_E_QUEUE_FULL;
        reason = why;
        goto refuse;
    }
    s_pending_wait(pd);
    store_submit(s->store, req);
    return;
refuse:
    if (req != NULL) {
        store_row_clear(&req->msg);
        free(req->query);
        free(req);
    }
    free(pd);
    s_reply_error(s, rid, rid_len, q->request_id, code, reason);
}

/* The operator's role: its key's (the User-Id, zap.c) in the configuration
 * of now, so that a reload that demotes or removes it takes effect on the
 * connections already open; plaintext (loopback only) counts as admin. */
static bool s_is_admin(const server_t *s)
{
    const char *key = endpoint_user_id(s->operator_ep);
    if (key == NULL)
        return s->conf->insecure;
    const conf_operator_t *o = conf_operator_of(s->conf, key);
    return o != NULL && o->admin;
}

void opapi_cron(server_t *s, int64_t mono_ms)
{
    lograte_tell(&s->op_reject_log, s->log, "operator.rejected_unlogged", NULL, mono_ms);
    lograte_tell(&s->op_send_log, s->log, "operator.send_failed_unlogged", NULL, mono_ms);
    lograte_tell(&s->op_security_log, s->log, "security.operator_unlogged", NULL, mono_ms);
}

void opapi_on_message(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                      const size_t *sizes, size_t n_parts, int truncated)
{
    server_t *s = arg;
    const char *key = endpoint_user_id(s->operator_ep);
    /* Each counted; their lines bounded apart from the refusals', which a
     * revoked key's requests add to: a tool in a loop with a revoked key
     * would otherwise fill the log (the count told by opapi_cron). */
    if (!s->conf->insecure && key == NULL) {
        s->counters.v[CNT_SECURITY_EVENTS]++;
        if (lograte_allow(&s->op_security_log, mr_mono_ms()))
            log_warn(s->log, "security.no_user_id", "endpoint=operator action=dropped");
        return;
    }
    if (key != NULL && conf_operator_of(s->conf, key) == NULL) {
        /* Admitted with a key a reload has since removed. */
        s->counters.v[CNT_SECURITY_EVENTS]++;
        if (lograte_allow(&s->op_security_log, mr_mono_ms()))
            log_warn(s->log, "security.revoked_key", "endpoint=operator key=%.8s action=refused",
                     key);
        s_reply_error(s, rid, rid_len, 0, MR_E_FORBIDDEN, "this key is no longer an operator's");
        return;
    }
    if (n_parts != 1 || truncated || sizes[0] > s->conf->max_message_bytes) {
        s_reply_error(s, rid, rid_len, 0, MR_E_MALFORMED, "expected one OpRequest frame");
        return;
    }
    mr_op_request_t *q = medroute__v1__op_request__unpack(NULL, sizes[0], parts[0]);
    if (q == NULL) {
        s_reply_error(s, rid, rid_len, 0, MR_E_MALFORMED, "frame does not decode as OpRequest");
        return;
    }
    mr_err_t bad = {0};
    if (q->version != MR_PROTOCOL_VERSION) {
        s_reply_error(s, rid, rid_len, q->request_id, MR_E_UNSUPPORTED_VERSION,
                      "unsupported protocol version");
    } else if (dispatch_check_utf8(&medroute__v1__op_request__descriptor, parts[0], sizes[0],
                                   &bad) != 0) {
        /* Its text would be stored (a drop's reason) or compared, and come
         * back to other operators and their tools, which expect UTF-8. */
        s_reply_error(s, rid, rid_len, q->request_id, bad.code, bad.reason);
    } else if ((q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_RETRY ||
                q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_QUEUE_DROP ||
                q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_RELOAD ||
                q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_BACKUP) &&
               !s_is_admin(s)) {
        s->counters.v[CNT_SECURITY_EVENTS]++;
        s_reply_error(s, rid, rid_len, q->request_id, MR_E_FORBIDDEN,
                      "this operator key is read-only; this request needs an admin key");
    } else if (q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_RELOAD) {
        char why[512];
        int rc = reload_config(s, why, sizeof why);
        if (rc == 0) {
            s_done(s, rid, rid_len, q->request_id, "reloaded");
        } else {
            why[mr_utf8_cut(why, sizeof why)] = '\0'; /* the config's error, cut */
            s_reply_error(s, rid, rid_len, q->request_id,
                          rc == -ESHUTDOWN ? MR_E_SHUTTING_DOWN : MR_E_INVALID, why);
        }
    } else if (q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_WATCH && q->watch != NULL &&
               q->watch->stop) {
        watch_unsubscribe(s, rid, rid_len);
        s_done(s, rid, rid_len, q->request_id, "unsubscribed");
    } else if (q->body_case == MEDROUTE__V1__OP_REQUEST__BODY_WATCH) {
        if (watch_subscribe(s, rid, rid_len, q->request_id, key,
                            endpoint_src_fd(s->operator_ep)) != 0)
            s_reply_error(s, rid, rid_len, q->request_id, MR_E_QUEUE_FULL,
                          "too many watchers");
        else {
            Medroute__V1__WatchEvent ev = MEDROUTE__V1__WATCH_EVENT__INIT;
            ev.at_ms = mr_now_ms();
            ev.kind = "subscribed";
            ev.text = "watching counters, escalations and indicator warnings";
            mr_op_reply_t r = MEDROUTE__V1__OP_REPLY__INIT;
            r.request_id = q->request_id;
            r.body_case = MEDROUTE__V1__OP_REPLY__BODY_WATCH;
            r.watch = &ev;
            s_reply(s, rid, rid_len, &r);
        }
    } else {
        s_store_request(s, rid, rid_len, q);
    }
    medroute__v1__op_request__free_unpacked(q, NULL);
}
