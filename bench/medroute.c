/*
 * medroute.c - bench_medroute: the real medrouted under the issue-8 workload.
 *
 * Forks medrouted (MEDROUTED_PATH, or --daemon) with a generated config in
 * a new temporary directory: free loopback ports, N bench townships, the
 * lead hospital yx-lead (the receiver) and t-lishu (the offline facility of
 * the backlog).  Clients use libmedroute exactly as a facility would: each
 * sender thread has its own mr_client_t (memory outbox, no state_dir: the
 * benchmark measures the broker) and keeps at most --window messages
 * unacknowledged; the receiver thread acknowledges every delivery.
 *
 * Messages are referrals packed once per message to about BU_PAYLOAD bytes
 * (mr_client_submit_packed).  The message id carries the send time
 * ("b<sender>-<n>-<monotonic ns, hex>"), so both the Ack and the delivery
 * give a latency without a lookup.
 *
 * Modes
 *   throughput  senders as fast as their windows allow, for --duration-s
 *               after --warmup-s.  A message counts when its DeliveryAck is
 *               committed: the daemon's "delivered" counter (operator
 *               status) is read at the start and at the end.
 *   latency     the same at a total offered rate --rate (token bucket);
 *               send -> Ack and send -> delivery percentiles.
 *   backlog     --count referrals to t-lishu, offline, as fast as the
 *               windows allow; VmRSS/VmHWM of the daemon; SIGTERM, restart,
 *               time until status answers with every message pending;
 *               then t-lishu connects and drains for at most --drain-s.
 *   outbox      a burst: the daemon is stopped while every sender takes
 *               --count / N referrals into its outbox (the townships were
 *               offline all night); it starts, they all reconnect and
 *               flush at once; time until every Ack is in and until the
 *               receiver has every message, the daemon's RSS peak.
 *
 * --store adds settings to the daemon's store group, for experiments
 * (make bench runs the defaults but for synchronous).
 *
 * Prints one JSON line.  Threads: main (daemon, operator, measuring),
 * senders, receiver.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "durhist.h"
#include "medroute.h"
#include "medroute/v1/envelope.pb-c.h"

#ifndef MEDROUTED_PATH
#define MEDROUTED_PATH "medrouted"
#endif

#define S_MAX_SENDERS 64
#define S_LAT_MAX 20000000

typedef struct {
    const char *daemon_path;
    char dir[256];
    char conf[320];
    char log[320];
    char fac_ep[64];
    char op_ep[64];
    pid_t pid;
} s_daemon_t;

typedef struct {
    s_daemon_t *d;
    int senders;
    int window;
    double rate;               /* latency mode: total messages/s; 0: as fast as possible */
    long per_sender;           /* backlog: messages each sender submits; 0: unbounded */
    const char *dest;
    atomic_bool stop;
    atomic_bool measuring;
    atomic_ullong received;    /* deliveries the receiver's handler took */
    atomic_ullong acked;
    atomic_int ready;          /* clients welcomed */
    atomic_int failed;
    atomic_int done_senders;
} s_run_t;

typedef struct {
    s_run_t *run;
    int idx;
    char facility[32];
    bu_lat_t lat;
    uint64_t n;
    int rc;
} s_worker_t;

/* ---- the daemon ---------------------------------------------------------------- */

