/*
 * pbjson.c: generic JSON <-> protobuf-c conversion.
 *
 * What it is
 *   One mapper for every message type: it walks the protobuf-c message
 *   descriptor (field names, labels, types, offsets, oneof case members) and
 *   reads or writes the C struct through the offsets.  The JSON side is
 *   jansson.  The mapping rules are summarised in pbjson.h.
 *
 * Ownership
 *   pbjson_from_message only reads the message and returns a new JSON object
 *   with one reference, owned by the caller.
 *
 *   pbjson_to_message only reads the JSON and builds the message with malloc
 *   so that protobuf_c_message_free_unpacked(msg, NULL) releases all of it,
 *   following protobuf-c 1.4.1's rules:
 *     - every message (top level and nested) is malloc(sizeof_message) and
 *       initialised with its own descriptor's message_init;
 *     - a singular string field keeps the static default it got from
 *       message_init (protobuf_c_empty_string, never freed) unless the JSON
 *       sets it, and then points at a malloc'd copy;
 *     - repeated fields are one malloc'd array with n_<field> elements, each
 *       string / bytes / submessage element malloc'd in turn;
 *     - bytes are malloc'd (len 0 keeps data NULL);
 *     - a oneof case is set only once its member holds a value, so a message
 *       abandoned half-way through is still safe to free.
 *   A value is stored into the message only when it is complete; on any
 *   failure the partly built message is freed and *out is not touched.
 *
 * No state is kept between calls: the JSON path used in error reasons lives
 * in a context on the caller's stack.
 */
#include "pbjson.h"

#include "mr_codec.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest JSON path kept for error reasons; longer paths are cut short. */
#define PBJSON_PATH_MAX 256

/* Conversion state for one pbjson_to_message call. */
struct pbjson_in {
	char path[PBJSON_PATH_MAX]; /* "referral.reasons[1].code" */
	size_t path_len;
	unsigned depth;             /* message objects currently open */
	char *err;
	size_t errlen;
};

/* Outcome of s_parse_decimal. */
enum { S_DEC_OK, S_DEC_SYNTAX, S_DEC_RANGE };

static const char s_b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int s_message_from_json(struct pbjson_in *in,
                               const ProtobufCMessageDescriptor *desc,
                               const json_t *j, ProtobufCMessage *msg);
static json_t *s_message_to_json(const ProtobufCMessage *msg);

/* ---------------------------------------------------------------- helpers */

static int s_fail(struct pbjson_in *in, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Writes "path: reason" into the caller's buffer and returns rc. */
static int s_fail(struct pbjson_in *in, int rc, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (in->err == NULL || in->errlen == 0)
		return rc;
	n = snprintf(in->err, in->errlen, "%s: ",
	             in->path_len > 0 ? in->path : "(root)");
	if (n < 0 || (size_t)n >= in->errlen)
		return rc;
	va_start(ap, fmt);
	n = vsnprintf(in->err + n, in->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	if (n < 0)
		in->err[0] = '\0';
	return rc;
}

static void s_path_advance(struct pbjson_in *in, int n)
{
	size_t room = sizeof in->path - in->path_len;

	if (n < 0) {
		in->path[in->path_len] = '\0';
		return;
	}
	in->path_len += (size_t)n < room ? (size_t)n : room - 1;
}

/* Appends ".key" (or "key" at the top) to the path; returns the old length
 * for s_path_pop. */
static size_t s_path_push_key(struct pbjson_in *in, const char *key)
{
	size_t mark = in->path_len;
	int n = snprintf(in->path + mark, sizeof in->path - mark, "%s%s",
	                 mark > 0 ? "." : "", key);

	s_path_advance(in, n);
	return mark;
}

static size_t s_path_push_index(struct pbjson_in *in, size_t index)
{
	size_t mark = in->path_len;
	int n = snprintf(in->path + mark, sizeof in->path - mark, "[%zu]", index);

	s_path_advance(in, n);
	return mark;
}

static void s_path_pop(struct pbjson_in *in, size_t mark)
{
	in->path_len = mark;
	in->path[mark] = '\0';
}

/* Whether the JSON string j holds a NUL character (possible under
 * JSON_ALLOW_NUL): C would read it as shorter than it is. */
static bool s_has_nul(const json_t *j)
{
	return memchr(json_string_value(j), '\0', json_string_length(j)) != NULL;
}

static const char *s_json_kind(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT:
		return "object";
	case JSON_ARRAY:
		return "array";
	case JSON_STRING:
		return "string";
	case JSON_INTEGER:
		return "integer";
	case JSON_REAL:
		return "real number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "boolean";
	case JSON_NULL:
		return "null";
	}
	return "unknown";
}

static const char *s_type_name(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
		return "int32";
	case PROTOBUF_C_TYPE_SINT32:
		return "sint32";
	case PROTOBUF_C_TYPE_SFIXED32:
		return "sfixed32";
	case PROTOBUF_C_TYPE_INT64:
		return "int64";
	case PROTOBUF_C_TYPE_SINT64:
		return "sint64";
	case PROTOBUF_C_TYPE_SFIXED64:
		return "sfixed64";
	case PROTOBUF_C_TYPE_UINT32:
		return "uint32";
	case PROTOBUF_C_TYPE_FIXED32:
		return "fixed32";
	case PROTOBUF_C_TYPE_UINT64:
		return "uint64";
	case PROTOBUF_C_TYPE_FIXED64:
		return "fixed64";
	case PROTOBUF_C_TYPE_FLOAT:
		return "float";
	case PROTOBUF_C_TYPE_DOUBLE:
		return "double";
	case PROTOBUF_C_TYPE_BOOL:
		return "bool";
	case PROTOBUF_C_TYPE_ENUM:
		return "enum";
	case PROTOBUF_C_TYPE_STRING:
		return "string";
	case PROTOBUF_C_TYPE_BYTES:
		return "bytes";
	case PROTOBUF_C_TYPE_MESSAGE:
		return "message";
	}
	return "unknown";
}

