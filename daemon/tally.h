/*
 * tally.h - the community's counts, exact and durable.
 *
 * Counts are kept per local day in the store (table `tallies`), keyed by a
 * name and a label set in Prometheus form (`direction="up",source="t-aihua"`).
 * They are added on the store thread while a batch runs and written, merged
 * per key, just before that batch's COMMIT: a tally changes in the same
 * transaction as the message or step it counts, so a resend counts once and
 * a restart loses nothing.  Months, half-years and years are sums of days.
 *
 * Thread: store thread (tally_add, tally_flush, tally_discard, tally_kept_*);
 * the query functions run there too, from store requests.
 */
#ifndef MR_TALLY_H
#define MR_TALLY_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tally_t tally_t;

/* Histogram buckets (seconds) for turnaround and delay tallies. */
#define TALLY_BUCKETS 10
extern const int64_t tally_bucket_le[TALLY_BUCKETS]; /* last is "+Inf" (-1) */

/*
 * Counts of events that happened whatever becomes of the batch that counts
 * them (a refusal answered with an Error, a redelivery: store_tally): unlike
 * tally_add's, they are not dropped with a rolled-back batch but written by
 * the next one that writes anyway and commits (a batch of reads writes
 * none: it must not fail for want of disk).  Owned by the caller, not by a
 * tally, so that they outlive a connection closed and reopened during an
 * outage; merged per (name, labels), so an outage of any length keeps them
 * as few as their keys.
 */
typedef struct tally_kept_t tally_kept_t;

tally_kept_t *tally_kept_new(void);
void tally_kept_destroy(tally_kept_t **self_p);
/* Adds delta to (name, labels) among the kept counts.  SQLITE_OK or SQLITE_NOMEM. */
int tally_kept_add(tally_kept_t *self, const char *name, const char *labels, int64_t delta);
/* True when no count is kept. */
bool tally_kept_empty(const tally_kept_t *self);

/* kept (borrowed; may be NULL) must outlive the tally: tally_flush writes
 * its counts with a batch that writes, tally_commit clears them if they
 * were, tally_discard leaves them for the next batch. */
tally_t *tally_new(sqlite3 *db, tally_kept_t *kept, int *rc_out);
void tally_destroy(tally_t **self_p);

/* Adds delta to (today, name, labels) in the pending batch.  labels is a
 * Prometheus label set without braces, keys sorted; "" for none. */
int tally_add(tally_t *self, const char *name, const char *labels, int64_t delta);
/* Records one observation of seconds in histogram `name` (buckets, _sum, _count). */
int tally_observe(tally_t *self, const char *name, const char *labels, int64_t seconds);
/* Writes the batch's counts (inside the caller's transaction), and the kept
 * ones if the batch writes: wrote (it wrote something already) or counts of
 * its own were written.  They stay the batch's until tally_commit or
 * tally_discard. */
int tally_flush(tally_t *self, int64_t now_ms, bool wrote);
/* The batch's transaction committed: its counts, and the kept ones if its
 * tally_flush wrote them, join the all-time totals; those kept ones are
 * cleared.  After a batch that wrote no kept count, they stay. */
void tally_commit(tally_t *self);
/* Forgets the batch's counts (its transaction was rolled back); the kept
 * ones stay for the next batch. */
void tally_discard(tally_t *self);

typedef struct {
    char *name;
    char *labels;
    int64_t value;
} tally_row_t;

/* a + b, held at the int64 limits instead of overflowing: counts and sums
 * of counts (tallies' totals, the visit reports' figures). */
int64_t tally_add_sat(int64_t a, int64_t b);
/* Sums per (name, labels) over days first..last (YYYY-MM-DD, inclusive);
 * NULL first and last: all time, from memory (totals kept since tally_new).
 * facility (NULL or "": all) keeps the label sets whose source or destination
 * label is that facility.  Rows sorted by name, labels;
 * on failure the caller still frees *rows (n of them). */
int tally_query(tally_t *self, const char *first, const char *last, const char *facility,
                tally_row_t **rows, size_t *n);
void tally_rows_free(tally_row_t *rows, size_t n);

/* Writes the label set k1="v1",k2="v2",... of n (key, value) pairs, keys
 * given in sorted order, into out; its length, or -1 if it does not fit.
 * On the hot path instead of snprintf (a message's counts, every message). */
int tally_labels(char *out, size_t len, size_t n, const char *const pairs[]);
/* Label value safe inside quotes and of bounded length (peer strings): at
 * most 32 bytes, whole UTF-8 characters kept, controls, quotes, backslashes,
 * commas, equals signs and broken UTF-8 bytes written '_'. */
void tally_label_value(char *out, size_t len, const char *s);

#endif