static int s_spawn(s_daemon_t *d)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl(d->daemon_path, "medrouted", "--config", d->conf, (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    return 0;
}

/* store_extra: more settings for the store group ("batch_ms = 2;"), for
 * experiments; "" in make bench, which runs the daemon's defaults. */
static int s_daemon_setup(s_daemon_t *d, int senders, const char *sync, int window,
                          const char *store_extra)
{
    snprintf(d->dir, sizeof d->dir, "%s/mrbench-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(d->dir) == NULL)
        return -errno;
    int p1 = bu_free_port(), p2 = bu_free_port();
    if (p1 < 0 || p2 < 0 || p1 == p2)
        return -EADDRINUSE;
    snprintf(d->fac_ep, sizeof d->fac_ep, "tcp://127.0.0.1:%d", p1);
    snprintf(d->op_ep, sizeof d->op_ep, "tcp://127.0.0.1:%d", p2);
    snprintf(d->conf, sizeof d->conf, "%s/medroute.conf", d->dir);
    snprintf(d->log, sizeof d->log, "%s/medrouted.log", d->dir);
    FILE *f = fopen(d->conf, "w");
    if (f == NULL)
        return -errno;
    /* Store settings are the defaults of config/medroute.conf but for
     * synchronous; the delivery window is the senders' window. */
    fprintf(f,
            "broker_id = \"bench\";\nfacility_endpoint = \"%s\";\noperator_endpoint = \"%s\";\n"
            "data_dir = \"%s/var\";\ninsecure = true;\nlog_level = \"info\";\n"
            "limits = { max_inflight = %d; rate_per_s = 1000000; rate_burst = 10000000;"
            " queue_quota = 100000000; };\n"
            "store = { synchronous = \"%s\"; %s };\n"
            "facilities = (\n"
            "  { id = \"yx-lead\"; role = \"lead\"; name = \"Yun County People's Hospital\"; },\n"
            "  { id = \"t-lishu\"; role = \"township\"; name = \"Lishu (offline in the backlog)\"; }",
            d->fac_ep, d->op_ep, d->dir, window, sync, store_extra);
    for (int i = 0; i < senders; i++)
        fprintf(f, ",\n  { id = \"t-bench%02d\"; role = \"township\"; }", i + 1);
    fprintf(f, "\n);\n");
    return fclose(f) == 0 ? 0 : -EIO;
}

/* Operator status as parsed JSON (caller decrefs), or NULL. */
static json_t *s_status(const s_daemon_t *d, int timeout_ms)
{
    mr_operator_t *op = mr_operator_new(d->op_ep);
    if (op == NULL)
        return NULL;
    char *reply = NULL, err[256];
    json_t *j = NULL;
    if (mr_operator_call_json(op, "{\"status\":{}}", &reply, timeout_ms, err, sizeof err) == 0)
        j = json_loads(reply, 0, NULL);
    free(reply);
    mr_operator_destroy(&op);
    return j;
}

static unsigned long long s_json_u64(const json_t *v)
{
    if (json_is_integer(v))
        return (unsigned long long)json_integer_value(v);
    if (json_is_string(v))
        return strtoull(json_string_value(v), NULL, 10);
    return 0;
}

static unsigned long long s_counter(const json_t *st, const char *name)
{
    json_t *cs = json_object_get(json_object_get(st, "status"), "counters");
    size_t i;
    json_t *c;
    json_array_foreach(cs, i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return s_json_u64(json_object_get(c, "value"));
    }
    return 0;
}

/* The histogram name of the status (durhist.h) over a window: its counts in
 * b less those in a.  All zero when either has none. */
static void s_window_hist(const json_t *a, const json_t *b, const char *name, durhist_t *out)
{
    memset(out, 0, sizeof *out);
    json_t *h[2] = {NULL, NULL};
    const json_t *st[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        json_t *ls = json_object_get(json_object_get(st[k], "status"), "latencies");
        size_t i;
        json_t *l;
        json_array_foreach(ls, i, l)
        {
            const char *n = json_string_value(json_object_get(l, "name"));
            if (n != NULL && strcmp(n, name) == 0)
                h[k] = json_object_get(l, "bucket_count");
        }
    }
    if (json_array_size(h[0]) != DURHIST_BUCKETS || json_array_size(h[1]) != DURHIST_BUCKETS)
        return;
    for (size_t i = 0; i < DURHIST_BUCKETS; i++) {
        unsigned long long c0 = s_json_u64(json_array_get(h[0], i));
        unsigned long long c1 = s_json_u64(json_array_get(h[1], i));
        out->counts[i] = c1 > c0 ? c1 - c0 : 0;
        out->count += out->counts[i];
    }
}

/* ,"NAME_p50_us":..,"NAME_p99_us":..,"NAME_p999_us":.. of the window. */
static void s_window_json(const json_t *a, const json_t *b, const char *name)
{
    durhist_t h;
    s_window_hist(a, b, name, &h);
    printf(",\"%s_n\":%llu,\"%s_p50_us\":%llu,\"%s_p99_us\":%llu,\"%s_p999_us\":%llu", name,
           (unsigned long long)h.count, name,
           (unsigned long long)durhist_quantile_us(&h, 0.50), name,
           (unsigned long long)durhist_quantile_us(&h, 0.99), name,
           (unsigned long long)durhist_quantile_us(&h, 0.999));
}

static unsigned long long s_pending(const json_t *st, const char *facility)
{
    json_t *fs = json_object_get(json_object_get(st, "status"), "facilities");
    size_t i;
    json_t *f;
    json_array_foreach(fs, i, f)
    {
        const char *id = json_string_value(json_object_get(f, "facility_id"));
        if (id != NULL && strcmp(id, facility) == 0)
            return s_json_u64(json_object_get(f, "pending"));
    }
    return 0;
}

/* Waits until the operator endpoint answers; the time it took (s) or -1. */
static double s_wait_ready(s_daemon_t *d, int timeout_ms, const char *facility,
                           unsigned long long pending)
{
    uint64_t t0 = bu_now_ns();
    while (bu_now_ns() - t0 < (uint64_t)timeout_ms * 1000000ULL) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            return -1;
        }
        /* a status request counts pending messages in the store: give it time */
        json_t *st = s_status(d, 10000);
        if (st != NULL) {
            bool ok = facility == NULL || s_pending(st, facility) >= pending;
            json_decref(st);
            if (ok)
                return (double)(bu_now_ns() - t0) / 1e9;
        } else {
            bu_sleep_ms(5);
        }
    }
    return -1;
}

