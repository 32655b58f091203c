/*
 * mr_codec.h - shared helpers around the generated medroute.v1 codec.
 *
 * Linked by the daemon, the client library and the tests, so it holds pure
 * functions only: names of kinds, priorities and error codes, the rule that
 * ties a kind to its payload, and packing a Frame into a buffer.
 */
#ifndef MR_CODEC_H
#define MR_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "medroute/v1/clinical.pb-c.h"
#include "medroute/v1/envelope.pb-c.h"
#include "medroute/v1/frame.pb-c.h"
#include "medroute/v1/operator.pb-c.h"

#define MR_PROTOCOL_VERSION 1
/* Seqs one DeliveryAck may carry (seq and more_seqs), as this broker's
 * Welcome.max_acks_per_frame says. */
#define MR_ACKS_PER_FRAME_MAX 1024
#define MR_MESSAGE_ID_MAX 64   /* bytes in Envelope.message_id */
#define MR_FACILITY_ID_MAX 64  /* bytes in a facility id */
#define MR_CLINICAL_ID_MAX 64  /* bytes in a referral, accession or order number */
#define MR_UNIT_MAX 64         /* bytes in a department, ward or modality name */

typedef Medroute__V1__Frame mr_frame_t;
typedef Medroute__V1__Envelope mr_envelope_t;
typedef Medroute__V1__OpRequest mr_op_request_t;
typedef Medroute__V1__OpReply mr_op_reply_t;

/* Short names for the error codes of frame.proto. */
enum {
    MR_OK = 0,
    MR_E_MALFORMED = MEDROUTE__V1__ERROR_CODE__ERROR_MALFORMED,
    MR_E_UNSUPPORTED_VERSION = MEDROUTE__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION,
    MR_E_UNKNOWN_KIND = MEDROUTE__V1__ERROR_CODE__ERROR_UNKNOWN_KIND,
    MR_E_UNKNOWN_SOURCE = MEDROUTE__V1__ERROR_CODE__ERROR_UNKNOWN_SOURCE,
    MR_E_UNKNOWN_DESTINATION = MEDROUTE__V1__ERROR_CODE__ERROR_UNKNOWN_DESTINATION,
    MR_E_TOO_LARGE = MEDROUTE__V1__ERROR_CODE__ERROR_TOO_LARGE,
    MR_E_INVALID = MEDROUTE__V1__ERROR_CODE__ERROR_INVALID,
    MR_E_NO_HELLO = MEDROUTE__V1__ERROR_CODE__ERROR_NO_HELLO,
    MR_E_FORBIDDEN = MEDROUTE__V1__ERROR_CODE__ERROR_FORBIDDEN,
    MR_E_STORE_UNAVAILABLE = MEDROUTE__V1__ERROR_CODE__ERROR_STORE_UNAVAILABLE,
    MR_E_CONFLICT = MEDROUTE__V1__ERROR_CODE__ERROR_CONFLICT,
    MR_E_QUEUE_FULL = MEDROUTE__V1__ERROR_CODE__ERROR_QUEUE_FULL,
    MR_E_RATE_LIMITED = MEDROUTE__V1__ERROR_CODE__ERROR_RATE_LIMITED,
    MR_E_EXPIRED = MEDROUTE__V1__ERROR_CODE__ERROR_EXPIRED,
    MR_E_ILLEGAL_TRANSITION = MEDROUTE__V1__ERROR_CODE__ERROR_ILLEGAL_TRANSITION,
    MR_E_UNKNOWN_DELIVERY = MEDROUTE__V1__ERROR_CODE__ERROR_UNKNOWN_DELIVERY,
    MR_E_UNEXPECTED_FRAME = MEDROUTE__V1__ERROR_CODE__ERROR_UNEXPECTED_FRAME,
    MR_E_INTERNAL = MEDROUTE__V1__ERROR_CODE__ERROR_INTERNAL,
    MR_E_SHUTTING_DOWN = MEDROUTE__V1__ERROR_CODE__ERROR_SHUTTING_DOWN,
    MR_E_COUNT /* one past the last code */
};

