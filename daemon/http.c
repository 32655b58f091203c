/*
 * http.c - the operators' HTTP endpoints on the loop, through libmicrohttpd.
 *
 * Owns: the MHD daemon, a uv_poll on its epoll fd, a uv_timer for its
 * time-outs, a uv_timer for the deadline of the oldest suspended /metrics
 * request, the list of suspended requests (oldest first), each /metrics
 * request's context, and a record of each connection MHD holds (when its
 * request's head is due: S_HEAD_DEADLINE_MS).
 *
 * Invariants
 *   1. MHD_run is called whenever its epoll fd is readable, when its timer
 *      fires, and after a suspended connection is resumed.
 *   2. A /metrics request's context is freed once both MHD is done with it
 *      (on_completed) and its two store requests (the tallies, the queues:
 *      waiting counts them down) have answered, by whichever comes last:
 *      on_completed sets gone when the store still owes an answer.
 *   3. A context is on the suspended list exactly while its connection is
 *      suspended; it leaves the list to be resumed, once, by the first of:
 *      the store's last answer (200 with the metrics), its deadline
 *      (S_METRICS_DEADLINE_MS: 503, timed_out; the store's answers come
 *      later and only count down), or on_completed.  All three run on the
 *      loop thread, so "first" is well defined.
 *   4. The deadline timer runs while the list is not empty, due at its
 *      head's deadline (all deadlines are the same delay after a start, so
 *      the list is in deadline order).
 *
 * A /metrics request (answered 503 at once, never suspended, while the
 * store is known to be stalled: store_stalled_ms):
 *
 *   new -> suspended (on list) --store answered--> resumed -> 200/503 --+
 *              |                                                        |
 *              +--deadline--> resumed, timed_out -> 503 ----------------+
 *                                                                       v
 *                  on_completed: free if waiting == 0, else gone (the
 *                  store's last answer frees it)
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "flow.h"

/*
 * How long /metrics waits for the store.  The store answers in milliseconds,
 * in a few batches under load (its queue is bounded: flow.c); 5 s is well
 * beyond that, and half Prometheus' default scrape_timeout (10 s), so that
 * a scrape sees a 503 with a reason rather than its own time-out.  Without
 * it a stuck store kept every scrape's connection suspended, and
 * MHD_OPTION_CONNECTION_LIMIT's 64 of them took /healthz down too.
 */
enum { S_METRICS_DEADLINE_MS = 5000 };

/*
 * How long a connection may take to send a request's head (from its
 * connect, or from its last answer).  MHD's own time-out counts idleness
 * only: a client sending a byte now and then kept a connection for ever,
 * and 64 of them (MHD_OPTION_CONNECTION_LIMIT) kept /healthz from
 * answering.  A monitor on this machine sends its request in milliseconds.
 */
enum { S_HEAD_DEADLINE_MS = 10000, S_SWEEP_MS = 1000 };

typedef struct s_req_t s_req_t;
typedef struct s_conn_t s_conn_t;

/* A TCP connection MHD holds (its socket context), on http_t's list. */
struct s_conn_t {
    int fd;
    int64_t since_ms;      /* waiting for a request head since (mr_mono_ms()); 0: in one */
    bool cut;              /* shut down for taking too long */
    s_conn_t *prev, *next;
};

struct http_t {
    server_t *s;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t deadline;             /* invariant 4 */
    s_req_t *suspended, *suspended_tail; /* invariant 3, oldest first */
    s_conn_t *conns;                 /* every connection MHD holds */
    uint64_t cut_unlogged;           /* connections cut since the last http.slow_clients line */
    int64_t cut_logged_ms;
    int open_handles;
};

struct s_req_t {
    http_t *http;
    struct MHD_Connection *conn;
    int waiting;           /* store requests not yet answered */
    bool failed;
    bool gone;             /* MHD finished with the connection first */
    bool on_list;          /* suspended (invariant 3) */
    bool timed_out;        /* resumed by its deadline */
    int64_t deadline_ms;   /* mr_mono_ms() */
    s_req_t *prev, *next;  /* the suspended list */
    tally_row_t *rows;
    size_t n_rows;
    store_row_t *queues;
    size_t n_queues;
};

