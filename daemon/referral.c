/*
 * referral.c - the referral lifecycle (转诊闭环) as one declarative table.
 *
 * What it is.  Every ReferralUpdate, delivery ack and expiry that touches a
 * referral asks referral_next() whether the step is allowed, and what it
 * leads to.  The answer comes from s_rules[] below, one row per
 * medroute.v1.ReferralStep; there is no other place that knows the
 * lifecycle.  Pure: no I/O, no allocation, no mutable state; it runs on the
 * store thread (inside the transaction that stores the step) and in the
 * unit tests, and is safe from any thread.
 *
 * Invariants.
 *   1. A step is legal only if all of: the step is a known ReferralStep,
 *      the state is a real referral (not REF_NONE) that is still open, the
 *      actor is the row's actor, the direction is in the row's set and the
 *      state is in the row's from-set.
 *   2. Nothing leaves a terminal state (REJECTED, COMPLETED, CANCELLED,
 *      NO_SHOW, EXPIRED), and nothing leads to REF_NONE or REQUESTED:
 *      REQUESTED is entered only by storing a new ReferralRequest.
 *   3. Only ACCEPTED claims a unit of the reserved-capacity ledger; only the
 *      three ends that can follow an acceptance without care (CANCELLED,
 *      NO_SHOW, EXPIRED) release.  The table says RELEASE even from states
 *      before ACCEPTED: whether a unit was claimed is the caller's record.
 *   4. REJECTED and CANCELLED need a reason; COMPLETED needs a summary
 *      reference.  FOLLOW_UP_CONFIRMED also ends in COMPLETED but needs
 *      none: the summary went with the down-referral itself.
 *   5. An up- or lateral referral completes by COMPLETED, a down-referral
 *      by FOLLOW_UP_CONFIRMED, never the other way round.
 *   6. An illegal step returns -1 and one static why, chosen in this order
 *      (first failing check wins): unknown step, unknown actor, unknown
 *      direction, unknown state, REF_NONE, terminal state, wrong actor,
 *      wrong direction, wrong state.  The caller adds the state's name.
 *
 * The diagram (the header's):
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
 * The transitions (s_rules[]; all performed by referral_next()):
 *
 *   step                 by        from                     dir     to           ledger  rsn sum
 *   -------------------  --------  -----------------------  ------  -----------  ------- --- ---
 *   RECEIVED             broker    REQUESTED                any     RECEIVED     -        -   -
 *   ACCEPTED             receiver  REQUESTED RECEIVED       any     ACCEPTED     CLAIM    -   -
 *   REJECTED             receiver  REQUESTED RECEIVED       any     REJECTED     -       yes  -
 *   SCHEDULED            receiver  ACCEPTED                 any     SCHEDULED    -        -   -
 *   ARRIVED              receiver  ACCEPTED SCHEDULED       any     ARRIVED      -        -   -
 *   IN_PROGRESS          receiver  ARRIVED                  any     IN_PROGRESS  -        -   -
 *   COMPLETED            receiver  IN_PROGRESS              up/lat  COMPLETED    -        -  yes
 *   FOLLOW_UP_CONFIRMED  receiver  ARRIVED IN_PROGRESS      down    COMPLETED    -        -   -
 *   NO_SHOW              receiver  SCHEDULED                any     NO_SHOW      RELEASE  -   -
 *   CANCELLED            sender    REQUESTED RECEIVED       any     CANCELLED    RELEASE yes  -
 *                                  ACCEPTED SCHEDULED
 *   EXPIRED              broker    REQUESTED RECEIVED       any     EXPIRED      RELEASE  -   -
 *                                  ACCEPTED SCHEDULED
 *
 * That is 58 legal (state, step, actor, direction) combinations; the unit
 * test counts them against its own table.
 */
#include "referral.h"

#include <assert.h>
#include <stddef.h>

#include "medroute/v1/clinical.pb-c.h"

#define S_ST(s) (1u << (s))
#define S_DIR(d) (1u << (d))
#define S_DIRS_ALL (S_DIR(REF_DIR_LATERAL) | S_DIR(REF_DIR_UP) | S_DIR(REF_DIR_DOWN))
#define S_OPEN_BEFORE_ARRIVAL \
    (S_ST(REF_REQUESTED) | S_ST(REF_RECEIVED) | S_ST(REF_ACCEPTED) | S_ST(REF_SCHEDULED))
