/*
 * Unit tests for daemon/conf.c: a full config read back field by field, the
 * defaults, and every kind of problem reported as "name:LINE: key: reason"
 * (or "name: key: reason" for what has no line: missing keys, cross-checks).
 * Texts are written line by line so that the line numbers in the expected
 * messages can be counted in the source.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <malloc.h>

#include "conf.h"

#ifndef MR_CONF_PATH
#error "MR_CONF_PATH (config/medroute.conf) must be defined by the build"
#endif

/* The minimum a config must say: endpoints, data_dir, one facility. */
#define S_REQUIRED                                                                                 \
    "facility_endpoint = \"tcp://127.0.0.1:7700\";\n"                                              \
    "operator_endpoint = \"tcp://127.0.0.1:7701\";\n"                                              \
    "data_dir = \"var/x\";\n"                                                                      \
    "facilities = ( { id = \"lead\"; role = \"lead\"; } );\n"

/* Loads text expecting failure; returns the error text (static buffer). */
static const char *s_fail(const char *text)
{
    static char err[4096];
    memset(err, 'x', sizeof err);
    conf_t *c = conf_load_string(text, "t.conf", err, sizeof err);
    if (c != NULL) {
        conf_destroy(&c);
        fail_msg("config loaded but was expected to fail:\n%s", text);
    }
    return err;
}

static int s_count_lines(const char *s)
{
    if (*s == '\0')
        return 0;
    int n = 1;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_conf_full_config_every_field(void **state)
{
    (void)state;
    const char *text =
        "broker_id = \"b-1\";\n"
        "facility_endpoint = \"tcp://127.0.0.1:9000\";\n"
        "operator_endpoint = \"ipc:///tmp/op.sock\";\n"
        "data_dir = \"/var/lib/medroute\";\n"
        "insecure = true;\n"
        "log_level = \"debug\";\n"
        "limits = {\n"
        "  max_message_bytes = 2048;\n"
        "  max_inflight = 7;\n"
        "  heartbeat_interval_ms = 1000;\n"
        "  heartbeat_timeout_ms = 4000;\n"
        "  redelivery_timeout_ms = 9000;\n"
        "};\n"
        "store = {\n"
        "  synchronous = \"normal\";\n"
        "  batch_max = 50;\n"
        "  batch_ms = 0;\n"
        "  retention_days = 90;\n"
        "  restart_scan_rows = 5000;\n"
        "  stall_after_s = 4;\n"
        "};\n"
        "ttl = {\n"
        "  referral = 11;\n"
        "  referral_update = 12;\n"
        "  imaging_request = 13;\n"
        "  imaging_report = 14;\n"
        "  lab_order = 15;\n"
        "  lab_result = 16;\n"
        "};\n"
        "facilities = (\n"
        "  { id = \"lead\"; role = \"lead\"; name = \"County\"; },\n"
        "  { id = \"img\"; role = \"imaging_centre\"; name = \"Imaging\"; host = \"lead\";"
        " public_key = \"Jylr>3hiQ%!>O#MV%!l3v}HgyJ4f]bn<Po%B{E4O\"; },\n"
        "  { id = \"t-1\"; role = \"township\"; }\n"
        ");\n";
    char err[1024] = "unchanged";
    conf_t *c = conf_load_string(text, "full.conf", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(err, "");
    assert_string_equal(c->broker_id, "b-1");
    assert_string_equal(c->facility_endpoint, "tcp://127.0.0.1:9000");
    assert_string_equal(c->operator_endpoint, "ipc:///tmp/op.sock");
    assert_string_equal(c->data_dir, "/var/lib/medroute");
    assert_true(c->insecure);
    assert_string_equal(c->log_level, "debug");
    assert_int_equal(c->max_message_bytes, 2048);
    assert_int_equal(c->max_inflight, 7);
    assert_int_equal(c->heartbeat_interval_ms, 1000);
    assert_int_equal(c->heartbeat_timeout_ms, 4000);
    assert_int_equal(c->redelivery_timeout_ms, 9000);
    assert_false(c->sync_full);
    assert_int_equal(c->batch_max, 50);
    assert_int_equal(c->batch_ms, 0);
    assert_int_equal(c->retention_days, 90);
    assert_int_equal(c->restart_scan_rows, 5000);
    assert_int_equal(c->stall_after_s, 4);
    assert_int_equal(c->ttl_s[0], 0);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL], 11);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE], 12);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST], 13);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REPORT], 14);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_ORDER], 15);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_RESULT], 16);
    assert_int_equal(c->n_facilities, 3);
    assert_string_equal(c->facilities[0].id, "lead");
    assert_int_equal(c->facilities[0].role, ROLE_LEAD);
    assert_string_equal(c->facilities[0].name, "County");
    assert_null(c->facilities[0].host);
    assert_null(c->facilities[0].public_key);
    assert_string_equal(c->facilities[1].id, "img");
    assert_int_equal(c->facilities[1].role, ROLE_IMAGING_CENTRE);
    assert_string_equal(c->facilities[1].name, "Imaging");
    assert_string_equal(c->facilities[1].host, "lead");
    assert_string_equal(c->facilities[1].public_key, "Jylr>3hiQ%!>O#MV%!l3v}HgyJ4f]bn<Po%B{E4O");
    assert_string_equal(c->facilities[2].id, "t-1");
    assert_int_equal(c->facilities[2].role, ROLE_TOWNSHIP);
    assert_null(c->facilities[2].name);
    conf_destroy(&c);
    assert_null(c);
    conf_destroy(&c);
}

