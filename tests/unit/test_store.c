/*
 * Unit tests for daemon/store.c with a real libuv loop, the real store
 * thread and a real SQLite file in a fresh mkdtemp directory per test.
 *
 * Every request's completion is recorded in a slot owned by the fixture
 * (status, seq, value, a deep copy of the rows, the order in which
 * callbacks ran), so a test waits for the slot and then asserts exact
 * values.  Waiting drives the loop with UV_RUN_NOWAIT and gives up after
 * S_WAIT_MS, so a store that never answers fails the test instead of
 * hanging it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <sqlite3.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "mr_codec.h"
#include "store.h"

#define S_WAIT_MS 10000
#define S_SLOTS 64

typedef struct s_fx_t s_fx_t;

/* One request's completion, as the callback saw it. */
typedef struct {
    s_fx_t *fx;
    int called;            /* times the callback ran: must end at 1 */
    int order;             /* completion index within the test, from 0 */
    store_op_t op;
    store_status_t status;
    uint64_t seq;
    uint64_t value;
    store_row_t *rows;     /* deep copies, freed by the teardown */
    size_t n_rows;
    size_t n_slots;        /* SLOTS: rows, and the dates of the first and last */
    char first_slot_date[11], last_slot_date[11];
} s_done_t;

struct s_fx_t {
    uv_loop_t loop;
    FILE *logf;
    log_t *log;
    char dir[64];
    char path[256];
    store_t *store;
    int completed;
    s_done_t done[S_SLOTS];
    int used;
    uint64_t floor_lag; /* store_opts_t.floor_lag of the stores s_open opens */
    uint64_t pin_step;  /* ... and their store_opts_t.pin_step */
};

/* ---- fixture ---------------------------------------------------------- */

static int s_setup(void **state)
{
    s_fx_t *fx = calloc(1, sizeof *fx);
    if (fx == NULL)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/mr-test-store-XXXXXX");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->path, sizeof fx->path, "%s/medroute.db", fx->dir);
    if (uv_loop_init(&fx->loop) != 0)
        return -1;
    fx->logf = tmpfile();
    fx->log = fx->logf ? log_new(MR_LOG_INFO, fx->logf) : NULL;
    if (fx->log == NULL)
        return -1;
    *state = fx;
    return 0;
}

static store_t *s_open(s_fx_t *fx, const char *path)
{
    store_opts_t o = {.path = path,
                      .sync_full = false,
                      .batch_max = 100,
                      .batch_ms = 2,
                      .floor_lag = fx->floor_lag,
                      .pin_step = fx->pin_step};
    return store_new(&fx->loop, &o, fx->log);
}

/* The fixture with a store open on dir/medroute.db. */
static int s_setup_store(void **state)
{
    if (s_setup(state) != 0)
        return -1;
    s_fx_t *fx = *state;
    fx->store = s_open(fx, fx->path);
    return fx->store ? 0 : -1;
}

static void s_rows_free(store_row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_row_clear(&rows[i]);
    free(rows);
}

static void s_rm(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

static int s_teardown(void **state)
{
    s_fx_t *fx = *state;
    int rc = 0;
    store_destroy(&fx->store);
    uv_run(&fx->loop, UV_RUN_DEFAULT); /* the store's close callback */
    if (uv_loop_close(&fx->loop) != 0)
        rc = -1;
    for (int i = 0; i < fx->used; i++)
        s_rows_free(fx->done[i].rows, fx->done[i].n_rows);
    log_destroy(&fx->log);
    fclose(fx->logf);
    s_rm(fx->dir, "medroute.db");
    s_rm(fx->dir, "medroute.db-wal");
    s_rm(fx->dir, "medroute.db-shm");
    s_rm(fx->dir, "copy.db"); /* a backup's */
    rmdir(fx->dir);
    free(fx);
    return rc;
}

/* ---- requests ------------------------------------------------------------ */

static char *s_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void s_copy_row(store_row_t *dst, const store_row_t *src)
{
    *dst = *src;
    dst->source = s_dup(src->source);
    dst->message_id = s_dup(src->message_id);
    dst->dest = s_dup(src->dest);
    dst->dead_reason = s_dup(src->dead_reason);
    dst->body = NULL;
    if (src->body != NULL) {
        dst->body = malloc(src->body_len ? src->body_len : 1);
        assert_non_null(dst->body);
        memcpy(dst->body, src->body, src->body_len);
    }
}

static void on_done(store_req_t *req, void *arg)
{
    s_done_t *d = arg;
    d->called++;
    d->order = d->fx->completed++;
    d->op = req->op;
    d->status = req->status;
    d->seq = req->seq;
    d->value = req->value;
    if (req->n_rows > 0) {
        d->rows = calloc(req->n_rows, sizeof *d->rows);
        assert_non_null(d->rows);
        for (size_t i = 0; i < req->n_rows; i++)
            s_copy_row(&d->rows[i], &req->rows[i]);
        d->n_rows = req->n_rows;
    }
    d->n_slots = req->n_slots;
    if (req->n_slots > 0) {
        snprintf(d->first_slot_date, sizeof d->first_slot_date, "%s", req->slots[0].date);
        snprintf(d->last_slot_date, sizeof d->last_slot_date, "%s",
                 req->slots[req->n_slots - 1].date);
    }
}

static store_req_t *s_req(s_fx_t *fx, store_op_t op, s_done_t **out)
{
    assert_true(fx->used < S_SLOTS);
    s_done_t *d = &fx->done[fx->used++];
    d->fx = fx;
    d->order = -1;
    store_req_t *req = store_req_new(op, on_done, d);
    assert_non_null(req);
    *out = d;
    return req;
}

/* Drives the loop until d has completed; fails the test after S_WAIT_MS. */
static void s_wait(s_fx_t *fx, const s_done_t *d)
{
    uint64_t start = uv_hrtime();
    while (d->called == 0) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        if (d->called)
            break;
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("store callback not run within %d ms", S_WAIT_MS);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(d->called, 1);
}

static s_done_t *s_submit(s_fx_t *fx, store_req_t *req)
{
    s_done_t *d = req->arg;
    store_submit(fx->store, req);
    return d;
}

/* A PUT request, not yet submitted. */
static store_req_t *s_put_build(s_fx_t *fx, const char *source, const char *id, const char *dest,
                                const char *body, int64_t expires_ms)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_PUT, &d);
    req->msg.source = strdup(source);
    req->msg.message_id = strdup(id);
    req->msg.dest = strdup(dest);
    req->msg.kind = 1;
    req->msg.priority = 2;
    req->msg.stored_ms = 1000;
    req->msg.expires_ms = expires_ms;
    req->msg.body_len = strlen(body);
    req->msg.body = malloc(req->msg.body_len + 1);
    assert_non_null(req->msg.body);
    memcpy(req->msg.body, body, req->msg.body_len);
    return req;
}

static s_done_t *s_put_req(s_fx_t *fx, const char *source, const char *id, const char *dest,
                           const char *body, int64_t expires_ms)
{
    return s_submit(fx, s_put_build(fx, source, id, dest, body, expires_ms));
}

static s_done_t *s_put(s_fx_t *fx, const char *source, const char *id, const char *dest,
                       const char *body, int64_t expires_ms)
{
    s_done_t *d = s_put_req(fx, source, id, dest, body, expires_ms);
    s_wait(fx, d);
    return d;
}

/* An ack of seq for dest; unsent: of a message the router has not sent. */
static s_done_t *s_ack_as(s_fx_t *fx, uint64_t seq, const char *dest, int64_t now_ms, bool unsent)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_ACK, &d);
    req->unsent = unsent;
    req->msg.seq = seq;
    req->msg.dest = strdup(dest);
    req->now_ms = now_ms;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_ack(s_fx_t *fx, uint64_t seq, const char *dest, int64_t now_ms)
{
    return s_ack_as(fx, seq, dest, now_ms, false);
}

static s_done_t *s_load(s_fx_t *fx, const char *dest, uint64_t after, uint32_t limit)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_LOAD, &d);
    req->msg.dest = strdup(dest);
    req->after = after;
    req->limit = limit;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_list(s_fx_t *fx, int state, const char *dest, uint32_t limit)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_LIST, &d);
    req->state = state;
    req->msg.dest = s_dup(dest);
    req->limit = limit;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_simple(s_fx_t *fx, store_op_t op)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, op, &d);
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_drop(s_fx_t *fx, uint64_t seq, const char *reason, int64_t now_ms)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_DROP, &d);
    req->msg.seq = seq;
    req->msg.dead_reason = s_dup(reason);
    req->now_ms = now_ms;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_retry(s_fx_t *fx, uint64_t seq, int64_t now_ms)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_RETRY, &d);
    req->msg.seq = seq;
    req->now_ms = now_ms;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_expire(s_fx_t *fx, int64_t now_ms, uint32_t limit)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_EXPIRE, &d);
    req->now_ms = now_ms;
    req->limit = limit;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_prune(s_fx_t *fx, int64_t before_ms, uint32_t limit)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_PRUNE, &d);
    req->now_ms = before_ms;
    req->before_ms = before_ms;
    req->limit = limit;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static const store_row_t *s_row_with_seq(const s_done_t *d, uint64_t seq)
{
    for (size_t i = 0; i < d->n_rows; i++)
        if (d->rows[i].seq == seq)
            return &d->rows[i];
    fail_msg("no row with seq %llu among %zu", (unsigned long long)seq, d->n_rows);
    return NULL;
}

static void s_assert_body(const store_row_t *r, const char *body)
{
    assert_non_null(r->body);
    assert_int_equal(r->body_len, strlen(body));
    assert_memory_equal(r->body, body, r->body_len);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_store_put_assigns_increasing_seq(void **state)
{
    s_fx_t *fx = *state;
    assert_false(store_unavailable(fx->store));
    s_done_t *a = s_put(fx, "t-a", "m-1", "lead", "body-1", 9000);
    s_done_t *b = s_put(fx, "t-a", "m-2", "lead", "body-2", 9000);
    s_done_t *c = s_put(fx, "t-b", "m-1", "lead", "body-3", 9000);
    assert_int_equal(a->status, STORE_OK);
    assert_int_equal(a->seq, 1);
    assert_int_equal(b->status, STORE_OK);
    assert_int_equal(b->seq, 2);
    /* Same message id from another source: another message. */
    assert_int_equal(c->status, STORE_OK);
    assert_int_equal(c->seq, 3);
    assert_int_equal(store_backlog(fx->store), 0);
}

static void test_store_put_duplicate_same_body(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-0", "lead", "other", 9000);
    s_done_t *a = s_put(fx, "t-a", "m-1", "lead", "same bytes", 9000);
    s_done_t *b = s_put(fx, "t-a", "m-1", "lead", "same bytes", 9000);
    assert_int_equal(a->status, STORE_OK);
    assert_int_equal(a->seq, 2);
    assert_int_equal(b->status, STORE_DUPLICATE);
    assert_int_equal(b->seq, 2);
    /* Stored once. */
    s_done_t *l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 2);
}

static void test_store_put_conflict_different_body(void **state)
{
    s_fx_t *fx = *state;
    s_done_t *a = s_put(fx, "t-a", "m-1", "lead", "first", 9000);
    s_done_t *b = s_put(fx, "t-a", "m-1", "lead", "second", 9000);
    s_done_t *c = s_put(fx, "t-a", "m-1", "lead", "firs", 9000); /* a prefix differs too */
    assert_int_equal(a->status, STORE_OK);
    assert_int_equal(b->status, STORE_CONFLICT);
    assert_int_equal(b->seq, 1);
    assert_int_equal(c->status, STORE_CONFLICT);
    /* The first content is the one kept. */
    s_done_t *l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 1);
    s_assert_body(&l->rows[0], "first");
}

/* A packed envelope with this message_id, payload text and created_at_ms. */
static char *s_env_body(const char *id, const char *text, int64_t created_at_ms, size_t *len)
{
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = (char *)id;
    e.source = "t-a";
    e.destination = "lead";
    e.correlation_id = (char *)text;
    e.created_at_ms = created_at_ms;
    uint8_t *buf = NULL;
    assert_int_equal(mr_pack(&e.base, &buf, len), 0);
    return (char *)buf;
}

/* A PUT of message m-1 whose body is that envelope; waits for its completion. */
static s_done_t *s_put_env(s_fx_t *fx, const char *text, int64_t created_at_ms)
{
    store_req_t *req = s_put_build(fx, "t-a", "m-1", "lead", "", 9000);
    free(req->msg.body);
    req->msg.body = (uint8_t *)s_env_body("m-1", text, created_at_ms, &req->msg.body_len);
    s_done_t *d = s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static void test_store_put_identity_leaves_out_created_at(void **state)
{
    s_fx_t *fx = *state;
    /* A resend whose bytes differ only in created_at_ms (a sender's library
     * may stamp it anew) is a duplicate; the first bytes are kept. */
    s_done_t *a = s_put_env(fx, "text", 1795000000000);
    s_done_t *d = s_put_env(fx, "text", 1795000009999);
    assert_int_equal(a->status, STORE_OK);
    assert_int_equal(d->status, STORE_DUPLICATE);
    assert_int_equal(d->seq, a->seq);
    /* Other content under the same message_id: a conflict. */
    d = s_put_env(fx, "other", 1795000000000);
    assert_int_equal(d->status, STORE_CONFLICT);
    assert_int_equal(d->seq, a->seq);
    s_done_t *l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 1);
    size_t n;
    char *first = s_env_body("m-1", "text", 1795000000000, &n);
    assert_int_equal(l->rows[0].body_len, n);
    assert_memory_equal(l->rows[0].body, first, n);
    free(first);
}

