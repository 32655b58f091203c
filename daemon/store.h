/*
 * store.h - the durable message store, behind an asynchronous interface.
 *
 * The loop thread submits requests; one store thread executes them in
 * submission order inside group-commit transactions (a batch closes after
 * batch_ms or batch_max requests, whichever first, or when the queue is
 * empty) and hands each request back to the loop thread, in the same order,
 * only after its transaction has committed.  The loop thread never touches
 * the database and never waits on disk.
 *
 * Ownership: store_req_new allocates a request; after store_submit the store
 * owns it until its callback has run on the loop thread, then frees it with
 * everything it holds (rows, msg.body).  A callback may take req->msg.body,
 * a row's body, or the whole rows array by setting the pointer to NULL.
 */
#ifndef MR_STORE_H
#define MR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "clinical.h"
#include "durhist.h"
#include "log.h"

typedef enum {
    STORE_PUT = 0,     /* insert a message, idempotent on (source, message_id) */
    STORE_ACK,         /* the destination acknowledged delivery of seq */
    STORE_LOAD,        /* pending messages for dest with seq > after, in order */
    STORE_LIST,        /* pending or dead messages, for operators */
    STORE_SUMMARY,     /* per destination: pending count, lowest seq, oldest stored_ms */
    STORE_DROP,        /* move a pending message to dead with a reason; row returned */
    STORE_RETRY,       /* move a dead message back to pending; row with body returned */
    STORE_EXPIRE,      /* move pending messages past their expiry to dead */
    STORE_PRUNE,       /* delete delivered messages older than retention */
    STORE_SIZE,        /* the store's size on disk in bytes */
    STORE_SCAN,        /* service levels, referral expiry, reserve cut-offs due now */
    STORE_SLOTS,       /* the reserved-capacity ledger, for operators */
    STORE_OPEN,        /* open referrals and loops, for operators */
    STORE_TALLY,       /* count an event that stores no message (a refusal, a resend) */
    STORE_STATS,       /* tallies summed over a period (query: facility) */
    STORE_BACKUP,      /* online copy of the database to req->query (a path); runs on its
                          own thread and connection, so it completes out of order */
    STORE_OP_COUNT
} store_op_t;

typedef enum {
    STORE_OK = 0,
    STORE_DUPLICATE,   /* PUT: same id and content stored before (seq set); ACK: acked before */
    STORE_CONFLICT,    /* PUT: same id, different content */
    STORE_NOT_FOUND,   /* ACK/DROP/RETRY: no such message in the expected state */
    STORE_UNAVAILABLE, /* the store could not do it; nothing changed */
    STORE_REFUSED,     /* PUT: the clinical state refuses it (req->clin says why); not stored */
} store_status_t;

typedef enum { MSG_PENDING = 0, MSG_DELIVERED = 1, MSG_DEAD = 2 } msg_state_t;

typedef struct {
    uint64_t seq;
    char *source;
    char *message_id;
    char *dest;
    int kind;
    int priority;
    int64_t stored_ms;
    int64_t expires_ms;
    char *dead_reason;
    uint8_t *body;     /* packed medroute.v1.Envelope */
    size_t body_len;
    uint64_t count;    /* SUMMARY: messages pending for dest */
    int express;       /* PUT: a critical value/finding or stat: delivered ahead */
} store_row_t;

typedef struct store_req_t store_req_t;
typedef void (*store_cb_t)(store_req_t *req, void *arg);

struct store_req_t {
    store_op_t op;
    store_cb_t cb;
    void *arg;
    int64_t tag;       /* the caller's, untouched by the store */
    uint64_t submission_tag; /* PUT: the sender's Frame.submission_tag, for its Ack or
                              * Error (the caller's, untouched by the store) */
    /* inputs (which ones an op reads is said in store.c's table) */
    store_row_t msg;   /* PUT: the message; ACK: seq + dest; DROP: seq + dead_reason */
    uint64_t after;    /* LOAD: seq to continue after */
    uint32_t quota;    /* PUT: refused as QUEUE_FULL if new and msg.dest has this many
                        * pending already (0: no quota); a resend is still a duplicate */
    bool fresh_only;   /* PUT: refused as INVALID if new and msg.expires_ms <= msg.stored_ms
                        * (a resend is still a duplicate) */
    uint64_t *outstanding; /* EXPIRE: seqs out at a facility, a send not yet due again
                            * (router_outstanding), sorted by pending_seq_cmp: not expired
                            * this time; owned */
    size_t n_outstanding;
    bool express_only; /* LOAD: only express messages (critical or stat) */
    bool unsent;       /* ACK: the broker has not sent it (router.c): NOT_FOUND while it is
                        * pending, DUPLICATE once delivered; nothing changes */
    uint32_t limit;    /* LOAD, LIST, PRUNE: at most this many */
    int state;         /* LIST: MSG_PENDING or MSG_DEAD; PUT: MSG_PENDING, or MSG_DELIVERED
                          for a message to the broker itself */
    clin_facts_t *facts; /* PUT: the clinical facts to apply (owned), or NULL */
    clin_sla_t sla;    /* SCAN */
    char *query;       /* SLOTS: date; OPEN: facility (owned, may be NULL) */
    int64_t older_than_ms; /* OPEN: opened at or before */
    char *tally_name;  /* TALLY (owned) */
    char *tally_labels;
    int64_t tally_delta;
    char first_day[11], last_day[11]; /* STATS: the period, inclusive; "" = all time */
    int64_t now_ms;    /* EXPIRE, PRUNE, ACK: the time to compare with / record */
    int64_t before_ms; /* PRUNE: delivered before this */
    /* outputs */
    store_status_t status;
    uint64_t seq;      /* PUT: the message's seq */
    uint64_t value;    /* SIZE: bytes; PRUNE: rows deleted */
    store_row_t *rows; /* LOAD, LIST, SUMMARY, EXPIRE */
    size_t n_rows;
    clin_result_t clin;     /* PUT: refusal or effect */
    clin_event_t *events;   /* SCAN */
    size_t n_events;
    clin_slot_t *slots;     /* SLOTS */
    size_t n_slots;
    clin_open_t *open;      /* OPEN */
    size_t n_open;
    tally_row_t *tallies;   /* STATS */
    size_t n_tallies;
    clin_visits_t visits;   /* STATS: VisitTally sums of the period */
    store_req_t *next; /* queue link, the store's */
    int64_t submitted_us; /* when store_submit took it (monotonic), the store's */
};

