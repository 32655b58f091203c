/*
 * slots.c - the reserved-capacity ledger's arithmetic (预留号源/床位/检查).
 *
 * One ledger_t per published resource (clinic slots of a department and day,
 * beds of a ward and day, exam bookings of a modality and day).  The store
 * owns the ledgers and calls these functions inside the transaction of the
 * message that causes the change; this file owns nothing, keeps no state and
 * runs on whichever thread calls it (the store thread, the unit tests).
 *
 * The ledger splits capacity into two pools:
 *
 *   capacity = reserved + (capacity - reserved)
 *              '------'   '------------------'
 *              reserve    general pool
 *
 *   reserve:  reserved - released - claimed_reserved   units left for
 *             family-doctor referrals (called "left" below)
 *   general:  (capacity - reserved) + released - general_used   units left
 *             for anyone
 *
 * Invariants (slots_valid checks them; every mutator keeps them):
 *   1. 0 <= reserved <= capacity
 *   2. 0 <= claimed_reserved <= reserved - released
 *   3. 0 <= released <= reserved
 *   4. 0 <= general_used <= (capacity - reserved) + released
 *   5. A claim takes exactly one unit from one pool or none (CLAIM_NONE,
 *      nothing changes); slots_release of that claim gives exactly that unit
 *      back.  Hence claimed_reserved + general_used counts the referrals
 *      holding a unit.
 *   6. slots_release_unclaimed moves every reserved unit that is left to
 *      released (the general pool); afterwards left == 0.
 *
 * The 20 % minimum share is policy, so it is a parameter (min_share) of
 * slots_check_offer, not a constant here.
 */
#include "slots.h"

#include <assert.h>
#include <stddef.h>

/* Reserved units neither claimed nor released. */
static int64_t s_reserve_left(const ledger_t *l)
{
    return l->reserved - l->released - l->claimed_reserved;
}

/* General units (including released ones) not yet used. */
static int64_t s_general_left(const ledger_t *l)
{
    return (l->capacity - l->reserved) + l->released - l->general_used;
}

static int s_fail(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return -1;
}

int slots_check_offer(int64_t capacity, int64_t reserved, double min_share, bool *under_min,
                      const char **why)
{
    if (under_min != NULL)
        *under_min = false;
    if (capacity < 0)
        return s_fail(why, "capacity is negative");
    if (reserved < 0)
        return s_fail(why, "reserved capacity is negative");
    if (reserved > capacity)
        return s_fail(why, "reserved capacity exceeds capacity");
    /* Nothing offered, nothing to reserve a share of. */
    if (capacity == 0) {
        if (why != NULL)
            *why = NULL;
        return 0;
    }
    /*
     * The division is correctly rounded, so an exact share (2 of 10) equals
     * the literal 0.2 and is not under it.
     */
    if ((double)reserved / (double)capacity < min_share) {
        if (under_min != NULL)
            *under_min = true;
        return s_fail(why, "reserved share is below the required minimum");
    }
    if (why != NULL)
        *why = NULL;
    return 0;
}

claim_t slots_claim(ledger_t *l, bool family_doctor)
{
    assert(slots_valid(l));
    if (family_doctor && s_reserve_left(l) > 0) {
        l->claimed_reserved++;
        assert(slots_valid(l));
        return CLAIM_RESERVED;
    }
    if (s_general_left(l) > 0) {
        l->general_used++;
        assert(slots_valid(l));
        return CLAIM_GENERAL;
    }
    return CLAIM_NONE;
}

void slots_release(ledger_t *l, claim_t c)
{
    assert(slots_valid(l));
    /*
     * A release without a matching claim would drive a counter negative; the
     * floor keeps the ledger valid and the call a no-op (the store's records
     * are what went wrong, and it is not this function's to crash over).
     */
    switch (c) {
    case CLAIM_RESERVED:
        if (l->claimed_reserved > 0)
            l->claimed_reserved--;
        break;
    case CLAIM_GENERAL:
        if (l->general_used > 0)
            l->general_used--;
        break;
    case CLAIM_NONE:
    default:
        break;
    }
    assert(slots_valid(l));
}

int64_t slots_release_unclaimed(ledger_t *l)
{
    assert(slots_valid(l));
    int64_t n = s_reserve_left(l);
    if (n < 0)
        n = 0;
    l->released += n;
    assert(slots_valid(l) && s_reserve_left(l) == 0);
    return n;
}

double slots_reserved_share(const ledger_t *l)
{
    if (l->capacity <= 0)
        return 0.0;
    return (double)l->reserved / (double)l->capacity;
}

double slots_reserve_utilisation(const ledger_t *l)
{
    if (l->reserved <= 0)
        return 0.0;
    return (double)l->claimed_reserved / (double)l->reserved;
}

bool slots_valid(const ledger_t *l)
{
    if (l == NULL)
        return false;
    /* Ordered so that no subtraction below can overflow. */
    if (l->capacity < 0 || l->reserved < 0 || l->reserved > l->capacity)
        return false;
    if (l->released < 0 || l->released > l->reserved)
        return false;
    if (l->claimed_reserved < 0 || l->claimed_reserved > l->reserved - l->released)
        return false;
    if (l->general_used < 0 || l->general_used > (l->capacity - l->reserved) + l->released)
        return false;
    return true;
}

const char *slots_kind_name(res_kind_t k)
{
    switch (k) {
    case RES_CLINIC:
        return "clinic";
    case RES_BED:
        return "bed";
    case RES_EXAM:
        return "exam";
    case RES_KIND_COUNT:
    default:
        return "unknown";
    }
}

const char *slots_claim_name(claim_t c)
{
    switch (c) {
    case CLAIM_NONE:
        return "none";
    case CLAIM_RESERVED:
        return "reserved";
    case CLAIM_GENERAL:
        return "general";
    default:
        return "unknown";
    }
}
