/*
 * Unit tests for proto/codec.c: kind, priority and error-code names, the
 * kind -> payload rule, mr_pack, the frames packed around an encoded
 * Envelope (the same bytes as protobuf-c's for the same frame), a field's
 * bytes in a frame, the comparison that tells a resend from a conflict, and
 * UTF-8: its check, the walk that finds a string field that is not, and
 * where text may be cut.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "mr_codec.h"

static void test_codec_kind_names_round_trip(void **state)
{
    (void)state;
    static const struct {
        int kind;
        const char *name;
        int payload;
    } kinds[] = {
        {MEDROUTE__V1__KIND__KIND_REFERRAL, "referral", MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL},
        {MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE, "referral_update",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL_UPDATE},
        {MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST, "imaging_request",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REQUEST},
        {MEDROUTE__V1__KIND__KIND_IMAGING_REPORT, "imaging_report",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_IMAGING_REPORT},
        {MEDROUTE__V1__KIND__KIND_LAB_ORDER, "lab_order",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER},
        {MEDROUTE__V1__KIND__KIND_LAB_RESULT, "lab_result",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_RESULT},
        {MEDROUTE__V1__KIND__KIND_CAPACITY, "capacity", MEDROUTE__V1__ENVELOPE__PAYLOAD_CAPACITY},
        {MEDROUTE__V1__KIND__KIND_CRITICAL_ACK, "critical_ack",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_CRITICAL_ACK},
        {MEDROUTE__V1__KIND__KIND_VISIT_TALLY, "visit_tally",
         MEDROUTE__V1__ENVELOPE__PAYLOAD_VISIT_TALLY},
    };
    assert_int_equal(sizeof kinds / sizeof kinds[0], MR_KIND_MAX);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        assert_string_equal(mr_kind_name(kinds[i].kind), kinds[i].name);
        assert_int_equal(mr_kind_from_name(kinds[i].name), kinds[i].kind);
        assert_int_equal(mr_kind_payload_case(kinds[i].kind), kinds[i].payload);
    }
    /* Names are matched without regard to case. */
    assert_int_equal(mr_kind_from_name("LAB_RESULT"), MEDROUTE__V1__KIND__KIND_LAB_RESULT);
}

static void test_codec_kind_unknown(void **state)
{
    (void)state;
    assert_null(mr_kind_name(0));
    assert_null(mr_kind_name(-1));
    assert_null(mr_kind_name(MR_KIND_MAX + 1));
    assert_null(mr_kind_name(99));
    assert_int_equal(mr_kind_from_name("ecg_trace"), -1);
    assert_int_equal(mr_kind_from_name(""), -1);
    assert_int_equal(mr_kind_from_name("referral "), -1);
    assert_int_equal(mr_kind_payload_case(0), 0);
    assert_int_equal(mr_kind_payload_case(-3), 0);
    assert_int_equal(mr_kind_payload_case(MR_KIND_MAX + 1), 0);
}

static void test_codec_priority_names(void **state)
{
    (void)state;
    assert_string_equal(mr_priority_name(MEDROUTE__V1__PRIORITY__PRIORITY_ROUTINE), "routine");
    assert_string_equal(mr_priority_name(MEDROUTE__V1__PRIORITY__PRIORITY_URGENT), "urgent");
    assert_string_equal(mr_priority_name(MEDROUTE__V1__PRIORITY__PRIORITY_STAT), "stat");
    assert_null(mr_priority_name(3));
    assert_null(mr_priority_name(-1));
    assert_int_equal(mr_priority_from_name("routine"), 0);
    assert_int_equal(mr_priority_from_name("urgent"), 1);
    assert_int_equal(mr_priority_from_name("stat"), 2);
    assert_int_equal(mr_priority_from_name("STAT"), 2);
    assert_int_equal(mr_priority_from_name("asap"), -1);
}

static void test_codec_error_names(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *name;
    } codes[] = {
        {MR_E_MALFORMED, "MALFORMED"},
        {MR_E_UNSUPPORTED_VERSION, "UNSUPPORTED_VERSION"},
        {MR_E_UNKNOWN_KIND, "UNKNOWN_KIND"},
        {MR_E_UNKNOWN_SOURCE, "UNKNOWN_SOURCE"},
        {MR_E_UNKNOWN_DESTINATION, "UNKNOWN_DESTINATION"},
        {MR_E_TOO_LARGE, "TOO_LARGE"},
        {MR_E_INVALID, "INVALID"},
        {MR_E_NO_HELLO, "NO_HELLO"},
        {MR_E_FORBIDDEN, "FORBIDDEN"},
        {MR_E_STORE_UNAVAILABLE, "STORE_UNAVAILABLE"},
        {MR_E_CONFLICT, "CONFLICT"},
        {MR_E_QUEUE_FULL, "QUEUE_FULL"},
        {MR_E_RATE_LIMITED, "RATE_LIMITED"},
        {MR_E_EXPIRED, "EXPIRED"},
        {MR_E_ILLEGAL_TRANSITION, "ILLEGAL_TRANSITION"},
        {MR_E_UNKNOWN_DELIVERY, "UNKNOWN_DELIVERY"},
        {MR_E_UNEXPECTED_FRAME, "UNEXPECTED_FRAME"},
        {MR_E_INTERNAL, "INTERNAL"},
        {MR_E_SHUTTING_DOWN, "SHUTTING_DOWN"},
    };
    /* Every code 1..MR_E_COUNT-1 is in the table, in order. */
    assert_int_equal(sizeof codes / sizeof codes[0], MR_E_COUNT - 1);
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_int_equal(codes[i].code, (int)i + 1);
        assert_string_equal(mr_error_name(codes[i].code), codes[i].name);
    }
    assert_string_equal(mr_error_name(0), "UNSPECIFIED");
    assert_string_equal(mr_error_name(MR_E_COUNT), "UNKNOWN_CODE");
    assert_string_equal(mr_error_name(-1), "UNKNOWN_CODE");
    assert_string_equal(mr_error_name(1000), "UNKNOWN_CODE");
}

