/*
 * crash_peer.c - a sender or receiver process for the crash tests.
 *
 *   crash_peer send ENDPOINT FACILITY DEST COUNT STATE_DIR ACKED_FILE
 *     submits COUNT referrals "FACILITY-i" (i = 0..COUNT-1) with a window of
 *     50 unacknowledged, appending each Acked id to ACKED_FILE and each
 *     submitted index to ACKED_FILE.sub; exits 0 when all are acknowledged.
 *     A restarted sender continues after its last recorded submission; one
 *     submitted but not yet recorded is submitted again with the same id and
 *     bytes, which the library and broker absorb.
 *   crash_peer recv ENDPOINT FACILITY STATE_DIR OUT_FILE EXPECT
 *     appends "source id redelivered" for every delivery its handler gets,
 *     flushed before the handler returns; exits 0 after EXPECT lines in
 *     OUT_FILE in total (over all of its lives) or 20 s without traffic.
 *   crash_peer die ENDPOINT FACILITY STATE_DIR OUT_FILE
 *     appends the same line for the first delivery and kills itself with
 *     SIGKILL inside the handler, leaving that delivery marked IN_HANDLER in
 *     STATE_DIR; exits 1 after 20 s without a delivery.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "medroute.h"

static long long s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    FILE *out;
    long acked;
    long received;
    long long last_traffic;
} peer_t;

static int on_send_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    peer_t *p = arg;
    if (ev->type == MR_EVENT_ACK) {
        fprintf(p->out, "%s\n", ev->message_id);
        fflush(p->out);
        p->acked++;
        p->last_traffic = s_now();
    } else if (ev->type == MR_EVENT_ERROR) {
        fprintf(stderr, "sender: error %s for %s: %s\n", ev->code_name, ev->message_id,
                ev->reason);
    }
    return 0;
}

static long s_count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    long n = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF)
        if (ch == '\n')
            n++;
    fclose(f);
    return n;
}

static int s_send(int argc, char **argv)
{
    if (argc != 8)
        return 2;
    const char *endpoint = argv[2], *facility = argv[3], *dest = argv[4];
    long count = atol(argv[5]);
    peer_t p = {.out = fopen(argv[7], "a")};
    char sub_path[512];
    snprintf(sub_path, sizeof sub_path, "%s.sub", argv[7]);
    FILE *sub = fopen(sub_path, "a");
    if (p.out == NULL || sub == NULL)
        return 2;
    mr_client_opts_t o = {.endpoint = endpoint, .facility = facility, .state_dir = argv[6],
                          .ack_timeout_ms = 3000};
    mr_client_t *c = mr_client_new(&o);
    if (c == NULL)
        return 2;
    /* Continue after the last recorded submission; the outbox resends the rest. */
    long next = s_count_lines(sub_path);
    p.acked = s_count_lines(argv[7]);
    p.last_traffic = s_now();
    /* Done when every index is submitted and the outbox is empty. */
    while (next < count || mr_client_unacked(c) > 0) {
        while (next < count && mr_client_unacked(c) < 50) {
            char json[512];
            snprintf(json, sizeof json,
                     "{\"message_id\":\"%s-%ld\",\"created_at_ms\":%ld,\"destination\":\"%s\","
                     "\"kind\":\"referral\",\"priority\":\"urgent\",\"referral\":{\"referral_id\":"
                     "\"R-%s-%ld\",\"service\":\"SERVICE_INPATIENT_BED\"}}",
                     facility, next, 1790000000000L + next, dest, facility, next);
            char err[256];
            if (mr_client_submit_json(c, json, NULL, err, sizeof err) != 0) {
                fprintf(stderr, "sender: %s\n", err);
                return 1;
            }
            fprintf(sub, "%ld\n", next);
            fflush(sub);
            next++;
        }
        mr_client_poll(c, 50, on_send_event, &p);
        if (s_now() - p.last_traffic > 60000) {
            fprintf(stderr, "sender %s: no Ack for 60 s (%ld acked in this life)\n", facility,
                    p.acked);
            return 1;
        }
    }
    mr_client_destroy(&c);
    fclose(sub);
    fclose(p.out);
    return 0;
}

static int on_recv_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    (void)c;
    peer_t *p = arg;
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    fprintf(p->out, "%s %s %d\n", ev->delivery->source, ev->delivery->message_id,
            ev->delivery->redelivered ? 1 : 0);
    fflush(p->out);
    p->received++;
    p->last_traffic = s_now();
    return 0;
}

static int s_recv(int argc, char **argv)
{
    if (argc != 7)
        return 2;
    long expect = atol(argv[6]);
    peer_t p = {.out = fopen(argv[5], "a")};
    if (p.out == NULL)
        return 2;
    p.received = s_count_lines(argv[5]);
    mr_client_opts_t o = {.endpoint = argv[2], .facility = argv[3], .state_dir = argv[4]};
    mr_client_t *c = mr_client_new(&o);
    if (c == NULL)
        return 2;
    p.last_traffic = s_now();
    while (p.received < expect && s_now() - p.last_traffic < 20000)
        mr_client_poll(c, 100, on_recv_event, &p);
    /* Let the last DeliveryAcks go out. */
    for (int i = 0; i < 5; i++)
        mr_client_poll(c, 20, on_recv_event, &p);
    mr_client_destroy(&c);
    fclose(p.out);
    return p.received >= expect ? 0 : 1;
}

/* Dies as a crash would, between the IN_HANDLER mark and the handler's return. */
static int on_die_event(mr_client_t *c, const mr_event_t *ev, void *arg)
{
    if (ev->type != MR_EVENT_DELIVERY)
        return 0;
    (void)on_recv_event(c, ev, arg);
    raise(SIGKILL);
    return -1; /* not reached */
}

static int s_die(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    peer_t p = {.out = fopen(argv[5], "a")};
    if (p.out == NULL)
        return 2;
    mr_client_opts_t o = {.endpoint = argv[2], .facility = argv[3], .state_dir = argv[4]};
    mr_client_t *c = mr_client_new(&o);
    if (c == NULL)
        return 2;
    long long start = s_now();
    while (s_now() - start < 20000)
        mr_client_poll(c, 100, on_die_event, &p);
    mr_client_destroy(&c);
    fclose(p.out);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "send") == 0)
        return s_send(argc, argv);
    if (argc > 1 && strcmp(argv[1], "recv") == 0)
        return s_recv(argc, argv);
    if (argc > 1 && strcmp(argv[1], "die") == 0)
        return s_die(argc, argv);
    fprintf(stderr, "usage: crash_peer send|recv|die ...\n");
    return 2;
}