/* ---- text building ------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} s_text_t;

__attribute__((format(printf, 2, 3))) static void s_put(s_text_t *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int n = t->buf ? vsnprintf(t->buf + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 16384;
        while (n >= 0 && cap - t->len <= (size_t)n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (b == NULL) {
            t->oom = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static const struct {
    const char *name;
    const char *help;
} s_help[] = {
    {"messages_stored_total", "Messages committed to the store, by source, destination and kind."},
    {"messages_delivered_total", "Messages whose delivery ack was committed."},
    {"messages_duplicate_total", "Resends acknowledged again and not routed again."},
    {"messages_rejected_total", "Messages refused, by error code."},
    {"messages_redelivered_total", "Deliveries sent again (reconnect or time-out)."},
    {"messages_expired_total", "Messages that passed their time-to-live undelivered."},
    {"messages_dead_total", "Messages moved to the dead letters, by reason."},
    {"messages_retried_total", "Dead letters put back by an operator."},
    {"referrals_requested_total", "Referrals requested, by direction, source, destination, "
                                  "department and priority."},
    {"referral_departments_folded_total", "Referrals counted under department=\"_other\": "
                                          "their department was new once 256 were in use."},
    {"referral_outcomes_total", "Referral outcomes (accepted, rejected, completed, cancelled, "
                                "no_show, expired)."},
    {"referral_acceptance_seconds", "Time from referral request to acceptance."},
    {"capacity_offered_units_total", "Capacity units published by the lead hospital, net of "
                                     "later changes: a lowered capacity lowers it."},
    {"reserve_offered_units_total", "Units reserved for family-doctor referrals, net of later "
                                    "changes: a lowered reserve lowers it."},
    {"slot_claims_total", "Units taken by accepted up-referrals, by claim (reserved, general, none)."},
    {"slot_claims_released_total", "Claims given back (cancel, no-show, expiry)."},
    {"reserve_released_unclaimed_units_total", "Reserved units released to general use at the "
                                               "cut-off."},
    {"imaging_requests_total", "Imaging requests, by modality and source."},
    {"imaging_reports_total", "Imaging reports, by modality."},
    {"imaging_turnaround_seconds", "Time from imaging request to final report."},
    {"lab_orders_total", "Lab orders, by source."},
    {"lab_tests_ordered_total", "Lab tests ordered."},
    {"lab_results_total", "Lab results (partial, final, corrected)."},
    {"lab_result_items_total", "Lab result items reported."},
    {"lab_turnaround_seconds", "Time from lab order to final result."},
    {"critical_values_total", "Critical values and findings reported."},
    {"critical_readback_seconds", "Time from a critical report to its read-back."},
    {"escalations_total", "Service levels missed, by kind."},
};

/*
 * Tallies of changes that may be negative (a CapacityNotice that lowers a
 * published capacity adds the difference): their all-time sum goes down as
 * well as up, which a Prometheus counter must not, so they are shown as
 * gauges, under their names less "_total" (docs/indicators.md 1.2).
 */
static const char *const s_net_tallies[] = {"capacity_offered_units_total",
                                            "reserve_offered_units_total"};

static bool s_is_net(const char *name)
{
    for (size_t i = 0; i < sizeof s_net_tallies / sizeof s_net_tallies[0]; i++)
        if (strcmp(s_net_tallies[i], name) == 0)
            return true;
    return false;
}

static const char *s_help_of(const char *name)
{
    for (size_t i = 0; i < sizeof s_help / sizeof s_help[0]; i++)
        if (strcmp(s_help[i].name, name) == 0)
            return s_help[i].help;
    return "medroute tally.";
}

/* "a=\"1\",le=\"60\"" -> "a=\"1\"" and "60".  The label named le, found
 * label by label: the text le=" also ends role=" or module=".  Values hold
 * no quote (tally_label_value; facility ids), so each ends at the next one. */
