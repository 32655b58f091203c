/*
 * Unit tests for daemon/http.c's exposition (http_metrics_text): each
 * family typed once, histograms cumulative with their _sum and _count,
 * among many tallies too; the tallies of changes shown as gauges.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

typedef struct {
    server_t s;
    char err[256];
} s_fixture_t;

static int s_setup(void **state)
{
    s_fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->s.conf = conf_load_string("facility_endpoint = \"tcp://127.0.0.1:1\";\n"
                                 "operator_endpoint = \"tcp://127.0.0.1:2\";\n"
                                 "data_dir = \"d\";\ninsecure = true;\n"
                                 "facilities = ( { id = \"yx-lead\"; role = \"lead\"; } );\n",
                                 "t.conf", f->err, sizeof f->err);
    assert_non_null(f->s.conf);
    f->s.registry = registry_new(f->s.conf->facilities, f->s.conf->n_facilities, f->err,
                                 sizeof f->err);
    assert_non_null(f->s.registry);
    f->s.peers = calloc(1, sizeof *f->s.peers);
    assert_non_null(f->s.peers);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fixture_t *f = *state;
    free(f->s.peers);
    registry_destroy(&f->s.registry);
    conf_destroy(&f->s.conf);
    free(f);
    return 0;
}

static int s_count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Rows as the store gives them: sorted by name, then labels. */
static void test_http_metrics_families_and_histograms(void **state)
{
    s_fixture_t *f = *state;
    tally_row_t rows[] = {
        {"imaging_turnaround_seconds_bucket", "modality=\"CT\",le=\"+Inf\"", 1},
        {"imaging_turnaround_seconds_bucket", "modality=\"CT\",le=\"60\"", 2},
        {"imaging_turnaround_seconds_bucket", "modality=\"DR\",le=\"300\"", 4},
        {"imaging_turnaround_seconds_count", "modality=\"CT\"", 3},
        {"imaging_turnaround_seconds_count", "modality=\"DR\"", 4},
        {"imaging_turnaround_seconds_sum", "modality=\"CT\"", 100000},
        {"imaging_turnaround_seconds_sum", "modality=\"DR\"", 800},
        {"messages_stored_total", "destination=\"yx-lead\",kind=\"referral\",source=\"a\"", 5},
        {"messages_stored_total", "destination=\"yx-lead\",kind=\"referral\",source=\"b\"", 6},
        {"referrals_requested_total", "direction=\"up\"", 7},
    };
    char *t = http_metrics_text(&f->s, rows, sizeof rows / sizeof rows[0], NULL, 0);
    assert_non_null(t);
    assert_int_equal(s_count(t, "# TYPE medroute_messages_stored_total counter\n"), 1);
    assert_int_equal(s_count(t, "# TYPE medroute_referrals_requested_total counter\n"), 1);
    assert_int_equal(s_count(t, "# TYPE medroute_imaging_turnaround_seconds histogram\n"), 1);
    assert_non_null(strstr(t, "medroute_messages_stored_total{destination=\"yx-lead\","
                              "kind=\"referral\",source=\"b\"} 6\n"));
    assert_non_null(strstr(t, "medroute_imaging_turnaround_seconds_bucket{modality=\"CT\","
                              "le=\"60\"} 2\n"
                              "medroute_imaging_turnaround_seconds_bucket{modality=\"CT\","
                              "le=\"300\"} 2\n"));
    assert_non_null(strstr(t, "medroute_imaging_turnaround_seconds_bucket{modality=\"CT\","
                              "le=\"+Inf\"} 3\n"
                              "medroute_imaging_turnaround_seconds_sum{modality=\"CT\"} 100000\n"
                              "medroute_imaging_turnaround_seconds_count{modality=\"CT\"} 3\n"));
    assert_non_null(strstr(t, "medroute_imaging_turnaround_seconds_bucket{modality=\"DR\","
                              "le=\"60\"} 0\n"));
    assert_non_null(strstr(t, "medroute_imaging_turnaround_seconds_bucket{modality=\"DR\","
                              "le=\"+Inf\"} 4\n"
                              "medroute_imaging_turnaround_seconds_sum{modality=\"DR\"} 800\n"));
    assert_int_equal(s_count(t, "modality=\"CT\",le=\"+Inf\"}"), 1);
    free(t);
}

/* The bucket bound is the label named le, not the end of one named role or
 * module: split there, a bucket row lost its labels and its bound. */
