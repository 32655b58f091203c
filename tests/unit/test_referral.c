/*
 * Unit tests for daemon/referral.c: the referral lifecycle.
 *
 * The expectation is written here, independently of the code under test: an
 * explicit list of every legal (state, step, actor, directions) row, one row
 * per from-state, as one would read it off the diagram in referral.h.  The
 * exhaustive test walks every state x step x actor x direction (plus values
 * just outside each range) and checks referral_next against that list, the
 * why of every illegal combination, and the count of legal ones.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "medroute/v1/clinical.pb-c.h"
#include "referral.h"

#define RECEIVED MEDROUTE__V1__REFERRAL_STEP__STEP_RECEIVED
#define ACCEPTED MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED
#define REJECTED MEDROUTE__V1__REFERRAL_STEP__STEP_REJECTED
#define SCHEDULED MEDROUTE__V1__REFERRAL_STEP__STEP_SCHEDULED
#define ARRIVED MEDROUTE__V1__REFERRAL_STEP__STEP_ARRIVED
#define IN_PROGRESS MEDROUTE__V1__REFERRAL_STEP__STEP_IN_PROGRESS
#define COMPLETED MEDROUTE__V1__REFERRAL_STEP__STEP_COMPLETED
#define CANCELLED MEDROUTE__V1__REFERRAL_STEP__STEP_CANCELLED
#define NO_SHOW MEDROUTE__V1__REFERRAL_STEP__STEP_NO_SHOW
#define EXPIRED MEDROUTE__V1__REFERRAL_STEP__STEP_EXPIRED
#define FOLLOW_UP MEDROUTE__V1__REFERRAL_STEP__STEP_FOLLOW_UP_CONFIRMED

#define S ACTOR_SENDER
#define R ACTOR_RECEIVER
#define B ACTOR_BROKER

/* One legal transition.  dirs: 'L' lateral, 'U' up, 'D' down. */
typedef struct {
    ref_state_t from;
    int step;
    ref_actor_t actor;
    const char *dirs;
    ref_state_t to;
    ref_ledger_t ledger;
    bool reason;
    bool summary;
} legal_t;

static const legal_t s_legal[] = {
    /* from             step         who dirs   to               ledger          rsn    sum */
    {REF_REQUESTED,   RECEIVED,    B, "LUD", REF_RECEIVED,    LEDGER_NONE,    false, false},
    {REF_REQUESTED,   ACCEPTED,    R, "LUD", REF_ACCEPTED,    LEDGER_CLAIM,   false, false},
    {REF_RECEIVED,    ACCEPTED,    R, "LUD", REF_ACCEPTED,    LEDGER_CLAIM,   false, false},
    {REF_REQUESTED,   REJECTED,    R, "LUD", REF_REJECTED,    LEDGER_NONE,    true,  false},
    {REF_RECEIVED,    REJECTED,    R, "LUD", REF_REJECTED,    LEDGER_NONE,    true,  false},
    {REF_ACCEPTED,    SCHEDULED,   R, "LUD", REF_SCHEDULED,   LEDGER_NONE,    false, false},
    {REF_ACCEPTED,    ARRIVED,     R, "LUD", REF_ARRIVED,     LEDGER_NONE,    false, false},
    {REF_SCHEDULED,   ARRIVED,     R, "LUD", REF_ARRIVED,     LEDGER_NONE,    false, false},
    {REF_ARRIVED,     IN_PROGRESS, R, "LUD", REF_IN_PROGRESS, LEDGER_NONE,    false, false},
    {REF_IN_PROGRESS, COMPLETED,   R, "LU",  REF_COMPLETED,   LEDGER_NONE,    false, true},
    {REF_ARRIVED,     FOLLOW_UP,   R, "D",   REF_COMPLETED,   LEDGER_NONE,    false, false},
    {REF_IN_PROGRESS, FOLLOW_UP,   R, "D",   REF_COMPLETED,   LEDGER_NONE,    false, false},
    {REF_SCHEDULED,   NO_SHOW,     R, "LUD", REF_NO_SHOW,     LEDGER_RELEASE, false, false},
    {REF_REQUESTED,   CANCELLED,   S, "LUD", REF_CANCELLED,   LEDGER_RELEASE, true,  false},
    {REF_RECEIVED,    CANCELLED,   S, "LUD", REF_CANCELLED,   LEDGER_RELEASE, true,  false},
    {REF_ACCEPTED,    CANCELLED,   S, "LUD", REF_CANCELLED,   LEDGER_RELEASE, true,  false},
    {REF_SCHEDULED,   CANCELLED,   S, "LUD", REF_CANCELLED,   LEDGER_RELEASE, true,  false},
    {REF_REQUESTED,   EXPIRED,     B, "LUD", REF_EXPIRED,     LEDGER_RELEASE, false, false},
    {REF_RECEIVED,    EXPIRED,     B, "LUD", REF_EXPIRED,     LEDGER_RELEASE, false, false},
    {REF_ACCEPTED,    EXPIRED,     B, "LUD", REF_EXPIRED,     LEDGER_RELEASE, false, false},
    {REF_SCHEDULED,   EXPIRED,     B, "LUD", REF_EXPIRED,     LEDGER_RELEASE, false, false},
};
#define N_LEGAL (sizeof s_legal / sizeof s_legal[0])