/* Size of one element of a repeated field of this type in the C struct. */
static size_t s_elem_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return sizeof(int32_t);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return sizeof(int64_t);
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
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

static int s_ascii_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static bool s_ascii_caseeq(const char *a, const char *b)
{
	for (; *a != '\0' && *b != '\0'; a++, b++) {
		if (s_ascii_lower((unsigned char)*a) != s_ascii_lower((unsigned char)*b))
			return false;
	}
	return *a == *b;
}

/* True when key is the lowerCamelCase (proto3 json_name) form of the proto
 * field name: each '_' is dropped and the letter after it upper-cased. */
static bool s_camel_matches(const char *name, const char *key)
{
	bool upper = false;

	for (; *name != '\0'; name++) {
		char c = *name;

		if (c == '_') {
			upper = true;
			continue;
		}
		if (upper && c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		upper = false;
		if (*key != c)
			return false;
		key++;
	}
	return *key == '\0';
}

/* The field a JSON key names: the proto name first, then lowerCamelCase. */
static const ProtobufCFieldDescriptor *
s_find_field(const ProtobufCMessageDescriptor *desc, const char *key)
{
	unsigned i;

	for (i = 0; i < desc->n_fields; i++) {
		if (strcmp(desc->fields[i].name, key) == 0)
			return &desc->fields[i];
	}
	for (i = 0; i < desc->n_fields; i++) {
		if (s_camel_matches(desc->fields[i].name, key))
			return &desc->fields[i];
	}
	return NULL;
}

static const ProtobufCFieldDescriptor *
s_field_by_id(const ProtobufCMessageDescriptor *desc, uint32_t id)
{
	unsigned i;

	for (i = 0; i < desc->n_fields; i++) {
		if (desc->fields[i].id == id)
			return &desc->fields[i];
	}
	return NULL;
}

/* Length of the longest prefix ending in '_' that every value name of the
 * enum shares ("KIND_" for KIND_UNSPECIFIED, KIND_REFERRAL, ...). */
static size_t s_enum_prefix_len(const ProtobufCEnumDescriptor *ed)
{
	const char *first;
	size_t common;
	unsigned i;

	if (ed->n_values == 0)
		return 0;
	first = ed->values[0].name;
	common = strlen(first);
	for (i = 1; i < ed->n_values; i++) {
		const char *name = ed->values[i].name;
		size_t k = 0;

		while (k < common && name[k] == first[k])
			k++;
		common = k;
	}
	while (common > 0 && first[common - 1] != '_')
		common--;
	return common;
}

/* Finds an enum value by its exact name, its name in any case, or its name
 * without the common prefix in any case. */
static const ProtobufCEnumValue *
s_enum_by_name(const ProtobufCEnumDescriptor *ed, const char *s)
{
	const ProtobufCEnumValue *ev;
	size_t prefix;
	unsigned i;

	ev = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
	if (ev != NULL)
		return ev;
	for (i = 0; i < ed->n_values; i++) {
		if (s_ascii_caseeq(ed->values[i].name, s))
			return &ed->values[i];
	}
	prefix = s_enum_prefix_len(ed);
	for (i = 0; i < ed->n_values; i++) {
		const char *rest = ed->values[i].name + prefix;

		if (*rest != '\0' && s_ascii_caseeq(rest, s))
			return &ed->values[i];
	}
	return NULL;
}

/* Strict decimal: an optional '-', then one or more digits, nothing else. */
static int s_parse_decimal(const char *s, size_t len, bool *neg, uint64_t *mag)
{
	bool overflow = false;
	uint64_t v = 0;
	size_t i = 0;

	*neg = false;
	if (i < len && s[i] == '-') {
		*neg = true;
		i++;
	}
	if (i == len)
		return S_DEC_SYNTAX;
	for (; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return S_DEC_SYNTAX;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			overflow = true;
		else
			v = v * 10 + d;
	}
	if (overflow)
		return S_DEC_RANGE;
	*mag = v;
	return S_DEC_OK;
}

/* ----------------------------------------------------------------- base64 */

/* Standard alphabet with padding.  Returns a malloc'd NUL-terminated string,
 * NULL on allocation failure. */
static char *s_base64_encode(const uint8_t *data, size_t len, size_t *outlen)
{
	size_t i = 0, o = 0;
	char *buf;

	if (len > (SIZE_MAX / 4 - 1) * 3)
		return NULL;
	buf = malloc((len + 2) / 3 * 4 + 1);
	if (buf == NULL)
		return NULL;
	for (; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 |
		             data[i + 2];

		buf[o++] = s_b64_chars[v >> 18 & 63];
		buf[o++] = s_b64_chars[v >> 12 & 63];
		buf[o++] = s_b64_chars[v >> 6 & 63];
		buf[o++] = s_b64_chars[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)data[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)data[i + 1] << 8;
		buf[o++] = s_b64_chars[v >> 18 & 63];
		buf[o++] = s_b64_chars[v >> 12 & 63];
		buf[o++] = i + 1 < len ? s_b64_chars[v >> 6 & 63] : '=';
		buf[o++] = '=';
	}
	buf[o] = '\0';
	*outlen = o;
	return buf;
}

static int s_b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/* Accepts the standard and URL-safe alphabets, with or without padding.
 * On success *out is malloc'd (NULL when the result is empty).  Returns 0,
 * -EINVAL for malformed input or -ENOMEM. */
static int s_base64_decode(const char *s, size_t len, uint8_t **out,
                           size_t *outlen)
{
	uint8_t *buf = NULL;
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t i, o = 0, n;
	int rc = 0;

	if (len > 0 && len % 4 == 0 && s[len - 1] == '=') {
		len--;
		if (s[len - 1] == '=')
			len--;
	}
	if (len % 4 == 1) {
		rc = -EINVAL;
		goto out;
	}
	n = len / 4 * 3 + (len % 4 > 0 ? len % 4 - 1 : 0);
	if (n > 0) {
		buf = malloc(n);
		if (buf == NULL) {
			rc = -ENOMEM;
			goto out;
		}
	}
	for (i = 0; i < len; i++) {
		int v = s_b64_value(s[i]);

		if (v < 0) {
			rc = -EINVAL;
			goto out;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	*out = buf;
	*outlen = o;
	buf = NULL;
out:
	free(buf);
	return rc;
}

/* ------------------------------------------------------------------- UTF-8 */

/* A JSON string for a C string; bytes that are not UTF-8 (a peer may send
 * them) become U+FFFD rather than failing the whole conversion. */
static json_t *s_string_to_json(const char *s)
{
	json_t *j = json_string(s);
	char *fixed = NULL;
	size_t len, i = 0, o = 0;

	if (j != NULL || mr_utf8_valid(s, strlen(s)))
		goto out; /* done, or a genuine allocation failure */
	len = strlen(s);
	if (len > (SIZE_MAX - 1) / 3)
		goto out;
	fixed = malloc(len * 3 + 1);
	if (fixed == NULL)
		goto out;
	while (i < len) {
		size_t n = mr_utf8_char(s + i, len - i);

		if (n == 0) {
			memcpy(fixed + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
		} else {
			memcpy(fixed + o, s + i, n);
			o += n;
			i += n;
		}
	}
	fixed[o] = '\0';
	j = json_string(fixed);
out:
	free(fixed);
	return j;
}

/* ------------------------------------------------------------ JSON -> pb */

/* Reads an integral JSON value (integer, integral real below 2^52 in
 * magnitude, or when allow_string a decimal string) as sign and magnitude. */
static int s_get_integral(struct pbjson_in *in, const json_t *j,
                          bool allow_string, const char *tname, bool *neg,
                          uint64_t *mag)
{
	if (json_is_integer(j)) {
		json_int_t v = json_integer_value(j);

		*neg = v < 0;
		*mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
		return 0;
	}
	if (json_is_real(j)) {
		double d = json_real_value(j);
		double a = d < 0 ? -d : d;
		uint64_t m;

		if (!(a < 18446744073709551616.0))
			return s_fail(in, -EINVAL, "%g is out of range for %s", d, tname);
		/* From 2^52 on a double has no fraction bits left, and jansson
		 * has rounded the text already: 4503599627370496.5 reads as
		 * ...496 (from 2^53, 9007199254740993.0 as ...992).  An integer
		 * without fraction or exponent is read exactly.  Below, a
		 * fraction finer than the double (1.0000000000000001) is lost
		 * in jansson too, which keeps no text: a limit, documented. */
		if (a >= 4503599627370496.0)
			return s_fail(in, -EINVAL,
			              "%.17g: a number with a fraction or an exponent is "
			              "inexact from 2^52 on; write it as an integer%s (%s)",
			              d, allow_string ? " or a decimal string" : "", tname);
		m = (uint64_t)a;
		if ((double)m != a)
			return s_fail(in, -EINVAL, "%g is not an integer (%s)", d, tname);
		*neg = d < 0;
		*mag = m;
		return 0;
	}
	if (allow_string && json_is_string(j)) {
		const char *s = json_string_value(j);
		int prc = s_parse_decimal(s, json_string_length(j), neg, mag);

		if (prc == S_DEC_SYNTAX)
			return s_fail(in, -EINVAL, "\"%s\" is not a decimal integer (%s)",
			              s, tname);
		if (prc == S_DEC_RANGE)
			return s_fail(in, -EINVAL, "\"%s\" is out of range for %s", s, tname);
		return 0;
	}
	return s_fail(in, -EINVAL, "expected %s for %s, got %s",
	              allow_string ? "an integer or a decimal string" : "an integer",
	              tname, s_json_kind(j));
}

static int s_get_signed(struct pbjson_in *in, const json_t *j, bool allow_string,
                        const char *tname, int64_t lo, int64_t hi, int64_t *out)
{
	bool neg = false, ok;
	uint64_t mag = 0;
	int rc;

	rc = s_get_integral(in, j, allow_string, tname, &neg, &mag);
	if (rc != 0)
		return rc;
	if (neg)
		ok = mag <= (uint64_t)(-(lo + 1)) + 1;
	else
		ok = mag <= (uint64_t)hi;
	if (!ok)
		return s_fail(in, -EINVAL, "%s%" PRIu64 " is out of range for %s",
		              neg ? "-" : "", mag, tname);
	if (!neg)
		*out = (int64_t)mag;
	else
		*out = mag == 0 ? 0 : -(int64_t)(mag - 1) - 1;
	return 0;
}

static int s_get_unsigned(struct pbjson_in *in, const json_t *j,
                          bool allow_string, const char *tname, uint64_t hi,
                          uint64_t *out)
{
	bool neg = false;
	uint64_t mag = 0;
	int rc;

	rc = s_get_integral(in, j, allow_string, tname, &neg, &mag);
	if (rc != 0)
		return rc;
	if ((neg && mag != 0) || mag > hi)
		return s_fail(in, -EINVAL, "%s%" PRIu64 " is out of range for %s",
		              neg ? "-" : "", mag, tname);
	*out = mag;
	return 0;
}

static int s_get_double(struct pbjson_in *in, const json_t *j, bool is_float,
                        double *out)
{
	const char *tname = is_float ? "float" : "double";
	double d;

	if (json_is_number(j)) {
		d = json_number_value(j);
	} else if (json_is_string(j)) {
		const char *s = json_string_value(j);

		if (s_has_nul(j))
			return s_fail(in, -EINVAL, "string contains a NUL character");
		if (strcmp(s, "NaN") == 0)
			d = NAN;
		else if (strcmp(s, "Infinity") == 0)
			d = INFINITY;
		else if (strcmp(s, "-Infinity") == 0)
			d = -INFINITY;
		else
			return s_fail(in, -EINVAL,
			              "expected a number, \"NaN\", \"Infinity\" or "
			              "\"-Infinity\" for %s, got \"%s\"", tname, s);
	} else {
		return s_fail(in, -EINVAL, "expected a number for %s, got %s", tname,
		              s_json_kind(j));
	}
	if (is_float && isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
		return s_fail(in, -EINVAL, "%g is out of range for float", d);
	*out = d;
	return 0;
}

static int s_get_enum(struct pbjson_in *in, const ProtobufCEnumDescriptor *ed,
                      const json_t *j, int32_t *out)
{
	const ProtobufCEnumValue *ev;
	int64_t v = 0;
	int rc;

	if (json_is_string(j)) {
		/* A NUL would end the name early: "referral\u0000x" is no kind. */
		if (s_has_nul(j))
			return s_fail(in, -EINVAL, "enum name contains a NUL character");
		ev = s_enum_by_name(ed, json_string_value(j));
		if (ev == NULL)
			return s_fail(in, -EINVAL, "unknown enum value \"%s\" for %s",
			              json_string_value(j), ed->name);
		*out = ev->value;
		return 0;
	}
	if (!json_is_number(j))
		return s_fail(in, -EINVAL, "expected an enum name or integer for %s, got %s",
		              ed->name, s_json_kind(j));
	/* proto3 enums are open: any int32 is kept, known or not. */
	rc = s_get_signed(in, j, false, ed->name, INT32_MIN, INT32_MAX, &v);
	if (rc != 0)
		return rc;
	*out = (int32_t)v;
	return 0;
}

static int s_new_message(struct pbjson_in *in,
                         const ProtobufCMessageDescriptor *desc,
                         ProtobufCMessage **out)
{
	ProtobufCMessage *m = malloc(desc->sizeof_message);

	if (m == NULL)
		return s_fail(in, -ENOMEM, "out of memory");
	protobuf_c_message_init(desc, m);
	*out = m;
	return 0;
}

/* Converts one JSON value to one C value of the field's type at slot (the
 * field member, or an element of a repeated array).  slot is written only on
 * success, and then owns what it points to. */
static int s_value_from_json(struct pbjson_in *in,
                             const ProtobufCFieldDescriptor *f, const json_t *j,
                             void *slot)
{
	const char *tname = s_type_name(f->type);
	int64_t sv = 0;
	uint64_t uv = 0;
	double d = 0;
	int rc = 0;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32: {
		int32_t v;

		rc = s_get_signed(in, j, false, tname, INT32_MIN, INT32_MAX, &sv);
		if (rc != 0)
			break;
		v = (int32_t)sv;
		memcpy(slot, &v, sizeof v);
		break;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		rc = s_get_signed(in, j, true, tname, INT64_MIN, INT64_MAX, &sv);
		if (rc == 0)
			memcpy(slot, &sv, sizeof sv);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: {
		uint32_t v;

		rc = s_get_unsigned(in, j, false, tname, UINT32_MAX, &uv);
		if (rc != 0)
			break;
		v = (uint32_t)uv;
		memcpy(slot, &v, sizeof v);
		break;
	}
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		rc = s_get_unsigned(in, j, true, tname, UINT64_MAX, &uv);
		if (rc == 0)
			memcpy(slot, &uv, sizeof uv);
		break;
	case PROTOBUF_C_TYPE_FLOAT: {
		float v;

		rc = s_get_double(in, j, true, &d);
		if (rc != 0)
			break;
		v = (float)d;
		memcpy(slot, &v, sizeof v);
		break;
	}
	case PROTOBUF_C_TYPE_DOUBLE:
		rc = s_get_double(in, j, false, &d);
		if (rc == 0)
			memcpy(slot, &d, sizeof d);
		break;
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean b;

		if (!json_is_boolean(j)) {
			rc = s_fail(in, -EINVAL, "expected true or false for bool, got %s",
			            s_json_kind(j));
			break;
		}
		b = json_is_true(j) ? 1 : 0;
		memcpy(slot, &b, sizeof b);
		break;
	}
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t v = 0;

		rc = s_get_enum(in, f->descriptor, j, &v);
		if (rc == 0)
			memcpy(slot, &v, sizeof v);
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s;
		size_t n;
		char *copy;

		if (!json_is_string(j)) {
			rc = s_fail(in, -EINVAL, "expected a string, got %s", s_json_kind(j));
			break;
		}
		s = json_string_value(j);
		n = json_string_length(j);
		if (s_has_nul(j)) {
			rc = s_fail(in, -EINVAL, "string contains a NUL character");
			break;
		}
		copy = malloc(n + 1);
		if (copy == NULL) {
			rc = s_fail(in, -ENOMEM, "out of memory");
			break;
		}
		memcpy(copy, s, n + 1);
		memcpy(slot, &copy, sizeof copy);
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData bd = { 0, NULL };

		if (!json_is_string(j)) {
			rc = s_fail(in, -EINVAL, "expected a base64 string for bytes, got %s",
			            s_json_kind(j));
			break;
		}
		rc = s_base64_decode(json_string_value(j), json_string_length(j),
		                     &bd.data, &bd.len);
		if (rc == -ENOMEM)
			rc = s_fail(in, rc, "out of memory");
		else if (rc != 0)
			rc = s_fail(in, rc, "invalid base64");
		else
			memcpy(slot, &bd, sizeof bd);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessageDescriptor *sd = f->descriptor;
		ProtobufCMessage *sub = NULL;

		rc = s_new_message(in, sd, &sub);
		if (rc == 0)
			rc = s_message_from_json(in, sd, j, sub);
		if (rc == 0) {
			memcpy(slot, &sub, sizeof sub);
			sub = NULL;
		}
		if (sub != NULL)
			protobuf_c_message_free_unpacked(sub, NULL);
		break;
	}
	default:
		rc = s_fail(in, -EINVAL, "unsupported field type %d", (int)f->type);
		break;
	}
	return rc;
}

static int s_repeated_from_json(struct pbjson_in *in, ProtobufCMessage *msg,
                                const ProtobufCFieldDescriptor *f,
                                const json_t *j)
{
	char *base = (char *)msg;
	size_t *count = (size_t *)(base + f->quantifier_offset);
	size_t size = s_elem_size(f->type);
	size_t n, i;
	char *arr;

	if (!json_is_array(j))
		return s_fail(in, -EINVAL, "expected an array, got %s", s_json_kind(j));
	n = json_array_size(j);
	if (n == 0)
		return 0;
	if (size == 0 || n > SIZE_MAX / size)
		return s_fail(in, -ENOMEM, "out of memory");
	arr = calloc(n, size);
	if (arr == NULL)
		return s_fail(in, -ENOMEM, "out of memory");
	/* The message owns the array from here on; count tracks the elements
	 * that hold a complete value, so freeing the message at any point is
	 * safe. */
	memcpy(base + f->offset, &arr, sizeof arr);
	*count = 0;
	for (i = 0; i < n; i++) {
		const json_t *elem = json_array_get(j, i);
		size_t mark = s_path_push_index(in, i);
		int rc;

		if (json_is_null(elem))
			rc = s_fail(in, -EINVAL, "null is not allowed in an array");
		else
			rc = s_value_from_json(in, f, elem, arr + i * size);
		s_path_pop(in, mark);
		if (rc != 0)
			return rc;
		(*count)++;
	}
	return 0;
}

/* Sets one field of msg from a non-null JSON value. */
static int s_field_from_json(struct pbjson_in *in, ProtobufCMessage *msg,
                             const ProtobufCFieldDescriptor *f,
                             const json_t *j)
{
	char *base = (char *)msg;
	int rc;

	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return s_repeated_from_json(in, msg, f, j);
	rc = s_value_from_json(in, f, j, base + f->offset);
	if (rc != 0)
		return rc;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t id = f->id;

		memcpy(base + f->quantifier_offset, &id, sizeof id);
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
	           f->type != PROTOBUF_C_TYPE_STRING &&
	           f->type != PROTOBUF_C_TYPE_MESSAGE) {
		protobuf_c_boolean has = 1;

		memcpy(base + f->quantifier_offset, &has, sizeof has);
	}
	return 0;
}

/* Handles one key of a JSON object (the path already names it). */
static int s_member_from_json(struct pbjson_in *in,
                              const ProtobufCMessageDescriptor *desc,
                              const json_t *obj, ProtobufCMessage *msg,
                              const char *key, size_t key_len,
                              const json_t *value)
{
	const ProtobufCFieldDescriptor *f = NULL;

	if (strlen(key) == key_len)
		f = s_find_field(desc, key);
	if (f == NULL)
		return s_fail(in, -EINVAL, "unknown field \"%s\" in %s", key, desc->name);
	if (strcmp(key, f->name) != 0 && json_object_get(obj, f->name) != NULL)
		return s_fail(in, -EINVAL, "field given twice, as \"%s\" and \"%s\"", key,
		              f->name);
	if (json_is_null(value))
		return 0; /* null: leave the field at its default */
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t cur;

		memcpy(&cur, (const char *)msg + f->quantifier_offset, sizeof cur);
		if (cur != 0) {
			const ProtobufCFieldDescriptor *other = s_field_by_id(desc, cur);

			return s_fail(in, -EINVAL,
			              "only one member of a oneof may be set, but \"%s\" "
			              "is set as well", other != NULL ? other->name : "?");
		}
	}
	return s_field_from_json(in, msg, f, value);
}

static bool s_json_has_field(const json_t *obj, const ProtobufCFieldDescriptor *f)
{
	const char *key;
	json_t *value;

	json_object_foreach((json_t *)obj, key, value) {
		if (!json_is_null(value) &&
		    (strcmp(key, f->name) == 0 || s_camel_matches(f->name, key)))
			return true;
	}
	return false;
}

static int s_message_from_json(struct pbjson_in *in,
                               const ProtobufCMessageDescriptor *desc,
                               const json_t *j, ProtobufCMessage *msg)
{
	void *it;
	unsigned i;
	int rc = 0;

	if (!json_is_object(j))
		return s_fail(in, -EINVAL, "expected an object for %s, got %s",
		              desc->name, s_json_kind(j));
	if (in->depth >= PBJSON_MAX_DEPTH)
		return s_fail(in, -EINVAL, "messages nested deeper than %d levels",
		              PBJSON_MAX_DEPTH);
	in->depth++;
	for (it = json_object_iter((json_t *)j); it != NULL;
	     it = json_object_iter_next((json_t *)j, it)) {
		const char *key = json_object_iter_key(it);
		size_t mark = s_path_push_key(in, key);

		rc = s_member_from_json(in, desc, j, msg, key,
		                        json_object_iter_key_len(it),
		                        json_object_iter_value(it));
		s_path_pop(in, mark);
		if (rc != 0)
			goto out;
	}
	for (i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];

		if (f->label == PROTOBUF_C_LABEL_REQUIRED && !s_json_has_field(j, f)) {
			rc = s_fail(in, -EINVAL, "missing required field \"%s\"", f->name);
			goto out;
		}
	}
out:
	in->depth--;
	return rc;
}

