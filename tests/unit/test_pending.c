/*
 * Unit tests for daemon/pending.c: the store's pending set in memory.  Order
 * per destination (appends, and retried seqs back in their place), the
 * express view, the merge over destinations, SUMMARY's figures per
 * destination, expiry and its lower bound, many removals (whatever the set
 * does to compact what it removed) and transactions committed or rolled back.
 *
 * The fixture keeps a model of what should be pending, by seq; s_check()
 * compares the set's whole public view with it: every destination's list
 * from several points, express and not, with and without a max, the merge,
 * SUMMARY, count, floor and every entry's fields.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include <cmocka.h>

#include "pending.h"

enum { MAXSEQ = 30000, NDEST = 3 };

static const char *const s_dests[NDEST] = {"icu", "lab", "ward-7"};

typedef struct {
    int dest;          /* index in s_dests; -1 when not pending */
    pending_entry_t e; /* as it was added */
} slot_t;

typedef struct {
    pending_t *p;
    slot_t *model;     /* [MAXSEQ + 1]: what should be pending, by seq */
    slot_t *saved;     /* [MAXSEQ + 1]: the model at pending_begin */
    uint64_t hi;       /* the highest seq ever added */
    uint64_t *buf;     /* [MAXSEQ]: what the set wrote */
    uint64_t *want;    /* [MAXSEQ]: what the model says */
    uint8_t *mark;     /* [MAXSEQ + 1]: seqs already seen in one output */
    uint64_t rng;
} fx_t;

static int s_teardown(void **state)
{
    fx_t *fx = *state;
    if (fx == NULL)
        return 0;
    pending_destroy(&fx->p);
    int rc = fx->p == NULL ? 0 : -1;
    free(fx->model);
    free(fx->saved);
    free(fx->buf);
    free(fx->want);
    free(fx->mark);
    free(fx);
    return rc;
}

static int s_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    *state = fx;
    if (fx == NULL)
        return -1;
    fx->p = pending_new();
    fx->model = calloc(MAXSEQ + 1, sizeof *fx->model);
    fx->saved = calloc(MAXSEQ + 1, sizeof *fx->saved);
    fx->buf = calloc(MAXSEQ, sizeof *fx->buf);
    fx->want = calloc(MAXSEQ, sizeof *fx->want);
    fx->mark = calloc(MAXSEQ + 1, 1);
    if (fx->p == NULL || fx->model == NULL || fx->saved == NULL || fx->buf == NULL ||
        fx->want == NULL || fx->mark == NULL) {
        s_teardown(state);
        return -1;
    }
    for (size_t i = 0; i <= MAXSEQ; i++)
        fx->model[i].dest = -1;
    fx->rng = 0x9e3779b97f4a7c15u;
    return 0;
}

static uint64_t s_rand(fx_t *fx)
{
    /* xorshift64*: the same sequence on every run */
    fx->rng ^= fx->rng >> 12;
    fx->rng ^= fx->rng << 25;
    fx->rng ^= fx->rng >> 27;
    return fx->rng * 0x2545f4914f6cdd1du;
}

/* A message as the store would hold it: stored_ms rises with seq, every third
 * one express, expiries far in the future. */
static pending_entry_t s_entry(uint64_t seq)
{
    pending_entry_t e = {
        .seq = seq,
        .stored_ms = 1700000000000 + (int64_t)seq * 10,
        .expires_ms = 1800000000000 + (int64_t)seq,
        .kind = (uint8_t)(seq % 7),
        .express = seq % 3 == 0,
        .referral = seq % 5 == 0,
        /* .live is the set's own: left false, as the store leaves it */
    };
    return e;
}

static void s_assert_same(const pending_entry_t *got, const pending_entry_t *want)
{
    assert_int_equal(got->seq, want->seq);
    assert_int_equal(got->stored_ms, want->stored_ms);
    assert_int_equal(got->expires_ms, want->expires_ms);
    assert_int_equal(got->kind, want->kind);
    assert_int_equal(got->express, want->express);
    assert_int_equal(got->referral, want->referral);
}

/* Adds e for s_dests[d], to the set and to the model. */
static void s_add_e(fx_t *fx, int d, pending_entry_t e)
{
    assert_true(e.seq >= 1 && e.seq <= MAXSEQ);
    assert_int_equal(fx->model[e.seq].dest, -1);
    assert_int_equal(pending_add(fx->p, s_dests[d], &e), 0);
    fx->model[e.seq].dest = d;
    fx->model[e.seq].e = e;
    if (e.seq > fx->hi)
        fx->hi = e.seq;
}

static void s_add(fx_t *fx, int d, uint64_t seq)
{
    s_add_e(fx, d, s_entry(seq));
}

/* Removes seq from its destination; the entry copied out is the one added. */
static void s_rm(fx_t *fx, uint64_t seq)
{
    assert_true(seq >= 1 && seq <= MAXSEQ);
    int d = fx->model[seq].dest;
    assert_true(d >= 0);
    pending_entry_t out;
    memset(&out, 0xa5, sizeof out);
    assert_int_equal(pending_remove(fx->p, s_dests[d], seq, &out), 0);
    s_assert_same(&out, &fx->model[seq].e);
    fx->model[seq].dest = -1;
}

static void s_begin(fx_t *fx)
{
    memcpy(fx->saved, fx->model, (MAXSEQ + 1) * sizeof *fx->model);
    pending_begin(fx->p);
}

static void s_rollback(fx_t *fx)
{
    assert_int_equal(pending_rollback(fx->p), 0);
    memcpy(fx->model, fx->saved, (MAXSEQ + 1) * sizeof *fx->model);
}

/* The model's seqs after `after`, for s_dests[d] (every destination if d is
 * -1), express ones only if express_only; up to max. */
static size_t s_want(const fx_t *fx, int d, uint64_t after, bool express_only, uint64_t *want,
                     size_t max)
{
    size_t n = 0;
    for (uint64_t s = after + 1; s <= fx->hi && n < max; s++) {
        const slot_t *sl = &fx->model[s];
        if (sl->dest < 0 || (d >= 0 && sl->dest != d) || (express_only && !sl->e.express))
            continue;
        want[n++] = s;
    }
    return n;
}

static void s_assert_seqs(const uint64_t *got, size_t n_got, const uint64_t *want, size_t n_want)
{
    assert_int_equal(n_got, n_want);
    for (size_t i = 0; i < n_want; i++)
        assert_int_equal(got[i], want[i]);
}

static void s_check_after(fx_t *fx, int d, uint64_t after, bool express_only, size_t max)
{
    size_t nw = s_want(fx, d, after, express_only, fx->want, max);
    size_t ng = pending_after(fx->p, s_dests[d], after, express_only, fx->buf, max);
    s_assert_seqs(fx->buf, ng, fx->want, nw);
}