static void test_conf_defaults_when_groups_omitted(void **state)
{
    (void)state;
    char err[512] = "";
    conf_t *c = conf_load_string(S_REQUIRED, "min.conf", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(err, "");
    assert_string_equal(c->broker_id, "medroute");
    assert_string_equal(c->log_level, "info");
    assert_false(c->insecure);
    assert_int_equal(c->max_message_bytes, 1 << 20);
    assert_int_equal(c->max_inflight, 64);
    assert_int_equal(c->heartbeat_interval_ms, 5000);
    assert_int_equal(c->heartbeat_timeout_ms, 15000);
    assert_int_equal(c->redelivery_timeout_ms, 30000);
    assert_true(c->sync_full);
    assert_int_equal(c->batch_max, 1000);
    assert_int_equal(c->batch_ms, 20);
    assert_int_equal(c->retention_days, 30);
    assert_int_equal(c->restart_scan_rows, 1000000);
    assert_int_equal(c->stall_after_s, 15);
    assert_int_equal(c->reserve_cutoff_s, 86400);
    assert_int_equal(c->appointment_grace_s, 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL], 3 * 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL_UPDATE], 7 * 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REQUEST], 2 * 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_IMAGING_REPORT], 7 * 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_ORDER], 2 * 86400);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_RESULT], 7 * 86400);
    assert_int_equal(c->n_facilities, 1);
    conf_destroy(&c);
}

static void test_conf_partial_group_keeps_other_defaults(void **state)
{
    (void)state;
    char err[512] = "";
    conf_t *c = conf_load_string(S_REQUIRED "limits = { max_inflight = 3; };\n"
                                            "store = { batch_ms = 10; };\n"
                                            "ttl = { lab_order = 60; };\n"
                                            "referrals = { appointment_grace_s = 7200; };\n",
                                 "p.conf", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->max_inflight, 3);
    assert_int_equal(c->max_message_bytes, 1 << 20);
    assert_int_equal(c->batch_ms, 10);
    assert_int_equal(c->batch_max, 1000);
    assert_true(c->sync_full);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_ORDER], 60);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_LAB_RESULT], 7 * 86400);
    assert_int_equal(c->appointment_grace_s, 7200);
    assert_int_equal(c->reserve_cutoff_s, 86400);
    conf_destroy(&c);
}

static void test_conf_unknown_top_level_key(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "colour = \"blue\";\n"), "t.conf:5: colour: unknown key");
}

static void test_conf_unknown_key_in_limits(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "limits = {\n"
                                          "  max_inflight = 5;\n"
                                          "  max_rate = 5;\n"
                                          "};\n"),
                        "t.conf:7: limits.max_rate: unknown key");
}

static void test_conf_unknown_key_in_store(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "store = {\n"
                                          "  wal = true;\n"
                                          "};\n"),
                        "t.conf:6: store.wal: unknown key");
}

static void test_conf_unknown_key_in_ttl(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "ttl = {\n"
                                          "  referral = 5;\n"
                                          "  ecg_trace = 5;\n"
                                          "};\n"),
                        "t.conf:7: ttl.ecg_trace: unknown key");
}

static void test_conf_unknown_key_in_facility(void **state)
{
    (void)state;
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = (\n"
                               "  { id = \"lead\"; role = \"lead\";\n"
                               "    colour = \"red\"; }\n"
                               ");\n"),
                        "t.conf:6: facilities[0].colour: unknown key");
}

static void test_conf_wrong_types(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "broker_id = 5;\n"),
                        "t.conf:5: broker_id: expected a string");
    assert_string_equal(s_fail(S_REQUIRED "insecure = \"yes\";\n"),
                        "t.conf:5: insecure: expected true or false");
    assert_string_equal(s_fail(S_REQUIRED "limits = { max_inflight = \"many\"; };\n"),
                        "t.conf:5: limits.max_inflight: expected an integer");
    assert_string_equal(s_fail(S_REQUIRED "limits = { max_inflight = 2.5; };\n"),
                        "t.conf:5: limits.max_inflight: expected an integer");
    assert_string_equal(s_fail(S_REQUIRED "store = { batch_max = true; };\n"),
                        "t.conf:5: store.batch_max: expected an integer");
    assert_string_equal(s_fail(S_REQUIRED "ttl = { referral = \"3d\"; };\n"),
                        "t.conf:5: ttl.referral: expected an integer");
    assert_string_equal(s_fail(S_REQUIRED "limits = 5;\n"),
                        "t.conf:5: limits: expected a group { ... }");
    assert_string_equal(s_fail(S_REQUIRED "store = \"full\";\n"),
                        "t.conf:5: store: expected a group { ... }");
    assert_string_equal(s_fail(S_REQUIRED "ttl = [1, 2];\n"),
                        "t.conf:5: ttl: expected a group { ... }");
}

/* "县医院" in GBK (what a Windows editor may save): refused, naming the
 * setting and its line, never echoing the bytes. */
#define S_GBK "\xcf\xd8\xd2\xbd\xd4\xba"

