/*
 * test_service.c - medrouted as a system service, over the real binary:
 * READY=1 and WATCHDOG=1 on a NOTIFY_SOCKET of the test's own, and no
 * READY=1 after STOPPING=1 (a reload during the drain is ignored); SIGHUP
 * reloads the registry without dropping connections or messages (a facility
 * added can connect, a removed one is disconnected and its messages kept,
 * an invalid config is refused, in one log line, and the old one stays); --check-config
 * reports every problem with its line, and refuses what the start refuses
 * (plaintext beyond loopback, no broker key: server.config_refused, exit 78); an online backup restores on a new
 * store with nothing lost; a second SIGTERM exits at once, losing nothing
 * acknowledged.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "mr_codec.h"

/* A ZMTP peer that says nothing more after its handshake, as one whose host
 * vanished (a network cut; a closed socket would be seen at once): connects
 * to the tcp:// endpoint ep as a DEALER (NULL mechanism, plaintext).  Its
 * fd, or -1. */
static int s_silent_zmtp_peer(const char *ep)
{
    int port = 0;
    if (sscanf(ep, "tcp://127.0.0.1:%d", &port) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        goto fail;
    /* Greeting (ZMTP 3.1, NULL, as client), then READY{Socket-Type=DEALER}. */
    uint8_t hello[64 + 30] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1, 'N', 'U', 'L', 'L'};
    static const uint8_t ready[] = {0x04, 28,  5,   'R', 'E', 'A', 'D', 'Y', 11,  'S',
                                    'o',  'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e',
                                    0,    0,   0,   6,   'D', 'E', 'A', 'L', 'E', 'R'};
    memcpy(hello + 64, ready, sizeof ready);
    if (write(fd, hello, sizeof hello) != (ssize_t)sizeof hello)
        goto fail;
    return fd;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

/* An operator connection that stops answering (a `medroute watch` whose
 * host is cut off keeps TCP open) is closed by the broker's ZMTP heartbeats,
 * so a watcher's place among the 16 is freed: it is PINGed, and closed when
 * it does not answer (the wait's limit is a bound for a failure only, far
 * below the watch's 120-s staleness). */
static void test_service_silent_operator_connection_is_closed(void **state)
{
    (void)state;
    mrt_daemon_t d = {0}; /* loopback TCP */
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    int fd = s_silent_zmtp_peer(d.operator_ep);
    assert_true(fd >= 0);
    bool pinged = false, closed = false;
    uint8_t buf[4096];
    size_t have = 0;
    long long until = mrt_now_ms() + 60000;
    while (!closed && mrt_now_ms() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n <= 0) {
            closed = n == 0 || errno == ECONNRESET;
            break;
        }
        have += (size_t)n;
        /* A PING command: flags 0x04, its size, name "PING" (TTL, context). */
        for (size_t i = 0; !pinged && i + 6 <= have; i++)
            pinged = buf[i] == 0x04 && buf[i + 2] == 4 && memcmp(buf + i + 3, "PING", 4) == 0;
        if (have == sizeof buf)
            have = 0; /* PINGs only, from here on */
    }
    close(fd);
    assert_true(pinged);
    assert_true(closed);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

static void test_service_notify_ready_and_watchdog(void **state)
{
    (void)state;
    char path[108];
    snprintf(path, sizeof path, "/tmp/mrnotify-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    mrt_daemon_t d = {0};
    snprintf(d.env[0], sizeof d.env[0], "NOTIFY_SOCKET=%s", path);
    snprintf(d.env[1], sizeof d.env[1], "WATCHDOG_USEC=400000"); /* ping every 200 ms */
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    bool ready = false;
    int watchdogs = 0;
    long long until = mrt_now_ms() + 5000;
    while ((!ready || watchdogs < 3) && mrt_now_ms() < until) {
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        ready = ready || strstr(buf, "READY=1") != NULL;
        if (strstr(buf, "WATCHDOG=1") != NULL)
            watchdogs++;
    }
    printf("notify: ready=%d watchdog pings=%d\n", ready, watchdogs);
    assert_true(ready);
    assert_true(watchdogs >= 3);
    /* SIGTERM says STOPPING=1 and exits 0. */
    kill(d.pid, SIGTERM);
    bool stopping = false;
    until = mrt_now_ms() + 5000;
    while (!stopping && mrt_now_ms() < until) {
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            stopping = strstr(buf, "STOPPING=1") != NULL;
        }
    }
    assert_true(stopping);
    assert_int_equal(mrt_daemon_stop(&d), 0); /* it exited 0 */
    close(fd);
    unlink(path);
    mrt_daemon_cleanup(&d);
}

/* A datagram socket at a path of its own, for the daemon's NOTIFY_SOCKET. */
static int s_notify_socket(char *path, size_t len)
{
    snprintf(path, len, "/tmp/mrnotify-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = 1};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    return fd;
}

/* Waits (10 s at most) until the daemon's log holds a line with needle. */
static bool s_logged(const mrt_daemon_t *d, const char *needle)
{
    for (long long until = mrt_now_ms() + 10000; mrt_now_ms() < until; usleep(20 * 1000))
        if (mrt_log_count(d, needle) > 0)
            return true;
    return false;
}

/* Lines saying how a reload ended: ignored, done or refused. */
static int s_reload_outcomes(const mrt_daemon_t *d)
{
    return mrt_log_count(d, "event=server.reload_ignored") +
           mrt_log_count(d, "event=server.reloaded") +
           mrt_log_count(d, "event=server.reload_refused");
}

/*
 * A reload asked for during the drain (SIGHUP after SIGTERM: `systemctl
 * reload` racing `systemctl stop`, or an operator's reload) is ignored and
 * logged once: systemd was told STOPPING=1 and must not hear READY=1 again.
 * The drain is held open, without timing, by a backup whose target the test
 * holds a lease on (fcntl F_SETLEASE): the backup thread's open() of it
 * waits until the test lets go, and the drain waits for the backup (for its
 * 10 s limit at most).
 */
static void test_service_reload_while_stopping_is_ignored(void **state)
{
    (void)state;
    char path[108];
    int fd = s_notify_socket(path, sizeof path);
    mrt_daemon_t d = {0};
    snprintf(d.env[0], sizeof d.env[0], "NOTIFY_SOCKET=%s", path);
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    bool ready = false;
    for (long long until = mrt_now_ms() + 5000; !ready && mrt_now_ms() < until;) {
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        ready = strstr(buf, "READY=1") != NULL;
    }
    assert_true(ready);

    /* The backup's target: a file of the test's own, leased, not a store. */
    char held[400];
    snprintf(held, sizeof held, "%s/held.db", d.dir);
    FILE *f = fopen(held, "w");
    assert_non_null(f);
    assert_true(fputs("not a database\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
    int lease = open(held, O_RDONLY | O_CLOEXEC);
    assert_true(lease >= 0);
    sigset_t io, old;
    sigemptyset(&io);
    sigaddset(&io, SIGIO); /* the lease's break is told by SIGIO: waited for below */
    assert_int_equal(sigprocmask(SIG_BLOCK, &io, &old), 0);
    assert_int_equal(fcntl(lease, F_SETLEASE, F_WRLCK), 0);
    pid_t asker = fork();
    assert_true(asker >= 0);
    if (asker == 0) {
        char req[500];
        snprintf(req, sizeof req, "{\"backup\":{\"path\":\"%s\"}}", held);
        free(mrt_operator(&d, req)); /* its answer comes after the drain, if at all */
        _exit(0);
    }
    struct timespec ten = {.tv_sec = 10};
    assert_int_equal(sigtimedwait(&io, NULL, &ten), SIGIO); /* the backup waits in open() */

    kill(d.pid, SIGTERM);
    assert_true(s_logged(&d, "event=server.draining"));
    kill(d.pid, SIGHUP);
    /* Its outcome, whichever it is. */
    long long until = mrt_now_ms() + 10000;
    while (s_reload_outcomes(&d) == 0 && mrt_now_ms() < until)
        usleep(20 * 1000);
    assert_int_equal(mrt_log_count(&d, "event=server.reloaded"), 0);
    assert_int_equal(mrt_log_count(&d, "event=server.reload_ignored"), 1);
    /* An operator's reload is answered SHUTTING_DOWN, and not logged again. */
    char *r = mrt_operator(&d, "{\"reload\":{}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "SHUTTING_DOWN"));
    free(r);
    assert_int_equal(mrt_log_count(&d, "event=server.reload_ignored"), 1);
    assert_int_equal(mrt_log_count(&d, "event=server.reload_requested"), 0);

    /* Let the backup go: the drain ends, and the daemon exits 0. */
    assert_int_equal(fcntl(lease, F_SETLEASE, F_UNLCK), 0);
    close(lease);
    struct timespec none = {0};
    while (sigtimedwait(&io, NULL, &none) == SIGIO)
        ; /* none should be left, and SIGIO's default action is to end the test */
    assert_int_equal(sigprocmask(SIG_SETMASK, &old, NULL), 0);
    int status = -1;
    for (long long until = mrt_now_ms() + 10000;
         waitpid(d.pid, &status, WNOHANG) == 0 && mrt_now_ms() < until;)
        usleep(20 * 1000);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    d.pid = 0;
    kill(asker, SIGKILL);
    waitpid(asker, NULL, 0);

    /* What systemd heard after READY=1: STOPPING=1, and nothing of a reload. */
    bool stopping = false, again = false;
    char buf[512];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
        buf[n] = '\0';
        stopping = stopping || strstr(buf, "STOPPING=1") != NULL;
        again = again || strstr(buf, "READY=1") != NULL || strstr(buf, "RELOADING=1") != NULL;
    }
    assert_true(stopping);
    assert_false(again);
    close(fd);
    unlink(path);
    mrt_daemon_cleanup(&d);
}

typedef struct {
    int n;
} count_t;

static int on_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_DELIVERY)
        ((count_t *)arg)->n++;
    return 0;
}

static bool got(void *arg)
{
    return ((count_t *)arg)->n >= 1;
}

/* Rewrites the daemon's config with another facilities list (and extra). */
static void s_rewrite(mrt_daemon_t *d, const char *facilities, const char *extra)
{
    assert_int_equal(mrt_daemon_rewrite(d, facilities, extra, true), 0);
}

/*
 * A reload that renames the broker is refused: connected facilities were
 * told its id in their Welcome and address their capacity notices and visit
 * tallies to it.  The running configuration stays.
 */
static void test_service_reload_refuses_a_new_broker_id(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    const char *facilities = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; } );";
    assert_int_equal(mrt_daemon_start_with(&d, facilities, NULL, true), 0);
    assert_int_equal(mrt_daemon_rewrite(&d, facilities, NULL, true), 0);
    FILE *f = fopen(d.conf_path, "r");
    assert_non_null(f);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *old = "broker_id = \"test\";";
    char *at = strstr(text, old);
    assert_non_null(at);
    f = fopen(d.conf_path, "w");
    assert_non_null(f);
    fprintf(f, "%.*sbroker_id = \"county-2\";%s", (int)(at - text), text, at + strlen(old));
    assert_int_equal(fclose(f), 0);
    assert_int_equal(mrt_daemon_reload(&d), 1);
    assert_int_equal(mrt_log_count(&d, "broker_id changed: that needs a restart"), 1);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

static void test_service_sighup_reload(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    const char *before = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; },"
                         " { id = \"t-aihua\"; role = \"township\"; },"
                         " { id = \"t-lishu\"; role = \"township\"; } );";
    assert_int_equal(mrt_daemon_start_with(&d, before, NULL, true), 0);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    mr_client_t *aihua = mrt_client(&d, "t-aihua", NULL);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mr_client_wait_connected(aihua, 5000), 0);
    /* A message waits for t-lishu, which the reload will remove. */
    assert_int_equal(mrt_send(lead, "t-lishu", "referral", "routine",
                              "{\"referral_id\":\"R-KEEP\",\"service\":\"SERVICE_FOLLOW_UP\"}", NULL),
                     0);
    /* A new township can't connect yet. */
    mr_client_t *new_one = mrt_client(&d, "t-manwan", NULL);
    assert_int_equal(mr_client_wait_connected(new_one, 10000), -EACCES);
    mr_client_destroy(&new_one);

    /* An invalid config is refused; the old one stays. */
    s_rewrite(&d, before, "limits = { max_inflight = 0; };");
    kill(d.pid, SIGHUP);
    long long until = mrt_now_ms() + 10000;
    while (mrt_log_count(&d, "event=server.reload_refused") < 1 && mrt_now_ms() < until)
        usleep(50000);
    assert_int_equal(mrt_log_count(&d, "event=server.reload_refused"), 1);
    assert_int_equal(mrt_send(aihua, "yx-lead", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-STILL\"}", NULL),
                     0);

    /* Add t-manwan, remove t-lishu. */
    s_rewrite(&d, "facilities = ( { id = \"yx-lead\"; role = \"lead\"; },"
                  " { id = \"t-aihua\"; role = \"township\"; },"
                  " { id = \"t-manwan\"; role = \"township\"; } );",
              NULL);
    kill(d.pid, SIGHUP);
    until = mrt_now_ms() + 10000;
    while (mrt_log_count(&d, "event=server.reloaded") < 1 && mrt_now_ms() < until)
        usleep(50000);
    assert_int_equal(mrt_log_count(&d, "event=server.reloaded"), 1);
    new_one = mrt_client(&d, "t-manwan", NULL);
    assert_int_equal(mr_client_wait_connected(new_one, 5000), 0);
    /* Existing connections were not dropped: they route on without a new Hello. */
    assert_int_equal(mrt_send(aihua, "t-manwan", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-NEW\"}", NULL),
                     0);
    count_t c = {0};
    assert_true(mrt_poll_until(new_one, 5000, got, &c, on_event, &c));
    /* t-lishu is gone as a destination, its message is kept. */
    assert_int_equal(mrt_send(lead, "t-lishu", "referral", "routine",
                              "{\"referral_id\":\"R-LATE\",\"service\":\"SERVICE_FOLLOW_UP\"}", NULL),
                     MR_E_UNKNOWN_DESTINATION);
    char *r = mrt_operator(&d, "{\"queue_list\":{\"destination\":\"t-lishu\"}}");
    assert_non_null(r);
    assert_non_null(strstr(r, "\"destination\":\"t-lishu\""));
    free(r);
    /* The status still shows it, as removed, while its message waits. */
    r = mrt_operator(&d, "{\"status\":{}}");
    assert_non_null(r);
    json_t *st = json_loads(r, 0, NULL);
    free(r);
    assert_non_null(st);
    json_t *rows = json_object_get(json_object_get(st, "status"), "facilities");
    bool shown = false;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        if (strcmp(json_string_value(json_object_get(row, "facility_id")), "t-lishu") != 0)
            continue;
        shown = true;
        assert_string_equal(json_string_value(json_object_get(row, "role")), "removed");
        assert_int_equal(json_integer_value(json_object_get(row, "pending")), 1);
    }
    assert_true(shown);
    json_decref(st);
    mr_client_destroy(&new_one);
    mr_client_destroy(&lead);
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* Lines of the daemon's log that do not begin with a time (2026-...T): the
 * rest of an event that spanned lines, or a line forged by a value.  The
 * daemon's own words before its log is set up ("medrouted: ...", e.g. a
 * mallopt that AddressSanitizer refuses) are not events. */
