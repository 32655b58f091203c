/*
 * Unit tests for proto/strmap.c: the byte-string -> int map behind facility
 * ids, ZeroMQ routing ids and libmedroute's seen-set in memory.  Growth,
 * tombstones and binary keys are exercised through the public API; the hash
 * through strmap_new_keyed and strmap_hash, with keys the test chooses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "strmap.h"

static int s_setup(void **state)
{
    strmap_t *m = strmap_new();
    if (m == NULL)
        return -1;
    *state = m;
    return 0;
}

static int s_teardown(void **state)
{
    strmap_t *m = *state;
    strmap_destroy(&m);
    return m == NULL ? 0 : -1;
}

static void test_strmap_put_get_del(void **state)
{
    strmap_t *m = *state;
    assert_int_equal(strmap_size(m), 0);
    assert_int_equal(strmap_put(m, "alpha", 5, 1), 0);
    assert_int_equal(strmap_put(m, "beta", 4, 2), 0);
    assert_int_equal(strmap_put(m, "gamma", 5, 0), 0); /* 0 is a value like any other */
    assert_int_equal(strmap_size(m), 3);
    assert_int_equal(strmap_get(m, "alpha", 5), 1);
    assert_int_equal(strmap_get(m, "beta", 4), 2);
    assert_int_equal(strmap_get(m, "gamma", 5), 0);

    assert_int_equal(strmap_del(m, "beta", 4), 2); /* the value it had */
    assert_int_equal(strmap_size(m), 2);
    assert_int_equal(strmap_get(m, "beta", 4), -1);
    assert_int_equal(strmap_get(m, "alpha", 5), 1);
    assert_int_equal(strmap_get(m, "gamma", 5), 0);

    /* Deleting a missing key changes nothing. */
    assert_int_equal(strmap_del(m, "beta", 4), -1);
    assert_int_equal(strmap_del(m, "delta", 5), -1);
    assert_int_equal(strmap_size(m), 2);
}

static void test_strmap_get_missing(void **state)
{
    strmap_t *m = *state;
    assert_int_equal(strmap_get(m, "nothing", 7), -1);
    assert_int_equal(strmap_put(m, "abc", 3, 7), 0);
    assert_int_equal(strmap_get(m, "ab", 2), -1);   /* a prefix is another key */
    assert_int_equal(strmap_get(m, "abcd", 4), -1);
    assert_int_equal(strmap_get(m, "ABC", 3), -1);
    assert_int_equal(strmap_get(m, "abc", 3), 7);
}

static void test_strmap_overwrite(void **state)
{
    strmap_t *m = *state;
    assert_int_equal(strmap_put(m, "k", 1, 1), 0);
    assert_int_equal(strmap_put(m, "k", 1, 99), 0);
    assert_int_equal(strmap_size(m), 1);
    assert_int_equal(strmap_get(m, "k", 1), 99);
}

static void test_strmap_keys_are_copied(void **state)
{
    strmap_t *m = *state;
    char key[16] = "routing-1";
    assert_int_equal(strmap_put(m, key, strlen(key), 5), 0);
    memcpy(key, "XXXXXXXXX", 9);
    assert_int_equal(strmap_get(m, "routing-1", 9), 5);
    assert_int_equal(strmap_get(m, key, 9), -1);
}

static void test_strmap_many_keys_grow(void **state)
{
    strmap_t *m = *state;
    enum { N = 10000 };
    char key[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "facility-%d", i);
        assert_int_equal(strmap_put(m, key, (size_t)n, i), 0);
    }
    assert_int_equal(strmap_size(m), N);
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "facility-%d", i);
        assert_int_equal(strmap_get(m, key, (size_t)n), i);
    }
    assert_int_equal(strmap_get(m, "facility-10000", 14), -1);
    /* Remove the even ones; the odd ones stay reachable past the tombstones. */
    for (int i = 0; i < N; i += 2) {
        int n = snprintf(key, sizeof key, "facility-%d", i);
        strmap_del(m, key, (size_t)n);
    }
    assert_int_equal(strmap_size(m), N / 2);
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "facility-%d", i);
        assert_int_equal(strmap_get(m, key, (size_t)n), i % 2 ? i : -1);
    }
}