typedef struct {
    const char *path;       /* database file */
    bool sync_full;         /* synchronous=FULL, else NORMAL */
    uint32_t batch_max;
    uint32_t batch_ms;
    uint64_t floor_lag;     /* rows an open reads besides the pinned ones; 0: 1,000,000 */
    uint64_t pin_step;      /* seqs one raise of the floor pins past at most; 0: 10,000 */
} store_opts_t;

typedef struct store_t store_t;

/*
 * Process-wide SQLite settings: call once, before any thread uses SQLite.
 * Turns off SQLite's memory statistics (nothing reads them): with them,
 * every allocation of the store thread takes a global mutex.  Returns 0, or
 * -1 if SQLite was already in use (the settings then stay SQLite's).
 */
int store_process_init(void);

/*
 * Starts the store thread and opens the database at opts->path (created with
 * mode 0600).  If the database cannot be opened, the store still starts:
 * requests fail with STORE_UNAVAILABLE and opening is retried.  Completion
 * callbacks run on loop.  NULL on allocation or thread failure.
 */
store_t *store_new(uv_loop_t *loop, const store_opts_t *opts, log_t *log);
/* Executes every submitted request, stops the thread, runs the callbacks
 * still due (so the loop's state must still exist), writes the kept counts
 * (store_tally), those callbacks' too, and closes the database.  Other
 * requests those callbacks submit are freed without running. */
void store_destroy(store_t **self_p);

store_req_t *store_req_new(store_op_t op, store_cb_t cb, void *arg);
/* Counts an event that stores no message (a refusal, a redelivery) in the
 * next batch that writes anything else and commits (a batch of reads writes
 * nothing, so that it succeeds on a full disk), or on its own once the store
 * is idle and healthy: the event happened, so a
 * batch that rolls back (a full disk, an I/O error) leaves the count to a
 * later one, merged with the others of its name and labels meanwhile;
 * store_destroy writes those still unwritten (opening the database again if
 * an outage closed it).  Best effort: out of memory, or unwritable at
 * store_destroy (an outage), it is not counted. */
void store_tally(store_t *self, const char *name, const char *labels, int64_t delta);
/* Queues req; the store owns it from now on.  Never blocks on disk. */
void store_submit(store_t *self, store_req_t *req);

/* Requests submitted and not yet completed. */
size_t store_backlog(const store_t *self);

/*
 * How long the store keeps work waiting, since it was created (durhist.h),
 * for operators (metrics, status) and the benchmark:
 *   wait   - a request, from store_submit until its batch takes it;
 *   commit - a batch's COMMIT that wrote: its WAL write and its sync;
 *   put    - a message (PUT), from store_submit until its callback runs on
 *            the loop, when its Ack can go: wait, its batch, the commit and
 *            the loop's turn to run it.
 * Loop thread.
 */
typedef struct {
    durhist_t wait, commit, put;
} store_latency_t;
void store_latency(const store_t *self, store_latency_t *out);
/* True when a batch failed for lack of the database and no later one has
 * shown it back: one that wrote, or after a busy lock only, any. */
bool store_unavailable(const store_t *self);
/*
 * Stalls: how long the oldest request not yet finished (queued, or in the
 * batch now running; not a backup, which has its own thread) has waited
 * since store_submit, in ms, if that is at least after_ms, else 0 (also
 * when nothing waits).  A healthy store answers within milliseconds, a busy
 * one within a few batches; an age that keeps growing is a store thread
 * stuck in one batch (a disk that does not answer, a file system frozen),
 * which store_unavailable does not show: nothing has failed yet.  after_ms
 * 0 gives the age itself.  Cheap (the queue's mutex, which the store thread
 * never holds across disk I/O).  Loop thread.
 */
int64_t store_stalled_ms(const store_t *self, int64_t after_ms);
/* Logs store.stalled (warn) when store_stalled_ms(after_ms) becomes non-zero
 * and store.stall_ended (info) when it is 0 again: once each per stall.
 * Loop thread, periodically (cron). */
void store_stall_watch(store_t *self, int64_t after_ms);

void store_row_clear(store_row_t *row);
const char *store_status_name(store_status_t s);

#endif
