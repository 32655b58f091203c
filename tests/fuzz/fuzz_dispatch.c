/*
 * fuzz_dispatch.c - libFuzzer target: the facility dispatch path.
 *
 * The input is one ZeroMQ message part from a facility connection.  It goes
 * to dispatch_facility() (size, decode, version, Hello rule, then the
 * session / intake / router handlers) once from a connection bound to each
 * facility of the configuration below, and once from an unbound connection;
 * then the uv loop turns (UV_RUN_NOWAIT, a bounded number of times) so that
 * the store thread's commits come back and their callbacks run (Ack,
 * routing, deliveries).
 *
 * The server_t is built by hand as in tests/unit/test_dispatch.c, once per
 * fuzzer process (a static: allowed for a fuzz harness, where libFuzzer owns
 * main): a config from text, its registry, peers, the routing-id map, a real
 * store in a mkdtemp directory, and a real facility endpoint bound to an
 * inproc:// address that nobody connects to, so that the router sends (its
 * pump stops when facility_ep is NULL) and endpoint_user_id() answers.  The
 * target is linked with -Wl,--wrap=server_send_facility: every reply lands
 * in __wrap_server_send_facility, which packs it and checks that it decodes
 * as a Frame, as a facility would read it.  Nothing is sent on a socket.
 *
 * State carries over from one input to the next (stored messages, deliveries
 * in flight, sessions) as it does in a running broker; each input starts by
 * binding every facility's connection again and unbinding the other one.
 * At exit the server is torn down, so LeakSanitizer sees what is left.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "acks.h"
#include "arena.h"
#include "dispatch.h"
#include "fuzz_util.h"
#include "router.h"
#include "server.h"
#include "session.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int __wrap_server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                                const ProtobufCMessage *frame);

#define S_SETTLE_TURNS 2000   /* loop turns at most per input */
#define S_CRON_EVERY 64       /* inputs between cron passes */

/* Facility ids of make_seeds.c must match these. */
static const char *const s_conf_text =
    "broker_id = \"fuzz-broker\";\n"
    "facility_endpoint = \"inproc://fuzz-facility\";\n"
    "operator_endpoint = \"inproc://fuzz-operator\";\n"
    "data_dir = \"unused\";\n"
    "insecure = true;\n"
    "limits = { max_message_bytes = 65536; max_inflight = 8;\n"
    "           heartbeat_interval_ms = 1000; heartbeat_timeout_ms = 3000;\n"
    "           redelivery_timeout_ms = 100; };\n"
    "facilities = (\n"
    "  { id = \"lead\"; role = \"lead\"; },\n"
    "  { id = \"img\"; role = \"imaging_centre\"; host = \"lead\"; },\n"
    "  { id = \"lab\"; role = \"lab_centre\"; host = \"lead\"; },\n"
    "  { id = \"t-a\"; role = \"township\"; },\n"
    "  { id = \"t-b\"; role = \"township\"; }\n"
    ");\n";

typedef struct {
    server_t *s;
    FILE *logf;
    char dir[256];
    char path[300];
    uint64_t inputs;
    uint64_t replies;
} s_harness_t;

static s_harness_t s_h;

int __wrap_server_send_facility(server_t *self, const uint8_t *rid, size_t rid_len,
                                const ProtobufCMessage *frame)
{
    (void)self;
    FUZZ_CHECK(rid != NULL && rid_len > 0 && rid_len <= MR_RID_MAX);
    FUZZ_CHECK(frame->descriptor == &medroute__v1__frame__descriptor);
    uint8_t *buf = NULL;
    size_t len = 0;
    FUZZ_CHECK(mr_pack(frame, &buf, &len) == 0);
    mr_frame_t *f = medroute__v1__frame__unpack(NULL, len, buf);
    FUZZ_CHECK(f != NULL);
    FUZZ_CHECK(f->version == MR_PROTOCOL_VERSION);
    FUZZ_CHECK(f->body_case != MEDROUTE__V1__FRAME__BODY__NOT_SET);
    if (f->body_case == MEDROUTE__V1__FRAME__BODY_ERROR)
        FUZZ_CHECK(f->error->code > 0 && f->error->code < MR_E_COUNT);
    medroute__v1__frame__free_unpacked(f, NULL);
    free(buf);
    s_h.replies++;
    return 0;
}

static void s_rid(uint8_t rid[8], int i)
{
    /* Like a ZeroMQ-generated routing id: a leading zero byte. */
    memcpy(rid, "\0fz-con", 7);
    rid[7] = (uint8_t)('0' + i);
}

static void s_feed(server_t *s, const uint8_t *rid, const void *data, size_t size)
{
    const void *parts[1] = {data};
    size_t sizes[1] = {size};
    dispatch_facility(s, rid, 8, parts, sizes, 1, 0);
}

static void s_hello(server_t *s, const uint8_t *rid, const char *facility_id)
{
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = (char *)facility_id;
    h.client_name = "fuzz/1";
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    uint8_t *buf = NULL;
    size_t len = 0;
    FUZZ_CHECK(mr_pack(&f.base, &buf, &len) == 0);
    s_feed(s, rid, buf, len);
    free(buf);
}