/* SIGTERM and wait; seconds it took to exit, or -1 (then it was killed). */
static double s_daemon_stop(s_daemon_t *d)
{
    if (d->pid <= 0)
        return -1;
    uint64_t t0 = bu_now_ns();
    kill(d->pid, SIGTERM);
    for (int i = 0; i < 3000; i++) {
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
            d->pid = 0;
            return (double)(bu_now_ns() - t0) / 1e9;
        }
        bu_sleep_ms(10);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    return -1;
}

static void s_daemon_cleanup(s_daemon_t *d, bool keep)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
    if (keep || d->dir[0] == '\0')
        return;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_medroute: could not remove %s\n", d->dir);
}

/* ---- messages ---------------------------------------------------------------------- */

/* The send time a message id carries (after its last '-'), 0 if none. */
static uint64_t s_id_time(const char *id)
{
    const char *dash = id ? strrchr(id, '-') : NULL;
    return dash ? strtoull(dash + 1, NULL, 16) : 0;
}

typedef struct {
    Medroute__V1__Envelope env;
    Medroute__V1__Referral ref;
    Medroute__V1__Patient pat;
    Medroute__V1__PatientIdentifier pid;
    Medroute__V1__PatientIdentifier *pids[1];
    Medroute__V1__Code reason;
    Medroute__V1__Code *reasons[1];
    char summary[BU_PAYLOAD];
    char id[65];
    char ref_id[40];          /* a referral number is unique per source */
    uint8_t buf[2 * BU_PAYLOAD];
} s_msg_t;

static void s_msg_init(s_msg_t *m, const char *source, const char *dest)
{
    medroute__v1__envelope__init(&m->env);
    medroute__v1__referral__init(&m->ref);
    medroute__v1__patient__init(&m->pat);
    medroute__v1__patient_identifier__init(&m->pid);
    medroute__v1__code__init(&m->reason);
    m->pid.system = "cn-resident-id";
    m->pid.value = "530922199001011234";
    m->pids[0] = &m->pid;
    m->pat.n_identifiers = 1;
    m->pat.identifiers = m->pids;
    m->pat.name = "Bench Patient";
    m->pat.birth_date = "1990-01-01";
    m->pat.sex = MEDROUTE__V1__SEX__SEX_FEMALE;
    m->reason.system = "ICD-10";
    m->reason.code = "I20.0";
    m->reason.display = "Unstable angina";
    m->reasons[0] = &m->reason;
    snprintf(m->ref_id, sizeof m->ref_id, "R00-%llx", 1ULL << 20);
    m->ref.referral_id = m->ref_id;
    m->ref.patient = &m->pat;
    m->ref.n_reasons = 1;
    m->ref.reasons = m->reasons;
    m->ref.service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC;
    m->ref.department = "cardiology";
    m->ref.referring_practitioner = "Dr. Bench";
    m->ref.clinical_summary = m->summary;
    m->env.source = (char *)source;
    m->env.destination = (char *)dest;
    m->env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    m->env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    m->env.referral = &m->ref;
    m->env.message_id = m->id;
    m->env.created_at_ms = 1700000000000LL;
    /* pad the summary so that the packed envelope is about BU_PAYLOAD bytes */
    snprintf(m->id, sizeof m->id, "b00-%llx-%llx", 1ULL << 20, (unsigned long long)bu_now_ns());
    m->summary[0] = '\0';
    size_t base = protobuf_c_message_get_packed_size(&m->env.base);
    size_t pad = base + 3 < BU_PAYLOAD ? BU_PAYLOAD - base - 3 : 0;
    memset(m->summary, 'x', pad);
    m->summary[pad] = '\0';
}

/* Packs the next message (id with the current time); its length. */
static size_t s_msg_next(s_msg_t *m, int sender, uint64_t n, uint64_t now_ns)
{
    snprintf(m->id, sizeof m->id, "b%02d-%llx-%llx", sender, (unsigned long long)n,
             (unsigned long long)now_ns);
    snprintf(m->ref_id, sizeof m->ref_id, "R%02d-%llx", sender, (unsigned long long)n);
    return protobuf_c_message_pack(&m->env.base, m->buf);
}

/* ---- clients ------------------------------------------------------------------------- */

