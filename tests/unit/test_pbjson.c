/*
 * Unit tests for clients/lib/pbjson: the descriptor-driven JSON <-> protobuf-c
 * mapping.  Round trips go JSON -> message -> pack -> unpack -> JSON and are
 * compared with json_equal against the exact expected object; errors are
 * checked for -EINVAL, the exact reason text (which names the JSON path) and
 * an untouched *out.
 *
 * None of the medroute protos is recursive or has bytes / float / double /
 * optional fields or scalar oneof members, so a small hand-written descriptor
 * (TestNode) covers the depth limit, base64 bytes, floating point, explicit
 * presence and scalar oneofs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbjson.h"
#include "medroute/v1/clinical.pb-c.h"
#include "medroute/v1/envelope.pb-c.h"
#include "medroute/v1/frame.pb-c.h"

/* ------------------------------------------------ hand-written TestNode */

typedef struct TestNode TestNode;
struct TestNode {
	ProtobufCMessage base;
	TestNode *child;           /* 1: recursive, for the depth limit */
	int32_t value;             /* 2 */
	ProtobufCBinaryData data;  /* 3: bytes */
	size_t n_tags;             /* 4: repeated string */
	char **tags;
	double ratio;              /* 5 */
	protobuf_c_boolean has_opt; /* 6: optional int32 (explicit presence) */
	int32_t opt;
	uint32_t choice_case;      /* oneof choice { string name = 7; int32 number = 8; } */
	union {
		char *name;
		int32_t number;
	};
	float scale;               /* 9 */
};

static const ProtobufCMessageDescriptor test_node_descriptor;

static void test_node_init(ProtobufCMessage *m)
{
	static const TestNode init_value = {
		PROTOBUF_C_MESSAGE_INIT(&test_node_descriptor), NULL, 0, { 0, NULL },
		0, NULL, 0, 0, 0, 0, { NULL }, 0
	};

	*(TestNode *)m = init_value;
}

static const ProtobufCFieldDescriptor test_node_fields[] = {
	{ "child", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_MESSAGE, 0,
	  offsetof(TestNode, child), &test_node_descriptor, NULL, 0, 0, NULL, NULL },
	{ "value", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, 0,
	  offsetof(TestNode, value), NULL, NULL, 0, 0, NULL, NULL },
	{ "data", 3, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_BYTES, 0,
	  offsetof(TestNode, data), NULL, NULL, 0, 0, NULL, NULL },
	{ "tags", 4, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_STRING,
	  offsetof(TestNode, n_tags), offsetof(TestNode, tags), NULL,
	  &protobuf_c_empty_string, 0, 0, NULL, NULL },
	{ "ratio", 5, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_DOUBLE, 0,
	  offsetof(TestNode, ratio), NULL, NULL, 0, 0, NULL, NULL },
	{ "opt", 6, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_INT32,
	  offsetof(TestNode, has_opt), offsetof(TestNode, opt), NULL, NULL, 0, 0,
	  NULL, NULL },
	{ "name", 7, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING,
	  offsetof(TestNode, choice_case), offsetof(TestNode, name), NULL, NULL,
	  PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL },
	{ "number", 8, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32,
	  offsetof(TestNode, choice_case), offsetof(TestNode, number), NULL, NULL,
	  PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL },
	{ "scale", 9, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_FLOAT, 0,
	  offsetof(TestNode, scale), NULL, NULL, 0, 0, NULL, NULL },
};
/* child, data, name, number, opt, ratio, scale, tags, value */
static const unsigned test_node_fields_by_name[] = { 0, 2, 6, 7, 5, 4, 8, 3, 1 };
static const ProtobufCIntRange test_node_ranges[] = { { 1, 0 }, { 0, 9 } };

static const ProtobufCMessageDescriptor test_node_descriptor = {
	PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "test.Node", "Node", "TestNode",
	"test", sizeof(TestNode), 9, test_node_fields, test_node_fields_by_name,
	1, test_node_ranges, test_node_init, NULL, NULL, NULL
};

/* ------------------------------------------------------------- helpers */

static json_t *load(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);

	if (j == NULL)
		fail_msg("bad test JSON at line %d: %s", e.line, e.text);
	return j;
}

/* JSON text -> message, asserting success. */
static ProtobufCMessage *to_msg(const ProtobufCMessageDescriptor *desc,
                                const char *text)
{
	char err[256];
	ProtobufCMessage *m = NULL;
	json_t *j = load(text);
	int rc = pbjson_to_message(desc, j, &m, err, sizeof err);

	json_decref(j);
	if (rc != 0)
		fail_msg("pbjson_to_message failed (%d): %s", rc, err);
	assert_non_null(m);
	assert_ptr_equal(m->descriptor, desc);
	return m;
}

/* pack, unpack with protobuf-c, and convert the unpacked copy to JSON. */
static json_t *repack_to_json(const ProtobufCMessage *m)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n > 0 ? n : 1);
	ProtobufCMessage *u;
	json_t *j;

	assert_non_null(buf);
	assert_int_equal(protobuf_c_message_pack(m, buf), n);
	u = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
	free(buf);
	assert_non_null(u);
	j = pbjson_from_message(u);
	protobuf_c_message_free_unpacked(u, NULL);
	assert_non_null(j);
	return j;
}

static void assert_json_is(const json_t *got, const char *expected_text)
{
	json_t *expected = load(expected_text);

	if (!json_equal(got, expected)) {
		char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
		char *e = json_dumps(expected, JSON_SORT_KEYS | JSON_COMPACT);

		print_error("got      %s\nexpected %s\n", g ? g : "(null)", e ? e : "(null)");
		free(g);
		free(e);
		json_decref(expected);
		fail();
	}
	json_decref(expected);
}

/* Both the message as built and its pack/unpack copy convert to expected. */
static void assert_round_trip(const ProtobufCMessage *m, const char *expected)
{
	json_t *direct = pbjson_from_message(m);
	json_t *again;

	assert_non_null(direct);
	assert_json_is(direct, expected);
	json_decref(direct);
	again = repack_to_json(m);
	assert_json_is(again, expected);
	json_decref(again);
}

