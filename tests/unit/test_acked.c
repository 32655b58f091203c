/*
 * Unit tests for clients/lib/acked.c: the ids a client saw acknowledged
 * after several sends.  Which seq answers other content, forgetting once
 * the late answers are in, replacing, and the bound on entries.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acked.h"

/* An Envelope of message_id (field 1) and created_at_ms (field 6, one
 * varint byte) followed by a destination (field 3): malloc'ed, *len set. */
static uint8_t *s_env(const char *id, uint8_t created, const char *dest, size_t *len)
{
    size_t a = strlen(id), b = strlen(dest);
    uint8_t *p = malloc(2 + a + 2 + 2 + b);
    assert_non_null(p);
    size_t n = 0;
    p[n++] = 0x0a;
    p[n++] = (uint8_t)a;
    memcpy(p + n, id, a);
    n += a;
    p[n++] = 0x30; /* field 6, varint */
    p[n++] = created & 0x7f;
    p[n++] = 0x1a;
    p[n++] = (uint8_t)b;
    memcpy(p + n, dest, b);
    *len = n + b;
    return p;
}

/* acked_put of s_env(id, created, dest) as seq. */
static int s_put(acked_t *t, const char *id, uint64_t seq, uint8_t created, const char *dest,
                 unsigned late)
{
    size_t len;
    uint8_t *body = s_env(id, created, dest, &len);
    return acked_put(t, id, seq, body, len, late);
}

static void test_acked_other_content_names_the_seq(void **state)
{
    (void)state;
    acked_t *t = acked_new();
    assert_non_null(t);
    size_t len;
    assert_int_equal(s_put(t, "m-1", 41, 1, "yx-lead", 1), 0);
    uint8_t *same = s_env("m-1", 2, "yx-lead", &len); /* only created_at_ms differs */
    assert_int_equal(acked_other_seq(t, "m-1", same, len), 0);
    free(same);
    uint8_t *other = s_env("m-1", 1, "yx-lab", &len);
    assert_int_equal(acked_other_seq(t, "m-1", other, len), 41);
    assert_int_equal(acked_other_seq(t, "m-2", other, len), 0);
    free(other);
    acked_destroy(&t);
    assert_null(t);
}

static void test_acked_forgets_once_the_late_answers_are_in(void **state)
{
    (void)state;
    acked_t *t = acked_new();
    assert_non_null(t);
    size_t len;
    assert_int_equal(s_put(t, "m-1", 41, 1, "yx-lead", 2), 0);
    acked_answered(t, "m-1", 40); /* not its seq: not its answer */
    acked_answered(t, "m-1", 41);
    assert_int_equal(acked_count(t), 1);
    acked_answered(t, "m-1", 41);
    assert_int_equal(acked_count(t), 0);
    uint8_t *other = s_env("m-1", 1, "yx-lab", &len);
    assert_int_equal(acked_other_seq(t, "m-1", other, len), 0);
    free(other);
    acked_destroy(&t);
}

static void test_acked_put_replaces(void **state)
{
    (void)state;
    acked_t *t = acked_new();
    assert_non_null(t);
    size_t len;
    assert_int_equal(s_put(t, "m-1", 41, 1, "yx-lead", 1), 0);
    assert_int_equal(s_put(t, "m-1", 52, 1, "yx-lab", 1), 0);
    assert_int_equal(acked_count(t), 1);
    uint8_t *first = s_env("m-1", 1, "yx-lead", &len);
    assert_int_equal(acked_other_seq(t, "m-1", first, len), 52);
    free(first);
    acked_destroy(&t);
}

/*
 * A message acknowledged after two sends (one late answer to come) is
 * submitted again with the same content, sent twice, and acknowledged by
 * that late answer, which the client cannot tell from its own: the answers
 * of both its sends are still to come, and the id must be remembered until
 * both are in.  The put that replaced the entry used to count only the
 * new sends but one, and forgot the id with an answer still on its way,
 * which then acknowledged a resubmission with other content.
 */
static void test_acked_put_of_the_same_seq_keeps_the_late_answers(void **state)
{
    (void)state;
    acked_t *t = acked_new();
    assert_non_null(t);
    size_t len;
    assert_int_equal(s_put(t, "m-1", 41, 1, "yx-lead", 1), 0);
    /* The resubmission, two sends, acknowledged (by the first's late Ack). */
    assert_int_equal(s_put(t, "m-1", 41, 2, "yx-lead", 1), 0);
    acked_answered(t, "m-1", 41);
    uint8_t *other = s_env("m-1", 1, "yx-lab", &len);
    assert_int_equal(acked_other_seq(t, "m-1", other, len), 41);
    acked_answered(t, "m-1", 41);
    assert_int_equal(acked_other_seq(t, "m-1", other, len), 0);
    free(other);
    acked_destroy(&t);
}

static void test_acked_keeps_the_newest_max(void **state)
{
    (void)state;
    acked_t *t = acked_new();
    assert_non_null(t);
    char id[32];
    size_t len;
    for (int i = 0; i < ACKED_MAX + 10; i++) {
        snprintf(id, sizeof id, "m-%d", i);
        assert_int_equal(s_put(t, id, (uint64_t)i + 1, 1, "yx-lead", 1),
                         0);
        if (i == 20)
            acked_answered(t, "m-20", 21); /* a dead place in the ring */
    }
    assert_int_equal(acked_count(t), ACKED_MAX - 1);
    uint8_t *other = s_env("x", 1, "yx-lab", &len);
    assert_int_equal(acked_other_seq(t, "m-9", other, len), 0);  /* the oldest went */
    assert_int_equal(acked_other_seq(t, "m-10", other, len), 11);
    snprintf(id, sizeof id, "m-%d", ACKED_MAX + 9);
    assert_int_equal(acked_other_seq(t, id, other, len), ACKED_MAX + 10);
    free(other);
    acked_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acked_other_content_names_the_seq),
        cmocka_unit_test(test_acked_forgets_once_the_late_answers_are_in),
        cmocka_unit_test(test_acked_put_replaces),
        cmocka_unit_test(test_acked_put_of_the_same_seq_keeps_the_late_answers),
        cmocka_unit_test(test_acked_keeps_the_newest_max),
    };
    return cmocka_run_group_tests_name("acked", tests, NULL, NULL);
}
