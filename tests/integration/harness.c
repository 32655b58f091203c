/*
 * harness.c - process control for integration tests: config, fork/exec,
 * readiness, kill, restart.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MEDROUTED_PATH
#error "MEDROUTED_PATH must name the medrouted binary"
#endif

const char *const mrt_facilities_conf =
    "facilities = (\n"
    "  { id = \"yx-lead\"; role = \"lead\"; name = \"Yun County People's Hospital\"; },\n"
    "  { id = \"yx-imaging\"; role = \"imaging_centre\"; host = \"yx-lead\"; },\n"
    "  { id = \"yx-lab\"; role = \"lab_centre\"; host = \"yx-lead\"; },\n"
    "  { id = \"yx-ecg\"; role = \"ecg_centre\"; host = \"yx-lead\"; },\n"
    "  { id = \"t-aihua\"; role = \"township\"; },\n"
    "  { id = \"t-manwan\"; role = \"township\"; },\n"
    "  { id = \"t-lishu\"; role = \"township\"; },\n"
    "  { id = \"t-houqing\"; role = \"township\"; }\n"
    ");\n";

long long mrt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A port the kernel just gave us, released again for the daemon. */
static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* The daemon's last lines go to stderr, which ctest shows only for a failed
 * test: what the broker saw is then in CI's output, next to the assertion. */
static void s_print_log_tail(const char *log_path)
{
    FILE *f = fopen(log_path, "r");
    if (f == NULL)
        return;
    char buf[6000];
    long start = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        start = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    }
    size_t n = 0;
    if (fseek(f, start, SEEK_SET) == 0)
        n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *from = buf;
    const char *nl = start > 0 ? strchr(buf, '\n') : NULL;
    if (nl != NULL)
        from = nl + 1;
    fprintf(stderr, "--- the end of %s ---\n%s--- end ---\n", log_path, from);
}

/* The logs of the daemons started and not cleaned up yet: an assertion that
 * fails mid-test skips the test's mrt_daemon_cleanup, and with it the log's
 * tail, so the process prints those at exit (ctest shows it on failure). */
#define S_LOGS_MAX 64
static char s_logs[S_LOGS_MAX][300];

static void s_print_left_logs(void)
{
    for (int i = 0; i < S_LOGS_MAX; i++)
        if (s_logs[i][0] != '\0') {
            fprintf(stderr, "(a daemon its test did not clean up, e.g. a failed assertion)\n");
            s_print_log_tail(s_logs[i]);
        }
}

static void s_log_started(const char *log_path)
{
    static bool registered;
    if (!registered)
        registered = atexit(s_print_left_logs) == 0;
    for (int i = 0; i < S_LOGS_MAX; i++)
        if (s_logs[i][0] == '\0') {
            snprintf(s_logs[i], sizeof s_logs[i], "%s", log_path);
            return;
        }
}

static void s_log_cleaned(const char *log_path)
{
    for (int i = 0; i < S_LOGS_MAX; i++)
        if (strcmp(s_logs[i], log_path) == 0)
            s_logs[i][0] = '\0';
}

static int s_spawn(mrt_daemon_t *d)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* The daemon dies with the test, even when a failed assertion
         * skipped the test's own clean-up; and it must not hold the test's
         * stdout, which ctest waits on. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        for (int i = 0; i < MRT_ENV_MAX; i++)
            if (d->env[i][0])
                putenv(d->env[i]);
        execl(MEDROUTED_PATH, "medrouted", "--config", d->conf_path, (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    d->starts = mrt_log_count(d, "event=server.ready");
    if (d->starts < 0)
        d->starts = 0;
    /* Ready when the operator endpoint answers a status request. */
    for (int i = 0; i < 100; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            d->pid = 0;
            return -1;
        }
        char *r = mrt_operator_wait(d, "{\"status\":{}}", 100);
        if (r != NULL) {
            free(r);
            return 0;
        }
        /* With CURVE a plaintext status cannot answer: ready when the log says so. */
        if (mrt_log_count(d, "event=server.ready") > d->starts) {
            usleep(50000);
            d->starts++;
            return 0;
        }
    }
    return -1;
}

int mrt_daemon_start(mrt_daemon_t *d, const char *extra)
{
    return mrt_daemon_start_with(d, mrt_facilities_conf, extra, true);
}

static int s_start_once(mrt_daemon_t *d, const char *facilities, const char *extra,
                        bool insecure);

/* Another process (the tests run two at a time, and anything else on the
 * machine) may bind a free port between its pick and the daemon's bind:
 * such a start is tried again with new ports, three times at most. */