static int s_lines_without_time(const mrt_daemon_t *d)
{
    FILE *f = fopen(d->log_path, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    bool at_start = true;
    while (fgets(line, sizeof line, f)) {
        int y, mo, da, h;
        if (at_start && sscanf(line, "%4d-%2d-%2dT%2d:", &y, &mo, &da, &h) != 4 &&
            strncmp(line, "medrouted: ", 11) != 0)
            n++;
        at_start = strchr(line, '\n') != NULL;
    }
    fclose(f);
    return n;
}

/*
 * A config with several problems is refused in one log line: the parser
 * says each on a line of its own, and a value it quotes may hold newlines
 * and quotes (libconfig's "\n" and "\""), which made server.reload_refused
 * span lines, the next one a forged event.
 */
static void test_service_reload_refused_is_one_line(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    assert_int_equal(mrt_daemon_rewrite(&d, mrt_facilities_conf,
                                        "limits = { max_inflight = 0; };\n"
                                        "indicators = ( { name = \"x\\\"\\n2026-01-01T00:00:00.000Z"
                                        " level=error event=security.forged\"; target = 1.0;"
                                        " warn = 0.5; } );\n",
                                        true),
                     0);
    assert_int_equal(mrt_daemon_reload(&d), 1);
    assert_int_equal(mrt_log_count(&d, "event=server.reload_refused"), 1);
    /* Both problems, on the refusal's line; the value's quote cleaned. */
    assert_int_equal(mrt_log_count(&d, "event=server.reload_refused reason=\""), 1);
    assert_int_equal(mrt_log_count(&d, "limits.max_inflight: 0 is out of range"), 1);
    assert_int_equal(mrt_log_count(&d, "0 is out of range 1..10000?"), 1);
    assert_int_equal(mrt_log_count(&d, "name: ?x??2026-01-01T00:00:00.000Z level=error "
                                       "event=security.forged? is not a known indicator\""),
                     1);
    assert_int_equal(s_lines_without_time(&d), 0);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* The CONNECTED event's pending (Welcome.pending), -1 until it comes. */
static int on_connected(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    if (ev->type == MR_EVENT_CONNECTED)
        *(long long *)arg = (long long)ev->pending;
    return 0;
}

static bool s_connected(void *arg)
{
    return *(long long *)arg >= 0;
}

/*
 * operations.md: the messages of a removed facility are dropped with
 * `medroute queue drop`.  Such a drop is one more dead message (the status'
 * `dead` counts every message moved to the dead letters, as the tally
 * messages_dead_total does), and it is no longer pending for the facility
 * when it is added back: its Welcome says 0.  Nor is one that expired
 * while the facility was removed.
 */
static void test_service_drop_for_a_removed_facility(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    const char *all = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; },"
                      " { id = \"t-lishu\"; role = \"township\"; } );";
    const char *without = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; } );";
    assert_int_equal(mrt_daemon_start_with(&d, all, NULL, true), 0);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mrt_send(lead, "t-lishu", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-GONE\"}", NULL),
                     0);
    char referral[256];
    snprintf(referral, sizeof referral,
             "{\"referral_id\":\"R-GONE\",\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"E11\"}],"
             "\"service\":\"SERVICE_FOLLOW_UP\",\"expires_at_ms\":%lld}",
             mrt_now_ms() + 1500);
    assert_int_equal(mrt_send(lead, "t-lishu", "referral", "routine", referral, NULL), 0);
    s_rewrite(&d, without, NULL);
    assert_int_equal(mrt_daemon_reload(&d), 0);
    char *r = mrt_operator(&d, "{\"queue_list\":{\"destination\":\"t-lishu\"}}");
    assert_non_null(r);
    json_t *ql = json_loads(r, 0, NULL);
    free(r);
    json_t *m = json_array_get(json_object_get(json_object_get(ql, "queue_list"), "messages"), 0);
    assert_non_null(m);
    json_t *jseq = json_object_get(m, "seq");
    long long seq = json_is_string(jseq) ? atoll(json_string_value(jseq))
                                         : (long long)json_integer_value(jseq);
    char req[160];
    snprintf(req, sizeof req,
             "{\"queue_drop\":{\"seq\":\"%lld\",\"reason\":\"facility closed\"}}", seq);
    json_decref(ql);
    long long dead = mrt_counter(&d, "dead");
    r = mrt_operator(&d, req);
    assert_non_null(r);
    assert_non_null(strstr(r, "\"dropped "));
    free(r);
    assert_int_equal(mrt_counter(&d, "dead"), (dead < 0 ? 0 : dead) + 1);
    long long until = mrt_now_ms() + 10000;
    while (mrt_log_count(&d, "event=message.expired") == 0 && mrt_now_ms() < until)
        usleep(100 * 1000);
    assert_int_equal(mrt_log_count(&d, "event=message.expired"), 1);

    /* Added back: nothing waits for it. */
    s_rewrite(&d, all, NULL);
    assert_int_equal(mrt_daemon_reload(&d), 0);
    mr_client_t *lishu = mrt_client(&d, "t-lishu", NULL);
    long long pending = -1;
    assert_true(mrt_poll_until(lishu, 5000, s_connected, &pending, on_connected, &pending));
    assert_int_equal(pending, 0);
    mr_client_destroy(&lishu);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

