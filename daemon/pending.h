/*
 * pending.h - the store's pending set in memory: per destination, the seqs
 * of the messages waiting for delivery, in order, with what the store needs
 * to deliver, expire and acknowledge them without reading their rows.
 *
 * The `messages` table is written once per message and never updated; a
 * message's outcome is appended to `message_done` (store.c).  Which messages
 * are pending is therefore the rows without an outcome, and this module
 * holds that set so that no index has to: it is rebuilt from the database
 * when the store opens, and changed only inside the store's batches.
 *
 * Transactions: between pending_begin() and pending_commit() every change is
 * journalled; pending_rollback() undoes them in reverse, so the set follows
 * the database when a batch's transaction rolls back.
 *
 * Store thread only (one owner, no locking).
 */
#ifndef MR_PENDING_H
#define MR_PENDING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t seq;
    int64_t stored_ms;
    int64_t expires_ms;
    uint8_t kind;      /* the message's Kind, for the tallies at delivery */
    bool express;      /* critical or stat: delivered ahead (LOAD express_only) */
    bool referral;     /* has a referral lifecycle key (messages.ref_key) */
    bool live;         /* internal: false once removed */
} pending_entry_t;

/* Per destination, for SUMMARY. */
typedef struct {
    const char *dest;  /* owned by the set; valid until pending_destroy */
    uint64_t count;
    uint64_t min_seq;
    int64_t min_stored_ms;
} pending_dest_t;

typedef struct pending_t pending_t;

pending_t *pending_new(void);
void pending_destroy(pending_t **self_p);
/* Forgets every entry (before a rebuild); destinations' names stay. */
void pending_clear(pending_t *self);

/* Starts journalling changes; a begin without commit/rollback is an error. */
void pending_begin(pending_t *self);
/* Keeps the changes since pending_begin and stops journalling. */
void pending_commit(pending_t *self);
/* Undoes the changes since pending_begin, newest first, and stops journalling.
 * 0, or -ENOMEM when an entry could not be put back: the set is then wrong
 * and must be cleared and rebuilt. */
int pending_rollback(pending_t *self);

/*
 * Adds e (e->seq must not be 0) as pending for dest.  Usually e->seq is above
 * every seq held for dest; a retried message goes back in its place.
 * 0, -EEXIST if seq is already pending for dest, -ENOMEM (nothing changed).
 */
int pending_add(pending_t *self, const char *dest, const pending_entry_t *e);
/* Removes seq from dest's pending messages, copying its entry to *out (may be
 * NULL).  0, -ENOENT, or -ENOMEM while journalling (nothing changed). */
int pending_remove(pending_t *self, const char *dest, uint64_t seq, pending_entry_t *out);
/* True when seq is pending for dest; its entry is copied to *out (may be NULL). */
bool pending_get(const pending_t *self, const char *dest, uint64_t seq, pending_entry_t *out);

/* Writes up to max seqs pending for dest after `after`, in order (express
 * ones only if express_only).  Returns how many. */
size_t pending_after(const pending_t *self, const char *dest, uint64_t after, bool express_only,
                     uint64_t *seqs, size_t max);
/* Writes up to max of the lowest pending seqs over every destination, in
 * order.  Returns how many. */
size_t pending_lowest(const pending_t *self, uint64_t *seqs, size_t max);

/*
 * Writes up to max entries that expire before now (expires_ms < now), with
 * their destinations, in no particular order; removes nothing.  Those whose
 * seq is in skip (n_skip seqs sorted by pending_seq_cmp, or NULL) are passed over
 * and leave room for others: max bounds what is returned, not what is
 * looked at.  Cheap when nothing can have expired: the set keeps a lower
 * bound of the earliest expiry and walks its entries only when now has
 * passed it (so the call after one that found some, or skipped some, walks
 * once more).
 */
size_t pending_expired(pending_t *self, int64_t now, const uint64_t *skip, size_t n_skip,
                       pending_entry_t *out, const char **dests, size_t max);
/* Orders uint64_t seqs, ascending (qsort, bsearch): the order of skip above. */
int pending_seq_cmp(const void *a, const void *b);

/* Destinations with at least one pending message: fills out (max entries)
 * and returns how many there are (may exceed max). */
size_t pending_summary(const pending_t *self, pending_dest_t *out, size_t max);
/* The lowest pending seq at or above from (0: the lowest of all), or 0 when
 * there is none. */
uint64_t pending_floor_from(const pending_t *self, uint64_t from);
/* Calls fn(arg, seq) for every pending seq in [from, to), destination by
 * destination (not in seq order overall), and stops at the first call that
 * does not return 0, returning what it returned; 0 when all returned 0. */
int pending_each_between(const pending_t *self, uint64_t from, uint64_t to,
                         int (*fn)(void *arg, uint64_t seq), void *arg);
/* Messages pending over every destination. */
size_t pending_count(const pending_t *self);
/* Messages pending for dest. */
size_t pending_dest_count(const pending_t *self, const char *dest);

#endif