int mrt_daemon_start_with(mrt_daemon_t *d, const char *facilities, const char *extra,
                          bool insecure)
{
    for (int attempt = 1;; attempt++) {
        int rc = s_start_once(d, facilities, extra, insecure);
        bool taken = rc == -2 || (rc != 0 && (mrt_log_count(d, "event=endpoint.bind_failed") > 0 ||
                                              mrt_log_count(d, "event=http.start_failed") > 0));
        if (rc == 0 || !taken || attempt == 3)
            return rc == 0 ? 0 : -1;
        fprintf(stderr, "harness: a port was taken before medrouted bound it (attempt %d)\n",
                attempt);
        mrt_daemon_cleanup(d);
    }
}

/* 0 when ready; -2 when the ports picked collide; -1 otherwise. */
static int s_start_once(mrt_daemon_t *d, const char *facilities, const char *extra,
                        bool insecure)
{
    char env[MRT_ENV_MAX][300];
    memcpy(env, d->env, sizeof env); /* set by the caller before starting */
    bool use_ipc = d->use_ipc;
    memset(d, 0, sizeof *d);
    memcpy(d->env, env, sizeof env);
    d->use_ipc = use_ipc;
    snprintf(d->dir, sizeof d->dir, "/tmp/mrtest-XXXXXX");
    if (mkdtemp(d->dir) == NULL)
        return -1;
    int p1 = s_free_port(), p2 = s_free_port(), p3 = s_free_port();
    if (p1 < 0 || p2 < 0 || p3 < 0)
        return -1;
    if (p1 == p2 || p2 == p3 || p1 == p3)
        return -2;
    d->http_port = p3;
    snprintf(d->http_listen, sizeof d->http_listen, "127.0.0.1:%d", p3);
    if (d->use_ipc) {
        snprintf(d->facility_ep, sizeof d->facility_ep, "ipc://%s/f.sock", d->dir);
        snprintf(d->operator_ep, sizeof d->operator_ep, "ipc://%s/o.sock", d->dir);
    } else {
        snprintf(d->facility_ep, sizeof d->facility_ep, "tcp://127.0.0.1:%d", p1);
        snprintf(d->operator_ep, sizeof d->operator_ep, "tcp://127.0.0.1:%d", p2);
    }
    snprintf(d->conf_path, sizeof d->conf_path, "%s/medroute.conf", d->dir);
    snprintf(d->log_path, sizeof d->log_path, "%s/medrouted.log", d->dir);
    if (mrt_daemon_rewrite(d, facilities, extra, insecure) != 0)
        return -1;
    s_log_started(d->log_path);
    return s_spawn(d);
}

int mrt_daemon_rewrite(mrt_daemon_t *d, const char *facilities, const char *extra,
                       bool insecure)
{
    FILE *f = fopen(d->conf_path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "broker_id = \"test\";\nfacility_endpoint = \"%s\";\noperator_endpoint = \"%s\";\n"
            "http_listen = \"%s\";\n"
            "data_dir = \"%s/var\";\ninsecure = %s;\nlog_level = \"debug\";\n%s\n%s\n",
            d->facility_ep, d->operator_ep, d->http_listen, d->dir, insecure ? "true" : "false",
            facilities, extra ? extra : "");
    return fclose(f) == 0 ? 0 : -1;
}

int mrt_daemon_reload(mrt_daemon_t *d)
{
    int done = mrt_log_count(d, "event=server.reloaded ");
    int refused = mrt_log_count(d, "event=server.reload_refused");
    if (d->pid <= 0 || kill(d->pid, SIGHUP) != 0)
        return -1;
    for (long long until = mrt_now_ms() + 10000; mrt_now_ms() < until; usleep(50 * 1000)) {
        if (mrt_log_count(d, "event=server.reloaded ") > done)
            return 0;
        if (mrt_log_count(d, "event=server.reload_refused") > refused)
            return 1;
    }
    return -1;
}

int mrt_keygen(const char *dir, const char *name, mrt_keys_t *k)
{
    char path[400];
    if (mr_keygen(dir, name, k->pub) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/%s.key", dir, name);
    return mr_key_read(path, k->sec, NULL) == 0 ? 0 : -1;
}

int mrt_daemon_restart(mrt_daemon_t *d)
{
    return s_spawn(d);
}

int mrt_daemon_stop(mrt_daemon_t *d)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; i++) {
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        usleep(50 * 1000);
    }
    mrt_daemon_kill(d);
    return -1;
}

void mrt_daemon_kill(mrt_daemon_t *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

void mrt_daemon_cleanup(mrt_daemon_t *d)
{
    mrt_daemon_kill(d);
    if (d->dir[0] != '\0') {
        s_print_log_tail(d->log_path);
        s_log_cleaned(d->log_path);
    }
    if (d->dir[0] == '\0' || getenv("MRT_KEEP") != NULL)
        return;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d->dir);
}