/* The Welcome's pending (-1 until it comes) and the deliveries since. */
typedef struct {
    long long pending;
    int deliveries;
} s_welcome_t;

static int on_welcome_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    s_welcome_t *w = arg;
    if (ev->type == MR_EVENT_CONNECTED)
        w->pending = (long long)ev->pending;
    else if (ev->type == MR_EVENT_DELIVERY)
        w->deliveries++;
    return 0;
}

static bool s_welcomed_and_got_one(void *arg)
{
    const s_welcome_t *w = arg;
    return w->pending >= 0 && w->deliveries >= 1;
}

/*
 * A facility that the configuration of a start left out, whose messages
 * the store still holds (operations.md: `router.orphan_queue`), added back
 * by a reload: its Welcome counts them, as it would after a start, and it
 * receives them.
 */
static void test_service_reload_adds_a_facility_with_a_stored_queue(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    const char *all = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; },"
                      " { id = \"t-lishu\"; role = \"township\"; } );";
    const char *without = "facilities = ( { id = \"yx-lead\"; role = \"lead\"; } );";
    assert_int_equal(mrt_daemon_start_with(&d, all, NULL, true), 0);
    mr_client_t *lead = mrt_client(&d, "yx-lead", NULL);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    assert_int_equal(mrt_send(lead, "t-lishu", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-WAITS\"}", NULL),
                     0);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    s_rewrite(&d, without, NULL);
    assert_int_equal(mrt_daemon_restart(&d), 0);
    const char *orphan = "event=router.orphan_queue dest=t-lishu pending=1";
    long long until = mrt_now_ms() + 10000;
    while (mrt_log_count(&d, orphan) == 0 && mrt_now_ms() < until)
        usleep(50 * 1000);
    assert_int_equal(mrt_log_count(&d, orphan), 1);

    s_rewrite(&d, all, NULL);
    assert_int_equal(mrt_daemon_reload(&d), 0);
    mr_client_t *lishu = mrt_client(&d, "t-lishu", NULL);
    s_welcome_t w = {.pending = -1};
    assert_true(mrt_poll_until(lishu, 5000, s_welcomed_and_got_one, &w, on_welcome_event, &w));
    assert_int_equal(w.pending, 1);
    mr_client_destroy(&lishu);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