static void test_store_load_pending_in_seq_order(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b1", 9001); /* 1 */
    s_put(fx, "t-a", "m-2", "lab", "b2", 9002);  /* 2 */
    s_put(fx, "t-b", "m-3", "lead", "b3", 9003); /* 3 */
    s_put(fx, "t-a", "m-4", "lead", "b4", 9004); /* 4 */
    s_put(fx, "t-a", "m-5", "lead", "b5", 9005); /* 5 */

    s_done_t *l = s_load(fx, "lead", 0, 2);
    assert_int_equal(l->status, STORE_OK);
    assert_int_equal(l->n_rows, 2);
    assert_int_equal(l->rows[0].seq, 1);
    assert_int_equal(l->rows[1].seq, 3);
    const store_row_t *r = &l->rows[1];
    assert_string_equal(r->source, "t-b");
    assert_string_equal(r->message_id, "m-3");
    assert_string_equal(r->dest, "lead");
    assert_int_equal(r->kind, 1);
    assert_int_equal(r->priority, 2);
    assert_int_equal(r->stored_ms, 1000);
    assert_int_equal(r->expires_ms, 9003);
    assert_null(r->dead_reason);
    s_assert_body(r, "b3");

    l = s_load(fx, "lead", 3, 10);
    assert_int_equal(l->n_rows, 2);
    assert_int_equal(l->rows[0].seq, 4);
    assert_int_equal(l->rows[1].seq, 5);
    s_assert_body(&l->rows[1], "b5");

    assert_int_equal(s_load(fx, "lead", 5, 10)->n_rows, 0);
    assert_int_equal(s_load(fx, "nobody", 0, 10)->n_rows, 0);
    l = s_load(fx, "lab", 0, 10);
    assert_int_equal(l->n_rows, 1);
    assert_int_equal(l->rows[0].seq, 2);

    /* Acknowledged messages are no longer pending. */
    assert_int_equal(s_ack(fx, 3, "lead", 5000)->status, STORE_OK);
    l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 3);
    assert_int_equal(l->rows[0].seq, 1);
    assert_int_equal(l->rows[1].seq, 4);
    assert_int_equal(l->rows[2].seq, 5);
}

static void test_store_ack_states(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b1", 9000);
    s_put(fx, "t-a", "m-2", "lead", "b2", 9000);
    assert_int_equal(s_ack(fx, 1, "lead", 5000)->status, STORE_OK);
    assert_int_equal(s_ack(fx, 1, "lead", 5001)->status, STORE_DUPLICATE);
    assert_int_equal(s_ack(fx, 99, "lead", 5000)->status, STORE_NOT_FOUND);
    assert_int_equal(s_ack(fx, 2, "t-a", 5000)->status, STORE_NOT_FOUND); /* not its message */
    assert_int_equal(s_ack(fx, 1, "t-a", 5000)->status, STORE_NOT_FOUND);
    /* A dead message cannot be acknowledged. */
    assert_int_equal(s_drop(fx, 2, "test", 5000)->status, STORE_OK);
    assert_int_equal(s_ack(fx, 2, "lead", 5000)->status, STORE_NOT_FOUND);
}

/* An ack of a message the router has not sent (router.c) changes nothing:
 * pending, it is NOT_FOUND and stays pending; delivered, a DUPLICATE. */
static void test_store_ack_of_an_unsent_message_changes_nothing(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b1", 9000);
    assert_int_equal(s_ack_as(fx, 1, "lead", 5000, true)->status, STORE_NOT_FOUND);
    s_done_t *l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 1);
    assert_int_equal(l->rows[0].seq, 1);
    assert_int_equal(s_ack(fx, 1, "lead", 5000)->status, STORE_OK);
    assert_int_equal(s_ack_as(fx, 1, "lead", 5001, true)->status, STORE_DUPLICATE);
    assert_int_equal(s_ack_as(fx, 99, "lead", 5001, true)->status, STORE_NOT_FOUND);
}

static void test_store_summary_counts_per_dest(void **state)
{
    s_fx_t *fx = *state;
    s_done_t *d = s_simple(fx, STORE_SUMMARY);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 0);

    s_put(fx, "t-a", "m-1", "lead", "b", 9000); /* 1 */
    s_put(fx, "t-a", "m-2", "lab", "b", 9000);  /* 2 */
    s_put(fx, "t-a", "m-3", "lead", "b", 9000); /* 3 */
    s_put(fx, "t-a", "m-4", "lab", "b", 9000);  /* 4 */
    s_put(fx, "t-a", "m-5", "lead", "b", 9000); /* 5 */
    s_put(fx, "t-a", "m-6", "ecg", "b", 9000);  /* 6 */
    s_ack(fx, 1, "lead", 5000);                  /* delivered: not counted */
    s_drop(fx, 6, "test", 5000);                 /* dead: not counted */

    d = s_simple(fx, STORE_SUMMARY);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 2);
    for (size_t i = 0; i < d->n_rows; i++) {
        const store_row_t *r = &d->rows[i];
        if (strcmp(r->dest, "lead") == 0) {
            assert_int_equal(r->count, 2);
            assert_int_equal(r->seq, 3); /* oldest pending */
        } else if (strcmp(r->dest, "lab") == 0) {
            assert_int_equal(r->count, 2);
            assert_int_equal(r->seq, 2);
        } else {
            fail_msg("unexpected destination %s in summary", r->dest);
        }
    }
}

static void test_store_drop_list_retry(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b1", 9000); /* 1 */
    s_put(fx, "t-a", "m-2", "lead", "b2", 9000); /* 2 */
    s_put(fx, "t-b", "m-3", "lab", "b3", 9000);  /* 3 */

    s_done_t *d = s_drop(fx, 2, "operator: wrong ward", 7000);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 2);
    assert_string_equal(d->rows[0].message_id, "m-2");
    assert_string_equal(d->rows[0].dest, "lead");
    assert_string_equal(d->rows[0].dead_reason, "operator: wrong ward");
    assert_null(d->rows[0].body);
    /* Only a pending message can be dropped. */
    assert_int_equal(s_drop(fx, 2, "again", 7000)->status, STORE_NOT_FOUND);
    assert_int_equal(s_drop(fx, 42, "none", 7000)->status, STORE_NOT_FOUND);
    /* Without a reason: "dropped". */
    d = s_drop(fx, 3, NULL, 7000);
    assert_int_equal(d->status, STORE_OK);
    assert_string_equal(d->rows[0].dead_reason, "dropped");

    d = s_list(fx, MSG_DEAD, NULL, 100);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 2);
    assert_int_equal(d->rows[0].seq, 2);
    assert_string_equal(d->rows[0].dead_reason, "operator: wrong ward");
    assert_int_equal(d->rows[1].seq, 3);
    assert_null(d->rows[0].body); /* lists carry no bodies */
    d = s_list(fx, MSG_DEAD, "lab", 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 3);
    d = s_list(fx, MSG_DEAD, NULL, 1);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 2);
    d = s_list(fx, MSG_PENDING, NULL, 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 1);
    assert_null(d->rows[0].dead_reason);
    assert_int_equal(s_load(fx, "lead", 0, 10)->n_rows, 1);

    /* RETRY: back to pending with its body; expiry at least now_ms. */
    d = s_retry(fx, 2, 12345);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 2);
    assert_string_equal(d->rows[0].source, "t-a");
    assert_null(d->rows[0].dead_reason);
    assert_int_equal(d->rows[0].expires_ms, 12345);
    s_assert_body(&d->rows[0], "b2");
    /* The expiry is never moved earlier. */
    d = s_retry(fx, 3, 10);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->rows[0].expires_ms, 9000);

    assert_int_equal(s_list(fx, MSG_DEAD, NULL, 100)->n_rows, 0);
    d = s_load(fx, "lead", 0, 10);
    assert_int_equal(d->n_rows, 2);
    assert_int_equal(d->rows[1].seq, 2);
    /* Only a dead message can be retried. */
    assert_int_equal(s_retry(fx, 2, 12345)->status, STORE_NOT_FOUND);
    assert_int_equal(s_retry(fx, 77, 12345)->status, STORE_NOT_FOUND);
}

static void test_store_expire_moves_to_dead(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b1", 1000); /* 1 */
    s_put(fx, "t-a", "m-2", "lead", "b2", 5000); /* 2 */
    s_put(fx, "t-a", "m-3", "lead", "b3", 6000); /* 3: expires_ms == now: not yet */
    s_put(fx, "t-a", "m-4", "lab", "b4", 9000);  /* 4 */
    s_put(fx, "t-a", "m-5", "lab", "b5", 2000);  /* 5: delivered before it expired */
    s_ack(fx, 5, "lab", 1500);

    s_done_t *d = s_expire(fx, 6000, 100);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 2);
    const store_row_t *r1 = s_row_with_seq(d, 1);
    const store_row_t *r2 = s_row_with_seq(d, 2);
    assert_string_equal(r1->dead_reason, "expired");
    assert_string_equal(r2->dead_reason, "expired");
    assert_string_equal(r2->message_id, "m-2");
    assert_int_equal(r2->expires_ms, 5000);

    d = s_list(fx, MSG_DEAD, NULL, 100);
    assert_int_equal(d->n_rows, 2);
    assert_int_equal(d->rows[0].seq, 1);
    assert_int_equal(d->rows[1].seq, 2);
    d = s_load(fx, "lead", 0, 10);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 3);

    /* Nothing more is due at the same time; the limit is respected later. */
    assert_int_equal(s_expire(fx, 6000, 100)->n_rows, 0);
    d = s_expire(fx, 100000, 1);
    assert_int_equal(d->n_rows, 1);
    d = s_expire(fx, 100000, 10);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(s_list(fx, MSG_DEAD, NULL, 100)->n_rows, 4);
    /* The delivered one is untouched. */
    assert_int_equal(s_ack(fx, 5, "lab", 1600)->status, STORE_DUPLICATE);
}

/*
 * Messages out at their receiver are not expired under it, and do not take
 * the batch's room: with more of them due than the batch holds, the others
 * due still expire (before, the batch was filled with the ones out and then
 * passed over them, and nothing expired while they stayed out).
 */
static void test_store_expire_passes_over_those_out(void **state)
{
    s_fx_t *fx = *state;
    for (int i = 1; i <= 4; i++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        s_put(fx, "t-a", id, "lead", "b", 1000 + i); /* seqs 1-4, all due at 6000 */
    }
    uint64_t out[] = {1, 2};
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_EXPIRE, &d);
    req->now_ms = 6000;
    req->limit = 2;
    req->outstanding = malloc(sizeof out);
    assert_non_null(req->outstanding);
    memcpy(req->outstanding, out, sizeof out);
    req->n_outstanding = 2;
    s_submit(fx, req);
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 2);
    assert_string_equal(s_row_with_seq(d, 3)->dead_reason, "expired");
    assert_string_equal(s_row_with_seq(d, 4)->dead_reason, "expired");
    /* The two out are still pending, and expire once back. */
    d = s_load(fx, "lead", 0, 10);
    assert_int_equal(d->n_rows, 2);
    assert_int_equal(d->rows[0].seq, 1);
    assert_int_equal(d->rows[1].seq, 2);
    assert_int_equal(s_expire(fx, 6000, 2)->n_rows, 2);
}

static void test_store_prune_delivered_only(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b", 99000); /* 1: delivered at 1000 */
    s_put(fx, "t-a", "m-2", "lead", "b", 99000); /* 2: delivered at 2000 */
    s_put(fx, "t-a", "m-3", "lead", "b", 99000); /* 3: delivered at 3000 */
    s_put(fx, "t-a", "m-4", "lead", "b", 99000); /* 4: dead at 500 */
    s_put(fx, "t-a", "m-5", "lead", "b", 99000); /* 5: pending */
    s_ack(fx, 1, "lead", 1000);
    s_ack(fx, 2, "lead", 2000);
    s_ack(fx, 3, "lead", 3000);
    s_drop(fx, 4, "test", 500);

    s_done_t *d = s_prune(fx, 2500, 1);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->value, 1);
    assert_int_equal(s_prune(fx, 2500, 1)->value, 1);
    assert_int_equal(s_prune(fx, 2500, 100)->value, 0);

    /* 1 and 2 are gone, 3 is kept (delivered after before_ms). */
    assert_int_equal(s_ack(fx, 1, "lead", 9)->status, STORE_NOT_FOUND);
    assert_int_equal(s_ack(fx, 2, "lead", 9)->status, STORE_NOT_FOUND);
    assert_int_equal(s_ack(fx, 3, "lead", 9)->status, STORE_DUPLICATE);
    d = s_list(fx, MSG_DELIVERED, NULL, 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 3);

    /* Far in the future: every delivered row goes, never dead or pending. */
    assert_int_equal(s_prune(fx, INT64_MAX, 100)->value, 1);
    assert_int_equal(s_list(fx, MSG_DELIVERED, NULL, 100)->n_rows, 0);
    d = s_list(fx, MSG_DEAD, NULL, 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 4);
    d = s_list(fx, MSG_PENDING, NULL, 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 5);
}