/* The set's whole public view against the model. */
static void s_check(fx_t *fx)
{
    pending_dest_t sum[NDEST + 1];
    memset(sum, 0, sizeof sum);
    size_t n_sum = pending_summary(fx->p, sum, NDEST + 1);
    size_t total = 0, nonempty = 0;

    for (int d = 0; d < NDEST; d++) {
        size_t n = s_want(fx, d, 0, false, fx->want, MAXSEQ);
        total += n;
        uint64_t first = 0, mid = 0, last = 0;
        int64_t min_stored = INT64_MAX;
        if (n > 0) {
            first = fx->want[0];
            mid = fx->want[n / 2];
            last = fx->want[n - 1];
            for (size_t i = 0; i < n; i++)
                if (fx->model[fx->want[i]].e.stored_ms < min_stored)
                    min_stored = fx->model[fx->want[i]].e.stored_ms;
        }
        s_check_after(fx, d, 0, false, MAXSEQ);
        s_check_after(fx, d, 0, true, MAXSEQ);
        s_check_after(fx, d, 0, false, 3);
        s_check_after(fx, d, 0, true, 2);
        s_check_after(fx, d, 0, false, 0);
        if (n > 0) {
            s_check_after(fx, d, first, false, MAXSEQ);
            s_check_after(fx, d, mid, false, MAXSEQ);
            s_check_after(fx, d, mid - 1, false, MAXSEQ);
            s_check_after(fx, d, mid, true, MAXSEQ);
            s_check_after(fx, d, mid - 1, false, 4);
            s_check_after(fx, d, last - 1, false, MAXSEQ);
            s_check_after(fx, d, last, false, MAXSEQ);
        }

        /* SUMMARY: listed once if anything is pending, with its figures. */
        int found = 0;
        for (size_t i = 0; i < n_sum && i < NDEST + 1; i++) {
            assert_non_null(sum[i].dest);
            if (strcmp(sum[i].dest, s_dests[d]) != 0)
                continue;
            found++;
            assert_int_equal(sum[i].count, n);
            assert_int_equal(sum[i].min_seq, first);
            assert_int_equal(sum[i].min_stored_ms, min_stored);
        }
        assert_int_equal(found, n > 0 ? 1 : 0);
        if (n > 0)
            nonempty++;
    }
    assert_int_equal(n_sum, nonempty);
    assert_int_equal(pending_count(fx->p), total);

    size_t n_all = s_want(fx, -1, 0, false, fx->want, MAXSEQ);
    assert_int_equal(pending_floor_from(fx->p, 0), n_all > 0 ? fx->want[0] : 0);
    s_assert_seqs(fx->buf, pending_lowest(fx->p, fx->buf, MAXSEQ), fx->want, n_all);
    size_t n_few = s_want(fx, -1, 0, false, fx->want, 4);
    s_assert_seqs(fx->buf, pending_lowest(fx->p, fx->buf, 4), fx->want, n_few);

    for (uint64_t s = 1; s <= fx->hi + 1; s++) {
        const slot_t *sl = &fx->model[s];
        pending_entry_t out;
        if (sl->dest >= 0) {
            memset(&out, 0x5a, sizeof out);
            assert_true(pending_get(fx->p, s_dests[sl->dest], s, &out));
            s_assert_same(&out, &sl->e);
            assert_true(pending_get(fx->p, s_dests[sl->dest], s, NULL));
            assert_false(pending_get(fx->p, s_dests[(sl->dest + 1) % NDEST], s, NULL));
        } else {
            for (int d = 0; d < NDEST; d++)
                assert_false(pending_get(fx->p, s_dests[d], s, &out));
        }
    }
}

/* pending_expired(now, max) against the model: every entry written expires
 * before now, is pending, comes with its destination and its fields, once;
 * as many as the model has (up to max).  Returns how many. */
static size_t s_check_expired(fx_t *fx, int64_t now, size_t max, pending_entry_t *out,
                              const char **dests)
{
    size_t expect = 0;
    for (uint64_t s = 1; s <= fx->hi; s++)
        if (fx->model[s].dest >= 0 && fx->model[s].e.expires_ms < now)
            expect++;
    if (expect > max)
        expect = max;
    size_t n = pending_expired(fx->p, now, NULL, 0, out, dests, max);
    assert_int_equal(n, expect);
    memset(fx->mark, 0, MAXSEQ + 1);
    for (size_t i = 0; i < n; i++) {
        uint64_t s = out[i].seq;
        assert_true(s >= 1 && s <= fx->hi);
        assert_int_equal(fx->mark[s], 0);
        fx->mark[s] = 1;
        assert_true(fx->model[s].dest >= 0);
        s_assert_same(&out[i], &fx->model[s].e);
        assert_true(out[i].expires_ms < now);
        assert_non_null(dests[i]);
        assert_string_equal(dests[i], s_dests[fx->model[s].dest]);
    }
    return n;
}

static pending_entry_t s_expiring(uint64_t seq, int64_t expires_ms)
{
    pending_entry_t e = s_entry(seq);
    e.expires_ms = expires_ms;
    return e;
}

static void test_pending_empty(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[4] = {7, 7, 7, 7};
    pending_dest_t sum[2];
    pending_entry_t out[2];
    const char *dests[2];
    assert_int_equal(pending_count(fx->p), 0);
    assert_int_equal(pending_floor_from(fx->p, 0), 0);
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 4), 0);
    assert_int_equal(pending_lowest(fx->p, seqs, 4), 0);
    assert_int_equal(seqs[0], 7);
    assert_int_equal(pending_summary(fx->p, sum, 2), 0);
    assert_int_equal(pending_expired(fx->p, INT64_MAX, NULL, 0, out, dests, 2), 0);
    assert_false(pending_get(fx->p, "icu", 1, NULL));
    assert_int_equal(pending_remove(fx->p, "icu", 1, NULL), -ENOENT);
    s_check(fx);
}

