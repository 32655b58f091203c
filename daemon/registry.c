/*
 * registry.c - facility table with an id -> index map.
 *
 * Invariants: ids are unique, 1..64 bytes; a centre's host, when given, names
 * a ROLE_LEAD facility of the same registry.  Immutable after registry_new.
 */
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mr_codec.h"
#include "strmap.h"

struct registry_t {
    facility_t *facilities;
    size_t n;
    strmap_t *by_id;
};

static const char *const s_roles[ROLE_COUNT] = {
    "lead", "township", "imaging_centre", "lab_centre", "ecg_centre", "county_member",
};

int registry_role_parse(const char *name, role_t *out)
{
    for (int r = 0; r < ROLE_COUNT; r++) {
        if (strcmp(name, s_roles[r]) == 0) {
            *out = (role_t)r;
            return 0;
        }
    }
    return -EINVAL;
}

const char *registry_role_name(role_t role)
{
    return role < ROLE_COUNT ? s_roles[role] : "unknown";
}

static char *s_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void s_free_facility(facility_t *f)
{
    free(f->id);
    free(f->name);
    free(f->host);
    free(f->public_key);
}

registry_t *registry_new(const facility_t *facilities, size_t n, char *err, size_t errlen)
{
    registry_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        goto oom;
    self->by_id = strmap_new();
    self->facilities = calloc(n ? n : 1, sizeof *self->facilities);
    if (self->by_id == NULL || self->facilities == NULL)
        goto oom;
    if (n == 0) {
        snprintf(err, errlen, "the registry lists no facility");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const facility_t *src = &facilities[i];
        size_t len = src->id ? strlen(src->id) : 0;
        if (len == 0 || len > MR_FACILITY_ID_MAX) {
            snprintf(err, errlen, "facility #%zu: id must be 1..%d characters", i + 1,
                     MR_FACILITY_ID_MAX);
            goto fail;
        }
        if (strmap_get(self->by_id, src->id, len) >= 0) {
            snprintf(err, errlen, "facility %s: duplicate id", src->id);
            goto fail;
        }
        facility_t *f = &self->facilities[i];
        f->id = s_dup(src->id);
        f->name = s_dup(src->name ? src->name : src->id);
        f->role = src->role;
        f->host = s_dup(src->host);
        f->public_key = s_dup(src->public_key);
        f->removed = src->removed;
        self->n = i + 1;
        if (f->id == NULL || f->name == NULL || (src->host && f->host == NULL) ||
            (src->public_key && f->public_key == NULL))
            goto oom;
        if (strmap_put(self->by_id, f->id, len, (int)i) < 0)
            goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        const facility_t *f = &self->facilities[i];
        if (f->host == NULL || f->removed)
            continue;
        int h = registry_find(self, f->host, strlen(f->host));
        if (h < 0 || self->facilities[h].role != ROLE_LEAD) {
            snprintf(err, errlen, "facility %s: host %s is not a lead hospital in the registry",
                     f->id, f->host);
            goto fail;
        }
    }
    return self;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    registry_destroy(&self);
    return NULL;
}

void registry_destroy(registry_t **self_p)
{
    registry_t *self = *self_p;
    if (self == NULL)
        return;
    for (size_t i = 0; i < self->n; i++)
        s_free_facility(&self->facilities[i]);
    free(self->facilities);
    strmap_destroy(&self->by_id);
    free(self);
    *self_p = NULL;
}

size_t registry_count(const registry_t *self)
{
    return self->n;
}

const facility_t *registry_at(const registry_t *self, size_t i)
{
    return i < self->n ? &self->facilities[i] : NULL;
}

int registry_find(const registry_t *self, const char *id, size_t len)
{
    int i = strmap_get(self->by_id, id, len);
    return i >= 0 && self->facilities[i].removed ? -1 : i;
}

int registry_find_any(const registry_t *self, const char *id, size_t len)
{
    return strmap_get(self->by_id, id, len);
}

/* Centres hosted by the lead hospital count as the lead hospital's level. */
static int s_is_upper(role_t r)
{
    return r == ROLE_LEAD || r == ROLE_IMAGING_CENTRE || r == ROLE_LAB_CENTRE ||
           r == ROLE_ECG_CENTRE;
}

direction_t registry_direction(const registry_t *self, int from, int to)
{
    if (from < 0 || to < 0 || (size_t)from >= self->n || (size_t)to >= self->n)
        return DIRECTION_NONE;
    role_t a = self->facilities[from].role;
    role_t b = self->facilities[to].role;
    if (a == ROLE_TOWNSHIP && s_is_upper(b))
        return DIRECTION_UP;
    if (s_is_upper(a) && b == ROLE_TOWNSHIP)
        return DIRECTION_DOWN;
    return DIRECTION_LATERAL;
}

const char *registry_direction_name(direction_t d)
{
    static const char *const names[] = {"none", "up", "down", "lateral"};
    return d <= DIRECTION_LATERAL ? names[d] : "none";
}