static mr_client_t *s_client(s_run_t *run, const char *facility)
{
    mr_client_opts_t o = {
        .endpoint = run->d->fac_ep,
        .facility = facility,
        .client_name = "bench",
        .max_inflight = (uint32_t)run->window,
        .ack_timeout_ms = 60000, /* no resends while the broker is saturated */
    };
    mr_client_t *c = mr_client_new(&o);
    if (c == NULL)
        return NULL;
    if (mr_client_wait_connected(c, 10000) != 0) {
        mr_client_destroy(&c);
        return NULL;
    }
    return c;
}

static int on_sender_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    s_worker_t *w = arg;
    (void)c;
    if (ev->type == MR_EVENT_ACK) {
        atomic_fetch_add(&w->run->acked, 1);
        if (atomic_load(&w->run->measuring))
            bu_lat_add(&w->lat, bu_now_ns() - s_id_time(ev->message_id));
    } else if (ev->type == MR_EVENT_ERROR) {
        atomic_fetch_add(&w->run->failed, 1);
        fprintf(stderr, "bench_medroute: %s: error %s: %s\n", w->facility, ev->code_name,
                ev->reason);
    }
    return 0;
}

static void *s_sender(void *arg)
{
    s_worker_t *w = arg;
    (void)pthread_setname_np(pthread_self(), "bench-sender");
    s_run_t *run = w->run;
    mr_client_t *c = s_client(run, w->facility);
    if (c == NULL) {
        w->rc = -1;
        atomic_fetch_add(&run->failed, 1);
        atomic_fetch_add(&run->done_senders, 1);
        return NULL;
    }
    atomic_fetch_add(&run->ready, 1);
    s_msg_t *m = calloc(1, sizeof *m);
    s_msg_init(m, w->facility, run->dest);
    bu_pace_t pace;
    bu_pace_init(&pace, run->rate / run->senders);
    bool counted = false;
    while (!atomic_load(&run->stop)) {
        int timeout = 100;
        while (mr_client_unacked(c) < (size_t)run->window &&
               (run->per_sender == 0 || w->n < (uint64_t)run->per_sender)) {
            if (run->rate > 0) {
                uint64_t wait = bu_pace_wait_ns(&pace);
                if (wait >= 1000000) { /* up to 1 ms early: no spinning */
                    timeout = (int)(wait / 1000000);
                    break;
                }
                bu_pace_take(&pace);
            }
            size_t len = s_msg_next(m, w->idx, ++w->n, bu_now_ns());
            int rc = mr_client_submit_packed(c, m->id, m->buf, len);
            if (rc < 0) {
                fprintf(stderr, "bench_medroute: submit: %s\n", strerror(-rc));
                w->rc = rc;
                goto out;
            }
        }
        if (!counted && run->per_sender > 0 && w->n >= (uint64_t)run->per_sender &&
            mr_client_unacked(c) == 0) {
            counted = true; /* all of ours are acknowledged */
            atomic_fetch_add(&run->done_senders, 1);
        }
        int rc = mr_client_poll(c, timeout, on_sender_event, w);
        if (rc < 0 && rc != -EINTR) {
            w->rc = rc;
            break;
        }
    }
out:
    if (!counted)
        atomic_fetch_add(&run->done_senders, 1);
    free(m);
    mr_client_destroy(&c);
    return NULL;
}

static int on_delivery(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    s_worker_t *w = arg;
    (void)c;
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    if (atomic_load(&w->run->measuring))
        bu_lat_add(&w->lat, bu_now_ns() - s_id_time(ev->message_id));
    atomic_fetch_add(&w->run->received, 1);
    return 0;
}

static void *s_receiver(void *arg)
{
    s_worker_t *w = arg;
    (void)pthread_setname_np(pthread_self(), "bench-receiver");
    s_run_t *run = w->run;
    mr_client_t *c = s_client(run, w->facility);
    if (c == NULL) {
        w->rc = -1;
        atomic_fetch_add(&run->failed, 1);
        return NULL;
    }
    atomic_fetch_add(&run->ready, 1);
    while (!atomic_load(&run->stop)) {
        int rc = mr_client_poll(c, 100, on_delivery, w);
        if (rc < 0 && rc != -EINTR) {
            w->rc = rc;
            break;
        }
    }
    mr_client_destroy(&c);
    return NULL;
}

static bool s_wait_count(atomic_int *v, int want, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 10; i++) {
        if (atomic_load(v) >= want)
            return true;
        bu_sleep_ms(10);
    }
    return atomic_load(v) >= want;
}

/* Starts run->senders threads running fn, each on its worker t-benchNN,
 * keeping up to lat_max latency samples. */
static void s_start_senders(s_run_t *run, s_worker_t *snd, pthread_t *st, void *(*fn)(void *),
                            size_t lat_max)
{
    for (int i = 0; i < run->senders; i++) {
        snd[i].run = run;
        snd[i].idx = i + 1;
        snprintf(snd[i].facility, sizeof snd[i].facility, "t-bench%02d", i + 1);
        bu_lat_init(&snd[i].lat, lat_max);
        pthread_create(&st[i], NULL, fn, &snd[i]);
    }
}

