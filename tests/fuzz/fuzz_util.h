/*
 * fuzz_util.h - checks shared by the libFuzzer targets of tests/fuzz.
 *
 * Each check reads or converts a decoded protobuf-c message the way a
 * careful consumer would, and aborts (a crash libFuzzer reports, with the
 * input that caused it) when an invariant does not hold.  Nothing here keeps
 * state between calls.
 */
#ifndef MR_FUZZ_UTIL_H
#define MR_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Aborts with file, line and the failed condition unless cond holds. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, #cond, NULL);                                            \
    } while (0)

void fuzz_fail(const char *file, int line, const char *what, const char *detail)
    __attribute__((noreturn));

/*
 * Reads every field of msg, recursively: every string to its NUL, every
 * bytes field and unknown field to its length, every repeated element and
 * every set submessage, so that ASan sees any pointer or length the decoder
 * got wrong.  msg must pass protobuf_c_message_check.
 */
void fuzz_walk(const ProtobufCMessage *msg);

/*
 * Packs msg, unpacks those bytes as the same type and packs again: both
 * encodings must be byte for byte equal (a decoded message re-encodes
 * canonically and stably).  Skipped for a message holding an unknown field
 * numbered 0 or above 2^29 - 1 (see mr_has_bad_field_number in mr_codec.h: a
 * protobuf-c 1.4.1 quirk).
 */
void fuzz_repack(const ProtobufCMessage *msg);

/*
 * The generic JSON mapping of clients/lib/pbjson.h on a decoded message:
 * pbjson_from_message must succeed, pbjson_to_message must read its output
 * back, and the message read back must map to the same JSON again.
 */
void fuzz_json_roundtrip(const ProtobufCMessage *msg);

#endif
