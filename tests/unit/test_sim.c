/*
 * Unit tests for clients/sim/sim.c, medroute-sim: its source is compiled
 * into this test (main renamed), so that its accounting of events, its
 * report and its exit status are driven without a broker: the players have
 * no client, and the events are made here.
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
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "medroute.h"

/* The operator endpoint as s_print_broker sees it (-Wl,--wrap): no socket;
 * the status reply is the test's. */
mr_operator_t *__wrap_mr_operator_new(const char *endpoint);
int __wrap_mr_operator_call_json(mr_operator_t *self, const char *request_json, char **reply,
                                 int timeout_ms, char *err, size_t errlen);
void __wrap_mr_operator_destroy(mr_operator_t **self_p);
static const char *s_status_reply;
mr_operator_t *__wrap_mr_operator_new(const char *endpoint)
{
    (void)endpoint;
    return (mr_operator_t *)&s_status_reply;
}
int __wrap_mr_operator_call_json(mr_operator_t *self, const char *request_json, char **reply,
                                 int timeout_ms, char *err, size_t errlen)
{
    (void)self, (void)request_json, (void)timeout_ms, (void)err, (void)errlen;
    *reply = strdup(s_status_reply);
    return *reply ? 0 : -ENOMEM;
}
void __wrap_mr_operator_destroy(mr_operator_t **self_p)
{
    *self_p = NULL;
}

/* json_object_set_new as sim.c calls it (-Wl,--wrap): it fails, as without
 * memory, for the key s_fail_key. */
int __real_json_object_set_new(json_t *object, const char *key, json_t *value);
int __wrap_json_object_set_new(json_t *object, const char *key, json_t *value);
static const char *s_fail_key;
int __wrap_json_object_set_new(json_t *object, const char *key, json_t *value)
{
    if (s_fail_key != NULL && strcmp(key, s_fail_key) == 0) {
        json_decref(value);
        return -1;
    }
    return __real_json_object_set_new(object, key, value);
}

/* realloc as sim.c calls it (-Wl,--wrap): it fails while s_no_memory. */
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
static bool s_no_memory;
void *__wrap_realloc(void *p, size_t n)
{
    return s_no_memory ? NULL : __real_realloc(p, n);
}

/* mr_client_poll as sim.c calls it (-Wl,--wrap): it fails (-EIO). */
int __wrap_mr_client_poll(mr_client_t *self, int timeout_ms, mr_handler_t handler, void *arg);
int __wrap_mr_client_poll(mr_client_t *self, int timeout_ms, mr_handler_t handler, void *arg)
{
    (void)self, (void)timeout_ms, (void)handler, (void)arg;
    return -EIO;
}

/* The wall clock as sim.c reads it (-Wl,--wrap): the real one until a test
 * sets s_wall_s; the monotonic clock stays real. */
int __real_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
time_t __real_time(time_t *t);
time_t __wrap_time(time_t *t);
static time_t s_wall_s;
int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    if (s_wall_s == 0 || id != CLOCK_REALTIME)
        return __real_clock_gettime(id, ts);
    ts->tv_sec = s_wall_s;
    ts->tv_nsec = 0;
    return 0;
}
time_t __wrap_time(time_t *t)
{
    if (s_wall_s == 0)
        return __real_time(t);
    if (t != NULL)
        *t = s_wall_s;
    return s_wall_s;
}

#define main s_sim_main
#include "sim.c"
#undef main

/* A county of yx-lead, yx-imaging, yx-lab and two townships, none online. */
static void s_setup(s_sim_t *sim)
{
    memset(sim, 0, sizeof *sim);
    sim->o = (s_opts_t){.broker_id = "yx-medroute", .duration_s = 20, .seed = 1,
                        .townships = 2, .scale = 1};
    sim->rng.s = 0x2545F4914F6CDD1DULL;
    sim->offline = -1;
    static const char *const ids[] = {"yx-lead", "yx-imaging", "yx-lab", "t-aihua", "t-manwan"};
    static const s_role_t roles[] = {ROLE_LEAD, ROLE_IMAGING, ROLE_LAB, ROLE_TOWNSHIP,
                                     ROLE_TOWNSHIP};
    for (int i = 0; i < 5; i++) {
        s_player_t *p = &sim->players[sim->n_players++];
        p->sim = sim;
        p->idx = i;
        p->id = ids[i];
        p->role = roles[i];
    }
    sim->read_back = json_object();
    assert_non_null(sim->read_back);
}

/* What a stream (stdout, stderr) gets between s_capture_start and
 * s_capture_end, written to a temporary file. */
typedef struct {
    FILE *stream, *file;
    int saved;
} s_capture_t;

static void s_capture_start(s_capture_t *c, FILE *stream)
{
    assert_int_equal(fflush(stream), 0);
    c->stream = stream;
    c->file = tmpfile();
    assert_non_null(c->file);
    c->saved = dup(fileno(stream));
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->file), fileno(stream)) >= 0);
}