static void expect_error_json(const ProtobufCMessageDescriptor *desc,
                              const json_t *j, const char *expected_err)
{
	char err[512];
	ProtobufCMessage sentinel;
	ProtobufCMessage *out = &sentinel;
	int rc;

	memset(err, 'x', sizeof err);
	rc = pbjson_to_message(desc, j, &out, err, sizeof err);
	assert_int_equal(rc, -EINVAL);
	assert_ptr_equal(out, &sentinel);
	assert_string_equal(err, expected_err);
}

static void expect_error(const ProtobufCMessageDescriptor *desc,
                         const char *text, const char *expected_err)
{
	json_t *j = load(text);

	expect_error_json(desc, j, expected_err);
	json_decref(j);
}

#define ENVELOPE (&medroute__v1__envelope__descriptor)
#define FRAME (&medroute__v1__frame__descriptor)

/* --------------------------------------------------------------- tests */

static const char referral_in[] =
	"{"
	" \"message_id\": \"yx-c01-20240501-0001\","
	" \"source\": \"yx-c01\","
	" \"destination\": \"yx-lead\","
	" \"kind\": \"KIND_REFERRAL\","
	" \"priority\": \"PRIORITY_URGENT\","
	" \"created_at_ms\": 1714540800123,"
	" \"correlation_id\": \"\","
	" \"referral\": {"
	"  \"referral_id\": \"RF-2024-0001\","
	"  \"patient\": {"
	"   \"identifiers\": ["
	"    {\"system\": \"cn-resident-id\", \"value\": \"110101199003074518\"},"
	"    {\"system\": \"cn-insurance\", \"value\": \"YB-8812\"}"
	"   ],"
	"   \"name\": \"\xE5\xBC\xA0\xE4\xB8\x89\","
	"   \"birth_date\": \"1990-03-07\","
	"   \"sex\": \"SEX_MALE\","
	"   \"phone\": \"13800000000\""
	"  },"
	"  \"reasons\": ["
	"   {\"system\": \"ICD-10\", \"code\": \"I20.0\", \"display\": \"Unstable angina\"},"
	"   {\"system\": \"ICD-10\", \"code\": \"I10\", \"display\": \"Essential hypertension\"}"
	"  ],"
	"  \"service\": \"SERVICE_SPECIALIST_CLINIC\","
	"  \"department\": \"cardiology\","
	"  \"family_doctor_contract\": true,"
	"  \"deductible_paid_fen\": 12345678901,"
	"  \"documents\": ["
	"   {\"uri\": \"https://emr.c01.example/doc/77\", \"content_type\": \"application/pdf\", \"title\": \"ECG report\"},"
	"   {\"uri\": \"pacs://yx-c01/1.2.840.113619.2.55.3\", \"content_type\": \"application/dicom\", \"title\": \"\"}"
	"  ],"
	"  \"expires_at_ms\": 0,"
	"  \"referring_practitioner\": \"Dr. Li\","
	"  \"clinical_summary\": \"chest pain on exertion for 2 weeks\""
	" }"
	"}";

/* The same, with every default-valued field left out. */
static const char referral_out[] =
	"{"
	" \"message_id\": \"yx-c01-20240501-0001\","
	" \"source\": \"yx-c01\","
	" \"destination\": \"yx-lead\","
	" \"kind\": \"KIND_REFERRAL\","
	" \"priority\": \"PRIORITY_URGENT\","
	" \"created_at_ms\": 1714540800123,"
	" \"referral\": {"
	"  \"referral_id\": \"RF-2024-0001\","
	"  \"patient\": {"
	"   \"identifiers\": ["
	"    {\"system\": \"cn-resident-id\", \"value\": \"110101199003074518\"},"
	"    {\"system\": \"cn-insurance\", \"value\": \"YB-8812\"}"
	"   ],"
	"   \"name\": \"\xE5\xBC\xA0\xE4\xB8\x89\","
	"   \"birth_date\": \"1990-03-07\","
	"   \"sex\": \"SEX_MALE\","
	"   \"phone\": \"13800000000\""
	"  },"
	"  \"reasons\": ["
	"   {\"system\": \"ICD-10\", \"code\": \"I20.0\", \"display\": \"Unstable angina\"},"
	"   {\"system\": \"ICD-10\", \"code\": \"I10\", \"display\": \"Essential hypertension\"}"
	"  ],"
	"  \"service\": \"SERVICE_SPECIALIST_CLINIC\","
	"  \"department\": \"cardiology\","
	"  \"family_doctor_contract\": true,"
	"  \"deductible_paid_fen\": 12345678901,"
	"  \"documents\": ["
	"   {\"uri\": \"https://emr.c01.example/doc/77\", \"content_type\": \"application/pdf\", \"title\": \"ECG report\"},"
	"   {\"uri\": \"pacs://yx-c01/1.2.840.113619.2.55.3\", \"content_type\": \"application/dicom\"}"
	"  ],"
	"  \"referring_practitioner\": \"Dr. Li\","
	"  \"clinical_summary\": \"chest pain on exertion for 2 weeks\""
	" }"
	"}";