static void test_pending_after_in_order(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[32];
    for (uint64_t s = 1; s <= 20; s++)
        s_add(fx, 0, s);

    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 32), 20);
    for (size_t i = 0; i < 20; i++)
        assert_int_equal(seqs[i], i + 1);
    assert_int_equal(pending_after(fx->p, "icu", 5, false, seqs, 32), 15);
    assert_int_equal(seqs[0], 6);
    assert_int_equal(seqs[14], 20);
    assert_int_equal(pending_after(fx->p, "icu", 20, false, seqs, 32), 0);
    assert_int_equal(pending_after(fx->p, "icu", 1000, false, seqs, 32), 0);

    /* max: the first ones, and nothing written past it */
    seqs[4] = 999;
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 4), 4);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(seqs[3], 4);
    assert_int_equal(seqs[4], 999);
    seqs[0] = 999;
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 0), 0);
    assert_int_equal(seqs[0], 999);

    /* express only: 3, 6, ... 18 */
    assert_int_equal(pending_after(fx->p, "icu", 0, true, seqs, 32), 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(seqs[i], 3 * (i + 1));
    assert_int_equal(pending_after(fx->p, "icu", 7, true, seqs, 2), 2);
    assert_int_equal(seqs[0], 9);
    assert_int_equal(seqs[1], 12);
    assert_int_equal(pending_after(fx->p, "icu", 18, true, seqs, 32), 0);

    /* other destinations are their own lists */
    assert_int_equal(pending_after(fx->p, "nowhere", 0, false, seqs, 32), 0);
    assert_int_equal(pending_after(fx->p, "lab", 0, false, seqs, 32), 0);
    for (uint64_t s = 100; s <= 300; s += 100)
        s_add(fx, 2, s);
    assert_int_equal(pending_after(fx->p, "ward-7", 150, false, seqs, 32), 2);
    assert_int_equal(seqs[0], 200);
    assert_int_equal(seqs[1], 300);
    assert_int_equal(pending_after(fx->p, "ward-7", 99, false, seqs, 32), 3);
    assert_int_equal(seqs[0], 100);
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 32), 20);
    assert_int_equal(pending_count(fx->p), 23);
    s_check(fx);
}

/* Nothing is after the highest seq there can be (after + 1 must not wrap). */
static void test_pending_after_last_possible_seq(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[8];
    for (uint64_t s = 1; s <= 6; s++)
        s_add(fx, 0, s);
    assert_int_equal(pending_after(fx->p, "icu", UINT64_MAX - 1, false, seqs, 8), 0);
    assert_int_equal(pending_after(fx->p, "icu", UINT64_MAX, false, seqs, 8), 0);
    assert_int_equal(pending_after(fx->p, "icu", UINT64_MAX, true, seqs, 8), 0);
}

static void test_pending_add_existing(void **state)
{
    fx_t *fx = *state;
    s_add(fx, 0, 10);
    s_add(fx, 0, 20);
    s_add(fx, 0, 30);
    /* the head, the middle and the tail: nothing changes */
    for (uint64_t s = 10; s <= 30; s += 10) {
        pending_entry_t e = s_entry(s);
        e.stored_ms = 1;
        e.expires_ms = 2;
        e.kind = 99;
        e.express = !e.express;
        e.referral = !e.referral;
        assert_int_equal(pending_add(fx->p, "icu", &e), -EEXIST);
    }
    pending_entry_t out;
    assert_true(pending_get(fx->p, "icu", 20, &out));
    s_assert_same(&out, &fx->model[20].e);
    assert_int_equal(pending_count(fx->p), 3);
    s_check(fx);
}

static void test_pending_remove_missing(void **state)
{
    fx_t *fx = *state;
    s_add(fx, 0, 10);
    s_add(fx, 0, 20);
    s_add(fx, 0, 30);
    pending_entry_t out;
    assert_int_equal(pending_remove(fx->p, "icu", 15, &out), -ENOENT);
    assert_int_equal(pending_remove(fx->p, "icu", 5, &out), -ENOENT);
    assert_int_equal(pending_remove(fx->p, "icu", 40, &out), -ENOENT);
    assert_int_equal(pending_remove(fx->p, "icu", 0, NULL), -ENOENT);
    assert_int_equal(pending_remove(fx->p, "lab", 10, &out), -ENOENT); /* another destination's */
    assert_int_equal(pending_remove(fx->p, "nowhere", 10, NULL), -ENOENT);
    assert_int_equal(pending_count(fx->p), 3);
    s_check(fx);

    assert_int_equal(pending_remove(fx->p, "icu", 20, NULL), 0);
    fx->model[20].dest = -1;
    assert_int_equal(pending_remove(fx->p, "icu", 20, &out), -ENOENT);
    assert_int_equal(pending_count(fx->p), 2);
    s_check(fx);
}

static void test_pending_get_copies(void **state)
{
    fx_t *fx = *state;
    pending_entry_t e = s_entry(42);
    e.kind = 3;
    e.express = true;
    e.referral = true;
    e.stored_ms = 123456;
    e.expires_ms = 654321;
    assert_int_equal(pending_add(fx->p, "lab", &e), 0);
    pending_entry_t added = e;
    e.kind = 4; /* the set holds its own copy */
    e.expires_ms = 1;

    pending_entry_t out;
    memset(&out, 0, sizeof out);
    assert_true(pending_get(fx->p, "lab", 42, &out));
    s_assert_same(&out, &added);
    assert_true(pending_get(fx->p, "lab", 42, NULL));
    out.kind = 5; /* and a copy is a copy */
    memset(&out, 0, sizeof out);
    assert_true(pending_get(fx->p, "lab", 42, &out));
    s_assert_same(&out, &added);
    assert_false(pending_get(fx->p, "lab", 41, &out));
    assert_false(pending_get(fx->p, "icu", 42, &out));
    assert_false(pending_get(fx->p, "nowhere", 42, NULL));
}

static void test_pending_remove_middle_and_front(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[16];
    for (uint64_t s = 1; s <= 10; s++)
        s_add(fx, 0, s);
    s_rm(fx, 5); /* middle */
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 16), 9);
    assert_int_equal(seqs[3], 4);
    assert_int_equal(seqs[4], 6);
    assert_int_equal(pending_after(fx->p, "icu", 4, false, seqs, 16), 5);
    assert_int_equal(seqs[0], 6);
    assert_int_equal(pending_after(fx->p, "icu", 5, false, seqs, 1), 1);
    assert_int_equal(seqs[0], 6);
    s_check(fx);

    s_rm(fx, 1); /* front */
    assert_int_equal(pending_floor_from(fx->p, 0), 2);
    s_rm(fx, 2);
    s_rm(fx, 3);
    assert_int_equal(pending_floor_from(fx->p, 0), 4);
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 16), 6);
    assert_int_equal(seqs[0], 4);
    assert_int_equal(seqs[1], 6);
    s_check(fx);

    assert_int_equal(pending_remove(fx->p, "icu", 10, NULL), 0); /* tail, no copy */
    fx->model[10].dest = -1;
    s_rm(fx, 6);
    s_rm(fx, 4); /* front again, past the hole at 5 */
    assert_int_equal(pending_floor_from(fx->p, 0), 7);
    assert_int_equal(pending_after(fx->p, "icu", 0, false, seqs, 16), 3);
    assert_int_equal(seqs[0], 7);
    assert_int_equal(seqs[2], 9);
    assert_int_equal(pending_count(fx->p), 3);
    s_check(fx);
}

