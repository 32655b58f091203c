/*
 * test_crash.c - nothing acknowledged is lost, nothing is handed over twice.
 *
 * 1. Three senders push referrals to one receiver while the daemon is killed
 *    with SIGKILL at random instants (at least 3 times) and restarted.  At
 *    the end every message whose Ack a sender saw was handed to the
 *    receiver's application exactly once, in order per sender, and nothing
 *    was received that was not sent.  The store reads at most 100 rows past
 *    its pinned messages at a start (store.restart_scan_rows), so the pending
 *    set is rebuilt through pins at the restarts; a lab order for a
 *    facility offline all along is pinned, and handed over once at the end.
 * 2. The same with the receiving process killed instead: nothing is lost, and
 *    a repeat is only ever the message that a kill interrupted, marked
 *    redelivered.
 * 3. The same with a sending process killed: its on-disk outbox resends what
 *    was not yet acknowledged; nothing is lost or routed twice.
 * 4. A receiver killed inside its handler, restarted, whose handler then
 *    refuses the redelivery: the hand-off after the refusal is still marked
 *    redelivered (the killed run may have applied it); a message refused on
 *    its first hand-off is not.
 * The counts checked are printed.
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

#ifndef CRASH_PEER_PATH
#error "CRASH_PEER_PATH must name the crash_peer binary"
#endif

#define SENDERS 3
#define PER_SENDER 1500

static const char *const s_senders[SENDERS] = {"t-aihua", "t-manwan", "t-houqing"};

static pid_t s_spawn(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* peers die with the test */
        execv(CRASH_PEER_PATH, argv);
        _exit(127);
    }
    return pid;
}

static pid_t s_sender(const mrt_daemon_t *d, int i)
{
    char state[400], acked[400], count[16];
    snprintf(state, sizeof state, "%s/state-%s", d->dir, s_senders[i]);
    snprintf(acked, sizeof acked, "%s/acked-%s", d->dir, s_senders[i]);
    snprintf(count, sizeof count, "%d", PER_SENDER);
    char *argv[] = {"crash_peer", "send", (char *)d->facility_ep, (char *)s_senders[i],
                    "yx-lead",   count,  state,                  acked,
                    NULL};
    return s_spawn(argv);
}

static pid_t s_receiver(const mrt_daemon_t *d)
{
    char state[400], out[400], expect[16];
    snprintf(state, sizeof state, "%s/state-yx-lead", d->dir);
    snprintf(out, sizeof out, "%s/received", d->dir);
    snprintf(expect, sizeof expect, "%d", SENDERS * PER_SENDER);
    char *argv[] = {"crash_peer", "recv", (char *)d->facility_ep, "yx-lead", state, out, expect,
                    NULL};
    return s_spawn(argv);
}

static long s_acked_total(const mrt_daemon_t *d)
{
    long n = 0;
    char path[400];
    for (int i = 0; i < SENDERS; i++) {
        snprintf(path, sizeof path, "%s/acked-%s", d->dir, s_senders[i]);
        n += mrt_count_lines(path);
    }
    return n;
}

static bool s_exited(pid_t pid, int *status)
{
    return waitpid(pid, status, WNOHANG) == pid;
}

/* Reads one line list into a table of [sender][index] -> count. */
typedef struct {
    int acked[SENDERS][PER_SENDER];
    int received[SENDERS][PER_SENDER];
    int redelivered[SENDERS][PER_SENDER];
    long order_violations;
    long unknown;
    long received_lines;
} tally_t;

static int s_parse_id(const char *id, int *sender, int *index)
{
    for (int s = 0; s < SENDERS; s++) {
        size_t n = strlen(s_senders[s]);
        if (strncmp(id, s_senders[s], n) == 0 && id[n] == '-') {
            char *end;
            long i = strtol(id + n + 1, &end, 10);
            if (*end != '\0' || i < 0 || i >= PER_SENDER)
                return -1;
            *sender = s;
            *index = (int)i;
            return 0;
        }
    }
    return -1;
}

static void s_tally(const mrt_daemon_t *d, tally_t *t)
{
    char path[400], line[256];
    for (int s = 0; s < SENDERS; s++) {
        snprintf(path, sizeof path, "%s/acked-%s", d->dir, s_senders[s]);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            int sd, i;
            if (s_parse_id(line, &sd, &i) == 0)
                t->acked[sd][i]++;
        }
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/received", d->dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int last[SENDERS];
    for (int s = 0; s < SENDERS; s++)
        last[s] = -1;
    while (fgets(line, sizeof line, f)) {
        char source[64], id[128];
        int redelivered;
        t->received_lines++;
        if (sscanf(line, "%63s %127s %d", source, id, &redelivered) != 3) {
            t->unknown++;
            continue;
        }
        int sd, i;
        if (s_parse_id(id, &sd, &i) != 0 || strcmp(source, s_senders[sd]) != 0) {
            t->unknown++;
            continue;
        }
        t->received[sd][i]++;
        if (redelivered)
            t->redelivered[sd][i]++;
        /* Per sender, first receptions come in submission order. */
        if (t->received[sd][i] == 1) {
            if (i < last[sd])
                t->order_violations++;
            last[sd] = i;
        }
    }
    fclose(f);
}