int pbjson_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                      ProtobufCMessage **out, char *err, size_t errlen)
{
	struct pbjson_in in;
	ProtobufCMessage *msg = NULL;
	int rc;

	in.path[0] = '\0';
	in.path_len = 0;
	in.depth = 0;
	in.err = err;
	in.errlen = err != NULL ? errlen : 0;
	if (in.errlen > 0)
		err[0] = '\0';
	if (desc == NULL || json == NULL || out == NULL ||
	    desc->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
		return s_fail(&in, -EINVAL, "invalid arguments"); /* nothing to free yet */
	rc = s_new_message(&in, desc, &msg);
	if (rc != 0)
		goto out;
	rc = s_message_from_json(&in, desc, json, msg);
	if (rc != 0)
		goto out;
	*out = msg;
	msg = NULL;
out:
	if (msg != NULL)
		protobuf_c_message_free_unpacked(msg, NULL);
	return rc;
}

/* ------------------------------------------------------------ pb -> JSON */

/* The shortest decimal that reads back as the same float, as a double, so
 * 0.1f is written as 0.1 rather than 0.10000000149011612. */
static double s_float_to_double(float f)
{
	char buf[32];
	int prec;

	for (prec = 6; prec <= 9; prec++) {
		double d;
		int n = snprintf(buf, sizeof buf, "%.*g", prec, (double)f);

		if (n < 0 || (size_t)n >= sizeof buf)
			break;
		d = strtod(buf, NULL);
		if ((float)d == f)
			return d;
	}
	return (double)f;
}

static json_t *s_real_to_json(double d)
{
	if (isnan(d))
		return json_string("NaN");
	if (isinf(d))
		return json_string(d > 0 ? "Infinity" : "-Infinity");
	return json_real(d);
}

/* One C value of the field's type at slot as JSON; NULL on allocation
 * failure. */
static json_t *s_value_to_json(const ProtobufCFieldDescriptor *f,
                               const void *slot)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32: {
		int32_t v;

		memcpy(&v, slot, sizeof v);
		return json_integer(v);
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: {
		uint32_t v;

		memcpy(&v, slot, sizeof v);
		return json_integer(v);
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64: {
		int64_t v;

		memcpy(&v, slot, sizeof v);
		return json_integer((json_int_t)v);
	}
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v;
		char buf[24];
		int n;

		memcpy(&v, slot, sizeof v);
		if (v <= (uint64_t)LLONG_MAX)
			return json_integer((json_int_t)v);
		n = snprintf(buf, sizeof buf, "%" PRIu64, v);
		if (n < 0 || (size_t)n >= sizeof buf)
			return NULL;
		return json_string(buf);
	}
	case PROTOBUF_C_TYPE_FLOAT: {
		float v;

		memcpy(&v, slot, sizeof v);
		return s_real_to_json(isfinite(v) ? s_float_to_double(v) : (double)v);
	}
	case PROTOBUF_C_TYPE_DOUBLE: {
		double v;

		memcpy(&v, slot, sizeof v);
		return s_real_to_json(v);
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean b;

		memcpy(&b, slot, sizeof b);
		return json_boolean(b);
	}
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumValue *ev;
		int32_t v;

		memcpy(&v, slot, sizeof v);
		ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
		return ev != NULL ? json_string(ev->name) : json_integer(v);
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s;

		memcpy(&s, slot, sizeof s);
		return s_string_to_json(s != NULL ? s : "");
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData bd;
		json_t *j;
		size_t n = 0;
		char *text;

		memcpy(&bd, slot, sizeof bd);
		text = s_base64_encode(bd.data, bd.data != NULL ? bd.len : 0, &n);
		if (text == NULL)
			return NULL;
		j = json_stringn(text, n);
		free(text);
		return j;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *m;

		memcpy(&m, slot, sizeof m);
		return m != NULL ? s_message_to_json(m) : json_object();
	}
	}
	return NULL;
}

