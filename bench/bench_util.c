/*
 * bench_util.c - clocks, latency percentiles, /proc figures and ports for
 * the benchmark programs.  See bench_util.h.
 */
#include "bench_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t bu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void bu_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void bu_lat_init(bu_lat_t *l, size_t max)
{
    memset(l, 0, sizeof *l);
    l->max = max;
}

void bu_lat_close(bu_lat_t *l)
{
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int s_reserve(bu_lat_t *l, size_t want)
{
    if (want <= l->cap)
        return 0;
    size_t cap = l->cap ? l->cap : 4096;
    while (cap < want)
        cap *= 2;
    uint32_t *v = realloc(l->v, cap * sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    l->v = v;
    l->cap = cap;
    return 0;
}

void bu_lat_add(bu_lat_t *l, uint64_t ns)
{
    if (l->n >= l->max || s_reserve(l, l->n + 1) < 0)
        return;
    uint64_t us = ns / 1000;
    l->v[l->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

int bu_lat_merge(bu_lat_t *dst, const bu_lat_t *src)
{
    if (src->n == 0)
        return 0;
    if (s_reserve(dst, dst->n + src->n) < 0)
        return -ENOMEM;
    memcpy(dst->v + dst->n, src->v, src->n * sizeof *src->v);
    dst->n += src->n;
    return 0;
}

static int s_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void bu_lat_sort(bu_lat_t *l)
{
    if (l->n > 1)
        qsort(l->v, l->n, sizeof *l->v, s_cmp);
}

double bu_lat_pct(const bu_lat_t *l, double p)
{
    if (l->n == 0)
        return 0;
    /* nearest rank */
    size_t rank = (size_t)((p / 100.0) * (double)l->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > l->n)
        rank = l->n;
    return l->v[rank - 1];
}

void bu_lat_json(FILE *out, const char *prefix, bu_lat_t *l)
{
    bu_lat_sort(l);
    fprintf(out, ",\"%s_p50_us\":%.0f,\"%s_p99_us\":%.0f,\"%s_p999_us\":%.0f,\"%s_n\":%zu", prefix,
            bu_lat_pct(l, 50), prefix, bu_lat_pct(l, 99), prefix, bu_lat_pct(l, 99.9), prefix,
            l->n);
}

int bu_proc_mem(pid_t pid, long *rss_kb, long *hwm_kb)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    *rss_kb = *hwm_kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            *rss_kb = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            *hwm_kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return 0;
}

/* The comm and the utime + stime of one /proc/PID/task/TID. */
static int s_task_cpu(pid_t pid, const char *tid, char *name, size_t len, double *secs)
{
    char path[96], line[1024];
    snprintf(path, sizeof path, "/proc/%d/task/%s/comm", (int)pid, tid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    bool got = fgets(name, (int)len, f) != NULL;
    fclose(f);
    if (!got)
        return -EIO;
    name[strcspn(name, "\n")] = '\0';
    snprintf(path, sizeof path, "/proc/%d/task/%s/stat", (int)pid, tid);
    f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    /* Fields after the ")" that closes comm: 3 state ... 14 utime 15 stime. */
    char *p = got ? strrchr(line, ')') : NULL;
    unsigned long long ut = 0, st = 0;
    if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                            &st) != 2)
        return -EIO;
    *secs = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return 0;
}

int bu_proc_cpu(pid_t pid, bu_cpu_t *out)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -errno;
    out->n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char name[16];
        double secs;
        if (e->d_name[0] == '.' || s_task_cpu(pid, e->d_name, name, sizeof name, &secs) != 0)
            continue; /* a thread that ended meanwhile */
        size_t i = 0;
        while (i < out->n && strcmp(out->t[i].name, name) != 0)
            i++;
        if (i == out->n) {
            if (out->n == BU_THREAD_NAMES)
                continue;
            snprintf(out->t[i].name, sizeof out->t[i].name, "%s", name);
            out->t[i].secs = 0;
            out->n++;
        }
        out->t[i].secs += secs;
    }
    closedir(d);
    return 0;
}

void bu_cpu_json(FILE *out, const char *prefix, const bu_cpu_t *a, const bu_cpu_t *b,
                 double msgs)
{
    fprintf(out, ",\"%s\":{", prefix);
    double total = 0;
    for (size_t i = 0; i < b->n && msgs > 0; i++) {
        double before = 0;
        for (size_t j = 0; j < a->n; j++)
            if (strcmp(a->t[j].name, b->t[i].name) == 0)
                before = a->t[j].secs;
        double us = (b->t[i].secs - before) * 1e6 / msgs;
        total += us;
        fprintf(out, "\"%s\":%.1f,", b->t[i].name, us);
    }
    fprintf(out, "\"total\":%.1f}", total);
}

int bu_free_port(void)
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

void bu_pace_init(bu_pace_t *p, double per_s)
{
    p->start_ns = bu_now_ns();
    p->interval_ns = per_s > 0 ? 1e9 / per_s : 0;
    p->n = 0;
}

uint64_t bu_pace_wait_ns(const bu_pace_t *p)
{
    uint64_t due = p->start_ns + (uint64_t)(p->interval_ns * (double)p->n);
    uint64_t now = bu_now_ns();
    return due > now ? due - now : 0;
}

void bu_pace_take(bu_pace_t *p)
{
    p->n++;
}

const char *bu_arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

long bu_arg_long(int argc, char **argv, const char *name, long def)
{
    const char *v = bu_arg(argc, argv, name, NULL);
    return v ? strtol(v, NULL, 10) : def;
}

double bu_arg_double(int argc, char **argv, const char *name, double def)
{
    const char *v = bu_arg(argc, argv, name, NULL);
    return v ? strtod(v, NULL) : def;
}