#define S_TERMINAL \
    (S_ST(REF_REJECTED) | S_ST(REF_COMPLETED) | S_ST(REF_CANCELLED) | S_ST(REF_NO_SHOW) | \
     S_ST(REF_EXPIRED))

/* The step numbers are the wire's; s_rules[] is indexed by them. */
#define S_STEP_MIN MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED
#define S_STEP_MAX MEDROUTE__V1__REFERRAL_STEP__STEP_FOLLOW_UP_CONFIRMED

typedef struct {
    ref_actor_t actor;        /* the only actor that may make the step */
    unsigned from;            /* set of states (S_ST bits) it may be made in */
    unsigned dirs;            /* set of directions (S_DIR bits) it applies to */
    ref_state_t to;
    ref_ledger_t ledger;
    bool needs_reason;
    bool needs_summary;
    const char *why_actor;    /* when made by another actor */
    const char *why_dir;      /* when made on a referral of another direction */
    const char *why_state;    /* when made in an open state outside from */
} s_rule_t;

static const s_rule_t s_rules[S_STEP_MAX + 1] = {
    [MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED] = {
        ACTOR_BROKER, S_ST(REF_REQUESTED), S_DIRS_ALL,
        REF_RECEIVED, LEDGER_NONE, false, false,
        "only the broker records receipt", NULL,
        "receipt is recorded only for a requested referral"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED] = {
        ACTOR_RECEIVER, S_ST(REF_REQUESTED) | S_ST(REF_RECEIVED), S_DIRS_ALL,
        REF_ACCEPTED, LEDGER_CLAIM, false, false,
        "only the receiver may accept", NULL,
        "only a requested or received referral can be accepted"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_REJECTED] = {
        ACTOR_RECEIVER, S_ST(REF_REQUESTED) | S_ST(REF_RECEIVED), S_DIRS_ALL,
        REF_REJECTED, LEDGER_NONE, true, false,
        "only the receiver may reject", NULL,
        "only a requested or received referral can be rejected"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_SCHEDULED] = {
        ACTOR_RECEIVER, S_ST(REF_ACCEPTED), S_DIRS_ALL,
        REF_SCHEDULED, LEDGER_NONE, false, false,
        "only the receiver may schedule", NULL,
        "only an accepted referral can be scheduled"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_ARRIVED] = {
        ACTOR_RECEIVER, S_ST(REF_ACCEPTED) | S_ST(REF_SCHEDULED), S_DIRS_ALL,
        REF_ARRIVED, LEDGER_NONE, false, false,
        "only the receiver may record arrival", NULL,
        "arrival is recorded only for an accepted or scheduled referral"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_IN_PROGRESS] = {
        ACTOR_RECEIVER, S_ST(REF_ARRIVED), S_DIRS_ALL,
        REF_IN_PROGRESS, LEDGER_NONE, false, false,
        "only the receiver may record care in progress", NULL,
        "care can start only after the patient has arrived"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_COMPLETED] = {
        ACTOR_RECEIVER, S_ST(REF_IN_PROGRESS), S_DIR(REF_DIR_UP) | S_DIR(REF_DIR_LATERAL),
        REF_COMPLETED, LEDGER_NONE, false, true,
        "only the receiver may complete",
        "a down-referral completes when the township confirms follow-up",
        "only a referral in progress can be completed"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_CANCELLED] = {
        ACTOR_SENDER, S_OPEN_BEFORE_ARRIVAL, S_DIRS_ALL,
        REF_CANCELLED, LEDGER_RELEASE, true, false,
        "only the sender may cancel", NULL,
        "a referral cannot be cancelled once the patient has arrived"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_NO_SHOW] = {
        ACTOR_RECEIVER, S_ST(REF_SCHEDULED), S_DIRS_ALL,
        REF_NO_SHOW, LEDGER_RELEASE, false, false,
        "only the receiver may record a no-show", NULL,
        "a no-show is recorded only for a scheduled referral"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_EXPIRED] = {
        ACTOR_BROKER, S_OPEN_BEFORE_ARRIVAL, S_DIRS_ALL,
        REF_EXPIRED, LEDGER_RELEASE, false, false,
        "only the broker records expiry", NULL,
        "a referral cannot expire once the patient has arrived"},
    [MEDROUTE__V1__REFERRAL_STEP__STEP_FOLLOW_UP_CONFIRMED] = {
        ACTOR_RECEIVER, S_ST(REF_ARRIVED) | S_ST(REF_IN_PROGRESS), S_DIR(REF_DIR_DOWN),
        REF_COMPLETED, LEDGER_NONE, false, false,
        "only the receiver may confirm follow-up",
        "only a down-referral completes by follow-up confirmation",
        "follow-up is confirmed only after the patient has arrived"},
};

