/*
 * test_store_stall.c - a store stuck on its disk: /healthz says "stalled"
 * (503), /metrics answers 503 within its deadline instead of hanging (and
 * 64 such scrapes no longer take /healthz down), `medroute status` says
 * why it cannot answer, the log says when the stall began and ended; once
 * the disk answers again everything recovers and nothing accepted is lost.
 *
 * The stall is real: the store lives on a small ext4 image mounted for the
 * test, and the test freezes that file system (FIFREEZE, as fsfreeze(8)
 * does for a snapshot), so the store thread's next write blocks in the
 * kernel as on a disk that does not answer.  Needs root, a loop device and
 * mkfs.ext4, as in CI; skipped otherwise.  A frozen file system left
 * behind would keep the daemon unkillable and the machine's mount table
 * stuck, so a guard process started with the mount (a session of its own,
 * deaf to the signals a cancelled job sends) thaws it after S_GUARD_S, and
 * when the test ends or dies thaws it and detaches the mount.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

enum { S_GUARD_S = 120, S_SCRAPES = 64 };

typedef struct {
    mrt_daemon_t d;
    char var[400];
    bool mounted;
    int frozen_fd; /* the mount's directory while frozen, else -1 */
    int guard_pipe; /* its write end: the guard ends at its EOF; else -1 */
    pid_t guard;
} fixture_t;

typedef struct {
    int acks, errors, deliveries;
} count_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    count_t *n = arg;
    if (ev->type == MR_EVENT_ACK)
        n->acks++;
    else if (ev->type == MR_EVENT_ERROR)
        n->errors++;
    else if (ev->type == MR_EVENT_DELIVERY)
        n->deliveries++;
    return 0;
}

typedef struct {
    count_t *n;
    int acks, deliveries;
} want_t;

static bool enough(void *arg)
{
    want_t *w = arg;
    return w->n->acks >= w->acks && w->n->deliveries >= w->deliveries;
}

/* Thaws the file system (EINVAL: it was not frozen); 0, or -1 if it may
 * still be frozen. */
static int s_thaw(fixture_t *f)
{
    int rc = 0;
    if (f->frozen_fd >= 0) {
        if (ioctl(f->frozen_fd, FITHAW, 0) != 0 && errno != EINVAL)
            rc = -1;
        close(f->frozen_fd);
        f->frozen_fd = -1;
    }
    return rc;
}

static int s_freeze(fixture_t *f)
{
    f->frozen_fd = open(f->var, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->frozen_fd < 0)
        return -1;
    return ioctl(f->frozen_fd, FIFREEZE, 0);
}

/* Thaws the file system mounted at path if it is still the one of device
 * dev (not the directory under it, once unmounted). */
static void s_guard_thaw(const char *path, dev_t dev)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fstat(fd, &st) == 0 && st.st_dev == dev)
        (void)ioctl(fd, FITHAW, 0);
    close(fd);
}

/*
 * The guard, from the mount on: its own session, deaf to SIGINT, SIGTERM
 * and SIGHUP, so that a job cancelled as a whole does not take it with the
 * test.  It holds nothing open on the mount (the teardown's umount must
 * not find it busy).  After S_GUARD_S it thaws the file system (a test
 * stuck while it is frozen); when the pipe closes (the test's teardown, or
 * its death) it thaws it and detaches the mount if still there.
 */
static void s_guard(int pipe_rd, const char *path, dev_t dev)
{
    (void)setsid();
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    struct pollfd p = {.fd = pipe_rd, .events = POLLIN};
    int timeout_ms = S_GUARD_S * 1000;
    char c;
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) {
            s_guard_thaw(path, dev);
            timeout_ms = -1; /* and wait for the end */
            continue;
        }
        if (n > 0 && read(pipe_rd, &c, 1) > 0)
            continue;
        break; /* EOF or an error: the test is over */
    }
    s_guard_thaw(path, dev);
    struct stat st;
    if (stat(path, &st) == 0 && st.st_dev == dev)
        (void)umount2(path, MNT_DETACH);
    _exit(0);
}