/* proto3 implicit presence: is the value the type's default? */
static bool s_is_default(const ProtobufCFieldDescriptor *f, const void *slot)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM: {
		uint32_t v;

		memcpy(&v, slot, sizeof v);
		return v == 0;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v;

		memcpy(&v, slot, sizeof v);
		return v == 0;
	}
	case PROTOBUF_C_TYPE_FLOAT: {
		float v;

		memcpy(&v, slot, sizeof v);
		return v == 0;
	}
	case PROTOBUF_C_TYPE_DOUBLE: {
		double v;

		memcpy(&v, slot, sizeof v);
		return v == 0;
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean b;

		memcpy(&b, slot, sizeof b);
		return !b;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s;

		memcpy(&s, slot, sizeof s);
		return s == NULL || s[0] == '\0';
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData bd;

		memcpy(&bd, slot, sizeof bd);
		return bd.len == 0;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const void *m;

		memcpy(&m, slot, sizeof m);
		return m == NULL;
	}
	}
	return true;
}

/* Explicit presence (proto2 optional, proto3 "optional"). */
static bool s_optional_present(const ProtobufCFieldDescriptor *f,
                               const char *base, const void *slot)
{
	protobuf_c_boolean has;

	if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
		const void *p;

		memcpy(&p, slot, sizeof p);
		return p != NULL && p != f->default_value;
	}
	memcpy(&has, base + f->quantifier_offset, sizeof has);
	return has != 0;
}