static void s_split_le(const char *labels, char *rest, size_t len, char *le, size_t le_len)
{
    for (const char *p = labels; *p != '\0';) {
        const char *eq = strchr(p, '='); /* keys hold none */
        const char *end = eq != NULL && eq[1] == '"' ? strchr(eq + 2, '"') : NULL;
        if (end == NULL)
            break;
        if (eq - p == 2 && memcmp(p, "le", 2) == 0) {
            size_t head = (size_t)(p - labels);
            snprintf(rest, len, "%.*s", (int)(head > 0 ? head - 1 : 0), labels);
            snprintf(le, le_len, "%.*s", (int)(end - (eq + 2)), eq + 2);
            return;
        }
        p = end[1] == ',' ? end + 2 : end + 1;
    }
    snprintf(rest, len, "%s", labels);
    le[0] = '\0';
}

static int s_le_rank(const char *le)
{
    if (strcmp(le, "+Inf") == 0)
        return TALLY_BUCKETS - 1;
    long long v = atoll(le);
    for (int b = 0; b < TALLY_BUCKETS; b++)
        if (tally_bucket_le[b] == v)
            return b;
    return TALLY_BUCKETS - 1;
}

static bool s_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Whether rows[i] has the same name as the row before it. */
static bool s_same_name_as_previous(const tally_row_t *rows, size_t i)
{
    return i > 0 && strcmp(rows[i - 1].name, rows[i].name) == 0;
}

/* Histograms: cumulative buckets per label set, then _sum and _count.
 * rows are sorted by name, then labels (as tally_query gives them), so the
 * bucket rows of one label set follow each other: le="..." is their last
 * label.  Linear in the bucket rows (the loop thread waits meanwhile). */
static void s_histograms(s_text_t *t, const tally_row_t *rows, size_t n)
{
    char prev_rest[400] = "";
    for (size_t i = 0; i < n; i++) {
        if (!s_ends(rows[i].name, "_bucket"))
            continue;
        char base[96];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(rows[i].name) - 7), rows[i].name);
        char rest[400], le[24];
        s_split_le(rows[i].labels, rest, sizeof rest, le, sizeof le);
        /* Handle each (base, rest) once: at its first row. */
        bool typed = s_same_name_as_previous(rows, i);
        if (typed && strcmp(prev_rest, rest) == 0)
            continue;
        snprintf(prev_rest, sizeof prev_rest, "%s", rest);
        if (!typed)
            s_put(t, "# HELP medroute_%s %s\n# TYPE medroute_%s histogram\n", base,
                  s_help_of(base), base);
        int64_t counts[TALLY_BUCKETS] = {0};
        for (size_t j = i; j < n && strcmp(rows[j].name, rows[i].name) == 0; j++) {
            char r2[400], l2[24];
            s_split_le(rows[j].labels, r2, sizeof r2, l2, sizeof l2);
            if (strcmp(r2, rest) != 0)
                break;
            counts[s_le_rank(l2)] += rows[j].value;
        }
        int64_t cum = 0;
        for (int b = 0; b < TALLY_BUCKETS; b++) {
            cum += counts[b];
            char lev[24];
            if (tally_bucket_le[b] < 0)
                snprintf(lev, sizeof lev, "+Inf");
            else
                snprintf(lev, sizeof lev, "%lld", (long long)tally_bucket_le[b]);
            s_put(t, "medroute_%s_bucket{%s%sle=\"%s\"} %lld\n", base, rest, rest[0] ? "," : "",
                  lev, (long long)cum);
        }
        int64_t sum = 0, count = 0;
        char sname[112], cname[112];
        snprintf(sname, sizeof sname, "%s_sum", base);
        snprintf(cname, sizeof cname, "%s_count", base);
        for (size_t j = 0; j < n; j++) {
            if (strcmp(rows[j].labels, rest) != 0)
                continue;
            if (strcmp(rows[j].name, sname) == 0)
                sum += rows[j].value;
            else if (strcmp(rows[j].name, cname) == 0)
                count += rows[j].value;
        }
        s_put(t, "medroute_%s_sum{%s} %lld\nmedroute_%s_count{%s} %lld\n", base, rest,
              (long long)sum, base, rest, (long long)count);
    }
}