static void test_conf_strings_must_be_utf8(void **state)
{
    (void)state;
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = (\n"
                               "  { id = \"lead\"; role = \"lead\";\n"
                               "    name = \"" S_GBK "\"; }\n"
                               ");\n"),
                        "t.conf:6: facilities[0].name: not valid UTF-8 (save the file as UTF-8)");
    assert_string_equal(s_fail(S_REQUIRED "broker_id = \"b-" S_GBK "\";\n"),
                        "t.conf:5: broker_id: not valid UTF-8 (save the file as UTF-8)");
    /* The same name in UTF-8 loads. */
    char err[512];
    conf_t *c = conf_load_string("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                                 "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                                 "data_dir = \"d\";\n"
                                 "facilities = ( { id = \"lead\"; role = \"lead\";"
                                 " name = \"\xe5\x8e\xbf\xe5\x8c\xbb\xe9\x99\xa2\"; } );\n",
                                 "t.conf", err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->facilities[0].name, "\xe5\x8e\xbf\xe5\x8c\xbb\xe9\x99\xa2");
    conf_destroy(&c);
}

static void test_conf_wrong_facility_types(void **state)
{
    (void)state;
    const char *head = "facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                       "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                       "data_dir = \"d\";\n";
    char text[512];
    snprintf(text, sizeof text, "%sfacilities = \"lead\";\n", head);
    assert_string_equal(s_fail(text),
                        "t.conf:4: facilities: expected a list ( { id = ...; }, ... )\n"
                        "t.conf: facilities: at least one facility is required");
    snprintf(text, sizeof text, "%sfacilities = ( \"lead\" );\n", head);
    assert_string_equal(s_fail(text), "t.conf:4: facilities[0]: expected a group { id = ...; }");
    snprintf(text, sizeof text, "%sfacilities = ( { id = 7; role = \"lead\"; } );\n", head);
    assert_string_equal(s_fail(text), "t.conf:4: facilities[0].id: expected a string\n"
                                      "t.conf:4: facilities[0]: id is required");
}

static void test_conf_out_of_range_integers(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "limits = { max_inflight = 0; };\n"),
                        "t.conf:5: limits.max_inflight: 0 is out of range 1..10000");
    assert_string_equal(s_fail(S_REQUIRED "limits = { max_inflight = 10001; };\n"),
                        "t.conf:5: limits.max_inflight: 10001 is out of range 1..10000");
    assert_string_equal(s_fail(S_REQUIRED "limits = { max_message_bytes = 1023; };\n"),
                        "t.conf:5: limits.max_message_bytes: 1023 is out of range 1024..67108864");
    /* Too large for an int: libconfig reads it as a 64-bit integer. */
    assert_string_equal(
        s_fail(S_REQUIRED "limits = { max_message_bytes = 5000000000L; };\n"),
        "t.conf:5: limits.max_message_bytes: 5000000000 is out of range 1024..67108864");
    assert_string_equal(s_fail(S_REQUIRED "store = { batch_ms = -1; };\n"),
                        "t.conf:5: store.batch_ms: -1 is out of range 0..1000");
    assert_string_equal(s_fail(S_REQUIRED "store = { retention_days = 36501; };\n"),
                        "t.conf:5: store.retention_days: 36501 is out of range 0..36500");
    assert_string_equal(s_fail(S_REQUIRED "store = { stall_after_s = 0; };\n"),
                        "t.conf:5: store.stall_after_s: 0 is out of range 1..3600");
    assert_string_equal(s_fail(S_REQUIRED "ttl = { lab_result = 0; };\n"),
                        "t.conf:5: ttl.lab_result: 0 is out of range 1..31536000");

    /* The bounds themselves are accepted. */
    char err[512];
    conf_t *c = conf_load_string(S_REQUIRED "limits = { max_inflight = 10000;"
                                            " max_message_bytes = 67108864; };\n"
                                            "store = { batch_ms = 0; retention_days = 0; };\n"
                                            "ttl = { referral = 31536000; };\n",
                                 "b.conf", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->max_inflight, 10000);
    assert_int_equal(c->max_message_bytes, 67108864);
    assert_int_equal(c->retention_days, 0);
    assert_int_equal(c->ttl_s[MEDROUTE__V1__KIND__KIND_REFERRAL], 31536000);
    conf_destroy(&c);
}

static void test_conf_bad_synchronous(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "store = {\n"
                                          "  synchronous = \"off\";\n"
                                          "};\n"),
                        "t.conf:6: store.synchronous: expected \"full\" or \"normal\"");
    assert_string_equal(s_fail(S_REQUIRED "store = { synchronous = 1; };\n"),
                        "t.conf:5: store.synchronous: expected \"full\" or \"normal\"");
    char err[512];
    conf_t *c = conf_load_string(S_REQUIRED "store = { synchronous = \"full\"; };\n", "s.conf", err,
                                 sizeof err);
    assert_non_null(c);
    assert_true(c->sync_full);
    conf_destroy(&c);
}