/* ---- modes ---------------------------------------------------------------------------- */

static int s_flow(s_run_t *run, const char *mode, const char *sync, double warmup,
                  double duration)
{
    s_worker_t rcv = {.run = run};
    snprintf(rcv.facility, sizeof rcv.facility, "yx-lead");
    bu_lat_init(&rcv.lat, S_LAT_MAX);
    s_worker_t *snd = calloc((size_t)run->senders, sizeof *snd);
    pthread_t rt, st[S_MAX_SENDERS];
    pthread_create(&rt, NULL, s_receiver, &rcv);
    if (!s_wait_count(&run->ready, 1, 10000))
        fprintf(stderr, "bench_medroute: receiver did not connect\n");
    s_start_senders(run, snd, st, s_sender, S_LAT_MAX / (size_t)run->senders);
    bu_sleep_ms((int)(warmup * 1000));
    json_t *a = s_status(run->d, 5000);
    bu_cpu_t cpu0 = {0}, cpu1 = {0}, own0 = {0}, own1 = {0};
    bu_proc_cpu(run->d->pid, &cpu0);
    bu_proc_cpu(getpid(), &own0);
    atomic_store(&run->measuring, true);
    uint64_t t0 = bu_now_ns();
    unsigned long long rcv0 = atomic_load(&run->received), ack0 = atomic_load(&run->acked);
    bu_sleep_ms((int)(duration * 1000));
    atomic_store(&run->measuring, false);
    unsigned long long rcv1 = atomic_load(&run->received), ack1 = atomic_load(&run->acked);
    json_t *b = s_status(run->d, 5000);
    bu_proc_cpu(run->d->pid, &cpu1);
    bu_proc_cpu(getpid(), &own1);
    uint64_t t1 = bu_now_ns();
    atomic_store(&run->stop, true);
    for (int i = 0; i < run->senders; i++)
        pthread_join(st[i], NULL);
    pthread_join(rt, NULL);
    long rss = 0, hwm = 0;
    bu_proc_mem(run->d->pid, &rss, &hwm);

    double secs = (double)(t1 - t0) / 1e9;
    unsigned long long d0 = a ? s_counter(a, "delivered") : 0;
    unsigned long long d1 = b ? s_counter(b, "delivered") : 0;
    bu_lat_t ack;
    bu_lat_init(&ack, SIZE_MAX);
    int rc = rcv.rc;
    for (int i = 0; i < run->senders; i++) {
        bu_lat_merge(&ack, &snd[i].lat);
        bu_lat_close(&snd[i].lat);
        rc |= snd[i].rc;
    }
    bool ok = rc == 0 && a && b && d1 > d0 && atomic_load(&run->failed) == 0;
    printf("{\"bench\":\"medroute\",\"mode\":\"%s\",\"sync\":\"%s\",\"senders\":%d,"
           "\"window\":%d,\"payload\":%d,\"offered_per_s\":%.0f,\"secs\":%.3f,"
           "\"msgs\":%llu,\"msgs_per_s\":%.0f,\"acked_per_s\":%.0f,\"received_per_s\":%.0f,"
           "\"daemon_rss_kb\":%ld,\"daemon_hwm_kb\":%ld",
           mode, sync, run->senders, run->window, BU_PAYLOAD, run->rate, secs, d1 - d0,
           (double)(d1 - d0) / secs, (double)(ack1 - ack0) / secs,
           (double)(rcv1 - rcv0) / secs, rss, hwm);
    bu_lat_json(stdout, "ack", &ack);
    bu_lat_json(stdout, "dlv", &rcv.lat);
    bu_cpu_json(stdout, "daemon_cpu_us_per_msg", &cpu0, &cpu1, (double)(d1 - d0));
    bu_cpu_json(stdout, "clients_cpu_us_per_msg", &own0, &own1, (double)(d1 - d0));
    /* The daemon's own view of the window (store_latency), estimates exact
     * to its buckets: where a message's time to its Ack goes. */
    s_window_json(a, b, "store_wait");
    s_window_json(a, b, "store_commit");
    s_window_json(a, b, "store_put");
    printf(",\"ok\":%s}\n", ok ? "true" : "false");
    bu_lat_close(&ack);
    bu_lat_close(&rcv.lat);
    json_decref(a);
    json_decref(b);
    free(snd);
    return ok ? 0 : 1;
}

