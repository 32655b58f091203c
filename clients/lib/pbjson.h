/*
 * pbjson: generic JSON <-> protobuf-c conversion, driven by the protobuf-c
 * message descriptors (no per-message mapping code).
 *
 * The mapping follows the proto3 JSON mapping where it applies:
 *   - keys are the proto field names ("message_id"); lowerCamelCase
 *     ("messageId") is also accepted on input; output is always snake_case;
 *   - enums are written as the value name from the .proto ("KIND_REFERRAL");
 *     input also takes an integer, or the name case-insensitively with or
 *     without the enum's common prefix ("referral", "stat", "ct");
 *   - 64-bit integers are written as JSON integers (a uint64 above LLONG_MAX
 *     as a decimal string); input takes integers or decimal strings;
 *   - an integer field takes a number with a fraction or an exponent ("5.0",
 *     "1e3") only when it is integral and below 2^52 in magnitude: from
 *     there a double has no fraction bits, and jansson's double may already
 *     be another integer than the text (4503599627370496.5 reads as ...496).
 *     Below, a fraction finer than a double (about 16 significant digits in
 *     all: 1.0000000000000001) is lost too, as jansson keeps no number's
 *     text, and the integer it rounds to is taken;
 *   - bytes are base64 strings (input also takes the URL-safe alphabet and
 *     missing padding);
 *   - fields equal to their proto3 default are omitted on output, except a
 *     set oneof member, which is always written (an empty message as {});
 *   - JSON null for a field means "not set".
 *
 * Neither function keeps state between calls; both are safe to call from
 * several threads at once on distinct arguments.
 */
#ifndef MEDROUTE_PBJSON_H
#define MEDROUTE_PBJSON_H

#include <stddef.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* Deepest nesting of message objects pbjson_to_message accepts (the top-level
 * object counts as level 1). */
#define PBJSON_MAX_DEPTH 32

/* Converts a message to a new JSON object.  msg is only read; it stays owned
 * by the caller.  Caller owns the result (json_decref).  NULL on allocation
 * failure (or when msg is NULL). */
json_t *pbjson_from_message(const ProtobufCMessage *msg);

/* Builds a new message of type desc from a JSON object.  json is only read;
 * it stays owned by the caller.  On success returns 0 and sets *out (caller
 * frees with protobuf_c_message_free_unpacked(*out, NULL); every string,
 * array and submessage in it is malloc'd).  On failure returns a negative
 * errno-style code (-EINVAL for bad input, -ENOMEM on allocation failure) and
 * writes a human-readable, NUL-terminated reason naming the JSON path (e.g.
 * "referral.patient.sex: unknown enum value \"X\" for medroute.v1.Sex") into
 * err (errlen bytes, truncated to fit; err may be NULL when errlen is 0);
 * *out is left untouched. */
int pbjson_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                      ProtobufCMessage **out, char *err, size_t errlen);

#endif /* MEDROUTE_PBJSON_H */
