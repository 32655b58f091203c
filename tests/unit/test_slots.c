/*
 * Unit tests for daemon/slots.c: the reserved-capacity ledger's arithmetic.
 * Offers against the 20 % minimum, claims exhausting the reserve, then the
 * general pool, then nothing; releases; the cut-off; the two ratios; and a
 * property run over many random operation sequences (fixed-seed xorshift)
 * that checks the invariants and conservation after every operation against
 * a model kept here.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "slots.h"

#define MIN_SHARE 0.2

static int s_offer(int64_t capacity, int64_t reserved, bool *under, const char **why)
{
    *under = true;   /* must be reset by the callee */
    *why = "untouched";
    return slots_check_offer(capacity, reserved, MIN_SHARE, under, why);
}

static void test_slots_offer(void **state)
{
    (void)state;
    bool under;
    const char *why;

    /* Exactly 20 % is enough, whatever the capacity. */
    assert_int_equal(s_offer(10, 2, &under, &why), 0);
    assert_false(under);
    assert_int_equal(s_offer(5, 1, &under, &why), 0);
    assert_false(under);
    assert_int_equal(s_offer(100, 20, &under, &why), 0);
    assert_false(under);
    assert_int_equal(s_offer(35, 7, &under, &why), 0);
    assert_false(under);
    assert_int_equal(s_offer(10, 10, &under, &why), 0);   /* all reserved */
    assert_false(under);

    /* Below 20 %: refused, with under_min set so the caller may choose to warn. */
    assert_int_equal(s_offer(10, 1, &under, &why), -1);
    assert_true(under);
    assert_string_equal(why, "reserved share is below the required minimum");
    assert_int_equal(s_offer(100, 19, &under, &why), -1);
    assert_true(under);
    assert_int_equal(s_offer(6, 1, &under, &why), -1);    /* 16.7 % */
    assert_true(under);
    assert_int_equal(s_offer(10, 0, &under, &why), -1);
    assert_true(under);

    /* Nothing offered is valid. */
    assert_int_equal(s_offer(0, 0, &under, &why), 0);
    assert_false(under);

    /* Malformed offers: not an under-minimum case. */
    assert_int_equal(s_offer(10, 11, &under, &why), -1);
    assert_false(under);
    assert_string_equal(why, "reserved capacity exceeds capacity");
    assert_int_equal(s_offer(0, 1, &under, &why), -1);
    assert_false(under);
    assert_int_equal(s_offer(-1, 0, &under, &why), -1);
    assert_false(under);
    assert_string_equal(why, "capacity is negative");
    assert_int_equal(s_offer(10, -1, &under, &why), -1);
    assert_false(under);
    assert_string_equal(why, "reserved capacity is negative");

    /* A min_share of 0 accepts any well-formed offer; NULL outs are allowed. */
    assert_int_equal(slots_check_offer(10, 0, 0.0, NULL, NULL), 0);
    assert_int_equal(slots_check_offer(10, 1, MIN_SHARE, NULL, NULL), -1);
}

static void test_slots_claims_exhaust(void **state)
{
    (void)state;
    /* 10 units, 2 reserved: 8 general. */
    ledger_t l = {.capacity = 10, .reserved = 2};
    assert_true(slots_valid(&l));

    assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);
    assert_true(slots_valid(&l));
    assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);   /* others never touch the reserve */
    assert_true(slots_valid(&l));
    assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);
    assert_true(slots_valid(&l));
    assert_int_equal(l.claimed_reserved, 2);
    assert_int_equal(l.general_used, 1);
    assert_true(slots_reserve_utilisation(&l) == 1.0);

    /* Reserve gone: a family-doctor referral falls back to a general unit. */
    assert_int_equal(slots_claim(&l, true), CLAIM_GENERAL);
    assert_true(slots_valid(&l));
    for (int i = 0; i < 6; i++) {
        assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);
        assert_true(slots_valid(&l));
    }
    assert_int_equal(l.general_used, 8);

    /* Everything taken: accepted over capacity, nothing changes. */
    ledger_t before = l;
    assert_int_equal(slots_claim(&l, false), CLAIM_NONE);
    assert_int_equal(slots_claim(&l, true), CLAIM_NONE);
    assert_memory_equal(&l, &before, sizeof l);
    assert_true(slots_valid(&l));

    /* A released reserved unit goes to the next family-doctor referral only. */
    slots_release(&l, CLAIM_RESERVED);
    assert_true(slots_valid(&l));
    assert_int_equal(l.claimed_reserved, 1);
    assert_int_equal(slots_claim(&l, false), CLAIM_NONE);
    assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);

    /* A released general unit goes to anyone. */
    slots_release(&l, CLAIM_GENERAL);
    assert_true(slots_valid(&l));
    assert_int_equal(l.general_used, 7);
    assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);
    assert_int_equal(l.general_used, 8);

    /* Releasing CLAIM_NONE changes nothing. */
    before = l;
    slots_release(&l, CLAIM_NONE);
    assert_memory_equal(&l, &before, sizeof l);
}