/* The broker's id is bounded as a facility's. */
static void test_conf_broker_id_length(void **state)
{
    (void)state;
    char text[512];
    snprintf(text, sizeof text, S_REQUIRED "broker_id = \"%0100d\";\n", 7);
    assert_non_null(strstr(s_fail(text), "broker_id: must be 1..64 characters"));
    assert_non_null(strstr(s_fail(S_REQUIRED "broker_id = \"\";\n"), "broker_id: must be"));
    snprintf(text, sizeof text, S_REQUIRED "broker_id = \"%064d\";\n", 7);
    char err[512];
    conf_t *c = conf_load_string(text, "b.conf", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(strlen(c->broker_id), 64);
    conf_destroy(&c);
}

/* A facility may not take the broker's id (its default too): what is
 * addressed to the broker (capacity notices, visit tallies) and what to the
 * facility would share one destination label in the tallies and stats.  A
 * reload loads the file the same way, so it is refused there too. */
static void test_conf_broker_id_is_no_facility_id(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "broker_id = \"lead\";\n"),
                        "t.conf: facilities[0].id: \"lead\" is the broker's own id (broker_id)");
    assert_string_equal(
        s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
               "data_dir = \"d\";\n"
               "facilities = ( { id = \"lead\"; role = \"lead\"; },\n"
               "  { id = \"medroute\"; role = \"township\"; } );\n"),
        "t.conf: facilities[1].id: \"medroute\" is the broker's own id (broker_id)");
    char err[512];
    conf_t *c = conf_load_string(S_REQUIRED "broker_id = \"lead-broker\";\n", "b.conf", err,
                                 sizeof err);
    assert_non_null(c);
    conf_destroy(&c);
}

/* A log level the daemon cannot use is refused here, so that
 * --check-config (the unit's ExecStartPre) and a reload refuse it, not the
 * start (which exited 2, and systemd restarted it again and again). */
static void test_conf_log_level_must_be_known(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "log_level = \"verbose\";\n"),
                        "t.conf: log_level: \"verbose\" is not one of error, warn, info, debug");
    char err[512];
    conf_t *c = conf_load_string(S_REQUIRED "log_level = \"DEBUG\";\n", "l.conf", err, sizeof err);
    assert_non_null(c);
    conf_destroy(&c);
}

/* Ids become label values in /metrics and the tallies ("source=\"ID\""),
 * and key=value fields in the log: a quote, a backslash, a space or a
 * control character in one would break the exposition (Prometheus rejects
 * the whole scrape) and the log's fields.  UTF-8 is fine. */
static void test_conf_ids_are_label_safe(void **state)
{
    (void)state;
    assert_string_equal(
        s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
               "data_dir = \"d\";\n"
               "facilities = ( { id = \"le\\\"ad\"; role = \"lead\"; },\n"
               "  { id = \"t x\"; role = \"township\"; },\n"
               "  { id = \"t\\\\y\"; role = \"township\"; } );\n"),
        "t.conf:4: facilities[0].id: no quotes, backslashes, spaces or control characters\n"
        "t.conf:5: facilities[1].id: no quotes, backslashes, spaces or control characters\n"
        "t.conf:6: facilities[2].id: no quotes, backslashes, spaces or control characters");
    assert_string_equal(s_fail(S_REQUIRED "broker_id = \"me\\tdium\";\n"),
                        "t.conf: broker_id: no quotes, backslashes, spaces or control characters");
    char err[512];
    conf_t *c = conf_load_string("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                                 "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                                 "data_dir = \"d\";\n"
                                 "broker_id = \"yx-broker.1\";\n"
                                 "facilities = ( { id = \"\u4e91\u53bf-lead_1\"; role = \"lead\"; } );\n",
                                 "i.conf", err, sizeof err);
    assert_non_null(c);
    conf_destroy(&c);
}

/* A zone name glibc does not find makes TZ silently UTC: every local day
 * (tallies, periods, the reserve cut-off) would be off by the offset. */
static void test_conf_timezone_must_be_known(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "timezone = \"Asia/Shangai\";\n"),
                        "t.conf: timezone: \"Asia/Shangai\" is not a zone of the tz database "
                        "(/usr/share/zoneinfo)");
    assert_non_null(strstr(s_fail(S_REQUIRED "timezone = \"../../etc/passwd\";\n"),
                           "timezone: "));
    assert_non_null(strstr(s_fail(S_REQUIRED "timezone = \"Asia\";\n"), "timezone: "));
    char err[512];
    conf_t *c = conf_load_string(S_REQUIRED "timezone = \"UTC\";\n", "z.conf", err, sizeof err);
    assert_non_null(c);
    conf_destroy(&c);
}

static void test_conf_missing_required_keys(void **state)
{
    (void)state;
    /* Nothing at all: every required key is named, without a line. */
    assert_string_equal(s_fail(""), "t.conf: facility_endpoint: required\n"
                                    "t.conf: operator_endpoint: required\n"
                                    "t.conf: data_dir: required\n"
                                    "t.conf: facilities: at least one facility is required");
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = ( { id = \"lead\"; role = \"lead\"; } );\n"),
                        "t.conf: operator_endpoint: required");
    /* A facility needs an id and a role. */
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = (\n"
                               "  { id = \"lead\"; },\n"
                               "  { role = \"township\"; }\n"
                               ");\n"),
                        "t.conf:5: facilities[0]: role is required\n"
                        "t.conf:6: facilities[1]: id is required");
}

static void test_conf_bad_role(void **state)
{
    (void)state;
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = ( { id = \"x\"; role = \"clinic\"; } );\n"),
                        "t.conf:4: facilities[0].role: \"clinic\" is not one of lead, township, "
                        "imaging_centre, lab_centre, ecg_centre, county_member");
}

