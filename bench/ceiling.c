/*
 * ceiling.c - bench_ceiling: the fastest a ZeroMQ broker could be on this
 * machine, as the yardstick for medroute.
 *
 * A forwarder process of our own (forked; ROUTER on a free loopback port)
 * does no store and no decode: it reads the destination routing id from
 * the first bytes of a message, forwards the message to it as it is, and
 * echoes a small ack (the message's first 48 bytes) to the sender at once.
 * N sender threads (DEALER, one zmq context each, as libmedroute has) keep
 * at most a window of un-echoed messages; one receiver thread (DEALER)
 * answers every message with a delivery ack that the forwarder drops.
 *
 *   sender --M--> forwarder --M--> receiver
 *     ^               |                |
 *     +------A--------+  <-----D-------+   (D is read and dropped)
 *
 * Message layout (BU_PAYLOAD bytes): [0] 'M', [1] length L of the
 * destination id, [2..2+L) the id, [32..40) sequence, [40..48) send time
 * (CLOCK_MONOTONIC ns; senders and receiver share the process), zeros.
 *
 * Modes: throughput (senders as fast as the window allows) and latency
 * (a total offered rate, token bucket).  Measures after a warm-up, for a
 * fixed duration; prints one JSON line.  Threads: main (measures), senders,
 * receiver; the forwarder is a child process.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "bench_util.h"

#define S_RCV_ID "rcv"
#define S_OFF_SEQ 32
#define S_OFF_TS 40
#define S_ACK_LEN 48
#define S_MAX_SENDERS 64

typedef struct {
    char endpoint[64];
    int senders;
    int window;
    double rate;            /* latency mode: total messages/s; 0: throughput */
    atomic_bool stop;
    atomic_bool measuring;
    atomic_ullong received; /* messages the receiver took (and acknowledged) */
    atomic_ullong sent;
} s_run_t;

typedef struct {
    s_run_t *run;
    int idx;
    bu_lat_t lat;           /* send -> echo ack (ack) or -> receiver (delivery) */
    int rc;
} s_worker_t;

/* ---- forwarder (child process) ------------------------------------------------ */

static int s_forward(const char *endpoint)
{
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int hwm = 0;
    if (r == NULL || zmq_setsockopt(r, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(r, ZMQ_RCVHWM, &hwm, sizeof hwm) || zmq_bind(r, endpoint) != 0) {
        fprintf(stderr, "ceiling: forwarder cannot bind %s: %s\n", endpoint,
                zmq_strerror(zmq_errno()));
        return 1;
    }
    for (;;) {
        zmq_msg_t rid, m;
        zmq_msg_init(&rid);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&rid, r, 0) < 0 || zmq_msg_recv(&m, r, 0) < 0)
            break;
        const uint8_t *d = zmq_msg_data(&m);
        size_t len = zmq_msg_size(&m);
        if (len >= S_ACK_LEN && d[0] == 'M' && d[1] > 0 && (size_t)d[1] + 2 <= S_OFF_SEQ) {
            /* echo first: it is a copy of the first bytes, the message itself moves on */
            uint8_t ack[S_ACK_LEN];
            memcpy(ack, d, sizeof ack);
            ack[0] = 'A';
            zmq_msg_t dest;
            zmq_msg_init_size(&dest, d[1]);
            memcpy(zmq_msg_data(&dest), d + 2, d[1]);
            if (zmq_msg_send(&dest, r, ZMQ_SNDMORE) < 0 || zmq_msg_send(&m, r, 0) < 0) {
                zmq_msg_close(&dest);
            }
            if (zmq_msg_send(&rid, r, ZMQ_SNDMORE) >= 0)
                zmq_send(r, ack, sizeof ack, 0);
        }
        zmq_msg_close(&rid);
        zmq_msg_close(&m);
    }
    zmq_close(r);
    zmq_ctx_term(ctx);
    return 0;
}

/* ---- sender and receiver threads -------------------------------------------------- */

static void *s_sender(void *arg)
{
    s_worker_t *w = arg;
    s_run_t *run = w->run;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(s, run->endpoint) != 0) {
        w->rc = -1;
        return NULL;
    }
    uint8_t msg[BU_PAYLOAD];
    memset(msg, 0, sizeof msg);
    msg[0] = 'M';
    msg[1] = (uint8_t)strlen(S_RCV_ID);
    memcpy(msg + 2, S_RCV_ID, strlen(S_RCV_ID));
    bu_pace_t pace;
    bu_pace_init(&pace, run->rate / run->senders);
    int outstanding = 0;
    uint64_t seq = 0;
    while (!atomic_load(&run->stop)) {
        int timeout = 100;
        while (outstanding < run->window) {
            if (run->rate > 0) {
                uint64_t wait = bu_pace_wait_ns(&pace);
                if (wait >= 1000000) { /* sends may go up to 1 ms early: no spinning */
                    timeout = (int)(wait / 1000000);
                    break;
                }
                bu_pace_take(&pace);
            }
            uint64_t now = bu_now_ns();
            seq++;
            memcpy(msg + S_OFF_SEQ, &seq, 8);
            memcpy(msg + S_OFF_TS, &now, 8);
            if (zmq_send(s, msg, sizeof msg, 0) < 0) {
                w->rc = -1;
                goto out;
            }
            outstanding++;
            atomic_fetch_add(&run->sent, 1);
        }
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, timeout) < 0 && zmq_errno() != EINTR)
            break;
        uint8_t ack[S_ACK_LEN];
        for (;;) {
            int n = zmq_recv(s, ack, sizeof ack, ZMQ_DONTWAIT);
            if (n < 0)
                break;
            uint64_t ts;
            memcpy(&ts, ack + S_OFF_TS, 8);
            outstanding--;
            if (atomic_load(&run->measuring))
                bu_lat_add(&w->lat, bu_now_ns() - ts);
        }
    }