/* An Envelope carrying a referral with a clinical summary of body_len bytes. */
typedef struct {
    mr_envelope_t env;
    Medroute__V1__Referral ref;
    char *summary;
} s_env_t;

static void s_env_init(s_env_t *e, const char *message_id, size_t body_len)
{
    medroute__v1__envelope__init(&e->env);
    medroute__v1__referral__init(&e->ref);
    e->summary = malloc(body_len + 1);
    assert_non_null(e->summary);
    for (size_t i = 0; i < body_len; i++)
        e->summary[i] = (char)('a' + i % 26);
    e->summary[body_len] = '\0';
    e->ref.referral_id = "R-2024-0001";
    e->ref.service = MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC;
    e->ref.clinical_summary = e->summary;
    e->ref.expires_at_ms = 1700000000123;
    e->env.message_id = (char *)message_id;
    e->env.source = "t-aihua";
    e->env.destination = "yx-lead";
    e->env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    e->env.priority = MEDROUTE__V1__PRIORITY__PRIORITY_URGENT;
    e->env.created_at_ms = 1700000000000;
    e->env.correlation_id = "corr-1";
    e->env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    e->env.referral = &e->ref;
}

static void s_assert_same_envelope(const mr_envelope_t *got, const s_env_t *want)
{
    assert_non_null(got);
    assert_string_equal(got->message_id, want->env.message_id);
    assert_string_equal(got->source, want->env.source);
    assert_string_equal(got->destination, want->env.destination);
    assert_int_equal(got->kind, want->env.kind);
    assert_int_equal(got->priority, want->env.priority);
    assert_int_equal(got->created_at_ms, want->env.created_at_ms);
    assert_string_equal(got->correlation_id, want->env.correlation_id);
    assert_int_equal(got->payload_case, MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL);
    assert_non_null(got->referral);
    assert_string_equal(got->referral->referral_id, want->ref.referral_id);
    assert_int_equal(got->referral->service, want->ref.service);
    assert_int_equal(got->referral->expires_at_ms, want->ref.expires_at_ms);
    assert_int_equal(strlen(got->referral->clinical_summary), strlen(want->summary));
    assert_string_equal(got->referral->clinical_summary, want->summary);
}

static void test_codec_pack_unpack_frame(void **state)
{
    (void)state;
    s_env_t e;
    s_env_init(&e, "m-1", 40);
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &e.env;

    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(&f.base, &buf, &len), 0);
    assert_non_null(buf);
    assert_int_equal(len, protobuf_c_message_get_packed_size(&f.base));

    mr_frame_t *got = medroute__v1__frame__unpack(NULL, len, buf);
    assert_non_null(got);
    assert_int_equal(got->version, MR_PROTOCOL_VERSION);
    assert_int_equal(got->body_case, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    s_assert_same_envelope(got->envelope, &e);
    medroute__v1__frame__free_unpacked(got, NULL);
    free(buf);
    free(e.summary);
}

static void test_codec_pack_empty_message(void **state)
{
    (void)state;
    /* A message with every field at its default packs to zero bytes; the
     * buffer is still a valid allocation to free. */
    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    uint8_t *buf = NULL;
    size_t len = 99;
    assert_int_equal(mr_pack(&hb.base, &buf, &len), 0);
    assert_non_null(buf);
    assert_int_equal(len, 0);
    free(buf);
}

static size_t s_varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Packs frame with protobuf-c into a new buffer. */
static uint8_t *s_pb(const ProtobufCMessage *frame, size_t *len)
{
    uint8_t *buf = NULL;
    assert_int_equal(mr_pack(frame, &buf, len), 0);
    return buf;
}

/*
 * Frames the packed envelope as a Delivery (with head d) and as a sender's
 * Frame{envelope}: the bytes are protobuf-c's own for the same frames, the
 * sizes are what was written, and they decode with the envelope as packed.
 */
