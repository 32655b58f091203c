/*
 * bench_util.h - what the benchmark programs share: clocks, latency
 * samples and percentiles, a one-line JSON result, /proc figures, free
 * loopback ports, a run-wide stop flag.
 *
 * Nothing here is part of medroute: the benchmarks link libmedroute (and
 * the generated codec to build envelopes), never daemon/ code.
 * Threads: bu_lat_t is used by one thread; merge them after joining.
 */
#ifndef MR_BENCH_UTIL_H
#define MR_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Payload bytes of one benchmark message, as the issue asks. */
#define BU_PAYLOAD 512

/* CLOCK_MONOTONIC in nanoseconds: comparable between the threads of one process. */
uint64_t bu_now_ns(void);
void bu_sleep_ms(int ms);

/* Latency samples in microseconds, kept whole and sorted at the end. */
typedef struct {
    uint32_t *v;
    size_t n, cap, max;   /* max: samples kept at most (later ones are dropped) */
} bu_lat_t;

void bu_lat_init(bu_lat_t *l, size_t max);
void bu_lat_close(bu_lat_t *l);
void bu_lat_add(bu_lat_t *l, uint64_t ns);
/* Appends src to dst (src is left as it was). 0 or -ENOMEM. */
int bu_lat_merge(bu_lat_t *dst, const bu_lat_t *src);
/* Sorts, then returns the p-th percentile (0 < p <= 100) in microseconds; 0 if empty. */
void bu_lat_sort(bu_lat_t *l);
double bu_lat_pct(const bu_lat_t *l, double p);
/* Writes ,"<prefix>_p50_us":..,"<prefix>_p99_us":..,"<prefix>_p999_us":..,"<prefix>_n":.. */
void bu_lat_json(FILE *out, const char *prefix, bu_lat_t *l);

/* VmRSS and VmHWM of a process, in kB; 0 or -errno. */
int bu_proc_mem(pid_t pid, long *rss_kb, long *hwm_kb);
/* A loopback TCP port the kernel just handed out (and we released); -1 on failure. */
int bu_free_port(void);

/* CPU time of a process's threads, summed by thread name (comm). */
#define BU_THREAD_NAMES 16
typedef struct {
    size_t n;
    struct {
        char name[16];
        double secs; /* user + system */
    } t[BU_THREAD_NAMES];
} bu_cpu_t;

/* Reads /proc/PID/task/<tid>/{comm,stat}; 0 or -errno. */
int bu_proc_cpu(pid_t pid, bu_cpu_t *out);

/* ,"PREFIX":{"name":us,...,"total":us}: CPU microseconds per message of
 * each thread name between two readings, for msgs messages. */
void bu_cpu_json(FILE *out, const char *prefix, const bu_cpu_t *a, const bu_cpu_t *b,
                 double msgs);

/* A token bucket: the next send time for a rate of per_s messages per second. */
typedef struct {
    uint64_t start_ns;
    double interval_ns;
    uint64_t n;
} bu_pace_t;

void bu_pace_init(bu_pace_t *p, double per_s);
/* Nanoseconds until the next message is due (0: due now). */
uint64_t bu_pace_wait_ns(const bu_pace_t *p);
void bu_pace_take(bu_pace_t *p);

/* Command-line helpers: "--name value" pairs. */
const char *bu_arg(int argc, char **argv, const char *name, const char *def);
long bu_arg_long(int argc, char **argv, const char *name, long def);
double bu_arg_double(int argc, char **argv, const char *name, double def);

#endif