static bool s_keep(uint64_t s)
{
    static const uint64_t keep[] = {1, 2, 3, 1234, 4567, 5000, 7321, 8000, 9999, 10000};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (keep[i] == s)
            return true;
    return false;
}

static int s_dest_of(uint64_t s)
{
    return s % 10 == 0 ? 1 : 0; /* every tenth for the lab, the rest for the icu */
}

static void test_pending_many_removes(void **state)
{
    fx_t *fx = *state;
    enum { N = 10000 };
    for (uint64_t s = 1; s <= N; s++)
        s_add(fx, s_dest_of(s), s);
    s_check(fx);

    /* From the front, as deliveries are acknowledged. */
    size_t removed = 0;
    for (uint64_t s = 1; s <= 3000; s++) {
        if (s_keep(s))
            continue;
        s_rm(fx, s);
        if (++removed % 250 == 0)
            s_check(fx);
    }
    s_check(fx);
    /* From the back. */
    for (uint64_t s = N; s > 8000; s--) {
        if (s_keep(s))
            continue;
        s_rm(fx, s);
        if (++removed % 250 == 0)
            s_check(fx);
    }
    s_check(fx);
    /* Every other one in the middle. */
    for (uint64_t s = 3001; s <= 8000; s += 2) {
        if (s_keep(s))
            continue;
        s_rm(fx, s);
        if (++removed % 250 == 0)
            s_check(fx);
    }
    s_check(fx);
    /* The rest in a shuffled order. */
    size_t n = 0;
    for (uint64_t s = 1; s <= N; s++)
        if (fx->model[s].dest >= 0 && !s_keep(s))
            fx->want[n++] = s;
    uint64_t *order = malloc(n * sizeof *order);
    assert_non_null(order);
    memcpy(order, fx->want, n * sizeof *order);
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(s_rand(fx) % i);
        uint64_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < n; i++) {
        s_rm(fx, order[i]);
        if (i % 250 == 0)
            s_check(fx);
    }
    free(order);

    /* Only the kept ones are left, in order. */
    uint64_t seqs[16];
    assert_int_equal(pending_count(fx->p), 10);
    assert_int_equal(pending_floor_from(fx->p, 0), 1);
    const uint64_t icu[] = {1, 2, 3, 1234, 4567, 7321, 9999};
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, false, seqs, 16), icu, 7);
    const uint64_t lab[] = {5000, 8000, 10000};
    s_assert_seqs(seqs, pending_after(fx->p, "lab", 0, false, seqs, 16), lab, 3);
    const uint64_t all[] = {1, 2, 3, 1234, 4567, 5000, 7321, 8000, 9999, 10000};
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 16), all, 10);
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 3, false, seqs, 16), icu + 3, 4);
    s_assert_seqs(seqs, pending_after(fx->p, "lab", 5000, false, seqs, 16), lab + 1, 2);
    s_check(fx);

    /* After all that: appends, retried seqs back in the holes, a new front. */
    for (uint64_t s = N + 1; s <= N + 20; s++)
        s_add(fx, 0, s);
    s_add(fx, 0, 6001);
    s_add(fx, 1, 2500);
    s_add(fx, 0, 4);
    s_add(fx, 0, 9998);
    s_check(fx);
    assert_int_equal(pending_count(fx->p), 34);

    /* And everything out. */
    for (uint64_t s = 1; s <= fx->hi; s++)
        if (fx->model[s].dest >= 0)
            s_rm(fx, s);
    assert_int_equal(pending_count(fx->p), 0);
    assert_int_equal(pending_floor_from(fx->p, 0), 0);
    s_check(fx);
}

static void test_pending_sliding_window(void **state)
{
    fx_t *fx = *state;
    enum { STEPS = 20000, W = 64 };
    /* A steady flow over three destinations: each message acknowledged W
     * messages later, now and then one retried back in its place. */
    for (uint64_t s = 1; s <= STEPS; s++) {
        s_add(fx, (int)(s % NDEST), s);
        if (s > W)
            s_rm(fx, s - W);
        if (s > W && s % 500 == 0) {
            s_rm(fx, s - W / 2);
            s_add(fx, (int)((s - W / 2) % NDEST), s - W / 2);
        }
        assert_int_equal(pending_count(fx->p), s < W ? s : W);
        assert_int_equal(pending_floor_from(fx->p, 0), s <= W ? 1 : s - W + 1);
        if (s % 1000 == 0)
            s_check(fx);
    }
    s_check(fx);
}

static void test_pending_retry_in_place(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[16];
    for (uint64_t s = 10; s <= 40; s += 10)
        s_add(fx, 0, s);
    s_rm(fx, 20);
    s_rm(fx, 30);
    s_add(fx, 0, 30); /* retried: below the tail, back in its place */
    s_add(fx, 0, 20);
    const uint64_t a[] = {10, 20, 30, 40};
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, false, seqs, 16), a, 4);
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 10, false, seqs, 16), a + 1, 3);
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 19, false, seqs, 2), a + 1, 2);
    const uint64_t x[] = {30};
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, true, seqs, 16), x, 1);
    s_check(fx);

    /* A seq never held, in a gap; one below everything. */
    s_add(fx, 0, 25);
    s_add(fx, 0, 5);
    const uint64_t b[] = {5, 10, 20, 25, 30, 40};
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, false, seqs, 16), b, 6);
    assert_int_equal(pending_floor_from(fx->p, 0), 5);
    s_check(fx);

    /* The tail removed and added again; the head likewise. */
    s_rm(fx, 40);
    s_add(fx, 0, 40);
    s_rm(fx, 5);
    s_add(fx, 0, 5);
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, false, seqs, 16), b, 6);
    assert_int_equal(pending_add(fx->p, "icu", &fx->model[25].e), -EEXIST);
    s_check(fx);

    /* Re-added with other fields: the new ones count. */
    s_rm(fx, 20);
    pending_entry_t e = s_entry(20);
    e.express = true;
    e.kind = 6;
    s_add_e(fx, 0, e);
    const uint64_t c[] = {20, 30};
    s_assert_seqs(seqs, pending_after(fx->p, "icu", 0, true, seqs, 16), c, 2);
    s_check(fx);
}

/* icu 2 5 9 12, lab 1 6 7 20, ward 3 4 30: lists that interleave. */
static void s_add_three(fx_t *fx)
{
    const uint64_t icu[] = {2, 5, 9, 12}, lab[] = {1, 6, 7, 20}, ward[] = {3, 4, 30};
    for (size_t i = 0; i < 4; i++)
        s_add(fx, 0, icu[i]);
    for (size_t i = 0; i < 4; i++)
        s_add(fx, 1, lab[i]);
    for (size_t i = 0; i < 3; i++)
        s_add(fx, 2, ward[i]);
}

