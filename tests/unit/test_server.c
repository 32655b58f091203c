/*
 * Unit tests for daemon/server.c's send accounting: a frame for a
 * connection that has closed (ZeroMQ's EHOSTUNREACH, the socket being
 * ZMQ_ROUTER_MANDATORY) is counted as peer_gone, which is no fault; a frame
 * the socket could not take (its queue full), or that found no memory, is
 * a send failure.
 *
 * The server_t is a bare one with a stand-in facility endpoint: the test is
 * linked with -Wl,--wrap=endpoint_send_msg,--wrap=zmq_msg_init_size, and
 * the wrappers below answer what the test sets.  And a real server's
 * teardown, in a child: a late stop or reload signal leaves its exit status
 * 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "endpoint.h"
#include "log.h"
#include "server.h"

static int s_answer;

int __wrap_endpoint_send_msg(endpoint_t *self, const uint8_t *rid, size_t rid_len,
                             zmq_msg_t *msg);

int __wrap_endpoint_send_msg(endpoint_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg)
{
    (void)self;
    (void)rid;
    (void)rid_len;
    zmq_msg_close(msg); /* consumed either way, as by endpoint_send_msg */
    return s_answer;
}

static bool s_no_memory;

int __real_zmq_msg_init_size(zmq_msg_t *msg, size_t size);
int __wrap_zmq_msg_init_size(zmq_msg_t *msg, size_t size);

int __wrap_zmq_msg_init_size(zmq_msg_t *msg, size_t size)
{
    if (s_no_memory) {
        errno = ENOMEM;
        return -1;
    }
    return __real_zmq_msg_init_size(msg, size);
}

/* Sends one frame of a few bytes to a routing id, the endpoint answering rc. */
static int s_send(server_t *s, int rc)
{
    s_answer = rc;
    zmq_msg_t msg;
    assert_int_equal(zmq_msg_init_size(&msg, 4), 0);
    memcpy(zmq_msg_data(&msg), "abcd", 4);
    const uint8_t rid[] = {0, 1, 2, 3, 4};
    return server_send_facility_msg(s, rid, sizeof rid, &msg);
}

/* The lines of out (rewound) that hold needle. */
static int s_lines_with(FILE *out, const char *needle)
{
    char line[512];
    int n = 0;
    rewind(out);
    while (fgets(line, sizeof line, out) != NULL)
        n += strstr(line, needle) != NULL;
    return n;
}

static void test_server_send_to_a_closed_connection_is_no_failure(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    server_t s = {.facility_ep = (endpoint_t *)&stand_in, .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    assert_int_equal(s_send(&s, -EHOSTUNREACH), -EHOSTUNREACH);
    assert_int_equal(s.counters.v[CNT_PEER_GONE], 1);
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 0);
    assert_string_equal(counters_name(CNT_PEER_GONE), "peer_gone");
    /* A queue that is full is a failure; a frame that went, neither. */
    assert_int_equal(s_send(&s, -EAGAIN), -EAGAIN);
    assert_int_equal(s_send(&s, 0), 0);
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 1);
    assert_int_equal(s.counters.v[CNT_PEER_GONE], 1);
    log_destroy(&s.log);
    assert_int_equal(s_lines_with(out, "facility.send_failed"), 1);
    fclose(out);
}

/* A frame that finds no memory to be packed into is dropped: counted as
 * one the socket refused, not dropped silently (an Ack, an Error). */
static void test_server_frame_without_memory_is_a_failure(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    assert_non_null(out);
    int stand_in;
    server_t s = {.facility_ep = (endpoint_t *)&stand_in, .log = log_new(MR_LOG_DEBUG, out)};
    assert_non_null(s.log);
    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    const uint8_t rid[] = {0, 1, 2, 3, 4};
    s_answer = 0;
    s_no_memory = true;
    int rc = server_send_facility(&s, rid, sizeof rid, &f.base);
    s_no_memory = false;
    assert_int_equal(rc, -ENOMEM);
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 1);
    assert_int_equal(server_send_facility(&s, rid, sizeof rid, &f.base), 0);
    assert_int_equal(s.counters.v[CNT_SEND_FAILED], 1);
    log_destroy(&s.log);
    assert_int_equal(s_lines_with(out, "facility.send_failed"), 1);
    fclose(out);
}

/* A real server, built and torn down in a child: a SIGHUP, SIGTERM or
 * SIGINT that comes once its signal watchers are closed (systemd's stop
 * while the daemon exits) is harmless, the exit status stays 0; closing
 * them restored the default action, and the signal ended the process. */
static void test_server_late_signal_after_teardown_is_harmless(void **state)
{
    (void)state;
    char dir[] = "/tmp/mr-test-server-XXXXXX";
    assert_non_null(mkdtemp(dir));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char text[1024], err[256];
        snprintf(text, sizeof text,
                 "facility_endpoint = \"ipc://%s/f.sock\";\n"
                 "operator_endpoint = \"ipc://%s/o.sock\";\n"
                 "data_dir = \"%s/var\";\ninsecure = true;\n"
                 "facilities = ( { id = \"yx-lead\"; role = \"lead\"; } );\n",
                 dir, dir, dir);
        conf_t *conf = conf_load_string(text, "t.conf", err, sizeof err);
        log_t *log = log_new(MR_LOG_ERROR, stderr);
        server_t *s = conf && log ? server_new(conf, log) : NULL; /* takes conf */
        if (s == NULL)
            _exit(3);
        server_destroy(&s);
        log_destroy(&log);
        (void)raise(SIGHUP);
        (void)raise(SIGTERM);
        (void)raise(SIGINT);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_send_to_a_closed_connection_is_no_failure),
        cmocka_unit_test(test_server_frame_without_memory_is_a_failure),
        cmocka_unit_test(test_server_late_signal_after_teardown_is_harmless),
    };
    return cmocka_run_group_tests_name("server", tests, NULL, NULL);
}
