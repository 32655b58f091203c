/*
 * cron.c - periodic work of the daemon, run every MR_CRON_INTERVAL_MS.
 *
 * Each job has its own period; expiry and pruning go to the store in small
 * batches (never one huge transaction) and at most one of each is in flight.
 */
#include "cron.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dispatch.h"
#include "indicators.h"
#include "notify.h"
#include "opapi.h"
#include "period.h"
#include "watch.h"
#include "router.h"
#include "session.h"

#define S_EXPIRE_EVERY_MS 1000
#define S_PRUNE_EVERY_MS 60000
#define S_SIZE_EVERY_MS 10000
#define S_REDELIVER_EVERY_MS 500
#define S_BATCH 500
#define S_SCAN_EVERY_MS 1000
#define S_WATCH_EVERY_MS 1000
#define S_JUDGE_EVERY_MS 10000

/* Tells the sender of an expired message, if it is connected. */
static void s_notify_expired(server_t *s, const store_row_t *r)
{
    int src = registry_find(s->registry, r->source, strlen(r->source));
    if (src < 0 || !s->peers[src].connected)
        return;
    Medroute__V1__Error e = MEDROUTE__V1__ERROR__INIT;
    e.message_id = r->message_id;
    e.code = MEDROUTE__V1__ERROR_CODE__ERROR_EXPIRED;
    e.seq = r->seq;
    char reason[160];
    snprintf(reason, sizeof reason,
             "not delivered to %.*s before its expiry; moved to dead letters",
             (int)mr_utf8_cut(r->dest, 64), r->dest);
    e.reason = reason;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ERROR;
    f.error = &e;
    /* Counted there if it fails; not sent again: the message is in the
     * dead letters, where operators see it, and the monitor ends the
     * session of a sender whose connection has closed. */
    (void)server_send_facility(s, s->peers[src].rid, s->peers[src].rid_len, &f.base);
}

static void on_expired(store_req_t *req, void *arg)
{
    server_t *s = arg;
    s->expiring_now_ms = 0;
    if (req->status != STORE_OK)
        return;
    for (size_t i = 0; i < req->n_rows; i++) {
        const store_row_t *r = &req->rows[i];
        /* A removed facility's too: no longer pending should it be added
         * back (its memory is forgotten already). */
        int peer = registry_find_any(s->registry, r->dest, strlen(r->dest));
        s->counters.v[CNT_EXPIRED]++;
        s->counters.v[CNT_DEAD]++;
        log_warn(s->log, "message.expired", "seq=%llu source=%s dest=%s kind=%s",
                 (unsigned long long)r->seq, r->source, r->dest,
                 mr_kind_name(r->kind) ? mr_kind_name(r->kind) : "?");
        if (peer >= 0)
            router_forget(s, peer, r->seq);
        s_notify_expired(s, r);
    }
}

static void on_pruned(store_req_t *req, void *arg)
{
    server_t *s = arg;
    s->cron_pruning = false;
    if (req->status == STORE_OK && req->value > 0) {
        s->counters.v[CNT_PRUNED] += req->value;
        log_info(s->log, "store.pruned", "rows=%llu", (unsigned long long)req->value);
        if (req->value >= req->limit)
            s->last_prune_ms = 0; /* more to do: next tick */
    }
}

/* Escalations and ledger events found by the clinical scan. */
static void on_scanned(store_req_t *req, void *arg)
{
    server_t *s = arg;
    s->cron_scanning = false;
    if (req->status != STORE_OK)
        return;
    for (size_t i = 0; i < req->n_events; i++) {
        const clin_event_t *e = &req->events[i];
        char key[160];
        log_clean(key, sizeof key, e->key);
        s->counters.v[e->kind == EV_RESERVE_RELEASED ? CNT_RESERVE_RELEASES : CNT_ESCALATIONS]++;
        char text[300];
        if (e->kind == EV_RESERVE_RELEASED) {
            log_info(s->log, "ledger.reserve_released", "resource=\"%s\" units=%lld", key,
                     (long long)e->value);
            snprintf(text, sizeof text, "%s: %lld unclaimed reserved units released", key,
                     (long long)e->value);
            watch_event(s, "reserve_released", text);
        } else {
            log_warn(s->log, "escalation.raised", "kind=%s key=\"%s\" facility=%s age_s=%lld",
                     clinical_event_name(e->kind), key, e->facility,
                     (long long)(e->value / 1000));
            snprintf(text, sizeof text, "%s %s (%s) after %lld s", clinical_event_name(e->kind),
                     key, e->facility, (long long)(e->value / 1000));
            watch_event(s, "escalation", text);
        }
    }
}

/* Indicators of the current half-year: a change into warning or off target
 * is logged, counted and streamed once. */
static void on_judged(store_req_t *req, void *arg)
{
    server_t *s = arg;
    s->cron_judging = false;
    if (req->status != STORE_OK)
        return;
    size_t n_defs;
    indicators_defs(&n_defs);
    indicator_t ind[32];
    if (n_defs > 32)
        return;
    size_t n = indicators_compute(s->conf->indicators, s->conf->n_indicators, req->tallies,
                                  req->n_tallies, &req->visits, ind);
    for (size_t i = 0; i < n; i++) {
        int now = (int)ind[i].status;
        int before = s->indicator_status[i];
        s->indicator_status[i] = now;
        if (now == before || (now != IND_WARNING && now != IND_OFF_TARGET))
            continue;
        s->counters.v[CNT_INDICATOR_WARNINGS]++;
        log_warn(s->log, "indicator.warning", "indicator=%s status=%s value=%.4f target=%.4f",
                 ind[i].def->name, indicators_status_name(ind[i].status), ind[i].value,
                 ind[i].target);
        char text[200];
        snprintf(text, sizeof text, "%s is %s: %.3f (target %s %.3f) this half-year",
                 ind[i].def->name, indicators_status_name(ind[i].status), ind[i].value,
                 ind[i].def->cmp == CMP_AT_LEAST ? ">=" : "<=", ind[i].target);
        watch_event(s, "warning", text);
    }
}

