/*
 * fuzz_payloads.c - libFuzzer target: every clinical payload decoder.
 *
 * The first input byte picks the payload type (modulo the table's size),
 * the rest is decoded with that type's generated unpack function.  A
 * decoded payload is walked, must re-encode stably and must survive the
 * JSON mapping both ways.
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "mr_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One function per payload type, each calling that type's own unpack. */
#define S_UNPACK(name, fn)                                                                         \
    static ProtobufCMessage *s_unpack_##name(size_t len, const uint8_t *buf)                       \
    {                                                                                              \
        return (ProtobufCMessage *)fn(NULL, len, buf);                                             \
    }
S_UNPACK(referral, medroute__v1__referral__unpack)
S_UNPACK(referral_update, medroute__v1__referral_update__unpack)
S_UNPACK(imaging_request, medroute__v1__imaging_request__unpack)
S_UNPACK(imaging_report, medroute__v1__imaging_report__unpack)
S_UNPACK(lab_order, medroute__v1__lab_order__unpack)
S_UNPACK(lab_result, medroute__v1__lab_result__unpack)
S_UNPACK(capacity, medroute__v1__capacity_notice__unpack)
S_UNPACK(critical_ack, medroute__v1__critical_ack__unpack)
S_UNPACK(visit_tally, medroute__v1__visit_tally__unpack)

typedef struct {
    ProtobufCMessage *(*unpack)(size_t, const uint8_t *);
    const ProtobufCMessageDescriptor *desc;
} s_decoder_t;

/* In Kind order: index + 1 is the kind whose payload it is. */
static const s_decoder_t s_decoders[] = {
    {s_unpack_referral, &medroute__v1__referral__descriptor},
    {s_unpack_referral_update, &medroute__v1__referral_update__descriptor},
    {s_unpack_imaging_request, &medroute__v1__imaging_request__descriptor},
    {s_unpack_imaging_report, &medroute__v1__imaging_report__descriptor},
    {s_unpack_lab_order, &medroute__v1__lab_order__descriptor},
    {s_unpack_lab_result, &medroute__v1__lab_result__descriptor},
    {s_unpack_capacity, &medroute__v1__capacity_notice__descriptor},
    {s_unpack_critical_ack, &medroute__v1__critical_ack__descriptor},
    {s_unpack_visit_tally, &medroute__v1__visit_tally__descriptor},
};
#define S_N_DECODERS (sizeof s_decoders / sizeof s_decoders[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const s_decoder_t *d = &s_decoders[data[0] % S_N_DECODERS];
    ProtobufCMessage *m = d->unpack(size - 1, data + 1);
    if (m == NULL)
        return 0;
    FUZZ_CHECK(m->descriptor == d->desc);
    fuzz_walk(m);
    fuzz_repack(m);
    fuzz_json_roundtrip(m);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