/* Counted by hand from the rows above: 18 rows in all three directions, COMPLETED
 * in two, the two FOLLOW_UP rows in one: 54 + 2 + 2. */
#define EXPECTED_LEGAL 58

static const char s_dir_letter[] = {[REF_DIR_LATERAL] = 'L', [REF_DIR_UP] = 'U',
                                    [REF_DIR_DOWN] = 'D'};

/* Per step: who makes it and the why for each way of getting it wrong. */
typedef struct {
    ref_actor_t actor;
    const char *why_actor;
    const char *why_dir;   /* NULL: applies to every direction */
    const char *dirs;
    const char *why_state;
} step_why_t;

static const step_why_t s_step_why[] = {
    [RECEIVED] = {B, "only the broker records receipt", NULL, "LUD",
                  "receipt is recorded only for a requested referral"},
    [ACCEPTED] = {R, "only the receiver may accept", NULL, "LUD",
                  "only a requested or received referral can be accepted"},
    [REJECTED] = {R, "only the receiver may reject", NULL, "LUD",
                  "only a requested or received referral can be rejected"},
    [SCHEDULED] = {R, "only the receiver may schedule", NULL, "LUD",
                   "only an accepted referral can be scheduled"},
    [ARRIVED] = {R, "only the receiver may record arrival", NULL, "LUD",
                 "arrival is recorded only for an accepted or scheduled referral"},
    [IN_PROGRESS] = {R, "only the receiver may record care in progress", NULL, "LUD",
                     "care can start only after the patient has arrived"},
    [COMPLETED] = {R, "only the receiver may complete",
                   "a down-referral completes when the township confirms follow-up", "LU",
                   "only a referral in progress can be completed"},
    [CANCELLED] = {S, "only the sender may cancel", NULL, "LUD",
                   "a referral cannot be cancelled once the patient has arrived"},
    [NO_SHOW] = {R, "only the receiver may record a no-show", NULL, "LUD",
                 "a no-show is recorded only for a scheduled referral"},
    [EXPIRED] = {B, "only the broker records expiry", NULL, "LUD",
                 "a referral cannot expire once the patient has arrived"},
    [FOLLOW_UP] = {R, "only the receiver may confirm follow-up",
                   "only a down-referral completes by follow-up confirmation", "D",
                   "follow-up is confirmed only after the patient has arrived"},
};

static bool s_is_terminal(ref_state_t s)
{
    return s == REF_REJECTED || s == REF_COMPLETED || s == REF_CANCELLED ||
           s == REF_NO_SHOW || s == REF_EXPIRED;
}

static const legal_t *s_find_legal(ref_state_t from, int step, ref_actor_t actor, ref_dir_t dir)
{
    for (size_t i = 0; i < N_LEGAL; i++) {
        const legal_t *l = &s_legal[i];
        if (l->from == from && l->step == step && l->actor == actor &&
            strchr(l->dirs, s_dir_letter[dir]) != NULL)
            return l;
    }
    return NULL;
}

/* The why referral_next must give for an illegal combination, in the
 * documented order of checks. */
static const char *s_expected_why(int from, int step, int actor, int dir)
{
    if (step < RECEIVED || step > FOLLOW_UP)
        return "unknown referral step";
    if (actor < ACTOR_SENDER || actor > ACTOR_BROKER)
        return "unknown actor";
    if (dir < REF_DIR_LATERAL || dir > REF_DIR_DOWN)
        return "unknown referral direction";
    if (from < 0 || from >= REF_STATE_COUNT)
        return "unknown referral state";
    if (from == REF_NONE)
        return "no such referral";
    if (s_is_terminal((ref_state_t)from))
        return "the referral is closed";
    const step_why_t *w = &s_step_why[step];
    if ((int)w->actor != actor)
        return w->why_actor;
    if (strchr(w->dirs, s_dir_letter[dir]) == NULL)
        return w->why_dir;
    return w->why_state;
}