static int s_backlog(s_run_t *run, long count, double fill_max, double drain_max)
{
    s_daemon_t *d = run->d;
    s_worker_t *snd = calloc((size_t)run->senders, sizeof *snd);
    pthread_t st[S_MAX_SENDERS];
    run->dest = "t-lishu";
    run->per_sender = (count + run->senders - 1) / run->senders;
    long total = run->per_sender * run->senders;
    long rss_fill_peak = 0, hwm = 0, rss = 0;
    uint64_t t0 = bu_now_ns();
    s_start_senders(run, snd, st, s_sender, 0);
    /* filling: until every sender has all of its messages acknowledged */
    bool filled = false;
    while ((double)(bu_now_ns() - t0) / 1e9 < fill_max) {
        if (atomic_load(&run->done_senders) >= run->senders) {
            filled = atomic_load(&run->failed) == 0;
            break;
        }
        if (bu_proc_mem(d->pid, &rss, &hwm) == 0 && rss > rss_fill_peak)
            rss_fill_peak = rss;
        bu_sleep_ms(100);
    }
    double fill_s = (double)(bu_now_ns() - t0) / 1e9;
    unsigned long long accepted = atomic_load(&run->acked);
    atomic_store(&run->stop, true);
    for (int i = 0; i < run->senders; i++)
        pthread_join(st[i], NULL);
    atomic_store(&run->stop, false);

    /* queued, senders gone */
    bu_sleep_ms(500);
    long rss_queued = 0, hwm_queued = 0;
    bu_proc_mem(d->pid, &rss_queued, &hwm_queued);
    json_t *st0 = s_status(d, 5000);
    unsigned long long pending0 = st0 ? s_pending(st0, "t-lishu") : 0;
    json_decref(st0);
    /* The files themselves (the status's store_bytes is sampled by the
     * daemon's cron and may be seconds old). */
    long long store_bytes = 0;
    static const char *const files[] = {"medroute.db", "medroute.db-wal"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[sizeof d->dir + 64];
        struct stat sb;
        snprintf(path, sizeof path, "%s/var/%s", d->dir, files[i]);
        if (stat(path, &sb) == 0)
            store_bytes += (long long)sb.st_size;
    }

    /* restart with them pending */
    double stop_s = s_daemon_stop(d);
    uint64_t tr = bu_now_ns();
    double ready_s = -1;
    if (s_spawn(d) == 0)
        ready_s = s_wait_ready(d, 60000, "t-lishu", pending0);
    (void)tr;
    long rss_ready = 0, hwm_ready = 0;
    bu_proc_mem(d->pid, &rss_ready, &hwm_ready);

    /* drain: t-lishu connects */
    s_worker_t rcv = {.run = run};
    snprintf(rcv.facility, sizeof rcv.facility, "t-lishu");
    bu_lat_init(&rcv.lat, 0);
    atomic_store(&run->ready, 0);
    json_t *a = s_status(d, 5000);
    unsigned long long dl0 = a ? s_counter(a, "delivered") : 0;
    json_decref(a);
    uint64_t td = bu_now_ns();
    pthread_t rt;
    pthread_create(&rt, NULL, s_receiver, &rcv);
    /* Progress from the receiver's own count: status requests query the
     * store and would compete with the drain; one at the end. */
    long rss_drain_peak = 0;
    unsigned long long got = 0, dl1 = dl0, left = pending0;
    while ((double)(bu_now_ns() - td) / 1e9 < drain_max && ready_s >= 0) {
        bu_sleep_ms(50);
        if (bu_proc_mem(d->pid, &rss, &hwm) == 0 && rss > rss_drain_peak)
            rss_drain_peak = rss;
        got = atomic_load(&run->received);
        if (got >= pending0)
            break;
    }
    double drain_s = (double)(bu_now_ns() - td) / 1e9;
    atomic_store(&run->stop, true);
    pthread_join(rt, NULL);
    bu_proc_mem(d->pid, &rss, &hwm);
    json_t *b = s_status(d, 10000);
    if (b != NULL) {
        dl1 = s_counter(b, "delivered");
        left = s_pending(b, "t-lishu");
        json_decref(b);
    }

    bool ok = filled && ready_s >= 0 && pending0 == (unsigned long long)total;
    printf("{\"bench\":\"medroute\",\"mode\":\"backlog\",\"sync\":\"full\",\"senders\":%d,"
           "\"window\":%d,\"payload\":%d,\"count\":%ld,\"accepted\":%llu,\"fill_complete\":%s,"
           "\"fill_s\":%.3f,\"fill_per_s\":%.0f,\"rss_fill_peak_kb\":%ld,"
           "\"rss_queued_kb\":%ld,\"hwm_queued_kb\":%ld,\"pending\":%llu,\"store_bytes\":%lld,"
           "\"stop_s\":%.3f,\"ready_s\":%.3f,\"rss_ready_kb\":%ld,\"drained\":%llu,"
           "\"received\":%llu,\"drain_s\":%.3f,\"drain_per_s\":%.0f,\"drain_complete\":%s,"
           "\"pending_after\":%llu,\"rss_drain_peak_kb\":%ld,\"hwm_after_restart_kb\":%ld,"
           "\"ok\":%s}\n",
           run->senders, run->window, BU_PAYLOAD, total, accepted, filled ? "true" : "false",
           fill_s, (double)accepted / fill_s, rss_fill_peak, rss_queued, hwm_queued, pending0,
           store_bytes, stop_s, ready_s, rss_ready, dl1 - dl0, got, drain_s,
           (double)got / drain_s, got >= pending0 ? "true" : "false", left, rss_drain_peak, hwm,
           ok ? "true" : "false");
    free(snd);
    return ok ? 0 : 1;
}