static void test_strmap_binary_keys(void **state)
{
    strmap_t *m = *state;
    /* ZeroMQ routing ids start with a NUL byte and may hold more. */
    const uint8_t a[] = {0x00, 0x6b, 0x8b, 0x45, 0x67};
    const uint8_t b[] = {0x00, 0x6b, 0x8b, 0x45, 0x68};
    const uint8_t c[] = {0x00, 0x00, 0x00};
    const uint8_t d[] = {0x00, 0x00};
    assert_int_equal(strmap_put(m, a, sizeof a, 1), 0);
    assert_int_equal(strmap_put(m, b, sizeof b, 2), 0);
    assert_int_equal(strmap_put(m, c, sizeof c, 3), 0);
    assert_int_equal(strmap_put(m, d, sizeof d, 4), 0);
    assert_int_equal(strmap_size(m), 4);
    assert_int_equal(strmap_get(m, a, sizeof a), 1);
    assert_int_equal(strmap_get(m, b, sizeof b), 2);
    assert_int_equal(strmap_get(m, c, sizeof c), 3);
    assert_int_equal(strmap_get(m, d, sizeof d), 4);
    assert_int_equal(strmap_get(m, c, 1), -1);
    assert_int_equal(strmap_get(m, a, 1), -1);
    strmap_del(m, c, sizeof c);
    assert_int_equal(strmap_get(m, c, sizeof c), -1);
    assert_int_equal(strmap_get(m, d, sizeof d), 4);
}

static void test_strmap_empty_key(void **state)
{
    strmap_t *m = *state;
    assert_int_equal(strmap_put(m, "", 0, 8), 0);
    assert_int_equal(strmap_get(m, "", 0), 8);
    assert_int_equal(strmap_get(m, "\0", 1), -1);
    strmap_del(m, "", 0);
    assert_int_equal(strmap_get(m, "", 0), -1);
    assert_int_equal(strmap_size(m), 0);
}

static void test_strmap_delete_then_reinsert(void **state)
{
    strmap_t *m = *state;
    assert_int_equal(strmap_put(m, "a", 1, 1), 0);
    strmap_del(m, "a", 1);
    assert_int_equal(strmap_get(m, "a", 1), -1);
    assert_int_equal(strmap_put(m, "a", 1, 2), 0);
    assert_int_equal(strmap_get(m, "a", 1), 2);
    assert_int_equal(strmap_size(m), 1);

    /* Churn: many delete/reinsert cycles over a small key set fill the table
     * with tombstones unless they are reused or swept; every key must stay
     * reachable with its latest value and the size exact. */
    char key[16];
    for (int round = 0; round < 2000; round++) {
        for (int k = 0; k < 5; k++) {
            int n = snprintf(key, sizeof key, "r%d-%d", round, k);
            assert_int_equal(strmap_put(m, key, (size_t)n, round * 10 + k), 0);
        }
        for (int k = 0; k < 5; k++) {
            int n = snprintf(key, sizeof key, "r%d-%d", round, k);
            assert_int_equal(strmap_get(m, key, (size_t)n), round * 10 + k);
            if (k != 4 || round != 1999)
                strmap_del(m, key, (size_t)n);
        }
    }
    assert_int_equal(strmap_size(m), 2);
    assert_int_equal(strmap_get(m, "a", 1), 2);
    assert_int_equal(strmap_get(m, "r1999-4", 7), 19994);
    assert_int_equal(strmap_get(m, "r1999-3", 7), -1);
    assert_int_equal(strmap_get(m, "r0-0", 4), -1);
}

static void test_strmap_reinsert_after_delete_in_chain(void **state)
{
    strmap_t *m = *state;
    /* Fill, delete one in the middle, put an existing key again: it must be
     * updated in place, not inserted a second time into the tombstone. */
    char key[16];
    for (int i = 0; i < 6; i++) {
        int n = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(strmap_put(m, key, (size_t)n, i), 0);
    }
    strmap_del(m, "k2", 2);
    for (int i = 0; i < 6; i++) {
        if (i == 2)
            continue;
        int n = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(strmap_put(m, key, (size_t)n, 100 + i), 0);
    }
    assert_int_equal(strmap_size(m), 5);
    for (int i = 0; i < 6; i++) {
        int n = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(strmap_get(m, key, (size_t)n), i == 2 ? -1 : 100 + i);
    }
    /* Deleting each once leaves nothing behind. */
    for (int i = 0; i < 6; i++) {
        int n = snprintf(key, sizeof key, "k%d", i);
        strmap_del(m, key, (size_t)n);
    }
    assert_int_equal(strmap_size(m), 0);
}

