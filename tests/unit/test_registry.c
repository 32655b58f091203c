/*
 * Unit tests for daemon/registry.c: role names, the checks registry_new
 * makes (ids, duplicates, hosts), lookups by id and the referral direction
 * derived from roles.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "registry.h"

/* A small community: one lead hospital with its three centres, one county
 * member and two townships. */
static const facility_t s_county[] = {
    {.id = "lead", .name = "County hospital", .role = ROLE_LEAD},
    {.id = "img", .name = "Imaging centre", .role = ROLE_IMAGING_CENTRE, .host = "lead"},
    {.id = "lab", .name = "Lab centre", .role = ROLE_LAB_CENTRE, .host = "lead"},
    {.id = "ecg", .name = "ECG centre", .role = ROLE_ECG_CENTRE, .host = "lead"},
    {.id = "tcm", .name = "TCM hospital", .role = ROLE_COUNTY_MEMBER},
    {.id = "t-a", .name = "Town A", .role = ROLE_TOWNSHIP},
    {.id = "t-b", .role = ROLE_TOWNSHIP, .public_key = "Z85KEY"},
};
#define S_N (sizeof s_county / sizeof s_county[0])

static void test_registry_role_parse_all(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        role_t role;
    } cases[] = {
        {"lead", ROLE_LEAD},
        {"township", ROLE_TOWNSHIP},
        {"imaging_centre", ROLE_IMAGING_CENTRE},
        {"lab_centre", ROLE_LAB_CENTRE},
        {"ecg_centre", ROLE_ECG_CENTRE},
        {"county_member", ROLE_COUNTY_MEMBER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        role_t r = ROLE_COUNT;
        assert_int_equal(registry_role_parse(cases[i].name, &r), 0);
        assert_int_equal(r, cases[i].role);
        assert_string_equal(registry_role_name(cases[i].role), cases[i].name);
    }
}

static void test_registry_role_parse_unknown(void **state)
{
    (void)state;
    role_t r = ROLE_ECG_CENTRE;
    assert_int_equal(registry_role_parse("hospital", &r), -EINVAL);
    assert_int_equal(registry_role_parse("", &r), -EINVAL);
    assert_int_equal(registry_role_parse("Lead", &r), -EINVAL); /* names are exact */
    assert_int_equal(registry_role_parse("lead ", &r), -EINVAL);
    assert_int_equal(r, ROLE_ECG_CENTRE); /* untouched on failure */
    assert_string_equal(registry_role_name(ROLE_COUNT), "unknown");
}

static void test_registry_new_copies_facilities(void **state)
{
    (void)state;
    char err[256] = "";
    registry_t *reg = registry_new(s_county, S_N, err, sizeof err);
    assert_non_null(reg);
    assert_string_equal(err, "");
    assert_int_equal(registry_count(reg), S_N);
    for (size_t i = 0; i < S_N; i++) {
        const facility_t *f = registry_at(reg, i);
        assert_non_null(f);
        assert_ptr_not_equal(f->id, s_county[i].id); /* copied, not borrowed */
        assert_string_equal(f->id, s_county[i].id);
        assert_int_equal(f->role, s_county[i].role);
    }
    assert_string_equal(registry_at(reg, 0)->name, "County hospital");
    /* A facility without a name is named by its id. */
    assert_string_equal(registry_at(reg, 6)->name, "t-b");
    assert_string_equal(registry_at(reg, 1)->host, "lead");
    assert_null(registry_at(reg, 0)->host);
    assert_null(registry_at(reg, 0)->public_key);
    assert_string_equal(registry_at(reg, 6)->public_key, "Z85KEY");
    assert_null(registry_at(reg, S_N));
    registry_destroy(&reg);
    assert_null(reg);
    registry_destroy(&reg); /* NULL is fine */
}

