/* counters.c - names of the flow counters (the data lives in server_t). */
#include "counters.h"

static const char *const s_names[CNT_COUNT] = {
    [CNT_RECEIVED] = "received",       [CNT_STORED] = "stored",
    [CNT_DUPLICATE] = "duplicate",     [CNT_DELIVERED] = "delivered",
    [CNT_SENT] = "sent",               [CNT_REDELIVERED] = "redelivered",
    [CNT_REJECTED] = "rejected",       [CNT_EXPIRED] = "expired",
    [CNT_DEAD] = "dead",               [CNT_CONNECTS] = "connects",
    [CNT_DISCONNECTS] = "disconnects", [CNT_SEND_FAILED] = "send_failed",
    [CNT_PRUNED] = "pruned",           [CNT_ESCALATIONS] = "escalations",
    [CNT_RESERVE_RELEASES] = "reserve_releases", [CNT_INDICATOR_WARNINGS] = "indicator_warnings",
    [CNT_SECURITY_EVENTS] = "security_events", [CNT_INTAKE_PAUSED] = "intake_paused",
    [CNT_OPERATOR_REJECTED] = "operator_rejected", [CNT_LATE_ACKS] = "late_acks",
    [CNT_HELLOS_REPEATED] = "hellos_repeated", [CNT_RESENDS_SKIPPED] = "resends_skipped",
    [CNT_PEER_GONE] = "peer_gone",
};

const char *counters_name(counter_t c)
{
    return c < CNT_COUNT ? s_names[c] : "?";
}