static void test_conf_registry_checks(void **state)
{
    (void)state;
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = ( { id = \"a\"; role = \"lead\"; },\n"
                               "               { id = \"a\"; role = \"township\"; } );\n"),
                        "t.conf: facilities: facility a: duplicate id");
    assert_string_equal(s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                               "data_dir = \"d\";\n"
                               "facilities = ( { id = \"t\"; role = \"township\"; },\n"
                               "  { id = \"i\"; role = \"imaging_centre\"; host = \"t\"; } );\n"),
                        "t.conf: facilities: facility i: host t is not a lead hospital in the "
                        "registry");
}

/* One key, one identity: a facility's key copied to another facility or to
 * an operator is refused (ZAP would give it to whichever came first). */
#define S_KEY_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define S_KEY_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"

static void test_conf_keys_are_unique(void **state)
{
    (void)state;
    assert_string_equal(
        s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
               "data_dir = \"d\";\n"
               "facilities = ( { id = \"yx-lead\"; role = \"lead\"; public_key = \"" S_KEY_A "\"; },\n"
               "  { id = \"t-a\"; role = \"township\"; public_key = \"" S_KEY_A "\"; } );\n"),
        "t.conf: facilities[1].public_key: the same key as facilities[0] (each key is one "
        "identity)");
    assert_string_equal(
        s_fail("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
               "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
               "data_dir = \"d\";\n"
               "facilities = ( { id = \"yx-lead\"; role = \"lead\"; public_key = \"" S_KEY_A "\"; } );\n"
               "operators = ( { name = \"noc\"; role = \"admin\"; public_key = \"" S_KEY_B "\"; },\n"
               "  { name = \"x\"; role = \"read_only\"; public_key = \"" S_KEY_A "\"; } );\n"),
        "t.conf: operators[1].public_key: the same key as facilities[0] (each key is one "
        "identity)");
    /* Two different keys load. */
    char err[512];
    conf_t *c = conf_load_string(
        "facility_endpoint = \"tcp://127.0.0.1:1\";\n"
        "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
        "data_dir = \"d\";\n"
        "facilities = ( { id = \"yx-lead\"; role = \"lead\"; public_key = \"" S_KEY_A "\"; },\n"
        "  { id = \"t-a\"; role = \"township\"; public_key = \"" S_KEY_B "\"; } );\n",
        "t.conf", err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    conf_destroy(&c);
}

static void test_conf_heartbeat_timeout_must_exceed_interval(void **state)
{
    (void)state;
    assert_string_equal(s_fail(S_REQUIRED "limits = { heartbeat_interval_ms = 5000;"
                                          " heartbeat_timeout_ms = 5000; };\n"),
                        "t.conf: limits.heartbeat_timeout_ms: must exceed heartbeat_interval_ms");
}

static void test_conf_syntax_error(void **state)
{
    (void)state;
    assert_string_equal(s_fail("broker_id = \"b\";\n"
                               "data_dir = \"d\";\n"
                               "insecure = = true;\n"),
                        "t.conf:3: syntax error");
    /* An unclosed group is noticed at the end of the text (line 5). */
    assert_string_equal(s_fail("limits = {\n"
                               "  max_inflight = 5;\n"
                               "\n"
                               "facilities = ();\n"),
                        "t.conf:5: syntax error");
}

static void test_conf_several_problems_at_once(void **state)
{
    (void)state;
    const char *err = s_fail("broker_id = 1;\n"                              /* 1 */
                             "facility_endpoint = \"tcp://127.0.0.1:1\";\n"  /* 2 */
                             "operator_endpoint = \"tcp://127.0.0.1:2\";\n"  /* 3 */
                             "data_dir = \"d\";\n"                           /* 4 */
                             "colour = 1;\n"                                 /* 5 */
                             "limits = {\n"                                  /* 6 */
                             "  max_inflight = 0;\n"                         /* 7 */
                             "  bogus = 1;\n"                                /* 8 */
                             "};\n"                                          /* 9 */
                             "store = { synchronous = \"sometimes\"; };\n"   /* 10 */
                             "ttl = { referral = \"soon\"; };\n"             /* 11 */
                             "facilities = ( { id = \"a\"; role = \"x\"; } );\n"); /* 12 */
    assert_string_equal(err, "t.conf:1: broker_id: expected a string\n"
                             "t.conf:5: colour: unknown key\n"
                             "t.conf:7: limits.max_inflight: 0 is out of range 1..10000\n"
                             "t.conf:8: limits.bogus: unknown key\n"
                             "t.conf:10: store.synchronous: expected \"full\" or \"normal\"\n"
                             "t.conf:11: ttl.referral: expected an integer\n"
                             "t.conf:12: facilities[0].role: \"x\" is not one of lead, township, "
                             "imaging_centre, lab_centre, ecg_centre, county_member");
    assert_int_equal(s_count_lines(err), 7);
}

static void test_conf_error_buffer_truncates_safely(void **state)
{
    (void)state;
    char err[24];
    memset(err, 'x', sizeof err);
    conf_t *c = conf_load_string("", "t.conf", err, sizeof err);
    assert_null(c);
    /* NUL-terminated inside the buffer, a prefix of the full report. */
    assert_non_null(memchr(err, '\0', sizeof err));
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_memory_equal(err, "t.conf: facility_endpoin", sizeof err - 1);
}