/* Bytes of the database file and its WAL now. */
static uint64_t s_files_size(const s_fx_t *fx)
{
    struct stat st;
    uint64_t size = 0;
    assert_int_equal(stat(fx->path, &st), 0);
    size += (uint64_t)st.st_size;
    char wal[300];
    snprintf(wal, sizeof wal, "%s-wal", fx->path);
    if (stat(wal, &st) == 0)
        size += (uint64_t)st.st_size;
    return size;
}

static void test_store_size_counts_db_and_wal(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "some body bytes", 9000);
    /* The checkpoint thread may grow the database file meanwhile (the WAL
     * keeps its size until it restarts): the answer lies between the sizes
     * before and after. */
    uint64_t before = s_files_size(fx);
    s_done_t *d = s_simple(fx, STORE_SIZE);
    uint64_t after = s_files_size(fx);
    assert_int_equal(d->status, STORE_OK);
    assert_true(d->value > 0);
    assert_in_range(d->value, before, after);
}

/* The checkpoint thread copies committed pages into the database file
 * soon after a commit, long before the WAL reaches the writer's own
 * auto-checkpoint bound (4096 pages): the file grows without any further
 * write.  (A checkpoint connection that never read the database did
 * nothing at all, and the file stayed at its first page.) */
static void test_store_checkpoints_in_background(void **state)
{
    s_fx_t *fx = *state;
    char body[3001];
    memset(body, 'b', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    for (int i = 0; i < 40; i++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        assert_int_equal(s_put(fx, "t-a", id, "lead", body, 9000)->status, STORE_OK);
    }
    off_t want = 40 * (off_t)(sizeof body - 1);
    struct stat st = {0};
    uint64_t start = uv_hrtime();
    while (stat(fx->path, &st) == 0 && st.st_size < want &&
           (uv_hrtime() - start) / 1000000 < S_WAIT_MS) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(st.st_size >= want);
}

static void test_store_callbacks_in_submission_order(void **state)
{
    s_fx_t *fx = *state;
    s_done_t *d[24];
    int n = 0;
    char id[16];
    /* Submitted without running the loop in between. */
    for (int i = 0; i < 8; i++) {
        snprintf(id, sizeof id, "m-%d", i);
        d[n++] = s_put_req(fx, "t-a", id, i % 2 ? "lab" : "lead", "body", 9000);
        store_req_t *req = s_req(fx, i % 2 ? STORE_SUMMARY : STORE_SIZE, &d[n]);
        s_submit(fx, req);
        n++;
        req = s_req(fx, STORE_LOAD, &d[n]);
        req->msg.dest = strdup("lead");
        req->limit = 100;
        s_submit(fx, req);
        n++;
    }
    assert_int_equal(store_backlog(fx->store), (size_t)n);
    s_wait(fx, d[n - 1]);
    assert_int_equal(fx->completed, n);
    assert_int_equal(store_backlog(fx->store), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(d[i]->called, 1);
        assert_int_equal(d[i]->order, i);
        assert_int_equal(d[i]->status, STORE_OK);
    }
    /* Each LOAD saw exactly the puts submitted before it. */
    for (int i = 0; i < 8; i++) {
        assert_int_equal(d[3 * i]->seq, (uint64_t)i + 1);
        assert_int_equal(d[3 * i + 2]->n_rows, (size_t)(i / 2 + 1));
    }
}

static void test_store_db_file_mode_0600(void **state)
{
    s_fx_t *fx = *state;
    s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    struct stat st;
    assert_int_equal(stat(fx->path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    char side[300];
    snprintf(side, sizeof side, "%s-wal", fx->path);
    assert_int_equal(stat(side, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

static void test_store_destroy_runs_remaining_callbacks(void **state)
{
    s_fx_t *fx = *state;
    s_done_t *d[3];
    d[0] = s_put_req(fx, "t-a", "m-1", "lead", "b1", 9000);
    d[1] = s_put_req(fx, "t-a", "m-2", "lead", "b2", 9000);
    d[2] = s_put_req(fx, "t-a", "m-1", "lead", "b1", 9000);
    store_destroy(&fx->store); /* no loop turn in between */
    assert_null(fx->store);
    assert_int_equal(fx->completed, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i]->called, 1);
        assert_int_equal(d[i]->order, i);
    }
    assert_int_equal(d[0]->status, STORE_OK);
    assert_int_equal(d[1]->status, STORE_OK);
    assert_int_equal(d[2]->status, STORE_DUPLICATE);
    assert_int_equal(d[2]->seq, 1);

    /* Committed: a new store on the same file finds the messages. */
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    s_done_t *l = s_load(fx, "lead", 0, 10);
    assert_int_equal(l->n_rows, 2);
    s_assert_body(&l->rows[1], "b2");
    s_done_t *p = s_put(fx, "t-a", "m-2", "lead", "b2", 9000);
    assert_int_equal(p->status, STORE_DUPLICATE);
    assert_int_equal(p->seq, 2);
    /* New messages continue after the old ones.  (Not necessarily at 3:
     * SQLite's AUTOINCREMENT spends a value on each refused resend, so seqs
     * may have gaps; only their order is promised.) */
    p = s_put(fx, "t-a", "m-3", "lead", "b3", 9000);
    assert_int_equal(p->status, STORE_OK);
    assert_true(p->seq > 2);
}

static int s_log_contains(s_fx_t *fx, const char *needle)
{
    char buf[8192];
    fflush(fx->logf);
    rewind(fx->logf);
    size_t n = fread(buf, 1, sizeof buf - 1, fx->logf);
    buf[n] = '\0';
    fseek(fx->logf, 0, SEEK_END);
    return strstr(buf, needle) != NULL;
}

static void test_store_unavailable_missing_dir_then_recovers(void **state)
{
    s_fx_t *fx = *state;
    char sub[128], path[256];
    snprintf(sub, sizeof sub, "%s/later", fx->dir);
    snprintf(path, sizeof path, "%s/medroute.db", sub);
    fx->store = s_open(fx, path);
    assert_non_null(fx->store); /* starts anyway */
    assert_true(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "event=store.unavailable"));

    s_done_t *a = s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    assert_int_equal(a->status, STORE_UNAVAILABLE);
    assert_int_equal(a->seq, 0);
    s_done_t *b = s_load(fx, "lead", 0, 10);
    assert_int_equal(b->status, STORE_UNAVAILABLE);
    assert_int_equal(b->n_rows, 0);
    assert_true(store_unavailable(fx->store));

    /* The directory appears: the next batch opens the database. */
    assert_int_equal(mkdir(sub, 0700), 0);
    s_done_t *c = s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    assert_int_equal(c->status, STORE_OK);
    assert_int_equal(c->seq, 1);
    assert_false(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "event=store.recovered"));

    store_destroy(&fx->store);
    s_rm(sub, "medroute.db");
    s_rm(sub, "medroute.db-wal");
    s_rm(sub, "medroute.db-shm");
    assert_int_equal(rmdir(sub), 0);
}

static void test_store_unavailable_directory_in_place_then_recovers(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(mkdir(fx->path, 0700), 0); /* a directory where the file goes */
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_true(store_unavailable(fx->store));
    s_done_t *a = s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    assert_int_equal(a->status, STORE_UNAVAILABLE);
    s_done_t *b = s_simple(fx, STORE_SUMMARY);
    assert_int_equal(b->status, STORE_UNAVAILABLE);

    assert_int_equal(rmdir(fx->path), 0);
    s_done_t *c = s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    assert_int_equal(c->status, STORE_OK);
    assert_int_equal(c->seq, 1);
    assert_false(store_unavailable(fx->store));
}

static void test_store_unavailable_not_a_database_then_recovers(void **state)
{
    s_fx_t *fx = *state;
    int fd = open(fx->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_true(store_unavailable(fx->store));
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 9000)->status, STORE_UNAVAILABLE);

    assert_int_equal(unlink(fx->path), 0);
    s_done_t *c = s_put(fx, "t-a", "m-1", "lead", "b", 9000);
    assert_int_equal(c->status, STORE_OK);
    assert_int_equal(c->seq, 1);
}

/*
 * store.h: "A callback may take req->body or the rows by setting the pointer
 * to NULL."  A callback that takes the rows (req->rows = NULL) must not make
 * the store crash when it frees the request.  Run in a child process so that
 * a crash is reported as this test's failure, not the suite's.
 *
 * BUG (daemon/store.c, s_req_free): it loops over req->n_rows through
 * req->rows even when the callback has set req->rows to NULL, and
 * dereferences NULL.  This test fails until that is fixed.
 */
static store_row_t *s_taken_rows;
static size_t s_taken_n;

static void on_take_rows(store_req_t *req, void *arg)
{
    (void)arg;
    s_taken_rows = req->rows;
    s_taken_n = req->n_rows;
    req->rows = NULL; /* as store.h documents */
}

static void s_child_put(store_t *st, const char *id)
{
    store_req_t *req = store_req_new(STORE_PUT, NULL, NULL);
    req->msg.source = strdup("t-a");
    req->msg.message_id = strdup(id);
    req->msg.dest = strdup("lead");
    req->msg.kind = 1;
    req->msg.expires_ms = 9000;
    req->msg.body = (uint8_t *)strdup(id);
    req->msg.body_len = strlen(id);
    store_submit(st, req);
}

static void test_store_callback_may_take_rows(void **state)
{
    s_fx_t *fx = *state;
    char path[300];
    snprintf(path, sizeof path, "%s/child.db", fx->dir);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* A crash must end the child, not return into cmocka's runner. */
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        signal(SIGABRT, SIG_DFL);
        /* The child's own loop and store (threads do not survive fork). */
        uv_loop_t loop;
        if (uv_loop_init(&loop) != 0)
            _exit(3);
        store_opts_t o = {.path = path, .batch_max = 100, .batch_ms = 2};
        store_t *st = store_new(&loop, &o, NULL);
        if (st == NULL)
            _exit(3);
        s_child_put(st, "m-1");
        s_child_put(st, "m-2");
        store_req_t *req = store_req_new(STORE_LOAD, on_take_rows, NULL);
        req->msg.dest = strdup("lead");
        req->limit = 10;
        store_submit(st, req);
        /* The request is freed right after its callback, in the same turn. */
        for (int i = 0; i < S_WAIT_MS && store_backlog(st) > 0; i++) {
            uv_run(&loop, UV_RUN_NOWAIT);
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (s_taken_rows == NULL || s_taken_n != 2 || s_taken_rows[1].seq != 2)
            _exit(2);
        s_rows_free(s_taken_rows, s_taken_n);
        store_destroy(&st);
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(uv_loop_close(&loop) == 0 ? 0 : 4);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    s_rm(fx->dir, "child.db");
    s_rm(fx->dir, "child.db-wal");
    s_rm(fx->dir, "child.db-shm");
    if (WIFSIGNALED(status))
        fail_msg("the store crashed (signal %d) freeing a request whose rows the callback took",
                 WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Runs sql on the file at path; returns the first column of its first row. */
static long long s_sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int rc = sqlite3_step(st);
    assert_true(rc == SQLITE_ROW || rc == SQLITE_DONE);
    long long v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Runs sql on the file at path through a connection of its own. */
static void s_sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/*
 * A store made before the referrals table was keyed WITHOUT ROWID (with an
 * index on referral_id and indexes partial on state) is rebuilt when opened:
 * rows and states kept, `live` and `accept_due_ms` set from each state, the
 * old indexes gone.
 */
static void test_store_migrates_old_referrals_table(void **state)
{
    s_fx_t *fx = *state;
    const char *old =
        "CREATE TABLE referrals(ref_key TEXT PRIMARY KEY, referral_id TEXT NOT NULL,"
        " source TEXT NOT NULL, dest TEXT NOT NULL, direction INTEGER NOT NULL,"
        " service INTEGER NOT NULL, unit TEXT, family_doctor INTEGER NOT NULL,"
        " priority INTEGER NOT NULL, state INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, accepted_ms INTEGER,"
        " appointment_ms INTEGER, resource_key TEXT, claim INTEGER NOT NULL DEFAULT 0,"
        " escalated_ms INTEGER, msg_seq INTEGER NOT NULL, accept_due_ms INTEGER);"
        "CREATE INDEX referrals_id ON referrals(referral_id);"
        "CREATE INDEX referrals_expiry ON referrals(expires_ms) WHERE state IN (1, 2, 3, 5);"
        "INSERT INTO referrals VALUES('t-a/r1', 'r1', 't-a', 'lead', 1, 1, 'cardio', 0, 1, 2,"
        " 1000, 1000, 99000, NULL, NULL, NULL, 0, NULL, 1, 5000);"
        "INSERT INTO referrals VALUES('t-a/r2', 'r2', 't-a', 'lead', 1, 1, 'cardio', 0, 1, 3,"
        " 1000, 2000, 99000, 2000, NULL, NULL, 0, NULL, 2, 5000);"
        "INSERT INTO referrals VALUES('t-a/r3', 'r3', 't-a', 'lead', 1, 1, 'cardio', 0, 1, 8,"
        " 1000, 3000, 99000, 2000, NULL, NULL, 0, NULL, 3, 5000);";
    s_sql_exec(fx->path, old);

    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 9000)->status, STORE_OK);
    store_destroy(&fx->store);

    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master WHERE"
                                         " name = 'referrals' AND sql LIKE '%WITHOUT ROWID%'"),
                     1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master WHERE"
                                         " name IN ('referrals_id', 'referrals_expiry',"
                                         " 'referrals_v2')"),
                     0);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM referrals"), 3);
    /* RECEIVED: live and awaiting; ACCEPTED: live only; COMPLETED: neither. */
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(state || ':' || live || ':' ||"
                                         " coalesce(accept_due_ms, 0), ' ') = '2:1:5000 3:1:0 8:0:0'"
                                         " FROM (SELECT * FROM referrals ORDER BY ref_key)"),
                     1);
    /* A second open leaves the rebuilt table as it is. */
    fx->store = s_open(fx, fx->path);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b2", 9000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM referrals"), 3);
}

