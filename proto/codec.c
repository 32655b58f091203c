/*
 * codec.c - names and rules shared by every user of the wire protocol.
 *
 * Pure functions, no state; safe on any thread.
 */
#include "mr_codec.h"

#include <errno.h>
#include <stdio.h>
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

/* ---- frames around an encoded envelope ------------------------------------ */

static size_t s_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t s_put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* The tag of field `field` of wire type `type`: one byte for fields 1-15. */
#define S_TAG(field, type) ((uint8_t)(((field) << 3) | (type)))
#define S_VARINT PROTOBUF_C_WIRE_TYPE_VARINT
#define S_BYTES PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED

/* Frame.version = 1: tag and value, two bytes. */
enum { S_VERSION_BYTES = 2 };

/* Frame.submission_tag = tag, its key (two bytes) and value; nothing for 0
 * (proto3 leaves a field at its default out). */
#define S_SUBMISSION_KEY (((uint64_t)MR_FRAME_SUBMISSION_TAG_FIELD << 3) | S_VARINT)

static size_t s_submission_size(uint64_t tag)
{
    return tag == 0 ? 0 : s_varint_size(S_SUBMISSION_KEY) + s_varint_size(tag);
}

size_t mr_envelope_frame_size(size_t env_len, uint64_t tag)
{
    return S_VERSION_BYTES + 1 + s_varint_size(env_len) + env_len + s_submission_size(tag);
}

size_t mr_envelope_frame_pack(const uint8_t *env, size_t env_len, uint64_t tag, uint8_t *out)
{
    size_t n = 0;
    out[n++] = S_TAG(MR_FRAME_VERSION_FIELD, S_VARINT);
    out[n++] = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    out[n++] = S_TAG(MR_FRAME_ENVELOPE_FIELD, S_BYTES);
    n += s_put_varint(out + n, env_len);
    if (env_len > 0)
        memcpy(out + n, env, env_len);
    n += env_len;
    if (tag != 0) {
        n += s_put_varint(out + n, S_SUBMISSION_KEY);
        n += s_put_varint(out + n, tag);
    }
    return n;
}

/* The Delivery message's own bytes (proto3: fields at their default are
 * left out, as protobuf-c leaves them). */
static size_t s_delivery_size(const mr_delivery_head_t *d, size_t env_len)
{
    size_t n = 1 + s_varint_size(env_len) + env_len;
    if (d->seq)
        n += 1 + s_varint_size(d->seq);
    if (d->redelivered)
        n += 2;
    if (d->attempt)
        n += 1 + s_varint_size(d->attempt);
    if (d->stored_at_ms)
        n += 1 + s_varint_size((uint64_t)d->stored_at_ms);
    return n;
}

size_t mr_delivery_frame_size(const mr_delivery_head_t *d, size_t env_len)
{
    size_t inner = s_delivery_size(d, env_len);
    return S_VERSION_BYTES + 1 + s_varint_size(inner) + inner;
}

size_t mr_delivery_frame_pack(const mr_delivery_head_t *d, const uint8_t *env, size_t env_len,
                              uint8_t *out)
{
    size_t n = 0;
    out[n++] = S_TAG(MR_FRAME_VERSION_FIELD, S_VARINT);
    out[n++] = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    out[n++] = S_TAG(MR_FRAME_DELIVERY_FIELD, S_BYTES);
    n += s_put_varint(out + n, s_delivery_size(d, env_len));
    if (d->seq) {
        out[n++] = S_TAG(MR_DELIVERY_SEQ_FIELD, S_VARINT);
        n += s_put_varint(out + n, d->seq);
    }
    out[n++] = S_TAG(MR_DELIVERY_ENVELOPE_FIELD, S_BYTES);
    n += s_put_varint(out + n, env_len);
    if (env_len > 0)
        memcpy(out + n, env, env_len);
    n += env_len;
    if (d->redelivered) {
        out[n++] = S_TAG(MR_DELIVERY_REDELIVERED_FIELD, S_VARINT);
        out[n++] = 1;
    }
    if (d->attempt) {
        out[n++] = S_TAG(MR_DELIVERY_ATTEMPT_FIELD, S_VARINT);
        n += s_put_varint(out + n, d->attempt);
    }
    if (d->stored_at_ms) {
        out[n++] = S_TAG(MR_DELIVERY_STORED_AT_FIELD, S_VARINT);
        n += s_put_varint(out + n, (uint64_t)d->stored_at_ms);
    }
    return n;
}

/* Reads a protobuf varint at b[*i]; 0, or -1 if it runs past the end. */
static int s_varint(const uint8_t *b, size_t len, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *i < len; shift += 7) {
        uint8_t c = b[(*i)++];
        *v |= (uint64_t)(c & 0x7f) << shift;
        if ((c & 0x80) == 0)
            return 0;
    }
    return -1;
}