static void test_conf_load_file_shipped_config(void **state)
{
    (void)state;
    char err[2048] = "unchanged";
    conf_t *c = conf_load_file(MR_CONF_PATH, err, sizeof err);
    if (c == NULL)
        fail_msg("%s: %s", MR_CONF_PATH, err);
    assert_string_equal(err, "");
    assert_int_equal(c->n_facilities, 18);
    assert_true(c->insecure);
    assert_string_equal(c->broker_id, "yx-medroute");
    assert_string_equal(c->facility_endpoint, "tcp://127.0.0.1:7700");
    assert_string_equal(c->operator_endpoint, "tcp://127.0.0.1:7701");
    assert_string_equal(c->facilities[0].id, "yx-lead");
    assert_int_equal(c->facilities[0].role, ROLE_LEAD);
    assert_string_equal(c->facilities[17].id, "t-houqing");
    assert_int_equal(c->facilities[17].role, ROLE_TOWNSHIP);
    conf_destroy(&c);
}

static void test_conf_load_file_missing(void **state)
{
    (void)state;
    char err[512] = "";
    conf_t *c = conf_load_file("/nonexistent/medroute.conf", err, sizeof err);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/medroute.conf: file I/O error");
}

/* The linker sends conf.c's free() here (-Wl,--wrap=free): a block freed
 * while it holds s_watched (a key, when set) is counted in s_freed_holding. */
static char s_watched[41];
static int s_freed_holding;

void __real_free(void *p);
void __wrap_free(void *p);

void __wrap_free(void *p)
{
    if (p != NULL && s_watched[0] != '\0' &&
        memmem(p, malloc_usable_size(p), s_watched, strlen(s_watched)) != NULL)
        s_freed_holding++;
    __real_free(p);
}

/* Writes a key file as medroute keygen does (its comment, then the key)
 * with mode; its path in path. */
