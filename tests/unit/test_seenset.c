/*
 * Unit tests for clients/lib/seenset.c: the seen-set of a client without a
 * state directory.  Lookups, state changes, deletion, pruning in the order
 * keys were first set, and growth of the ring with deleted slots in it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "seenset.h"

enum { IN_HANDLER = 1, DONE = 2 };

static int s_setup(void **state)
{
    seenset_t *s = seenset_new();
    if (s == NULL)
        return -1;
    *state = s;
    return 0;
}

static int s_teardown(void **state)
{
    seenset_t *s = *state;
    seenset_destroy(&s);
    return s == NULL ? 0 : -1;
}

static void test_seenset_set_get_del(void **state)
{
    seenset_t *s = *state;
    assert_int_equal(seenset_get(s, "t-lishu\0m1", 10), 0);
    assert_int_equal(seenset_set(s, "t-lishu\0m1", 10, IN_HANDLER, 100), 0);
    assert_int_equal(seenset_get(s, "t-lishu\0m1", 10), IN_HANDLER);
    assert_int_equal(seenset_set(s, "t-lishu\0m1", 10, DONE, 110), 0); /* in place */
    assert_int_equal(seenset_get(s, "t-lishu\0m1", 10), DONE);
    assert_int_equal(seenset_size(s), 1);
    /* The NUL is part of the key: another split of the same bytes is another key. */
    assert_int_equal(seenset_get(s, "t-lishu\0m", 9), 0);
    assert_int_equal(seenset_set(s, "t-lish\0um1", 10, DONE, 120), 0);
    assert_int_equal(seenset_size(s), 2);
    seenset_del(s, "t-lishu\0m1", 10);
    assert_int_equal(seenset_get(s, "t-lishu\0m1", 10), 0);
    assert_int_equal(seenset_get(s, "t-lish\0um1", 10), DONE);
    seenset_del(s, "t-lishu\0m1", 10); /* missing: nothing happens */
    assert_int_equal(seenset_size(s), 1);
}

static void test_seenset_prune_oldest_first(void **state)
{
    seenset_t *s = *state;
    assert_int_equal(seenset_set(s, "a", 1, DONE, 10), 0);
    assert_int_equal(seenset_set(s, "b", 1, DONE, 20), 0);
    assert_int_equal(seenset_set(s, "c", 1, DONE, 30), 0);
    seenset_prune(s, DONE, 25);
    assert_int_equal(seenset_get(s, "a", 1), 0);
    assert_int_equal(seenset_get(s, "b", 1), 0);
    assert_int_equal(seenset_get(s, "c", 1), DONE);
    assert_int_equal(seenset_size(s), 1);

    /* A key whose handler is running is kept, and so is what follows it. */
    assert_int_equal(seenset_set(s, "d", 1, IN_HANDLER, 40), 0);
    assert_int_equal(seenset_set(s, "e", 1, DONE, 50), 0);
    seenset_prune(s, DONE, 100);
    assert_int_equal(seenset_get(s, "c", 1), 0);
    assert_int_equal(seenset_get(s, "d", 1), IN_HANDLER);
    assert_int_equal(seenset_get(s, "e", 1), DONE);
    /* Once it is done (deleted here, as a failed handler is), the rest goes. */
    seenset_del(s, "d", 1);
    seenset_prune(s, DONE, 100);
    assert_int_equal(seenset_size(s), 0);
    /* A pruned key can come again. */
    assert_int_equal(seenset_set(s, "a", 1, DONE, 200), 0);
    assert_int_equal(seenset_get(s, "a", 1), DONE);
}

static void test_seenset_grows_with_holes(void **state)
{
    seenset_t *s = *state;
    enum { N = 20000 };
    char key[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "src%c%d", '\0', i);
        assert_int_equal(seenset_set(s, key, (size_t)n, DONE, i), 0);
        if (i % 3 == 0)
            seenset_del(s, key, (size_t)n);
        if (i % 1000 == 999)
            seenset_prune(s, DONE, i - 5000); /* keep the last 5000 ms */
    }
    size_t live = 0;
    for (int i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "src%c%d", '\0', i);
        int want = (i % 3 == 0 || i < N - 1 - 5000) ? 0 : DONE;
        assert_int_equal(seenset_get(s, key, (size_t)n), want);
        live += want != 0;
    }
    assert_int_equal(seenset_size(s), live);
    seenset_prune(s, DONE, N);
    assert_int_equal(seenset_size(s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seenset_set_get_del, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_seenset_prune_oldest_first, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_seenset_grows_with_holes, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
