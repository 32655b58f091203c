/*
 * policy.h - who may send what: the role rules of the medical community.
 *
 * A township health centre cannot send an ImagingReport or a LabResult and
 * cannot publish capacity; only a lead hospital publishes capacity; the
 * referral steps themselves are checked by the referral state machine
 * (only the receiver accepts, only the sender cancels).  Pure, one table.
 */
#ifndef MR_POLICY_H
#define MR_POLICY_H

#include "registry.h"

/* 0 when a facility of role may send kind, else -1 with a reason. */
int policy_may_send(role_t role, int kind, const char **why);
/* True for kinds addressed to the broker itself (not routed). */
int policy_broker_bound(int kind);

#endif
