/*
 * test_clock.c - the real daemon under a step of its wall clock.
 *
 * A broker's clock is set by NTP or by hand, and it jumps: forward when a
 * clinic's server that ran slow is corrected, back when one that ran fast
 * is.  Time-outs and intervals must not follow it.  The daemon runs under
 * libfaketime (Debian's libfaketime), which moves CLOCK_REALTIME by the
 * offset in a file read at every call and leaves the monotonic clocks alone.
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
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#ifndef MRT_FAKETIME_LIB
#error "MRT_FAKETIME_LIB: the path of libfaketimeMT.so.1"
#endif
#ifndef CRASH_PEER_PATH
#error "CRASH_PEER_PATH: the crash tests' peer program"
#endif

/* Makes a new offset file at +0 in a directory of its own. */
static void s_new_clock(char *clock_path, size_t len)
{
    static const char tmpl[] = "/tmp/mrclock-XXXXXX";
    char dir[sizeof tmpl];
    memcpy(dir, tmpl, sizeof tmpl);
    assert_non_null(mkdtemp(dir));
    snprintf(clock_path, len, "%s/offset", dir);
    FILE *f = fopen(clock_path, "w");
    assert_non_null(f);
    assert_true(fputs("+0\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* The environment that has a program's wall clock follow clock_path.  In
 * a sanitizer build (make asan) ASan must not refuse to run behind the
 * preloaded library: it intercepts nothing libfaketime does. */
static void s_faketime_env(char env[MRT_ENV_MAX][300], const char *clock_path)
{
    snprintf(env[0], sizeof env[0], "LD_PRELOAD=%s", MRT_FAKETIME_LIB);
    snprintf(env[1], sizeof env[1], "FAKETIME_TIMESTAMP_FILE=%s", clock_path);
    snprintf(env[2], sizeof env[2], "FAKETIME_NO_CACHE=1");
    snprintf(env[3], sizeof env[3], "DONT_FAKE_MONOTONIC=1");
    const char *asan = getenv("ASAN_OPTIONS");
    snprintf(env[4], sizeof env[4], "ASAN_OPTIONS=%s%sverify_asan_link_order=0", asan ? asan : "",
             asan && asan[0] ? ":" : "");
}

/* Starts the daemon with its wall clock offset by what clock_path says. */
static void s_start(mrt_daemon_t *d, char *clock_path, size_t len, const char *extra)
{
    s_new_clock(clock_path, len);
    memset(d, 0, sizeof *d);
    s_faketime_env(d->env, clock_path);
    assert_int_equal(mrt_daemon_start(d, extra), 0);
}

/* Moves the daemon's wall clock by offset_s seconds from the true time. */
static void s_set_offset(const char *clock_path, long offset_s)
{
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s.new", clock_path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    assert_true(fprintf(f, "%+ld\n", offset_s) > 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, clock_path), 0); /* read whole or not at all */
}

static void s_remove_clock(const char *clock_path)
{
    char dir[400];
    snprintf(dir, sizeof dir, "%s", clock_path);
    char *slash = strrchr(dir, '/');
    assert_non_null(slash);
    (void)remove(clock_path);
    *slash = '\0';
    assert_int_equal(rmdir(dir), 0);
}

typedef struct {
    int deliveries;
    int redelivered;
    bool refuse_first;
    bool first_redelivered;
} took_t;

static int on_take(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    took_t *t = arg;
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    t->deliveries++;
    t->redelivered += ev->delivery->redelivered;
    if (t->deliveries == 1)
        t->first_redelivered = ev->delivery->redelivered;
    return t->refuse_first && t->deliveries == 1 ? 1 : 0;
}

static bool s_two(void *arg)
{
    return ((took_t *)arg)->deliveries >= 2;
}

static mr_client_t *connected(mrt_daemon_t *d, const char *facility)
{
    mr_client_t *c = mrt_client(d, facility, NULL);
    assert_non_null(c);
    assert_int_equal(mr_client_wait_connected(c, 10000), 0);
    return c;
}

/*
 * The clock goes back an hour while a delivery is out unanswered: it is
 * sent again after the redelivery time-out, not an hour later.
 */
static void test_clock_back_does_not_stall_redelivery(void **state)
{
    (void)state;
    mrt_daemon_t d;
    char clock_path[400];
    s_start(&d, clock_path, sizeof clock_path, "limits = { redelivery_timeout_ms = 2000; };\n");
    mr_client_t *aihua = connected(&d, "t-aihua"), *lab = connected(&d, "yx-lab");
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-CLOCK-BACK\"}", NULL),
                     0);
    took_t took = {.refuse_first = true};
    long long until = mrt_now_ms() + 10000;
    while (took.deliveries < 1 && mrt_now_ms() < until)
        mr_client_poll(lab, 50, on_take, &took);
    assert_int_equal(took.deliveries, 1); /* refused: no DeliveryAck */
    s_set_offset(clock_path, -3600);
    assert_true(mrt_poll_until(lab, 10000, s_two, &took, on_take, &took));
    assert_int_equal(took.redelivered, 1);
    until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "delivered") < 1 && mrt_now_ms() < until)
        mr_client_poll(lab, 50, on_take, &took);
    assert_int_equal(mrt_counter(&d, "delivered"), 1);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
    s_remove_clock(clock_path);
}

/*
 * The clock goes forward an hour: no session is ended for an hour of
 * silence it did not have, and messages flow on.
 */
