/*
 * durhist.c - a histogram of durations (durhist.h).
 *
 * Invariants
 *   1. count == the sum of counts[], sum_us == the sum of what was added.
 *   2. A duration d falls in the first bucket b with d <= durhist_le_us[b].
 */
#include "durhist.h"

const uint64_t durhist_le_us[DURHIST_BUCKETS] = {
    50,      100,     200,     500,     1000,    2000,      5000,
    10000,   20000,   50000,   100000,  200000,  500000,    1000000,
    2000000, 5000000, 10000000, UINT64_MAX,
};

void durhist_add(durhist_t *self, int64_t us)
{
    uint64_t d = us > 0 ? (uint64_t)us : 0;
    size_t b = 0;
    while (d > durhist_le_us[b]) /* the last bound is UINT64_MAX: it stops there */
        b++;
    self->counts[b]++;
    self->count++;
    self->sum_us += d;
}

void durhist_merge(durhist_t *self, const durhist_t *other)
{
    for (size_t b = 0; b < DURHIST_BUCKETS; b++)
        self->counts[b] += other->counts[b];
    self->count += other->count;
    self->sum_us += other->sum_us;
}

uint64_t durhist_quantile_us(const durhist_t *self, double q)
{
    if (self->count == 0 || q <= 0)
        return 0;
    if (q > 1)
        q = 1;
    double rank = q * (double)self->count;
    uint64_t below = 0;
    for (size_t b = 0; b < DURHIST_BUCKETS; b++) {
        uint64_t in = self->counts[b];
        if (in == 0 || (double)(below + in) < rank) {
            below += in;
            continue;
        }
        uint64_t lo = b == 0 ? 0 : durhist_le_us[b - 1];
        if (b == DURHIST_BUCKETS - 1)
            return lo;
        double hi = (double)durhist_le_us[b];
        return (uint64_t)((double)lo + (hi - (double)lo) * (rank - (double)below) / (double)in);
    }
    return durhist_le_us[DURHIST_BUCKETS - 2]; /* not reached: rank <= count */
}
