/*
 * rabbitmq.c - bench_rabbitmq: the bench_medroute workload against RabbitMQ.
 *
 * Started by bench/peers/rabbitmq.sh against a broker it runs on loopback.
 * A durable queue (declared and purged first), persistent messages
 * (delivery_mode 2) of BU_PAYLOAD bytes through the default exchange; N
 * sender threads, each on its own connection with publisher confirms
 * (confirm.select) and at most --window unconfirmed publishes; one
 * receiver thread consuming with manual acks and a prefetch of --window.
 * A message counts when the receiver has sent its basic.ack (RabbitMQ does
 * not confirm consumer acks).  Body: [0..8) sequence, [8..16) send time
 * (CLOCK_MONOTONIC ns), zeros.
 *
 * Measures after --warmup-s for --duration-s; prints one JSON line.
 * Threads: main, senders, receiver; one connection per thread.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "bench_util.h"

#define S_MAX_SENDERS 64

typedef struct {
    const char *host;
    int port;
    const char *user, *pass, *queue;
    int senders;
    int window;
    atomic_bool stop;
    atomic_bool measuring;
    atomic_ullong received;
    atomic_ullong confirmed;
} s_run_t;

typedef struct {
    s_run_t *run;
    int idx;
    bu_lat_t lat;
    int rc;
} s_worker_t;

static int s_ok(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        fprintf(stderr, "bench_rabbitmq: %s: %s\n", what, amqp_error_string2(r.library_error));
    else
        fprintf(stderr, "bench_rabbitmq: %s: broker refused (reply %d)\n", what,
                (int)r.reply.id);
    return -1;
}

static amqp_connection_state_t s_connect(const s_run_t *run)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(c);
    if (sock == NULL || amqp_socket_open(sock, run->host, run->port) != AMQP_STATUS_OK) {
        fprintf(stderr, "bench_rabbitmq: cannot connect to %s:%d\n", run->host, run->port);
        amqp_destroy_connection(c);
        return NULL;
    }
    if (s_ok(amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, run->user, run->pass),
             "login") < 0 ||
        (amqp_channel_open(c, 1), s_ok(amqp_get_rpc_reply(c), "channel.open")) < 0) {
        amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

static void s_close(amqp_connection_state_t c)
{
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

/* ---- sender: publish with confirms, a window of unconfirmed ------------------------ */

typedef struct {
    uint64_t *ts;     /* send time by tag % window */
    uint8_t *done;
    uint64_t low;     /* lowest tag not confirmed */
    uint64_t next;    /* next tag to publish */
    int out;
} s_window_t;

static void s_confirm(s_worker_t *w, s_window_t *win, uint64_t tag)
{
    size_t slot = tag % (uint64_t)w->run->window;
    if (tag < win->low || tag >= win->next || win->done[slot])
        return;
    win->done[slot] = 1;
    win->out--;
    atomic_fetch_add(&w->run->confirmed, 1);
    if (atomic_load(&w->run->measuring))
        bu_lat_add(&w->lat, bu_now_ns() - win->ts[slot]);
}