/* The text captured; the caller frees it. */
static char *s_capture_end(s_capture_t *c)
{
    assert_int_equal(fflush(c->stream), 0);
    assert_true(dup2(c->saved, fileno(c->stream)) >= 0);
    assert_int_equal(close(c->saved), 0);
    long n = ftell(c->file);
    assert_true(n >= 0);
    char *text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    rewind(c->file);
    assert_int_equal(fread(text, 1, (size_t)n, c->file), (size_t)n);
    assert_int_equal(fclose(c->file), 0);
    return text;
}

/* A delivery to a facility of a message addressed to the broker itself
 * (which the broker should never make) counts as misrouted and names the
 * broker as its destination: players[-1] was read. */
static void test_sim_misrouted_message_to_the_broker_names_it(void **state)
{
    (void)state;
    s_sim_t sim;
    s_setup(&sim);
    s_msg_t *m = s_msg_add(&sim, 0, S_BROKER, K_CAPACITY, "cap-1");
    assert_non_null(m);
    m->to_broker = true;
    mr_delivery_t d = {.seq = 7, .message_id = "cap-1", .source = "yx-lead",
                       .destination = "yx-imaging", .kind = "capacity", .priority = "routine"};
    mr_event_t ev = {.type = MR_EVENT_DELIVERY, .message_id = "cap-1", .delivery = &d};
    s_capture_t cap;
    s_capture_start(&cap, stderr);
    int rc = on_event(NULL, &ev, &sim.players[1]);
    char *err = s_capture_end(&cap);
    assert_int_equal(rc, 0);
    assert_int_equal(sim.misrouted, 1);
    assert_non_null(strstr(err, "yx-imaging: received cap-1 meant for yx-medroute\n"));
    free(err);
    s_sim_close(&sim);
}

/* The broker's counters print as they came: one sent as a decimal string
 * (a uint64 in protobuf's JSON) had a stray 0 after it ("%s%lld"). */
static void test_sim_broker_counters_print_as_they_came(void **state)
{
    (void)state;
    s_sim_t sim;
    s_setup(&sim);
    s_status_reply = "{\"status\": {\"counters\": [{\"name\": \"messages_accepted\", "
                     "\"value\": \"1234\"}, {\"name\": \"sessions\", \"value\": 5}, "
                     "{\"name\": \"idle\"}]}}";
    s_capture_t cap;
    s_capture_start(&cap, stdout);
    s_print_broker(&sim);
    char *out = s_capture_end(&cap);
    assert_string_equal(out, "broker counters: messages_accepted=1234 sessions=5 idle=0\n");
    free(out);
    s_sim_close(&sim);
}

/* A report that cannot be made whole is not written, and says so: the
 * counts set into it went unchecked, so one without memory for a
 * facility's "total" (or a kind) was written without it, and the run
 * exited 0 on a report that a reader takes as zero. */