static void test_clock_forward_ends_no_session(void **state)
{
    (void)state;
    mrt_daemon_t d;
    char clock_path[400];
    s_start(&d, clock_path, sizeof clock_path,
            "limits = { heartbeat_interval_ms = 300; heartbeat_timeout_ms = 2000; };\n");
    mr_client_t *aihua = connected(&d, "t-aihua"), *lab = connected(&d, "yx-lab");
    s_set_offset(clock_path, 3600);
    took_t took = {0};
    /* Three seconds: ten of the broker's heartbeat rounds, and longer than
     * its time-out, over which the clients' own heartbeats keep arriving. */
    long long until = mrt_now_ms() + 3000;
    while (mrt_now_ms() < until) {
        mr_client_poll(lab, 50, on_take, &took);
        mr_client_poll(aihua, 50, NULL, NULL);
    }
    assert_int_equal(mrt_log_count(&d, "why=heartbeat_timeout"), 0);
    assert_int_equal(mrt_counter(&d, "connects"), 2);
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-CLOCK-FWD\"}", NULL),
                     0);
    until = mrt_now_ms() + 10000;
    while (took.deliveries < 1 && mrt_now_ms() < until)
        mr_client_poll(lab, 50, on_take, &took);
    assert_int_equal(took.deliveries, 1);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
    s_remove_clock(clock_path);
}

/*
 * A facility's own clock goes back an hour (the clinic's PC is corrected):
 * its library keeps sending heartbeats, so the broker ends no session, and
 * deliveries reach it.  The receiver is crash_peer under libfaketime.
 */
static void test_clock_back_at_a_client_keeps_its_session(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(
        mrt_daemon_start(&d, "limits = { heartbeat_interval_ms = 300; heartbeat_timeout_ms = 2000; };\n"),
        0);
    char clock_path[400], state_dir[400], out[400];
    s_new_clock(clock_path, sizeof clock_path);
    snprintf(state_dir, sizeof state_dir, "%s/state-yx-lab", d.dir);
    snprintf(out, sizeof out, "%s/received", d.dir);
    char env[MRT_ENV_MAX][300] = {{0}};
    s_faketime_env(env, clock_path);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < MRT_ENV_MAX; i++)
            if (env[i][0])
                putenv(env[i]);
        execl(CRASH_PEER_PATH, "crash_peer", "recv", d.facility_ep, "yx-lab", state_dir, out, "1",
              (char *)NULL);
        _exit(127);
    }
    long long until = mrt_now_ms() + 10000;
    while (mrt_log_count(&d, "facility=yx-lab client=") < 1 && mrt_now_ms() < until)
        usleep(50000);
    assert_int_equal(mrt_log_count(&d, "facility=yx-lab client="), 1);
    s_set_offset(clock_path, -3600);
    usleep(4000 * 1000); /* twice the broker's heartbeat time-out */
    assert_int_equal(mrt_log_count(&d, "why=heartbeat_timeout"), 0);
    mr_client_t *aihua = connected(&d, "t-aihua");
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-CLIENT-CLOCK\"}", NULL),
                     0);
    int status = 0;
    until = mrt_now_ms() + 15000;
    while (waitpid(pid, &status, WNOHANG) != pid && mrt_now_ms() < until)
        usleep(50000);
    if (mrt_now_ms() >= until) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("the receiver did not get its delivery");
    }
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
    s_remove_clock(clock_path);
}

/*
 * A message stored more than 7 days before it reaches its receiver (a
 * ttl above that) may have been handled and its key forgotten by the
 * receiver's seen-set since: it is handed over flagged redelivered, one
 * stored today is not.  The broker's clock stands 8 days back while it
 * stores the first; the receiver has a state directory.
 */
static void test_clock_message_older_than_the_seen_set_is_flagged(void **state)
{
    (void)state;
    mrt_daemon_t d;
    char clock_path[400];
    s_start(&d, clock_path, sizeof clock_path, "ttl = { lab_order = 864000; };\n");
    mr_client_t *aihua = connected(&d, "t-aihua");
    s_set_offset(clock_path, -8 * 86400);
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-STORED-8D-AGO\"}", NULL),
                     0);
    s_set_offset(clock_path, 0);
    assert_int_equal(mrt_send(aihua, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-STORED-TODAY\"}", NULL),
                     0);
    mr_client_t *lab = mrt_client(&d, "yx-lab", "yx-lab");
    assert_non_null(lab);
    took_t took = {0};
    assert_true(mrt_poll_until(lab, 10000, s_two, &took, on_take, &took));
    assert_int_equal(took.deliveries, 2);
    assert_true(took.first_redelivered); /* in stored order: the old one first */
    assert_int_equal(took.redelivered, 1);
    long long until = mrt_now_ms() + 10000;
    while (mrt_counter(&d, "delivered") < 2 && mrt_now_ms() < until)
        mr_client_poll(lab, 50, on_take, &took);
    assert_int_equal(mrt_counter(&d, "delivered"), 2);
    mr_client_destroy(&aihua);
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
    s_remove_clock(clock_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clock_back_does_not_stall_redelivery),
        cmocka_unit_test(test_clock_forward_ends_no_session),
        cmocka_unit_test(test_clock_back_at_a_client_keeps_its_session),
        cmocka_unit_test(test_clock_message_older_than_the_seen_set_is_flagged),
    };
    return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