/* us as seconds, without trailing zeros: 50 -> "0.00005", 10000000 -> "10". */
static void s_seconds(char *out, size_t len, uint64_t us)
{
    int n = snprintf(out, len, "%llu.%06llu", (unsigned long long)(us / 1000000),
                     (unsigned long long)(us % 1000000));
    if (n <= 0 || (size_t)n >= len)
        return;
    while (out[n - 1] == '0')
        out[--n] = '\0';
    if (out[n - 1] == '.')
        out[n - 1] = '\0';
}

/* One durhist (since start) as a Prometheus histogram in seconds. */
static void s_durhist(s_text_t *t, const char *name, const char *help, const durhist_t *h)
{
    s_put(t, "# HELP medroute_%s %s\n# TYPE medroute_%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t b = 0; b < DURHIST_BUCKETS; b++) {
        char le[32] = "+Inf";
        if (b < DURHIST_BUCKETS - 1)
            s_seconds(le, sizeof le, durhist_le_us[b]);
        cum += h->counts[b];
        s_put(t, "medroute_%s_bucket{le=\"%s\"} %llu\n", name, le, (unsigned long long)cum);
    }
    char sum[32];
    s_seconds(sum, sizeof sum, h->sum_us);
    s_put(t, "medroute_%s_sum %s\nmedroute_%s_count %llu\n", name, sum[0] ? sum : "0", name,
          (unsigned long long)h->count);
}

