/*
 * durhist.h - a histogram of durations (microseconds) since the daemon
 * started: how long the store keeps a message waiting, how long its
 * commits take.  In memory only; it starts empty at each start.
 *
 * Fixed buckets, 1-2-5 per decade from 50 us to 10 s, plus one for longer:
 * the same bounds for every histogram and every daemon, so that two
 * snapshots subtract (a benchmark's window) and Prometheus can add the
 * histograms of several brokers (its rate() takes a restart's reset).
 *
 * Not synchronised: its owner says which thread writes it and how a
 * reader gets a copy (store.h).
 */
#ifndef MR_DURHIST_H
#define MR_DURHIST_H

#include <stddef.h>
#include <stdint.h>

#define DURHIST_BUCKETS 18

/* Upper bounds of the buckets, in us, inclusive; the last is UINT64_MAX
 * (Prometheus' +Inf). */
extern const uint64_t durhist_le_us[DURHIST_BUCKETS];

typedef struct {
    uint64_t counts[DURHIST_BUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    uint64_t sum_us;
} durhist_t;

/* Counts one duration; a negative one (a clock that went back) as 0. */
void durhist_add(durhist_t *self, int64_t us);
/* Adds every count of other to self. */
void durhist_merge(durhist_t *self, const durhist_t *other);
/*
 * The q-quantile (0 < q <= 1) in us, interpolated linearly inside its
 * bucket as Prometheus' histogram_quantile does: an estimate, exact to the
 * bucket.  In the last bucket, the bound below it.  0 when empty.
 */
uint64_t durhist_quantile_us(const durhist_t *self, double q);

#endif
