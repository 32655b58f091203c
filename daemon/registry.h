/*
 * registry.h - the facilities of the medical community, as data.
 *
 * Built from the config; read-only afterwards (a reload builds a new one).
 * Each facility has a stable index 0..n-1 that other modules use to keep
 * per-facility state in plain arrays.
 */
#ifndef MR_REGISTRY_H
#define MR_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    ROLE_LEAD = 0,        /* the lead hospital (牵头医院) */
    ROLE_TOWNSHIP,        /* township or community health centre (乡镇卫生院) */
    ROLE_IMAGING_CENTRE,  /* regional imaging centre, hosted by the lead hospital */
    ROLE_LAB_CENTRE,      /* regional lab centre, hosted by the lead hospital */
    ROLE_ECG_CENTRE,      /* regional ECG centre, hosted by the lead hospital */
    ROLE_COUNTY_MEMBER,   /* TCM hospital, maternal and child health hospital, CDC */
    ROLE_COUNT
} role_t;

typedef struct {
    char *id;
    char *name;
    role_t role;
    char *host;        /* id of the hosting facility for centres; NULL otherwise */
    char *public_key;  /* Z85 CURVE public key; NULL until security is configured */
    bool removed;      /* taken out by a reload: keeps its index, cannot connect or receive */
} facility_t;

typedef struct registry_t registry_t;

/* "lead", "township", "imaging_centre", ...; 0 or -EINVAL. */
int registry_role_parse(const char *name, role_t *out);
const char *registry_role_name(role_t role);

/*
 * Builds a registry from n facilities (copied).  Fails with a reason in err
 * on an empty or over-long id, a duplicate id, or a host that is not a lead
 * hospital in the list.  Caller owns the result.
 */
registry_t *registry_new(const facility_t *facilities, size_t n, char *err, size_t errlen);
void registry_destroy(registry_t **self_p);

size_t registry_count(const registry_t *self);
/* The facility at index i (i < count). Borrowed. */
const facility_t *registry_at(const registry_t *self, size_t i);
/* Index of facility id (len bytes), or -1 (also for a removed facility). */
int registry_find(const registry_t *self, const char *id, size_t len);
/* The same, a removed facility included (its messages stay stored). */
int registry_find_any(const registry_t *self, const char *id, size_t len);

/* The referral direction between two facilities: derived from roles. */
typedef enum { DIRECTION_NONE = 0, DIRECTION_UP, DIRECTION_DOWN, DIRECTION_LATERAL } direction_t;
direction_t registry_direction(const registry_t *self, int from, int to);
const char *registry_direction_name(direction_t d);

#endif