char *http_metrics_text(const server_t *s, const tally_row_t *rows, size_t n,
                        const store_row_t *queues, size_t n_queues)
{
    s_text_t t = {0};
    /* Counters from the durable tallies (all time). */
    for (size_t i = 0; i < n; i++) {
        if (!s_ends(rows[i].name, "_total"))
            continue;
        bool net = s_is_net(rows[i].name);
        int len = (int)strlen(rows[i].name) - (net ? (int)strlen("_total") : 0);
        /* Sorted by name: a family's rows follow each other. */
        if (!s_same_name_as_previous(rows, i))
            s_put(&t, "# HELP medroute_%.*s %s\n# TYPE medroute_%.*s %s\n", len, rows[i].name,
                  s_help_of(rows[i].name), len, rows[i].name, net ? "gauge" : "counter");
        s_put(&t, "medroute_%.*s{%s} %lld\n", len, rows[i].name, rows[i].labels,
              (long long)rows[i].value);
    }
    s_histograms(&t, rows, n);
    /* Gauges: queues, connections, store. */
    int64_t now = mr_now_ms(), mono = mr_mono_ms();
    size_t nf = registry_count(s->registry);
    s_put(&t, "# HELP medroute_queue_depth Messages stored for a facility, not yet acknowledged.\n"
              "# TYPE medroute_queue_depth gauge\n");
    for (size_t i = 0; i < nf; i++) {
        uint64_t depth = 0;
        const char *id = registry_at(s->registry, i)->id;
        for (size_t q = 0; q < n_queues; q++)
            if (strcmp(queues[q].dest, id) == 0)
                depth = queues[q].count;
        s_put(&t, "medroute_queue_depth{destination=\"%s\"} %llu\n", id,
              (unsigned long long)depth);
    }
    s_put(&t, "# HELP medroute_queue_oldest_seconds Age of the oldest pending message.\n"
              "# TYPE medroute_queue_oldest_seconds gauge\n");
    for (size_t i = 0; i < nf; i++) {
        double age = 0;
        const char *id = registry_at(s->registry, i)->id;
        for (size_t q = 0; q < n_queues; q++)
            if (strcmp(queues[q].dest, id) == 0 && queues[q].stored_ms > 0)
                age = (double)(now - queues[q].stored_ms) / 1000.0;
        s_put(&t, "medroute_queue_oldest_seconds{destination=\"%s\"} %.3f\n", id, age);
    }
    s_put(&t, "# HELP medroute_facility_connected 1 while the facility has a session.\n"
              "# TYPE medroute_facility_connected gauge\n");
    for (size_t i = 0; i < nf; i++)
        s_put(&t, "medroute_facility_connected{facility=\"%s\"} %d\n",
              registry_at(s->registry, i)->id, s->peers[i].connected ? 1 : 0);
    s_put(&t, "# HELP medroute_facility_last_seen_seconds Time since the facility's last frame "
              "(-1: never).\n# TYPE medroute_facility_last_seen_seconds gauge\n");
    for (size_t i = 0; i < nf; i++)
        s_put(&t, "medroute_facility_last_seen_seconds{facility=\"%s\"} %.3f\n",
              registry_at(s->registry, i)->id,
              s->peers[i].heard_ms ? (double)(mono - s->peers[i].heard_ms) / 1000.0 : -1.0);
    s_put(&t, "# HELP medroute_store_bytes Size of the store on disk.\n"
              "# TYPE medroute_store_bytes gauge\nmedroute_store_bytes %llu\n",
          (unsigned long long)s->store_bytes);
    s_put(&t, "# HELP medroute_store_queue Requests queued for the store or in its open batch.\n"
              "# TYPE medroute_store_queue gauge\nmedroute_store_queue %zu\n"
              "# HELP medroute_store_queue_peak The longest store queue since start (intake "
              "pauses at 4 x store.batch_max).\n"
              "# TYPE medroute_store_queue_peak gauge\nmedroute_store_queue_peak %zu\n",
          s->store ? store_backlog(s->store) : 0, flow_peak(s->flow));
    if (s->store != NULL) {
        store_latency_t lat;
        store_latency(s->store, &lat);
        s_durhist(&t, "store_wait_seconds",
                  "Since start: a request's wait in the store's queue until its batch takes it.",
                  &lat.wait);
        s_durhist(&t, "store_commit_seconds",
                  "Since start: a batch's commit that wrote (its WAL write, and its sync under "
                  "synchronous = full).",
                  &lat.commit);
        s_durhist(&t, "store_put_seconds",
                  "Since start: a message from its submission to the store until its Ack can "
                  "go (wait, batch, commit, the loop's turn).",
                  &lat.put);
    }
    s_put(&t, "# HELP medroute_insecure 1 when links are plaintext (insecure = true).\n"
              "# TYPE medroute_insecure gauge\nmedroute_insecure %d\n",
          s->conf->insecure ? 1 : 0);
    s_put(&t, "# HELP medroute_flow_since_start_total Message flow since the daemon started.\n"
              "# TYPE medroute_flow_since_start_total counter\n");
    for (int c = 0; c < CNT_COUNT; c++)
        s_put(&t, "medroute_flow_since_start_total{counter=\"%s\"} %llu\n",
              counters_name((counter_t)c), (unsigned long long)s->counters.v[c]);
    if (t.oom) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

/* ---- MHD on the loop -------------------------------------------------------- */

static void s_run(http_t *h);

static void s_req_free(s_req_t *r)
{
    tally_rows_free(r->rows, r->n_rows);
    for (size_t i = 0; i < r->n_queues; i++)
        store_row_clear(&r->queues[i]);
    free(r->queues);
    free(r);
}

static void on_deadline(uv_timer_t *t);

/* Invariant 4: the deadline timer follows the list's head. */
static void s_arm(http_t *h)
{
    if (h->suspended == NULL) {
        (void)uv_timer_stop(&h->deadline); /* 0 always */
        return;
    }
    int64_t left = h->suspended->deadline_ms - mr_mono_ms();
    if (uv_timer_start(&h->deadline, on_deadline, left > 0 ? (uint64_t)left : 0, 0) != 0)
        log_error(h->s->log, "http.timer_failed", "timer=metrics_deadline");
}

static void s_suspend(http_t *h, s_req_t *r)
{
    MHD_suspend_connection(r->conn);
    r->deadline_ms = mr_mono_ms() + S_METRICS_DEADLINE_MS;
    r->on_list = true;
    r->next = NULL;
    r->prev = h->suspended_tail;
    if (h->suspended_tail)
        h->suspended_tail->next = r;
    else
        h->suspended = r;
    h->suspended_tail = r;
    if (h->suspended == r)
        s_arm(h);
}

/* Takes r off the list and resumes its connection (invariant 3); the
 * caller runs MHD (invariant 1). */
static void s_resume(http_t *h, s_req_t *r)
{
    bool was_head = h->suspended == r;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->suspended = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        h->suspended_tail = r->prev;
    r->prev = r->next = NULL;
    r->on_list = false;
    MHD_resume_connection(r->conn);
    if (was_head)
        s_arm(h);
}

static void on_deadline(uv_timer_t *t)
{
    http_t *h = t->data;
    int64_t now = mr_mono_ms();
    bool any = false;
    while (h->suspended != NULL && h->suspended->deadline_ms <= now) {
        s_req_t *r = h->suspended;
        r->timed_out = true; /* answered 503; the store's answers only count down */
        s_resume(h, r);
        any = true;
    }
    s_arm(h);
    if (any)
        s_run(h);
}

static void on_store(store_req_t *req, void *arg)
{
    s_req_t *r = arg;
    if (req->status != STORE_OK)
        r->failed = true;
    else if (req->op == STORE_STATS) {
        r->rows = req->tallies;
        r->n_rows = req->n_tallies;
        req->tallies = NULL;
        req->n_tallies = 0;
    } else {
        r->queues = req->rows;
        r->n_queues = req->n_rows;
        req->rows = NULL;
        req->n_rows = 0;
    }
    if (--r->waiting > 0)
        return;
    if (r->gone) {
        s_req_free(r);
        return;
    }
    if (!r->on_list)
        return; /* its deadline answered it; on_completed frees it */
    s_resume(r->http, r);
    s_run(r->http);
}

static enum MHD_Result s_respond(struct MHD_Connection *conn, unsigned code, const char *type,
                                 char *body, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, body ? MHD_RESPMEM_MUST_FREE
                                                        : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* 503 with a line of text saying why (an empty body if even that fails). */
__attribute__((format(printf, 2, 3))) static enum MHD_Result
s_unavailable(struct MHD_Connection *conn, const char *fmt, ...)
{
    char *body = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&body, fmt, ap);
    va_end(ap);
    if (n < 0)
        body = NULL;
    return s_respond(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body,
                     body ? (size_t)n : 0);
}

static char *s_healthz(const server_t *s, unsigned *code)
{
    size_t connected = 0;
    for (size_t i = 0; i < registry_count(s->registry); i++)
        connected += s->peers[i].connected;
    /* Stalled before unavailable: it is what the store is doing now (a
     * store stuck reopening a dying disk is both). */
    int64_t stalled_ms = server_store_stalled_ms(s);
    bool store_ok = s->store && !store_unavailable(s->store) && stalled_ms == 0;
    const char *store = stalled_ms ? "stalled" : store_ok ? "ok" : "unavailable";
    char stalled_s[48] = "";
    if (stalled_ms)
        snprintf(stalled_s, sizeof stalled_s, "\"store_stalled_s\":%lld,",
                 (long long)(stalled_ms / 1000));
    *code = store_ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    char *out = NULL;
    if (asprintf(&out,
                 "{\"status\":\"%s\",\"store\":\"%s\",%s\"insecure\":%s,%s\"facilities\":%zu,"
                 "\"connected\":%zu,\"draining\":%s}\n",
                 store_ok ? (s->conf->insecure ? "degraded" : "ok") : "unavailable", store,
                 stalled_s, s->conf->insecure ? "true" : "false",
                 s->conf->insecure ? "\"warning\":\"plaintext links (insecure = true)\"," : "",
                 registry_count(s->registry), connected, s->draining ? "true" : "false") < 0)
        return NULL;
    return out;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_size;
    http_t *h = cls;
    server_t *s = h->s;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci != NULL && ci->socket_context != NULL)
        ((s_conn_t *)ci->socket_context)->since_ms = 0; /* its head has come */
    if (strcmp(method, "GET") != 0)
        return s_respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", NULL, 0);
    if (strcmp(url, "/healthz") == 0) {
        unsigned code;
        char *body = s_healthz(s, &code);
        return s_respond(conn, code, "application/json", body, body ? strlen(body) : 0);
    }
    if (strcmp(url, "/metrics") != 0)
        return s_respond(conn, MHD_HTTP_NOT_FOUND, "text/plain", NULL, 0);
    s_req_t *r = *con_cls;
    int64_t stalled_ms = server_store_stalled_ms(s);
    if (r == NULL && stalled_ms > 0)
        /* Known stuck: said at once, rather than two more requests queued
         * behind the stuck batch and the deadline waited out. */
        return s_unavailable(conn,
                             "the store is stalled: its oldest request has waited %lld s "
                             "(store.stalled in the log)\n",
                             (long long)(stalled_ms / 1000));
    if (r == NULL) {
        /* First call: ask the store, suspend until it answers or the
         * deadline passes. */
        r = calloc(1, sizeof *r);
        store_req_t *q1 = store_req_new(STORE_STATS, on_store, r);
        store_req_t *q2 = store_req_new(STORE_SUMMARY, on_store, r);
        if (r == NULL || q1 == NULL || q2 == NULL || s->store == NULL) {
            free(q1);
            free(q2);
            free(r);
            return s_unavailable(conn, "%s\n", s->store ? "out of memory" : "no store");
        }
        r->http = h;
        r->conn = conn;
        r->waiting = 2;
        *con_cls = r;
        s_suspend(h, r);
        store_submit(s->store, q1);
        store_submit(s->store, q2);
        return MHD_YES;
    }
    if (r->timed_out || r->waiting > 0) /* waiting: resumed by http_destroy */
        return s_unavailable(conn,
                             "the store did not answer within %d s (its oldest request has "
                             "waited %lld s)\n",
                             S_METRICS_DEADLINE_MS / 1000,
                             (long long)(store_stalled_ms(s->store, 0) / 1000));
    if (r->failed)
        return s_unavailable(conn, "the store is unavailable\n");
    char *body = http_metrics_text(s, r->rows, r->n_rows, r->queues, r->n_queues);
    return s_respond(conn, body ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR,
                     "text/plain; version=0.0.4; charset=utf-8", body, body ? strlen(body) : 0);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    http_t *h = cls;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci != NULL && ci->socket_context != NULL)
        ((s_conn_t *)ci->socket_context)->since_ms = mr_mono_ms(); /* the next head, kept alive */
    s_req_t *r = *con_cls;
    if (r == NULL)
        return;
    *con_cls = NULL;
    if (r->on_list) /* MHD closed it while suspended (its own stop) */
        s_resume(h, r);
    if (r->waiting > 0)
        r->gone = true; /* the store's last answer frees it (invariant 2) */
    else
        s_req_free(r);
}