static void *s_sender(void *arg)
{
    s_worker_t *w = arg;
    s_run_t *run = w->run;
    amqp_connection_state_t c = s_connect(run);
    if (c == NULL) {
        w->rc = -1;
        return NULL;
    }
    amqp_confirm_select(c, 1);
    if (s_ok(amqp_get_rpc_reply(c), "confirm.select") < 0) {
        w->rc = -1;
        s_close(c);
        return NULL;
    }
    s_window_t win = {.ts = calloc((size_t)run->window, sizeof(uint64_t)),
                      .done = calloc((size_t)run->window, 1), .low = 1, .next = 1};
    uint8_t body[BU_PAYLOAD] = {0};
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG,
        .delivery_mode = 2, /* persistent */
        .content_type = amqp_cstring_bytes("application/octet-stream"),
    };
    amqp_bytes_t q = amqp_cstring_bytes(run->queue);
    amqp_bytes_t b = {.len = sizeof body, .bytes = body};
    while (!atomic_load(&run->stop)) {
        while (win.out < run->window) {
            uint64_t now = bu_now_ns(), tag = win.next;
            memcpy(body, &tag, 8);
            memcpy(body + 8, &now, 8);
            if (amqp_basic_publish(c, 1, amqp_empty_bytes, q, 0, 0, &props, b) != AMQP_STATUS_OK) {
                fprintf(stderr, "bench_rabbitmq: publish failed\n");
                w->rc = -1;
                goto out;
            }
            size_t slot = tag % (uint64_t)run->window;
            win.ts[slot] = now;
            win.done[slot] = 0;
            win.next++;
            win.out++;
        }
        /* wait for a confirm, then take whatever else is already here */
        struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
        for (int first = 1;; first = 0) {
            amqp_frame_t f;
            struct timeval zero = {0, 0};
            int rc = amqp_simple_wait_frame_noblock(c, &f, first ? &tv : &zero);
            if (rc == AMQP_STATUS_TIMEOUT)
                break;
            if (rc != AMQP_STATUS_OK) {
                fprintf(stderr, "bench_rabbitmq: wait: %s\n", amqp_error_string2(rc));
                w->rc = -1;
                goto out;
            }
            if (f.frame_type != AMQP_FRAME_METHOD)
                continue;
            if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                const amqp_basic_ack_t *a = f.payload.method.decoded;
                uint64_t from = a->multiple ? win.low : a->delivery_tag;
                for (uint64_t t = from; t <= a->delivery_tag; t++)
                    s_confirm(w, &win, t);
            } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                fprintf(stderr, "bench_rabbitmq: the broker nacked a publish\n");
                w->rc = -1;
                goto out;
            } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                       f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
                fprintf(stderr, "bench_rabbitmq: the broker closed the channel\n");
                w->rc = -1;
                goto out;
            }
            while (win.low < win.next && win.done[win.low % (uint64_t)run->window])
                win.low++;
            if (!amqp_frames_enqueued(c) && !amqp_data_in_buffer(c))
                break;
        }
        amqp_maybe_release_buffers(c);
    }
out:
    free(win.ts);
    free(win.done);
    s_close(c);
    return NULL;
}

/* ---- receiver: manual acks, prefetch = window ---------------------------------------- */

static void *s_receiver(void *arg)
{
    s_worker_t *w = arg;
    s_run_t *run = w->run;
    amqp_connection_state_t c = s_connect(run);
    if (c == NULL) {
        w->rc = -1;
        return NULL;
    }
    amqp_basic_qos(c, 1, 0, (uint16_t)run->window, 0);
    if (s_ok(amqp_get_rpc_reply(c), "basic.qos") < 0) {
        w->rc = -1;
        goto out;
    }
    amqp_basic_consume(c, 1, amqp_cstring_bytes(run->queue), amqp_empty_bytes, 0, 0 /* acks */,
                       0, amqp_empty_table);
    if (s_ok(amqp_get_rpc_reply(c), "basic.consume") < 0) {
        w->rc = -1;
        goto out;
    }
    while (!atomic_load(&run->stop)) {
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            s_ok(r, "consume");
            w->rc = -1;
            break;
        }
        if (env.message.body.len >= 16) {
            uint64_t ts;
            memcpy(&ts, (const uint8_t *)env.message.body.bytes + 8, 8);
            if (atomic_load(&run->measuring))
                bu_lat_add(&w->lat, bu_now_ns() - ts);
        }
        if (amqp_basic_ack(c, 1, env.delivery_tag, 0) != AMQP_STATUS_OK) {
            w->rc = -1;
            amqp_destroy_envelope(&env);
            break;
        }
        atomic_fetch_add(&run->received, 1);
        amqp_destroy_envelope(&env);
    }
out:
    s_close(c);
    return NULL;
}

