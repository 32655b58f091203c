/*
 * make_seeds.c - writes the seed corpora of the fuzz targets.
 *
 *   make_seeds OUT_DIR
 *
 * One valid envelope of every kind, written as JSON below (the facility ids
 * of fuzz_dispatch.c's configuration), is mapped onto medroute.v1.Envelope
 * with pbjson and written as:
 *   OUT_DIR/json/<kind>.json        the JSON text
 *   OUT_DIR/envelope/<kind>.bin     the packed Envelope
 *   OUT_DIR/payloads/<kind>.bin     one selector byte (fuzz_payloads.c) + the packed payload
 *   OUT_DIR/frame/<kind>.bin        Frame{version 1, envelope}
 *   OUT_DIR/dispatch/<kind>.bin     the same frame
 * and the other frame bodies (Hello, Heartbeat, DeliveryAck, and Ack and
 * Error, which a facility may not send) to frame/ and dispatch/.
 * The directories must exist.  Exit status 0, or 1 with a reason on stderr.
 * The committed seeds in tests/fuzz/corpus/ are this program's output.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mr_codec.h"
#include "pbjson.h"

typedef struct {
    const char *name;
    const char *json;
} s_seed_t;

/* In Kind order (fuzz_payloads.c picks its decoder with kind - 1). */
static const s_seed_t s_seeds[] = {
    {"referral",
     "{\"message_id\":\"m-ref-1\",\"source\":\"t-a\",\"destination\":\"lead\","
     "\"kind\":\"referral\",\"priority\":\"urgent\",\"created_at_ms\":1700000000000,"
     "\"referral\":{\"referral_id\":\"R-1\",\"patient\":{\"identifiers\":[{\"system\":"
     "\"resident-id\",\"value\":\"5335\"}],\"name\":\"P\",\"birth_date\":\"1960-01-02\","
     "\"sex\":\"female\"},\"reasons\":[{\"system\":\"ICD-10\",\"code\":\"I20.0\"}],"
     "\"service\":\"specialist_clinic\",\"department\":\"cardiology\","
     "\"family_doctor_contract\":true,\"documents\":[{\"uri\":\"https://x/1\","
     "\"content_type\":\"application/pdf\"}],\"clinical_summary\":\"chest pain\"}}"},
    {"referral_update",
     "{\"message_id\":\"m-upd-1\",\"source\":\"lead\",\"destination\":\"t-a\","
     "\"kind\":\"referral_update\",\"correlation_id\":\"m-ref-1\","
     "\"referral_update\":{\"referral_id\":\"R-1\",\"step\":\"accepted\","
     "\"appointment_at_ms\":1700003600000,\"location\":\"clinic 3\"}}"},
    {"imaging_request",
     "{\"message_id\":\"m-img-1\",\"source\":\"t-a\",\"destination\":\"img\","
     "\"kind\":\"imaging_request\",\"imaging_request\":{\"accession_number\":\"A-1\","
     "\"modality\":\"ct\",\"body_part\":\"CHEST\",\"study_instance_uid\":\"1.2.3\","
     "\"pacs_uri\":\"dicomweb://pacs/1\"}}"},
    {"imaging_report",
     "{\"message_id\":\"m-rep-1\",\"source\":\"img\",\"destination\":\"t-a\","
     "\"kind\":\"imaging_report\",\"priority\":\"stat\",\"correlation_id\":\"m-img-1\","
     "\"imaging_report\":{\"accession_number\":\"A-1\",\"status\":\"final\","
     "\"findings\":\"f\",\"impression\":\"i\",\"critical_finding\":true,"
     "\"reported_at_ms\":1700000500000}}"},
    {"lab_order",
     "{\"message_id\":\"m-lab-1\",\"source\":\"t-a\",\"destination\":\"lab\","
     "\"kind\":\"lab_order\",\"lab_order\":{\"placer_order_number\":\"P-1\","
     "\"specimen\":{\"specimen_id\":\"S-1\",\"type\":\"serum\","
     "\"collected_at_ms\":1700000000000},\"tests\":[{\"system\":\"LOINC\","
     "\"code\":\"2823-3\"}]}}"},
    {"lab_result",
     "{\"message_id\":\"m-res-1\",\"source\":\"lab\",\"destination\":\"t-a\","
     "\"kind\":\"lab_result\",\"correlation_id\":\"m-lab-1\",\"lab_result\":{"
     "\"placer_order_number\":\"P-1\",\"filler_order_number\":\"F-1\",\"status\":\"final\","
     "\"items\":[{\"test\":{\"system\":\"LOINC\",\"code\":\"2823-3\"},\"value\":\"6.9\","
     "\"unit\":\"mmol/L\",\"reference_range\":\"3.5-5.3\",\"abnormal\":\"critical_high\","
     "\"critical\":true}],\"reported_at_ms\":1700000900000}}"},
    {"capacity",
     "{\"message_id\":\"m-cap-1\",\"source\":\"lead\",\"destination\":\"fuzz-broker\","
     "\"kind\":\"capacity\",\"capacity\":{\"items\":[{\"resource\":\"clinic\","
     "\"unit\":\"cardiology\",\"date\":\"2030-01-02\",\"capacity\":20,\"reserved\":5},"
     "{\"resource\":\"exam\",\"unit\":\"CT\",\"date\":\"2030-01-02\",\"capacity\":10,"
     "\"reserved\":2,\"slot_start_ms\":1893546000000}]}}"},
    {"critical_ack",
     "{\"message_id\":\"m-ack-1\",\"source\":\"t-a\",\"destination\":\"lab\","
     "\"kind\":\"critical_ack\",\"correlation_id\":\"m-res-1\",\"critical_ack\":{"
     "\"placer_order_number\":\"P-1\",\"read_back_by\":\"Dr W\","
     "\"read_back_text\":\"K 6.9\"}}"},
    {"visit_tally",
     "{\"message_id\":\"m-vis-1\",\"source\":\"t-a\",\"destination\":\"fuzz-broker\","
     "\"kind\":\"visit_tally\",\"visit_tally\":{\"date\":\"2030-01-01\","
     "\"outpatient_visits\":120,\"emergency_visits\":4,\"insured_visits_in_county\":100,"
     "\"insured_visits_out_of_county\":3,\"inpatient_admissions\":2,"
     "\"fund_spend_fen\":1234500,\"fund_spend_out_of_county_fen\":99900,"
     "\"tcm_visits\":30}}"},
};

