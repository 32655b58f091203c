/*
 * fsync.c - bench_fsync: what the disk under the stores does with durable
 * writes, measured beside the brokers so that their tails can be read.
 *
 * For --duration-s seconds, one thread writes 64 KB (a commit of ~16 WAL
 * pages) at the next offset of a 16 MB file in TMPDIR (or /tmp) and calls
 * fdatasync, as the store does at each commit.  Prints one JSON line: how
 * many, and fdatasync's latency p50 / p99 / p99.9 / max.  On a shared
 * virtual disk the maximum shows the stalls that decide a broker's p99.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"

#define S_WRITE (64 * 1024)
#define S_FILE (16 * 1024 * 1024)

int main(int argc, char **argv)
{
    double secs = bu_arg_double(argc, argv, "--duration-s", 5);
    char path[256];
    snprintf(path, sizeof path, "%s/mrfsync-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("bench_fsync: mkstemp");
        return 1;
    }
    unlink(path);
    static char buf[S_WRITE];
    memset(buf, 'x', sizeof buf);
    bu_lat_t lat;
    bu_lat_init(&lat, 10000000);
    uint64_t t0 = bu_now_ns(), max = 0;
    off_t off = 0;
    int rc = 0;
    while (bu_now_ns() - t0 < (uint64_t)(secs * 1e9)) {
        if (pwrite(fd, buf, sizeof buf, off) != (ssize_t)sizeof buf) {
            rc = errno ? errno : EIO;
            break;
        }
        uint64_t a = bu_now_ns();
        if (fdatasync(fd) != 0) {
            rc = errno;
            break;
        }
        uint64_t d = bu_now_ns() - a;
        bu_lat_add(&lat, d);
        if (d > max)
            max = d;
        off = (off + S_WRITE) % S_FILE;
    }
    close(fd);
    if (rc != 0) {
        fprintf(stderr, "bench_fsync: %s\n", strerror(rc));
        bu_lat_close(&lat);
        return 1;
    }
    printf("{\"bench\":\"fsync\",\"write_bytes\":%d,\"secs\":%.1f", S_WRITE, secs);
    bu_lat_json(stdout, "fdatasync", &lat);
    printf(",\"fdatasync_max_us\":%llu,\"ok\":true}\n", (unsigned long long)(max / 1000));
    bu_lat_close(&lat);
    return 0;
}