/* Starts the guard of the mount at f->var: 0 or -1. */
static int s_guard_start(fixture_t *f)
{
    struct stat st;
    int p[2];
    if (stat(f->var, &st) != 0 || pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t guard = fork();
    if (guard < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (guard == 0) {
        close(p[1]);
        s_guard(p[0], f->var, st.st_dev);
    }
    close(p[0]);
    f->guard_pipe = p[1];
    f->guard = guard;
    return 0;
}

/* Ends the guard (it thaws and detaches what is left); 0 if it exited so. */
static int s_guard_stop(fixture_t *f)
{
    if (f->guard_pipe >= 0) {
        close(f->guard_pipe);
        f->guard_pipe = -1;
    }
    int st = 0;
    if (f->guard > 0 && (waitpid(f->guard, &st, 0) != f->guard || !WIFEXITED(st)))
        return -1;
    f->guard = 0;
    return 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    f->frozen_fd = -1;
    f->guard_pipe = -1;
    *state = f;
    return 0;
}

/* Thawed first: a daemon blocked on a frozen file system cannot be killed,
 * nor waited for.  A mount that will not go is detached, so that the
 * cleanup below removes the directory under it, not the image's files. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    int rc = s_thaw(f);
    if (rc != 0)
        fprintf(stderr, "store_stall: %s may still be frozen: the daemon is left running\n",
                f->var);
    else if (f->d.pid > 0)
        mrt_daemon_kill(&f->d);
    if (f->mounted && rc == 0 && umount(f->var) != 0 && umount2(f->var, MNT_DETACH) != 0) {
        fprintf(stderr, "store_stall: %s is still mounted: left as it is\n", f->var);
        rc = -1;
    }
    if (s_guard_stop(f) != 0)
        rc = -1;
    if (f->d.dir[0] && rc == 0)
        mrt_daemon_cleanup(&f->d);
    free(f);
    return rc;
}

/* Polls /healthz until its body holds want (timeout_s at most); the body
 * (caller frees) or NULL, its status in *status. */
static char *s_healthz_until(const mrt_daemon_t *d, const char *want, int timeout_s,
                             int *status)
{
    long long deadline = mrt_now_ms() + timeout_s * 1000LL;
    do {
        char *body = mrt_http_fetch(d, "/healthz", 3, status);
        if (body != NULL && strstr(body, want) != NULL)
            return body;
        free(body);
        usleep(100 * 1000);
    } while (mrt_now_ms() < deadline);
    return NULL;
}

static bool s_log_until(const mrt_daemon_t *d, const char *needle, int timeout_s)
{
    long long deadline = mrt_now_ms() + timeout_s * 1000LL;
    while (mrt_log_count(d, needle) == 0) {
        if (mrt_now_ms() >= deadline)
            return false;
        usleep(100 * 1000);
    }
    return true;
}

/* A GET /metrics sent and not read yet: its socket, or -1. */
static int s_scrape_start(const mrt_daemon_t *d)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 30};
    static const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The status of a scrape's answer (30 s at most), 0 if none came. */
static int s_scrape_status(int fd)
{
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    int code = 0;
    if (n > 0) {
        buf[n] = '\0';
        if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1)
            code = 0;
    }
    return code;
}