/* From now on (refuse) or no longer, inserts into and updates of table
 * fail, as on a full disk but for that table only. */
static void s_refuse_writes(const char *path, const char *table, bool refuse)
{
    char sql[512];
    if (refuse)
        snprintf(sql, sizeof sql,
                 "CREATE TRIGGER no_insert BEFORE INSERT ON %s BEGIN SELECT RAISE(ABORT, 'test');"
                 " END; CREATE TRIGGER no_update BEFORE UPDATE ON %s BEGIN SELECT"
                 " RAISE(ABORT, 'test'); END;",
                 table, table);
    else
        snprintf(sql, sizeof sql, "DROP TRIGGER no_insert; DROP TRIGGER no_update;");
    s_sql_exec(path, sql);
}

/* The seqs of a LOAD (or LIST) as "1 2 3". */
static const char *s_seqs(const s_done_t *d, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < d->n_rows && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%llu", i ? " " : "",
                                 (unsigned long long)d->rows[i].seq);
    return buf;
}

static s_done_t *s_load_express(s_fx_t *fx, const char *dest)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_LOAD, &d);
    req->msg.dest = strdup(dest);
    req->express_only = true;
    req->limit = 100;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

/* A PUT of an express message (a critical value). */
static s_done_t *s_put_express(s_fx_t *fx, const char *id, const char *dest)
{
    store_req_t *req = s_put_build(fx, "t-a", id, dest, id, 99000);
    req->msg.express = 1;
    s_done_t *d = s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

/*
 * Which messages are pending is kept in memory and rebuilt from the file at
 * open: after a close and an open, each destination's pending messages are
 * exactly those without an outcome (delivered, dropped and expired ones
 * gone, a retried one back in its place, express ones in the express list),
 * with the same counts.  The floor the store records lets the rebuild start
 * after the messages delivered long ago, and never after a pending one.
 */
static void test_store_pending_rebuilt_at_open(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    for (int i = 1; i <= 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        s_put(fx, "t-a", id, i % 2 ? "lead" : "lab", "b", i == 5 ? 4000 : 99000);
    }
    s_put_express(fx, "crit-7", "lab");           /* 7 */
    assert_int_equal(s_ack(fx, 1, "lead", 2000)->status, STORE_OK);
    assert_int_equal(s_ack(fx, 2, "lab", 2000)->status, STORE_OK);
    assert_int_equal(s_drop(fx, 3, "test", 2000)->status, STORE_OK);
    assert_int_equal(s_expire(fx, 5000, 100)->n_rows, 1); /* 5 */
    assert_int_equal(s_drop(fx, 4, "test", 2000)->status, STORE_OK);
    assert_int_equal(s_retry(fx, 4, 6000)->status, STORE_OK);
    /* lead: 1 delivered, 3 dropped, 5 expired; lab: 2 delivered, 4 back. */
    assert_string_equal(s_seqs(s_load(fx, "lab", 0, 100), buf, sizeof buf), "4 6 7");
    assert_int_equal(s_load(fx, "lead", 0, 100)->n_rows, 0);

    store_destroy(&fx->store);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_string_equal(s_seqs(s_load(fx, "lab", 0, 100), buf, sizeof buf), "4 6 7");
    assert_string_equal(s_seqs(s_load(fx, "lab", 4, 100), buf, sizeof buf), "6 7");
    assert_string_equal(s_seqs(s_load_express(fx, "lab"), buf, sizeof buf), "7");
    assert_int_equal(s_load(fx, "lead", 0, 100)->n_rows, 0);
    s_done_t *d = s_simple(fx, STORE_SUMMARY);
    assert_int_equal(d->n_rows, 1);
    assert_string_equal(d->rows[0].dest, "lab");
    assert_int_equal(d->rows[0].count, 3);
    assert_int_equal(d->rows[0].seq, 4);
    assert_string_equal(s_seqs(s_list(fx, MSG_DEAD, NULL, 100), buf, sizeof buf), "3 5");
    assert_int_equal(s_ack(fx, 1, "lead", 9)->status, STORE_DUPLICATE);
    assert_int_equal(s_ack(fx, 3, "lead", 9)->status, STORE_NOT_FOUND);

    /* Deliver everything up to 6: the floor rises past them (at most once a
     * second), to the lowest pending seq and not beyond. */
    assert_int_equal(s_ack(fx, 4, "lab", 7000)->status, STORE_OK);
    assert_int_equal(s_ack(fx, 6, "lab", 7000)->status, STORE_OK);
    struct timespec pause = {1, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    s_put(fx, "t-a", "m-8", "lead", "b", 99000); /* 8: a batch that writes the floor */
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     7);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lab", 0, 100), buf, sizeof buf), "7");
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "8");
    /* A retry brings back a message below the floor: the floor stays, the
     * message is pinned in the same batch, so the next open finds it. */
    assert_int_equal(s_retry(fx, 3, 8000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     7);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 3);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "3 8");
    /* Its delivery unpins it. */
    assert_int_equal(s_ack(fx, 3, "lead", 9000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM pending_pinned"), 0);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "8");
}

/* Messages m-first..m-last for lead, each stored under that seq and
 * delivered: rows the floor can pass. */
static void s_put_delivered(s_fx_t *fx, int first, int last)
{
    for (int i = first; i <= last; i++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        assert_int_equal(s_put(fx, "t-a", id, "lead", "b", 99000)->seq, (uint64_t)i);
        assert_int_equal(s_ack(fx, (uint64_t)i, "lead", 2000)->status, STORE_OK);
    }
}

/*
 * One message left pending (its facility offline) does not hold the floor
 * down: once it is floor_lag rows or more behind the newest, the floor
 * passes it and pins it, so an open reads the pinned message and the rows
 * from the floor on, not every row stored since.  Its delivery unpins it.
 */
static void test_store_old_pending_is_pinned(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    store_destroy(&fx->store);
    fx->floor_lag = 4;
    fx->store = s_open(fx, fx->path);
    s_put(fx, "t-a", "m-1", "off", "b", 99000); /* 1: stays pending */
    s_put_delivered(fx, 2, 10);
    struct timespec pause = {1, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    s_put(fx, "t-a", "m-11", "lead", "b", 99000); /* a batch that writes the floor */
    store_destroy(&fx->store);
    /* 11 stored: the floor at 12 - 4 = 8, past 1, which is pinned. */
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     8);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 1);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "1");
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "11");
    assert_true(s_log_contains(fx, "pending=2 pinned=1"));
    /* A retry of a dead message below the floor pins it too. */
    assert_int_equal(s_drop(fx, 1, "test", 3000)->status, STORE_OK);
    assert_int_equal(s_retry(fx, 1, 4000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 1);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "1");
    /* Delivered at last: unpinned, and not pending after the next open. */
    assert_int_equal(s_ack(fx, 1, "off", 5000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM pending_pinned"), 0);
    fx->store = s_open(fx, fx->path);
    assert_int_equal(s_load(fx, "off", 0, 100)->n_rows, 0);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "11");
}

/*
 * A backlog the floor passes is pinned pin_step seqs at a time, one step in
 * each batch that writes, until the floor has caught up: no single batch
 * pins a whole backlog.  An open then finds every pinned message.
 */
static void test_store_pins_go_a_step_a_batch(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    store_destroy(&fx->store);
    fx->floor_lag = 4;
    fx->pin_step = 3;
    fx->store = s_open(fx, fx->path);
    for (int i = 1; i <= 8; i++) { /* 1-8: stay pending */
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        s_put(fx, "t-a", id, "off", "b", 99000);
    }
    s_put_delivered(fx, 9, 20);
    struct timespec pause = {1, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    static const int pinned[] = {3, 6, 8}; /* seqs 1..pinned[k] */
    static const int floor[] = {4, 7, 10};
    for (int k = 0; k < 3; k++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", 21 + k);
        s_put(fx, "t-a", id, "lead", "b", 99000); /* a batch that writes: one step */
        assert_int_equal(
            s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"), floor[k]);
        /* n distinct seqs whose highest is n: 1..n */
        assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM pending_pinned"), pinned[k]);
        assert_int_equal(s_sql_int(fx->path, "SELECT max(seq) FROM pending_pinned"), pinned[k]);
    }
    store_destroy(&fx->store);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "1 2 3 4 5 6 7 8");
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "21 22 23");
    assert_true(s_log_contains(fx, "pending=11 pinned=8"));
}

/*
 * A pinned message that dies (expired, dropped) is unpinned in the same
 * batch, and the next open does not bring it back as pending; the one
 * still pending stays pinned.
 */
static void test_store_pinned_message_that_dies_stays_dead(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    store_destroy(&fx->store);
    fx->floor_lag = 4;
    fx->store = s_open(fx, fx->path);
    assert_int_equal(s_put(fx, "t-a", "m-1", "off", "b", 5000)->seq, 1);  /* will expire */
    assert_int_equal(s_put(fx, "t-a", "m-2", "off", "b", 99000)->seq, 2); /* will be dropped */
    assert_int_equal(s_put(fx, "t-a", "m-3", "off", "b", 99000)->seq, 3); /* stays pending */
    s_put_delivered(fx, 4, 12);
    struct timespec pause = {1, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    s_put(fx, "t-a", "m-13", "lead", "b", 99000); /* the floor at 14 - 4 = 10 */
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     10);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM pending_pinned"), 3);
    fx->store = s_open(fx, fx->path);
    assert_int_equal(s_expire(fx, 6000, 100)->n_rows, 1);
    assert_int_equal(s_drop(fx, 2, "test", 6000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 3);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "3");
    assert_string_equal(s_seqs(s_list(fx, MSG_DEAD, "off", 100), buf, sizeof buf), "1 2");
}

/*
 * A raise of the floor that pins, and cannot write its pins (a nearly full
 * disk), is undone alone: the batch's messages are stored all the same, the
 * floor stays where it was, and the raise is tried again a second later.
 */
static void test_store_failed_pins_defer_the_floor_only(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    struct timespec pause = {1, 100 * 1000 * 1000};
    store_destroy(&fx->store);
    fx->floor_lag = 4;
    fx->store = s_open(fx, fx->path);
    s_put(fx, "t-a", "m-1", "off", "b", 99000); /* 1: stays pending; the floor at 1 */
    s_put_delivered(fx, 2, 10);
    nanosleep(&pause, NULL);
    s_refuse_writes(fx->path, "pending_pinned", true);
    assert_int_equal(s_put(fx, "t-a", "m-11", "lead", "b", 99000)->status, STORE_OK);
    assert_true(s_log_contains(fx, "event=store.floor_deferred"));
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM pending_pinned"), 0);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages WHERE seq = 11"), 1);
    /* Writable again: a second later the next batch that writes pins it. */
    s_refuse_writes(fx->path, "pending_pinned", false);
    nanosleep(&pause, NULL);
    assert_int_equal(s_put(fx, "t-a", "m-12", "lead", "b", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     9);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 1);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "1");
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "11 12");
}

/*
 * A batch that fails after changing the pending set (its tallies cannot be
 * written: a trigger refuses them) rolls the set back with the transaction:
 * the message it stored is not pending, the one it delivered still is, and
 * the store goes on from there once writes succeed again.
 */
static void test_store_failed_batch_rolls_back_pending(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_OK);
    s_refuse_writes(fx->path, "tallies", true);
    assert_int_equal(s_put(fx, "t-a", "m-3", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    assert_int_equal(s_ack(fx, 1, "lead", 2000)->status, STORE_UNAVAILABLE);
    s_refuse_writes(fx->path, "tallies", false);

    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "1 2");
    s_done_t *d = s_simple(fx, STORE_SUMMARY);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].count, 2);
    /* The rolled-back seq is given again, and it is pending like any other. */
    d = s_put(fx, "t-a", "m-3", "lead", "b", 99000);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->seq, 3);
    assert_int_equal(s_ack(fx, 1, "lead", 2000)->status, STORE_OK);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "2 3");
    store_destroy(&fx->store);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "2 3");
}

/*
 * A store of schema version 1 (a message's state, done_ms and dead_reason
 * in its row; partial indexes on the pending set) is migrated at open: the
 * outcomes move to message_done, the indexes go, and every message keeps
 * its state.
 */
