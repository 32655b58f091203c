/*
 * test_poll_deadline.c - mr_client_poll returns by its time-out, however
 * late the thread runs between the library's clock readings.
 *
 * The library's monotonic clock (mr_mono_ms, exported by libmedroute) is
 * replaced here by one that moves on by a step at every reading, as a
 * client descheduled for that long between two readings on a loaded
 * machine would see it.  No broker listens: nothing but the time-out can
 * end the poll.  Each poll runs in a child that an alarm ends if it hangs.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static int s_step;        /* 0: the real clock; else ms added at every reading */
static int64_t s_virtual; /* the stepped clock's last reading */

/* Takes the place of libmedroute's own (the executable's definition wins). */
int64_t mr_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    int64_t real = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (s_step == 0)
        return real;
    s_virtual += s_step;
    return s_virtual;
}

static void test_poll_deadline_returns_when_the_clock_jumps(void **state)
{
    (void)state;
    char ep[128];
    snprintf(ep, sizeof ep, "ipc:///tmp/mrt-no-broker-%ld", (long)getpid());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10);
        mr_client_opts_t o = {.endpoint = ep, .facility = "t-aihua"};
        mr_client_t *c = mr_client_new(&o);
        if (c == NULL)
            _exit(2);
        s_virtual = mr_mono_ms();
        s_step = 10;
        /* Every phase of the readings against the deadline. */
        for (int t = 20; t < 60; t++)
            if (mr_client_poll(c, t, NULL, NULL) < 0)
                _exit(3);
        s_step = 0;
        mr_client_destroy(&c);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("a poll did not return by its time-out (signal %d)", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_poll_deadline_returns_when_the_clock_jumps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