int main(int argc, char **argv)
{
    static s_run_t run;
    run.host = bu_arg(argc, argv, "--host", "127.0.0.1");
    run.port = (int)bu_arg_long(argc, argv, "--port", 5672);
    run.user = bu_arg(argc, argv, "--user", "guest");
    run.pass = bu_arg(argc, argv, "--pass", "guest");
    run.queue = bu_arg(argc, argv, "--queue", "medroute-bench");
    run.senders = (int)bu_arg_long(argc, argv, "--senders", 4);
    run.window = (int)bu_arg_long(argc, argv, "--window", 256);
    double warmup = bu_arg_double(argc, argv, "--warmup-s", 1);
    double duration = bu_arg_double(argc, argv, "--duration-s", 5);
    if (run.senders < 1 || run.senders > S_MAX_SENDERS || run.window < 1 ||
        run.window > 65535 || duration <= 0) {
        fprintf(stderr, "usage: bench_rabbitmq [--port P] [--senders N] [--window W]"
                        " [--warmup-s S] [--duration-s S]\n");
        return 2;
    }
    /* the durable queue, empty */
    amqp_connection_state_t c = s_connect(&run);
    if (c == NULL)
        return 1;
    amqp_queue_declare(c, 1, amqp_cstring_bytes(run.queue), 0, 1 /* durable */, 0, 0,
                       amqp_empty_table);
    if (s_ok(amqp_get_rpc_reply(c), "queue.declare") < 0)
        return 1;
    amqp_queue_purge(c, 1, amqp_cstring_bytes(run.queue));
    if (s_ok(amqp_get_rpc_reply(c), "queue.purge") < 0)
        return 1;

    s_worker_t rcv = {.run = &run};
    s_worker_t snd[S_MAX_SENDERS];
    pthread_t rt, st[S_MAX_SENDERS];
    bu_lat_init(&rcv.lat, 20000000);
    pthread_create(&rt, NULL, s_receiver, &rcv);
    for (int i = 0; i < run.senders; i++) {
        snd[i] = (s_worker_t){.run = &run, .idx = i};
        bu_lat_init(&snd[i].lat, 20000000 / run.senders);
        pthread_create(&st[i], NULL, s_sender, &snd[i]);
    }
    bu_sleep_ms((int)(warmup * 1000));
    atomic_store(&run.measuring, true);
    uint64_t t0 = bu_now_ns();
    unsigned long long r0 = atomic_load(&run.received), c0 = atomic_load(&run.confirmed);
    bu_sleep_ms((int)(duration * 1000));
    uint64_t t1 = bu_now_ns();
    unsigned long long r1 = atomic_load(&run.received), c1 = atomic_load(&run.confirmed);
    atomic_store(&run.measuring, false);
    atomic_store(&run.stop, true);
    int rc = 0;
    bu_lat_t ack;
    bu_lat_init(&ack, SIZE_MAX);
    for (int i = 0; i < run.senders; i++) {
        pthread_join(st[i], NULL);
        bu_lat_merge(&ack, &snd[i].lat);
        bu_lat_close(&snd[i].lat);
        rc |= snd[i].rc;
    }
    pthread_join(rt, NULL);
    rc |= rcv.rc;
    amqp_queue_delete(c, 1, amqp_cstring_bytes(run.queue), 0, 0);
    (void)amqp_get_rpc_reply(c);
    s_close(c);

    double secs = (double)(t1 - t0) / 1e9;
    printf("{\"bench\":\"rabbitmq\",\"mode\":\"throughput\",\"senders\":%d,\"window\":%d,"
           "\"payload\":%d,\"secs\":%.3f,\"msgs\":%llu,\"msgs_per_s\":%.0f,"
           "\"confirmed_per_s\":%.0f",
           run.senders, run.window, BU_PAYLOAD, secs, r1 - r0, (double)(r1 - r0) / secs,
           (double)(c1 - c0) / secs);
    bu_lat_json(stdout, "ack", &ack);
    bu_lat_json(stdout, "dlv", &rcv.lat);
    printf(",\"ok\":%s}\n", rc == 0 && r1 > r0 ? "true" : "false");
    bu_lat_close(&ack);
    bu_lat_close(&rcv.lat);
    return rc == 0 && r1 > r0 ? 0 : 1;
}