/* A sender whose facility was offline: its client is made before the
 * daemon runs, takes per_sender submissions into its outbox, then polls
 * until the daemon has acknowledged all of them. */
static void *s_offline_sender(void *arg)
{
    s_worker_t *w = arg;
    (void)pthread_setname_np(pthread_self(), "bench-sender");
    s_run_t *run = w->run;
    mr_client_opts_t o = {
        .endpoint = run->d->fac_ep,
        .facility = w->facility,
        .client_name = "bench",
        .max_inflight = (uint32_t)run->window,
        /* the library's default Ack time-out: resends the burst causes count */
    };
    /* Counted in done_senders once all are acknowledged, but alive until the
     * end, so that its CPU time is still there to be read. */
    bool counted = false;
    mr_client_t *c = mr_client_new(&o);
    s_msg_t *m = calloc(1, sizeof *m);
    w->rc = c == NULL || m == NULL ? -ENOMEM : 0;
    if (w->rc == 0)
        s_msg_init(m, w->facility, run->dest);
    for (long i = 0; w->rc == 0 && i < run->per_sender; i++) {
        size_t len = s_msg_next(m, w->idx, ++w->n, bu_now_ns());
        w->rc = mr_client_submit_packed(c, m->id, m->buf, len);
    }
    if (w->rc < 0)
        atomic_fetch_add(&run->failed, 1);
    atomic_fetch_add(&run->ready, 1);
    while (w->rc == 0 && !atomic_load(&run->stop)) {
        if (!counted && mr_client_unacked(c) == 0) {
            counted = true;
            atomic_fetch_add(&run->done_senders, 1);
        }
        int rc = mr_client_poll(c, 100, on_sender_event, w);
        if (rc < 0 && rc != -EINTR) {
            w->rc = rc;
            break;
        }
    }
    if (!counted)
        atomic_fetch_add(&run->done_senders, 1);
    free(m);
    mr_client_destroy(&c);
    return NULL;
}

/* Every sender was offline with count/senders messages in its outbox; the
 * daemon starts; time until all are acknowledged and delivered. */