/* Moves *i past the value of a field of wire type `type`; 0 or -1. */
static int s_skip(const uint8_t *b, size_t len, size_t *i, unsigned type)
{
    uint64_t n = 0;
    switch (type) {
    case PROTOBUF_C_WIRE_TYPE_VARINT: return s_varint(b, len, i, &n);
    case PROTOBUF_C_WIRE_TYPE_64BIT: n = 8; break;
    case PROTOBUF_C_WIRE_TYPE_32BIT: n = 4; break;
    case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
        if (s_varint(b, len, i, &n) != 0)
            return -1;
        break;
    default: return -1;
    }
    if (n > len - *i)
        return -1;
    *i += (size_t)n;
    return 0;
}

/* Where the value of the one top-level field with key `want` (field number
 * and wire type) starts in buf: 0 and *at, or -1 if buf is not a sequence
 * of well-formed fields, or that field is absent or occurs more than once. */
static int s_field_once(const uint8_t *buf, size_t len, uint64_t want, size_t *at)
{
    int found = 0;
    size_t i = 0;
    while (i < len) {
        uint64_t tag;
        if (s_varint(buf, len, &i, &tag) != 0)
            return -1;
        size_t start = i;
        if (s_skip(buf, len, &i, (unsigned)(tag & 7)) != 0)
            return -1;
        if (tag == want && found++ == 0)
            *at = start;
    }
    return found == 1 ? 0 : -1;
}

int mr_field_slice(const uint8_t *buf, size_t len, uint32_t field, const uint8_t **out,
                   size_t *out_len)
{
    size_t at;
    uint64_t n;
    if (s_field_once(buf, len, ((uint64_t)field << 3) | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
                     &at) != 0)
        return -1;
    (void)s_varint(buf, len, &at, &n); /* read once already by s_skip */
    *out = buf + at;
    *out_len = (size_t)n;
    return 0;
}

int mr_field_varint(const uint8_t *buf, size_t len, uint32_t field, uint64_t *out)
{
    size_t at;
    if (s_field_once(buf, len, ((uint64_t)field << 3) | PROTOBUF_C_WIRE_TYPE_VARINT, &at) != 0)
        return -1;
    (void)s_varint(buf, len, &at, out); /* read once already by s_skip */
    return 0;
}

int mr_envelope_id(const uint8_t *env, size_t len, const uint8_t **id, size_t *id_len)
{
    return mr_field_slice(env, len, MR_ENVELOPE_MESSAGE_ID_FIELD, id, id_len);
}

int mr_has_bad_field_number(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < msg->n_unknown_fields; i++)
        if (msg->unknown_fields[i].tag == 0 || msg->unknown_fields[i].tag > MR_FIELD_NUMBER_MAX)
            return 1;
    const char *base = (const char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        size_t n = 1;
        const ProtobufCMessage *const *subs = (const ProtobufCMessage *const *)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            memcpy(&n, base + f->quantifier_offset, sizeof n);
            memcpy(&subs, base + f->offset, sizeof subs);
        } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof which);
            if (which != f->id)
                continue;
        }
        for (size_t k = 0; k < n; k++)
            if (subs[k] != NULL && mr_has_bad_field_number(subs[k]))
                return 1;
    }
    return 0;
}

/* ---- UTF-8 in string fields ----------------------------------------------- */

size_t mr_utf8_char(const char *str, size_t avail)
{
    const unsigned char *s = (const unsigned char *)str;
    if (avail == 0)
        return 0;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    /* The bytes that follow a lead byte, and the range of the first of
     * them: narrower after E0 (overlong), ED (surrogates), F0 (overlong)
     * and F4 (above U+10FFFF).  C0, C1 (overlong) and F5..FF never lead. */
    size_t more;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        more = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        more = 2;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        more = 3;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (more > avail - 1 || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k <= more; k++)
        if ((s[k] & 0xc0) != 0x80)
            return 0;
    return more + 1;
}

int mr_text_check(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    bool nul = false;
    size_t i = 0;
    while (i < len) {
        /* Eight ASCII bytes at a time: every message's text is checked, and
         * most of it is ASCII.  A zero byte among them: (w - 0x01..) sets
         * the top bit of a byte that was 0, ~w keeps it only there. */
        if (len - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ULL) == 0) {
                nul = nul || ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL) != 0;
                i += 8;
                continue;
            }
        }
        nul = nul || s[i] == 0;
        size_t n = mr_utf8_char(str + i, len - i);
        if (n == 0)
            return 1; /* not UTF-8 wins over a NUL before it */
        i += n;
    }
    return nul ? 2 : 0;
}

bool mr_utf8_valid(const char *str, size_t len)
{
    return mr_text_check(str, len) != 1; /* U+0000 is a character */
}

