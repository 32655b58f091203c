/*
 * slots.h - the reserved-capacity ledger's arithmetic (预留号源/床位/检查).
 *
 * The lead hospital publishes, per resource (specialist clinic slots per
 * department and day, inpatient beds per ward and day, exam bookings per
 * modality and day), its capacity and the share reserved for referrals from
 * contracted family doctors.  Pure functions over one resource's counters;
 * the store applies them inside the transaction of the message that causes
 * them.
 *
 * Invariants of a ledger_t (checked by slots_valid):
 *   0 <= reserved <= capacity
 *   0 <= claimed_reserved <= reserved - released
 *   0 <= released <= reserved
 *   0 <= general_used <= (capacity - reserved) + released
 */
#ifndef MR_SLOTS_H
#define MR_SLOTS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { RES_CLINIC = 0, RES_BED, RES_EXAM, RES_KIND_COUNT } res_kind_t;

typedef struct {
    int64_t capacity;          /* units offered */
    int64_t reserved;          /* of which kept for family-doctor referrals */
    int64_t claimed_reserved;  /* reserved units taken by family-doctor referrals */
    int64_t general_used;      /* general units taken by referrals (incl. family-doctor
                                  referrals that found the reserve gone) */
    int64_t released;          /* reserved units released to general use at the cut-off */
} ledger_t;

typedef enum {
    CLAIM_NONE = 0,            /* nothing available: accepted over capacity */
    CLAIM_RESERVED,
    CLAIM_GENERAL,
} claim_t;

/*
 * Checks a published capacity: 0, or -1 with why when capacity < 0,
 * reserved < 0 or > capacity, or reserved / capacity < min_share (then
 * *under_min is set, so the caller can refuse or, when config allows,
 * accept and warn).  A capacity of 0 is valid (nothing offered).
 * *under_min is false in every other case; under_min and why may be NULL.
 */
int slots_check_offer(int64_t capacity, int64_t reserved, double min_share, bool *under_min,
                      const char **why);

/*
 * Takes one unit for an accepted referral: a family-doctor referral takes a
 * reserved unit while one is left (not claimed, not released), else a
 * general one; any other referral takes a general unit.  Returns what was
 * taken; CLAIM_NONE changes nothing (over capacity).
 */
claim_t slots_claim(ledger_t *l, bool family_doctor);
/* Gives back what slots_claim took (cancel, no-show, expiry).  A release
 * with nothing of that kind claimed changes nothing.  A reserved unit goes
 * back to the reserve, also after slots_release_unclaimed: a caller past
 * the cut-off calls that again, so that the unit is general at once
 * (docs/referrals.md 2.2; clinical.c does). */
void slots_release(ledger_t *l, claim_t c);
/* At the cut-off: unclaimed reserved units become general.  Returns how many. */
int64_t slots_release_unclaimed(ledger_t *l);

/* Reserved share of capacity, 0 when capacity is 0. */
double slots_reserved_share(const ledger_t *l);
/* Units of the reserve taken by family-doctor referrals / reserve; 0 if none reserved. */
double slots_reserve_utilisation(const ledger_t *l);
bool slots_valid(const ledger_t *l);

const char *slots_kind_name(res_kind_t k);   /* "clinic", "bed", "exam" */
const char *slots_claim_name(claim_t c);     /* "none", "reserved", "general" */

#endif