static json_t *s_repeated_to_json(const ProtobufCFieldDescriptor *f,
                                  const void *slot, size_t n)
{
	size_t size = s_elem_size(f->type);
	json_t *arr = json_array();
	json_t *result = NULL;
	const char *elems;
	size_t i;

	if (arr == NULL)
		goto out;
	memcpy(&elems, slot, sizeof elems);
	for (i = 0; elems != NULL && i < n; i++) {
		json_t *v = s_value_to_json(f, elems + i * size);

		if (v == NULL || json_array_append_new(arr, v) != 0)
			goto out;
	}
	result = arr;
	arr = NULL;
out:
	json_decref(arr);
	return result;
}

static json_t *s_message_to_json(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *desc = msg->descriptor;
	const char *base = (const char *)msg;
	json_t *obj = json_object();
	json_t *result = NULL;
	unsigned i;

	if (obj == NULL)
		goto out;
	for (i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		const void *slot = base + f->offset;
		json_t *v;

		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t cur;

			memcpy(&cur, base + f->quantifier_offset, sizeof cur);
			if (cur != f->id)
				continue;
			v = s_value_to_json(f, slot); /* even when default or empty */
		} else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n;

			memcpy(&n, base + f->quantifier_offset, sizeof n);
			if (n == 0)
				continue;
			v = s_repeated_to_json(f, slot, n);
		} else if (f->label == PROTOBUF_C_LABEL_NONE) {
			if (s_is_default(f, slot))
				continue;
			v = s_value_to_json(f, slot);
		} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
			if (!s_optional_present(f, base, slot))
				continue;
			v = s_value_to_json(f, slot);
		} else {
			v = s_value_to_json(f, slot); /* required */
		}
		if (v == NULL)
			goto out;
		if (json_object_set_new(obj, f->name, v) != 0)
			goto out; /* jansson released v */
	}
	result = obj;
	obj = NULL;
out:
	json_decref(obj);
	return result;
}

json_t *pbjson_from_message(const ProtobufCMessage *msg)
{
	if (msg == NULL || msg->descriptor == NULL)
		return NULL;
	return s_message_to_json(msg);
}