size_t mr_utf8_cut(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t len = strnlen(str, n);
    /* Back over the continuation bytes at the end (three at most) to the
     * byte that leads the last character, and see whether all of it fits. */
    size_t i = len;
    while (i > 0 && len - i < 3 && (s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0)
        return len; /* continuation bytes only: not UTF-8, nothing to keep whole */
    unsigned c = s[i - 1];
    size_t more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
    return len - i < more ? i - 1 : len;
}

/* One step down the path to a field: the field f, whose tag starts at
 * msg + tag_at, in the message msg encoded, itself held by `up` (NULL for
 * the message the walk began at). */
typedef struct s_step {
    const struct s_step *up;
    const ProtobufCFieldDescriptor *f;
    const uint8_t *msg;
    size_t tag_at;
} s_step_t;

/* How many times field `id` occurs in msg before offset end: the index of
 * the occurrence at end in a repeated field.  The bytes were walked once
 * already, so they are well-formed. */
static size_t s_occurrence(const uint8_t *msg, size_t end, uint32_t id)
{
    size_t n = 0, i = 0;
    while (i < end) {
        uint64_t tag;
        if (s_varint(msg, end, &i, &tag) != 0 || s_skip(msg, end, &i, (unsigned)(tag & 7)) != 0)
            break;
        n += (tag >> 3) == id;
    }
    return n;
}

/* Writes the path of `at` ("referral.patient.name", "items[2].unit") into
 * out[used..cap); returns the new used.  Names come from the descriptors
 * (ASCII), never from the message, so a cut path is still text. */
static size_t s_path_write(char *out, size_t cap, const s_step_t *at)
{
    size_t used = at->up ? s_path_write(out, cap, at->up) : 0;
    if (used + 1 >= cap)
        return used;
    int n;
    if (at->f->label == PROTOBUF_C_LABEL_REPEATED)
        n = snprintf(out + used, cap - used, "%s%s[%zu]", used ? "." : "", at->f->name,
                     s_occurrence(at->msg, at->tag_at, at->f->id));
    else
        n = snprintf(out + used, cap - used, "%s%s", used ? "." : "", at->f->name);
    if (n < 0)
        return used;
    return (size_t)n < cap - used ? used + (size_t)n : cap - 1;
}

/* The walk of mr_find_bad_utf8 over one message of type d, encoded in b. */
static int s_utf8_walk(const ProtobufCMessageDescriptor *d, const uint8_t *b, size_t len,
                       const s_step_t *up, char *path, size_t path_len)
{
    size_t i = 0;
    while (i < len) {
        size_t tag_at = i;
        uint64_t tag, n;
        if (s_varint(b, len, &i, &tag) != 0)
            return -1;
        if ((tag & 7) != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED) {
            if (s_skip(b, len, &i, (unsigned)(tag & 7)) != 0)
                return -1;
            continue;
        }
        if (s_varint(b, len, &i, &n) != 0 || n > len - i)
            return -1;
        const uint8_t *v = b + i;
        i += (size_t)n;
        /* An unknown field is kept as bytes by every decoder: not text. */
        const ProtobufCFieldDescriptor *f =
            (tag >> 3) <= UINT32_MAX
                ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3))
                : NULL;
        if (f == NULL)
            continue;
        s_step_t here = {up, f, b, tag_at};
        int bad = f->type == PROTOBUF_C_TYPE_STRING ? mr_text_check((const char *)v, (size_t)n) : 0;
        if (bad) {
            if (path != NULL && path_len > 0) {
                path[0] = '\0';
                (void)s_path_write(path, path_len, &here);
            }
            return bad;
        }
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            int rc = s_utf8_walk(f->descriptor, v, (size_t)n, &here, path, path_len);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

int mr_find_bad_utf8(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                     char *path, size_t path_len)
{
    return s_utf8_walk(d, buf, len, NULL, path, path_len);
}

/* Moves *i to the start of the next field of b that is not created_at_ms
 * and *end past it; 1 if there is one, 0 at the end, -1 if malformed. */
static int s_next_field(const uint8_t *b, size_t len, size_t *i, size_t *end)
{
    const uint64_t created = (uint64_t)MR_ENVELOPE_CREATED_AT_FIELD << 3; /* a varint */
    while (*i < len) {
        size_t j = *i;
        uint64_t tag;
        if (s_varint(b, len, &j, &tag) != 0 || s_skip(b, len, &j, (unsigned)(tag & 7)) != 0)
            return -1;
        if (tag != created) {
            *end = j;
            return 1;
        }
        *i = j;
    }
    return 0;
}

int mr_envelope_same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t i = 0, j = 0;
    for (;;) {
        size_t ie = 0, je = 0;
        int ra = s_next_field(a, alen, &i, &ie), rb = s_next_field(b, blen, &j, &je);
        if (ra < 0 || rb < 0)
            return alen == blen && memcmp(a, b, alen) == 0;
        if (ra == 0 || rb == 0)
            return ra == rb;
        if (ie - i != je - j || memcmp(a + i, b + j, ie - i) != 0)
            return 0;
        i = ie;
        j = je;
    }
}

int64_t mr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mr_mono_ms(void)
{
    struct timespec ts;
#ifdef CLOCK_BOOTTIME
    if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
#endif
        clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
