/*
 * fuzz_util.c - invariant checks on decoded messages for the fuzz targets.
 *
 * Driven by the protobuf-c descriptors, so one walker serves every message
 * type of proto/medroute/v1.  Thread: the fuzzer's.
 */
#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mr_codec.h"
#include "pbjson.h"

/* Keeps the walker's reads from being optimised away. */
static volatile uint64_t s_sink;

void fuzz_fail(const char *file, int line, const char *what, const char *detail)
{
    fprintf(stderr, "FUZZ CHECK FAILED %s:%d: %s%s%s\n", file, line, what,
            detail ? ": " : "", detail ? detail : "");
    abort();
}

static void s_touch(const void *p, size_t len)
{
    const uint8_t *b = p;
    uint64_t acc = 0;
    for (size_t i = 0; i < len; i++)
        acc += b[i];
    s_sink += acc;
}

static size_t s_scalar_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static void s_walk_value(const ProtobufCFieldDescriptor *f, const void *slot)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s;
        memcpy(&s, slot, sizeof s);
        if (s != NULL)
            s_touch(s, strlen(s) + 1);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData bd;
        memcpy(&bd, slot, sizeof bd);
        FUZZ_CHECK(bd.len == 0 || bd.data != NULL);
        if (bd.len > 0)
            s_touch(bd.data, bd.len);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m;
        memcpy(&m, slot, sizeof m);
        if (m != NULL) {
            FUZZ_CHECK(m->descriptor == f->descriptor);
            fuzz_walk(m);
        }
        break;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v;
        memcpy(&v, slot, sizeof v);
        /* proto3 enums are open: an unknown value is kept, not refused. */
        s_sink += protobuf_c_enum_descriptor_get_value(f->descriptor, v) != NULL;
        break;
    }
    default:
        s_touch(slot, s_scalar_size(f->type));
        break;
    }
}

void fuzz_walk(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    FUZZ_CHECK(d != NULL && d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    FUZZ_CHECK(protobuf_c_message_check(msg));
    const char *base = (const char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *slot = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            const char *arr;
            memcpy(&n, base + f->quantifier_offset, sizeof n);
            memcpy(&arr, slot, sizeof arr);
            FUZZ_CHECK(n == 0 || arr != NULL);
            for (size_t k = 0; k < n; k++)
                s_walk_value(f, arr + k * s_scalar_size(f->type));
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof which);
            if (which != f->id)
                continue;
        }
        s_walk_value(f, slot);
    }
    for (unsigned i = 0; i < msg->n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &msg->unknown_fields[i];
        s_sink += u->tag + (uint64_t)u->wire_type;
        if (u->len > 0)
            s_touch(u->data, u->len);
    }
}

/* Packs msg into a new buffer; *len its size.  Caller frees. */
static uint8_t *s_pack(const ProtobufCMessage *msg, size_t *len)
{
    size_t size = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(size > 0 ? size : 1);
    FUZZ_CHECK(buf != NULL);
    *len = protobuf_c_message_pack(msg, buf);
    FUZZ_CHECK(*len == size);
    return buf;
}

void fuzz_repack(const ProtobufCMessage *msg)
{
    if (mr_has_bad_field_number(msg)) /* mr_codec.h: a protobuf-c quirk */
        return;
    size_t len1, len2;
    uint8_t *buf1 = s_pack(msg, &len1);
    ProtobufCMessage *again = protobuf_c_message_unpack(msg->descriptor, NULL, len1, buf1);
    FUZZ_CHECK(again != NULL);
    fuzz_walk(again);
    uint8_t *buf2 = s_pack(again, &len2);
    FUZZ_CHECK(len1 == len2);
    FUZZ_CHECK(memcmp(buf1, buf2, len1) == 0);
    free(buf2);
    protobuf_c_message_free_unpacked(again, NULL);
    free(buf1);
}

void fuzz_json_roundtrip(const ProtobufCMessage *msg)
{
    char err[256] = "";
    ProtobufCMessage *back = NULL;
    json_t *j1 = pbjson_from_message(msg);
    FUZZ_CHECK(j1 != NULL);
    int rc = pbjson_to_message(msg->descriptor, j1, &back, err, sizeof err);
    if (rc != 0) {
        char *text = json_dumps(j1, JSON_COMPACT);
        fprintf(stderr, "pbjson_to_message refused its own output: %s\n", text ? text : "?");
        free(text);
        fuzz_fail(__FILE__, __LINE__, "pbjson_to_message(pbjson_from_message(m)) == 0", err);
    }
    fuzz_walk(back);
    json_t *j2 = pbjson_from_message(back);
    FUZZ_CHECK(j2 != NULL);
    if (!json_equal(j1, j2)) {
        char *t1 = json_dumps(j1, JSON_COMPACT), *t2 = json_dumps(j2, JSON_COMPACT);
        fprintf(stderr, "first:  %s\nsecond: %s\n", t1 ? t1 : "?", t2 ? t2 : "?");
        free(t1);
        free(t2);
        fuzz_fail(__FILE__, __LINE__, "JSON -> message -> JSON is stable", NULL);
    }
    json_decref(j2);
    protobuf_c_message_free_unpacked(back, NULL);
    json_decref(j1);
}