/* MHD's connections, each from its start to its close. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    http_t *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        s_conn_t *c = ci ? calloc(1, sizeof *c) : NULL;
        if (c == NULL)
            return; /* not watched: MHD's idle time-out still ends it */
        c->fd = ci->connect_fd;
        c->since_ms = mr_mono_ms();
        c->next = h->conns;
        if (h->conns)
            h->conns->prev = c;
        h->conns = c;
        *socket_context = c;
        return;
    }
    s_conn_t *c = *socket_context;
    if (c == NULL)
        return;
    *socket_context = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* Shuts down each connection that has taken longer than S_HEAD_DEADLINE_MS
 * to send a request's head: MHD sees its end at the next run and closes
 * it.  Counted, and said in one log line per 10 s at most. */
static void s_sweep(http_t *h)
{
    int64_t now = mr_mono_ms();
    for (s_conn_t *c = h->conns; c; c = c->next) {
        if (c->cut || c->since_ms == 0 || now - c->since_ms < S_HEAD_DEADLINE_MS)
            continue;
        if (shutdown(c->fd, SHUT_RDWR) == 0) {
            c->cut = true;
            h->cut_unlogged++;
        }
    }
    if (h->cut_unlogged > 0 && now - h->cut_logged_ms >= 10000) {
        log_warn(h->s->log, "http.slow_clients",
                 "cut=%llu reason=\"no request head within %d s\"",
                 (unsigned long long)h->cut_unlogged, S_HEAD_DEADLINE_MS / 1000);
        h->cut_unlogged = 0;
        h->cut_logged_ms = now;
    }
}