static void test_store_migrates_messages_v1(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    s_sql_exec(fx->path,
               "CREATE TABLE messages(seq INTEGER PRIMARY KEY AUTOINCREMENT,"
               " source TEXT NOT NULL, message_id TEXT NOT NULL, dest TEXT NOT NULL,"
               " kind INTEGER NOT NULL, priority INTEGER NOT NULL,"
               " stored_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
               " state INTEGER NOT NULL DEFAULT 0, done_ms INTEGER, dead_reason TEXT,"
               " body BLOB NOT NULL, content_hash INTEGER NOT NULL,"
               " express INTEGER NOT NULL DEFAULT 0, ref_key TEXT,"
               " UNIQUE(source, message_id));"
               "CREATE INDEX messages_pending ON messages(dest, seq) WHERE state = 0;"
               "CREATE INDEX messages_express ON messages(dest, seq)"
               " WHERE state = 0 AND express = 1;"
               "CREATE INDEX messages_expiry ON messages(expires_ms) WHERE state = 0;"
               "CREATE INDEX messages_done ON messages(done_ms) WHERE state = 1;"
               "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
               "INSERT INTO meta VALUES('schema_version', 1);"
               "INSERT INTO messages(source, message_id, dest, kind, priority, stored_ms,"
               " expires_ms, state, done_ms, dead_reason, body, content_hash, express) VALUES"
               " ('t-a', 'm-1', 'lead', 1, 2, 1000, 99000, 1, 1500, NULL, x'01', 1, 0),"
               " ('t-a', 'm-2', 'lead', 1, 2, 1000, 99000, 0, NULL, NULL, x'02', 2, 0),"
               " ('t-a', 'm-3', 'lead', 1, 2, 1000, 99000, 2, 1600, 'expired', x'03', 3, 0),"
               " ('t-a', 'm-4', 'lab', 1, 2, 1000, 99000, 0, NULL, NULL, x'04', 4, 1);");
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "2");
    assert_string_equal(s_seqs(s_load_express(fx, "lab"), buf, sizeof buf), "4");
    s_done_t *d = s_list(fx, MSG_DEAD, NULL, 100);
    assert_int_equal(d->n_rows, 1);
    assert_int_equal(d->rows[0].seq, 3);
    assert_string_equal(d->rows[0].dead_reason, "expired");
    assert_int_equal(s_ack(fx, 1, "lead", 9)->status, STORE_DUPLICATE);
    assert_int_equal(s_ack(fx, 2, "lead", 2000)->status, STORE_OK);
    d = s_put(fx, "t-a", "m-5", "lead", "b", 99000);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->seq, 5);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "other", 99000)->status, STORE_CONFLICT);
    store_destroy(&fx->store);

    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'schema_version'"),
                     3);
    /* A daemon of version 1 cannot open it: its schema statement fails. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    assert_int_not_equal(sqlite3_exec(db, "CREATE INDEX IF NOT EXISTS messages_pending ON"
                                          " messages(dest, seq) WHERE state = 0",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master WHERE name LIKE"
                                         " 'messages\\_%' ESCAPE '\\' AND type = 'index'"),
                     0);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master WHERE name IN"
                                         " ('message_dead', 'message_delivered')"),
                     2);
    /* 1 delivered and 3 dead as they were; 2 delivered since. */
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq || ':' || state || ':' ||"
                                         " done_ms, ' ') = '1:1:1500 2:1:2000 3:2:1600'"
                                         " FROM (SELECT * FROM message_done ORDER BY seq)"),
                     1);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "5");
    assert_string_equal(s_seqs(s_load(fx, "lab", 0, 100), buf, sizeof buf), "4");
}

/*
 * A batch of reads writes nothing, so it succeeds when writes fail (a full
 * disk; here a trigger refuses every write to meta, where the store keeps
 * its pending floor, which the acks below would have it raise).
 */
static void test_store_reads_need_no_write(void **state)
{
    s_fx_t *fx = *state;
    char buf[64];
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_ack(fx, 1, "lead", 2000)->status, STORE_OK);
    s_refuse_writes(fx->path, "meta", true);
    struct timespec pause = {1, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    s_done_t *d = s_load(fx, "lead", 0, 100);
    assert_int_equal(d->status, STORE_OK);
    assert_string_equal(s_seqs(d, buf, sizeof buf), "2");
    assert_int_equal(s_simple(fx, STORE_SUMMARY)->status, STORE_OK);
    assert_int_equal(s_list(fx, MSG_PENDING, NULL, 10)->status, STORE_OK);
    assert_false(store_unavailable(fx->store));
}

/* PRUNE goes by the time of delivery alone: a message stored under a
 * clock set far ahead does not hold back the others (nor itself). */
static void test_store_prune_ignores_clock_steps(void **state)
{
    s_fx_t *fx = *state;
    for (int i = 1; i <= 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "m-%d", i);
        s_put(fx, "t-a", id, "lead", "b", 99000);
        assert_int_equal(s_ack(fx, (uint64_t)i, "lead", 2000)->status, STORE_OK);
    }
    s_sql_exec(fx->path, "UPDATE messages SET stored_ms = 4000000000000 WHERE seq = 1");
    assert_int_equal(s_prune(fx, 50000, 100)->value, 5);
    assert_int_equal(s_list(fx, MSG_DELIVERED, NULL, 100)->n_rows, 0);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages"), 0);
    assert_int_equal(s_expire(fx, 200000, 0)->n_rows, 0); /* limit 0: none */
}

/* A store whose schema a later version made is not opened: requests fail
 * with STORE_UNAVAILABLE, and nothing in the file changes. */
static void test_store_refuses_newer_schema(void **state)
{
    s_fx_t *fx = *state;
    s_sql_exec(fx->path, "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
                         "INSERT INTO meta VALUES('schema_version', 4);");
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    assert_true(store_unavailable(fx->store));
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master"), 2);
}

/* A new store is made with 8 KB pages; a store made with SQLite's default
 * 4 KB pages keeps them (and works). */
static void test_store_new_files_have_8k_pages(void **state)
{
    s_fx_t *fx = *state;
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "body", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "PRAGMA page_size"), 8192);

    char old[sizeof fx->path + 8];
    snprintf(old, sizeof old, "%s.old", fx->path);
    s_sql_exec(old, "PRAGMA page_size=4096; CREATE TABLE earlier(x);");
    fx->store = s_open(fx, old);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "body", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(old, "PRAGMA page_size"), 4096);
    assert_int_equal(s_sql_int(old, "SELECT count(*) FROM messages"), 1);
    s_rm(fx->dir, "medroute.db.old");
    s_rm(fx->dir, "medroute.db.old-wal");
    s_rm(fx->dir, "medroute.db.old-shm");
}

/* main() applied the process-wide settings before any test: after a store
 * has worked, SQLite has counted no memory, and the settings can no longer
 * be changed. */
static void test_store_process_init_turns_off_memory_statistics(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "body", 99000)->status, STORE_OK);
    assert_int_equal(sqlite3_memory_used(), 0);
    assert_int_equal(store_process_init(), -1);
}

/*
 * An event counted by store_tally() (a redelivery, a refusal answered with
 * an Error) happened whatever becomes of the batch it lands in: when that
 * batch rolls back for another request's failure, the count is kept and
 * written by the next batch that commits, once.  The rolled-back PUT's own
 * count is not (it was not stored).
 */
static void test_store_tally_survives_a_failed_batch(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    s_refuse_writes(fx->path, "messages", true); /* the next PUT fails its batch */
    /* Hold the write lock so that the store thread waits in BEGIN with the
     * tally as its first request, while the PUT joins the same batch. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    store_tally(fx->store, "messages_redelivered_total", "destination=\"lead\"", 1);
    s_done_t *put = s_put_req(fx, "t-a", "m-2", "lead", "b", 99000);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    s_wait(fx, put);
    assert_int_equal(put->status, STORE_UNAVAILABLE);
    /* A second failed batch: the kept count is not written, nor lost, and a
     * new one of the same key merges with it. */
    store_tally(fx->store, "messages_redelivered_total", "destination=\"lead\"", 1);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"),
                     0);
    s_refuse_writes(fx->path, "messages", false);
    assert_int_equal(s_put(fx, "t-a", "m-3", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_put(fx, "t-a", "m-4", "lead", "b", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    /* The redeliveries happened twice: counted twice, in one row. */
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"),
                     2);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"),
                     1);
    /* The PUTs that rolled back stored nothing, and count nothing. */
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'messages_stored_total'"),
                     3);
}

/* A count submitted while the database cannot even be opened (a directory
 * where the file goes) is written once it can. */
static void test_store_tally_survives_a_closed_database(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(mkdir(fx->path, 0700), 0);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_true(store_unavailable(fx->store));
    store_tally(fx->store, "messages_rejected_total", "code=\"INVALID\"", 1);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 9000)->status, STORE_UNAVAILABLE);
    store_tally(fx->store, "messages_rejected_total", "code=\"INVALID\"", 1);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 9000)->status, STORE_UNAVAILABLE);
    assert_int_equal(rmdir(fx->path), 0);
    assert_int_equal(s_put(fx, "t-a", "m-3", "lead", "b", 9000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"
                                         " AND labels = 'code=\"INVALID\"'"),
                     2);
}

/* Counts kept while the database could not be opened are written at stop
 * if it can be opened by then, though no request came to open it again
 * (an operator fixes the disk and restarts the broker). */
static void test_store_kept_counts_written_at_stop_after_an_outage(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(mkdir(fx->path, 0700), 0);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    store_tally(fx->store, "messages_rejected_total", "code=\"STORE_UNAVAILABLE\"", 1);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 9000)->status, STORE_UNAVAILABLE);
    assert_int_equal(rmdir(fx->path), 0);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"
                                         " AND labels = 'code=\"STORE_UNAVAILABLE\"'"),
                     1);
}

/* A capacity notice for clinic/cardiology/2024-11-25 (broker-bound PUT). */
static s_done_t *s_put_capacity(s_fx_t *fx, const char *id, int64_t capacity, int64_t reserved)
{
    store_req_t *req = s_put_build(fx, "lead", id, "broker", id, 99000000);
    req->msg.kind = MEDROUTE__V1__KIND__KIND_CAPACITY;
    req->state = MSG_DELIVERED;
    clin_facts_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->kind = MEDROUTE__V1__KIND__KIND_CAPACITY;
    f->capacity = calloc(1, sizeof *f->capacity);
    assert_non_null(f->capacity);
    f->n_capacity = 1;
    f->capacity[0].resource = RES_CLINIC;
    f->capacity[0].unit = strdup("cardiology");
    f->capacity[0].date = strdup("2024-11-25");
    f->capacity[0].capacity = capacity;
    f->capacity[0].reserved = reserved;
    f->capacity[0].slot_start_ms = 1000; /* long past: the cut-off is due at once */
    req->facts = f;
    s_done_t *d = s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

/* A family doctor's up-referral ref_id from t-a to lead (message id), for
 * the clinic of department unit. */
static s_done_t *s_put_referral_req(s_fx_t *fx, const char *id, const char *ref_id,
                                    const char *unit)
{
    store_req_t *req = s_put_build(fx, "t-a", id, "lead", id, 99000000);
    req->msg.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    clin_facts_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    f->direction = REF_DIR_UP;
    f->ref_id = strdup(ref_id);
    f->service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC;
    f->unit = strdup(unit);
    f->family_doctor = true;
    f->expires_ms = 99000000;
    req->facts = f;
    return s_submit(fx, req);
}

/* Referral R-1 to the cardiology clinic, as above; waits for it. */
static s_done_t *s_put_referral(s_fx_t *fx)
{
    s_done_t *d = s_put_referral_req(fx, "ref-1", "R-1", "cardiology");
    s_wait(fx, d);
    return d;
}

/* A step of referral R-1 (from t-a to lead) sent by source. */
static s_done_t *s_put_step(s_fx_t *fx, const char *id, const char *source, const char *dest,
                            int step)
{
    store_req_t *req = s_put_build(fx, source, id, dest, id, 99000000);
    req->msg.kind = MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE;
    clin_facts_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->kind = MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE;
    f->ref_id = strdup("R-1");
    f->step = step;
    f->has_reason = true;
    f->appointment_day = strdup("2024-11-25");
    req->facts = f;
    s_done_t *d = s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

static s_done_t *s_scan(s_fx_t *fx, int64_t now_ms)
{
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_SCAN, &d);
    req->now_ms = now_ms;
    req->sla.reserve_cutoff_s = 0;
    req->sla.critical_readback_s = 900;
    s_submit(fx, req);
    s_wait(fx, d);
    return d;
}

/* Reserved units neither claimed nor released, of the one resource. */
static long long s_reserve_left(const s_fx_t *fx)
{
    return s_sql_int(fx->path, "SELECT reserved - released - claimed_reserved FROM capacity");
}

/* reserve_released_unclaimed_units_total minus the ledger's RELEASED: 0 when
 * every unit released was counted once. */
static long long s_released_uncounted(const s_fx_t *fx)
{
    return s_sql_int(fx->path, "SELECT (SELECT released FROM capacity) - (SELECT"
                               " coalesce(sum(value), 0) FROM tallies WHERE"
                               " name = 'reserve_released_unclaimed_units_total'"
                               " AND labels = 'resource=\"clinic\"')");
}

/*
 * A resource whose reserve was released at its cut-off, then published
 * again with a larger reserve: the new reserved units are released by the
 * next scan (docs/referrals.md 2.3), and counted once, the units released
 * before not again.  A reserved claim given back after the cut-off goes to
 * general use at once, and is counted too: the tally sums RELEASED.
 */
static void test_store_reserve_republished_after_cutoff_is_released(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put_capacity(fx, "cap-1", 10, 2)->status, STORE_OK);
    /* Before the scan, a family doctor's referral takes a reserved unit. */
    assert_int_equal(s_put_referral(fx)->status, STORE_OK);
    assert_int_equal(s_put_step(fx, "acc-1", "lead", "t-a",
                                MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED)->status,
                     STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT claimed_reserved FROM capacity"), 1);
    assert_int_equal(s_scan(fx, 5000)->status, STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT released FROM capacity"), 1);
    assert_int_equal(s_reserve_left(fx), 0);
    assert_int_equal(s_released_uncounted(fx), 0);
    /* Cancelled after the cut-off: the reserved unit is general at once. */
    assert_int_equal(s_put_step(fx, "can-1", "t-a", "lead",
                                MEDROUTE__V1__REFERRAL_STEP__STEP_CANCELLED)->status,
                     STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT released FROM capacity"), 2);
    assert_int_equal(s_reserve_left(fx), 0);
    assert_int_equal(s_released_uncounted(fx), 0);
    /* Published again with 2 more reserved units. */
    assert_int_equal(s_put_capacity(fx, "cap-2", 20, 4)->status, STORE_OK);
    assert_int_equal(s_scan(fx, 6000)->status, STORE_OK);
    assert_int_equal(s_scan(fx, 7000)->status, STORE_OK);
    assert_int_equal(s_reserve_left(fx), 0);
    assert_int_equal(s_sql_int(fx->path, "SELECT released FROM capacity"), 4);
    assert_int_equal(s_released_uncounted(fx), 0);
    /* The same notice again changes nothing, and releases nothing twice. */
    assert_int_equal(s_put_capacity(fx, "cap-3", 20, 4)->status, STORE_OK);
    assert_int_equal(s_scan(fx, 8000)->status, STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT released FROM capacity"), 4);
    assert_int_equal(s_released_uncounted(fx), 0);
}

/*
 * `medroute slots` without a date: the ledger keeps every day ever
 * published (a county publishing 90 resources a day passes 1,000 rows in
 * under two weeks), and the listing holds at most 1,000 rows.  Those it
 * keeps are the latest days, in date order: not the oldest, which would
 * leave out today's and the coming days' resources for good.
 */
static void test_store_slots_listing_keeps_the_latest_days(void **state)
{
    s_fx_t *fx = *state;
    store_req_t *req = s_put_build(fx, "lead", "cap-many", "broker", "cap-many", 99000000);
    req->msg.kind = MEDROUTE__V1__KIND__KIND_CAPACITY;
    req->state = MSG_DELIVERED;
    clin_facts_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->kind = MEDROUTE__V1__KIND__KIND_CAPACITY;
    f->n_capacity = 1001;
    f->capacity = calloc(f->n_capacity, sizeof *f->capacity);
    assert_non_null(f->capacity);
    for (size_t i = 0; i < f->n_capacity; i++) {
        char unit[32];
        snprintf(unit, sizeof unit, "u%04zu", i);
        f->capacity[i].resource = RES_CLINIC;
        f->capacity[i].unit = strdup(unit);
        /* 1,000 on an old day, the last one on the day after */
        f->capacity[i].date = strdup(i < 1000 ? "2024-11-25" : "2024-11-26");
        f->capacity[i].capacity = 10;
        f->capacity[i].reserved = 2;
        f->capacity[i].slot_start_ms = 1000;
    }
    req->facts = f;
    s_done_t *d = s_submit(fx, req);
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_OK);
    store_req_t *q = s_req(fx, STORE_SLOTS, &d);
    s_submit(fx, q);
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_slots, 1000);
    assert_string_equal(d->last_slot_date, "2024-11-26");
    assert_string_equal(d->first_slot_date, "2024-11-25");
}

/* A store left by the fault above (reserve unreleased past the cut-off,
 * released_at_ms set) is repaired at open: the next scan releases it. */
static void test_store_reserve_left_unreleased_is_repaired_at_open(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put_capacity(fx, "cap-1", 10, 2)->status, STORE_OK);
    assert_int_equal(s_scan(fx, 5000)->status, STORE_OK);
    store_destroy(&fx->store);
    s_sql_exec(fx->path, "UPDATE capacity SET capacity = 20, reserved = 4");
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_scan(fx, 6000)->status, STORE_OK);
    assert_int_equal(s_reserve_left(fx), 0);
    assert_int_equal(s_released_uncounted(fx), 0);
}