static void test_pbjson_envelope_referral_round_trip(void **state)
{
	ProtobufCMessage *m = to_msg(ENVELOPE, referral_in);
	Medroute__V1__Envelope *env = (Medroute__V1__Envelope *)m;
	Medroute__V1__Referral *r;

	(void)state;
	assert_string_equal(env->message_id, "yx-c01-20240501-0001");
	assert_string_equal(env->destination, "yx-lead");
	assert_int_equal(env->kind, MEDROUTE__V1__KIND__KIND_REFERRAL);
	assert_int_equal(env->priority, MEDROUTE__V1__PRIORITY__PRIORITY_URGENT);
	assert_true(env->created_at_ms == 1714540800123LL);
	assert_string_equal(env->correlation_id, "");
	assert_int_equal(env->payload_case, MEDROUTE__V1__ENVELOPE__PAYLOAD_REFERRAL);
	r = env->referral;
	assert_non_null(r);
	assert_string_equal(r->referral_id, "RF-2024-0001");
	assert_non_null(r->patient);
	assert_int_equal(r->patient->n_identifiers, 2);
	assert_string_equal(r->patient->identifiers[0]->system, "cn-resident-id");
	assert_string_equal(r->patient->identifiers[1]->value, "YB-8812");
	assert_string_equal(r->patient->name, "\xE5\xBC\xA0\xE4\xB8\x89");
	assert_int_equal(r->patient->sex, MEDROUTE__V1__SEX__SEX_MALE);
	assert_int_equal(r->n_reasons, 2);
	assert_string_equal(r->reasons[0]->code, "I20.0");
	assert_string_equal(r->reasons[1]->display, "Essential hypertension");
	assert_int_equal(r->service, MEDROUTE__V1__SERVICE_TYPE__SERVICE_SPECIALIST_CLINIC);
	assert_int_equal(r->family_doctor_contract, 1);
	assert_true(r->deductible_paid_fen == 12345678901LL);
	assert_int_equal(r->n_documents, 2);
	assert_string_equal(r->documents[1]->content_type, "application/dicom");
	assert_string_equal(r->documents[1]->title, "");
	assert_true(r->expires_at_ms == 0);
	assert_string_equal(r->requested_modality, "");
	assert_ptr_equal(r->requested_modality, protobuf_c_empty_string);

	assert_round_trip(m, referral_out);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void test_pbjson_lab_result_repeated_items(void **state)
{
	static const char in[] =
		"{\"placer_order_number\": \"ORM-77\", \"filler_order_number\": \"LAB-2024-5\","
		" \"status\": \"RESULT_FINAL\","
		" \"items\": ["
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2823-3\", \"display\": \"Potassium\"},"
		"   \"value\": \"6.8\", \"unit\": \"mmol/L\", \"reference_range\": \"3.5-5.3\","
		"   \"abnormal\": \"ABNORMAL_CRITICAL_HIGH\", \"critical\": true},"
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2951-2\", \"display\": \"Sodium\"},"
		"   \"value\": \"140\", \"unit\": \"mmol/L\", \"reference_range\": \"137-147\","
		"   \"abnormal\": \"ABNORMAL_NORMAL\"},"
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2345-7\"},"
		"   \"value\": \"2.9\", \"unit\": \"mmol/L\", \"abnormal\": \"ABNORMAL_LOW\", \"critical\": false}"
		" ],"
		" \"verified_by\": \"Dr. Wang\", \"reported_at_ms\": 1714545000000}";
	static const char out[] =
		"{\"placer_order_number\": \"ORM-77\", \"filler_order_number\": \"LAB-2024-5\","
		" \"status\": \"RESULT_FINAL\","
		" \"items\": ["
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2823-3\", \"display\": \"Potassium\"},"
		"   \"value\": \"6.8\", \"unit\": \"mmol/L\", \"reference_range\": \"3.5-5.3\","
		"   \"abnormal\": \"ABNORMAL_CRITICAL_HIGH\", \"critical\": true},"
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2951-2\", \"display\": \"Sodium\"},"
		"   \"value\": \"140\", \"unit\": \"mmol/L\", \"reference_range\": \"137-147\","
		"   \"abnormal\": \"ABNORMAL_NORMAL\"},"
		"  {\"test\": {\"system\": \"LOINC\", \"code\": \"2345-7\"},"
		"   \"value\": \"2.9\", \"unit\": \"mmol/L\", \"abnormal\": \"ABNORMAL_LOW\"}"
		" ],"
		" \"verified_by\": \"Dr. Wang\", \"reported_at_ms\": 1714545000000}";
	ProtobufCMessage *m = to_msg(&medroute__v1__lab_result__descriptor, in);
	Medroute__V1__LabResult *lr = (Medroute__V1__LabResult *)m;

	(void)state;
	assert_int_equal(lr->status, MEDROUTE__V1__RESULT_STATUS__RESULT_FINAL);
	assert_int_equal(lr->n_items, 3);
	assert_string_equal(lr->items[0]->test->code, "2823-3");
	assert_int_equal(lr->items[0]->abnormal, MEDROUTE__V1__ABNORMAL_FLAG__ABNORMAL_CRITICAL_HIGH);
	assert_int_equal(lr->items[0]->critical, 1);
	assert_string_equal(lr->items[1]->value, "140");
	assert_int_equal(lr->items[1]->abnormal, MEDROUTE__V1__ABNORMAL_FLAG__ABNORMAL_NORMAL);
	assert_int_equal(lr->items[1]->critical, 0);
	assert_int_equal(lr->items[2]->abnormal, MEDROUTE__V1__ABNORMAL_FLAG__ABNORMAL_LOW);
	assert_ptr_equal(lr->items[2]->test->display, protobuf_c_empty_string);
	assert_ptr_equal(lr->items[2]->reference_range, protobuf_c_empty_string);
	assert_true(lr->reported_at_ms == 1714545000000LL);

	assert_round_trip(m, out);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void test_pbjson_enum_short_names_and_numbers(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Envelope *env;
	Medroute__V1__ImagingRequest *ir;
	Medroute__V1__LabResultItem *item;

	(void)state;
	m = to_msg(ENVELOPE, "{\"kind\": \"referral\", \"priority\": \"stat\"}");
	env = (Medroute__V1__Envelope *)m;
	assert_int_equal(env->kind, MEDROUTE__V1__KIND__KIND_REFERRAL);
	assert_int_equal(env->priority, MEDROUTE__V1__PRIORITY__PRIORITY_STAT);
	assert_round_trip(m, "{\"kind\": \"KIND_REFERRAL\", \"priority\": \"PRIORITY_STAT\"}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* any case, with or without the prefix */
	m = to_msg(ENVELOPE, "{\"kind\": \"Lab_Result\", \"priority\": \"priority_urgent\"}");
	env = (Medroute__V1__Envelope *)m;
	assert_int_equal(env->kind, MEDROUTE__V1__KIND__KIND_LAB_RESULT);
	assert_int_equal(env->priority, MEDROUTE__V1__PRIORITY__PRIORITY_URGENT);
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&medroute__v1__imaging_request__descriptor, "{\"modality\": \"ct\"}");
	ir = (Medroute__V1__ImagingRequest *)m;
	assert_int_equal(ir->modality, MEDROUTE__V1__MODALITY__MODALITY_CT);
	assert_round_trip(m, "{\"modality\": \"MODALITY_CT\"}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* by number */
	m = to_msg(ENVELOPE, "{\"kind\": 3, \"priority\": 2}");
	env = (Medroute__V1__Envelope *)m;
	assert_int_equal(env->kind, MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST);
	assert_int_equal(env->priority, MEDROUTE__V1__PRIORITY__PRIORITY_STAT);
	assert_round_trip(m, "{\"kind\": \"KIND_IMAGING_REQUEST\", \"priority\": \"PRIORITY_STAT\"}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&medroute__v1__imaging_request__descriptor, "{\"modality\": 4}");
	assert_int_equal(((Medroute__V1__ImagingRequest *)m)->modality,
	                 MEDROUTE__V1__MODALITY__MODALITY_US);
	protobuf_c_message_free_unpacked(m, NULL);

	/* proto3 enums are open: an unknown number is kept and written back */
	m = to_msg(ENVELOPE, "{\"kind\": 42}");
	assert_int_equal(((Medroute__V1__Envelope *)m)->kind, 42);
	assert_round_trip(m, "{\"kind\": 42}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* AbnormalFlag: the prefix is "ABNORMAL_", so "abnormal" is ABNORMAL_ABNORMAL */
	m = to_msg(&medroute__v1__lab_result_item__descriptor, "{\"abnormal\": \"abnormal\"}");
	item = (Medroute__V1__LabResultItem *)m;
	assert_int_equal(item->abnormal, MEDROUTE__V1__ABNORMAL_FLAG__ABNORMAL_ABNORMAL);
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(&medroute__v1__lab_result_item__descriptor, "{\"abnormal\": \"CRITICAL_LOW\"}");
	item = (Medroute__V1__LabResultItem *)m;
	assert_int_equal(item->abnormal, MEDROUTE__V1__ABNORMAL_FLAG__ABNORMAL_CRITICAL_LOW);
	protobuf_c_message_free_unpacked(m, NULL);

	/* ReportStatus: prefix "REPORT_" */
	m = to_msg(&medroute__v1__imaging_report__descriptor, "{\"status\": \"final\"}");
	assert_int_equal(((Medroute__V1__ImagingReport *)m)->status,
	                 MEDROUTE__V1__REPORT_STATUS__REPORT_FINAL);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void test_pbjson_camel_case_keys(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Envelope *env;

	(void)state;
	m = to_msg(ENVELOPE,
	           "{\"messageId\": \"m-1\", \"createdAtMs\": \"1714540800123\","
	           " \"correlationId\": \"m-0\","
	           " \"referral\": {\"referralId\": \"RF-9\", \"familyDoctorContract\": true,"
	           "  \"deductiblePaidFen\": \"-5\", \"patient\": {\"birthDate\": \"1990-03-07\"},"
	           "  \"requested_modality\": \"CT\"}}");
	env = (Medroute__V1__Envelope *)m;
	assert_string_equal(env->message_id, "m-1");
	assert_true(env->created_at_ms == 1714540800123LL);
	assert_string_equal(env->correlation_id, "m-0");
	assert_string_equal(env->referral->referral_id, "RF-9");
	assert_true(env->referral->deductible_paid_fen == -5);
	assert_string_equal(env->referral->patient->birth_date, "1990-03-07");
	assert_round_trip(m,
	                  "{\"message_id\": \"m-1\", \"created_at_ms\": 1714540800123,"
	                  " \"correlation_id\": \"m-0\","
	                  " \"referral\": {\"referral_id\": \"RF-9\", \"family_doctor_contract\": true,"
	                  "  \"deductible_paid_fen\": -5, \"patient\": {\"birth_date\": \"1990-03-07\"},"
	                  "  \"requested_modality\": \"CT\"}}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* the same field under both spellings is refused */
	expect_error(ENVELOPE, "{\"message_id\": \"a\", \"messageId\": \"b\"}",
	             "messageId: field given twice, as \"messageId\" and \"message_id\"");
}

static void test_pbjson_null_means_unset(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Envelope *env;

	(void)state;
	m = to_msg(ENVELOPE,
	           "{\"message_id\": null, \"referral\": null, \"lab_order\": {}}");
	env = (Medroute__V1__Envelope *)m;
	assert_ptr_equal(env->message_id, protobuf_c_empty_string);
	assert_int_equal(env->payload_case, MEDROUTE__V1__ENVELOPE__PAYLOAD_LAB_ORDER);
	assert_non_null(env->lab_order);
	/* a set oneof member is written even when empty */
	assert_round_trip(m, "{\"lab_order\": {}}");
	protobuf_c_message_free_unpacked(m, NULL);

	expect_error(ENVELOPE, "{\"referral\": {\"reasons\": [{\"code\": \"I10\"}, null]}}",
	             "referral.reasons[1]: null is not allowed in an array");
}

static void test_pbjson_error_unknown_key(void **state)
{
	(void)state;
	expect_error(ENVELOPE, "{\"message_id\": \"a\", \"referral\": {\"patient\": {\"nmae\": \"x\"}}}",
	             "referral.patient.nmae: unknown field \"nmae\" in medroute.v1.Patient");
	expect_error(ENVELOPE, "{\"bogus\": 1}",
	             "bogus: unknown field \"bogus\" in medroute.v1.Envelope");
	/* camelCase is only the proto3 json_name, not any spelling */
	expect_error(ENVELOPE, "{\"MessageId\": \"a\"}",
	             "MessageId: unknown field \"MessageId\" in medroute.v1.Envelope");
}

static void test_pbjson_error_wrong_type(void **state)
{
	json_t *j;

	(void)state;
	expect_error(FRAME, "{\"hello\": {\"facility_id\": \"yx-c01\", \"max_inflight\": \"5\"}}",
	             "hello.max_inflight: expected an integer for uint32, got string");
	expect_error(ENVELOPE, "{\"referral\": {\"reasons\": [{\"code\": \"I10\"}, {\"code\": 10}]}}",
	             "referral.reasons[1].code: expected a string, got integer");
	expect_error(ENVELOPE, "{\"created_at_ms\": \"12x\"}",
	             "created_at_ms: \"12x\" is not a decimal integer (int64)");
	expect_error(ENVELOPE, "{\"created_at_ms\": true}",
	             "created_at_ms: expected an integer or a decimal string for int64, got boolean");
	expect_error(ENVELOPE, "{\"referral\": {\"family_doctor_contract\": \"yes\"}}",
	             "referral.family_doctor_contract: expected true or false for bool, got string");
	expect_error(ENVELOPE, "{\"referral\": []}",
	             "referral: expected an object for medroute.v1.Referral, got array");
	expect_error(ENVELOPE, "{\"referral\": {\"reasons\": {}}}",
	             "referral.reasons: expected an array, got object");
	expect_error(ENVELOPE, "{\"priority\": true}",
	             "priority: expected an enum name or integer for medroute.v1.Priority, got boolean");
	expect_error(FRAME, "{\"hello\": {\"max_inflight\": 1.5}}",
	             "hello.max_inflight: 1.5 is not an integer (uint32)");
	expect_error(ENVELOPE, "[]",
	             "(root): expected an object for medroute.v1.Envelope, got array");
	/* an embedded NUL cannot be carried by a C string */
	j = json_pack("{s:s%}", "message_id", "a\0b", (size_t)3);
	assert_non_null(j);
	expect_error_json(ENVELOPE, j, "message_id: string contains a NUL character");
	json_decref(j);
}

static void test_pbjson_error_unknown_enum_name(void **state)
{
	(void)state;
	expect_error(ENVELOPE, "{\"referral\": {\"patient\": {\"sex\": \"X\"}}}",
	             "referral.patient.sex: unknown enum value \"X\" for medroute.v1.Sex");
	expect_error(ENVELOPE, "{\"kind\": \"lab\"}",
	             "kind: unknown enum value \"lab\" for medroute.v1.Kind");
	expect_error(ENVELOPE, "{\"kind\": 2147483648}",
	             "kind: 2147483648 is out of range for medroute.v1.Kind");
}

/* A NUL character (\u0000, which jansson reads with JSON_ALLOW_NUL) is
 * refused wherever a JSON string is read as text: a string field, an enum
 * name, a floating-point keyword.  Enum names and keywords were compared as
 * C strings, so "referral\u0000x" passed for KIND_REFERRAL. */
static void test_pbjson_error_nul_in_strings(void **state)
{
	static const struct {
		const ProtobufCMessageDescriptor *desc;
		const char *text, *err;
	} cases[] = {
		{ ENVELOPE, "{\"source\": \"t-aihua\\u0000x\"}",
		  "source: string contains a NUL character" },
		{ ENVELOPE, "{\"kind\": \"referral\\u0000x\"}",
		  "kind: enum name contains a NUL character" },
		{ ENVELOPE, "{\"referral\": {\"patient\": {\"sex\": \"SEX_MALE\\u0000\"}}}",
		  "referral.patient.sex: enum name contains a NUL character" },
		{ &test_node_descriptor, "{\"ratio\": \"NaN\\u0000\"}",
		  "ratio: string contains a NUL character" },
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		json_error_t e;
		json_t *j = json_loads(cases[i].text, JSON_ALLOW_NUL, &e);

		assert_non_null(j);
		expect_error_json(cases[i].desc, j, cases[i].err);
		json_decref(j);
	}
}

static void test_pbjson_error_two_oneof_members(void **state)
{
	(void)state;
	expect_error(ENVELOPE, "{\"referral\": {\"referral_id\": \"RF-1\"}, \"lab_order\": {}}",
	             "lab_order: only one member of a oneof may be set, but \"referral\" is set as well");
	expect_error(FRAME, "{\"ack\": {\"seq\": 1}, \"error\": {\"code\": \"malformed\"}}",
	             "error: only one member of a oneof may be set, but \"ack\" is set as well");
}

static void test_pbjson_error_uint32_out_of_range(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Frame *f;

	(void)state;
	expect_error(FRAME, "{\"hello\": {\"max_inflight\": 4294967296}}",
	             "hello.max_inflight: 4294967296 is out of range for uint32");
	expect_error(FRAME, "{\"hello\": {\"max_inflight\": -1}}",
	             "hello.max_inflight: -1 is out of range for uint32");
	expect_error(ENVELOPE, "{\"created_at_ms\": \"9223372036854775808\"}",
	             "created_at_ms: 9223372036854775808 is out of range for int64");
	expect_error(FRAME, "{\"ack\": {\"seq\": \"18446744073709551616\"}}",
	             "ack.seq: \"18446744073709551616\" is out of range for uint64");
	expect_error(FRAME, "{\"ack\": {\"seq\": -1}}",
	             "ack.seq: -1 is out of range for uint64");

	/* the edges themselves are fine */
	m = to_msg(FRAME, "{\"hello\": {\"max_inflight\": 4294967295}}");
	f = (Medroute__V1__Frame *)m;
	assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_HELLO);
	assert_true(f->hello->max_inflight == UINT32_MAX);
	assert_round_trip(m, "{\"hello\": {\"max_inflight\": 4294967295}}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(ENVELOPE, "{\"created_at_ms\": \"-9223372036854775808\"}");
	assert_true(((Medroute__V1__Envelope *)m)->created_at_ms == INT64_MIN);
	assert_round_trip(m, "{\"created_at_ms\": -9223372036854775808}");
	protobuf_c_message_free_unpacked(m, NULL);
}

/* From 2^52 on a JSON real is a double without fraction bits, rounded by
 * jansson before pbjson sees it: 4503599627370496.5 read as ...496, and from
 * 2^53, where it skips integers, 9007199254740993.0 as ...992, for an int64
 * or a uint64 changed the value silently.  Such a real is refused; integers
 * without fraction, decimal strings and smaller reals are exact. */
static void test_pbjson_error_real_from_2_52(void **state)
{
	ProtobufCMessage *m;

	(void)state;
	expect_error(ENVELOPE, "{\"created_at_ms\": 4503599627370496.5}",
	             "created_at_ms: 4503599627370496: a number with a fraction or an "
	             "exponent is inexact from 2^52 on; write it as an integer or a "
	             "decimal string (int64)");
	expect_error(ENVELOPE, "{\"created_at_ms\": -4503599627370497.0}",
	             "created_at_ms: -4503599627370497: a number with a fraction or an "
	             "exponent is inexact from 2^52 on; write it as an integer or a "
	             "decimal string (int64)");
	expect_error(FRAME, "{\"ack\": {\"seq\": 4503599627370495.9}}",
	             "ack.seq: 4503599627370496: a number with a fraction or an "
	             "exponent is inexact from 2^52 on; write it as an integer or a "
	             "decimal string (uint64)");
	expect_error(ENVELOPE, "{\"created_at_ms\": 9007199254740993.0}",
	             "created_at_ms: 9007199254740992: a number with a fraction or an "
	             "exponent is inexact from 2^52 on; write it as an integer or a "
	             "decimal string (int64)");
	expect_error(FRAME, "{\"ack\": {\"seq\": 1e17}}",
	             "ack.seq: 1e+17: a number with a fraction or an "
	             "exponent is inexact from 2^52 on; write it as an integer or a "
	             "decimal string (uint64)");

	/* the same values written exactly */
	m = to_msg(ENVELOPE, "{\"created_at_ms\": 4503599627370497}");
	assert_true(((Medroute__V1__Envelope *)m)->created_at_ms == INT64_C(4503599627370497));
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(ENVELOPE, "{\"created_at_ms\": 9007199254740993}");
	assert_true(((Medroute__V1__Envelope *)m)->created_at_ms == INT64_C(9007199254740993));
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(ENVELOPE, "{\"createdAtMs\": \"-9007199254740993\"}");
	assert_true(((Medroute__V1__Envelope *)m)->created_at_ms == -INT64_C(9007199254740993));
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(FRAME, "{\"ack\": {\"seq\": \"9007199254740993\"}}");
	assert_true(((Medroute__V1__Frame *)m)->ack->seq == UINT64_C(9007199254740993));
	protobuf_c_message_free_unpacked(m, NULL);

	/* below 2^52 a real keeps a fraction of one half at least */
	expect_error(FRAME, "{\"ack\": {\"seq\": 4503599627370495.5}}",
	             "ack.seq: 4.5036e+15 is not an integer (uint64)");
	m = to_msg(FRAME, "{\"ack\": {\"seq\": 4503599627370495.0}}");
	assert_true(((Medroute__V1__Frame *)m)->ack->seq == UINT64_C(4503599627370495));
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(ENVELOPE, "{\"created_at_ms\": -4.503599627370495e15}");
	assert_true(((Medroute__V1__Envelope *)m)->created_at_ms == -INT64_C(4503599627370495));
	protobuf_c_message_free_unpacked(m, NULL);

	/* the documented limit: a fraction finer than the double is lost in
	 * jansson, which keeps no text, so the rounded integer is taken */
	m = to_msg(FRAME, "{\"ack\": {\"seq\": 1.0000000000000001}}");
	assert_true(((Medroute__V1__Frame *)m)->ack->seq == 1);
	protobuf_c_message_free_unpacked(m, NULL);
}

static json_t *nested_nodes(int levels)
{
	json_t *j = NULL;
	int i;

	for (i = levels; i >= 1; i--) {
		json_t *o = json_object();

		assert_non_null(o);
		assert_int_equal(json_object_set_new(o, "value", json_integer(i)), 0);
		if (j != NULL)
			assert_int_equal(json_object_set_new(o, "child", j), 0);
		j = o;
	}
	return j;
}

static void test_pbjson_error_too_deep(void **state)
{
	char err[256], path[256];
	ProtobufCMessage *m = NULL;
	const TestNode *n;
	json_t *j, *back;
	int count = 0, i;

	(void)state;
	assert_int_equal(PBJSON_MAX_DEPTH, 32);
	/* 32 levels: accepted, every level present */
	j = nested_nodes(32);
	assert_int_equal(pbjson_to_message(&test_node_descriptor, j, &m, err, sizeof err), 0);
	for (n = (const TestNode *)m; n != NULL; n = n->child) {
		count++;
		assert_int_equal(n->value, count);
	}
	assert_int_equal(count, 32);
	back = pbjson_from_message(m);
	assert_non_null(back);
	assert_true(json_equal(back, j));
	json_decref(back);
	protobuf_c_message_free_unpacked(m, NULL);
	json_decref(j);

	/* 33 levels: refused at the 33rd object, 32 "child" keys down */
	path[0] = '\0';
	for (i = 0; i < 32; i++)
		strcat(path, i == 0 ? "child" : ".child");
	strcat(path, ": messages nested deeper than 32 levels");
	j = nested_nodes(33);
	expect_error_json(&test_node_descriptor, j, path);
	json_decref(j);
}

static void test_pbjson_uint64_above_2_63_round_trip(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Frame *f;

	(void)state;
	m = to_msg(FRAME, "{\"ack\": {\"message_id\": \"m1\", \"seq\": \"18446744073709551615\"}}");
	f = (Medroute__V1__Frame *)m;
	assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
	assert_true(f->ack->seq == UINT64_MAX);
	assert_round_trip(m, "{\"ack\": {\"message_id\": \"m1\", \"seq\": \"18446744073709551615\"}}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(FRAME, "{\"welcome\": {\"pending\": \"9223372036854775808\"}}");
	f = (Medroute__V1__Frame *)m;
	assert_true(f->welcome->pending == (UINT64_C(1) << 63));
	assert_round_trip(m, "{\"welcome\": {\"pending\": \"9223372036854775808\"}}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* up to LLONG_MAX a uint64 is written as a JSON integer */
	m = to_msg(FRAME, "{\"ack\": {\"seq\": 9223372036854775807}}");
	f = (Medroute__V1__Frame *)m;
	assert_true(f->ack->seq == (UINT64_C(1) << 63) - 1);
	assert_round_trip(m, "{\"ack\": {\"seq\": 9223372036854775807}}");
	protobuf_c_message_free_unpacked(m, NULL);
}

static void test_pbjson_frame_ack_round_trip(void **state)
{
	ProtobufCMessage *m;
	Medroute__V1__Frame *f;
	Medroute__V1__Frame frame = MEDROUTE__V1__FRAME__INIT;
	Medroute__V1__Ack ack = MEDROUTE__V1__ACK__INIT;
	json_t *j;

	(void)state;
	m = to_msg(FRAME,
	           "{\"version\": \"PROTOCOL_VERSION_1\","
	           " \"ack\": {\"message_id\": \"yx-c01-1\", \"seq\": 42, \"duplicate\": true}}");
	f = (Medroute__V1__Frame *)m;
	assert_int_equal(f->version, MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1);
	assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_ACK);
	assert_string_equal(f->ack->message_id, "yx-c01-1");
	assert_true(f->ack->seq == 42);
	assert_int_equal(f->ack->duplicate, 1);
	assert_round_trip(m,
	                  "{\"version\": \"PROTOCOL_VERSION_1\","
	                  " \"ack\": {\"message_id\": \"yx-c01-1\", \"seq\": 42, \"duplicate\": true}}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* an all-default oneof member is still written, as {} */
	m = to_msg(FRAME, "{\"version\": 1, \"heartbeat\": {\"sent_at_ms\": 0}}");
	f = (Medroute__V1__Frame *)m;
	assert_int_equal(f->body_case, MEDROUTE__V1__FRAME__BODY_HEARTBEAT);
	assert_round_trip(m, "{\"version\": \"PROTOCOL_VERSION_1\", \"heartbeat\": {}}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* a frame built in C: only the set member is written */
	frame.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
	frame.ack = &ack;
	j = pbjson_from_message(&frame.base);
	assert_non_null(j);
	assert_json_is(j, "{\"ack\": {}}");
	json_decref(j);
	ack.seq = 7;
	ack.message_id = "m7";
	j = pbjson_from_message(&frame.base);
	assert_non_null(j);
	assert_json_is(j, "{\"ack\": {\"message_id\": \"m7\", \"seq\": 7}}");
	json_decref(j);
}

static void test_pbjson_defaults_omitted_on_output(void **state)
{
	Medroute__V1__Envelope env = MEDROUTE__V1__ENVELOPE__INIT;
	Medroute__V1__PatientIdentifier id = MEDROUTE__V1__PATIENT_IDENTIFIER__INIT;
	char bad_utf8[] = "ab\xff" "c";
	json_t *j;

	(void)state;
	j = pbjson_from_message(&env.base);
	assert_non_null(j);
	assert_json_is(j, "{}");
	json_decref(j);

	env.priority = MEDROUTE__V1__PRIORITY__PRIORITY_STAT;
	env.created_at_ms = -1;
	j = pbjson_from_message(&env.base);
	assert_non_null(j);
	assert_json_is(j, "{\"priority\": \"PRIORITY_STAT\", \"created_at_ms\": -1}");
	json_decref(j);

	/* bytes that are not UTF-8 become U+FFFD instead of failing */
	id.value = bad_utf8;
	j = pbjson_from_message(&id.base);
	assert_non_null(j);
	assert_json_is(j, "{\"value\": \"ab\\ufffdc\"}");
	json_decref(j);

	assert_null(pbjson_from_message(NULL));
}

static void test_pbjson_bytes_base64(void **state)
{
	static const uint8_t fbff[] = { 0xfb, 0xff };
	ProtobufCMessage *m;
	const TestNode *n;

	(void)state;
	m = to_msg(&test_node_descriptor,
	           "{\"data\": \"aGVsbG8=\", \"tags\": [\"a\", \"\", \"c\"], \"ratio\": 0.5}");
	n = (const TestNode *)m;
	assert_int_equal(n->data.len, 5);
	assert_memory_equal(n->data.data, "hello", 5);
	assert_int_equal(n->n_tags, 3);
	assert_string_equal(n->tags[1], "");
	assert_string_equal(n->tags[2], "c");
	assert_true(n->ratio == 0.5);
	assert_int_equal(n->has_opt, 0);
	assert_round_trip(m, "{\"data\": \"aGVsbG8=\", \"tags\": [\"a\", \"\", \"c\"], \"ratio\": 0.5}");
	protobuf_c_message_free_unpacked(m, NULL);

	/* unpadded and URL-safe input; standard padded output */
	m = to_msg(&test_node_descriptor, "{\"data\": \"-_8\"}");
	n = (const TestNode *)m;
	assert_int_equal(n->data.len, 2);
	assert_memory_equal(n->data.data, fbff, 2);
	assert_round_trip(m, "{\"data\": \"+/8=\"}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&test_node_descriptor, "{\"data\": \"YQ\"}");
	n = (const TestNode *)m;
	assert_int_equal(n->data.len, 1);
	assert_int_equal(n->data.data[0], 'a');
	assert_round_trip(m, "{\"data\": \"YQ==\"}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&test_node_descriptor, "{\"data\": \"\"}");
	n = (const TestNode *)m;
	assert_int_equal(n->data.len, 0);
	assert_null(n->data.data);
	assert_round_trip(m, "{}");
	protobuf_c_message_free_unpacked(m, NULL);

	expect_error(&test_node_descriptor, "{\"data\": \"a\"}", "data: invalid base64");
	expect_error(&test_node_descriptor, "{\"data\": \"a*==\"}", "data: invalid base64");
	expect_error(&test_node_descriptor, "{\"data\": 5}",
	             "data: expected a base64 string for bytes, got integer");
}

static void test_pbjson_double_and_optional(void **state)
{
	ProtobufCMessage *m;
	const TestNode *n;

	(void)state;
	m = to_msg(&test_node_descriptor, "{\"ratio\": \"NaN\", \"opt\": 0}");
	n = (const TestNode *)m;
	assert_true(isnan(n->ratio));
	assert_int_equal(n->has_opt, 1);
	assert_int_equal(n->opt, 0);
	/* explicit presence: a set optional is written even when 0 */
	assert_round_trip(m, "{\"ratio\": \"NaN\", \"opt\": 0}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&test_node_descriptor, "{\"ratio\": \"-Infinity\", \"value\": -2147483648}");
	n = (const TestNode *)m;
	assert_true(isinf(n->ratio) && n->ratio < 0);
	assert_int_equal(n->value, INT32_MIN);
	assert_round_trip(m, "{\"ratio\": \"-Infinity\", \"value\": -2147483648}");
	protobuf_c_message_free_unpacked(m, NULL);

	m = to_msg(&test_node_descriptor, "{\"ratio\": 3}");
	assert_true(((const TestNode *)m)->ratio == 3.0);
	assert_round_trip(m, "{\"ratio\": 3.0}");
	protobuf_c_message_free_unpacked(m, NULL);

	expect_error(&test_node_descriptor, "{\"ratio\": \"1.5\"}",
	             "ratio: expected a number, \"NaN\", \"Infinity\" or \"-Infinity\" for double, got \"1.5\"");
	expect_error(&test_node_descriptor, "{\"value\": -2147483649}",
	             "value: -2147483649 is out of range for int32");
	expect_error(&test_node_descriptor, "{\"tags\": [\"a\", 1]}",
	             "tags[1]: expected a string, got integer");
}

static void test_pbjson_float_and_scalar_oneof(void **state)
{
	ProtobufCMessage *m;
	const TestNode *n;

	(void)state;
	/* float: written as the shortest decimal that reads back the same */
	m = to_msg(&test_node_descriptor, "{\"scale\": 0.1}");
	n = (const TestNode *)m;
	assert_true(n->scale == 0.1f);
	assert_round_trip(m, "{\"scale\": 0.1}");
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(&test_node_descriptor, "{\"scale\": \"Infinity\"}");
	assert_true(isinf(((const TestNode *)m)->scale));
	assert_round_trip(m, "{\"scale\": \"Infinity\"}");
	protobuf_c_message_free_unpacked(m, NULL);
	expect_error(&test_node_descriptor, "{\"scale\": 1e39}",
	             "scale: 1e+39 is out of range for float");

	/* a set scalar oneof member is written even when it is the default */
	m = to_msg(&test_node_descriptor, "{\"number\": 0}");
	n = (const TestNode *)m;
	assert_int_equal(n->choice_case, 8);
	assert_int_equal(n->number, 0);
	assert_round_trip(m, "{\"number\": 0}");
	protobuf_c_message_free_unpacked(m, NULL);
	m = to_msg(&test_node_descriptor, "{\"name\": \"\"}");
	n = (const TestNode *)m;
	assert_int_equal(n->choice_case, 7);
	assert_string_equal(n->name, "");
	assert_round_trip(m, "{\"name\": \"\"}");
	protobuf_c_message_free_unpacked(m, NULL);
	expect_error(&test_node_descriptor, "{\"name\": \"a\", \"number\": 1}",
	             "number: only one member of a oneof may be set, but \"name\" is set as well");
}

static void test_pbjson_error_buffer_handling(void **state)
{
	char err[10];
	ProtobufCMessage *m = NULL;
	json_t *j = load("{\"bogus\": 1}");

	(void)state;
	/* truncated but terminated */
	assert_int_equal(pbjson_to_message(ENVELOPE, j, &m, err, sizeof err), -EINVAL);
	assert_string_equal(err, "bogus: un");
	assert_null(m);
	/* no buffer at all */
	assert_int_equal(pbjson_to_message(ENVELOPE, j, &m, NULL, 0), -EINVAL);
	assert_null(m);
	assert_int_equal(pbjson_to_message(NULL, j, &m, err, sizeof err), -EINVAL);
	assert_int_equal(pbjson_to_message(ENVELOPE, NULL, &m, err, sizeof err), -EINVAL);
	assert_int_equal(pbjson_to_message(ENVELOPE, j, NULL, err, sizeof err), -EINVAL);
	json_decref(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pbjson_envelope_referral_round_trip),
		cmocka_unit_test(test_pbjson_lab_result_repeated_items),
		cmocka_unit_test(test_pbjson_enum_short_names_and_numbers),
		cmocka_unit_test(test_pbjson_camel_case_keys),
		cmocka_unit_test(test_pbjson_null_means_unset),
		cmocka_unit_test(test_pbjson_error_unknown_key),
		cmocka_unit_test(test_pbjson_error_wrong_type),
		cmocka_unit_test(test_pbjson_error_unknown_enum_name),
		cmocka_unit_test(test_pbjson_error_nul_in_strings),
		cmocka_unit_test(test_pbjson_error_two_oneof_members),
		cmocka_unit_test(test_pbjson_error_uint32_out_of_range),
		cmocka_unit_test(test_pbjson_error_too_deep),
		cmocka_unit_test(test_pbjson_error_real_from_2_52),
		cmocka_unit_test(test_pbjson_uint64_above_2_63_round_trip),
		cmocka_unit_test(test_pbjson_frame_ack_round_trip),
		cmocka_unit_test(test_pbjson_defaults_omitted_on_output),
		cmocka_unit_test(test_pbjson_bytes_base64),
		cmocka_unit_test(test_pbjson_double_and_optional),
		cmocka_unit_test(test_pbjson_float_and_scalar_oneof),
		cmocka_unit_test(test_pbjson_error_buffer_handling),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