static void test_registry_find_by_id(void **state)
{
    (void)state;
    char err[256];
    registry_t *reg = registry_new(s_county, S_N, err, sizeof err);
    assert_non_null(reg);
    for (size_t i = 0; i < S_N; i++)
        assert_int_equal(registry_find(reg, s_county[i].id, strlen(s_county[i].id)), (int)i);
    assert_int_equal(registry_find(reg, "nobody", 6), -1);
    assert_int_equal(registry_find(reg, "", 0), -1);
    /* The length counts, not a terminating NUL: "t-ax" cut to 3 is "t-a". */
    assert_int_equal(registry_find(reg, "t-ax", 3), 5);
    assert_int_equal(registry_find(reg, "lea", 3), -1);
    assert_int_equal(registry_find(reg, "LEAD", 4), -1);
    registry_destroy(&reg);
}

static void test_registry_new_rejects_duplicate_id(void **state)
{
    (void)state;
    facility_t fs[] = {
        {.id = "lead", .role = ROLE_LEAD},
        {.id = "t-a", .role = ROLE_TOWNSHIP},
        {.id = "t-a", .role = ROLE_TOWNSHIP},
    };
    char err[256] = "";
    registry_t *reg = registry_new(fs, 3, err, sizeof err);
    assert_null(reg);
    assert_string_equal(err, "facility t-a: duplicate id");
}

static void test_registry_new_rejects_empty_id(void **state)
{
    (void)state;
    facility_t fs[] = {
        {.id = "lead", .role = ROLE_LEAD},
        {.id = "", .role = ROLE_TOWNSHIP},
    };
    char err[256] = "";
    assert_null(registry_new(fs, 2, err, sizeof err));
    assert_string_equal(err, "facility #2: id must be 1..64 characters");

    facility_t missing[] = {{.id = NULL, .role = ROLE_LEAD}};
    err[0] = '\0';
    assert_null(registry_new(missing, 1, err, sizeof err));
    assert_string_equal(err, "facility #1: id must be 1..64 characters");
}

static void test_registry_new_id_length_limit(void **state)
{
    (void)state;
    char id64[65], id65[66];
    memset(id64, 'a', 64);
    id64[64] = '\0';
    memset(id65, 'b', 65);
    id65[65] = '\0';

    facility_t ok[] = {{.id = id64, .role = ROLE_LEAD}};
    char err[256] = "";
    registry_t *reg = registry_new(ok, 1, err, sizeof err);
    assert_non_null(reg);
    assert_int_equal(registry_find(reg, id64, 64), 0);
    registry_destroy(&reg);

    facility_t bad[] = {{.id = "lead", .role = ROLE_LEAD}, {.id = id65, .role = ROLE_TOWNSHIP}};
    assert_null(registry_new(bad, 2, err, sizeof err));
    assert_string_equal(err, "facility #2: id must be 1..64 characters");
}

static void test_registry_new_rejects_empty_list(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(registry_new(NULL, 0, err, sizeof err));
    assert_string_equal(err, "the registry lists no facility");
}

static void test_registry_new_rejects_host_not_lead(void **state)
{
    (void)state;
    char err[256] = "";
    /* The host exists but is a township. */
    facility_t township_host[] = {
        {.id = "lead", .role = ROLE_LEAD},
        {.id = "t-a", .role = ROLE_TOWNSHIP},
        {.id = "img", .role = ROLE_IMAGING_CENTRE, .host = "t-a"},
    };
    assert_null(registry_new(township_host, 3, err, sizeof err));
    assert_string_equal(err, "facility img: host t-a is not a lead hospital in the registry");

    /* The host is not in the registry at all. */
    facility_t missing_host[] = {
        {.id = "lead", .role = ROLE_LEAD},
        {.id = "lab", .role = ROLE_LAB_CENTRE, .host = "elsewhere"},
    };
    assert_null(registry_new(missing_host, 2, err, sizeof err));
    assert_string_equal(err, "facility lab: host elsewhere is not a lead hospital in the registry");

    /* A centre hosted by another centre is refused too. */
    facility_t centre_host[] = {
        {.id = "lead", .role = ROLE_LEAD},
        {.id = "img", .role = ROLE_IMAGING_CENTRE, .host = "lead"},
        {.id = "ecg", .role = ROLE_ECG_CENTRE, .host = "img"},
    };
    assert_null(registry_new(centre_host, 3, err, sizeof err));
    assert_string_equal(err, "facility ecg: host img is not a lead hospital in the registry");
}