static void s_check_frames(size_t body_len, size_t want_prefix, const mr_delivery_head_t *d)
{
    s_env_t e;
    s_env_init(&e, "m-embed", body_len);
    uint8_t *env_bytes = NULL;
    size_t env_len = 0;
    assert_int_equal(mr_pack(&e.env.base, &env_bytes, &env_len), 0);
    assert_int_equal(s_varint_len(env_len), want_prefix);

    Medroute__V1__Delivery dm = MEDROUTE__V1__DELIVERY__INIT;
    dm.seq = d->seq;
    dm.redelivered = d->redelivered;
    dm.attempt = d->attempt;
    dm.stored_at_ms = d->stored_at_ms;
    dm.envelope = &e.env;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY;
    f.delivery = &dm;
    size_t want_len;
    uint8_t *want = s_pb(&f.base, &want_len);
    size_t len = mr_delivery_frame_size(d, env_len);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    assert_int_equal(mr_delivery_frame_pack(d, env_bytes, env_len, buf), len);
    assert_int_equal(len, want_len);
    assert_memory_equal(buf, want, len);
    mr_frame_t *got = medroute__v1__frame__unpack(NULL, len, buf);
    assert_non_null(got);
    assert_int_equal(got->version, MR_PROTOCOL_VERSION);
    assert_int_equal(got->body_case, MEDROUTE__V1__FRAME__BODY_DELIVERY);
    assert_int_equal(got->delivery->seq, d->seq);
    assert_int_equal(got->delivery->redelivered, d->redelivered);
    assert_int_equal(got->delivery->attempt, d->attempt);
    assert_int_equal(got->delivery->stored_at_ms, d->stored_at_ms);
    assert_int_equal(got->delivery->base.n_unknown_fields, 0);
    s_assert_same_envelope(got->delivery->envelope, &e);
    medroute__v1__frame__free_unpacked(got, NULL);
    free(buf);
    free(want);

    /* A submission without tag, with a one-byte one and with the largest. */
    const uint64_t tags[] = {0, 7, UINT64_MAX};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        mr_frame_t g = MEDROUTE__V1__FRAME__INIT;
        g.version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
        g.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
        g.envelope = &e.env;
        g.submission_tag = tags[i];
        want = s_pb(&g.base, &want_len);
        len = mr_envelope_frame_size(env_len, tags[i]);
        buf = malloc(len);
        assert_non_null(buf);
        assert_int_equal(mr_envelope_frame_pack(env_bytes, env_len, tags[i], buf), len);
        assert_int_equal(len, want_len);
        assert_memory_equal(buf, want, len);
        free(buf);
        free(want);
    }
    free(env_bytes);
    free(e.summary);
}

static const mr_delivery_head_t s_head = {
    .seq = 4242, .redelivered = true, .attempt = 3, .stored_at_ms = 1700000000999};

static void test_codec_frames_one_byte_length(void **state)
{
    (void)state;
    s_check_frames(10, 1, &s_head);
}

static void test_codec_frames_two_byte_length(void **state)
{
    (void)state;
    s_check_frames(200, 2, &s_head);
}

static void test_codec_frames_three_byte_length(void **state)
{
    (void)state;
    s_check_frames(20000, 3, &s_head);
}

/* Fields at their default are left out, as protobuf-c leaves them; a
 * negative time takes ten bytes. */
static void test_codec_frames_default_and_negative_fields(void **state)
{
    (void)state;
    const mr_delivery_head_t zero = {0};
    s_check_frames(10, 1, &zero);
    const mr_delivery_head_t big = {
        .seq = UINT64_MAX, .attempt = UINT32_MAX, .stored_at_ms = -1};
    s_check_frames(10, 1, &big);
}

/* An empty envelope: a zero length and nothing after. */
static void test_codec_frames_empty_envelope(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mr_delivery_frame_pack(&s_head, (const uint8_t *)"", 0, buf);
    assert_int_equal(n, mr_delivery_frame_size(&s_head, 0));
    Medroute__V1__Delivery *gd = NULL;
    mr_frame_t *got = medroute__v1__frame__unpack(NULL, n, buf);
    assert_non_null(got);
    gd = got->delivery;
    assert_non_null(gd);
    assert_int_equal(gd->seq, 4242);
    assert_non_null(gd->envelope);
    assert_string_equal(gd->envelope->message_id, "");
    medroute__v1__frame__free_unpacked(got, NULL);
    n = mr_envelope_frame_pack((const uint8_t *)"", 0, 0, buf);
    assert_int_equal(n, mr_envelope_frame_size(0, 0));
    got = medroute__v1__frame__unpack(NULL, n, buf);
    assert_non_null(got);
    assert_int_equal(got->body_case, MEDROUTE__V1__FRAME__BODY_ENVELOPE);
    medroute__v1__frame__free_unpacked(got, NULL);
}

static void test_codec_now_ms_plausible(void **state)
{
    (void)state;
    int64_t a = mr_now_ms();
    int64_t b = mr_now_ms();
    assert_true(a > 1600000000000LL); /* after September 2020 */
    assert_true(b >= a);
    assert_true(b - a < 1000);
}

/* ---- the envelope's bytes in a frame --------------------------------------- */

static void s_check_field(const ProtobufCMessageDescriptor *d, const char *name, unsigned id,
                          ProtobufCType type)
{
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(d, name);
    assert_non_null(fd);
    assert_int_equal(fd->id, id);
    assert_int_equal(fd->type, type);
}

/* The field numbers codec.c writes or reads on the wire itself. */
static void test_codec_frame_field_numbers(void **state)
{
    (void)state;
    const ProtobufCMessageDescriptor *f = &medroute__v1__frame__descriptor;
    s_check_field(f, "version", MR_FRAME_VERSION_FIELD, PROTOBUF_C_TYPE_ENUM);
    s_check_field(f, "envelope", MR_FRAME_ENVELOPE_FIELD, PROTOBUF_C_TYPE_MESSAGE);
    s_check_field(f, "delivery", MR_FRAME_DELIVERY_FIELD, PROTOBUF_C_TYPE_MESSAGE);
    s_check_field(f, "submission_tag", MR_FRAME_SUBMISSION_TAG_FIELD, PROTOBUF_C_TYPE_UINT64);
    const ProtobufCMessageDescriptor *d = &medroute__v1__delivery__descriptor;
    s_check_field(d, "seq", MR_DELIVERY_SEQ_FIELD, PROTOBUF_C_TYPE_UINT64);
    s_check_field(d, "envelope", MR_DELIVERY_ENVELOPE_FIELD, PROTOBUF_C_TYPE_MESSAGE);
    s_check_field(d, "redelivered", MR_DELIVERY_REDELIVERED_FIELD, PROTOBUF_C_TYPE_BOOL);
    s_check_field(d, "attempt", MR_DELIVERY_ATTEMPT_FIELD, PROTOBUF_C_TYPE_UINT32);
    s_check_field(d, "stored_at_ms", MR_DELIVERY_STORED_AT_FIELD, PROTOBUF_C_TYPE_INT64);
    assert_int_equal(MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1, 1); /* one byte */
}