/* Waits (2 min at most) for every sender and the receiver to finish
 * successfully, then stops the daemon. */
static void s_all_done(mrt_daemon_t *d, const pid_t *senders, pid_t receiver)
{
    int status = 0;
    long long deadline = mrt_now_ms() + 120000;
    for (int i = 0; i < SENDERS; i++) {
        while (!s_exited(senders[i], &status) && mrt_now_ms() < deadline)
            usleep(50000);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    while (!s_exited(receiver, &status) && mrt_now_ms() < deadline)
        usleep(50000);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(mrt_daemon_stop(d), 0);
}

static int s_on_delivery(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    int *n = arg; /* [0] deliveries, [1] of them marked redelivered */
    if (ev->type == MR_EVENT_DELIVERY) {
        n[0]++;
        n[1] += ev->delivery->redelivered;
    }
    return 0;
}

static bool s_got_one(void *arg)
{
    return ((int *)arg)[0] >= 1;
}

static bool s_never(void *arg)
{
    (void)arg;
    return false;
}

static void test_crash_daemon_killed_loses_nothing(void **state)
{
    (void)state;
    mrt_daemon_t d = {.use_ipc = true};
    assert_int_equal(
        mrt_daemon_start(&d, "store = { batch_ms = 2; restart_scan_rows = 100; };"), 0);
    mr_client_t *lishu = mrt_client(&d, "t-lishu", NULL);
    assert_non_null(lishu);
    assert_int_equal(mrt_send(lishu, "yx-lab", "lab_order", "routine",
                              "{\"placer_order_number\":\"PO-OFFLINE\",\"tests\":[{\"system\":"
                              "\"LOINC\",\"code\":\"2823-3\"}]}",
                              NULL),
                     0);
    mr_client_destroy(&lishu);
    pid_t senders[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        senders[i] = s_sender(&d, i);
    pid_t receiver = s_receiver(&d);
    srand((unsigned)getpid());
    int kills = 0;
    /* Kill it while traffic flows: each time the senders have seen another
     * fifth of their Acks, after a random extra delay. */
    for (int k = 1; k <= 4; k++) {
        long long until = mrt_now_ms() + 60000;
        while (s_acked_total(&d) < k * SENDERS * PER_SENDER / 5 && mrt_now_ms() < until)
            usleep(2000);
        usleep((useconds_t)(rand() % 20) * 1000);
        mrt_daemon_kill(&d);
        kills++;
        usleep((useconds_t)(rand() % 300) * 1000);
        assert_int_equal(mrt_daemon_restart(&d), 0);
    }
    int status, done = 0;
    bool sender_done[SENDERS] = {0};
    long long deadline = mrt_now_ms() + 120000;
    while (done < SENDERS && mrt_now_ms() < deadline) {
        for (int i = 0; i < SENDERS; i++) {
            if (!sender_done[i] && s_exited(senders[i], &status)) {
                assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                sender_done[i] = true;
                done++;
            }
        }
        usleep(50000);
    }
    assert_int_equal(done, SENDERS);
    while (!s_exited(receiver, &status) && mrt_now_ms() < deadline)
        usleep(50000);
    assert_true(WIFEXITED(status));
    /* The offline facility's message, pinned at some start (the log says how
     * many each start read so), comes once, not marked redelivered. */
    int opens = mrt_log_count(&d, "event=store.opened");
    int opens_pinned = opens - mrt_log_count(&d, "pinned=0");
    mr_client_t *lab = mrt_client(&d, "yx-lab", NULL);
    assert_non_null(lab);
    int got[2] = {0, 0};
    assert_true(mrt_poll_until(lab, 10000, s_got_one, got, s_on_delivery, got));
    (void)mrt_poll_until(lab, 500, s_never, NULL, s_on_delivery, got); /* room for a second */
    mr_client_destroy(&lab);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    printf("crash/daemon: opens=%d of which with pinned messages=%d; offline deliveries=%d "
           "redelivered=%d\n",
           opens, opens_pinned, got[0], got[1]);
    assert_true(opens_pinned >= 1);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 0);

    tally_t *t = calloc(1, sizeof *t);
    s_tally(&d, t);
    long acked = 0, lost = 0, twice = 0, received = 0;
    for (int s = 0; s < SENDERS; s++)
        for (int i = 0; i < PER_SENDER; i++) {
            acked += t->acked[s][i] > 0;
            received += t->received[s][i] > 0;
            lost += t->acked[s][i] > 0 && t->received[s][i] == 0;
            twice += t->received[s][i] > 1;
        }
    printf("crash/daemon: kills=%d acked=%ld received=%ld lines=%ld lost=%ld duplicates=%ld "
           "out_of_order=%ld unknown=%ld\n",
           kills, acked, received, t->received_lines, lost, twice, t->order_violations,
           t->unknown);
    assert_true(kills >= 3);
    assert_int_equal(acked, SENDERS * PER_SENDER);
    assert_int_equal(lost, 0);
    assert_int_equal(twice, 0);
    assert_int_equal(t->order_violations, 0);
    assert_int_equal(t->unknown, 0);
    assert_int_equal(t->received_lines, SENDERS * PER_SENDER);
    free(t);
    mrt_daemon_cleanup(&d);
}

static void test_crash_receiver_killed_loses_nothing(void **state)
{
    (void)state;
    mrt_daemon_t d = {.use_ipc = true};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    pid_t senders[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        senders[i] = s_sender(&d, i);
    pid_t receiver = s_receiver(&d);
    srand((unsigned)getpid() + 1);
    int kills = 0, status;
    char out[400];
    snprintf(out, sizeof out, "%s/received", d.dir);
    /* Kill it while traffic flows: each time it has taken another fifth. */
    for (int k = 1; k <= 4; k++) {
        long long until = mrt_now_ms() + 60000;
        while (mrt_count_lines(out) < k * SENDERS * PER_SENDER / 5 && mrt_now_ms() < until)
            usleep((useconds_t)(1000 + rand() % 4000));
        if (s_exited(receiver, &status))
            break; /* it finished before this kill */
        kill(receiver, SIGKILL);
        waitpid(receiver, NULL, 0);
        kills++;
        receiver = s_receiver(&d);
    }
    s_all_done(&d, senders, receiver);

    tally_t *t = calloc(1, sizeof *t);
    s_tally(&d, t);
    long lost = 0, repeats = 0, unmarked_repeats = 0;
    for (int s = 0; s < SENDERS; s++)
        for (int i = 0; i < PER_SENDER; i++) {
            lost += t->acked[s][i] > 0 && t->received[s][i] == 0;
            if (t->received[s][i] > 1) {
                repeats += t->received[s][i] - 1;
                /* Every copy after the first must carry the redelivered flag. */
                if (t->redelivered[s][i] < t->received[s][i] - 1)
                    unmarked_repeats++;
            }
        }
    printf("crash/receiver: kills=%d lines=%ld lost=%ld repeats=%ld unmarked_repeats=%ld "
           "out_of_order=%ld unknown=%ld\n",
           kills, t->received_lines, lost, repeats, unmarked_repeats, t->order_violations,
           t->unknown);
    assert_true(kills >= 3);
    assert_int_equal(lost, 0);
    assert_true(repeats <= kills); /* at most the one message each kill interrupted */
    assert_int_equal(unmarked_repeats, 0);
    assert_int_equal(t->order_violations, 0);
    assert_int_equal(t->unknown, 0);
    free(t);
    mrt_daemon_cleanup(&d);
}

static void test_crash_sender_killed_loses_nothing(void **state)
{
    (void)state;
    mrt_daemon_t d = {.use_ipc = true};
    assert_int_equal(mrt_daemon_start(&d, NULL), 0);
    pid_t senders[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        senders[i] = s_sender(&d, i);
    pid_t receiver = s_receiver(&d);
    srand((unsigned)getpid() + 2);
    char acked[400];
    snprintf(acked, sizeof acked, "%s/acked-%s", d.dir, s_senders[0]);
    int kills = 0, status;
    /* Kill the first sender whenever it has seen another fifth of its Acks;
     * its outbox and its Ack log carry it over each restart. */
    for (int k = 1; k <= 4; k++) {
        long long until = mrt_now_ms() + 60000;
        while (mrt_count_lines(acked) < k * PER_SENDER / 5 && mrt_now_ms() < until)
            usleep((useconds_t)(500 + rand() % 3000));
        if (s_exited(senders[0], &status))
            break;
        kill(senders[0], SIGKILL);
        waitpid(senders[0], NULL, 0);
        kills++;
        senders[0] = s_sender(&d, 0);
    }
    s_all_done(&d, senders, receiver);

    tally_t *t = calloc(1, sizeof *t);
    s_tally(&d, t);
    long acked_n = 0, lost = 0, twice = 0;
    for (int s = 0; s < SENDERS; s++)
        for (int i = 0; i < PER_SENDER; i++) {
            acked_n += t->acked[s][i] > 0;
            lost += t->acked[s][i] > 0 && t->received[s][i] == 0;
            twice += t->received[s][i] > 1;
        }
    printf("crash/sender: kills=%d acked=%ld lines=%ld lost=%ld duplicates=%ld out_of_order=%ld "
           "unknown=%ld\n",
           kills, acked_n, t->received_lines, lost, twice, t->order_violations, t->unknown);
    assert_true(kills >= 3);
    /* A kill between the Ack and the sender's own log line hides that Ack
     * from the log, never from the receiver. */
    assert_true(acked_n >= SENDERS * PER_SENDER - kills);
    assert_int_equal(lost, 0);
    assert_int_equal(twice, 0);
    assert_int_equal(t->order_violations, 0);
    assert_int_equal(t->unknown, 0);
    assert_int_equal(t->received_lines, SENDERS * PER_SENDER);
    free(t);
    mrt_daemon_cleanup(&d);
}

/* What a receiver's handler was handed, in order; it refuses (returns -1)
 * the first `refuse` hand-offs and takes the rest. */
#define HANDOFFS_MAX 8
typedef struct {
    int n, want, refuse;
    char ids[HANDOFFS_MAX][72];
    bool redelivered[HANDOFFS_MAX];
} handoffs_t;

static int on_handoff(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    handoffs_t *h = arg;
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    if (h->n < HANDOFFS_MAX) {
        snprintf(h->ids[h->n], sizeof h->ids[h->n], "%s", ev->delivery->message_id);
        h->redelivered[h->n] = ev->delivery->redelivered;
    }
    h->n++;
    if (h->refuse > 0) {
        h->refuse--;
        return -1;
    }
    return 0;
}

static bool s_handed(void *arg)
{
    const handoffs_t *h = arg;
    return h->n >= h->want;
}

static void s_send_order(mr_client_t *sender, const char *id)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"message_id\":\"%s\",\"destination\":\"yx-lead\",\"kind\":\"lab_order\","
             "\"lab_order\":{\"placer_order_number\":\"PO-%s\"}}",
             id, id);
    mr_result_t r;
    assert_int_equal(mr_client_send_json(sender, json, &r, 5000, NULL, NULL), 0);
}

/* Polls until the handler has been handed want messages in all, refusing
 * the first `refuse` of them; then checks that no further copy comes. */
static void s_handoffs(mr_client_t *c, handoffs_t *h, int want, int refuse)
{
    memset(h, 0, sizeof *h);
    h->want = want;
    h->refuse = refuse;
    assert_true(mrt_poll_until(c, 10000, s_handed, h, on_handoff, h));
    h->want = want + 1; /* the last one was taken and acknowledged */
    assert_false(mrt_poll_until(c, 2000, s_handed, h, on_handoff, h));
}

static void test_crash_refused_redelivery_stays_redelivered(void **state)
{
    (void)state;
    mrt_daemon_t d = {.use_ipc = true};
    assert_int_equal(mrt_daemon_start(&d, "limits = { redelivery_timeout_ms = 1000; };"), 0);
    mr_client_t *sender = mrt_client(&d, "t-aihua", NULL);
    assert_non_null(sender);
    s_send_order(sender, "crash-in-handler");

    /* The receiver dies inside its handler: the key stays IN_HANDLER on disk. */
    char st[400], out[400];
    snprintf(st, sizeof st, "%s/state-yx-lead", d.dir);
    snprintf(out, sizeof out, "%s/received", d.dir);
    char *argv[] = {"crash_peer", "die", d.facility_ep, "yx-lead", st, out, NULL};
    pid_t pid = s_spawn(argv);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(mrt_count_lines(out), 1);

    /* Restarted on the same state: it refuses the redelivery once, and the
     * broker's next copy (after its redelivery time-out) must still be
     * marked, since the killed run may have applied it. */
    mr_client_t *lead = mrt_client(&d, "yx-lead", "yx-lead");
    assert_non_null(lead);
    handoffs_t h;
    s_handoffs(lead, &h, 2, 1);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(h.ids[i], "crash-in-handler");
        assert_true(h.redelivered[i]);
    }

    /* A refusal of a first hand-off leaves no mark: the next copy is not
     * called a redelivery. */
    s_send_order(sender, "refused-first");
    s_handoffs(lead, &h, 2, 1);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(h.ids[i], "refused-first");
        assert_false(h.redelivered[i]);
    }
    printf("crash/refused: after a crash, both hand-offs redelivered; without, neither\n");
    mr_client_destroy(&lead);
    mr_client_destroy(&sender);
    assert_int_equal(mrt_daemon_stop(&d), 0);
    mrt_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_daemon_killed_loses_nothing),
        cmocka_unit_test(test_crash_receiver_killed_loses_nothing),
        cmocka_unit_test(test_crash_sender_killed_loses_nothing),
        cmocka_unit_test(test_crash_refused_redelivery_stays_redelivered),
    };
    return cmocka_run_group_tests_name("crash", tests, NULL, NULL);
}