static void s_key_file(char *path, size_t len, const char *dir, const char *name,
                       const char *half, const char *key, mode_t mode)
{
    snprintf(path, len, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "# medroute CURVE %s key of broker\n%s\n", half, key);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

/* The broker's secret key: refused where other users may read it, or when
 * the file is the public half (the CURVE handshakes would all fail, later
 * and with no word of why). */
static void test_conf_server_key_file_checked(void **state)
{
    (void)state;
    char dir[] = "/tmp/medroute-conf-keys-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pub[41], sec[41];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    char path[256], text[1024], err[1024];
    s_key_file(path, sizeof path, dir, "broker.key", "secret", sec, 0600);
    snprintf(text, sizeof text, S_REQUIRED "insecure = false;\nserver_key_file = \"%s\";\n", path);
    conf_t *c = conf_load_string(text, "t.conf", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->server_secret_key, sec);
    conf_destroy(&c);
    /* A group may read it (a deliberate set-up); anybody else may not. */
    assert_int_equal(chmod(path, 0640), 0);
    c = conf_load_string(text, "t.conf", err, sizeof err);
    assert_non_null(c);
    conf_destroy(&c);
    assert_int_equal(chmod(path, 0620), 0); /* its group may change it */
    assert_non_null(strstr(s_fail(text), "may be read or changed by other users (mode 0620)"));
    assert_int_equal(chmod(path, 0644), 0);
    assert_null(strstr(s_fail(text), "holds no"));
    assert_non_null(strstr(s_fail(text), "may be read or changed by other users (mode 0644)"));
    /* The public half, written 0644 as keygen does: named for what it is,
     * not for its mode. */
    s_key_file(path, sizeof path, dir, "broker.pub", "public", pub, 0644);
    snprintf(text, sizeof text, S_REQUIRED "insecure = false;\nserver_key_file = \"%s\";\n", path);
    assert_non_null(strstr(s_fail(text), "is the broker's public key"));
    /* Another user's (neither ours nor root's), mode 0600: that user may
     * read or change it.  Giving it away takes root, as CI runs. */
    s_key_file(path, sizeof path, dir, "other.key", "secret", sec, 0600);
    snprintf(text, sizeof text, S_REQUIRED "insecure = false;\nserver_key_file = \"%s\";\n", path);
    uid_t other = geteuid() == 65534 ? 65533 : 65534;
    if (chown(path, other, (gid_t)-1) == 0) {
        char want[300];
        snprintf(want, sizeof want, "is owned by another user (uid %u), who may read or change it",
                 (unsigned)other);
        assert_non_null(strstr(s_fail(text), want));
    } else {
        print_message("not checked: cannot give a file to uid %u; run as root\n",
                      (unsigned)other);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* A server_key_file of "$CREDENTIALS_DIRECTORY/broker.key" whose path, the
 * directory put in, does not fit is refused: cut to the buffer, it named
 * another file, ".../broker.ke" here, and the broker took its key. */
static void test_conf_server_key_path_too_long_is_refused(void **state)
{
    (void)state;
    char top[] = "/tmp/medroute-conf-long-XXXXXX";
    assert_non_null(mkdtemp(top));
    /* A directory D of 4085 bytes: "D/broker.key" is 4096, one too many. */
    static char dir[4096];
    size_t want = 4096 - strlen("/broker.key");
    snprintf(dir, sizeof dir, "%s", top);
    while (strlen(dir) < want) {
        size_t len = strlen(dir), step = want - len - 1;
        if (step > 200)
            step = 200;
        if (want - len - 1 - step == 1) /* a last step of one byte cannot be "/x" */
            step--;
        dir[len] = '/';
        memset(dir + len + 1, 'd', step);
        dir[len + 1 + step] = '\0';
        assert_int_equal(mkdir(dir, 0700), 0);
    }
    assert_int_equal(strlen(dir), want);
    char pub[41], sec[41];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    static char path[4200];
    s_key_file(path, sizeof path, dir, "broker.ke", "secret", sec, 0600);
    assert_int_equal(setenv("CREDENTIALS_DIRECTORY", dir, 1), 0);
    assert_string_equal(
        s_fail(S_REQUIRED "insecure = false;\n"
                          "server_key_file = \"$CREDENTIALS_DIRECTORY/broker.key\";\n"),
        "t.conf: server_key_file: the path is longer than 4095 bytes with "
        "$CREDENTIALS_DIRECTORY put in");
    assert_int_equal(unsetenv("CREDENTIALS_DIRECTORY"), 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
    assert_int_equal(system(cmd), 0);
}

/* The broker's secret key is wiped before the config that holds it is
 * freed (conf_destroy, as after every reload): the heap hands freed memory
 * out again, to a frame's buffer for one.  (The copies conf.c and the key
 * file reader keep on the stack are wiped too, where no test can look.) */
static void test_conf_secret_key_wiped_when_freed(void **state)
{
    (void)state;
    char dir[] = "/tmp/medroute-conf-wipe-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pub[41], sec[41];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    char path[256], text[1024], err[1024];
    s_key_file(path, sizeof path, dir, "broker.key", "secret", sec, 0600);
    snprintf(text, sizeof text, S_REQUIRED "insecure = false;\nserver_key_file = \"%s\";\n", path);
    conf_t *c = conf_load_string(text, "t.conf", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->server_secret_key, sec);
    memcpy(s_watched, sec, sizeof s_watched);
    s_freed_holding = 0;
    conf_destroy(&c);
    s_watched[0] = '\0';
    assert_int_equal(s_freed_holding, 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* Loads a config with insecure = true, the endpoints given and http_listen
 * (NULL: none), and returns conf_check_security's answer, its text in err. */
static int s_insecure_check(const char *facility_ep, const char *operator_ep,
                            const char *http_listen, char *err, size_t errlen)
{
    char text[1024], http[256] = "";
    if (http_listen != NULL)
        snprintf(http, sizeof http, "http_listen = \"%s\";\n", http_listen);
    snprintf(text, sizeof text,
             "facility_endpoint = \"%s\";\noperator_endpoint = \"%s\";\n%s"
             "data_dir = \"var/x\";\ninsecure = true;\n"
             "facilities = ( { id = \"lead\"; role = \"lead\"; } );\n",
             facility_ep, operator_ep, http);
    conf_t *c = conf_load_string(text, "t.conf", err, errlen);
    assert_non_null(c);
    int rc = conf_check_security(c, err, errlen);
    conf_destroy(&c);
    return rc;
}

/* insecure = true takes loopback addresses only, read as addresses: a host
 * name that starts with 127. is none, and in libzmq's SOURCE;ADDRESS
 * (tcp://127.0.0.1:1;0.0.0.0:7700) the bind is on ADDRESS, every
 * interface.  Each is refused naming the key. */
static void test_conf_insecure_loopback_is_an_address(void **state)
{
    (void)state;
    static const char *const local[] = {
        "ipc:///tmp/mr.sock", "inproc://mr",        "tcp://127.0.0.1:7700",
        "tcp://127.1.2.3:*",  "tcp://localhost:7700", "tcp://[::1]:7700",
    };
    static const char *const remote[] = {
        "tcp://127.example.org:7700", "tcp://127.0.0.1:1;0.0.0.0:7700",
        "tcp://127.0.0.1.nip.io:7700", "tcp://localhost.example.org:7700",
        "tcp://0.0.0.0:7700",         "tcp://128.0.0.1:7700",
        "tcp://*:7700",               "tcp://eth0:7700",
        "tcp://127.0.0.1:7700;x",     "tcp://127.0.0.1",
        "tcp://[::1]x:7700",          "tcp://[::ffff:10.0.0.1]:7700",
        "udp://127.0.0.1:7700",
    };
    char err[1024];
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        assert_true(conf_endpoint_is_local(local[i]));
        assert_int_equal(s_insecure_check(local[i], local[i], NULL, err, sizeof err), 0);
    }
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++) {
        if (conf_endpoint_is_local(remote[i]))
            fail_msg("taken for loopback: %s", remote[i]);
        assert_int_equal(s_insecure_check(remote[i], "ipc://x", NULL, err, sizeof err), -EINVAL);
        assert_non_null(strstr(err, "only allowed with loopback or ipc endpoints: "
                                    "facility_endpoint is not"));
        assert_int_equal(s_insecure_check("ipc://x", remote[i], NULL, err, sizeof err), -EINVAL);
        assert_non_null(strstr(err, "operator_endpoint is not"));
    }
    static const char *const http_local[] = {"127.0.0.1:7702", "127.9.9.9:80", "localhost:7702"};
    /* (One that is not HOST:PORT at all is refused by the load:
     * test_conf_http_listen_is_host_and_port.) */
    static const char *const http_remote[] = {"0.0.0.0:7702", "10.0.0.1:7702", "128.0.0.1:80"};
    for (size_t i = 0; i < sizeof http_local / sizeof http_local[0]; i++)
        assert_int_equal(s_insecure_check("ipc://x", "ipc://y", http_local[i], err, sizeof err),
                         0);
    for (size_t i = 0; i < sizeof http_remote / sizeof http_remote[0]; i++) {
        if (s_insecure_check("ipc://x", "ipc://y", http_remote[i], err, sizeof err) != -EINVAL)
            fail_msg("http_listen taken for loopback: %s", http_remote[i]);
        assert_non_null(strstr(err, "only allowed with a loopback http_listen"));
    }
}

/* http_listen is read whole when the config loads, as the HTTP listener
 * binds it (HOST an IPv4 address or localhost, PORT 1..65535 in digits and
 * nothing after): "127.0.0.1:80junk" bound port 80, the rest ignored, and
 * one the listener could not read at all failed only at the start, after
 * --check-config and a reload had passed it. */
static void test_conf_http_listen_is_host_and_port(void **state)
{
    (void)state;
    static const char *const good[] = {"127.0.0.1:7702", "localhost:1", "0.0.0.0:65535",
                                       "10.1.2.3:80"};
    static const char *const bad[] = {
        "127.0.0.1:80junk",   "127.0.0.1:80 ",       "127.0.0.1:",       "127.0.0.1",
        ":7702",              "127.0.0.1:0",         "127.0.0.1:65536",  "127.0.0.1:123456",
        "127.0.0.1:-1",       "127.0.0.1:+80",       "127.0.0.1: 80",    "127.0.0.1:80:81",
        "127.example.org:80", "127.0.0.1.nip.io:80", "[::1]:7702",       "localhost.x:80",
        "",
    };
    char text[512], want[256], err[1024];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(text, sizeof text, S_REQUIRED "http_listen = \"%s\";\n", good[i]);
        conf_t *c = conf_load_string(text, "t.conf", err, sizeof err);
        if (c == NULL)
            fail_msg("http_listen refused: %s: %s", good[i], err);
        conf_destroy(&c);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, S_REQUIRED "http_listen = \"%s\";\n", bad[i]);
        snprintf(want, sizeof want, "t.conf:5: http_listen: \"%s\" is not HOST:PORT", bad[i]);
        const char *got = s_fail(text);
        if (strncmp(got, want, strlen(want)) != 0)
            fail_msg("http_listen \"%s\": %s", bad[i], got);
    }
    struct sockaddr_in sa;
    assert_int_equal(conf_http_listen_parse("localhost:7702", &sa), 0);
    assert_int_equal(sa.sin_family, AF_INET);
    assert_int_equal(ntohs(sa.sin_port), 7702);
    assert_int_equal(ntohl(sa.sin_addr.s_addr), 0x7f000001);
    assert_int_equal(conf_http_listen_parse("127.0.0.1:80junk", &sa), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_full_config_every_field),
        cmocka_unit_test(test_conf_defaults_when_groups_omitted),
        cmocka_unit_test(test_conf_partial_group_keeps_other_defaults),
        cmocka_unit_test(test_conf_unknown_top_level_key),
        cmocka_unit_test(test_conf_unknown_key_in_limits),
        cmocka_unit_test(test_conf_unknown_key_in_store),
        cmocka_unit_test(test_conf_unknown_key_in_ttl),
        cmocka_unit_test(test_conf_unknown_key_in_facility),
        cmocka_unit_test(test_conf_wrong_types),
        cmocka_unit_test(test_conf_strings_must_be_utf8),
        cmocka_unit_test(test_conf_wrong_facility_types),
        cmocka_unit_test(test_conf_out_of_range_integers),
        cmocka_unit_test(test_conf_bad_synchronous),
        cmocka_unit_test(test_conf_broker_id_length),
        cmocka_unit_test(test_conf_broker_id_is_no_facility_id),
        cmocka_unit_test(test_conf_log_level_must_be_known),
        cmocka_unit_test(test_conf_ids_are_label_safe),
        cmocka_unit_test(test_conf_timezone_must_be_known),
        cmocka_unit_test(test_conf_missing_required_keys),
        cmocka_unit_test(test_conf_bad_role),
        cmocka_unit_test(test_conf_registry_checks),
        cmocka_unit_test(test_conf_keys_are_unique),
        cmocka_unit_test(test_conf_heartbeat_timeout_must_exceed_interval),
        cmocka_unit_test(test_conf_syntax_error),
        cmocka_unit_test(test_conf_several_problems_at_once),
        cmocka_unit_test(test_conf_error_buffer_truncates_safely),
        cmocka_unit_test(test_conf_load_file_shipped_config),
        cmocka_unit_test(test_conf_load_file_missing),
        cmocka_unit_test(test_conf_server_key_file_checked),
        cmocka_unit_test(test_conf_server_key_path_too_long_is_refused),
        cmocka_unit_test(test_conf_secret_key_wiped_when_freed),
        cmocka_unit_test(test_conf_insecure_loopback_is_an_address),
        cmocka_unit_test(test_conf_http_listen_is_host_and_port),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