static void test_pending_lowest_merges(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[32];
    s_add_three(fx);
    const uint64_t all[] = {1, 2, 3, 4, 5, 6, 7, 9, 12, 20, 30};
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 32), all, 11);
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 5), all, 5);
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 1), all, 1);
    seqs[0] = 77;
    assert_int_equal(pending_lowest(fx->p, seqs, 0), 0);
    assert_int_equal(seqs[0], 77);

    s_rm(fx, 1);
    s_rm(fx, 2);
    s_rm(fx, 7);
    const uint64_t rest[] = {3, 4, 5, 6, 9, 12, 20, 30};
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 32), rest, 8);
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 3), rest, 3);
    s_add(fx, 1, 1); /* retried */
    const uint64_t back[] = {1, 3, 4, 5};
    s_assert_seqs(seqs, pending_lowest(fx->p, seqs, 4), back, 4);
    s_check(fx);
}

/* Collects seqs into v[1..], v[0] counting them; stops (returns 42) once v
 * holds v_stop_at of them, when that is set. */
typedef struct {
    uint64_t v[16];
    size_t n, stop_at;
} s_seen_t;

static int s_collect_seq(void *arg, uint64_t seq)
{
    s_seen_t *s = arg;
    if (s->n == sizeof s->v / sizeof s->v[0])
        return -1;
    s->v[s->n++] = seq;
    return s->n == s->stop_at ? 42 : 0;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* What the store's floor needs: the lowest live seq at or above a bound, and
 * every live seq within a range, over all destinations. */
static void test_pending_floor_from_and_between(void **state)
{
    fx_t *fx = *state;
    s_add_three(fx);
    s_rm(fx, 6);
    assert_int_equal(pending_floor_from(fx->p, 0), 1);
    assert_int_equal(pending_floor_from(fx->p, 6), 7); /* 6 is gone */
    assert_int_equal(pending_floor_from(fx->p, 13), 20);
    assert_int_equal(pending_floor_from(fx->p, 31), 0);

    /* Every live seq in [4, 13), each once: 6 is gone, 13 is out. */
    s_seen_t seen = {.n = 0};
    assert_int_equal(pending_each_between(fx->p, 4, 13, s_collect_seq, &seen), 0);
    qsort(seen.v, seen.n, sizeof seen.v[0], s_cmp_u64);
    const uint64_t want[] = {4, 5, 7, 9, 12};
    s_assert_seqs(seen.v, seen.n, want, 5);
    seen = (s_seen_t){.stop_at = 2};
    assert_int_equal(pending_each_between(fx->p, 0, 100, s_collect_seq, &seen), 42);
    assert_int_equal(seen.n, 2);
    seen = (s_seen_t){.n = 0};
    assert_int_equal(pending_each_between(fx->p, 13, 20, s_collect_seq, &seen), 0);
    assert_int_equal(seen.n, 0);
    s_check(fx);
}

static const pending_dest_t *s_find(const pending_dest_t *sum, size_t n, const char *dest)
{
    const pending_dest_t *found = NULL;
    for (size_t i = 0; i < n; i++) {
        assert_non_null(sum[i].dest);
        if (strcmp(sum[i].dest, dest) == 0) {
            assert_null(found); /* listed once */
            found = &sum[i];
        }
    }
    return found;
}

static void test_pending_summary(void **state)
{
    fx_t *fx = *state;
    pending_dest_t sum[4];
    const pending_dest_t *d;
    const uint64_t icu[] = {3, 7, 9};
    for (size_t i = 0; i < 3; i++) {
        pending_entry_t e = s_entry(icu[i]);
        e.stored_ms = 1000 + 100 * (int64_t)i;
        s_add_e(fx, 0, e);
    }
    pending_entry_t e = s_entry(4);
    e.stored_ms = 900;
    s_add_e(fx, 1, e);
    s_add(fx, 2, 5);
    s_rm(fx, 5); /* nothing pending for ward-7: not listed */

    memset(sum, 0, sizeof sum);
    assert_int_equal(pending_summary(fx->p, sum, 4), 2);
    assert_null(s_find(sum, 2, "ward-7"));
    d = s_find(sum, 2, "icu");
    assert_non_null(d);
    assert_int_equal(d->count, 3);
    assert_int_equal(d->min_seq, 3);
    assert_int_equal(d->min_stored_ms, 1000);
    d = s_find(sum, 2, "lab");
    assert_non_null(d);
    assert_int_equal(d->count, 1);
    assert_int_equal(d->min_seq, 4);
    assert_int_equal(d->min_stored_ms, 900);

    /* max below the number of destinations: how many there are, max filled */
    memset(sum, 0, sizeof sum);
    sum[1].count = 777;
    assert_int_equal(pending_summary(fx->p, sum, 1), 2);
    assert_non_null(sum[0].dest);
    if (strcmp(sum[0].dest, "icu") == 0) {
        assert_int_equal(sum[0].count, 3);
        assert_int_equal(sum[0].min_seq, 3);
    } else {
        assert_string_equal(sum[0].dest, "lab");
        assert_int_equal(sum[0].count, 1);
        assert_int_equal(sum[0].min_seq, 4);
    }
    assert_int_equal(sum[1].count, 777);
    sum[0].count = 778;
    assert_int_equal(pending_summary(fx->p, sum, 0), 2);
    assert_int_equal(sum[0].count, 778);
    assert_int_equal(pending_summary(fx->p, NULL, 0), 2); /* how the store sizes its array */
    s_add(fx, 2, 11);
    assert_int_equal(pending_summary(fx->p, sum, 2), 3);
    assert_int_equal(pending_summary(fx->p, sum, 4), 3);
    s_check(fx);

    /* The front removed: the figures follow. */
    s_rm(fx, 3);
    assert_int_equal(pending_summary(fx->p, sum, 4), 3);
    d = s_find(sum, 3, "icu");
    assert_non_null(d);
    assert_int_equal(d->count, 2);
    assert_int_equal(d->min_seq, 7);
    assert_int_equal(d->min_stored_ms, 1100);
    /* A retried, older message: back at the front. */
    e = s_entry(2);
    e.stored_ms = 800;
    s_add_e(fx, 0, e);
    assert_int_equal(pending_summary(fx->p, sum, 4), 3);
    d = s_find(sum, 3, "icu");
    assert_non_null(d);
    assert_int_equal(d->count, 3);
    assert_int_equal(d->min_seq, 2);
    assert_int_equal(d->min_stored_ms, 800);
    /* The lab emptied: no longer listed. */
    s_rm(fx, 4);
    assert_int_equal(pending_summary(fx->p, sum, 4), 2);
    assert_null(s_find(sum, 2, "lab"));
    s_check(fx);
}

/* min_stored_ms is the least stored_ms pending, as min(stored_ms) was in
 * SQL, even where it is not the lowest seq's (a clock stepped back). */
static void test_pending_summary_min_stored_anywhere(void **state)
{
    fx_t *fx = *state;
    pending_dest_t sum[4];
    const int64_t stored[] = {5000, 4000, 4500};
    for (uint64_t s = 10; s <= 12; s++) {
        pending_entry_t e = s_entry(s);
        e.stored_ms = stored[s - 10];
        s_add_e(fx, 0, e);
    }
    assert_int_equal(pending_summary(fx->p, sum, 4), 1);
    assert_string_equal(sum[0].dest, "icu");
    assert_int_equal(sum[0].min_seq, 10);
    assert_int_equal(sum[0].min_stored_ms, 4000);
    s_rm(fx, 11);
    assert_int_equal(pending_summary(fx->p, sum, 4), 1);
    assert_int_equal(sum[0].min_stored_ms, 4500);
    s_rm(fx, 10);
    assert_int_equal(pending_summary(fx->p, sum, 4), 1);
    assert_int_equal(sum[0].min_seq, 12);
    assert_int_equal(sum[0].min_stored_ms, 4500);
    s_check(fx);
}

static void test_pending_dest_names_owned(void **state)
{
    fx_t *fx = *state;
    char name[16] = "ward-7";
    uint64_t seqs[4];
    pending_dest_t sum[2];
    pending_entry_t e = s_entry(8);
    assert_int_equal(pending_add(fx->p, name, &e), 0);
    fx->model[8].dest = 2;
    fx->model[8].e = e;
    fx->hi = 8;
    memcpy(name, "XXXXXX", 6);
    assert_int_equal(pending_after(fx->p, "ward-7", 0, false, seqs, 4), 1);
    assert_int_equal(pending_after(fx->p, name, 0, false, seqs, 4), 0);
    assert_int_equal(pending_summary(fx->p, sum, 2), 1);
    assert_string_equal(sum[0].dest, "ward-7");
    const char *kept = sum[0].dest;
    s_check(fx);
    /* valid until pending_destroy, also once nothing is pending there */
    s_rm(fx, 8);
    pending_clear(fx->p);
    assert_string_equal(kept, "ward-7");
    s_check(fx);
}

static void test_pending_expired_strict(void **state)
{
    fx_t *fx = *state;
    pending_entry_t out[8];
    const char *dests[8];
    s_add_e(fx, 0, s_expiring(1, 100));
    s_add_e(fx, 0, s_expiring(2, 200));
    s_add_e(fx, 0, s_expiring(3, 300));
    s_add_e(fx, 1, s_expiring(4, 150));
    s_add_e(fx, 1, s_expiring(5, 1000));
    s_add(fx, 2, 6);

    assert_int_equal(pending_expired(fx->p, 50, NULL, 0, out, dests, 8), 0);
    assert_int_equal(pending_expired(fx->p, 100, NULL, 0, out, dests, 8), 0); /* expires_ms < now */
    assert_int_equal(s_check_expired(fx, 101, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 1);
    assert_string_equal(dests[0], "icu");
    assert_int_equal(s_check_expired(fx, 150, 8, out, dests), 1); /* not 4, due at 150 */
    assert_int_equal(out[0].seq, 1);
    assert_int_equal(s_check_expired(fx, 201, 8, out, dests), 3); /* 1, 2, 4 */
    assert_int_equal(fx->mark[1] + fx->mark[2] + fx->mark[4], 3);
    /* removes nothing */
    assert_int_equal(pending_count(fx->p), 6);
    assert_int_equal(s_check_expired(fx, 201, 8, out, dests), 3);
    s_check(fx);

    /* The store ends them, by the destinations it was given. */
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(pending_remove(fx->p, dests[i], out[i].seq, NULL), 0);
        fx->model[out[i].seq].dest = -1;
    }
    assert_int_equal(pending_expired(fx->p, 201, NULL, 0, out, dests, 8), 0);
    assert_int_equal(s_check_expired(fx, 301, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 3);
    assert_int_equal(s_check_expired(fx, 1001, 8, out, dests), 2);
    assert_int_equal(s_check_expired(fx, INT64_MAX, 8, out, dests), 3);
    s_check(fx);
}

static void test_pending_expired_bound_follows_adds(void **state)
{
    fx_t *fx = *state;
    pending_entry_t out[8];
    const char *dests[8];
    s_add_e(fx, 0, s_expiring(1, 1000));
    s_add_e(fx, 1, s_expiring(2, 2000));
    assert_int_equal(pending_expired(fx->p, 500, NULL, 0, out, dests, 8), 0);
    assert_int_equal(pending_expired(fx->p, 500, NULL, 0, out, dests, 8), 0);

    /* Added later, expiring earlier than anything before. */
    s_add_e(fx, 1, s_expiring(3, 100));
    assert_int_equal(s_check_expired(fx, 500, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 3);
    assert_string_equal(dests[0], "lab");
    s_rm(fx, 3);
    assert_int_equal(pending_expired(fx->p, 500, NULL, 0, out, dests, 8), 0);

    /* After a walk that found some: one that expired earlier still. */
    assert_int_equal(s_check_expired(fx, 1500, 8, out, dests), 1);
    s_add_e(fx, 2, s_expiring(4, 50));
    assert_int_equal(s_check_expired(fx, 1500, 8, out, dests), 2);
    s_rm(fx, 4);
    s_rm(fx, 1);
    assert_int_equal(pending_expired(fx->p, 1500, NULL, 0, out, dests, 8), 0);

    /* A retried message back in its place, with an earlier expiry. */
    s_add_e(fx, 0, s_expiring(1, 700));
    assert_int_equal(s_check_expired(fx, 1500, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 1);
    assert_int_equal(s_check_expired(fx, 2500, 8, out, dests), 2);
    s_check(fx);
}

static void test_pending_expired_max(void **state)
{
    fx_t *fx = *state;
    pending_entry_t out[8];
    const char *dests[8];
    for (uint64_t s = 1; s <= 10; s++)
        s_add_e(fx, (int)(s % 2), s_expiring(s, 100 + (int64_t)s));
    for (uint64_t s = 11; s <= 15; s++)
        s_add(fx, 2, s);
    assert_int_equal(pending_expired(fx->p, 1000, NULL, 0, out, dests, 0), 0);
    assert_int_equal(s_check_expired(fx, 1000, 4, out, dests), 4);
    assert_int_equal(s_check_expired(fx, 1000, 4, out, dests), 4); /* nothing removed */

    /* Removing what was returned, the next call returns the rest. */
    size_t total = 0;
    for (int round = 0; round < 4; round++) {
        size_t n = s_check_expired(fx, 1000, 4, out, dests);
        assert_int_equal(n, round < 2 ? 4 : round == 2 ? 2 : 0);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(pending_remove(fx->p, dests[i], out[i].seq, NULL), 0);
            fx->model[out[i].seq].dest = -1;
        }
        total += n;
    }
    assert_int_equal(total, 10);
    for (uint64_t s = 1; s <= 10; s++)
        assert_int_equal(fx->model[s].dest, -1);
    assert_int_equal(pending_count(fx->p), 5);
    s_check(fx);
}

static void test_pending_expired_rollback_and_clear(void **state)
{
    fx_t *fx = *state;
    pending_entry_t out[8];
    const char *dests[8];
    s_add_e(fx, 0, s_expiring(1, 100));
    s_add_e(fx, 1, s_expiring(2, 5000));

    /* Removed inside a transaction that rolls back: expiring again. */
    s_begin(fx);
    s_rm(fx, 1);
    assert_int_equal(pending_expired(fx->p, 1000, NULL, 0, out, dests, 8), 0);
    s_rollback(fx);
    assert_int_equal(s_check_expired(fx, 1000, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 1);

    /* Added inside a transaction that rolls back: gone. */
    s_begin(fx);
    s_add_e(fx, 2, s_expiring(3, 50));
    assert_int_equal(s_check_expired(fx, 1000, 8, out, dests), 2);
    s_rollback(fx);
    assert_int_equal(s_check_expired(fx, 1000, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 1);
    s_check(fx);

    /* Cleared: nothing expires; added after: found. */
    pending_clear(fx->p);
    for (uint64_t s = 1; s <= fx->hi; s++)
        fx->model[s].dest = -1;
    assert_int_equal(pending_expired(fx->p, INT64_MAX, NULL, 0, out, dests, 8), 0);
    s_add_e(fx, 1, s_expiring(4, 10));
    assert_int_equal(s_check_expired(fx, 100, 8, out, dests), 1);
    assert_int_equal(out[0].seq, 4);
    s_check(fx);
}

/* icu: the even seqs 2..40, lab: the odd 1..39, ward-7: 100 and 101. */
static void s_fill(fx_t *fx)
{
    for (uint64_t s = 1; s <= 40; s++)
        s_add(fx, (int)(s % 2 == 0 ? 0 : 1), s);
    s_add(fx, 2, 100);
    s_add(fx, 2, 101);
}

static void test_pending_rollback_restores(void **state)
{
    fx_t *fx = *state;
    s_fill(fx);
    s_rm(fx, 10); /* holes for retries, before the transaction */
    s_rm(fx, 11);
    s_check(fx);
    pending_entry_t before30 = fx->model[30].e;

    s_begin(fx);
    for (uint64_t s = 41; s <= 45; s++) /* appends */
        s_add(fx, 0, s);
    s_add(fx, 0, 10); /* retried, in place */
    s_add(fx, 1, 11);
    s_rm(fx, 1);      /* the floor */
    s_rm(fx, 2);      /* icu's front */
    s_rm(fx, 20);     /* icu's middle */
    s_rm(fx, 39);     /* lab's tail */
    s_rm(fx, 100);    /* ward-7 emptied */
    s_rm(fx, 101);
    s_add(fx, 2, 50); /* added and removed inside */
    s_rm(fx, 50);
    s_rm(fx, 30);     /* removed and added back with other fields */
    pending_entry_t e = s_entry(30);
    e.express = !e.express;
    e.kind = 1;
    e.expires_ms = 7;
    e.referral = !e.referral;
    s_add_e(fx, 0, e);
    s_check(fx); /* inside: the changes show */
    assert_int_equal(pending_floor_from(fx->p, 0), 3);

    s_rollback(fx);
    s_check(fx); /* exactly as before */
    assert_int_equal(pending_floor_from(fx->p, 0), 1);
    assert_int_equal(pending_count(fx->p), 40);
    pending_entry_t out;
    assert_true(pending_get(fx->p, "icu", 30, &out));
    s_assert_same(&out, &before30);
    assert_false(pending_get(fx->p, "icu", 10, NULL));
    assert_false(pending_get(fx->p, "lab", 11, NULL));
    assert_false(pending_get(fx->p, "ward-7", 50, NULL));
    pending_dest_t sum[4];
    assert_int_equal(pending_summary(fx->p, sum, 4), 3);

    /* The set is usable after: the same changes again, kept this time. */
    s_begin(fx);
    s_add(fx, 0, 10);
    s_rm(fx, 1);
    s_rm(fx, 100);
    pending_commit(fx->p);
    s_check(fx);
}

/* Changes refused (-EEXIST, -ENOENT) leave nothing to undo. */
static void test_pending_rollback_refused_changes(void **state)
{
    fx_t *fx = *state;
    for (uint64_t s = 1; s <= 5; s++)
        s_add(fx, 0, s);
    s_begin(fx);
    pending_entry_t e = s_entry(3);
    e.kind = 99;
    assert_int_equal(pending_add(fx->p, "icu", &e), -EEXIST);
    e = s_entry(5);
    assert_int_equal(pending_add(fx->p, "icu", &e), -EEXIST);
    assert_int_equal(pending_remove(fx->p, "icu", 9, NULL), -ENOENT);
    assert_int_equal(pending_remove(fx->p, "lab", 3, NULL), -ENOENT);
    s_add(fx, 0, 6);
    s_check(fx);
    s_rollback(fx);
    s_check(fx);
    assert_int_equal(pending_count(fx->p), 5);
    pending_entry_t out;
    assert_true(pending_get(fx->p, "icu", 3, &out));
    assert_int_equal(out.kind, 3);
}

static void test_pending_commit_keeps(void **state)
{
    fx_t *fx = *state;
    s_fill(fx);
    pending_begin(fx->p);
    s_add(fx, 0, 42);
    s_add(fx, 1, 41);
    s_rm(fx, 1);
    s_rm(fx, 22);
    s_add(fx, 2, 60);
    s_rm(fx, 60);
    pending_commit(fx->p);
    s_check(fx);
    assert_int_equal(pending_count(fx->p), 42);
    assert_int_equal(pending_floor_from(fx->p, 0), 2);

    /* An empty transaction rolled back changes nothing. */
    s_begin(fx);
    s_rollback(fx);
    s_check(fx);
}

static void test_pending_rollback_only_latest(void **state)
{
    fx_t *fx = *state;
    s_fill(fx);
    pending_begin(fx->p);
    s_add(fx, 0, 200);
    s_rm(fx, 1);
    s_rm(fx, 2);
    pending_commit(fx->p);
    /* outside any transaction: not journalled either */
    s_add(fx, 1, 201);
    s_rm(fx, 3);
    s_check(fx);

    s_begin(fx);
    s_add(fx, 2, 300);
    s_rm(fx, 4);
    s_rm(fx, 200); /* added by the committed one */
    s_add(fx, 1, 1); /* removed by the committed one */
    s_add(fx, 0, 2);
    s_rm(fx, 201);
    s_check(fx);
    s_rollback(fx);
    s_check(fx);
    assert_true(pending_get(fx->p, "icu", 200, NULL));
    assert_true(pending_get(fx->p, "lab", 201, NULL));
    assert_false(pending_get(fx->p, "lab", 1, NULL));
    assert_false(pending_get(fx->p, "lab", 3, NULL));
    assert_true(pending_get(fx->p, "icu", 4, NULL));
    assert_int_equal(pending_floor_from(fx->p, 0), 4);
}

/* A transaction large enough that the set compacts inside it. */
static void test_pending_rollback_large(void **state)
{
    fx_t *fx = *state;
    enum { N = 10000 };
    for (uint64_t s = 1; s <= N; s++)
        s_add(fx, (int)(s % NDEST), s);
    s_check(fx);

    for (int keep = 0; keep < 2; keep++) {
        s_begin(fx);
        for (uint64_t s = 1; s <= N; s++) /* most of the front */
            if (s % 97 != 0 && fx->model[s].dest >= 0 && (s < 9000 || s % 2 == 0))
                s_rm(fx, s);
        for (uint64_t s = N + 1; s <= N + 5000; s++)
            s_add(fx, (int)(s % NDEST), s);
        for (uint64_t s = 5; s <= N; s += 300) /* some retried */
            if (fx->model[s].dest < 0)
                s_add(fx, (int)(s % NDEST), s);
        for (uint64_t s = N + 1; s <= N + 5000; s += 3) /* and some new ones gone again */
            s_rm(fx, s);
        s_check(fx);
        if (keep) {
            pending_commit(fx->p);
        } else {
            s_rollback(fx);
            assert_int_equal(pending_count(fx->p), N);
        }
        s_check(fx);
    }

    /* A small one after, rolled back. */
    s_begin(fx);
    s_rm(fx, 97);
    s_add(fx, 0, 1);
    s_rollback(fx);
    s_check(fx);
}

static void test_pending_random_transactions(void **state)
{
    fx_t *fx = *state;
    enum { SPAN = 3000 };
    for (uint64_t s = 1; s <= 2000; s++)
        s_add(fx, (int)(s_rand(fx) % NDEST), s);
    for (int round = 0; round < 60; round++) {
        s_begin(fx);
        int ops = 1 + (int)(s_rand(fx) % 300);
        for (int i = 0; i < ops; i++) {
            uint64_t s = 1 + s_rand(fx) % SPAN;
            int d = fx->model[s].dest;
            if (s_rand(fx) % 2 == 0) {
                if (d < 0) {
                    s_add(fx, (int)(s_rand(fx) % NDEST), s);
                } else {
                    pending_entry_t e = s_entry(s);
                    assert_int_equal(pending_add(fx->p, s_dests[d], &e), -EEXIST);
                }
            } else if (d >= 0) {
                s_rm(fx, s);
            } else {
                int o = (int)(s_rand(fx) % NDEST);
                assert_int_equal(pending_remove(fx->p, s_dests[o], s, NULL), -ENOENT);
            }
        }
        if (round % 3 == 0)
            pending_commit(fx->p);
        else
            s_rollback(fx);
        s_check(fx);
    }
}

static void test_pending_clear(void **state)
{
    fx_t *fx = *state;
    uint64_t seqs[8];
    pending_dest_t sum[4];
    pending_entry_t out[4];
    const char *dests[4];
    s_fill(fx);
    s_add_e(fx, 2, s_expiring(102, 10));
    pending_clear(fx->p);
    for (uint64_t s = 1; s <= fx->hi; s++)
        fx->model[s].dest = -1;
    assert_int_equal(pending_count(fx->p), 0);
    assert_int_equal(pending_floor_from(fx->p, 0), 0);
    for (int d = 0; d < NDEST; d++)
        assert_int_equal(pending_after(fx->p, s_dests[d], 0, false, seqs, 8), 0);
    assert_int_equal(pending_lowest(fx->p, seqs, 8), 0);
    assert_int_equal(pending_summary(fx->p, sum, 4), 0);
    assert_int_equal(pending_expired(fx->p, INT64_MAX, NULL, 0, out, dests, 4), 0);
    assert_false(pending_get(fx->p, "icu", 2, NULL));
    assert_int_equal(pending_remove(fx->p, "icu", 2, NULL), -ENOENT);
    s_check(fx);

    /* The rebuild: the same seqs again, not -EEXIST. */
    s_fill(fx);
    s_check(fx);
    assert_int_equal(pending_count(fx->p), 42);
}

static void test_pending_destroy(void **state)
{
    (void)state;
    pending_t *p = pending_new();
    assert_non_null(p);
    pending_entry_t e = s_entry(1);
    assert_int_equal(pending_add(p, "icu", &e), 0);
    pending_begin(p);
    e = s_entry(2);
    assert_int_equal(pending_add(p, "lab", &e), 0);
    pending_commit(p);
    pending_destroy(&p);
    assert_null(p);
    pending_destroy(&p); /* as every _destroy here: a NULL is fine */
    assert_null(p);
}

#define T(name) cmocka_unit_test_setup_teardown(name, s_setup, s_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_pending_empty),
        T(test_pending_after_in_order),
        T(test_pending_after_last_possible_seq),
        T(test_pending_add_existing),
        T(test_pending_remove_missing),
        T(test_pending_get_copies),
        T(test_pending_remove_middle_and_front),
        T(test_pending_many_removes),
        T(test_pending_sliding_window),
        T(test_pending_retry_in_place),
        T(test_pending_lowest_merges),
        T(test_pending_floor_from_and_between),
        T(test_pending_summary),
        T(test_pending_summary_min_stored_anywhere),
        T(test_pending_dest_names_owned),
        T(test_pending_expired_strict),
        T(test_pending_expired_bound_follows_adds),
        T(test_pending_expired_max),
        T(test_pending_expired_rollback_and_clear),
        T(test_pending_rollback_restores),
        T(test_pending_rollback_refused_changes),
        T(test_pending_commit_keeps),
        T(test_pending_rollback_only_latest),
        T(test_pending_rollback_large),
        T(test_pending_random_transactions),
        T(test_pending_clear),
        cmocka_unit_test(test_pending_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
