/*
 * Unit tests for daemon/durhist.c: the duration histograms behind the
 * store's latency metrics (store_latency).  Bucket bounds are inclusive,
 * quantiles interpolate inside a bucket, merges add.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "durhist.h"

static void test_durhist_bounds_are_inclusive(void **state)
{
    (void)state;
    durhist_t h = {0};
    durhist_add(&h, 50);       /* on the first bound: the first bucket */
    durhist_add(&h, 51);       /* just above: the second */
    durhist_add(&h, -7);       /* a clock that went back: 0, the first */
    durhist_add(&h, 1000);     /* 1 ms: the bucket "le 1000" */
    durhist_add(&h, 10000001); /* past the last finite bound: +Inf */
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 1);
    size_t ms = 0;
    while (durhist_le_us[ms] != 1000)
        ms++;
    assert_int_equal(h.counts[ms], 1);
    assert_int_equal(h.counts[DURHIST_BUCKETS - 1], 1);
    assert_true(durhist_le_us[DURHIST_BUCKETS - 1] == UINT64_MAX);
    assert_int_equal(h.count, 5);
    assert_true(h.sum_us == 50 + 51 + 0 + 1000 + 10000001ULL);
    uint64_t total = 0;
    for (size_t b = 0; b < DURHIST_BUCKETS; b++)
        total += h.counts[b];
    assert_true(total == h.count);
}

static void test_durhist_bounds_ascend(void **state)
{
    (void)state;
    for (size_t b = 1; b < DURHIST_BUCKETS; b++)
        assert_true(durhist_le_us[b] > durhist_le_us[b - 1]);
}

static void test_durhist_quantile_interpolates_in_its_bucket(void **state)
{
    (void)state;
    durhist_t h = {0};
    assert_int_equal(durhist_quantile_us(&h, 0.5), 0); /* empty */
    /* 100 durations in (1000, 2000]: the median is halfway through it. */
    for (int i = 0; i < 100; i++)
        durhist_add(&h, 1500);
    assert_int_equal(durhist_quantile_us(&h, 0.5), 1500);
    assert_int_equal(durhist_quantile_us(&h, 1.0), 2000);
    /* 900 more in [0, 50]: the median is there now; p99 is still in the
     * upper bucket, 90 % of the way through its 100 (rank 990 - 900). */
    for (int i = 0; i < 900; i++)
        durhist_add(&h, 10);
    assert_true(durhist_quantile_us(&h, 0.5) <= 50);
    assert_int_equal(durhist_quantile_us(&h, 0.99), 1900);
    /* In +Inf: the last finite bound, not a made-up figure. */
    durhist_t slow = {0};
    durhist_add(&slow, 60000000);
    assert_true(durhist_quantile_us(&slow, 0.5) == durhist_le_us[DURHIST_BUCKETS - 2]);
}

static void test_durhist_merge_adds(void **state)
{
    (void)state;
    durhist_t a = {0}, b = {0};
    durhist_add(&a, 70);
    durhist_add(&b, 70);
    durhist_add(&b, 3000);
    durhist_merge(&a, &b);
    assert_int_equal(a.count, 3);
    assert_int_equal(a.sum_us, 3140);
    assert_int_equal(a.counts[1], 2);
    assert_int_equal(b.count, 2); /* other is left as it was */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durhist_bounds_are_inclusive),
        cmocka_unit_test(test_durhist_bounds_ascend),
        cmocka_unit_test(test_durhist_quantile_interpolates_in_its_bucket),
        cmocka_unit_test(test_durhist_merge_adds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