/* While set, connections opened after s_deny_rollback_install refuse to
 * prepare a ROLLBACK (their authorizer denies it): a ROLLBACK that fails
 * and leaves the transaction open, which SQLite itself does only on rare
 * I/O errors. */
static atomic_bool s_deny_rollback;

static int s_rollback_auth(void *arg, int action, const char *a, const char *b, const char *c,
                           const char *d)
{
    (void)arg;
    (void)b;
    (void)c;
    (void)d;
    if (action == SQLITE_TRANSACTION && a != NULL && strcmp(a, "ROLLBACK") == 0 &&
        atomic_load(&s_deny_rollback))
        return SQLITE_DENY;
    return SQLITE_OK;
}

static int s_rollback_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    return sqlite3_set_authorizer(db, s_rollback_auth, NULL);
}

/*
 * A failed batch whose ROLLBACK fails too: the pending set is rolled back
 * but the transaction would stay open (holding the write lock, and every
 * later BEGIN failing inside it).  The store closes the connection (which
 * rolls it back) and the next batch reopens and rebuilds from the file.
 */
static void test_store_failed_rollback_reopens(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_rollback_ext), SQLITE_OK);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    s_sql_exec(fx->path, "CREATE TRIGGER no_bad BEFORE INSERT ON messages"
                         " WHEN NEW.message_id = 'm-bad' BEGIN SELECT RAISE(ABORT, 'test'); END");
    atomic_store(&s_deny_rollback, true);
    assert_int_equal(s_put(fx, "t-a", "m-bad", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    atomic_store(&s_deny_rollback, false);
    /* The next batch works, on a reopened connection that agrees with the file. */
    s_done_t *d = s_put(fx, "t-a", "m-2", "lead", "b", 99000);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->seq, 2);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "1 2");
    assert_true(s_log_contains(fx, "event=store.rollback_failed"));
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_rollback_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages"), 2);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages"
                                         " WHERE message_id = 'm-bad'"),
                     0);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "1 2");
}

/* While set, connections opened after s_commit_ext is installed turn their
 * COMMIT into a ROLLBACK (a commit hook that returns non-zero): a batch that
 * fails at its very end, after the pending floor was raised in it. */
static atomic_bool s_deny_commit;

static int s_commit_hook(void *arg)
{
    (void)arg;
    return atomic_load(&s_deny_commit) ? 1 : 0;
}

static int s_commit_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    (void)sqlite3_commit_hook(db, s_commit_hook, NULL);
    return SQLITE_OK;
}

/*
 * A batch whose COMMIT fails after s_floor raised the floor past an old
 * pending message and pinned it: SQLite rolls both back and the connection
 * stays open, so the store must take back the floor it wrote in memory
 * too.  Otherwise the next raise starts from the floor that was never
 * committed, does not pin the old message, and writes a floor above it: the
 * next open loses it.
 */
static void test_store_floor_raise_in_failed_commit_is_undone(void **state)
{
    s_fx_t *fx = *state;
    char buf[128];
    struct timespec pause = {1, 100 * 1000 * 1000};
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_commit_ext), SQLITE_OK);
    fx->floor_lag = 4;
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    s_put(fx, "t-a", "m-1", "off", "b", 99000); /* 1: stays pending; the floor at 1 */
    s_put_delivered(fx, 2, 10);
    nanosleep(&pause, NULL);
    /* This batch raises the floor to 8 and pins 1; its COMMIT fails, and
     * the file keeps what it had. */
    long long floor = s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'");
    assert_true(floor < 8);
    atomic_store(&s_deny_commit, true);
    assert_int_equal(s_put(fx, "t-a", "m-11", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    atomic_store(&s_deny_commit, false);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     floor);
    nanosleep(&pause, NULL);
    /* The next raise, on the same connection, pins 1 again. */
    assert_int_equal(s_put(fx, "t-a", "m-11", "lead", "b", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_commit_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT value FROM meta WHERE key = 'pending_floor'"),
                     8);
    assert_int_equal(s_sql_int(fx->path, "SELECT group_concat(seq) FROM pending_pinned"), 1);
    fx->store = s_open(fx, fx->path);
    assert_string_equal(s_seqs(s_load(fx, "off", 0, 100), buf, sizeof buf), "1");
}

/* While set, io_fault() (a function of every connection opened after
 * s_io_fault_ext is installed) fails with SQLITE_IOERR_WRITE, and goes on
 * failing on that connection once it has: a file handle that failed stays
 * failed (a device gone, a stale network handle), while a connection
 * opened afterwards is sound.  A trigger calls it where a test wants the
 * disk to fail. */
static atomic_bool s_io_fault;

static void s_io_fault_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    bool *broken = sqlite3_user_data(ctx);
    if (atomic_load(&s_io_fault))
        *broken = true;
    if (*broken)
        sqlite3_result_error_code(ctx, SQLITE_IOERR_WRITE);
    else
        sqlite3_result_null(ctx);
}

static int s_io_fault_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    bool *broken = calloc(1, sizeof *broken);
    if (broken == NULL)
        return SQLITE_NOMEM;
    return sqlite3_create_function_v2(db, "io_fault", 0, SQLITE_UTF8, broken, s_io_fault_fn, NULL,
                                      NULL, free);
}

/* Waits until the store reports itself unavailable; fails after S_WAIT_MS. */
static void s_wait_unavailable(const s_fx_t *fx)
{
    uint64_t start = uv_hrtime();
    while (!store_unavailable(fx->store)) {
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("store not unavailable within %d ms", S_WAIT_MS);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/*
 * An I/O error while the idle store writes its kept counts (s_flush_kept)
 * leaves the connection suspect, as after a failed batch: it is closed, and
 * the next request runs on a connection opened again, instead of failing on
 * the broken one first.  The count is written by that request's batch.
 */
static void test_store_kept_counts_io_error_reopens(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_io_fault_ext), SQLITE_OK);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    s_sql_exec(fx->path, "CREATE TRIGGER io_fault BEFORE INSERT ON tallies"
                         " BEGIN SELECT io_fault(); END");
    atomic_store(&s_io_fault, true);
    store_tally(fx->store, "messages_rejected_total", "code=\"INVALID\"", 1);
    s_wait_unavailable(fx); /* the idle write failed */
    atomic_store(&s_io_fault, false);
    assert_true(s_log_contains(fx, "during=idle"));
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_OK);
    assert_false(store_unavailable(fx->store));
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_io_fault_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"),
                     1);
}

/* fsync, wrapped (-Wl,--wrap=fsync): in the daemon's code only a backup
 * calls it, on the directory it renamed the copy into (s_sync_parent).  The
 * directories synced are counted and the last one kept (device, inode);
 * written by the backup thread before its request completes, read after. */
static struct {
    int n;
    dev_t dev;
    ino_t ino;
} s_dir_synced;

int __real_fsync(int fd);
int __wrap_fsync(int fd);

int __wrap_fsync(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        s_dir_synced.n++;
        s_dir_synced.dev = st.st_dev;
        s_dir_synced.ino = st.st_ino;
    }
    return __real_fsync(fd);
}

/*
 * A backup to a bare file name is written in the working directory, and
 * that directory is synced after the rename, as a named one is: else a
 * crash could lose the backup's directory entry.  (The operator API takes
 * absolute paths only; store_submit takes any.)  Durability itself would
 * take cutting the power: the test sees the sync.
 */
static void test_store_backup_to_a_bare_name_syncs_the_working_directory(void **state)
{
    s_fx_t *fx = *state;
    char cwd[4096];
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(fx->dir), 0);
    memset(&s_dir_synced, 0, sizeof s_dir_synced);
    s_done_t *d;
    store_req_t *req = s_req(fx, STORE_BACKUP, &d);
    req->query = strdup("copy.db");
    assert_non_null(req->query);
    s_submit(fx, req);
    s_wait(fx, d);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(d->status, STORE_OK);
    struct stat dir;
    assert_int_equal(stat(fx->dir, &dir), 0);
    assert_int_equal(s_dir_synced.n, 1);
    assert_true(s_dir_synced.dev == dir.st_dev && s_dir_synced.ino == dir.st_ino);
    char copy[300];
    snprintf(copy, sizeof copy, "%s/copy.db", fx->dir);
    assert_int_equal(s_sql_int(copy, "SELECT count(*) FROM messages"), 1);
}

/* While set, connections opened after s_alter_ext is installed may not
 * ALTER a table (their authorizer denies it, SQLITE_AUTH): an upgrade whose
 * ALTER fails, as it would on a full disk, with its own code. */
static atomic_bool s_deny_alter;

static int s_alter_auth(void *arg, int action, const char *a, const char *b, const char *c,
                        const char *d)
{
    (void)arg;
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    return action == SQLITE_ALTER_TABLE && atomic_load(&s_deny_alter) ? SQLITE_DENY : SQLITE_OK;
}

static int s_alter_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    return sqlite3_set_authorizer(db, s_alter_auth, NULL);
}

/*
 * A store made before messages.express gets the column at open; when that
 * ALTER fails, the open fails with the ALTER's own error, which the log
 * gives (here SQLITE_AUTH, 23), not with the "no such column" of a later
 * statement (SQLITE_ERROR, 1) that hid it (a full disk read as a logic
 * error).  Once the ALTER can run, the store opens.
 */