static void test_store_stall_is_seen_and_survived(void **state)
{
    fixture_t *f = *state;
    if (geteuid() != 0 || system("command -v mkfs.ext4 >/dev/null 2>&1") != 0) {
        skip();
        return;
    }
    mrt_daemon_t *d = &f->d;
    /* A short threshold, so that the test need not wait 15 s. */
    assert_int_equal(mrt_daemon_start(d, "store = { stall_after_s = 2; };"), 0);
    assert_int_equal(mrt_daemon_stop(d), 0);
    snprintf(f->var, sizeof f->var, "%s/var", d->dir);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && mkdir -p '%s' && truncate -s 64M '%s/store.img' &&"
             " mkfs.ext4 -q -F '%s/store.img' >/dev/null 2>&1",
             f->var, f->var, d->dir, d->dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "mount -o loop '%s/store.img' '%s' 2>/dev/null", d->dir, f->var);
    if (system(cmd) != 0) {
        skip(); /* no loop device here */
        return;
    }
    f->mounted = true;
    assert_int_equal(s_guard_start(f), 0);
    assert_int_equal(chmod(f->var, 0700), 0);
    assert_int_equal(mrt_daemon_restart(d), 0);

    mr_client_t *a = mrt_client(d, "t-aihua", NULL);
    assert_non_null(a);
    assert_int_equal(mr_client_wait_connected(a, 5000), 0);
    count_t n = {0};
    assert_int_equal(mrt_submit_orders(a, "yx-lead", "BEFORE", 3), 0);
    assert_true(mrt_poll_until(a, 10000, enough, &(want_t){&n, 3, 0}, on_event, &n));
    int status = 0;
    char *body = s_healthz_until(d, "\"store\":\"ok\"", 10, &status);
    assert_non_null(body);
    assert_int_equal(status, 200);
    free(body);

    /* The disk stops answering; messages come in, and the store thread's
     * commit of them blocks. */
    assert_int_equal(s_freeze(f), 0);
    assert_int_equal(mrt_submit_orders(a, "yx-lead", "DURING", 5), 0);
    mr_client_poll(a, 200, on_event, &n);

    /* /metrics answers, 503, within its deadline (the read waits 30 s). */
    body = mrt_http_fetch(d, "/metrics", 30, &status);
    assert_int_equal(status, 503);
    assert_non_null(body);
    assert_non_null(strstr(body, "did not answer"));
    printf("store_stall: /metrics said: %s", body);
    free(body);

    /* /healthz says stalled, with the age. */
    body = s_healthz_until(d, "\"store\":\"stalled\"", 30, &status);
    assert_non_null(body);
    printf("store_stall: /healthz said: %s", body);
    assert_int_equal(status, 503);
    assert_non_null(strstr(body, "\"status\":\"unavailable\""));
    assert_non_null(strstr(body, "\"store_stalled_s\":"));
    free(body);
    assert_true(s_log_until(d, "event=store.stalled ", 10));

    /* Known stalled, /metrics says so at once rather than add two more
     * requests to the stuck store's queue and wait out its deadline. */
    body = mrt_http_fetch(d, "/metrics", 30, &status);
    assert_int_equal(status, 503);
    assert_non_null(body);
    assert_non_null(strstr(body, "the store is stalled"));
    free(body);

    /* `medroute status` says why rather than waiting for the store. */
    char *reply = mrt_operator(d, "{\"status\":{}}");
    assert_non_null(reply);
    assert_non_null(strstr(reply, "stalled"));
    free(reply);

    /* As many scrapes as the HTTP server takes connections: each is answered
     * by its deadline, so /healthz gets a connection again. */
    int fds[S_SCRAPES];
    for (int i = 0; i < S_SCRAPES; i++) {
        fds[i] = s_scrape_start(d);
        assert_true(fds[i] >= 0);
    }
    body = s_healthz_until(d, "\"store\":\"stalled\"", 30, &status);
    assert_non_null(body);
    assert_int_equal(status, 503);
    free(body);
    for (int i = 0; i < S_SCRAPES; i++)
        assert_int_equal(s_scrape_status(fds[i]), 503);

    /* Still nothing acknowledged: the messages wait in the stuck batch. */
    mr_client_poll(a, 100, on_event, &n);
    assert_int_equal(n.acks, 3);
    assert_int_equal(n.errors, 0);

    /* The disk answers again: all recovers, by itself. */
    assert_int_equal(s_thaw(f), 0);
    assert_true(mrt_poll_until(a, 30000, enough, &(want_t){&n, 8, 0}, on_event, &n));
    assert_int_equal(n.errors, 0);
    assert_int_equal(mr_client_unacked(a), 0);
    body = s_healthz_until(d, "\"store\":\"ok\"", 30, &status);
    assert_non_null(body);
    assert_int_equal(status, 200);
    free(body);
    body = mrt_http_fetch(d, "/metrics", 30, &status);
    assert_int_equal(status, 200);
    assert_non_null(body);
    assert_non_null(strstr(body, "medroute_queue_depth{destination=\"yx-lead\"} 8"));
    free(body);
    assert_true(s_log_until(d, "event=store.stall_ended ", 10));
    assert_int_equal(mrt_log_count(d, "event=store.stalled "), 1);
    assert_int_equal(mrt_log_count(d, "event=store.unavailable"), 0);

    /* Everything accepted reaches its destination, once. */
    mr_client_t *lead = mrt_client(d, "yx-lead", NULL);
    assert_non_null(lead);
    count_t got = {0};
    assert_true(mrt_poll_until(lead, 20000, enough, &(want_t){&got, 0, 8}, on_event, &got));
    mrt_poll_until(lead, 500, enough, &(want_t){&got, 0, 9}, on_event, &got);
    assert_int_equal(got.deliveries, 8);
    mr_client_destroy(&lead);
    mr_client_destroy(&a);
    assert_int_equal(mrt_daemon_stop(d), 0);
    assert_int_equal(umount(f->var), 0);
    f->mounted = false;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_stall_is_seen_and_survived, setup, teardown),
    };
    return cmocka_run_group_tests_name("store_stall", tests, NULL, NULL);
}