static void test_referral_every_combination(void **state)
{
    (void)state;
    int legal = 0, illegal = 0;
    for (int from = -1; from <= REF_STATE_COUNT; from++) {
        for (int step = -1; step <= FOLLOW_UP + 1; step++) {
            for (int actor = -1; actor <= ACTOR_BROKER + 1; actor++) {
                for (int dir = -1; dir <= REF_DIR_DOWN + 1; dir++) {
                    bool in_range = from >= 0 && from < REF_STATE_COUNT && actor >= 0 &&
                                    actor <= ACTOR_BROKER && dir >= 0 && dir <= REF_DIR_DOWN;
                    const legal_t *want =
                        in_range ? s_find_legal((ref_state_t)from, step, (ref_actor_t)actor,
                                                (ref_dir_t)dir)
                                 : NULL;
                    ref_transition_t out = {.to = (ref_state_t)77,
                                            .ledger = (ref_ledger_t)77,
                                            .needs_reason = true,
                                            .needs_summary = true};
                    const char *why = "untouched";
                    int rc = referral_next((ref_state_t)from, step, (ref_actor_t)actor,
                                           (ref_dir_t)dir, &out, &why);
                    char ctx[128];
                    snprintf(ctx, sizeof ctx, "from=%d step=%d actor=%d dir=%d", from, step,
                             actor, dir);
                    if (want != NULL) {
                        if (rc != 0)
                            fail_msg("%s: want legal, got '%s'", ctx, why);
                        assert_int_equal(out.to, want->to);
                        assert_int_equal(out.ledger, want->ledger);
                        assert_int_equal(out.needs_reason, want->reason);
                        assert_int_equal(out.needs_summary, want->summary);
                        assert_null(why);
                        /* Every step leads somewhere open or terminal, never back. */
                        assert_true(out.to != REF_NONE && out.to != REF_REQUESTED);
                        legal++;
                    } else {
                        if (rc != -1)
                            fail_msg("%s: want illegal, got to=%d", ctx, out.to);
                        const char *exp = s_expected_why(from, step, actor, dir);
                        assert_non_null(why);
                        if (strcmp(why, exp) != 0)
                            fail_msg("%s: why '%s', want '%s'", ctx, why, exp);
                        /* A refused step leaves *out alone. */
                        assert_int_equal(out.to, 77);
                        assert_int_equal(out.ledger, 77);
                        illegal++;
                    }
                }
            }
        }
    }
    assert_int_equal(legal, EXPECTED_LEGAL);
    /* (REF_STATE_COUNT + 2) states x 14 steps x 5 actors x 5 directions. */
    assert_int_equal(legal + illegal, (REF_STATE_COUNT + 2) * (FOLLOW_UP + 3) * 5 * 5);

}

static void s_expect_why(ref_state_t from, int step, ref_actor_t actor, ref_dir_t dir,
                         const char *want)
{
    ref_transition_t out;
    const char *why = NULL;
    assert_int_equal(referral_next(from, step, actor, dir, &out, &why), -1);
    assert_non_null(why);
    assert_string_equal(why, want);
}

