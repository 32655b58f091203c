/*
 * cstore.h - the client's own small store: outbox and seen-set (SQLite in
 * the state directory; without one, the seen-set alone, in memory).
 *
 * outbox: messages submitted and not yet acknowledged by the broker, in
 * submission order.  outcome: the Acks and refusals of messages taken out
 * of the outbox that the application has not been handed yet.  outbox_damaged: rows of the outbox found unusable at a
 * start (damaged outside the library), set aside, never sent nor deleted.  seen: message keys (source, message_id) whose handler
 * has run (DONE) or is running (IN_HANDLER: if found at start, the process
 * died inside the handler).  Internal to libmedroute; one thread.
 */
#ifndef MR_CSTORE_H
#define MR_CSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cstore_t cstore_t;

/* SEEN_UNKNOWN: the state could not be read (a database error). */
typedef enum { SEEN_UNKNOWN = -1, SEEN_NONE = 0, SEEN_IN_HANDLER = 1, SEEN_DONE = 2 } seen_state_t;

/* Opens (creating) DIR/client-<facility>.db, mode 0600; with dir NULL, a
 * store in memory that lasts as long as the process.  NULL on failure. */
cstore_t *cstore_open(const char *dir, const char *facility);
void cstore_close(cstore_t **self_p);

/* Adds, or replaces a stale row of the same id (the caller checked its
 * outbox in memory, which holds every live row, for the id first), with
 * the submission tag its copies carry. */
int cstore_outbox_add(cstore_t *self, const char *message_id, const void *body, size_t len,
                      uint64_t tag);
int cstore_outbox_remove(cstore_t *self, const char *message_id);
/*
 * Calls fn for each outbox entry in submission order, with its tag (0 for
 * a row a version without tags wrote); stops on non-zero.
 * A row that cannot be an entry (its id missing, over MR_MESSAGE_ID_MAX
 * bytes, not UTF-8 or holding a NUL, or not the message_id its body
 * carries) is not handed to fn: it is moved to the table outbox_damaged,
 * kept there with its reason (if the move fails it stays, and is skipped
 * again at the next start), and told to damaged (may be NULL) with its
 * rowid, its id ("" if unusable), why, and whether it was moved.  0, fn's
 * non-zero, or -EIO.
 */
int cstore_outbox_each(cstore_t *self,
                       int (*fn)(void *arg, const char *id, const void *body, size_t len,
                                 uint64_t tag),
                       void (*damaged)(void *arg, int64_t row, const char *id, const char *why,
                                       bool moved),
                       void *arg);
/* Rows in the table outbox_damaged (set aside now or at an earlier start,
 * until someone deletes them): 0 without a directory, -EIO. */
int64_t cstore_outbox_damaged_count(cstore_t *self);

/* An outcome kept for the application (the fields of its mr_event_t). */
typedef struct {
    int type;                 /* MR_EVENT_ACK or MR_EVENT_ERROR */
    const char *message_id;
    uint64_t seq;
    bool duplicate;
    int code;
    const char *reason;
} cstore_outcome_t;

/* Keeps oc and deletes the outbox row of remove_id (NULL: none) in one
 * transaction.  Its row (> 0), 0 without a directory (nothing kept), or
 * -EIO: nothing changed. */
int64_t cstore_outcome_keep(cstore_t *self, const cstore_outcome_t *oc, const char *remove_id);
/* Calls fn for each outcome kept, oldest first (oc valid during the call);
 * stops on non-zero.  0, fn's non-zero, or -EIO. */
int cstore_outcome_each(cstore_t *self,
                        int (*fn)(void *arg, int64_t row, const cstore_outcome_t *oc), void *arg);
/* Forgets the outcomes of rows first..last (handed to the application). */
int cstore_outcome_forget(cstore_t *self, int64_t first, int64_t last);

seen_state_t cstore_seen_get(cstore_t *self, const char *source, const char *message_id);
int cstore_seen_set(cstore_t *self, const char *source, const char *message_id,
                    seen_state_t state);
int cstore_seen_clear(cstore_t *self, const char *source, const char *message_id);
/* Forgets entries set more than keep_ms ago, DONE and IN_HANDLER alike
 * (only DONE ones are kept in memory): in memory by the monotonic clock,
 * which no step of the wall clock can make prune early; on disk by the
 * wall clock, the only one that spans restarts. */
int cstore_seen_prune(cstore_t *self, int64_t keep_ms);

#endif