static void test_sim_report_not_written_without_memory(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_sim.XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/report.json", dir);
    const char *keys[] = {"total", "referral", "received"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        s_sim_t sim;
        s_setup(&sim);
        sim.o.report = path;
        sim.players[3].sent[K_REFERRAL] = 2;
        s_fail_key = keys[i];
        s_capture_t cap;
        s_capture_start(&cap, stderr);
        int rc = s_write_report(&sim, 0, 0);
        char *err = s_capture_end(&cap);
        s_fail_key = NULL;
        assert_int_equal(rc, -ENOMEM);
        assert_int_equal(access(path, F_OK), -1);
        assert_non_null(strstr(err, "cannot write"));
        free(err);
        s_sim_close(&sim);
    }
    s_sim_t sim;
    s_setup(&sim);
    sim.o.report = path;
    assert_int_equal(s_write_report(&sim, 0, 0), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    s_sim_close(&sim);
}

/* A scheduled message that cannot be queued while its sender is offline
 * (no memory) fails the run as a failed submission: it was dropped
 * unnoticed, and the run exited 0 without it. */
static void test_sim_message_not_queued_fails_the_run(void **state)
{
    (void)state;
    s_sim_t sim;
    s_setup(&sim);
    s_event_t e = {.at_ms = 0, .type = EV_LAB, .township = 3};
    s_no_memory = true;
    s_capture_t cap;
    s_capture_start(&cap, stderr);
    s_fire(&sim, &e);
    char *err = s_capture_end(&cap);
    s_no_memory = false;
    assert_int_equal(sim.n_todo, 0);
    assert_int_equal(sim.submit_failed, 1);
    assert_int_equal(s_exit_status(&sim, 0, 0), 1);
    assert_non_null(strstr(err, "t-aihua: out of memory for a lab_order"));
    free(err);
    s_fire(&sim, &e); /* with memory: queued until t-aihua is online */
    assert_int_equal(sim.n_todo, 1);
    s_sim_close(&sim);
}

/* A poll that failed (events may have been missed) fails the run; the
 * round-robin wait's failure counts too. */
static void test_sim_poll_failure_fails_the_run(void **state)
{
    (void)state;
    s_sim_t sim;
    s_setup(&sim);
    sim.players[1].client = (mr_client_t *)&sim; /* never used: the poll is wrapped */
    s_capture_t cap;
    s_capture_start(&cap, stderr);
    s_poll_round(&sim);
    char *err = s_capture_end(&cap);
    sim.players[1].client = NULL;
    assert_int_equal(sim.poll_failed, 2);
    assert_int_equal(s_exit_status(&sim, 0, 0), 1);
    assert_non_null(strstr(err, "medroute-sim: yx-imaging: poll: "));
    free(err);
    s_sim_close(&sim);
}

/* The Ack of a copy stored after its message was refused (an ACK event
 * with the refusal's code) counts the message as stored, and expected at
 * its destination, not as failed: it was dropped, so a loss of it went
 * unseen and its delivery counted for a message never acknowledged. */
static void test_sim_ack_after_refusal_counts_as_stored(void **state)
{
    (void)state;
    s_sim_t sim;
    s_setup(&sim);
    assert_non_null(s_msg_add(&sim, 3, 1, K_CRITICAL_ACK, "ca-1"));
    mr_event_t err = {.type = MR_EVENT_ERROR, .message_id = "ca-1", .code = 9,
                      .code_name = "QUEUE_FULL", .reason = "queue full"};
    mr_event_t ack = {.type = MR_EVENT_ACK, .message_id = "ca-1", .seq = 12, .code = 9,
                      .code_name = "QUEUE_FULL"};
    s_capture_t cap;
    s_capture_start(&cap, stderr);
    assert_int_equal(on_event(NULL, &err, &sim.players[3]), 0);
    assert_int_equal(on_event(NULL, &ack, &sim.players[3]), 0);
    assert_int_equal(on_event(NULL, &ack, &sim.players[3]), 0);
    char *text = s_capture_end(&cap);
    assert_true(sim.msgs[0].acked);
    assert_false(sim.msgs[0].failed);
    assert_int_equal(sim.n_acked, 1);
    assert_int_equal(sim.errors, 1); /* the Error came all the same */
    assert_non_null(strstr(text, "t-aihua: ca-1, refused (QUEUE_FULL), was stored all the same"));
    free(text);
    size_t unacked;
    assert_int_equal(s_lost(&sim, &unacked), 1); /* acknowledged, not delivered yet */
    assert_int_equal(unacked, 0);
    assert_false(s_all_done(&sim));
    mr_delivery_t d = {.seq = 12, .message_id = "ca-1", .source = "t-aihua",
                       .destination = "yx-imaging", .kind = "critical_ack", .priority = "stat"};
    mr_event_t ev = {.type = MR_EVENT_DELIVERY, .message_id = "ca-1", .delivery = &d};
    assert_int_equal(on_event(NULL, &ev, &sim.players[1]), 0);
    assert_int_equal(s_lost(&sim, &unacked), 0);
    assert_int_equal(sim.n_delivered, 1);
    assert_int_equal(sim.duplicates, 0);
    assert_true(s_all_done(&sim));
    s_sim_close(&sim);
}

/* A routine appointment made late in a day-long run is still to come, on
 * a published day: it was drawn from the days after the run's first, so
 * one made the next morning could be booked for 09:00 that day, already
 * past. */
static void test_sim_routine_appointment_is_after_now(void **state)
{
    (void)state;
    assert_int_equal(setenv("TZ", "Asia/Shanghai", 1), 0);
    tzset();
    s_sim_t sim;
    s_setup(&sim);
    s_wall_s = 1772416800; /* 2026-03-02 10:00 +08:00 */
    assert_int_equal(s_plan_dates(&sim), 0);
    assert_string_equal(sim.days[0], "2026-03-02");
    s_wall_s += 86399;     /* the end of a --duration 86400 run: 03-03 09:59:59 */
    int64_t now = s_wall_ms();
    for (int i = 0; i < 200; i++) {
        int64_t at = s_appointment(&sim, "routine");
        assert_true(at > now);
        assert_true(at >= sim.day_start_ms[2] && at < sim.day_start_ms[3]);
    }
    s_wall_s = 0;
    s_sim_close(&sim);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sim_misrouted_message_to_the_broker_names_it),
        cmocka_unit_test(test_sim_broker_counters_print_as_they_came),
        cmocka_unit_test(test_sim_report_not_written_without_memory),
        cmocka_unit_test(test_sim_message_not_queued_fails_the_run),
        cmocka_unit_test(test_sim_poll_failure_fails_the_run),
        cmocka_unit_test(test_sim_ack_after_refusal_counts_as_stored),
        cmocka_unit_test(test_sim_routine_appointment_is_after_now),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
