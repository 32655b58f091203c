/*
 * fuzz_json.c - libFuzzer target: an Envelope from arbitrary JSON text, as
 * mr_client_submit_json and `medroute send` build one.
 *
 * The input is parsed with jansson (json_loadb; embedded \u0000 allowed, so
 * that pbjson's own NUL check is reached) and mapped onto
 * medroute.v1.Envelope by pbjson_to_message.  An accepted envelope is
 * walked, packed and decoded again, and must map to JSON and back stably.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "fuzz_util.h"
#include "mr_codec.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (j == NULL)
        return 0;
    char err[256];
    ProtobufCMessage *m = NULL;
    int rc = pbjson_to_message(&medroute__v1__envelope__descriptor, j, &m, err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(m != NULL);
        fuzz_walk(m);
        fuzz_repack(m);
        fuzz_json_roundtrip(m);
        protobuf_c_message_free_unpacked(m, NULL);
    } else {
        /* A refusal says why, within the buffer. */
        FUZZ_CHECK(rc < 0);
        FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL && err[0] != '\0');
    }
    json_decref(j);
    return 0;
}