static void test_registry_new_host_may_come_later(void **state)
{
    (void)state;
    /* Hosts are checked after the whole list is read. */
    facility_t fs[] = {
        {.id = "img", .role = ROLE_IMAGING_CENTRE, .host = "lead"},
        {.id = "lead", .role = ROLE_LEAD},
    };
    char err[256] = "";
    registry_t *reg = registry_new(fs, 2, err, sizeof err);
    assert_non_null(reg);
    assert_int_equal(registry_find(reg, "lead", 4), 1);
    registry_destroy(&reg);
}

static void test_registry_direction_by_role(void **state)
{
    (void)state;
    char err[256];
    registry_t *reg = registry_new(s_county, S_N, err, sizeof err);
    assert_non_null(reg);
    enum { LEAD = 0, IMG, LAB, ECG, TCM, TA, TB };
    /* township -> lead and every centre: up */
    assert_int_equal(registry_direction(reg, TA, LEAD), DIRECTION_UP);
    assert_int_equal(registry_direction(reg, TA, IMG), DIRECTION_UP);
    assert_int_equal(registry_direction(reg, TA, LAB), DIRECTION_UP);
    assert_int_equal(registry_direction(reg, TB, ECG), DIRECTION_UP);
    /* lead and centres -> township: down */
    assert_int_equal(registry_direction(reg, LEAD, TA), DIRECTION_DOWN);
    assert_int_equal(registry_direction(reg, IMG, TA), DIRECTION_DOWN);
    assert_int_equal(registry_direction(reg, LAB, TB), DIRECTION_DOWN);
    assert_int_equal(registry_direction(reg, ECG, TB), DIRECTION_DOWN);
    /* everything else: lateral */
    assert_int_equal(registry_direction(reg, TA, TB), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, LEAD, IMG), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, IMG, LEAD), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, LAB, ECG), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, TCM, TA), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, TA, TCM), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, TCM, LEAD), DIRECTION_LATERAL);
    assert_int_equal(registry_direction(reg, LEAD, TCM), DIRECTION_LATERAL);
    /* out of range: none */
    assert_int_equal(registry_direction(reg, -1, LEAD), DIRECTION_NONE);
    assert_int_equal(registry_direction(reg, LEAD, -1), DIRECTION_NONE);
    assert_int_equal(registry_direction(reg, (int)S_N, LEAD), DIRECTION_NONE);
    assert_int_equal(registry_direction(reg, TA, (int)S_N), DIRECTION_NONE);
    registry_destroy(&reg);
}

static void test_registry_direction_names(void **state)
{
    (void)state;
    assert_string_equal(registry_direction_name(DIRECTION_NONE), "none");
    assert_string_equal(registry_direction_name(DIRECTION_UP), "up");
    assert_string_equal(registry_direction_name(DIRECTION_DOWN), "down");
    assert_string_equal(registry_direction_name(DIRECTION_LATERAL), "lateral");
    assert_string_equal(registry_direction_name((direction_t)42), "none");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_role_parse_all),
        cmocka_unit_test(test_registry_role_parse_unknown),
        cmocka_unit_test(test_registry_new_copies_facilities),
        cmocka_unit_test(test_registry_find_by_id),
        cmocka_unit_test(test_registry_new_rejects_duplicate_id),
        cmocka_unit_test(test_registry_new_rejects_empty_id),
        cmocka_unit_test(test_registry_new_id_length_limit),
        cmocka_unit_test(test_registry_new_rejects_empty_list),
        cmocka_unit_test(test_registry_new_rejects_host_not_lead),
        cmocka_unit_test(test_registry_new_host_may_come_later),
        cmocka_unit_test(test_registry_direction_by_role),
        cmocka_unit_test(test_registry_direction_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
