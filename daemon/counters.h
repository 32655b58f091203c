/*
 * counters.h - message-flow counters since start.
 *
 * Plain data embedded in the server; loop thread only.  Issue 5 makes the
 * domain tallies durable; these are the live flow figures.
 */
#ifndef MR_COUNTERS_H
#define MR_COUNTERS_H

#include <stdint.h>

#include "mr_codec.h"

typedef enum {
    CNT_RECEIVED = 0,   /* frames received on the facility endpoint */
    CNT_STORED,         /* messages committed (first time) */
    CNT_DUPLICATE,      /* resends acknowledged again, not routed again */
    CNT_DELIVERED,      /* delivery acks committed */
    CNT_SENT,           /* deliveries sent (first attempts) */
    CNT_REDELIVERED,    /* deliveries sent again */
    CNT_REJECTED,       /* Error replies, all codes */
    CNT_EXPIRED,        /* messages moved to dead for expiry */
    CNT_DEAD,           /* messages moved to dead for any reason */
    CNT_CONNECTS,       /* Hellos accepted that began a session (a connection bound) */
    CNT_DISCONNECTS,    /* facilities gone silent or replaced */
    CNT_SEND_FAILED,    /* frames the socket refused (queue full, out of memory) */
    CNT_PRUNED,         /* delivered messages deleted after their retention */
    CNT_ESCALATIONS,    /* service levels missed (acceptance, report, result, read-back) */
    CNT_RESERVE_RELEASES, /* resources whose unclaimed reserve went to general use */
    CNT_INDICATOR_WARNINGS, /* indicators that went into warning or off target */
    CNT_SECURITY_EVENTS, /* unknown keys, spoofed sources, frames without User-Id */
    CNT_INTAKE_PAUSED,  /* times the facility endpoint stopped reading: store queue full (flow.c) */
    CNT_OPERATOR_REJECTED, /* Error replies on the operator endpoint */
    CNT_LATE_ACKS,      /* DeliveryAck frames that came after their session ended (session.h) */
    CNT_HELLOS_REPEATED, /* Hellos on the connection of a session already begun: restarts */
    CNT_RESENDS_SKIPPED, /* in-flight deliveries such a Hello did not send again: one
                            before it in that session had (router_on_hello) */
    CNT_PEER_GONE,      /* frames for a connection that had closed (server_send_facility_msg,
                         * an operator's reply: opapi.c) */
    CNT_COUNT
} counter_t;

typedef struct {
    uint64_t v[CNT_COUNT];
    uint64_t rejected_by_code[MR_E_COUNT];
} counters_t;

const char *counters_name(counter_t c);

#endif