static void test_referral_main_refusals(void **state)
{
    (void)state;
    s_expect_why(REF_REQUESTED, ACCEPTED, S, REF_DIR_UP, "only the receiver may accept");
    s_expect_why(REF_RECEIVED, ACCEPTED, B, REF_DIR_UP, "only the receiver may accept");
    s_expect_why(REF_ACCEPTED, CANCELLED, R, REF_DIR_UP, "only the sender may cancel");
    s_expect_why(REF_REQUESTED, RECEIVED, R, REF_DIR_UP, "only the broker records receipt");
    s_expect_why(REF_SCHEDULED, EXPIRED, S, REF_DIR_DOWN, "only the broker records expiry");
    s_expect_why(REF_IN_PROGRESS, COMPLETED, R, REF_DIR_DOWN,
                 "a down-referral completes when the township confirms follow-up");
    s_expect_why(REF_ARRIVED, FOLLOW_UP, R, REF_DIR_UP,
                 "only a down-referral completes by follow-up confirmation");
    s_expect_why(REF_IN_PROGRESS, FOLLOW_UP, R, REF_DIR_LATERAL,
                 "only a down-referral completes by follow-up confirmation");
    s_expect_why(REF_REQUESTED, 0, R, REF_DIR_UP, "unknown referral step");
    s_expect_why(REF_REQUESTED, 12, R, REF_DIR_UP, "unknown referral step");
    s_expect_why(REF_REQUESTED, -5, R, REF_DIR_UP, "unknown referral step");
    s_expect_why(REF_NONE, ACCEPTED, R, REF_DIR_UP, "no such referral");
    s_expect_why(REF_NONE, RECEIVED, B, REF_DIR_UP, "no such referral");
    s_expect_why(REF_COMPLETED, ACCEPTED, R, REF_DIR_UP, "the referral is closed");
    s_expect_why(REF_CANCELLED, CANCELLED, S, REF_DIR_UP, "the referral is closed");
    s_expect_why(REF_EXPIRED, EXPIRED, B, REF_DIR_UP, "the referral is closed");
    /* Closed beats wrong actor: a sender accepting a rejected referral. */
    s_expect_why(REF_REJECTED, ACCEPTED, S, REF_DIR_UP, "the referral is closed");
    /* Wrong state in an open referral. */
    s_expect_why(REF_ARRIVED, CANCELLED, S, REF_DIR_UP,
                 "a referral cannot be cancelled once the patient has arrived");
    s_expect_why(REF_IN_PROGRESS, EXPIRED, B, REF_DIR_UP,
                 "a referral cannot expire once the patient has arrived");
    s_expect_why(REF_ARRIVED, COMPLETED, R, REF_DIR_UP,
                 "only a referral in progress can be completed");
    s_expect_why(REF_ACCEPTED, NO_SHOW, R, REF_DIR_UP,
                 "a no-show is recorded only for a scheduled referral");
    s_expect_why(REF_RECEIVED, RECEIVED, B, REF_DIR_UP,
                 "receipt is recorded only for a requested referral");
    s_expect_why(REF_SCHEDULED, ACCEPTED, R, REF_DIR_UP,
                 "only a requested or received referral can be accepted");
}

static void test_referral_flags_and_ledger(void **state)
{
    (void)state;
    ref_transition_t out;
    const char *why;

    assert_int_equal(referral_next(REF_RECEIVED, ACCEPTED, R, REF_DIR_UP, &out, &why), 0);
    assert_int_equal(out.ledger, LEDGER_CLAIM);
    assert_false(out.needs_reason);

    assert_int_equal(referral_next(REF_RECEIVED, REJECTED, R, REF_DIR_UP, &out, &why), 0);
    assert_true(out.needs_reason);
    assert_int_equal(out.ledger, LEDGER_NONE);

    assert_int_equal(referral_next(REF_SCHEDULED, CANCELLED, S, REF_DIR_DOWN, &out, &why), 0);
    assert_true(out.needs_reason);
    assert_int_equal(out.ledger, LEDGER_RELEASE);

    assert_int_equal(referral_next(REF_IN_PROGRESS, COMPLETED, R, REF_DIR_LATERAL, &out, &why),
                     0);
    assert_true(out.needs_summary);
    assert_int_equal(out.to, REF_COMPLETED);

    assert_int_equal(referral_next(REF_ARRIVED, FOLLOW_UP, R, REF_DIR_DOWN, &out, &why), 0);
    assert_false(out.needs_summary);
    assert_int_equal(out.to, REF_COMPLETED);

    assert_int_equal(referral_next(REF_SCHEDULED, NO_SHOW, R, REF_DIR_UP, &out, &why), 0);
    assert_int_equal(out.ledger, LEDGER_RELEASE);
    assert_int_equal(referral_next(REF_REQUESTED, EXPIRED, B, REF_DIR_UP, &out, &why), 0);
    assert_int_equal(out.ledger, LEDGER_RELEASE);

    /* out and why may be NULL when only legality is wanted. */
    assert_int_equal(referral_next(REF_REQUESTED, RECEIVED, B, REF_DIR_UP, NULL, NULL), 0);
    assert_int_equal(referral_next(REF_COMPLETED, RECEIVED, B, REF_DIR_UP, NULL, NULL), -1);
}

/* Whole lives, as the store would walk them. */
static void s_walk(ref_dir_t dir, const int *steps, const ref_actor_t *actors, size_t n,
                   ref_state_t end)
{
    ref_state_t st = REF_REQUESTED;
    for (size_t i = 0; i < n; i++) {
        ref_transition_t out;
        const char *why = NULL;
        if (referral_next(st, steps[i], actors[i], dir, &out, &why) != 0)
            fail_msg("step %d in %s: %s", steps[i], referral_state_name(st), why);
        st = out.to;
    }
    assert_int_equal(st, end);
    assert_true(referral_terminal(st));
    assert_false(referral_open(st));
}