static void test_slots_release_unclaimed(void **state)
{
    (void)state;
    /* 20 units, 5 reserved, 15 general. */
    ledger_t l = {.capacity = 20, .reserved = 5};
    assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);
    assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);
    for (int i = 0; i < 15; i++)
        assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);
    assert_int_equal(slots_claim(&l, false), CLAIM_NONE);

    /* Cut-off: the 3 reserved units nobody claimed become general. */
    assert_int_equal(slots_release_unclaimed(&l), 3);
    assert_true(slots_valid(&l));
    assert_int_equal(l.released, 3);
    assert_int_equal(l.claimed_reserved + l.released, l.reserved);
    assert_true(slots_reserve_utilisation(&l) == 2.0 / 5.0);

    /* Now the released units go to anyone, and a family doctor gets general. */
    assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);
    assert_int_equal(slots_claim(&l, true), CLAIM_GENERAL);
    assert_int_equal(slots_claim(&l, false), CLAIM_GENERAL);
    assert_int_equal(slots_claim(&l, true), CLAIM_NONE);
    assert_int_equal(l.general_used, 18);
    assert_true(slots_valid(&l));

    /* A second cut-off finds nothing. */
    assert_int_equal(slots_release_unclaimed(&l), 0);
    assert_true(slots_valid(&l));

    /* Nothing reserved, nothing to release. */
    ledger_t z = {.capacity = 4};
    assert_int_equal(slots_release_unclaimed(&z), 0);
    assert_true(slots_valid(&z));
}

