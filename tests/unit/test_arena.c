/*
 * Unit tests for daemon/arena.c: the bump allocator inbound frames are
 * decoded into.  Alignment, the malloc path for what does not fit, reuse of
 * the block after a reset, and a protobuf-c decode through arena_pb().
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "mr_codec.h"

static void test_arena_aligned_and_distinct(void **state)
{
    (void)state;
    arena_t *a = arena_new(1024);
    assert_non_null(a);
    unsigned char *prev = NULL;
    for (size_t n = 1; n <= 40; n += 3) {
        unsigned char *p = arena_alloc(a, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % alignof(max_align_t), 0);
        memset(p, 0xab, n); /* writable, all n bytes */
        if (prev != NULL)
            assert_true(p > prev); /* bumped, no overlap with the one before */
        prev = p;
    }
    arena_destroy(&a);
    assert_null(a);
    arena_destroy(&a); /* NULL: nothing to do */
}

static void test_arena_big_and_reset(void **state)
{
    (void)state;
    arena_t *a = arena_new(64);
    assert_non_null(a);
    unsigned char *first = arena_alloc(a, 16);
    assert_non_null(first);
    /* More than the block has left: from malloc, usable in full. */
    unsigned char *big = arena_alloc(a, 100000);
    assert_non_null(big);
    assert_int_equal((uintptr_t)big % alignof(max_align_t), 0);
    memset(big, 0x5a, 100000);
    assert_null(arena_alloc(a, SIZE_MAX)); /* refused, not wrapped around */
    assert_null(arena_alloc(a, SIZE_MAX - 8));
    /* After a reset the block is handed out again from its start. */
    arena_reset(a);
    assert_ptr_equal(arena_alloc(a, 16), first);
    arena_destroy(&a);
}

static void test_arena_protobuf_decode(void **state)
{
    (void)state;
    Medroute__V1__Referral ref = MEDROUTE__V1__REFERRAL__INIT;
    ref.referral_id = "R-2026-0042";
    ref.clinical_summary = "chest pain since morning, ECG at the township centre";
    mr_envelope_t env = MEDROUTE__V1__ENVELOPE__INIT;
    env.message_id = "t-aihua-000042";
    env.source = "t-aihua";
    env.destination = "yx-lead";
    env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    env.referral = &ref;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(&env.base, &buf, &len), 0);

    arena_t *a = arena_new(4096);
    assert_non_null(a);
    for (int round = 0; round < 3; round++) {
        mr_envelope_t *got = medroute__v1__envelope__unpack(arena_pb(a), len, buf);
        assert_non_null(got);
        assert_string_equal(got->message_id, env.message_id);
        assert_string_equal(got->source, env.source);
        assert_string_equal(got->destination, env.destination);
        assert_int_equal(got->payload_case, MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL);
        assert_string_equal(got->referral->referral_id, ref.referral_id);
        assert_string_equal(got->referral->clinical_summary, ref.clinical_summary);
        /* Decoded into the block: the next allocation is past all of it. */
        unsigned char *next = arena_alloc(a, 1);
        assert_true((unsigned char *)got < next);
        assert_true((unsigned char *)got->referral < next);
        arena_reset(a); /* instead of free_unpacked: the same block next round */
    }
    arena_destroy(&a);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_aligned_and_distinct),
        cmocka_unit_test(test_arena_big_and_reset),
        cmocka_unit_test(test_arena_protobuf_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
