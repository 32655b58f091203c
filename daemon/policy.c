/*
 * policy.c - the role rules, as one table: for each kind, the roles that
 * may send it.  Everything not listed is allowed to every role.
 */
#include "policy.h"

#include "mr_codec.h"

#define S_ROLE(r) (1u << (r))
#define S_UPPER (S_ROLE(ROLE_LEAD) | S_ROLE(ROLE_IMAGING_CENTRE) | S_ROLE(ROLE_LAB_CENTRE) | \
                 S_ROLE(ROLE_ECG_CENTRE) | S_ROLE(ROLE_COUNTY_MEMBER))

typedef struct {
    int kind;
    unsigned roles;       /* bit set of role_t allowed to send it */
    int broker_bound;     /* addressed to the broker, not to a facility */
    const char *why;      /* said to everyone else */
} s_rule_t;

static const s_rule_t s_rules[] = {
    {MEDROUTE__V1__KIND__KIND_IMAGING_REPORT, S_UPPER, 0,
     "only a reading centre or hospital may send an imaging report"},
    {MEDROUTE__V1__KIND__KIND_LAB_RESULT, S_UPPER, 0,
     "only a lab centre or hospital may send a lab result"},
    {MEDROUTE__V1__KIND__KIND_CAPACITY, S_ROLE(ROLE_LEAD), 1,
     "only the lead hospital may publish capacity"},
    {MEDROUTE__V1__KIND__KIND_VISIT_TALLY, ~0u, 1, ""},
};

static const s_rule_t *s_rule(int kind)
{
    for (size_t i = 0; i < sizeof s_rules / sizeof s_rules[0]; i++)
        if (s_rules[i].kind == kind)
            return &s_rules[i];
    return NULL;
}

int policy_may_send(role_t role, int kind, const char **why)
{
    const s_rule_t *r = s_rule(kind);
    if (r == NULL || (r->roles & S_ROLE(role)))
        return 0;
    *why = r->why;
    return -1;
}

int policy_broker_bound(int kind)
{
    const s_rule_t *r = s_rule(kind);
    return r != NULL && r->broker_bound;
}