/* The slice found in a packed frame is the packed envelope; a field that is
 * absent, repeated or cut short has no slice. */
static void test_codec_field_slice(void **state)
{
    (void)state;
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = "m-1";
    e.source = "t-aihua";
    e.destination = "yx-lab";
    e.created_at_ms = 1700000000000;
    uint8_t env[256], frame[600];
    size_t env_len = protobuf_c_message_pack(&e.base, env);
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &e;
    size_t n = protobuf_c_message_pack(&f.base, frame);
    const uint8_t *out = NULL;
    size_t out_len = 0;
    assert_int_equal(mr_field_slice(frame, n, MR_FRAME_ENVELOPE_FIELD, &out, &out_len), 0);
    assert_int_equal(out_len, env_len);
    assert_memory_equal(out, env, env_len);
    /* Absent: the version's field is a varint, Hello's is not there. */
    assert_int_equal(mr_field_slice(frame, n, 1, &out, &out_len), -1);
    assert_int_equal(mr_field_slice(frame, n, 2, &out, &out_len), -1);
    /* Twice: a decoder would merge the two. */
    memcpy(frame + n, frame + 2, n - 2);
    assert_int_equal(mr_field_slice(frame, n + n - 2, MR_FRAME_ENVELOPE_FIELD, &out, &out_len),
                     -1);
    /* Cut short. */
    assert_int_equal(mr_field_slice(frame, n - 1, MR_FRAME_ENVELOPE_FIELD, &out, &out_len), -1);
}

