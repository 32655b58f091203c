/*
 * fuzz_envelope.c - libFuzzer target: medroute.v1.Envelope from hostile
 * bytes, checked the way intake does before it touches the store.
 *
 * No server here: the checks are those of intake_validate that need none
 * (message_id length, kind known, kind and payload case agree via
 * mr_kind_payload_case, priority known), then the client library's generic
 * JSON mapping (pbjson) both ways, as a receiving application would see the
 * delivered envelope.  The input is the packed Envelope (the stored body).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "mr_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What intake would say of env, as a number (0: acceptable so far). */
static int s_intake_checks(const mr_envelope_t *env)
{
    size_t id_len = env->message_id ? strlen(env->message_id) : 0;
    if (id_len == 0 || id_len > MR_MESSAGE_ID_MAX)
        return MR_E_INVALID;
    if (env->source == NULL || env->source[0] == '\0')
        return MR_E_INVALID;
    if (env->destination == NULL || env->destination[0] == '\0')
        return MR_E_INVALID;
    const char *kind = mr_kind_name((int)env->kind);
    if (kind == NULL)
        return MR_E_UNKNOWN_KIND;
    /* A known kind has a payload case, and a name that maps back to it. */
    int want = mr_kind_payload_case((int)env->kind);
    FUZZ_CHECK(want != 0);
    FUZZ_CHECK(mr_kind_from_name(kind) == (int)env->kind);
    if ((int)env->payload_case != want)
        return MR_E_INVALID;
    const char *prio = mr_priority_name((int)env->priority);
    if (prio == NULL)
        return MR_E_INVALID;
    FUZZ_CHECK(mr_priority_from_name(prio) == (int)env->priority);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mr_envelope_t *env = medroute__v1__envelope__unpack(NULL, size, data);
    if (env == NULL)
        return 0;
    fuzz_walk(&env->base);
    /* An unknown kind has no payload case and no name. */
    if (mr_kind_name((int)env->kind) == NULL)
        FUZZ_CHECK(mr_kind_payload_case((int)env->kind) == 0);
    int code = s_intake_checks(env);
    FUZZ_CHECK(mr_error_name(code) != NULL);
    fuzz_repack(&env->base);
    fuzz_json_roundtrip(&env->base);
    medroute__v1__envelope__free_unpacked(env, NULL);
    return 0;
}