static void test_store_failed_upgrade_logs_its_own_error(void **state)
{
    s_fx_t *fx = *state;
    store_destroy(&fx->store);
    s_sql_exec(fx->path, "ALTER TABLE messages DROP COLUMN express");
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_alter_ext), SQLITE_OK);
    atomic_store(&s_deny_alter, true);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_true(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "event=store.unavailable"));
    bool own = s_log_contains(fx, "sqlite=23");
    atomic_store(&s_deny_alter, false);
    assert_true(own);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_alter_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages WHERE express = 0"), 1);
}

/* The referrals_requested_total rows naming department dept. */
static long long s_dept_rows(const s_fx_t *fx, const char *dept)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM tallies WHERE name ="
             " 'referrals_requested_total' AND labels LIKE 'department=\"%s\",%%'", dept);
    return s_sql_int(fx->path, sql);
}

/*
 * A department label value admitted by a batch that rolls back leaves the
 * set of values in use with it (its tallies are gone too): with 255 in use,
 * a referral naming a new one in a failed batch, then another naming a
 * second new one, the second takes the last place; a third is folded.
 */
static void test_store_department_admitted_in_a_failed_batch_is_forgotten(void **state)
{
    s_fx_t *fx = *state;
    /* 255 departments in use, as tallies stored earlier (read at open). */
    store_destroy(&fx->store);
    s_sql_exec(fx->path, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                         " WHERE i < 255) INSERT INTO tallies(day, name, labels, value)"
                         " SELECT '2024-01-01', 'referrals_requested_total',"
                         " printf('department=\"d-%03d\",destination=\"lead\"', i), 1 FROM n");
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    s_refuse_writes(fx->path, "tallies", true); /* the referral's batch fails at its counts */
    s_done_t *d = s_put_referral_req(fx, "ref-1", "R-1", "neurology");
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_UNAVAILABLE);
    s_refuse_writes(fx->path, "tallies", false);
    d = s_put_referral_req(fx, "ref-2", "R-2", "nephrology");
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_OK);
    d = s_put_referral_req(fx, "ref-3", "R-3", "dermatology");
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_dept_rows(fx, "neurology"), 0);
    assert_int_equal(s_dept_rows(fx, "nephrology"), 1);
    assert_int_equal(s_dept_rows(fx, "dermatology"), 0);
    assert_int_equal(s_dept_rows(fx, "_other"), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'referral_departments_folded_total'"),
                     1);
}

/*
 * A kept count (store_tally) is written only by a batch that writes
 * anything else, as meta.pending_floor is (s_floor), or on its own when the
 * store is idle and healthy: while the disk refuses
 * writes, batches of reads (the router's LOADs, the operator's status,
 * lists and stats) must go on succeeding, not fail for want of disk because
 * a refusal or a redelivery was counted.  A read-only batch that commits
 * leaves the count kept; the first batch that writes and commits writes it,
 * once.
 */
static void test_store_reads_succeed_with_kept_counts(void **state)
{
    s_fx_t *fx = *state;
    char buf[64];
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    s_refuse_writes(fx->path, "tallies", true);
    assert_string_equal(s_seqs(s_load(fx, "lead", 0, 100), buf, sizeof buf), "1");
    store_tally(fx->store, "messages_redelivered_total", "destination=\"lead\"", 1);
    for (int i = 0; i < 3; i++) {
        s_done_t *d = s_load(fx, "lead", 0, 100);
        assert_int_equal(d->status, STORE_OK);
        assert_string_equal(s_seqs(d, buf, sizeof buf), "1");
    }
    assert_int_equal(s_simple(fx, STORE_SUMMARY)->status, STORE_OK);
    assert_int_equal(s_list(fx, 2, NULL, 10)->status, STORE_OK);
    assert_int_equal(s_simple(fx, STORE_STATS)->status, STORE_OK);
    /* Idle, the store tried to write the count in a transaction of its own:
     * refused, it reports the store unavailable, as a failed batch would,
     * and tries no more until a batch writes again. */
    assert_true(store_unavailable(fx->store));
    /* A batch that writes fails while the disk refuses; the count stays. */
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    s_refuse_writes(fx->path, "tallies", false);
    /* Reads that commit with writes allowed again neither write nor drop it. */
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"),
                     0);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_put(fx, "t-a", "m-3", "lead", "b", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"
                                         " AND labels = 'destination=\"lead\"'"),
                     1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                                         " WHERE name = 'messages_redelivered_total'"),
                     1);
}

/* Kept counts that no batch wrote (nothing was written since a refusal) are
 * written when the store stops, not lost with it. */
static void test_store_kept_counts_written_at_stop(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    store_tally(fx->store, "messages_rejected_total", "code=\"INVALID\"", 1);
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_OK);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"
                                         " AND labels = 'code=\"INVALID\"'"),
                     1);
}

/* On a quiet store a kept count does not wait for the next write: the
 * store writes it on its own once idle (stats and /metrics read the table). */
static void test_store_kept_counts_written_when_idle(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    store_tally(fx->store, "messages_rejected_total", "code=\"FORBIDDEN\"", 1);
    int found = 0;
    for (int i = 0; i < 500 && found == 0; i++) {
        found = s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                                    " WHERE name = 'messages_rejected_total'"
                                    " AND labels = 'code=\"FORBIDDEN\"'");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(found, 1);
    store_destroy(&fx->store);
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"),
                     1);
}

/*
 * The store's path is the operator's text (data_dir): its lines quote it,
 * cleaned (log_clean), as the daemon's other lines quote theirs.  Unquoted,
 * a directory named `a b="c` made `path=/.../a b="c/medroute.db`, its
 * `b="c/...` read as a field of its own (and a quote could forge others).
 */
static void test_store_log_lines_quote_the_path(void **state)
{
    s_fx_t *fx = *state;
    char sub[128], path[256], want[300];
    snprintf(sub, sizeof sub, "%s/a b=\"c", fx->dir);
    snprintf(path, sizeof path, "%s/medroute.db", sub);
    fx->store = s_open(fx, path); /* no directory yet: unavailable */
    assert_non_null(fx->store);
    assert_true(store_unavailable(fx->store));
    snprintf(want, sizeof want, "event=store.unavailable path=\"%s/a b=?c/medroute.db\" during=",
             fx->dir);
    assert_true(s_log_contains(fx, want));
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 9000)->status, STORE_OK);
    snprintf(want, sizeof want, "event=store.opened path=\"%s/a b=?c/medroute.db\" synchronous=",
             fx->dir);
    assert_true(s_log_contains(fx, want));
    snprintf(want, sizeof want, "event=store.recovered path=\"%s/a b=?c/medroute.db\" after=",
             fx->dir);
    assert_true(s_log_contains(fx, want));
    store_destroy(&fx->store);
    s_rm(sub, "medroute.db");
    s_rm(sub, "medroute.db-wal");
    s_rm(sub, "medroute.db-shm");
    assert_int_equal(rmdir(sub), 0);
}

/* sqlite3_column_blob, wrapped (-Wl,--wrap=sqlite3_column_blob): while
 * s_blob_fail_col is a column index, the next read of that column returns
 * NULL, as SQLite does when it runs out of memory there; else SQLite's. */
static atomic_int s_blob_fail_col = -1;

const void *__real_sqlite3_column_blob(sqlite3_stmt *st, int col);
const void *__wrap_sqlite3_column_blob(sqlite3_stmt *st, int col);

const void *__wrap_sqlite3_column_blob(sqlite3_stmt *st, int col)
{
    int want = col;
    if (atomic_compare_exchange_strong(&s_blob_fail_col, &want, -1))
        return NULL;
    return __real_sqlite3_column_blob(st, col);
}

/*
 * A message's body that SQLite cannot hand over (out of memory: a NULL
 * blob) fails the load as a whole (STORE_UNAVAILABLE, so the router loads
 * it again later), rather than being copied from NULL (a crash) or passed
 * on as empty.  The next load returns it whole.
 */
static void test_store_body_out_of_memory_fails_the_load(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "the body", 99000)->status, STORE_OK);
    atomic_store(&s_blob_fail_col, 9); /* s_read_row's body column */
    s_done_t *d = s_load(fx, "lead", 0, 10);
    assert_int_equal(atomic_load(&s_blob_fail_col), -1);
    assert_int_equal(d->status, STORE_UNAVAILABLE);
    assert_int_equal(d->n_rows, 0);
    assert_true(s_log_contains(fx, "sqlite=7 "));
    d = s_load(fx, "lead", 0, 10);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 1);
    s_assert_body(&d->rows[0], "the body");
}

/* sqlite3_column_text, wrapped (-Wl,--wrap=sqlite3_column_text): while
 * s_text_fail_sql is set, the next read of column s_text_fail_col by a
 * statement whose SQL holds that text returns NULL, as SQLite does when it
 * runs out of memory there; else SQLite's. */
static _Atomic(const char *) s_text_fail_sql;
static atomic_int s_text_fail_col = -1;

const unsigned char *__real_sqlite3_column_text(sqlite3_stmt *st, int col);
const unsigned char *__wrap_sqlite3_column_text(sqlite3_stmt *st, int col);

const unsigned char *__wrap_sqlite3_column_text(sqlite3_stmt *st, int col)
{
    const char *want = atomic_load(&s_text_fail_sql);
    if (want != NULL && col == atomic_load(&s_text_fail_col) && sqlite3_sql(st) != NULL &&
        strstr(sqlite3_sql(st), want) != NULL &&
        atomic_compare_exchange_strong(&s_text_fail_sql, &want, NULL))
        return NULL;
    return __real_sqlite3_column_text(st, col);
}

/*
 * A dead message's reason that SQLite cannot hand over (out of memory: a
 * NULL text) fails the LIST (STORE_UNAVAILABLE, the operator asks again),
 * rather than listing the message as one without a reason.  The next LIST
 * has it.
 */
static void test_store_dead_reason_out_of_memory_fails_the_list(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    assert_int_equal(s_drop(fx, 1, "wrong ward", 7000)->status, STORE_OK);
    atomic_store(&s_text_fail_col, 8); /* s_read_row's reason column */
    atomic_store(&s_text_fail_sql, "d.dead_reason");
    s_done_t *d = s_list(fx, MSG_DEAD, NULL, 10);
    assert_null(atomic_load(&s_text_fail_sql));
    assert_int_equal(d->status, STORE_UNAVAILABLE);
    assert_int_equal(d->n_rows, 0);
    assert_true(s_log_contains(fx, "sqlite=7 "));
    d = s_list(fx, MSG_DEAD, NULL, 10);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 1);
    assert_string_equal(d->rows[0].dead_reason, "wrong ward");
}

/*
 * A referral whose key (source/referral_id) does not fit the key's bytes is
 * refused as INVALID, alone, and nothing of it is stored: cut short, two
 * long ids sharing a prefix were one referral, the second refused as
 * existing already.  (facts.c bounds the ids from the wire far below.)
 */
static void test_store_referral_key_that_does_not_fit_is_refused(void **state)
{
    s_fx_t *fx = *state;
    char id[201];
    memset(id, 'R', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    s_done_t *d = s_put_referral_req(fx, "ref-long-1", id, "cardiology");
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_REFUSED);
    assert_int_equal(d->seq, 0);
    id[sizeof id - 2] = 'S';
    d = s_put_referral_req(fx, "ref-long-2", id, "cardiology");
    s_wait(fx, d);
    assert_int_equal(d->status, STORE_REFUSED);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM messages"), 0);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM referrals"), 0);
    assert_int_equal(s_put_referral(fx)->status, STORE_OK);
}

/*
 * A referral's key that SQLite cannot hand over at its delivery ack (out
 * of memory: a NULL text) fails the ack (the destination acks again),
 * rather than taking the message for one without a referral: it was
 * acknowledged and the referral left REQUESTED, never RECEIVED.
 */
static void test_store_ref_key_out_of_memory_fails_the_ack(void **state)
{
    s_fx_t *fx = *state;
    s_done_t *d = s_put_referral(fx);
    assert_int_equal(d->status, STORE_OK);
    uint64_t seq = d->seq;
    atomic_store(&s_text_fail_col, 0);
    atomic_store(&s_text_fail_sql, "SELECT ref_key FROM messages");
    d = s_ack(fx, seq, "lead", 5000);
    assert_null(atomic_load(&s_text_fail_sql));
    assert_int_equal(d->status, STORE_UNAVAILABLE);
    assert_int_equal(s_sql_int(fx->path, "SELECT state FROM referrals"), REF_REQUESTED);
    assert_int_equal(s_ack(fx, seq, "lead", 5001)->status, STORE_OK);
    assert_int_equal(s_sql_int(fx->path, "SELECT state FROM referrals"), REF_RECEIVED);
}

/*
 * A pending message's destination that SQLite cannot hand over when the
 * store opens (out of memory: a NULL text of a value) fails the open with
 * SQLITE_NOMEM (7), not SQLITE_CORRUPT (11): a database called malformed
 * in the log, closed and opened again, for a lack of memory.  The next
 * batch opens it and finds the message.
 */