_Static_assert(REF_STATE_COUNT <= 32, "state sets are 32-bit masks");
_Static_assert(S_STEP_MIN == 1 && S_STEP_MAX == 11, "ReferralStep changed: revisit s_rules");

static const char *const s_state_names[REF_STATE_COUNT] = {
    [REF_NONE] = "NONE",
    [REF_REQUESTED] = "REQUESTED",
    [REF_RECEIVED] = "RECEIVED",
    [REF_ACCEPTED] = "ACCEPTED",
    [REF_REJECTED] = "REJECTED",
    [REF_SCHEDULED] = "SCHEDULED",
    [REF_ARRIVED] = "ARRIVED",
    [REF_IN_PROGRESS] = "IN_PROGRESS",
    [REF_COMPLETED] = "COMPLETED",
    [REF_CANCELLED] = "CANCELLED",
    [REF_NO_SHOW] = "NO_SHOW",
    [REF_EXPIRED] = "EXPIRED",
};

static bool s_state_known(ref_state_t s)
{
    int v = (int)s;
    return v >= 0 && v < REF_STATE_COUNT;
}

static int s_fail(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return -1;
}

int referral_step_actor(int step)
{
    if (step < S_STEP_MIN || step > S_STEP_MAX || s_rules[step].why_actor == NULL)
        return -1;
    return (int)s_rules[step].actor;
}

int referral_next(ref_state_t from, int step, ref_actor_t actor, ref_dir_t dir,
                  ref_transition_t *out, const char **why)
{
    int a = (int)actor, d = (int)dir;

    if (step < S_STEP_MIN || step > S_STEP_MAX)
        return s_fail(why, "unknown referral step");
    if (a < ACTOR_SENDER || a > ACTOR_BROKER)
        return s_fail(why, "unknown actor");
    if (d < REF_DIR_LATERAL || d > REF_DIR_DOWN)
        return s_fail(why, "unknown referral direction");
    if (!s_state_known(from))
        return s_fail(why, "unknown referral state");
    if (from == REF_NONE)
        return s_fail(why, "no such referral");
    if (referral_terminal(from))
        return s_fail(why, "the referral is closed");

    const s_rule_t *r = &s_rules[step];
    assert(r->why_actor != NULL && r->why_state != NULL);
    if (actor != r->actor)
        return s_fail(why, r->why_actor);
    if ((r->dirs & S_DIR(d)) == 0)
        return s_fail(why, r->why_dir);
    if ((r->from & S_ST(from)) == 0)
        return s_fail(why, r->why_state);

    /* Invariant 2: open states only lead forward, never back to the start. */
    assert(r->to != REF_NONE && r->to != REF_REQUESTED);
    if (out != NULL) {
        out->to = r->to;
        out->ledger = r->ledger;
        out->needs_reason = r->needs_reason;
        out->needs_summary = r->needs_summary;
    }
    if (why != NULL)
        *why = NULL;
    return 0;
}

const char *referral_state_name(ref_state_t s)
{
    return s_state_known(s) ? s_state_names[s] : "UNKNOWN";
}

bool referral_terminal(ref_state_t s)
{
    return s_state_known(s) && (S_TERMINAL & S_ST(s)) != 0;
}

bool referral_open(ref_state_t s)
{
    return s_state_known(s) && s != REF_NONE && !referral_terminal(s);
}