static void test_slots_ratios(void **state)
{
    (void)state;
    ledger_t l = {.capacity = 50, .reserved = 10};
    assert_true(slots_reserved_share(&l) == 0.2);
    assert_true(slots_reserve_utilisation(&l) == 0.0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(slots_claim(&l, true), CLAIM_RESERVED);
    assert_true(slots_reserve_utilisation(&l) == 0.4);

    ledger_t empty = {0};
    assert_true(slots_valid(&empty));
    assert_true(slots_reserved_share(&empty) == 0.0);
    assert_true(slots_reserve_utilisation(&empty) == 0.0);
    assert_int_equal(slots_claim(&empty, true), CLAIM_NONE);

    ledger_t none_reserved = {.capacity = 8};
    assert_true(slots_reserved_share(&none_reserved) == 0.0);
    assert_true(slots_reserve_utilisation(&none_reserved) == 0.0);
    assert_int_equal(slots_claim(&none_reserved, true), CLAIM_GENERAL);
}

static void test_slots_valid_rejects(void **state)
{
    (void)state;
    const ledger_t bad[] = {
        {.capacity = -1},
        {.capacity = 5, .reserved = -1},
        {.capacity = 5, .reserved = 6},
        {.capacity = 5, .reserved = 2, .released = 3},
        {.capacity = 5, .reserved = 2, .released = -1},
        {.capacity = 5, .reserved = 2, .claimed_reserved = 3},
        {.capacity = 5, .reserved = 2, .released = 1, .claimed_reserved = 2},
        {.capacity = 5, .reserved = 2, .claimed_reserved = -1},
        {.capacity = 5, .reserved = 2, .general_used = 4},
        {.capacity = 5, .reserved = 2, .released = 1, .general_used = 5},
        {.capacity = 5, .reserved = 2, .general_used = -1},
        {.capacity = INT64_MAX, .reserved = 1, .released = INT64_MAX},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (slots_valid(&bad[i]))
            fail_msg("ledger %zu should be invalid", i);
    assert_false(slots_valid(NULL));

    const ledger_t good = {.capacity = 5, .reserved = 2, .released = 1, .claimed_reserved = 1,
                           .general_used = 4};
    assert_true(slots_valid(&good));
}

static void test_slots_release_without_claim(void **state)
{
    (void)state;
    /* A release the store never claimed must not drive a counter negative. */
    ledger_t l = {.capacity = 3, .reserved = 1};
    slots_release(&l, CLAIM_RESERVED);
    slots_release(&l, CLAIM_GENERAL);
    assert_int_equal(l.claimed_reserved, 0);
    assert_int_equal(l.general_used, 0);
    assert_true(slots_valid(&l));
}

static void test_slots_names(void **state)
{
    (void)state;
    assert_string_equal(slots_kind_name(RES_CLINIC), "clinic");
    assert_string_equal(slots_kind_name(RES_BED), "bed");
    assert_string_equal(slots_kind_name(RES_EXAM), "exam");
    assert_string_equal(slots_kind_name(RES_KIND_COUNT), "unknown");
    assert_string_equal(slots_claim_name(CLAIM_NONE), "none");
    assert_string_equal(slots_claim_name(CLAIM_RESERVED), "reserved");
    assert_string_equal(slots_claim_name(CLAIM_GENERAL), "general");
    assert_string_equal(slots_claim_name((claim_t)9), "unknown");
}

/* ---- property run ---------------------------------------------------- */

static uint64_t s_rng = 0x9E3779B97F4A7C15ULL;

static uint64_t s_xorshift(void)
{
    uint64_t x = s_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return s_rng = x;
}

static int64_t s_below(int64_t n)
{
    return n <= 0 ? 0 : (int64_t)(s_xorshift() % (uint64_t)n);
}

#define MAX_HELD 256

/* The model: the claims held by live referrals, and whether the cut-off passed. */
typedef struct {
    claim_t held[MAX_HELD];
    int n;
    int64_t released;   /* sum of what slots_release_unclaimed returned */
} model_t;

static void s_check(const ledger_t *l, const model_t *m, int64_t capacity, int64_t reserved)
{
    int64_t res = 0, gen = 0;
    for (int i = 0; i < m->n; i++) {
        res += m->held[i] == CLAIM_RESERVED;
        gen += m->held[i] == CLAIM_GENERAL;
    }
    assert_true(slots_valid(l));
    /* The offer never changes. */
    assert_int_equal(l->capacity, capacity);
    assert_int_equal(l->reserved, reserved);
    /* Conservation: every unit held is counted once, in its own pool. */
    assert_int_equal(l->claimed_reserved, res);
    assert_int_equal(l->general_used, gen);
    assert_int_equal(l->released, m->released);
    assert_true(l->claimed_reserved + l->released <= l->reserved);
    assert_true(l->claimed_reserved + l->general_used <= l->capacity);
    double share = slots_reserved_share(l), util = slots_reserve_utilisation(l);
    assert_true(share >= 0.0 && share <= 1.0);
    assert_true(util >= 0.0 && util <= 1.0);
}

static void test_slots_property_random_sequences(void **state)
{
    (void)state;
    long claims[3] = {0};
    for (int seq = 0; seq < 3000; seq++) {
        int64_t capacity = s_below(40);
        int64_t reserved = s_below(capacity + 1);
        bool under;
        const char *why;
        int rc = slots_check_offer(capacity, reserved, MIN_SHARE, &under, &why);
        /* The model of the offer check: well-formed, so only the share can fail. */
        bool want_under = capacity > 0 && reserved * 5 < capacity;
        assert_int_equal(rc, want_under ? -1 : 0);
        assert_int_equal(under, want_under);

        ledger_t l = {.capacity = capacity, .reserved = reserved};
        model_t m = {.n = 0};
        s_check(&l, &m, capacity, reserved);

        int ops = 1 + (int)s_below(120);
        for (int op = 0; op < ops; op++) {
            uint64_t r = s_xorshift() % 100;
            if (r < 55 && m.n < MAX_HELD) {
                bool fd = s_xorshift() & 1;
                int64_t res_left = l.reserved - l.released - l.claimed_reserved;
                int64_t gen_left = l.capacity - l.reserved + l.released - l.general_used;
                claim_t want = fd && res_left > 0 ? CLAIM_RESERVED
                               : gen_left > 0     ? CLAIM_GENERAL
                                                  : CLAIM_NONE;
                ledger_t before = l;
                claim_t c = slots_claim(&l, fd);
                assert_int_equal(c, want);
                claims[c]++;
                if (c == CLAIM_NONE)
                    assert_memory_equal(&l, &before, sizeof l);
                else
                    m.held[m.n++] = c;
            } else if (r < 92 && m.n > 0) {
                int i = (int)s_below(m.n);
                slots_release(&l, m.held[i]);
                m.held[i] = m.held[--m.n];
            } else if (r >= 92) {
                int64_t left = l.reserved - l.released - l.claimed_reserved;
                int64_t n = slots_release_unclaimed(&l);
                assert_int_equal(n, left);
                m.released += n;
                assert_int_equal(l.claimed_reserved + l.released, l.reserved);
            }
            s_check(&l, &m, capacity, reserved);
        }

        /* Releasing everything held brings the counters back to the cut-off's. */
        while (m.n > 0)
            slots_release(&l, m.held[--m.n]);
        s_check(&l, &m, capacity, reserved);
        assert_int_equal(l.claimed_reserved, 0);
        assert_int_equal(l.general_used, 0);
    }
    /* The run reached every outcome. */
    assert_true(claims[CLAIM_NONE] > 0);
    assert_true(claims[CLAIM_RESERVED] > 0);
    assert_true(claims[CLAIM_GENERAL] > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_offer),
        cmocka_unit_test(test_slots_claims_exhaust),
        cmocka_unit_test(test_slots_release_unclaimed),
        cmocka_unit_test(test_slots_ratios),
        cmocka_unit_test(test_slots_valid_rejects),
        cmocka_unit_test(test_slots_release_without_claim),
        cmocka_unit_test(test_slots_names),
        cmocka_unit_test(test_slots_property_random_sequences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