static void test_store_rebuild_dest_out_of_memory_is_not_corrupt(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "the body", 99000)->status, STORE_OK);
    store_destroy(&fx->store);
    atomic_store(&s_text_fail_col, 1); /* s_rebuild_rows' dest column */
    atomic_store(&s_text_fail_sql, "m.ref_key IS NOT NULL");
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_null(atomic_load(&s_text_fail_sql));
    assert_true(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "during=open sqlite=7 "));
    assert_false(s_log_contains(fx, "sqlite=11 "));
    s_done_t *d = s_load(fx, "lead", 0, 10);
    assert_int_equal(d->status, STORE_OK);
    assert_int_equal(d->n_rows, 1);
    s_assert_body(&d->rows[0], "the body");
}

/* While set, the next statement that reads meta.value, on a connection
 * opened after s_meta_ext is installed, is denied (SQLITE_AUTH), once: a
 * transient failure to read the schema version (a busy or unreadable page,
 * no memory). */
static atomic_bool s_deny_meta_once;

static int s_meta_auth(void *arg, int action, const char *a, const char *b, const char *c,
                       const char *d)
{
    (void)arg;
    (void)c;
    (void)d;
    bool armed = true;
    if (action == SQLITE_READ && a != NULL && b != NULL && strcmp(a, "meta") == 0 &&
        strcmp(b, "value") == 0 && atomic_compare_exchange_strong(&s_deny_meta_once, &armed, false))
        return SQLITE_DENY;
    return SQLITE_OK;
}

static int s_meta_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    return sqlite3_set_authorizer(db, s_meta_auth, NULL);
}

/*
 * Only a store without a meta table is a new one: a failure to read its
 * schema_version fails the open with its own error (here SQLITE_AUTH, 23).
 * Taken for a new store, it let a store a later version made be opened (and
 * the schema statements write to it) when the failure was transient; the
 * next open finds the version and refuses the store (store.too_new).
 */
static void test_store_unreadable_schema_version_fails_the_open(void **state)
{
    s_fx_t *fx = *state;
    s_sql_exec(fx->path, "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
                         "INSERT INTO meta VALUES('schema_version', 4);");
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_meta_ext), SQLITE_OK);
    atomic_store(&s_deny_meta_once, true);
    fx->store = s_open(fx, fx->path);
    bool denied = !atomic_load(&s_deny_meta_once);
    atomic_store(&s_deny_meta_once, false);
    assert_non_null(fx->store);
    assert_true(denied);
    assert_true(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "during=open sqlite=23 "));
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    assert_true(s_log_contains(fx, "event=store.too_new"));
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_meta_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT count(*) FROM sqlite_master"), 2);
}

/* A PUT's callback that counts, as dispatch counts a refusal it answers. */
static void on_put_counts(store_req_t *req, void *arg)
{
    s_fx_t *fx = arg;
    assert_int_equal(req->status, STORE_OK);
    fx->completed++;
    store_tally(fx->store, "messages_rejected_total", "code=\"LATE\"", 1);
}

/*
 * A count submitted by a callback that store_destroy runs (the last
 * completions, after the store thread has ended) is written at stop with
 * the other kept counts: it was freed uncounted, as a request come too late.
 */
static void test_store_count_of_a_last_callback_is_written_at_stop(void **state)
{
    s_fx_t *fx = *state;
    store_req_t *req = store_req_new(STORE_PUT, on_put_counts, fx);
    assert_non_null(req);
    req->msg.source = strdup("t-a");
    req->msg.message_id = strdup("m-1");
    req->msg.dest = strdup("lead");
    req->msg.kind = 1;
    req->msg.expires_ms = 99000;
    req->msg.body = (uint8_t *)strdup("b");
    req->msg.body_len = 1;
    store_submit(fx->store, req);
    store_destroy(&fx->store); /* no loop turn in between: its callback runs in there */
    assert_int_equal(fx->completed, 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT coalesce(sum(value), 0) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"
                                         " AND labels = 'code=\"LATE\"'"),
                     1);
}

/* Waits until the log holds one of two lines; fails after S_WAIT_MS. */
static void s_wait_log(s_fx_t *fx, const char *one, const char *other)
{
    uint64_t start = uv_hrtime();
    while (!s_log_contains(fx, one) && !s_log_contains(fx, other)) {
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("neither %s nor %s logged within %d ms", one, other, S_WAIT_MS);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* While set, busy_fault() (a function of every connection opened after
 * s_busy_fault_ext is installed) fails with SQLITE_BUSY, as a statement
 * that meets another process's lock does once busy_timeout has passed.  A
 * trigger calls it where a test wants the lock. */
static atomic_bool s_busy_fault;

static void s_busy_fault_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    if (atomic_load(&s_busy_fault))
        sqlite3_result_error_code(ctx, SQLITE_BUSY);
    else
        sqlite3_result_null(ctx);
}

static int s_busy_fault_ext(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    return sqlite3_create_function_v2(db, "busy_fault", 0, SQLITE_UTF8, NULL, s_busy_fault_fn,
                                      NULL, NULL, NULL);
}

/*
 * The idle write of a kept count that meets a busy lock (another process
 * writing the file) is no outage: no request failed, so the store is not
 * reported unavailable (/healthz 503 until some batch wrote, on a quiet
 * broker for long); it is tried again, and once the lock is gone the count
 * is written with no request to carry it.
 */
static void test_store_kept_counts_busy_lock_defers_only(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(sqlite3_auto_extension((void (*)(void))s_busy_fault_ext), SQLITE_OK);
    fx->store = s_open(fx, fx->path);
    assert_non_null(fx->store);
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    s_sql_exec(fx->path, "CREATE TRIGGER busy_fault BEFORE INSERT ON tallies"
                         " BEGIN SELECT busy_fault(); END");
    atomic_store(&s_busy_fault, true);
    store_tally(fx->store, "messages_rejected_total", "code=\"INVALID\"", 1);
    s_wait_log(fx, "event=store.kept_deferred", "event=store.unavailable");
    bool unavailable = store_unavailable(fx->store);
    atomic_store(&s_busy_fault, false);
    assert_false(unavailable);
    assert_true(s_log_contains(fx, "event=store.kept_deferred"));
    uint64_t start = uv_hrtime();
    while (s_sql_int(fx->path, "SELECT count(*) FROM tallies"
                               " WHERE name = 'messages_rejected_total'") == 0) {
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("the kept count not written within %d ms", S_WAIT_MS);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_false(store_unavailable(fx->store));
    assert_false(s_log_contains(fx, "event=store.unavailable"));
    store_destroy(&fx->store);
    assert_int_equal(sqlite3_cancel_auto_extension((void (*)(void))s_busy_fault_ext), 1);
    assert_int_equal(s_sql_int(fx->path, "SELECT sum(value) FROM tallies"
                                         " WHERE name = 'messages_rejected_total'"),
                     1);
}

/* Whether the database file itself (not its WAL) holds the bytes s. */
static bool s_file_has(const char *path, const char *s)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    assert_int_equal(fclose(f), 0);
    return memmem(buf, n, s, strlen(s)) != NULL;
}

/* Waits until the database file holds s (the checkpoint thread copied the
 * WAL's page of it); fails after S_WAIT_MS. */
static void s_wait_file_has(const char *path, const char *s)
{
    uint64_t start = uv_hrtime();
    while (!s_file_has(path, s)) {
        if ((uv_hrtime() - start) / 1000000 > S_WAIT_MS)
            fail_msg("%s not in the database file within %d ms", s, S_WAIT_MS);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/*
 * The idle write of a kept count is a commit that writes, and wakes the
 * checkpoint thread as a batch's does: its pages reach the database file
 * soon, not at the next batch that writes (on a quiet broker, much later),
 * the WAL meanwhile not restarting.
 */
static void test_store_kept_counts_written_when_idle_are_checkpointed(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "body-of-m-1", 99000)->status, STORE_OK);
    s_wait_file_has(fx->path, "body-of-m-1"); /* the batch's checkpoint has run */
    store_tally(fx->store, "messages_rejected_total", "code=\"IDLE_CHECKPOINTED\"", 1);
    s_wait_file_has(fx->path, "code=\"IDLE_CHECKPOINTED\"");
}

/* Holds the store's write lock from a connection of the test's own (as
 * another process or an operator's sqlite3 would); s_unlock ends it. */
static sqlite3 *s_lock(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void s_unlock(sqlite3 *db)
{
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/*
 * A batch of reads (a router's page load) that meets a busy lock fails and
 * reports the store unavailable; once the lock is gone the next batch that
 * commits, of reads too, takes it again (every batch does), and ends the
 * outage: it stayed until a batch wrote, /healthz at 503 on a quiet broker
 * meanwhile.  A failure to write (here a trigger refusing it, as a full
 * disk) is still ended by a batch that writes only.
 */
static void test_store_busy_lock_met_by_reads_ends_at_the_next_batch(void **state)
{
    s_fx_t *fx = *state;
    assert_int_equal(s_put(fx, "t-a", "m-1", "lead", "b", 99000)->status, STORE_OK);
    sqlite3 *other = s_lock(fx->path);
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_UNAVAILABLE);
    assert_true(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "during=batch sqlite=5 "));
    s_unlock(other);
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_OK);
    assert_false(store_unavailable(fx->store));
    assert_true(s_log_contains(fx, "event=store.recovered"));

    s_refuse_writes(fx->path, "messages", true);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_UNAVAILABLE);
    other = s_lock(fx->path);
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_UNAVAILABLE);
    s_unlock(other);
    assert_int_equal(s_load(fx, "lead", 0, 100)->status, STORE_OK);
    assert_true(store_unavailable(fx->store));
    s_refuse_writes(fx->path, "messages", false);
    assert_int_equal(s_put(fx, "t-a", "m-2", "lead", "b", 99000)->status, STORE_OK);
    assert_false(store_unavailable(fx->store));
}

int main(void)
{
    umask(022);
    if (store_process_init() != 0)
        return 1;
#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup_store, s_teardown)
#define T0(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_store_put_assigns_increasing_seq),
        T(test_store_put_duplicate_same_body),
        T(test_store_put_conflict_different_body),
        T(test_store_put_identity_leaves_out_created_at),
        T(test_store_load_pending_in_seq_order),
        T(test_store_ack_states),
        T(test_store_ack_of_an_unsent_message_changes_nothing),
        T(test_store_summary_counts_per_dest),
        T(test_store_drop_list_retry),
        T(test_store_expire_moves_to_dead),
        T(test_store_expire_passes_over_those_out),
        T(test_store_prune_delivered_only),
        T(test_store_size_counts_db_and_wal),
        T(test_store_checkpoints_in_background),
        T(test_store_callbacks_in_submission_order),
        T(test_store_db_file_mode_0600),
        T(test_store_destroy_runs_remaining_callbacks),
        T0(test_store_unavailable_missing_dir_then_recovers),
        T0(test_store_unavailable_directory_in_place_then_recovers),
        T0(test_store_unavailable_not_a_database_then_recovers),
        T0(test_store_callback_may_take_rows),
        T0(test_store_migrates_old_referrals_table),
        T(test_store_pending_rebuilt_at_open),
        T(test_store_old_pending_is_pinned),
        T(test_store_failed_pins_defer_the_floor_only),
        T(test_store_pins_go_a_step_a_batch),
        T(test_store_pinned_message_that_dies_stays_dead),
        T(test_store_failed_batch_rolls_back_pending),
        T0(test_store_migrates_messages_v1),
        T(test_store_reads_need_no_write),
        T(test_store_prune_ignores_clock_steps),
        T0(test_store_refuses_newer_schema),
        T(test_store_process_init_turns_off_memory_statistics),
        T0(test_store_new_files_have_8k_pages),
        T(test_store_tally_survives_a_failed_batch),
        T0(test_store_tally_survives_a_closed_database),
        T0(test_store_kept_counts_written_at_stop_after_an_outage),
        T(test_store_reads_succeed_with_kept_counts),
        T(test_store_kept_counts_written_at_stop),
        T(test_store_kept_counts_written_when_idle),
        T(test_store_reserve_republished_after_cutoff_is_released),
        T(test_store_reserve_left_unreleased_is_repaired_at_open),
        T(test_store_slots_listing_keeps_the_latest_days),
        T0(test_store_failed_rollback_reopens),
        T0(test_store_floor_raise_in_failed_commit_is_undone),
        T0(test_store_kept_counts_io_error_reopens),
        T(test_store_backup_to_a_bare_name_syncs_the_working_directory),
        T(test_store_failed_upgrade_logs_its_own_error),
        T(test_store_department_admitted_in_a_failed_batch_is_forgotten),
        T0(test_store_log_lines_quote_the_path),
        T(test_store_body_out_of_memory_fails_the_load),
        T0(test_store_unreadable_schema_version_fails_the_open),
        T(test_store_count_of_a_last_callback_is_written_at_stop),
        T0(test_store_kept_counts_busy_lock_defers_only),
        T(test_store_kept_counts_written_when_idle_are_checkpointed),
        T(test_store_busy_lock_met_by_reads_ends_at_the_next_batch),
        T(test_store_dead_reason_out_of_memory_fails_the_list),
        T(test_store_referral_key_that_does_not_fit_is_refused),
        T(test_store_ref_key_out_of_memory_fails_the_ack),
        T(test_store_rebuild_dest_out_of_memory_is_not_corrupt),
    };
    /* MR_TEST_FILTER / MR_TEST_SKIP: glob patterns of test names to run or
     * skip (e.g. to run the rest under valgrind while a known bug is open). */
    if (getenv("MR_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MR_TEST_FILTER"));
    if (getenv("MR_TEST_SKIP"))
        cmocka_set_skip_filter(getenv("MR_TEST_SKIP"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