static void test_referral_whole_lives(void **state)
{
    (void)state;
    const int up[] = {RECEIVED, ACCEPTED, SCHEDULED, ARRIVED, IN_PROGRESS, COMPLETED};
    const ref_actor_t up_a[] = {B, R, R, R, R, R};
    s_walk(REF_DIR_UP, up, up_a, 6, REF_COMPLETED);

    const int down[] = {RECEIVED, ACCEPTED, ARRIVED, FOLLOW_UP};
    const ref_actor_t down_a[] = {B, R, R, R};
    s_walk(REF_DIR_DOWN, down, down_a, 4, REF_COMPLETED);

    const int noshow[] = {ACCEPTED, SCHEDULED, NO_SHOW};
    const ref_actor_t noshow_a[] = {R, R, R};
    s_walk(REF_DIR_LATERAL, noshow, noshow_a, 3, REF_NO_SHOW);

    const int cancel[] = {RECEIVED, ACCEPTED, CANCELLED};
    const ref_actor_t cancel_a[] = {B, R, S};
    s_walk(REF_DIR_UP, cancel, cancel_a, 3, REF_CANCELLED);
}

static void test_referral_state_predicates(void **state)
{
    (void)state;
    static const char *const names[REF_STATE_COUNT] = {
        "NONE",      "REQUESTED", "RECEIVED",  "ACCEPTED", "REJECTED", "SCHEDULED",
        "ARRIVED",   "IN_PROGRESS", "COMPLETED", "CANCELLED", "NO_SHOW", "EXPIRED",
    };
    int terminal = 0, open = 0;
    for (int s = 0; s < REF_STATE_COUNT; s++) {
        assert_string_equal(referral_state_name((ref_state_t)s), names[s]);
        assert_int_equal(referral_terminal((ref_state_t)s), s_is_terminal((ref_state_t)s));
        bool want_open = s != REF_NONE && !s_is_terminal((ref_state_t)s);
        assert_int_equal(referral_open((ref_state_t)s), want_open);
        terminal += referral_terminal((ref_state_t)s);
        open += referral_open((ref_state_t)s);
    }
    assert_int_equal(terminal, 5);
    assert_int_equal(open, 6);
    assert_false(referral_open(REF_NONE));
    assert_false(referral_terminal(REF_NONE));
    assert_string_equal(referral_state_name(REF_STATE_COUNT), "UNKNOWN");
    assert_string_equal(referral_state_name((ref_state_t)-1), "UNKNOWN");
    assert_false(referral_open(REF_STATE_COUNT));
    assert_false(referral_terminal(REF_STATE_COUNT));
}

/* The actor of each step is the one referral_next accepts for it. */
static void test_referral_step_actor(void **state)
{
    (void)state;
    int known = 0;
    for (int step = -1; step < 20; step++) {
        int a = referral_step_actor(step);
        if (a < 0)
            continue;
        known++;
        /* From every open state: every other actor is refused, for the same
         * reason from every state (the actor is checked before the direction
         * and the state), and never for the reason the owner may get. */
        for (int other = ACTOR_SENDER; other <= ACTOR_BROKER; other++) {
            if (other == a)
                continue;
            const char *first = NULL;
            for (int from = REF_REQUESTED; from < REF_STATE_COUNT; from++) {
                if (referral_terminal((ref_state_t)from))
                    continue;
                const char *own = NULL, *why = NULL;
                (void)referral_next((ref_state_t)from, step, (ref_actor_t)a, REF_DIR_UP, NULL,
                                    &own);
                assert_int_equal(referral_next((ref_state_t)from, step, (ref_actor_t)other,
                                               REF_DIR_UP, NULL, &why),
                                 -1);
                assert_non_null(why);
                if (own != NULL)
                    assert_string_not_equal(why, own);
                if (first == NULL)
                    first = why;
                assert_string_equal(why, first);
            }
        }
    }
    assert_int_equal(known, 11);
    assert_int_equal(referral_step_actor(MEDROUTE__V1__REFERRAL_STEP__STEP_ACCEPTED),
                     ACTOR_RECEIVER);
    assert_int_equal(referral_step_actor(MEDROUTE__V1__REFERRAL_STEP__STEP_CANCELLED),
                     ACTOR_SENDER);
    assert_int_equal(referral_step_actor(0), -1);
    assert_int_equal(referral_step_actor(12), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_referral_every_combination),
        cmocka_unit_test(test_referral_main_refusals),
        cmocka_unit_test(test_referral_flags_and_ledger),
        cmocka_unit_test(test_referral_whole_lives),
        cmocka_unit_test(test_referral_state_predicates),
        cmocka_unit_test(test_referral_step_actor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
