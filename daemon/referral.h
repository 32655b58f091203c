/*
 * referral.h - the referral lifecycle (转诊闭环) as one state machine.
 *
 * Pure logic: no I/O, no allocation.  The store thread calls it inside the
 * transaction that stores the ReferralUpdate (or the delivery ack, or the
 * expiry), and the unit tests call it directly.
 *
 *                 RECEIVED(broker)
 *   REQUESTED ------------------> RECEIVED
 *      |  \                          |   \
 *      |   ACCEPTED / REJECTED (receiver, from REQUESTED or RECEIVED)
 *      v                              v
 *   ACCEPTED --SCHEDULED--> SCHEDULED --ARRIVED--> ARRIVED --IN_PROGRESS--> IN_PROGRESS
 *      |                      |   \                   |                      |
 *      +------ARRIVED---------|----+                  |      COMPLETED (up/lateral, receiver)
 *                             |   NO_SHOW (receiver)  |      FOLLOW_UP_CONFIRMED (down, receiver)
 *                             v                       +------------------------> COMPLETED
 *   CANCELLED (sender, reason required) from REQUESTED, RECEIVED, ACCEPTED, SCHEDULED
 *   EXPIRED   (broker, at the referral's expiry) from REQUESTED, RECEIVED, ACCEPTED, SCHEDULED
 *
 * Terminal: REJECTED, COMPLETED, CANCELLED, NO_SHOW, EXPIRED.
 */
#ifndef MR_REFERRAL_H
#define MR_REFERRAL_H

#include <stdbool.h>

typedef enum {
    REF_NONE = 0,        /* no referral yet */
    REF_REQUESTED,
    REF_RECEIVED,
    REF_ACCEPTED,
    REF_REJECTED,
    REF_SCHEDULED,
    REF_ARRIVED,
    REF_IN_PROGRESS,
    REF_COMPLETED,
    REF_CANCELLED,
    REF_NO_SHOW,
    REF_EXPIRED,
    REF_STATE_COUNT
} ref_state_t;

/* Who makes a step. */
typedef enum { ACTOR_SENDER = 0, ACTOR_RECEIVER, ACTOR_BROKER } ref_actor_t;

/* Referral direction, derived from the registry roles (never the message). */
typedef enum { REF_DIR_LATERAL = 0, REF_DIR_UP, REF_DIR_DOWN } ref_dir_t;

/* What a transition does to the reserved-capacity ledger. */
typedef enum { LEDGER_NONE = 0, LEDGER_CLAIM, LEDGER_RELEASE } ref_ledger_t;

typedef struct {
    ref_state_t to;
    ref_ledger_t ledger;
    bool needs_reason;     /* REJECTED, CANCELLED */
    bool needs_summary;    /* COMPLETED: discharge or visit summary reference */
} ref_transition_t;

/*
 * Looks up the step (a medroute.v1.ReferralStep value) made by actor in
 * state from, for a referral of direction dir.  Returns 0 and fills *out, or
 * -1 when the step is illegal, with a reason for people in why (a static
 * string: "only the receiver may accept", "a down-referral completes when
 * the township confirms follow-up", ...).
 *
 * When several things are wrong, the first of these checks wins: unknown
 * step, unknown actor, unknown direction, unknown state, REF_NONE ("no such
 * referral"), terminal state ("the referral is closed"), wrong actor, wrong
 * direction, wrong state.  The wrong-state why does not name the state: the
 * caller adds referral_state_name(from).  On -1 *out is left untouched; on 0
 * *why is set to NULL.  out and why may be NULL.
 */
int referral_next(ref_state_t from, int step, ref_actor_t actor, ref_dir_t dir,
                  ref_transition_t *out, const char **why);

/* Who makes the step (a medroute.v1.ReferralStep value); -1 if unknown. */
int referral_step_actor(int step);

/* "REQUESTED", "RECEIVED", ... */
const char *referral_state_name(ref_state_t s);
bool referral_terminal(ref_state_t s);
/* True in the states an operator counts as an open loop. */
bool referral_open(ref_state_t s);

#endif