/* "referral", "lab_result", ...; NULL for a kind this version does not know. */
const char *mr_kind_name(int kind);
/* Inverse of mr_kind_name; -1 if unknown. */
int mr_kind_from_name(const char *name);
/* The Envelope payload case a kind must carry; 0 for an unknown kind. */
int mr_kind_payload_case(int kind);
/* Number of kinds known, including 0 (unspecified): kinds are 1..MR_KIND_MAX. */
#define MR_KIND_MAX 9

/* "routine" / "urgent" / "stat"; NULL if unknown. */
const char *mr_priority_name(int priority);
int mr_priority_from_name(const char *name);

/* "MALFORMED", "UNKNOWN_KIND", ...; "UNKNOWN_CODE" for a code out of range. */
const char *mr_error_name(int code);

/*
 * Packs msg into a new malloc'd buffer.  On success *out is owned by the
 * caller (free()), *len its size, and 0 is returned; -ENOMEM otherwise.
 */
int mr_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);

/*
 * Frames around an Envelope already encoded (a stored message, a client's
 * outbox entry), written straight into the caller's buffer without decoding
 * the envelope or copying it more than once:
 *   Frame{version = 1, envelope = env, submission_tag = tag (0: left out)}
 *   Frame{version = 1, delivery = Delivery{seq, envelope = env, redelivered,
 *                                          attempt, stored_at_ms}}
 * Each _size gives the bytes its _pack writes into out (and returns).
 */
typedef struct {
    uint64_t seq;
    bool redelivered;
    uint32_t attempt;
    int64_t stored_at_ms;
} mr_delivery_head_t;

size_t mr_envelope_frame_size(size_t env_len, uint64_t tag);
size_t mr_envelope_frame_pack(const uint8_t *env, size_t env_len, uint64_t tag, uint8_t *out);
size_t mr_delivery_frame_size(const mr_delivery_head_t *d, size_t env_len);
size_t mr_delivery_frame_pack(const mr_delivery_head_t *d, const uint8_t *env, size_t env_len,
                              uint8_t *out);

/* frame.proto's field numbers that codec.c writes or reads on the wire
 * itself (a number never changes on the wire; test_codec checks each
 * against the descriptor). */
#define MR_FRAME_VERSION_FIELD 1
#define MR_FRAME_ENVELOPE_FIELD 5
#define MR_FRAME_DELIVERY_FIELD 8
#define MR_FRAME_SUBMISSION_TAG_FIELD 30
#define MR_DELIVERY_SEQ_FIELD 1
#define MR_DELIVERY_ENVELOPE_FIELD 2
#define MR_DELIVERY_REDELIVERED_FIELD 3
#define MR_DELIVERY_ATTEMPT_FIELD 4
#define MR_DELIVERY_STORED_AT_FIELD 5

/*
 * The encoded value of length-delimited field `field` among the top-level
 * fields of the message encoded in buf: *out points into buf.  0, or -1 if
 * buf is not a sequence of well-formed fields, or the field is absent, or it
 * occurs more than once (a decoder merges the occurrences: no one slice is
 * the value).
 */
int mr_field_slice(const uint8_t *buf, size_t len, uint32_t field, const uint8_t **out,
                   size_t *out_len);

/* The value of varint field `field` among the top-level fields of the
 * message encoded in buf, as mr_field_slice finds a length-delimited one:
 * 0, or -1 if buf is not a sequence of well-formed fields, or the field is
 * absent, or it occurs more than once. */
int mr_field_varint(const uint8_t *buf, size_t len, uint32_t field, uint64_t *out);

/* The largest field number protobuf allows (2^29 - 1). */
#define MR_FIELD_NUMBER_MAX 536870911u

/*
 * Whether msg or any submessage it holds keeps an unknown field whose number
 * no other decoder takes: 0, or above MR_FIELD_NUMBER_MAX.  protobuf-c 1.4.1
 * refuses field number 0 only in a one-byte tag: an overlong tag (0x81 0x00)
 * decodes and is kept as an unknown field, which other decoders, and
 * protobuf-c itself once the field is packed again (as the one-byte tag),
 * refuse.  It reads a tag of up to five bytes as a field number of up to 32
 * bits, and keeps one above MR_FIELD_NUMBER_MAX too (its tag does not fit in
 * 32 bits), which other decoders (C++, Java) refuse with the whole message.
 */