static void test_strmap_destroy_null(void **state)
{
    (void)state;
    strmap_t *m = NULL;
    strmap_destroy(&m);
    assert_null(m);
    m = strmap_new();
    assert_non_null(m);
    assert_int_equal(strmap_put(m, "x", 1, 1), 0);
    strmap_destroy(&m);
    assert_null(m);
}

/* Known answers of SipHash-1-3 under the zero key (the 64-bit outputs'
 * low halves; the reference implementation gives d1fba762150c532c,
 * 8264ceeccb16bcbe and ce31007e34130c0a). */
static void test_strmap_hash_is_siphash13(void **state)
{
    (void)state;
    const uint8_t zero[16] = {0};
    strmap_t *m = strmap_new_keyed(zero);
    assert_non_null(m);
    assert_int_equal(strmap_hash(m, "", 0), 0x150c532cU);
    assert_int_equal(strmap_hash(m, "siphash", 7), 0xcb16bcbeU);
    assert_int_equal(strmap_hash(m, "digest-sip_hash", 15), 0x34130c0aU);
    strmap_destroy(&m);
}

/* The hash strmap used before it was keyed: FNV-1a, 64 bits, its low half. */
static uint32_t s_fnv1a(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return (uint32_t)h;
}

/* 64 ids a sender could choose, all of one FNV-1a hash: the low 32 bits of
 * its state depend on nothing above them, so after "id-" either block of a
 * pair leads to the same state and the pairs chain (found by a birthday
 * search over 4-character blocks).  Keyed, they spread over the table. */
static void test_strmap_chosen_collisions_spread(void **state)
{
    (void)state;
    static const char *const pairs[6][2] = {
        {"3g4B", "KZkb"}, {"GAbb", "s3Tr"}, {"GlkX", "sf9h"},
        {"Mzab", "yxSr"}, {"HrjX", "tl8h"}, {"NlaU", "zjSe"},
    };
    enum { N = 64, LEN = 3 + 6 * 4 };
    char keys[N][LEN + 1];
    for (int k = 0; k < N; k++) {
        memcpy(keys[k], "id-", 3);
        for (int b = 0; b < 6; b++)
            memcpy(keys[k] + 3 + 4 * b, pairs[b][(k >> b) & 1], 4);
        keys[k][LEN] = '\0';
        assert_int_equal(s_fnv1a(keys[k], LEN), s_fnv1a(keys[0], LEN));
    }

    uint8_t key[16];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    strmap_t *m = strmap_new_keyed(key);
    assert_non_null(m);
    for (int k = 0; k < N; k++)
        assert_int_equal(strmap_put(m, keys[k], LEN, k), 0);
    for (int k = 0; k < N; k++)
        assert_int_equal(strmap_get(m, keys[k], LEN), k);

    /* 64 keys hold a table of 256 slots (load under 1/2 after growth);
     * random placement fills about 56 of them. */
    enum { SLOTS = 256 };
    int taken[SLOTS] = {0};
    int distinct = 0;
    for (int k = 0; k < N; k++) {
        uint32_t slot = strmap_hash(m, keys[k], LEN) % SLOTS;
        distinct += !taken[slot];
        taken[slot] = 1;
    }
    assert_true(distinct >= N / 2);
    strmap_destroy(&m);
}

/* Each map draws its own key: what one map's hash reveals says nothing of
 * another's. */
static void test_strmap_maps_draw_their_own_key(void **state)
{
    (void)state;
    strmap_t *a = strmap_new();
    strmap_t *b = strmap_new();
    assert_non_null(a);
    assert_non_null(b);
    int same = 0;
    char key[16];
    for (int i = 0; i < 4; i++) {
        int n = snprintf(key, sizeof key, "facility-%d", i);
        same += strmap_hash(a, key, (size_t)n) == strmap_hash(b, key, (size_t)n);
    }
    assert_true(same < 4); /* all four alike: a chance of 2^-128 */
    strmap_destroy(&a);
    strmap_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_strmap_put_get_del, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_get_missing, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_overwrite, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_keys_are_copied, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_many_keys_grow, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_binary_keys, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_empty_key, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_delete_then_reinsert, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_strmap_reinsert_after_delete_in_chain, s_setup,
                                        s_teardown),
        cmocka_unit_test(test_strmap_destroy_null),
        cmocka_unit_test(test_strmap_hash_is_siphash13),
        cmocka_unit_test(test_strmap_chosen_collisions_spread),
        cmocka_unit_test(test_strmap_maps_draw_their_own_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