/* Turns the loop until the store has answered everything, at most
 * S_SETTLE_TURNS times. */
static void s_settle(server_t *s)
{
    uv_run(&s->loop, UV_RUN_NOWAIT);
    for (int i = 0; i < S_SETTLE_TURNS && store_backlog(s->store) > 0; i++) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
}

static void s_rm(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

static void s_teardown(void)
{
    server_t *s = s_h.s;
    if (s == NULL)
        return;
    s_settle(s);
    endpoint_destroy(&s->facility_ep);
    store_destroy(&s->store);
    acks_close(&s->acks);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&s->loop) != 0)
        fprintf(stderr, "fuzz_dispatch: uv loop still has handles at exit\n");
    router_stop(s);
    zmq_ctx_term(s->zctx);
    strmap_destroy(&s->by_rid);
    strmap_destroy(&s->by_former_rid);
    arena_destroy(&s->arena);
    free(s->peers);
    registry_destroy(&s->registry);
    conf_destroy(&s->conf);
    log_destroy(&s->log);
    fclose(s_h.logf);
    free(s);
    s_h.s = NULL;
    s_rm(s_h.dir, "medroute.db");
    s_rm(s_h.dir, "medroute.db-wal");
    s_rm(s_h.dir, "medroute.db-shm");
    rmdir(s_h.dir);
    fprintf(stderr, "fuzz_dispatch: %llu inputs, %llu replies\n",
            (unsigned long long)s_h.inputs, (unsigned long long)s_h.replies);
}

static void s_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(s_h.dir, sizeof s_h.dir, "%s/mr-fuzz-dispatch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(s_h.dir) != NULL);
    snprintf(s_h.path, sizeof s_h.path, "%s/medroute.db", s_h.dir);
    server_t *s = calloc(1, sizeof *s);
    FUZZ_CHECK(s != NULL);
    FUZZ_CHECK(uv_loop_init(&s->loop) == 0);
    /* Debug level, so that every log line (and log_clean on peer strings)
     * runs; the lines go nowhere. */
    s_h.logf = fopen("/dev/null", "w");
    FUZZ_CHECK(s_h.logf != NULL);
    s->log = log_new(MR_LOG_DEBUG, s_h.logf);
    char err[1024];
    s->conf = conf_load_string(s_conf_text, "fuzz.conf", err, sizeof err);
    if (s->log == NULL || s->conf == NULL)
        fuzz_fail(__FILE__, __LINE__, "harness configuration", err);
    s->registry = registry_new(s->conf->facilities, s->conf->n_facilities, err, sizeof err);
    if (s->registry == NULL)
        fuzz_fail(__FILE__, __LINE__, "harness registry", err);
    s->peers = calloc(registry_count(s->registry), sizeof *s->peers);
    s->by_rid = strmap_new();
    s->by_former_rid = strmap_new();
    s->arena = arena_new(4096);
    store_opts_t so = {.path = s_h.path, .sync_full = false, .batch_max = 100, .batch_ms = 1};
    s->store = store_new(&s->loop, &so, s->log);
    s->acks = acks_new(&s->loop, s);
    FUZZ_CHECK(s->peers != NULL && s->by_rid != NULL && s->by_former_rid != NULL &&
               s->arena != NULL && s->store != NULL && s->acks != NULL);
    FUZZ_CHECK(router_start(s) == 0);
    s->zctx = zmq_ctx_new();
    FUZZ_CHECK(s->zctx != NULL);
    endpoint_opts_t fo = {.name = "facility",
                          .bind = s->conf->facility_endpoint,
                          .hard_max_bytes = (int)(s->conf->max_message_bytes * 2 + 4096),
                          .budget = 512};
    s->facility_ep = endpoint_new(&s->loop, s->zctx, &fo, dispatch_facility, s, s->log);
    FUZZ_CHECK(s->facility_ep != NULL);
    s->started_at_ms = mr_now_ms();
    s_settle(s);
    s_h.s = s;
    atexit(s_teardown);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    s_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    server_t *s = s_h.s;
    size_t n = registry_count(s->registry);
    uint8_t rid[8];
    s_h.inputs++;

    /* From each facility's own, bound connection. */
    for (size_t i = 0; i < n; i++) {
        s_rid(rid, (int)i);
        if (session_find(s, rid, sizeof rid) != (int)i) {
            int other = session_find(s, rid, sizeof rid);
            if (other >= 0)
                session_end(s, other, "fuzz_rebind");
            s_hello(s, rid, registry_at(s->registry, i)->id);
            FUZZ_CHECK(session_find(s, rid, sizeof rid) == (int)i);
        }
        s_feed(s, rid, data, size);
    }
    /* From a connection that has not said Hello. */
    s_rid(rid, 9);
    int bound = session_find(s, rid, sizeof rid);
    if (bound >= 0)
        session_end(s, bound, "fuzz_unbind");
    s_feed(s, rid, data, size);

    s_settle(s);
    if (s_h.inputs % S_CRON_EVERY == 0) {
        int64_t now = mr_now_ms(), mono = mr_mono_ms();
        session_cron(s, now, mono);
        router_cron(s, now, mono);
        s_settle(s);
    }
    return 0;
}