static void test_service_check_config_reports_lines(void **state)
{
    (void)state;
    char path[] = "/tmp/mrcheck-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *bad = "facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                      "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                      "data_dir = \"/tmp\";\ninsecure = true;\n"
                      "colour = \"blue\";\n"
                      "limits = { max_inflight = 0; };\n"
                      "facilities = ( { id = \"a\"; role = \"township\"; } );\n";
    assert_int_equal(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s --check-config %s 2>&1", MEDROUTED_PATH_FOR_TESTS, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[2048] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(path);
    printf("check-config said:\n%s", out);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    assert_non_null(strstr(out, ":5: colour: unknown key"));
    assert_non_null(strstr(out, ":6: limits.max_inflight: 0 is out of range"));
}

/* Runs medrouted ARGS FILE (FILE holding text) and returns its exit
 * status; its output (both streams) in out. */
static int s_run_on_config(const char *args, const char *text, char *out, size_t len)
{
    char path[] = "/tmp/mrcheck-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s %s %s 2>&1", MEDROUTED_PATH_FOR_TESTS, args, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(path);
    printf("medrouted %s said:\n%s", args, out);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* --check-config (the unit's ExecStartPre) refuses what the start refuses:
 * plaintext beyond loopback, no broker key; the start says
 * server.config_refused and exits 78 (EX_CONFIG), which the unit does not
 * restart. */
static void test_service_check_config_refuses_what_the_start_refuses(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* plaintext on every interface */
        "facility_endpoint = \"tcp://0.0.0.0:1\";\noperator_endpoint = \"tcp://127.0.0.1:2\";\n"
        "data_dir = \"/nonexistent/mrcheck\";\ninsecure = true;\n"
        "facilities = ( { id = \"a\"; role = \"township\"; } );\n",
        /* a plaintext HTTP listener beyond loopback */
        "facility_endpoint = \"tcp://127.0.0.1:1\";\noperator_endpoint = \"tcp://127.0.0.1:2\";\n"
        "http_listen = \"0.0.0.0:3\";\n"
        "data_dir = \"/nonexistent/mrcheck\";\ninsecure = true;\n"
        "facilities = ( { id = \"a\"; role = \"township\"; } );\n",
        /* CURVE without the broker's key */
        "facility_endpoint = \"tcp://127.0.0.1:1\";\noperator_endpoint = \"tcp://127.0.0.1:2\";\n"
        "data_dir = \"/nonexistent/mrcheck\";\n"
        "facilities = ( { id = \"a\"; role = \"township\"; } );\n",
    };
    static const char *const why[] = {"loopback or ipc endpoints", "loopback http_listen",
                                      "server_key_file: required"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char out[2048];
        assert_int_equal(s_run_on_config("--check-config", bad[i], out, sizeof out), 1);
        assert_non_null(strstr(out, why[i]));
        assert_int_equal(s_run_on_config("--config", bad[i], out, sizeof out), 78);
        assert_non_null(strstr(out, "event=server.config_refused"));
        assert_non_null(strstr(out, why[i]));
    }
}

/* Starts d, and the lead hospital's client, which queues n down-referrals
 * <prefix><i> for t-lishu (offline); returns the client. */
static mr_client_t *start_with_referrals(mrt_daemon_t *d, const char *prefix, int n)
{
    assert_int_equal(mrt_daemon_start(d, NULL), 0);
    mr_client_t *lead = mrt_client(d, "yx-lead", NULL);
    assert_int_equal(mr_client_wait_connected(lead, 5000), 0);
    for (int i = 0; i < n; i++) {
        char p[128];
        snprintf(p, sizeof p, "{\"referral_id\":\"%s%d\",\"service\":\"SERVICE_FOLLOW_UP\"}",
                 prefix, i);
        assert_int_equal(mrt_send(lead, "t-lishu", "referral", "routine", p, NULL), 0);
    }
    return lead;
}

/* Asks d for a backup to path; true if the broker says it is done. */
static bool backup_done(const mrt_daemon_t *d, const char *path)
{
    char req[512];
    snprintf(req, sizeof req, "{\"backup\":{\"path\":\"%s\"}}", path);
    char *r = mrt_operator(d, req);
    assert_non_null(r);
    bool done = strstr(r, "\"done\"") != NULL;
    free(r);
    return done;
}

static void test_service_backup_restores_on_a_new_store(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    mr_client_t *lead = start_with_referrals(&d, "R-B", 20);
    char backup[400];
    snprintf(backup, sizeof backup, "%s/backup.db", d.dir);
    /* Online: traffic goes on while the copy is taken. */
    assert_true(backup_done(&d, backup));
    assert_int_equal(mrt_send(lead, "t-aihua", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-AFTER\"}", NULL),
                     0);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    struct stat st;
    assert_int_equal(stat(backup, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A new machine: a fresh daemon whose store is the backup. */
    mrt_daemon_t e = {0};
    assert_int_equal(mrt_daemon_start(&e, NULL), 0);
    assert_int_equal(mrt_daemon_stop(&e), 0);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/var/medroute.db* && cp '%s' '%s'/var/medroute.db", e.dir,
             backup, e.dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(mrt_daemon_restart(&e), 0);
    mr_client_t *lishu = mrt_client(&e, "t-lishu", NULL);
    count_t c = {0};
    long long until = mrt_now_ms() + 10000;
    while (c.n < 20 && mrt_now_ms() < until)
        mr_client_poll(lishu, 100, on_event, &c);
    printf("restored: %d of 20 messages delivered from the backup\n", c.n);
    assert_int_equal(c.n, 20);
    mr_client_destroy(&lishu);
    assert_int_equal(mrt_daemon_stop(&e), 0);
    mrt_daemon_cleanup(&e);
    mrt_daemon_cleanup(&d);
}

/*
 * A backup aimed at the store itself (its path, a symlink to it, its WAL) is
 * refused and leaves the store whole; before, the target was truncated
 * first, and the next restart found no message at all.
 */
static void test_service_backup_refuses_the_store_itself(void **state)
{
    (void)state;
    mrt_daemon_t d = {0};
    mr_client_t *lead = start_with_referrals(&d, "R-S", 5);
    char store[400], link[400], wal[410];
    snprintf(store, sizeof store, "%s/var/medroute.db", d.dir);
    snprintf(wal, sizeof wal, "%s-wal", store);
    snprintf(link, sizeof link, "%s/link.db", d.dir);
    assert_int_equal(symlink(store, link), 0);
    const char *targets[] = {store, link, wal};
    for (size_t i = 0; i < 3; i++)
        assert_false(backup_done(&d, targets[i]));
    assert_int_equal(mrt_log_count(&d, "the target is the store itself"), 3);
    /* A path with a line break (the operator's text) is logged on one line:
     * it cannot forge a log line of its own. */
    char forged[500];
    snprintf(forged, sizeof forged, "%s/no-such-dir\\nforged level=error event=store.forged/x.db",
             d.dir);
    assert_false(backup_done(&d, forged));
    assert_int_equal(mrt_log_count(&d, "no-such-dir?forged level=error"), 1);
    /* A backup of another name still works, and the store takes more. */
    char backup[400];
    snprintf(backup, sizeof backup, "%s/ok.db", d.dir);
    assert_true(backup_done(&d, backup));
    /* It replaces an earlier backup of its name, but no other file: a typo
     * must not put a copy of the store in place of a configuration. */
    assert_true(backup_done(&d, backup));
    char other[400];
    snprintf(other, sizeof other, "%s/medroute.conf", d.dir);
    struct stat before, after;
    assert_int_equal(stat(other, &before), 0);
    assert_true(before.st_size > 0);
    assert_false(backup_done(&d, other));
    assert_int_equal(mrt_log_count(&d, "the target exists and is not an earlier backup"), 1);
    assert_int_equal(stat(other, &after), 0);
    assert_int_equal(after.st_size, before.st_size);
    assert_int_equal(after.st_ino, before.st_ino);
    /* Nor another SQLite database: a client's state file holds the messages
     * its broker has not yet accepted. */
    char state_dir[400], client_db[450], nowhere[128], err[200];
    snprintf(state_dir, sizeof state_dir, "%s/client-state", d.dir);
    snprintf(client_db, sizeof client_db, "%s/client-t-aihua.db", state_dir);
    snprintf(nowhere, sizeof nowhere, "ipc:///tmp/mrt-nobody-%ld", (long)getpid());
    mr_client_opts_t away = {.endpoint = nowhere, .facility = "t-aihua", .state_dir = state_dir};
    mr_client_t *aihua = mr_client_new(&away);
    assert_non_null(aihua);
    char *json = mrt_lab_order_json("P-OUTBOX", 4);
    assert_non_null(json);
    assert_int_equal(mr_client_submit_json(aihua, json, NULL, err, sizeof err), 0);
    free(json);
    mr_client_destroy(&aihua);
    assert_int_equal(stat(client_db, &before), 0);
    assert_false(backup_done(&d, client_db));
    assert_int_equal(mrt_log_count(&d, "the target exists and is not an earlier backup"), 2);
    assert_int_equal(stat(client_db, &after), 0);
    assert_int_equal(after.st_size, before.st_size);
    assert_int_equal(after.st_ino, before.st_ino);
    aihua = mr_client_new(&away);
    assert_non_null(aihua);
    assert_int_equal(mr_client_unacked(aihua), 1); /* its outbox, read back from the file */
    mr_client_destroy(&aihua);
    assert_int_equal(mrt_send(lead, "t-lishu", "lab_order", "routine",
                              "{\"placer_order_number\":\"P-LAST\"}", NULL),
                     0);
    mr_client_destroy(&lead);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    assert_int_equal(mrt_daemon_restart(&d), 0);
    mr_client_t *lishu = mrt_client(&d, "t-lishu", NULL);
    count_t c = {0};
    long long until = mrt_now_ms() + 10000;
    while (c.n < 6 && mrt_now_ms() < until)
        mr_client_poll(lishu, 100, on_event, &c);
    assert_int_equal(c.n, 6);
    mr_client_destroy(&lishu);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

typedef struct {
    int acks;
    char ids[400][72];
} acks_t;

static int on_ack(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    acks_t *a = arg;
    if (ev->type == MR_EVENT_ACK && a->acks < 400)
        snprintf(a->ids[a->acks++], sizeof a->ids[0], "%s", ev->message_id);
    return 0;
}

typedef struct {
    int n;
    char ids[400][72];
} recv_t;

static int on_recv(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    recv_t *r = arg;
    if (ev->type == MR_EVENT_DELIVERY && r->n < 400)
        snprintf(r->ids[r->n++], sizeof r->ids[0], "%s", ev->message_id);
    return 0;
}

/* A second SIGTERM exits at once, mid-traffic, and loses nothing acknowledged. */
static void test_service_second_sigterm_loses_nothing(void **state)
{
    (void)state;
    mrt_daemon_t d = {.use_ipc = true};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    mr_client_t *a = mrt_client(&d, "t-aihua", NULL);
    assert_int_equal(mr_client_wait_connected(a, 5000), 0);
    acks_t *acked = calloc(1, sizeof *acked);
    for (int i = 0; i < 300; i++) {
        char json[200], err[100];
        snprintf(json, sizeof json,
                 "{\"destination\":\"t-lishu\",\"kind\":\"lab_order\",\"lab_order\":"
                 "{\"placer_order_number\":\"T-%d\"}}", i);
        assert_int_equal(mr_client_submit_json(a, json, NULL, err, sizeof err), 0);
        if (i == 150) {
            /* Half is acknowledged; the rest is in flight when both signals come. */
            long long until = mrt_now_ms() + 5000;
            while (acked->acks < 100 && mrt_now_ms() < until)
                mr_client_poll(a, 10, on_ack, acked);
            kill(d.pid, SIGTERM);
            kill(d.pid, SIGTERM);
        }
        mr_client_poll(a, 0, on_ack, acked);
    }
    long long t0 = mrt_now_ms();
    int status = 0;
    while (waitpid(d.pid, &status, WNOHANG) == 0 && mrt_now_ms() - t0 < 5000)
        mr_client_poll(a, 10, on_ack, acked);
    long long took = mrt_now_ms() - t0;
    d.pid = 0;
    printf("second SIGTERM: exited after %lld ms, %d acknowledged\n", took, acked->acks);
    assert_true(took < 3000);
    mr_client_destroy(&a);
    /* Restart: every message acknowledged before the exit is delivered once. */
    assert_int_equal(mrt_daemon_restart(&d), 0);
    mr_client_t *l = mrt_client(&d, "t-lishu", NULL);
    recv_t *got = calloc(1, sizeof *got);
    long long until = mrt_now_ms() + 10000;
    while (mrt_now_ms() < until) {
        mr_client_poll(l, 100, on_recv, got);
        if (got->n >= acked->acks && mrt_now_ms() > until - 8000)
            break;
    }
    for (int i = 0; i < acked->acks; i++) {
        int seen = 0;
        for (int j = 0; j < got->n; j++)
            seen += strcmp(acked->ids[i], got->ids[j]) == 0;
        assert_int_equal(seen, 1);
    }
    mr_client_destroy(&l);
    free(got);
    free(acked);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_notify_ready_and_watchdog),
        cmocka_unit_test(test_service_reload_while_stopping_is_ignored),
        cmocka_unit_test(test_service_sighup_reload),
        cmocka_unit_test(test_service_reload_refuses_a_new_broker_id),
        cmocka_unit_test(test_service_reload_refused_is_one_line),
        cmocka_unit_test(test_service_drop_for_a_removed_facility),
        cmocka_unit_test(test_service_reload_adds_a_facility_with_a_stored_queue),
        cmocka_unit_test(test_service_check_config_reports_lines),
        cmocka_unit_test(test_service_check_config_refuses_what_the_start_refuses),
        cmocka_unit_test(test_service_backup_restores_on_a_new_store),
        cmocka_unit_test(test_service_backup_refuses_the_store_itself),
        cmocka_unit_test(test_service_second_sigterm_loses_nothing),
        cmocka_unit_test(test_service_silent_operator_connection_is_closed),
    };
    return cmocka_run_group_tests_name("service", tests, NULL, NULL);
}