static void on_sized(store_req_t *req, void *arg)
{
    server_t *s = arg;
    if (req->status == STORE_OK)
        s->store_bytes = req->value;
}

static void s_submit(server_t *s, store_op_t op, store_cb_t cb, int64_t now, int64_t mono,
                     int64_t before)
{
    store_req_t *req = store_req_new(op, cb, s);
    if (req == NULL)
        return;
    req->now_ms = now;
    req->before_ms = before;
    req->limit = S_BATCH;
    if (op == STORE_EXPIRE) { /* none expires while out at its receiver */
        req->outstanding = router_outstanding(s, mono, &req->n_outstanding);
        s->expiring_now_ms = now;
    }
    if (op == STORE_PRUNE)
        s->cron_pruning = true;
    store_submit(s->store, req);
}

void cron_tick(uv_timer_t *handle)
{
    server_t *s = handle->data;
    /* Wall time for what is stored and compared with stored times (expiry,
     * retention, SLAs, periods); the monotonic clock for every interval, so
     * that a step of the wall clock neither stops the watchdog's pings nor
     * ends every session at once. */
    int64_t now = mr_now_ms(), mono = mr_mono_ms();
    /* From the loop itself: if the loop is stuck, the pings stop. */
    if (s->watchdog_ms > 0 && mono - s->last_watchdog_ms >= s->watchdog_ms) {
        s->last_watchdog_ms = mono;
        notify_state("WATCHDOG=1");
    }
    session_cron(s, now, mono); /* each session on its own interval */
    if (mono - s->last_redeliver_ms >= S_REDELIVER_EVERY_MS) {
        s->last_redeliver_ms = mono;
        router_cron(s, now, mono);
    }
    if (s->expiring_now_ms == 0 && mono - s->last_expire_ms >= S_EXPIRE_EVERY_MS) {
        s->last_expire_ms = mono;
        s_submit(s, STORE_EXPIRE, on_expired, now, mono, 0);
    }
    if (!s->cron_pruning && mono - s->last_prune_ms >= S_PRUNE_EVERY_MS) {
        s->last_prune_ms = mono;
        s_submit(s, STORE_PRUNE, on_pruned, now, mono,
                 now - (int64_t)s->conf->retention_days * 86400 * 1000);
    }
    if (!s->cron_scanning && mono - s->last_scan_ms >= S_SCAN_EVERY_MS) {
        store_req_t *req = store_req_new(STORE_SCAN, on_scanned, s);
        if (req != NULL) {
            const conf_t *c = s->conf;
            req->now_ms = now;
            req->sla = (clin_sla_t){
                .urgent_accept_s = c->sla_urgent_accept_s,
                .stat_accept_s = c->sla_stat_accept_s,
                .imaging_final_s = c->sla_imaging_final_s,
                .stat_imaging_final_s = c->sla_stat_imaging_final_s,
                .lab_result_s = c->sla_lab_result_s,
                .stat_lab_result_s = c->sla_stat_lab_result_s,
                .critical_readback_s = c->sla_critical_readback_s,
                .reserve_cutoff_s = c->reserve_cutoff_s,
            };
            s->last_scan_ms = mono;
            s->cron_scanning = true;
            store_submit(s->store, req);
        }
    }
    if (mono - s->last_watch_ms >= S_WATCH_EVERY_MS) {
        s->last_watch_ms = mono;
        watch_tick(s, mono);
        dispatch_cron(s, mono);
        opapi_cron(s, mono);
    }
    if (!s->cron_judging && mono - s->last_judge_ms >= S_JUDGE_EVERY_MS) {
        period_t half;
        char label[16];
        time_t t = (time_t)(now / 1000);
        struct tm tm;
        if (localtime_r(&t, &tm) != NULL) {
            snprintf(label, sizeof label, "%04d-H%d", tm.tm_year + 1900, tm.tm_mon < 6 ? 1 : 2);
            store_req_t *req = store_req_new(STORE_STATS, on_judged, s);
            if (req != NULL && period_parse(label, now, &half) == 0) {
                snprintf(req->first_day, sizeof req->first_day, "%s", half.first);
                snprintf(req->last_day, sizeof req->last_day, "%s", half.last);
                s->cron_judging = true;
                store_submit(s->store, req);
            } else {
                free(req);
            }
        }
        s->last_judge_ms = mono;
    }
    /* Every tick (a mutex and a clock read): a store stuck in one batch
     * cannot say so itself. */
    store_stall_watch(s->store, (int64_t)s->conf->stall_after_s * 1000);
    if (mono - s->last_size_ms >= S_SIZE_EVERY_MS) {
        s->last_size_ms = mono;
        s_submit(s, STORE_SIZE, on_sized, now, mono, 0);
    }
}