int mrt_log_count(const mrt_daemon_t *d, const char *needle)
{
    FILE *f = fopen(d->log_path, "r");
    if (f == NULL)
        return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

mr_client_t *mrt_client(const mrt_daemon_t *d, const char *facility, const char *state_tag)
{
    char state[400];
    if (state_tag)
        snprintf(state, sizeof state, "%s/state-%s", d->dir, state_tag);
    mr_client_opts_t o = {
        .endpoint = d->facility_ep,
        .facility = facility,
        .state_dir = state_tag ? state : NULL,
        .client_name = "mrtest",
        .ack_timeout_ms = 2000,
    };
    return mr_client_new(&o);
}

long long mrt_counter(const mrt_daemon_t *d, const char *name)
{
    char *text = mrt_operator(d, "{\"status\":{}}");
    json_t *st = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    long long v = -1;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(json_object_get(st, "status"), "counters"), i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        json_t *value = json_object_get(c, "value");
        if (n != NULL && strcmp(n, name) == 0)
            v = json_is_string(value) ? atoll(json_string_value(value))
                                      : (long long)json_integer_value(value);
    }
    json_decref(st);
    return v;
}

int mrt_submit_orders(mr_client_t *c, const char *to, const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        char json[256], err[100];
        snprintf(json, sizeof json,
                 "{\"destination\":\"%s\",\"kind\":\"lab_order\",\"lab_order\":"
                 "{\"placer_order_number\":\"%s-%d\"}}", to, prefix, i);
        int rc = mr_client_submit_json(c, json, NULL, err, sizeof err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

bool mrt_poll_until(mr_client_t *c, int timeout_ms, bool (*pred)(void *), void *arg,
                    mr_handler_t h, void *harg)
{
    long long deadline = mrt_now_ms() + timeout_ms;
    while (!pred(arg)) {
        long long left = deadline - mrt_now_ms();
        if (left <= 0)
            return false;
        mr_client_poll(c, left < 50 ? (int)left : 50, h, harg);
    }
    return true;
}

char *mrt_operator(const mrt_daemon_t *d, const char *request_json)
{
    return mrt_operator_wait(d, request_json, 10000);
}

char *mrt_operator_wait(const mrt_daemon_t *d, const char *request_json, int timeout_ms)
{
    mr_operator_t *op = mr_operator_new(d->operator_ep);
    if (op == NULL)
        return NULL;
    char *reply = NULL;
    char err[256];
    int rc = mr_operator_call_json(op, request_json, &reply, timeout_ms, err, sizeof err);
    mr_operator_destroy(&op);
    if (rc < 0 && rc != -EPROTO) {
        free(reply);
        return NULL;
    }
    return reply;
}

long mrt_count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    long n = 0;
    int ch;
    while ((ch = getc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

char *mrt_lab_order_json(const char *id, size_t pad)
{
    char *fill = malloc(pad + 1);
    size_t n = pad + 512;
    char *json = malloc(n);
    if (fill == NULL || json == NULL) {
        free(fill);
        free(json);
        return NULL;
    }
    memset(fill, 'x', pad);
    fill[pad] = '\0';
    snprintf(json, n,
             "{\"message_id\":\"%s\",\"destination\":\"yx-lab\",\"kind\":\"lab_order\","
             "\"lab_order\":{\"placer_order_number\":\"%s\",\"clinical_info\":\"%s\"}}",
             id, id, fill);
    free(fill);
    return json;
}

int mrt_send(mr_client_t *c, const char *to, const char *kind, const char *priority,
             const char *payload, char *reason_out)
{
    size_t len = strlen(payload) + 256;
    char *json = malloc(len);
    if (json == NULL)
        return -1;
    snprintf(json, len, "{\"destination\":\"%s\",\"kind\":\"%s\",\"priority\":\"%s\",\"%s\":%s}",
             to, kind, priority, kind, payload);
    mr_result_t res;
    int rc = mr_client_send_json(c, json, &res, 10000, NULL, NULL);
    free(json);
    if (reason_out)
        snprintf(reason_out, 200, "%.199s", res.reason);
    if (rc == 0)
        return 0;
    return rc == -EPROTO ? res.code : -1;
}

char *mrt_http_fetch(const mrt_daemon_t *d, const char *path, int timeout_s, int *status)
{
    if (status != NULL)
        *status = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 65536, used = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (buf && (got = read(fd, buf + used, cap - used - 1)) > 0) {
        used += (size_t)got;
        if (used + 1 == cap) {
            char *b = realloc(buf, cap * 2);
            if (b == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    close(fd);
    if (buf == NULL)
        return NULL;
    buf[used] = '\0';
    int code = 0;
    if (status != NULL && sscanf(buf, "HTTP/1.%*d %d", &code) == 1)
        *status = code;
    char *body = strstr(buf, "\r\n\r\n");
    char *out = body ? strdup(body + 4) : NULL;
    free(buf);
    return out;
}

char *mrt_http_get(const mrt_daemon_t *d, const char *path)
{
    return mrt_http_fetch(d, path, 5, NULL);
}