static void test_http_metrics_le_is_a_whole_label(void **state)
{
    s_fixture_t *f = *state;
    tally_row_t rows[] = {
        {"x_seconds_bucket", "module=\"m\",role=\"lead\",le=\"+Inf\"", 1},
        {"x_seconds_bucket", "module=\"m\",role=\"lead\",le=\"60\"", 2},
        {"x_seconds_count", "module=\"m\",role=\"lead\"", 3},
        {"x_seconds_sum", "module=\"m\",role=\"lead\"", 90},
    };
    char *t = http_metrics_text(&f->s, rows, sizeof rows / sizeof rows[0], NULL, 0);
    assert_non_null(t);
    assert_non_null(strstr(t, "\nmedroute_x_seconds_bucket{module=\"m\",role=\"lead\","
                              "le=\"60\"} 2\n"));
    assert_non_null(strstr(t, "\nmedroute_x_seconds_bucket{module=\"m\",role=\"lead\","
                              "le=\"+Inf\"} 3\n"
                              "medroute_x_seconds_sum{module=\"m\",role=\"lead\"} 90\n"
                              "medroute_x_seconds_count{module=\"m\",role=\"lead\"} 3\n"));
    assert_int_equal(s_count(t, "_bucket{"), TALLY_BUCKETS); /* one label set */
    free(t);
}

/*
 * Many tallies, as a county's years leave them (they are never pruned):
 * each family is typed once, before its first row, and every row is shown.
 * The exposition is built on the loop thread at every scrape, once per row
 * since the fourteenth session (each row looked for its family among all
 * before it: 60,000 label sets held the loop ~4 s); how long it takes is a
 * benchmark's question, not this test's.
 */
static void test_http_metrics_many_tallies(void **state)
{
    s_fixture_t *f = *state;
    enum { N = 4000 };
    static const char *const names[] = {"referral_outcomes_total", "referrals_requested_total",
                                        "slot_claims_total", "zz_last_total"};
    tally_row_t *rows = calloc(N, sizeof *rows);
    char(*labels)[64] = calloc(N, sizeof *labels);
    assert_non_null(rows);
    assert_non_null(labels);
    for (size_t i = 0; i < N; i++) {
        snprintf(labels[i], sizeof labels[i], "department=\"d%06zu\"", i);
        rows[i].name = (char *)names[i * 4 / N];
        rows[i].labels = labels[i];
        rows[i].value = 1;
    }
    char *t = http_metrics_text(&f->s, rows, N, NULL, 0);
    assert_non_null(t);
    for (size_t k = 0; k < 4; k++) {
        char type[96], row[96];
        snprintf(type, sizeof type, "# TYPE medroute_%s counter\n", names[k]);
        snprintf(row, sizeof row, "\nmedroute_%s{", names[k]);
        assert_int_equal(s_count(t, type), 1);
        assert_int_equal(s_count(t, row), N / 4);
        assert_true(strstr(t, type) < strstr(t, row));
    }
    free(t);
    free(labels);
    free(rows);
}

/* A tally of changes that may be negative is a gauge, under its name less
 * "_total": a counter that goes down reads as a reset to rate(). */
static void test_http_metrics_net_tallies_are_gauges(void **state)
{
    s_fixture_t *f = *state;
    tally_row_t rows[] = {
        {"capacity_offered_units_total", "resource=\"bed\"", 12},
        {"capacity_offered_units_total", "resource=\"clinic\"", -2},
        {"reserve_offered_units_total", "resource=\"bed\"", 3},
        {"slot_claims_total", "claim=\"reserved\"", 1},
    };
    char *t = http_metrics_text(&f->s, rows, sizeof rows / sizeof rows[0], NULL, 0);
    assert_non_null(t);
    assert_int_equal(s_count(t, "# TYPE medroute_capacity_offered_units gauge\n"), 1);
    assert_int_equal(s_count(t, "# TYPE medroute_reserve_offered_units gauge\n"), 1);
    assert_non_null(strstr(t, "\nmedroute_capacity_offered_units{resource=\"bed\"} 12\n"
                              "medroute_capacity_offered_units{resource=\"clinic\"} -2\n"));
    assert_non_null(strstr(t, "\nmedroute_reserve_offered_units{resource=\"bed\"} 3\n"));
    assert_null(strstr(t, "offered_units_total"));
    assert_int_equal(s_count(t, "# TYPE medroute_slot_claims_total counter\n"), 1);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_metrics_families_and_histograms, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_http_metrics_le_is_a_whole_label, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_http_metrics_many_tallies, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_http_metrics_net_tallies_are_gauges, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