out:;
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return NULL;
}

static void *s_receiver(void *arg)
{
    s_worker_t *w = arg;
    s_run_t *run = w->run;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, S_RCV_ID, strlen(S_RCV_ID));
    if (zmq_connect(s, run->endpoint) != 0) {
        w->rc = -1;
        return NULL;
    }
    uint8_t buf[BU_PAYLOAD + 16];
    uint8_t dack[16] = {'D'};
    while (!atomic_load(&run->stop)) {
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 100) < 0 && zmq_errno() != EINTR)
            break;
        for (;;) {
            int n = zmq_recv(s, buf, sizeof buf, ZMQ_DONTWAIT);
            if (n < S_ACK_LEN)
                break;
            uint64_t ts;
            memcpy(&ts, buf + S_OFF_TS, 8);
            if (atomic_load(&run->measuring))
                bu_lat_add(&w->lat, bu_now_ns() - ts);
            memcpy(dack + 8, buf + S_OFF_SEQ, 8);
            zmq_send(s, dack, sizeof dack, 0);
            atomic_fetch_add(&run->received, 1);
        }
    }
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    static s_run_t run;
    const char *mode = bu_arg(argc, argv, "--mode", "throughput");
    run.senders = (int)bu_arg_long(argc, argv, "--senders", 4);
    run.window = (int)bu_arg_long(argc, argv, "--window", 256);
    run.rate = strcmp(mode, "latency") == 0 ? bu_arg_double(argc, argv, "--rate", 1000) : 0;
    double warmup = bu_arg_double(argc, argv, "--warmup-s", 1);
    double duration = bu_arg_double(argc, argv, "--duration-s", 5);
    if (run.senders < 1 || run.senders > S_MAX_SENDERS || run.window < 1 || duration <= 0) {
        fprintf(stderr, "usage: bench_ceiling [--mode throughput|latency] [--rate MSGS_PER_S]"
                        " [--senders N] [--window W] [--warmup-s S] [--duration-s S]\n");
        return 2;
    }
    int port = bu_free_port();
    if (port < 0)
        return 1;
    snprintf(run.endpoint, sizeof run.endpoint, "tcp://127.0.0.1:%d", port);

    pid_t fwd = fork();
    if (fwd < 0)
        return 1;
    if (fwd == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(s_forward(run.endpoint));
    }
    bu_sleep_ms(200); /* let it bind; DEALERs reconnect anyway */

    s_worker_t rcv = {.run = &run};
    s_worker_t snd[S_MAX_SENDERS];
    pthread_t rt, st[S_MAX_SENDERS];
    bu_lat_init(&rcv.lat, 20000000);
    pthread_create(&rt, NULL, s_receiver, &rcv);
    bu_sleep_ms(100);
    for (int i = 0; i < run.senders; i++) {
        snd[i] = (s_worker_t){.run = &run, .idx = i};
        bu_lat_init(&snd[i].lat, 20000000 / run.senders);
        pthread_create(&st[i], NULL, s_sender, &snd[i]);
    }
    bu_sleep_ms((int)(warmup * 1000));
    atomic_store(&run.measuring, true);
    uint64_t t0 = bu_now_ns();
    unsigned long long r0 = atomic_load(&run.received), s0 = atomic_load(&run.sent);
    bu_sleep_ms((int)(duration * 1000));
    uint64_t t1 = bu_now_ns();
    unsigned long long r1 = atomic_load(&run.received), s1 = atomic_load(&run.sent);
    atomic_store(&run.measuring, false);
    atomic_store(&run.stop, true);
    pthread_join(rt, NULL);
    bu_lat_t ack;
    bu_lat_init(&ack, SIZE_MAX);
    int rc = rcv.rc;
    for (int i = 0; i < run.senders; i++) {
        pthread_join(st[i], NULL);
        bu_lat_merge(&ack, &snd[i].lat);
        bu_lat_close(&snd[i].lat);
        rc |= snd[i].rc;
    }
    kill(fwd, SIGKILL);
    waitpid(fwd, NULL, 0);

    double secs = (double)(t1 - t0) / 1e9;
    printf("{\"bench\":\"ceiling\",\"mode\":\"%s\",\"senders\":%d,\"window\":%d,"
           "\"payload\":%d,\"offered_per_s\":%.0f,\"secs\":%.3f,\"sent\":%llu,\"msgs\":%llu,"
           "\"msgs_per_s\":%.0f",
           mode, run.senders, run.window, BU_PAYLOAD, run.rate, secs, s1 - s0, r1 - r0,
           (double)(r1 - r0) / secs);
    bu_lat_json(stdout, "ack", &ack);
    bu_lat_json(stdout, "dlv", &rcv.lat);
    printf(",\"ok\":%s}\n", rc == 0 && r1 > r0 ? "true" : "false");
    bu_lat_close(&ack);
    bu_lat_close(&rcv.lat);
    return rc == 0 && r1 > r0 ? 0 : 1;
}