static int s_write(const char *dir, const char *sub, const char *name, const char *ext,
                   const void *pre, size_t pre_len, const void *data, size_t len)
{
    char path[1024];
    if (snprintf(path, sizeof path, "%s/%s/%s.%s", dir, sub, name, ext) >= (int)sizeof path)
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "make_seeds: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    int rc = 0;
    if ((pre_len > 0 && fwrite(pre, 1, pre_len, f) != pre_len) ||
        (len > 0 && fwrite(data, 1, len, f) != len))
        rc = -EIO;
    if (fclose(f) != 0)
        rc = -EIO;
    if (rc < 0)
        fprintf(stderr, "make_seeds: %s: write failed\n", path);
    return rc;
}

/* Writes msg packed to dir/sub/name.bin, after pre_len bytes of pre. */
static int s_write_packed(const char *dir, const char *sub, const char *name, const void *pre,
                          size_t pre_len, const ProtobufCMessage *msg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = mr_pack(msg, &buf, &len);
    if (rc == 0)
        rc = s_write(dir, sub, name, "bin", pre, pre_len, buf, len);
    free(buf);
    return rc;
}

/* Frame{version 1, body}: to frame/ and dispatch/. */
static int s_write_frame(const char *dir, const char *name, mr_frame_t *f)
{
    f->version = MEDROUTE__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    int rc = s_write_packed(dir, "frame", name, NULL, 0, &f->base);
    if (rc == 0)
        rc = s_write_packed(dir, "dispatch", name, NULL, 0, &f->base);
    return rc;
}