int mr_has_bad_field_number(const ProtobufCMessage *msg);

/*
 * Whether s[0..len) is well-formed UTF-8 (RFC 3629), as proto3 requires of
 * every `string` field: no overlong form, no surrogate (U+D800..U+DFFF),
 * nothing above U+10FFFF, no sequence cut short, no stray continuation byte.
 */
bool mr_utf8_valid(const char *s, size_t len);

/* The same walk, telling a NUL character apart (C code reads a string that
 * holds one shorter than it is): 0 if s[0..len) is UTF-8 without NUL, 1 if
 * it is not UTF-8, 2 if it is but holds a NUL. */
int mr_text_check(const char *s, size_t len);

/* Bytes in the UTF-8 character at s, of at most avail bytes: 1 to 4, or 0
 * if it is not one (the rules of mr_utf8_valid). */
size_t mr_utf8_char(const char *s, size_t avail);

/*
 * How far the string s may be cut, to at most n bytes, without splitting a
 * UTF-8 character: the length of its longest prefix of at most n bytes that
 * does not end inside one (the whole string if it is no longer and ends
 * whole).  Every string the broker puts into a frame must stay UTF-8, so
 * text cut to fit is cut with it:
 *   snprintf(out, size, "source \"%.*s\"", (int)mr_utf8_cut(src, 64), src);
 *   buf[mr_utf8_cut(buf, size)] = '\0';  (after snprintf may have cut buf)
 */
size_t mr_utf8_cut(const char *s, size_t n);

/*
 * Whether a `string` field (repeated or not) of the message of type d
 * encoded in buf, or of any submessage, is not valid UTF-8.  protobuf-c
 * does not check it; conforming decoders (Python, Go, Java, C++) refuse
 * the whole message, so such a message, once stored, can never be read by
 * its receiver.  1, with the field's path written into path (e.g.
 * "envelope.referral.patient.name", "items[2].unit"; names only, never the
 * content; path may be NULL); 2 likewise for a valid string holding a NUL
 * character (mr_text_check: "t-aihua\0x" would pass for t-aihua in C, and
 * be stored and delivered whole); 0 if every string is valid; -1 if buf is
 * not a sequence of well-formed fields.
 *
 * It walks the encoded bytes, not the decoded message: protobuf-c keeps a
 * string as a C string, so whatever follows a NUL inside it would escape a
 * walk of the decoded message, yet those bytes are stored and delivered.
 * Unknown fields are not looked into (decoders keep them as bytes).
 */
int mr_find_bad_utf8(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                     char *path, size_t path_len);

/* envelope.proto: message_id = 1, created_at_ms = 6 (a field number never
 * changes on the wire; test_codec checks them against the descriptor). */
#define MR_ENVELOPE_MESSAGE_ID_FIELD 1
#define MR_ENVELOPE_CREATED_AT_FIELD 6

/* The message_id of the Envelope encoded in env, without decoding it: *id
 * points into env (not NUL-terminated).  0, or -1 if env is not a sequence
 * of well-formed fields or has not exactly one message_id field. */
int mr_envelope_id(const uint8_t *env, size_t len, const uint8_t **id, size_t *id_len);

/*
 * What makes two sends "the same message": their packed Envelopes are equal
 * field by field, the created_at_ms fields left out (a sender's library may
 * stamp it anew on a retry).  1 if a and b are the same message, 0 if not;
 * bytes that are not a sequence of well-formed fields are compared whole.
 */
int mr_envelope_same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* Current wall-clock time in Unix milliseconds: for times that are stored,
 * sent or shown (stored_at, expiry, retention, periods). */
int64_t mr_now_ms(void);
/* Milliseconds on a clock that no one sets and that counts a suspend
 * (CLOCK_BOOTTIME), from an arbitrary origin: for time-outs, intervals and
 * rates, which a step of the wall clock (NTP, an operator's date) must not
 * stretch or cut. */
int64_t mr_mono_ms(void);

#endif
