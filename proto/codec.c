/*
 * codec.c - names and rules shared by every user of the wire protocol.
 *
 * Pure functions, no state; safe on any thread.
 */
#include "mr_codec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct {
    const char *name;
    int payload_case;
} s_kind_t;

static const s_kind_t s_kinds[MR_KIND_MAX + 1] = {
    [MEDROUTE__V1__KIND__KIND_REFERRAL] = {"referral", MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL},
    [MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE] = {"referral_update",
                                                  MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL_UPDATE},
    [MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST] = {"imaging_request",
                                                  MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REQUEST},
    [MEDROUTE__V1__KIND__KIND_IMAGING_REPORT] = {"imaging_report",
                                                 MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REPORT},
    [MEDROUTE__V1__KIND__KIND_LAB_ORDER] = {"lab_order", MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER},
    [MEDROUTE__V1__KIND__KIND_LAB_RESULT] = {"lab_result", MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_RESULT},
    [MEDROUTE__V1__KIND__KIND_CAPACITY] = {"capacity", MEDROUTE__V1__ENVELOPE__PAYLOAD_CAPACITY},
    [MEDROUTE__V1__KIND__KIND_CRITICAL_ACK] = {"critical_ack",
                                               MEDROUTE__V1__ENVELOPE__PAYLOAD_CRITICAL_ACK},
    [MEDROUTE__V1__KIND__KIND_VISIT_TALLY] = {"visit_tally",
                                              MEDROUTE__V1__ENVELOPE__PAYLOAD_VISIT_TALLY},
};

const char *mr_kind_name(int kind)
{
    if (kind < 1 || kind > MR_KIND_MAX)
        return NULL;
    return s_kinds[kind].name;
}

int mr_kind_from_name(const char *name)
{
    for (int k = 1; k <= MR_KIND_MAX; k++)
        if (strcasecmp(name, s_kinds[k].name) == 0)
            return k;
    return -1;
}

int mr_kind_payload_case(int kind)
{
    if (kind < 1 || kind > MR_KIND_MAX)
        return 0;
    return s_kinds[kind].payload_case;
}

static const char *const s_priorities[] = {"routine", "urgent", "stat"};

const char *mr_priority_name(int priority)
{
    if (priority < 0 || priority > 2)
        return NULL;
    return s_priorities[priority];
}

int mr_priority_from_name(const char *name)
{
    for (int p = 0; p <= 2; p++)
        if (strcasecmp(name, s_priorities[p]) == 0)
            return p;
    return -1;
}

const char *mr_error_name(int code)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&medroute__v1__error_code__descriptor, code);
    if (v == NULL)
        return "UNKNOWN_CODE";
    /* Enum value names are "ERROR_X": drop the prefix. */
    return strncmp(v->name, "ERROR_", 6) == 0 ? v->name + 6 : v->name;
}

int mr_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return -ENOMEM;
    *len = protobuf_c_message_pack(msg, buf);
    *out = buf;
    return 0;
}

int mr_embed_field(ProtobufCMessageUnknownField *uf, uint32_t tag, const uint8_t *bytes,
                   size_t len)
{
    uint8_t *buf = malloc(len + 10);
    if (buf == NULL)
        return -ENOMEM;
    size_t n = 0;
    for (size_t v = len; ; v >>= 7) {
        buf[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        if (v < 0x80)
            break;
    }
    memcpy(buf + n, bytes, len);
    uf->tag = tag;
    uf->wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    uf->len = n + len;
    uf->data = buf;
    return 0;
}

int64_t mr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
