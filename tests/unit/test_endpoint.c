/*
 * Unit tests for daemon/endpoint.c: a ROUTER socket on the loop.
 *
 * Linked with -Wl,--wrap=uv_idle_init,--wrap=calloc,--wrap=free: the test
 * fails the idle handle's init when it says so, and sees whether the block
 * endpoint_new allocated for itself is freed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

#include "endpoint.h"
#include "log.h"

static bool s_idle_fails;
static bool s_tracking;
static void *s_block;   /* the last block calloc gave while s_tracking */
static bool s_freed;    /* whether it was freed since */

int __real_uv_idle_init(uv_loop_t *loop, uv_idle_t *idle);
int __wrap_uv_idle_init(uv_loop_t *loop, uv_idle_t *idle);
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void __real_free(void *p);
void __wrap_free(void *p);

int __wrap_uv_idle_init(uv_loop_t *loop, uv_idle_t *idle)
{
    return s_idle_fails ? UV_ENOMEM : __real_uv_idle_init(loop, idle);
}

void *__wrap_calloc(size_t n, size_t size)
{
    void *p = __real_calloc(n, size);
    if (s_tracking) {
        s_block = p;
        s_freed = false;
    }
    return p;
}

void __wrap_free(void *p)
{
    if (p != NULL && p == s_block)
        s_freed = true;
    __real_free(p);
}

static void s_on_message(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                         const size_t *sizes, size_t n_parts, int truncated)
{
    (void)arg;
    (void)rid;
    (void)rid_len;
    (void)parts;
    (void)sizes;
    (void)n_parts;
    (void)truncated;
}

/* An idle handle that cannot be set up fails endpoint_new, and the endpoint
 * is freed once its poll handle has closed: the poll handle was closed
 * without a callback, and the endpoint leaked. */
static void test_endpoint_idle_init_failure_frees_the_endpoint(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    log_t *log = log_new(MR_LOG_DEBUG, out);
    assert_non_null(log);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    void *zctx = zmq_ctx_new();
    assert_non_null(zctx);
    endpoint_opts_t opts = {.name = "operator", .bind = "inproc://test_endpoint"};
    s_idle_fails = true;
    s_tracking = true;
    endpoint_t *ep = endpoint_new(&loop, zctx, &opts, s_on_message, NULL, log);
    s_tracking = false;
    s_idle_fails = false;
    assert_null(ep);
    assert_non_null(s_block);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0); /* the close callbacks */
    assert_true(s_freed);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(zmq_ctx_term(zctx), 0);
    log_destroy(&log);
    fclose(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoint_idle_init_failure_frees_the_endpoint),
    };
    return cmocka_run_group_tests_name("endpoint", tests, NULL, NULL);
}