static int s_outbox(s_run_t *run, long count, double max_s)
{
    s_daemon_t *d = run->d;
    if (s_daemon_stop(d) < 0)
        return 1;
    run->per_sender = (count + run->senders - 1) / run->senders;
    long total = run->per_sender * run->senders;
    s_worker_t *snd = calloc((size_t)run->senders, sizeof *snd);
    pthread_t st[S_MAX_SENDERS], rt;
    s_start_senders(run, snd, st, s_offline_sender, 0);
    s_wait_count(&run->ready, run->senders, 60000);
    atomic_store(&run->ready, 0);
    bu_cpu_t own0 = {0}, own1 = {0}, cpu0 = {0}, cpu1 = {0};
    bu_proc_cpu(getpid(), &own0);
    uint64_t t0 = bu_now_ns();
    if (s_spawn(d) != 0) {
        atomic_store(&run->stop, true);
        for (int i = 0; i < run->senders; i++)
            pthread_join(st[i], NULL);
        free(snd);
        return 1;
    }
    s_worker_t rcv = {.run = run};
    snprintf(rcv.facility, sizeof rcv.facility, "yx-lead");
    bu_lat_init(&rcv.lat, 0);
    pthread_create(&rt, NULL, s_receiver, &rcv);
    long rss = 0, hwm = 0, peak = 0;
    double acked_s = -1, recv_s = -1;
    while ((double)(bu_now_ns() - t0) / 1e9 < max_s) {
        bu_sleep_ms(20);
        if (bu_proc_mem(d->pid, &rss, &hwm) == 0 && rss > peak)
            peak = rss;
        double t = (double)(bu_now_ns() - t0) / 1e9;
        if (acked_s < 0 && atomic_load(&run->done_senders) >= run->senders)
            acked_s = t;
        if (recv_s < 0 && atomic_load(&run->received) >= (unsigned long long)total)
            recv_s = t;
        if (acked_s >= 0 && recv_s >= 0)
            break;
    }
    bu_proc_cpu(getpid(), &own1);
    bu_proc_cpu(d->pid, &cpu1); /* the daemon's since its start */
    atomic_store(&run->stop, true);
    for (int i = 0; i < run->senders; i++)
        pthread_join(st[i], NULL);
    pthread_join(rt, NULL);
    bu_proc_mem(d->pid, &rss, &hwm);
    /* resends the burst caused: the library's Ack time-out, while queued */
    json_t *stj = s_status(d, 10000);
    unsigned long long dups = stj ? s_counter(stj, "duplicate") : 0;
    unsigned long long pauses = stj ? s_counter(stj, "intake_paused") : 0;
    json_decref(stj);
    bool ok = acked_s > 0 && recv_s > 0 && atomic_load(&run->failed) == 0;
    printf("{\"bench\":\"medroute\",\"mode\":\"outbox\",\"senders\":%d,\"count\":%ld,"
           "\"acked\":%llu,\"received\":%llu,\"acked_s\":%.3f,\"received_s\":%.3f,"
           "\"per_s\":%.0f,\"rss_peak_kb\":%ld,\"hwm_kb\":%ld,\"duplicates\":%llu,"
           "\"intake_paused\":%llu",
           run->senders, total, atomic_load(&run->acked), atomic_load(&run->received), acked_s,
           recv_s, recv_s > 0 ? (double)total / recv_s : 0, peak, hwm, dups, pauses);
    bu_cpu_json(stdout, "daemon_cpu_us_per_msg", &cpu0, &cpu1, (double)total);
    bu_cpu_json(stdout, "clients_cpu_us_per_msg", &own0, &own1, (double)total);
    printf(",\"ok\":%s}\n", ok ? "true" : "false");
    free(snd);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    static s_daemon_t d;
    static s_run_t run;
    const char *mode = bu_arg(argc, argv, "--mode", "throughput");
    const char *sync = bu_arg(argc, argv, "--sync", "full");
    d.daemon_path = bu_arg(argc, argv, "--daemon", MEDROUTED_PATH);
    run.d = &d;
    run.senders = (int)bu_arg_long(argc, argv, "--senders", 4);
    run.window = (int)bu_arg_long(argc, argv, "--window", 256);
    run.dest = "yx-lead";
    run.rate = strcmp(mode, "latency") == 0 ? bu_arg_double(argc, argv, "--rate", 1000) : 0;
    bool keep = bu_arg(argc, argv, "--keep", NULL) != NULL;
    if (run.senders < 1 || run.senders > S_MAX_SENDERS || run.window < 1 ||
        (strcmp(sync, "full") != 0 && strcmp(sync, "normal") != 0) ||
        (strcmp(mode, "throughput") != 0 && strcmp(mode, "latency") != 0 &&
         strcmp(mode, "backlog") != 0 && strcmp(mode, "outbox") != 0)) {
        fprintf(stderr,
                "usage: bench_medroute [--mode throughput|latency|backlog|outbox]"
                " [--sync full|normal]\n"
                "  [--senders N] [--window W] [--warmup-s S] [--duration-s S] [--rate R]\n"
                "  [--count N] [--fill-s S] [--drain-s S] [--daemon PATH] [--keep 1]\n"
                "  [--store 'SETTING = VALUE; ...']\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int rc = s_daemon_setup(&d, run.senders, strcmp(mode, "backlog") == 0 ? "full" : sync,
                            run.window, bu_arg(argc, argv, "--store", ""));
    if (rc < 0) {
        fprintf(stderr, "bench_medroute: setup: %s\n", strerror(-rc));
        return 1;
    }
    if (s_spawn(&d) != 0 || s_wait_ready(&d, 10000, NULL, 0) < 0) {
        fprintf(stderr, "bench_medroute: medrouted did not start (log: %s)\n", d.log);
        s_daemon_cleanup(&d, true);
        return 1;
    }
    if (strcmp(mode, "outbox") == 0)
        rc = s_outbox(&run, bu_arg_long(argc, argv, "--count", 200000),
                      bu_arg_double(argc, argv, "--drain-s", 120));
    else if (strcmp(mode, "backlog") == 0)
        rc = s_backlog(&run, bu_arg_long(argc, argv, "--count", 1000000),
                       bu_arg_double(argc, argv, "--fill-s", 300),
                       bu_arg_double(argc, argv, "--drain-s", 120));
    else
        rc = s_flow(&run, mode, sync, bu_arg_double(argc, argv, "--warmup-s", 1),
                    bu_arg_double(argc, argv, "--duration-s", 5));
    s_daemon_stop(&d);
    s_daemon_cleanup(&d, keep || rc != 0);
    if (rc != 0)
        fprintf(stderr, "bench_medroute: kept %s for inspection\n", d.dir);
    return rc;
}