/* A top-level varint field, read off the wire: once, or not at all. */
static void test_codec_field_varint(void **state)
{
    (void)state;
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = "m-1";
    uint8_t frame[600];
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &e;
    f.submission_tag = UINT64_MAX;
    size_t n = protobuf_c_message_pack(&f.base, frame);
    uint64_t v = 0;
    assert_int_equal(mr_field_varint(frame, n, MR_FRAME_SUBMISSION_TAG_FIELD, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(mr_field_varint(frame, n, MR_FRAME_VERSION_FIELD, &v), 0);
    assert_int_equal(v, 1);
    /* Not a varint (the envelope), absent, cut short, twice. */
    assert_int_equal(mr_field_varint(frame, n, MR_FRAME_ENVELOPE_FIELD, &v), -1);
    assert_int_equal(mr_field_varint(frame, n, 2, &v), -1);
    assert_int_equal(mr_field_varint(frame, n - 1, MR_FRAME_SUBMISSION_TAG_FIELD, &v), -1);
    memcpy(frame + n, frame, 2); /* version = 1 again */
    assert_int_equal(mr_field_varint(frame, n + 2, MR_FRAME_VERSION_FIELD, &v), -1);
}

/* An unknown field numbered 0 (or above 2^29 - 1) is found however deep it is
 * kept. */
static void test_codec_has_bad_field_number(void **state)
{
    (void)state;
    Medroute__V1__LabOrder lo = MEDROUTE__V1__LAB_ORDER__INIT;
    lo.placer_order_number = "PO-1";
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = "m-1";
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER;
    e.lab_order = &lo;
    assert_int_equal(mr_has_bad_field_number(&e.base), 0);
    uint8_t data[8] = {0};
    ProtobufCMessageUnknownField uf = {
        .tag = 0, .wire_type = PROTOBUF_C_WIRE_TYPE_64BIT, .len = 8, .data = data};
    lo.base.n_unknown_fields = 1;
    lo.base.unknown_fields = &uf;
    assert_int_equal(mr_has_bad_field_number(&e.base), 1);
    uf.tag = 99;
    assert_int_equal(mr_has_bad_field_number(&e.base), 0);
    /* Above the largest field number: protobuf-c keeps it, others refuse. */
    uf.tag = MR_FIELD_NUMBER_MAX;
    assert_int_equal(mr_has_bad_field_number(&e.base), 0);
    uf.tag = MR_FIELD_NUMBER_MAX + 1;
    assert_int_equal(mr_has_bad_field_number(&e.base), 1);
    uf.tag = UINT32_MAX;
    assert_int_equal(mr_has_bad_field_number(&e.base), 1);
}

/* ---- UTF-8 in string fields ------------------------------------------------ */

/* "张三" in GBK, as a legacy hospital system writes it: not UTF-8. */
#define S_GBK_NAME "\xd5\xc5\xc8\xfd"

static bool s_valid(const char *s)
{
    return mr_utf8_valid(s, strlen(s));
}

static void test_codec_utf8_valid_text(void **state)
{
    (void)state;
    assert_true(mr_utf8_valid("", 0));
    assert_true(s_valid("chest pain, 3 days"));
    assert_true(s_valid("张三"));
    assert_true(s_valid("心内科 (cardiology) 王医生"));
    assert_true(s_valid("\xc2\x80"));             /* U+0080, the first two-byte */
    assert_true(s_valid("\xdf\xbf"));             /* U+07FF */
    assert_true(s_valid("\xe0\xa0\x80"));         /* U+0800, the first three-byte */
    assert_true(s_valid("\xed\x9f\xbf"));         /* U+D7FF, below the surrogates */
    assert_true(s_valid("\xee\x80\x80"));         /* U+E000, above them */
    assert_true(s_valid("\xef\xbf\xbf"));         /* U+FFFF */
    assert_true(s_valid("\xf0\x90\x80\x80"));     /* U+10000, the first four-byte */
    assert_true(s_valid("\xf0\x9f\x98\x80"));     /* U+1F600 */
    assert_true(s_valid("\xf4\x8f\xbf\xbf"));     /* U+10FFFF, the last */
    assert_true(mr_utf8_valid("a\0b", 3));        /* U+0000 is a character */
}

static void test_codec_utf8_invalid_sequences(void **state)
{
    (void)state;
    static const char *const bad[] = {
        S_GBK_NAME,
        "\x80", "\xbf", "a\x80z",             /* a continuation byte alone */
        "\xc0\x80", "\xc1\xbf",               /* overlong two-byte forms */
        "\xe0\x80\x80", "\xe0\x9f\xbf",       /* overlong three-byte */
        "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", /* overlong four-byte */
        "\xed\xa0\x80", "\xed\xbf\xbf",       /* surrogates U+D800, U+DFFF */
        "\xf4\x90\x80\x80",                   /* U+110000 */
        "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfe", "\xff", /* never lead */
        "\xc2", "\xe4\xb8", "\xf0\x9f\x98",   /* cut short at the end */
        "\xe4\xb8" "A", "\xe4\xe4\xb8\xad",   /* cut short by the next character */
        "张三\xe4",                            /* valid text, then a cut character */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (s_valid(bad[i]))
            fail_msg("sequence %zu taken as valid UTF-8", i);
    /* The same after 1..17 ASCII bytes, and followed by ASCII: the check
     * takes eight ASCII bytes at a time, so each lands at every offset of
     * such a word and after it. */
    for (size_t pre = 1; pre <= 17; pre++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            char buf[64];
            size_t n = strlen(bad[i]);
            memset(buf, 'a', pre);
            memcpy(buf + pre, bad[i], n);
            memset(buf + pre + n, 'z', 9);
            if (mr_utf8_valid(buf, pre + n) || mr_utf8_valid(buf, pre + n + 9))
                fail_msg("sequence %zu after %zu ASCII bytes taken as valid UTF-8", i, pre);
            memcpy(buf + pre, "\xe5\xbf\x83", 3); /* and a valid one passes */
            assert_true(mr_utf8_valid(buf, pre + 3));
        }
    /* The length is what counts, not a NUL: the cut is found past one. */
    assert_false(mr_utf8_valid("a\0\xe4\xb8", 4));
    assert_true(mr_utf8_valid("\xe4\xb8\xad", 3));
    assert_false(mr_utf8_valid("\xe4\xb8\xad", 2));
}

/* Where text may be cut for a frame: never inside a character. */
static void test_codec_utf8_cut(void **state)
{
    (void)state;
    assert_int_equal(mr_utf8_cut("abcdef", 3), 3);
    assert_int_equal(mr_utf8_cut("abc", 64), 3);
    assert_int_equal(mr_utf8_cut("", 5), 0);
    assert_int_equal(mr_utf8_cut("abc", 0), 0);
    /* Three three-byte characters: 心内科. */
    static const size_t cjk[10] = {0, 0, 0, 3, 3, 3, 6, 6, 6, 9};
    for (size_t n = 0; n <= 9; n++)
        assert_int_equal(mr_utf8_cut("心内科", n), cjk[n]);
    assert_int_equal(mr_utf8_cut("心内科", 64), 9);
    /* Two- and four-byte characters: "é" and U+1F600 between letters. */
    assert_int_equal(mr_utf8_cut("\xc3\xa9", 1), 0);
    static const size_t four[8] = {0, 1, 1, 1, 1, 5, 6, 6};
    for (size_t n = 0; n <= 7; n++)
        assert_int_equal(mr_utf8_cut("a\xf0\x9f\x98\x80" "b", n), four[n]);
    /* A buffer cut at a byte count ("ab中文字" in 8 bytes, as snprintf
     * leaves it) is mended to a whole character. */
    char buf[8];
    memcpy(buf, "ab中文字", sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    assert_false(s_valid(buf));
    buf[mr_utf8_cut(buf, sizeof buf)] = '\0';
    assert_string_equal(buf, "ab中");
    /* Any cut of mixed text is valid and loses at most three bytes. */
    const char *mixed = "转诊 RF-1: 王 \xf0\x9f\x98\x80 胸痛, é";
    for (size_t n = 0; n <= strlen(mixed) + 1; n++) {
        size_t k = mr_utf8_cut(mixed, n);
        assert_true(k <= n && k + 3 >= (n < strlen(mixed) ? n : strlen(mixed)));
        assert_true(mr_utf8_valid(mixed, k));
    }
}

/* A referral in Chinese, as a township health centre sends it. */
typedef struct {
    mr_envelope_t env;
    Medroute__V1__Referral ref;
    Medroute__V1__Patient pat;
    Medroute__V1__PatientIdentifier id0, id1;
    Medroute__V1__PatientIdentifier *ids[2];
    Medroute__V1__Code r0, r1;
    Medroute__V1__Code *reasons[2];
} s_cn_referral_t;

static void s_cn_referral(s_cn_referral_t *m)
{
    medroute__v1__envelope__init(&m->env);
    medroute__v1__referral__init(&m->ref);
    medroute__v1__patient__init(&m->pat);
    medroute__v1__patient_identifier__init(&m->id0);
    medroute__v1__patient_identifier__init(&m->id1);
    medroute__v1__code__init(&m->r0);
    medroute__v1__code__init(&m->r1);
    m->id0.system = "身份证";
    m->id0.value = "530102199001011234";
    m->id1.system = "医保卡";
    m->id1.value = "YB-0001";
    m->ids[0] = &m->id0;
    m->ids[1] = &m->id1;
    m->pat.name = "张三";
    m->pat.n_identifiers = 2;
    m->pat.identifiers = m->ids;
    m->r0.code = "I20.0";
    m->r0.display = "不稳定型心绞痛";
    m->r1.code = "I10";
    m->r1.display = "高血压";
    m->reasons[0] = &m->r0;
    m->reasons[1] = &m->r1;
    m->ref.referral_id = "RF-2024-0001";
    m->ref.patient = &m->pat;
    m->ref.n_reasons = 2;
    m->ref.reasons = m->reasons;
    m->ref.department = "心内科";
    m->ref.clinical_summary = "胸痛三天，活动后加重";
    m->env.message_id = "转诊-0001";
    m->env.source = "t-aihua";
    m->env.destination = "yx-lead";
    m->env.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    m->env.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL;
    m->env.referral = &m->ref;
}

/* mr_find_bad_utf8 on msg packed, as an Envelope or inside a Frame. */
static int s_find(const ProtobufCMessage *msg, char *path, size_t path_len)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(mr_pack(msg, &buf, &len), 0);
    int rc = mr_find_bad_utf8(msg->descriptor, buf, len, path, path_len);
    free(buf);
    return rc;
}

static void s_expect_bad(const ProtobufCMessage *msg, const char *want_path)
{
    char path[96] = "unset";
    assert_int_equal(s_find(msg, path, sizeof path), 1);
    assert_string_equal(path, want_path);
}

static void test_codec_find_bad_utf8_passes_chinese_text(void **state)
{
    (void)state;
    s_cn_referral_t m;
    s_cn_referral(&m);
    char path[96] = "unset";
    assert_int_equal(s_find(&m.env.base, path, sizeof path), 0);
    assert_string_equal(path, "unset"); /* untouched */
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &m.env;
    assert_int_equal(s_find(&f.base, NULL, 0), 0);
}

/* Each string, however deep, is found and named by its path. */
static void test_codec_find_bad_utf8_names_the_field(void **state)
{
    (void)state;
    s_cn_referral_t m;

    s_cn_referral(&m);
    m.pat.name = S_GBK_NAME;
    s_expect_bad(&m.env.base, "referral.patient.name");
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.version = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = &m.env;
    s_expect_bad(&f.base, "envelope.referral.patient.name");
    char tiny[12];
    assert_int_equal(s_find(&f.base, tiny, sizeof tiny), 1);
    assert_string_equal(tiny, "envelope.re"); /* cut, still a string */
    assert_int_equal(s_find(&f.base, NULL, 0), 1);

    s_cn_referral(&m);
    m.ref.department = "\xd0\xc4\xc4\xda\xbf\xc6"; /* 心内科 in GBK */
    s_expect_bad(&m.env.base, "referral.department");

    s_cn_referral(&m);
    m.env.message_id = "\xe8\xbd\xac\xe8\xaf"; /* 转 and half of 诊 */
    s_expect_bad(&m.env.base, "message_id");

    /* In repeated submessages, with the index of the occurrence. */
    s_cn_referral(&m);
    m.r1.display = "\xb8\xdf\xd1\xaa\xd1\xb9"; /* 高血压 in GBK */
    s_expect_bad(&m.env.base, "referral.reasons[1].display");
    s_cn_referral(&m);
    m.id0.system = "\xed\xa0\x80"; /* a surrogate */
    s_expect_bad(&m.env.base, "referral.patient.identifiers[0].system");
    s_cn_referral(&m);
    m.id1.value = "\xc0\xaf"; /* an overlong '/' */
    s_expect_bad(&m.env.base, "referral.patient.identifiers[1].value");

    /* Another payload of the oneof, three levels down. */
    Medroute__V1__LabResultItem items[3];
    Medroute__V1__LabResultItem *ip[3];
    Medroute__V1__Code test = MEDROUTE__V1__CODE__INIT;
    test.code = "2345-7";
    test.display = "\xf4\x90\x80\x80"; /* above U+10FFFF */
    for (int i = 0; i < 3; i++) {
        medroute__v1__lab_result_item__init(&items[i]);
        items[i].value = "5.1";
        items[i].unit = "mmol/L";
        ip[i] = &items[i];
    }
    items[2].test = &test;
    Medroute__V1__LabResult lr = MEDROUTE__V1__LAB_RESULT__INIT;
    lr.placer_order_number = "PO-1";
    lr.n_items = 3;
    lr.items = ip;
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = "m-lab";
    e.payload_case = MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_RESULT;
    e.lab_result = &lr;
    s_expect_bad(&e.base, "lab_result.items[2].test.display");
    test.display = "葡萄糖";
    items[1].unit = "\xe6\xaf\xab\xe6"; /* 毫 and a cut character */
    s_expect_bad(&e.base, "lab_result.items[1].unit");
    items[1].unit = "毫摩尔/升";
    assert_int_equal(s_find(&e.base, NULL, 0), 0);

    /* The Hello a facility sends first. */
    Medroute__V1__Hello h = MEDROUTE__V1__HELLO__INIT;
    h.facility_id = "t-aihua";
    h.client_name = "HIS \xb0\xe6 2.1"; /* 版 in GBK */
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &h;
    s_expect_bad(&f.base, "hello.client_name");
}

/* A message with a repeated string field (medroute.v1 has none yet). */
typedef struct {
    ProtobufCMessage base;
    size_t n_tags;
    char **tags;
} s_tagged_t;

static const ProtobufCFieldDescriptor s_tagged_fields[] = {
    {"tags", 1, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_STRING, offsetof(s_tagged_t, n_tags),
     offsetof(s_tagged_t, tags), NULL, NULL, 0, 0, NULL, NULL},
};
static const unsigned s_tagged_by_name[] = {0};
static const ProtobufCIntRange s_tagged_ranges[] = {{1, 0}, {0, 1}};
static const ProtobufCMessageDescriptor s_tagged_descriptor = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    "test.Tagged",
    "Tagged",
    "Tagged",
    "test",
    sizeof(s_tagged_t),
    1,
    s_tagged_fields,
    s_tagged_by_name,
    1,
    s_tagged_ranges,
    NULL,
    NULL,
    NULL,
    NULL,
};

static void test_codec_find_bad_utf8_repeated_string(void **state)
{
    (void)state;
    char *tags[3] = {"急诊", "ok", "\xbc\xb1\xd5\xef"}; /* 急诊 in GBK last */
    s_tagged_t m = {PROTOBUF_C_MESSAGE_INIT(&s_tagged_descriptor), 3, tags};
    s_expect_bad(&m.base, "tags[2]");
    tags[2] = "门诊";
    assert_int_equal(s_find(&m.base, NULL, 0), 0);
    tags[0] = "\xe9\x97"; /* the first, cut */
    s_expect_bad(&m.base, "tags[0]");
}

/* protobuf-c ends a decoded string at a NUL, but the bytes after it are
 * stored and delivered: the walk reads the encoded bytes, all of them. */
static void test_codec_find_bad_utf8_past_a_nul(void **state)
{
    (void)state;
    /* Envelope{message_id = "a\0" S_GBK_NAME} */
    const uint8_t env[] = {0x0a, 0x06, 'a', 0x00, 0xd5, 0xc5, 0xc8, 0xfd};
    mr_envelope_t *e = medroute__v1__envelope__unpack(NULL, sizeof env, env);
    assert_non_null(e);
    assert_string_equal(e->message_id, "a"); /* what a walk of e would check */
    medroute__v1__envelope__free_unpacked(e, NULL);
    char path[96];
    assert_int_equal(
        mr_find_bad_utf8(&medroute__v1__envelope__descriptor, env, sizeof env, path, sizeof path),
        1);
    assert_string_equal(path, "message_id");
    /* An unknown field is bytes to every decoder: not looked into. */
    const uint8_t unknown[] = {0xfa, 0x07, 0x02, 0xd5, 0xc5}; /* field 127 */
    assert_int_equal(mr_find_bad_utf8(&medroute__v1__envelope__descriptor, unknown,
                                      sizeof unknown, path, sizeof path),
                     0);
    /* Bytes that are not fields. */
    assert_int_equal(
        mr_find_bad_utf8(&medroute__v1__envelope__descriptor, env, sizeof env - 1, NULL, 0), -1);
    const uint8_t group[] = {0x0b}; /* wire type 3 */
    assert_int_equal(
        mr_find_bad_utf8(&medroute__v1__envelope__descriptor, group, sizeof group, NULL, 0), -1);
}

/* A string that is valid UTF-8 but holds a NUL: C code would read it
 * shorter than what is stored and delivered ("t-aihua\0x" for t-aihua). */
static void test_codec_find_nul_in_a_string(void **state)
{
    (void)state;
    /* Envelope{source = "t-aihua\0x"} (field 2) */
    const uint8_t env[] = {0x12, 0x09, 't', '-', 'a', 'i', 'h', 'u', 'a', 0x00, 'x'};
    char path[96];
    assert_int_equal(
        mr_find_bad_utf8(&medroute__v1__envelope__descriptor, env, sizeof env, path, sizeof path),
        2);
    assert_string_equal(path, "source");
    /* The check itself: a NUL in an ASCII run read eight bytes at a time, in
     * a short tail, beside non-ASCII text; not UTF-8 wins over a NUL. */
    assert_int_equal(mr_text_check("abcdefgh\0ijklmno", 16), 2);
    assert_int_equal(mr_text_check("abcdefghijklmnop", 16), 0);
    assert_int_equal(mr_text_check("ab\0", 3), 2);
    assert_int_equal(mr_text_check("\xe5\xbc\xa0\0\xe4\xb8\x89", 7), 2);
    assert_int_equal(mr_text_check("a\0\xd5\xc5", 4), 1);
    const uint8_t plain[] = {0x12, 0x07, 't', '-', 'a', 'i', 'h', 'u', 'a'};
    assert_int_equal(mr_find_bad_utf8(&medroute__v1__envelope__descriptor, plain, sizeof plain,
                                      path, sizeof path),
                     0);
}

/* ---- the same message sent again ---------------------------------------- */

static void test_codec_created_at_field_number(void **state)
{
    (void)state;
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(
        &medroute__v1__envelope__descriptor, "created_at_ms");
    assert_non_null(fd);
    assert_int_equal(fd->id, MR_ENVELOPE_CREATED_AT_FIELD);
    assert_int_equal(fd->type, PROTOBUF_C_TYPE_INT64); /* a varint on the wire */
    fd = protobuf_c_message_descriptor_get_field_by_name(&medroute__v1__envelope__descriptor,
                                                         "message_id");
    assert_non_null(fd);
    assert_int_equal(fd->id, MR_ENVELOPE_MESSAGE_ID_FIELD);
    assert_int_equal(fd->type, PROTOBUF_C_TYPE_STRING);
}

static size_t s_pack_env(uint8_t *buf, const char *id, int64_t created_at_ms)
{
    mr_envelope_t e = MEDROUTE__V1__ENVELOPE__INIT;
    e.message_id = (char *)id;
    e.source = "t-aihua";
    e.destination = "yx-lead";
    e.kind = MEDROUTE__V1__KIND__KIND_REFERRAL;
    e.priority = 1;
    e.correlation_id = "c-1";
    e.created_at_ms = created_at_ms;
    return protobuf_c_message_pack(&e.base, buf);
}

/* The same message sent again with another created_at_ms is the same;
 * another message_id is not; a field cut short or extra is not. */
static void test_codec_envelope_same_leaves_out_created_at(void **state)
{
    (void)state;
    uint8_t a[512], b[512], zero[512], c[512];
    size_t na = s_pack_env(a, "m-1", 1795000000000), nb = s_pack_env(b, "m-1", 1795000009999);
    size_t nz = s_pack_env(zero, "m-1", 0), nc = s_pack_env(c, "m-1x", 1795000000000);
    assert_int_equal(mr_envelope_same(a, na, b, nb), 1);
    assert_int_equal(mr_envelope_same(a, na, zero, nz), 1); /* proto3 omits a zero */
    assert_int_equal(mr_envelope_same(zero, nz, b, nb), 1);
    assert_int_equal(mr_envelope_same(a, na, a, na), 1);
    assert_int_equal(mr_envelope_same(a, na, c, nc), 0);
    assert_int_equal(mr_envelope_same(c, nc, a, na), 0);
    /* One more field at the end (an unknown one), on either side. */
    memcpy(b, a, na);
    b[na] = 0xf8; /* field 31, varint */
    b[na + 1] = 0x01;
    b[na + 2] = 0x05;
    assert_int_equal(mr_envelope_same(a, na, b, na + 3), 0);
    assert_int_equal(mr_envelope_same(b, na + 3, a, na), 0);
}

/* Bytes that are not well-formed fields are compared whole. */
static void test_codec_envelope_same_compares_broken_bytes_whole(void **state)
{
    (void)state;
    uint8_t a[512], b[512];
    size_t n = s_pack_env(a, "m-1", 1795000000000);
    memcpy(b, a, n);
    assert_int_equal(mr_envelope_same(a, n - 1, b, n - 1), 1); /* the last field cut short */
    assert_int_equal(mr_envelope_same(a, n - 1, b, n), 0);
    const uint8_t group[] = {0x0b, 0x0c}; /* wire type 3: not proto3 */
    const uint8_t group2[] = {0x0b, 0x0d};
    assert_int_equal(mr_envelope_same(group, sizeof group, group, sizeof group), 1);
    assert_int_equal(mr_envelope_same(group, sizeof group, group2, sizeof group2), 0);
    const uint8_t long_len[] = {0x0a, 0x7f, 'x'}; /* length past the end */
    assert_int_equal(mr_envelope_same(long_len, sizeof long_len, a, n), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_kind_names_round_trip),
        cmocka_unit_test(test_codec_kind_unknown),
        cmocka_unit_test(test_codec_priority_names),
        cmocka_unit_test(test_codec_error_names),
        cmocka_unit_test(test_codec_pack_unpack_frame),
        cmocka_unit_test(test_codec_pack_empty_message),
        cmocka_unit_test(test_codec_frames_one_byte_length),
        cmocka_unit_test(test_codec_frames_two_byte_length),
        cmocka_unit_test(test_codec_frames_three_byte_length),
        cmocka_unit_test(test_codec_frames_default_and_negative_fields),
        cmocka_unit_test(test_codec_frames_empty_envelope),
        cmocka_unit_test(test_codec_now_ms_plausible),
        cmocka_unit_test(test_codec_created_at_field_number),
        cmocka_unit_test(test_codec_frame_field_numbers),
        cmocka_unit_test(test_codec_field_slice),
        cmocka_unit_test(test_codec_field_varint),
        cmocka_unit_test(test_codec_has_bad_field_number),
        cmocka_unit_test(test_codec_utf8_valid_text),
        cmocka_unit_test(test_codec_utf8_invalid_sequences),
        cmocka_unit_test(test_codec_utf8_cut),
        cmocka_unit_test(test_codec_find_bad_utf8_passes_chinese_text),
        cmocka_unit_test(test_codec_find_bad_utf8_names_the_field),
        cmocka_unit_test(test_codec_find_bad_utf8_repeated_string),
        cmocka_unit_test(test_codec_find_bad_utf8_past_a_nul),
        cmocka_unit_test(test_codec_find_nul_in_a_string),
        cmocka_unit_test(test_codec_envelope_same_leaves_out_created_at),
        cmocka_unit_test(test_codec_envelope_same_compares_broken_bytes_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