/* The payload set in env (the oneof member of its payload case). */
static const ProtobufCMessage *s_payload(const mr_envelope_t *env)
{
    const ProtobufCMessageDescriptor *d = env->base.descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->id != (unsigned)env->payload_case)
            continue;
        const ProtobufCMessage *m;
        memcpy(&m, (const char *)env + f->offset, sizeof m);
        return m;
    }
    return NULL;
}

static int s_envelope_seed(const char *dir, const s_seed_t *seed)
{
    json_error_t jerr;
    char err[256];
    ProtobufCMessage *m = NULL;
    int rc = -EINVAL;
    json_t *j = json_loads(seed->json, 0, &jerr);
    if (j == NULL) {
        fprintf(stderr, "make_seeds: %s: %s\n", seed->name, jerr.text);
        goto out;
    }
    if (pbjson_to_message(&medroute__v1__envelope__descriptor, j, &m, err, sizeof err) != 0) {
        fprintf(stderr, "make_seeds: %s: %s\n", seed->name, err);
        goto out;
    }
    mr_envelope_t *env = (mr_envelope_t *)m;
    const ProtobufCMessage *payload = s_payload(env);
    uint8_t selector = (uint8_t)(env->kind - 1);
    if (payload == NULL || mr_kind_payload_case((int)env->kind) != (int)env->payload_case) {
        fprintf(stderr, "make_seeds: %s: kind and payload disagree\n", seed->name);
        goto out;
    }
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ENVELOPE;
    f.envelope = env;
    if ((rc = s_write(dir, "json", seed->name, "json", NULL, 0, seed->json,
                      strlen(seed->json))) < 0 ||
        (rc = s_write_packed(dir, "envelope", seed->name, NULL, 0, m)) < 0 ||
        (rc = s_write_packed(dir, "payloads", seed->name, &selector, 1, payload)) < 0 ||
        (rc = s_write_frame(dir, seed->name, &f)) < 0)
        goto out;
    rc = 0;
out:
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    json_decref(j);
    return rc;
}

static int s_other_frames(const char *dir)
{
    int rc;
    mr_frame_t f = MEDROUTE__V1__FRAME__INIT;
    Medroute__V1__Hello hello = MEDROUTE__V1__HELLO__INIT;
    hello.facility_id = "t-a";
    hello.client_name = "seed/1";
    hello.max_inflight = 4;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HELLO;
    f.hello = &hello;
    if ((rc = s_write_frame(dir, "hello", &f)) < 0)
        return rc;

    Medroute__V1__Heartbeat hb = MEDROUTE__V1__HEARTBEAT__INIT;
    hb.sent_at_ms = 1700000000000;
    f.body_case = MEDROUTE__V1__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    if ((rc = s_write_frame(dir, "heartbeat", &f)) < 0)
        return rc;

    Medroute__V1__DeliveryAck da = MEDROUTE__V1__DELIVERY_ACK__INIT;
    da.seq = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_DELIVERY_ACK;
    f.delivery_ack = &da;
    if ((rc = s_write_frame(dir, "delivery_ack", &f)) < 0)
        return rc;

    Medroute__V1__Ack ack = MEDROUTE__V1__ACK__INIT;
    ack.message_id = "m-ref-1";
    ack.seq = 1;
    f.body_case = MEDROUTE__V1__FRAME__BODY_ACK;
    f.ack = &ack;
    if ((rc = s_write_frame(dir, "ack", &f)) < 0)
        return rc;

    Medroute__V1__Error e = MEDROUTE__V1__ERROR__INIT;
    e.message_id = "m-ref-1";
    e.code = MEDROUTE__V1__ERROR_CODE__ERROR_INVALID;
    e.reason = "seed";
    f.body_case = MEDROUTE__V1__FRAME__BODY_ERROR;
    f.error = &e;
    return s_write_frame(dir, "error", &f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds OUT_DIR\n");
        return 1;
    }
    for (size_t i = 0; i < sizeof s_seeds / sizeof s_seeds[0]; i++)
        if (s_envelope_seed(argv[1], &s_seeds[i]) < 0)
            return 1;
    return s_other_frames(argv[1]) < 0 ? 1 : 0;
}