static void on_timer(uv_timer_t *t)
{
    s_run(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    s_run(p->data);
}

static void s_run(http_t *h)
{
    if (h->mhd == NULL)
        return;
    MHD_run(h->mhd);
    s_sweep(h);
    MHD_UNSIGNED_LONG_LONG timeout;
    if (MHD_get_timeout(h->mhd, &timeout) != MHD_YES || (h->conns && timeout > S_SWEEP_MS))
        timeout = S_SWEEP_MS; /* the sweep looks at least this often while connections wait */
    uv_timer_start(&h->timer, on_timer, timeout, 0);
}

http_t *http_new(server_t *s, const char *listen)
{
    struct sockaddr_in sa;
    if (conf_http_listen_parse(listen, &sa) != 0) { /* conf_load refused it already */
        log_error(s->log, "http.bad_listen", "listen=\"%s\"", listen);
        return NULL;
    }
    http_t *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->s = s;
    h->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
                              NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, &sa,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                              MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (h->mhd == NULL) {
        log_error(s->log, "http.start_failed", "listen=\"%s\"", listen);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL || uv_poll_init(&s->loop, &h->poll, info->epoll_fd) != 0) {
        MHD_stop_daemon(h->mhd);
        free(h);
        return NULL;
    }
    h->poll.data = h;
    h->open_handles++;
    if (uv_timer_init(&s->loop, &h->timer) != 0) {
        MHD_stop_daemon(h->mhd);
        h->mhd = NULL;
        http_destroy(&h);
        return NULL;
    }
    h->timer.data = h;
    h->open_handles++;
    if (uv_timer_init(&s->loop, &h->deadline) != 0) {
        MHD_stop_daemon(h->mhd);
        h->mhd = NULL;
        http_destroy(&h);
        return NULL;
    }
    h->deadline.data = h;
    h->open_handles++;
    uv_poll_start(&h->poll, UV_READABLE, on_poll);
    s_run(h);
    log_info(s->log, "http.listening", "listen=%s", listen);
    return h;
}

static void on_close(uv_handle_t *handle)
{
    http_t *h = handle->data;
    if (--h->open_handles == 0)
        free(h);
}

void http_destroy(http_t **self_p)
{
    http_t *h = *self_p;
    if (h == NULL)
        return;
    *self_p = NULL;
    /* MHD may not be stopped with connections suspended: resume them (their
     * contexts then go as invariant 2 says, from on_completed). */
    while (h->suspended != NULL)
        s_resume(h, h->suspended);
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    while (h->conns != NULL) { /* MHD tells each close; should one be left */
        s_conn_t *c = h->conns;
        h->conns = c->next;
        free(c);
    }
    /* Stopped and closed in the order http_new opened them (the poll
     * always): open_handles says how far it got. */
    int n = h->open_handles;
    (void)uv_poll_stop(&h->poll);
    uv_close((uv_handle_t *)&h->poll, on_close);
    if (n > 1) {
        (void)uv_timer_stop(&h->timer);
        uv_close((uv_handle_t *)&h->timer, on_close);
    }
    if (n > 2) {
        (void)uv_timer_stop(&h->deadline);
        uv_close((uv_handle_t *)&h->deadline, on_close);
    }
}
