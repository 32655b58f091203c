/*
 * sim.c - medroute-sim: a simulated county for the demo.
 *
 * One process, one thread, one mr_client_t per facility it plays: the lead
 * hospital (yx-lead), the imaging centre (yx-imaging), the lab centre
 * (yx-lab) and N township health centres.  A county's day (SAMPLE-COUNTY.md
 * volumes) is compressed into --duration seconds:
 *
 *   township --referral-------> yx-lead     --referral_update (accept/reject)--> township
 *   yx-lead  --referral (down)-> township   --referral_update (follow-up ok)--> yx-lead
 *   township --imaging_request-> yx-imaging --imaging_report (CT: prelim+final)-> township
 *   township --lab_order-------> yx-lab     --lab_result------------------------> township
 *   yx-lead  --capacity (once, at start)-> the broker itself (--broker-id)
 *   township --critical_ack (read-back)---> yx-imaging / yx-lab
 *
 * At start the lead hospital publishes its capacity for today and the next
 * two days (local dates, Asia/Shanghai) as one CapacityNotice to the broker:
 * specialist clinic slots per department and inpatient beds per ward of the
 * departments its referrals name, and exam bookings per modality, each with
 * 20-25 % reserved for family-doctor referrals.  The day starts only after
 * the broker has acknowledged it, so every acceptance finds its resource.
 * The lead accepts an up-referral with an appointment within those three
 * days (a stat one within 30 min, an urgent one within 4 h, a routine one
 * on one of the next two days), so the claim lands on a published resource,
 * and walks most accepted ones on (SCHEDULED, ARRIVED, IN_PROGRESS,
 * COMPLETED with a summary reference); it cancels none.  A township that
 * receives a critical lab value or imaging finding reads it back once
 * (critical_ack to the lab or imaging centre).
 *
 * One township loses its link at 35 % of the run (its client is destroyed)
 * and comes back at 65 % (a new client); what was sent to it meanwhile waits
 * in the broker.  Then the simulator waits (up to 10 s) for every Ack and
 * every delivery and prints who sent and received what.
 *
 * Invariants
 *   1. Every submitted message has one s_msg_t, found by (source, message_id);
 *      an Ack marks it acked (one that comes after its Error, with the
 *      refusal's code, too: a copy was stored after all, and the message is
 *      no longer failed), the first delivery to its destination marks it
 *      delivered; later deliveries count as duplicates, and those the client
 *      library did not mark redelivered as unmarked duplicates (a promise
 *      broken: only the delivery whose handler a crash interrupted may come
 *      twice, and it comes marked).  A delivery of a message no client of
 *      this run submitted counts as stale.  A message addressed to the broker
 *      itself (the capacity notice) is delivered when it is stored, so its
 *      Ack marks it delivered too.
 *   2. Answers are never submitted from inside a handler: the handler queues
 *      an s_todo_t (owning its payload), the main loop submits it.
 *   3. Random numbers come only from the s_rng_t in s_sim_t (--seed), so the
 *      schedule and the payloads are the same for the same seed.
 *
 * Exit status: 0 when nothing was lost, nothing came twice unmarked, no
 * Error event came and no submission or poll failed, 1 otherwise, 2 for bad
 * usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "medroute.h"

#define S_MAX_TOWNSHIPS 12
#define S_MAX_PLAYERS (3 + S_MAX_TOWNSHIPS)
#define S_FINAL_WAIT_MS 10000
#define S_PROGRESS_MS 2000
#define S_CAPACITY_DAYS 3       /* today and the next two days */
#define S_CAPACITY_WAIT_MS 5000

/* The township ids of config/medroute.conf, in its order. */
static const char *const s_townships[S_MAX_TOWNSHIPS] = {
    "t-aihua",  "t-manwan",    "t-dachaoshan", "t-yongbao", "t-maolan",  "t-xingfu",
    "t-dazhai", "t-toudaoshui", "t-xiaojie",   "t-chafang", "t-lishu",   "t-houqing",
};

/* medroute.v1.Kind: index = enum value. */
enum { K_REFERRAL = 1, K_REFERRAL_UPDATE, K_IMAGING_REQUEST, K_IMAGING_REPORT, K_LAB_ORDER,
       K_LAB_RESULT, K_CAPACITY, K_CRITICAL_ACK, K_COUNT };
static const char *const s_kinds[K_COUNT] = {
    NULL, "referral", "referral_update", "imaging_request", "imaging_report", "lab_order",
    "lab_result", "capacity", "critical_ack",
};

/* Destination index of a message addressed to the broker itself. */
#define S_BROKER (-1)

typedef enum { ROLE_LEAD, ROLE_IMAGING, ROLE_LAB, ROLE_TOWNSHIP } s_role_t;

/* What a scheduled event of the day does. */
typedef enum { EV_UP_REFERRAL, EV_DOWN_REFERRAL, EV_IMAGING, EV_LAB } s_event_type_t;

/* ---- clinical tables (SAMPLE-COUNTY.md) ------------------------------------ */

typedef struct {
    const char *code, *display, *department, *service, *priority, *modality;
    int weight;
} s_reason_t;

static const s_reason_t s_up_reasons[] = {
    {"I21", "Acute myocardial infarction", "cardiology", "SERVICE_INPATIENT_BED", "stat", NULL, 6},
    {"I63", "Cerebral infarction", "neurology", "SERVICE_INPATIENT_BED", "stat", NULL, 8},
    {"I61", "Intracerebral haemorrhage", "neurosurgery", "SERVICE_INPATIENT_BED", "stat", NULL, 3},
    {"J18", "Pneumonia", "respiratory medicine", "SERVICE_INPATIENT_BED", "urgent", NULL, 10},
    {"J44", "COPD with acute exacerbation", "respiratory medicine", "SERVICE_INPATIENT_BED",
     "urgent", NULL, 8},
    {"K35", "Acute appendicitis", "general surgery", "SERVICE_INPATIENT_BED", "urgent", NULL, 5},
    {"K80", "Cholelithiasis", "general surgery", "SERVICE_SPECIALIST_CLINIC", "routine", NULL,
     20},
    {"O14", "Pre-eclampsia", "obstetrics", "SERVICE_INPATIENT_BED", "stat", NULL, 2},
    {"O60", "Preterm labour", "obstetrics", "SERVICE_INPATIENT_BED", "urgent", NULL, 2},
    {"S72", "Fracture of femur", "orthopaedics", "SERVICE_INPATIENT_BED", "urgent", NULL, 5},
    {"S06", "Intracranial injury", "neurosurgery", "SERVICE_INPATIENT_BED", "stat", NULL, 3},
    {"C34", "Malignant neoplasm of bronchus and lung", "oncology", "SERVICE_EXAM", "routine",
     "CT", 12},
    {"N18", "Chronic kidney disease", "nephrology", "SERVICE_SPECIALIST_CLINIC", "routine", NULL,
     20},
};
/* By weight, half of the up-referrals are urgent or stat (52 of 104), as
 * SAMPLE-COUNTY.md assumes. */
#define S_N_UP_REASONS (sizeof s_up_reasons / sizeof s_up_reasons[0])

static const s_reason_t s_down_reasons[] = {
    {"E11", "Type 2 diabetes mellitus", "general practice", "SERVICE_FOLLOW_UP", "routine", NULL,
     1},
    {"I10", "Essential hypertension", "general practice", "SERVICE_FOLLOW_UP", "routine", NULL, 1},
};

typedef struct {
    const char *modality, *body_parts[4], *question;
    int weight;
} s_modality_t;

/* DR ~55 a day, CT ~12, ultrasound a few (SAMPLE-COUNTY.md). */
static const s_modality_t s_modalities[] = {
    {"DR", {"CHEST", "CHEST", "KNEE", "LSPINE"}, "rule out pneumonia / fracture", 55},
    {"CT", {"HEAD", "CHEST", "ABDOMEN", "HEAD"}, "rule out haemorrhage / mass", 12},
    {"US", {"ABDOMEN", "THYROID", "PELVIS", "ABDOMEN"}, "abdominal pain, query gallstones", 10},
};

/* The lead hospital's daily capacity for referred patients (a county
 * people's hospital of some 600 beds): specialist clinic slots per
 * department, and admissions per ward for the departments that take
 * inpatient referrals.  Only departments that s_up_reasons names are
 * published; a department missing here gets no clinic or ward. */
typedef struct {
    const char *department;
    unsigned clinic_slots, ward_beds;
} s_department_t;

static const s_department_t s_departments[] = {
    {"cardiology", 40, 10},   {"neurology", 36, 12},        {"neurosurgery", 16, 5},
    {"respiratory medicine", 40, 12}, {"general surgery", 48, 10}, {"obstetrics", 30, 8},
    {"orthopaedics", 40, 8},  {"oncology", 24, 5},          {"nephrology", 24, 5},
};

/* Exam bookings per modality and day (预约检查). */
static const struct {
    const char *modality;
    unsigned capacity;
} s_exam_capacity[] = {{"DR", 120}, {"CT", 60}, {"MR", 24}, {"US", 80}};

/* Reserved share, in percent, before rounding up: the result is 20-25 %. */
#define S_RESERVE_PCT_CLINIC 22
#define S_RESERVE_PCT_BED 20
#define S_RESERVE_PCT_EXAM 25

typedef struct {
    const char *loinc, *display, *unit, *specimen;
    double ref_lo, ref_hi;
    double crit_lo, crit_hi; /* < 0: no critical limit on that side */
    int decimals;
} s_test_t;

static const s_test_t s_tests[] = {
    {"2823-3", "Potassium", "mmol/L", "serum", 3.5, 5.3, 2.8, 6.2, 1},
    {"2951-2", "Sodium", "mmol/L", "serum", 137, 147, 120, 160, 0},
    {"2345-7", "Glucose", "mmol/L", "serum", 3.9, 6.1, 2.2, 22.2, 1},
    {"718-7", "Haemoglobin", "g/L", "whole blood", 115, 175, 50, 200, 0},
    {"777-3", "Platelets", "10*9/L", "whole blood", 125, 350, 30, 1000, 0},
    {"6690-2", "White cells", "10*9/L", "whole blood", 3.5, 9.5, 1.0, 30, 1},
    {"2160-0", "Creatinine", "umol/L", "serum", 41, 111, -1, 707, 0},
    {"10839-9", "Troponin I", "ng/mL", "serum", 0, 0.04, -1, 0.04, 3},
    {"1742-6", "ALT", "U/L", "serum", 7, 40, -1, -1, 0},
    {"2075-0", "Chloride", "mmol/L", "serum", 99, 110, 80, 120, 0},
    {"22664-7", "Urea", "mmol/L", "serum", 2.9, 8.2, -1, -1, 1},
    {"1920-8", "AST", "U/L", "serum", 13, 35, -1, -1, 0},
    {"14631-6", "Bilirubin, total", "umol/L", "serum", 3.4, 20.5, -1, -1, 1},
    {"1751-7", "Albumin", "g/L", "serum", 40, 55, -1, -1, 1},
    {"789-8", "Red cells", "10*12/L", "whole blood", 3.8, 5.1, -1, -1, 2},
    {"4544-3", "Haematocrit", "%", "whole blood", 35, 45, -1, -1, 1},
};
#define S_N_TESTS ((int)(sizeof s_tests / sizeof s_tests[0]))

/* Panels as ordered at a township: indexes into s_tests, -1 ends.  A sample
 * takes two to four of them, a panel drawn twice giving nothing more
 * (s_lab_order): 8.0 items a sample on average, as in SAMPLE-COUNTY.md. */
static const int s_panels[][6] = {
    {0, 1, 9, 2, -1},       /* electrolytes + glucose */
    {3, 4, 5, 14, 15, -1},  /* blood count */
    {6, 10, 0, -1},         /* renal */
    {8, 11, 12, 13, -1},    /* liver */
    {7, -1},                /* cardiac */
};
#define S_N_PANELS (sizeof s_panels / sizeof s_panels[0])

/* ---- state ------------------------------------------------------------------ */

/* xorshift64*: small, deterministic, passed around (no global state). */
typedef struct {
    uint64_t s;
} s_rng_t;

typedef struct s_sim_t s_sim_t;

typedef struct {
    s_sim_t *sim;
    int idx;
    const char *id;
    s_role_t role;
    mr_client_t *client;        /* NULL while offline */
    unsigned sent[K_COUNT], received[K_COUNT];
    unsigned serial;            /* for referral / accession / order numbers */
} s_player_t;

typedef struct {
    char id[65];
    int src, dst, kind;
    bool acked, failed, queued_offline;
    bool to_broker;             /* addressed to the broker: delivered once stored */
    unsigned delivered;
} s_msg_t;

typedef struct {
    int64_t due_ms;             /* monotonic */
    int src, dst, kind;
    const char *priority;
    char corr[65];
    json_t *payload;            /* owned */
} s_todo_t;

typedef struct {
    int64_t at_ms;              /* since start */
    s_event_type_t type;
    int township;               /* player index */
} s_event_t;

typedef struct {
    const char *endpoint, *operator_ep, *report, *state_dir, *broker_id;
    long long duration_s, seed, townships, scale;
    bool verbose;
} s_opts_t;

struct s_sim_t {
    s_opts_t o;
    s_rng_t rng;
    s_player_t players[S_MAX_PLAYERS];
    int n_players;
    s_msg_t *msgs;
    size_t n_msgs, cap_msgs;
    uint32_t *index;            /* open addressing: 0 empty, else msgs index + 1 */
    size_t index_cap;
    s_todo_t *todo;
    size_t n_todo, cap_todo;
    s_event_t *events;
    size_t n_events, next_event;
    int offline;                /* player that loses its link, -1 none */
    int64_t t0, offline_at, online_at;
    bool went_offline, came_back;
    size_t n_acked, n_delivered;
    unsigned errors, duplicates, stale, misrouted, submit_failed, poll_failed;
    unsigned redelivered, dup_unmarked; /* deliveries marked redelivered; duplicates not */
    unsigned queued_offline, delivered_after_return;
    unsigned accepted, rejected, family_doctor, crit_values, crit_findings;
    unsigned walked, completed, readbacks, capacity_items;
    unsigned broker_received[K_COUNT];   /* messages to the broker itself, stored */
    char days[S_CAPACITY_DAYS][11];      /* the published local dates, YYYY-MM-DD */
    int64_t day_start_ms[S_CAPACITY_DAYS + 1]; /* their local midnights (+ the day after) */
    json_t *read_back;          /* "<township>/<accession or placer>" already read back */
    int rr;                     /* round-robin position for the idle poll */
};

static uint64_t s_rng_next(s_rng_t *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}

static uint32_t s_rng_below(s_rng_t *r, uint32_t n)
{
    return n ? (uint32_t)(s_rng_next(r) % n) : 0;
}

static double s_rng_unit(s_rng_t *r)
{
    return (double)(s_rng_next(r) >> 11) / 9007199254740992.0;
}

static bool s_rng_chance(s_rng_t *r, double p)
{
    return s_rng_unit(r) < p;
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double s_elapsed(const s_sim_t *sim)
{
    return (double)(s_mono_ms() - sim->t0) / 1000.0;
}

static int s_kind_index(const char *name)
{
    if (name == NULL)
        return -1;
    if (strncasecmp(name, "kind_", 5) == 0)
        name += 5;
    for (int i = 1; i < K_COUNT; i++)
        if (strcasecmp(name, s_kinds[i]) == 0)
            return i;
    return -1;
}

static int s_player_find(const s_sim_t *sim, const char *id)
{
    for (int i = 0; id && i < sim->n_players; i++)
        if (strcmp(sim->players[i].id, id) == 0)
            return i;
    return -1;
}

/* ---- the message table ------------------------------------------------------- */

static size_t s_hash(int src, const char *id)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)src;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (size_t)h;
}

static s_msg_t *s_msg_find(s_sim_t *sim, int src, const char *id)
{
    if (sim->index_cap == 0 || id == NULL)
        return NULL;
    for (size_t i = s_hash(src, id) & (sim->index_cap - 1);; i = (i + 1) & (sim->index_cap - 1)) {
        uint32_t slot = sim->index[i];
        if (slot == 0)
            return NULL;
        s_msg_t *m = &sim->msgs[slot - 1];
        if (m->src == src && strcmp(m->id, id) == 0)
            return m;
    }
}

static void s_index_put(s_sim_t *sim, size_t n)
{
    const s_msg_t *m = &sim->msgs[n];
    size_t i = s_hash(m->src, m->id) & (sim->index_cap - 1);
    while (sim->index[i] != 0)
        i = (i + 1) & (sim->index_cap - 1);
    sim->index[i] = (uint32_t)(n + 1);
}

/* Adds a record; NULL on allocation failure. */
static s_msg_t *s_msg_add(s_sim_t *sim, int src, int dst, int kind, const char *id)
{
    if (sim->n_msgs == sim->cap_msgs) {
        size_t cap = sim->cap_msgs ? sim->cap_msgs * 2 : 256;
        s_msg_t *m = realloc(sim->msgs, cap * sizeof *m);
        if (m == NULL)
            return NULL;
        sim->msgs = m;
        sim->cap_msgs = cap;
    }
    if ((sim->n_msgs + 1) * 2 > sim->index_cap) {
        size_t cap = sim->index_cap ? sim->index_cap * 2 : 512;
        uint32_t *ix = calloc(cap, sizeof *ix);
        if (ix == NULL)
            return NULL;
        free(sim->index);
        sim->index = ix;
        sim->index_cap = cap;
        for (size_t i = 0; i < sim->n_msgs; i++)
            s_index_put(sim, i);
    }
    s_msg_t *m = &sim->msgs[sim->n_msgs];
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    m->src = src;
    m->dst = dst;
    m->kind = kind;
    s_index_put(sim, sim->n_msgs);
    sim->n_msgs++;
    return m;
}

/* ---- submitting ------------------------------------------------------------- */

/* Queues an answer or a deferred message; takes payload.  0 or -ENOMEM. */
static int s_todo_push(s_sim_t *sim, int64_t due_ms, int src, int dst, int kind,
                       const char *priority, const char *corr, json_t *payload)
{
    if (payload == NULL)
        return -ENOMEM;
    if (sim->n_todo == sim->cap_todo) {
        size_t cap = sim->cap_todo ? sim->cap_todo * 2 : 64;
        s_todo_t *t = realloc(sim->todo, cap * sizeof *t);
        if (t == NULL) {
            json_decref(payload);
            return -ENOMEM;
        }
        sim->todo = t;
        sim->cap_todo = cap;
    }
    s_todo_t *t = &sim->todo[sim->n_todo++];
    t->due_ms = due_ms;
    t->src = src;
    t->dst = dst;
    t->kind = kind;
    t->priority = priority;
    snprintf(t->corr, sizeof t->corr, "%s", corr ? corr : "");
    t->payload = payload;
    return 0;
}

/* Submits one message from src (whose client must exist) to player dst, or
 * to the broker itself (dst = S_BROKER); takes payload.  Returns 0 and the
 * message's record in *out (may be NULL), or a negative errno. */
static int s_submit_msg(s_sim_t *sim, int src, int dst, int kind, const char *priority,
                        const char *corr, json_t *payload, s_msg_t **out)
{
    s_player_t *from = &sim->players[src];
    s_player_t *to = dst >= 0 ? &sim->players[dst] : NULL;
    const char *to_id = to ? to->id : sim->o.broker_id;
    char id[65] = "", err[256] = "";
    char *text = NULL;
    int rc = -ENOMEM;
    json_t *env = json_pack("{s:s, s:s, s:s, s:o}", "destination", to_id, "kind",
                            s_kinds[kind], "priority", priority, s_kinds[kind], payload);
    if (env == NULL)
        goto out;
    if (corr && corr[0] && json_object_set_new(env, "correlation_id", json_string(corr)) != 0)
        goto out;
    if ((text = json_dumps(env, JSON_COMPACT)) == NULL)
        goto out;
    rc = mr_client_submit_json(from->client, text, id, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "[%5.1fs] %s: cannot submit a %s: %s\n", s_elapsed(sim), from->id,
                s_kinds[kind], err[0] ? err : strerror(-rc));
        goto out;
    }
    s_msg_t *m = s_msg_add(sim, src, dst, kind, id);
    if (m == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    m->to_broker = to == NULL;
    m->queued_offline = to != NULL && to->client == NULL;
    sim->queued_offline += m->queued_offline;
    from->sent[kind]++;
    if (out != NULL)
        *out = m;
    if (sim->o.verbose)
        fprintf(stderr, "[%5.1fs] %-12s -> %-12s %-15s %s %s\n", s_elapsed(sim), from->id, to_id,
                s_kinds[kind], priority, id);
out:
    if (rc < 0)
        sim->submit_failed++;
    free(text);
    json_decref(env); /* payload went with env (or was never taken: see below) */
    return rc < 0 ? rc : 0;
}

static int s_submit(s_sim_t *sim, int src, int dst, int kind, const char *priority,
                    const char *corr, json_t *payload)
{
    return s_submit_msg(sim, src, dst, kind, priority, corr, payload, NULL);
}

/* Submits due answers whose sender is online; keeps the rest in order. */
static void s_drain_todo(s_sim_t *sim, int64_t now)
{
    size_t keep = 0;
    for (size_t i = 0; i < sim->n_todo; i++) {
        s_todo_t *t = &sim->todo[i];
        if (t->due_ms > now || sim->players[t->src].client == NULL) {
            sim->todo[keep++] = *t;
            continue;
        }
        (void)s_submit(sim, t->src, t->dst, t->kind, t->priority, t->corr, t->payload);
    }
    sim->n_todo = keep;
}

/* ---- payloads ---------------------------------------------------------------- */

static json_t *s_patient(s_sim_t *sim, const s_player_t *home)
{
    unsigned n = s_rng_below(&sim->rng, 100000);
    char resident[32], mrn[32], name[48], birth[16];
    snprintf(resident, sizeof resident, "DEMO-000000-%05u", n);
    snprintf(mrn, sizeof mrn, "DEMO-MRN-%05u", n);
    snprintf(name, sizeof name, "Demo Patient %05u", n);
    snprintf(birth, sizeof birth, "%04u-%02u-%02u", 1935 + s_rng_below(&sim->rng, 80),
             1 + s_rng_below(&sim->rng, 12), 1 + s_rng_below(&sim->rng, 28));
    char system[48];
    snprintf(system, sizeof system, "mrn:%s", home->id);
    return json_pack("{s:[{s:s,s:s},{s:s,s:s}], s:s, s:s, s:s}", "identifiers", "system",
                     "cn-resident-id", "value", resident, "system", system, "value", mrn, "name",
                     name, "birth_date", birth, "sex",
                     s_rng_chance(&sim->rng, 0.5) ? "SEX_FEMALE" : "SEX_MALE");
}

static const s_reason_t *s_pick_reason(s_rng_t *r, const s_reason_t *list, size_t n)
{
    int total = 0;
    for (size_t i = 0; i < n; i++)
        total += list[i].weight;
    int x = (int)s_rng_below(r, (uint32_t)total);
    for (size_t i = 0; i < n; i++) {
        if (x < list[i].weight)
            return &list[i];
        x -= list[i].weight;
    }
    return &list[0];
}

/* A referral from `from` (up: a township; down: the lead). */
static json_t *s_referral(s_sim_t *sim, s_player_t *from, const s_player_t *home,
                          const s_reason_t *why, bool family_doctor)
{
    char rid[48], doctor[48], summary[160];
    snprintf(rid, sizeof rid, "%s-R%05u", from->id, ++from->serial);
    snprintf(doctor, sizeof doctor, "Dr. Demo %s-%02u", from->id, 1 + s_rng_below(&sim->rng, 6));
    snprintf(summary, sizeof summary, "%s. Demo data, not a real patient.", why->display);
    long long deductible = why->service[8] == 'F' ? 0 : 100LL * s_rng_below(&sim->rng, 900);
    json_t *r = json_pack("{s:s, s:o, s:[{s:s,s:s,s:s}], s:s, s:s, s:b, s:I, s:s, s:s}",
                          "referral_id", rid, "patient", s_patient(sim, home), "reasons",
                          "system", "ICD-10", "code", why->code, "display", why->display,
                          "service", why->service, "department", why->department,
                          "family_doctor_contract", family_doctor, "deductible_paid_fen",
                          (json_int_t)deductible, "referring_practitioner", doctor,
                          "clinical_summary", summary);
    if (r && why->modality && json_object_set_new(r, "requested_modality",
                                                  json_string(why->modality)) != 0) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static json_t *s_imaging_request(s_sim_t *sim, s_player_t *from, const s_modality_t *m)
{
    char acc[48], uid[64], uri[160];
    snprintf(acc, sizeof acc, "%s-A%05u", from->id, ++from->serial);
    snprintf(uid, sizeof uid, "2.25.%" PRIu64 "%06u", s_rng_next(&sim->rng) >> 1,
             s_rng_below(&sim->rng, 1000000));
    snprintf(uri, sizeof uri, "https://pacs.%s.example/dicomweb/studies/%s", from->id, uid);
    return json_pack("{s:s, s:o, s:s, s:s, s:s, s:s, s:s}", "accession_number", acc, "patient",
                     s_patient(sim, from), "modality", m->modality, "body_part",
                     m->body_parts[s_rng_below(&sim->rng, 4)], "study_instance_uid", uid,
                     "clinical_question", m->question, "pacs_uri", uri);
}

static json_t *s_lab_order(s_sim_t *sim, s_player_t *from)
{
    char placer[48], specimen[32];
    snprintf(placer, sizeof placer, "%s-L%05u", from->id, ++from->serial);
    snprintf(specimen, sizeof specimen, "SP%010" PRIu64,
             (uint64_t)(s_rng_next(&sim->rng) % 10000000000ULL));
    bool chosen[S_N_TESTS] = {false};
    unsigned n_panels = 2 + s_rng_below(&sim->rng, 3);
    json_t *tests = json_array();
    const char *type = "serum";
    for (unsigned p = 0; p < n_panels; p++) {
        const int *panel = s_panels[s_rng_below(&sim->rng, S_N_PANELS)];
        for (int i = 0; i < 6 && panel[i] >= 0; i++) {
            if (chosen[panel[i]])
                continue;
            chosen[panel[i]] = true;
            const s_test_t *t = &s_tests[panel[i]];
            if (strcmp(t->specimen, "serum") != 0)
                type = t->specimen;
            if (json_array_append_new(tests, json_pack("{s:s,s:s,s:s}", "system", "LOINC",
                                                       "code", t->loinc, "display",
                                                       t->display)) != 0) {
                json_decref(tests);
                return NULL;
            }
        }
    }
    return json_pack("{s:s, s:o, s:{s:s,s:s,s:I}, s:o, s:s}", "placer_order_number", placer,
                     "patient", s_patient(sim, from), "specimen", "specimen_id", specimen, "type",
                     type, "collected_at_ms", (json_int_t)(s_wall_ms() - 600000), "tests", tests,
                     "clinical_info", "Demo order, not a real patient.");
}

/* ---- answers ----------------------------------------------------------------- */

/* ---- the published days and the capacity notice ------------------------------ */

/* Local midnight (process time zone) of the day add_days after t's day, Unix ms. */
static int64_t s_local_midnight_ms(time_t t, int add_days)
{
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL)
        return 0;
    tm.tm_mday += add_days;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_isdst = -1;
    time_t m = mktime(&tm);
    return m == (time_t)-1 ? 0 : (int64_t)m * 1000;
}

/* Today and the next days, local: their dates and midnights. */
static int s_plan_dates(s_sim_t *sim)
{
    time_t now = time(NULL);
    for (int d = 0; d <= S_CAPACITY_DAYS; d++) {
        sim->day_start_ms[d] = s_local_midnight_ms(now, d);
        if (sim->day_start_ms[d] == 0)
            return -EINVAL;
        if (d == S_CAPACITY_DAYS)
            break;
        time_t t = (time_t)(sim->day_start_ms[d] / 1000);
        struct tm tm;
        if (localtime_r(&t, &tm) == NULL || strftime(sim->days[d], sizeof sim->days[d],
                                                     "%Y-%m-%d", &tm) == 0)
            return -EINVAL;
    }
    return 0;
}

static bool s_reason_uses(const char *department, const char *service)
{
    for (size_t i = 0; i < S_N_UP_REASONS; i++)
        if (strcmp(s_up_reasons[i].department, department) == 0 &&
            (service == NULL || strcmp(s_up_reasons[i].service, service) == 0))
            return true;
    return false;
}

static unsigned s_reserve_of(unsigned capacity, unsigned pct)
{
    return (capacity * pct + 99) / 100; /* rounded up */
}

static int s_capacity_item(s_sim_t *sim, json_t *items, int day, const char *resource,
                           const char *unit, unsigned capacity, unsigned pct)
{
    /* The day's clinics, admissions and exam lists start at 08:00 local. */
    json_t *it = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "resource", resource, "unit", unit,
                           "date", sim->days[day], "capacity", (json_int_t)capacity, "reserved",
                           (json_int_t)s_reserve_of(capacity, pct), "slot_start_ms",
                           (json_int_t)(sim->day_start_ms[day] + 8 * 3600000LL));
    if (it == NULL || json_array_append_new(items, it) != 0)
        return -ENOMEM;
    sim->capacity_items++;
    return 0;
}

/* The lead's CapacityNotice for today and the next two days. */
static json_t *s_capacity_notice(s_sim_t *sim)
{
    json_t *items = json_array();
    if (items == NULL)
        return NULL;
    sim->capacity_items = 0;
    for (int d = 0; d < S_CAPACITY_DAYS; d++) {
        for (size_t i = 0; i < sizeof s_departments / sizeof s_departments[0]; i++) {
            const s_department_t *dep = &s_departments[i];
            if (s_reason_uses(dep->department, NULL) &&
                s_capacity_item(sim, items, d, "RESOURCE_CLINIC", dep->department,
                                dep->clinic_slots, S_RESERVE_PCT_CLINIC) != 0)
                goto fail;
            if (s_reason_uses(dep->department, "SERVICE_INPATIENT_BED") &&
                s_capacity_item(sim, items, d, "RESOURCE_BED", dep->department, dep->ward_beds,
                                S_RESERVE_PCT_BED) != 0)
                goto fail;
        }
        for (size_t i = 0; i < sizeof s_exam_capacity / sizeof s_exam_capacity[0]; i++)
            if (s_capacity_item(sim, items, d, "RESOURCE_EXAM", s_exam_capacity[i].modality,
                                s_exam_capacity[i].capacity, S_RESERVE_PCT_EXAM) != 0)
                goto fail;
    }
    return json_pack("{s:o}", "items", items);
fail:
    json_decref(items);
    return NULL;
}

/* ---- answers ----------------------------------------------------------------- */

/* Local midnight of the day `ahead` days after now's, or of the last
 * published day if that one is later.  With --duration up to a day, now is
 * on the first or second published day, so the day returned is after it. */
static int64_t s_day_ahead_ms(const s_sim_t *sim, int64_t now, int ahead)
{
    int64_t day = s_local_midnight_ms((time_t)(now / 1000), ahead);
    int64_t last = sim->day_start_ms[S_CAPACITY_DAYS - 1];
    return day == 0 || day > last ? last : day;
}

/* When the lead books a referred patient, counted from now (a long run
 * crosses midnight): a stat one within 30 min, an urgent one within 4 h, a
 * routine one between 08:30 and 16:00 on one of the next two days; never
 * past the last published day. */
static int64_t s_appointment(s_sim_t *sim, const char *priority)
{
    int64_t now = s_wall_ms(), at;
    if (strcmp(priority, "stat") == 0) {
        at = now + 30 * 60000LL;
    } else if (strcmp(priority, "urgent") == 0) {
        at = now + 4 * 3600000LL;
    } else {
        int ahead = 1 + (int)s_rng_below(&sim->rng, S_CAPACITY_DAYS - 1);
        at = s_day_ahead_ms(sim, now, ahead) + 8 * 3600000LL +
             30 * 60000LL * (1 + (int64_t)s_rng_below(&sim->rng, 16));
    }
    int64_t last = sim->day_start_ms[S_CAPACITY_DAYS] - 60000;
    return at < last ? at : last;
}

/* The lead hospital answers an up-referral: accepted with an appointment at
 * appt (location in loc), or (rarely, never for stat) rejected with a reason. */
static json_t *s_answer_referral(s_sim_t *sim, const json_t *ref, const char *priority,
                                 int64_t appt, char *loc, size_t loc_len, bool *accepted)
{
    const char *rid = json_string_value(json_object_get(ref, "referral_id"));
    const char *dept = json_string_value(json_object_get(ref, "department"));
    const char *service = json_string_value(json_object_get(ref, "service"));
    char reason[160];
    dept = dept ? dept : "outpatients";
    *accepted = false;
    if (strcmp(priority, "stat") != 0 && s_rng_chance(&sim->rng, 0.1)) {
        sim->rejected++;
        snprintf(reason, sizeof reason, "%s",
                 s_rng_chance(&sim->rng, 0.5)
                     ? "no bed available in the requested department; please call the duty desk"
                     : "referral incomplete: please attach the recent examination results");
        return json_pack("{s:s, s:s, s:s, s:s}", "referral_id", rid ? rid : "", "step",
                         "STEP_REJECTED", "reason", reason, "practitioner", "Dr. Demo yx-lead-duty");
    }
    sim->accepted++;
    *accepted = true;
    if (service && strcmp(service, "SERVICE_INPATIENT_BED") == 0)
        snprintf(loc, loc_len, "%s ward, bed %u", dept, 1 + s_rng_below(&sim->rng, 40));
    else if (service && strcmp(service, "SERVICE_EXAM") == 0)
        snprintf(loc, loc_len, "imaging department, %s room %u",
                 json_string_value(json_object_get(ref, "requested_modality"))
                     ? json_string_value(json_object_get(ref, "requested_modality"))
                     : "exam",
                 1 + s_rng_below(&sim->rng, 3));
    else
        snprintf(loc, loc_len, "%s clinic, room %u", dept, 1 + s_rng_below(&sim->rng, 12));
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "referral_id", rid ? rid : "", "step",
                     "STEP_ACCEPTED", "appointment_at_ms", (json_int_t)appt, "location", loc,
                     "practitioner", "Dr. Demo yx-lead-referral-desk");
}

/*
 * The lead walks an accepted up-referral on, as the compressed day allows:
 * a stat patient arrives at once (ARRIVED, IN_PROGRESS, mostly COMPLETED);
 * others are SCHEDULED and then some arrive, are seen and are COMPLETED with
 * a summary reference.  About a quarter stay ACCEPTED (the appointment is
 * still to come); none is cancelled.  Steps are queued after the acceptance.
 */
static int s_walk_referral(s_sim_t *sim, s_player_t *me, int to, const json_t *ref,
                           const char *priority, int64_t appt, const char *loc, int64_t due,
                           const char *corr)
{
    const char *rid = json_string_value(json_object_get(ref, "referral_id"));
    const char *service = json_string_value(json_object_get(ref, "service"));
    bool stat = strcmp(priority, "stat") == 0;
    double r = s_rng_unit(&sim->rng);
    const char *steps[4];
    int n = 0;
    if (stat) {
        steps[n++] = "STEP_ARRIVED";
        steps[n++] = "STEP_IN_PROGRESS";
        if (r >= 0.3)
            steps[n++] = "STEP_COMPLETED";
    } else if (r >= 0.25) {
        steps[n++] = "STEP_SCHEDULED";
        if (r >= 0.45) {
            steps[n++] = "STEP_ARRIVED";
            steps[n++] = "STEP_IN_PROGRESS";
        }
        if (r >= 0.6)
            steps[n++] = "STEP_COMPLETED";
    }
    if (n > 0)
        sim->walked++;
    rid = rid ? rid : "";
    for (int i = 0; i < n; i++) {
        json_t *u = json_pack("{s:s, s:s, s:s}", "referral_id", rid, "step", steps[i],
                              "practitioner", "Dr. Demo yx-lead-ward");
        if (u == NULL)
            return -ENOMEM;
        int rc = 0;
        if (strcmp(steps[i], "STEP_SCHEDULED") == 0) {
            rc = json_object_set_new(u, "appointment_at_ms", json_integer((json_int_t)appt)) ||
                 json_object_set_new(u, "location", json_string(loc));
        } else if (strcmp(steps[i], "STEP_COMPLETED") == 0) {
            bool bed = service && strcmp(service, "SERVICE_INPATIENT_BED") == 0;
            bool exam = service && strcmp(service, "SERVICE_EXAM") == 0;
            char uri[128];
            snprintf(uri, sizeof uri, "emr://yx-lead/%s/%s",
                     bed ? "discharge-summary" : exam ? "exam-report" : "visit-summary", rid);
            rc = json_object_set_new(
                u, "summary",
                json_pack("{s:s, s:s, s:s}", "uri", uri, "content_type", "application/pdf",
                          "title", bed    ? "Discharge summary (demo)"
                                   : exam ? "Examination report (demo)"
                                          : "Specialist visit summary (demo)"));
            sim->completed++;
        }
        if (rc != 0) {
            json_decref(u);
            return -ENOMEM;
        }
        /* Strictly later than the step before: the todo list keeps its
         * order, and each step must reach the broker after the previous one. */
        due += 120 + s_rng_below(&sim->rng, 130);
        rc = s_todo_push(sim, due, me->idx, to, K_REFERRAL_UPDATE, priority, corr, u);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A township reads back a critical lab value or imaging finding once
 * (危急值回读): critical_ack to the centre that reported it.  A CT's
 * preliminary and final reports both carry the flag; only the first is read
 * back (a second read-back would be refused). */
static int s_read_back(s_sim_t *sim, s_player_t *me, int to, int kind, const json_t *body,
                       const char *corr)
{
    bool imaging = kind == K_IMAGING_REPORT;
    const char *ref = json_string_value(
        json_object_get(body, imaging ? "accession_number" : "placer_order_number"));
    char text[256], key[160], by[64];
    if (imaging) {
        if (!json_is_true(json_object_get(body, "critical_finding")))
            return 0;
        snprintf(text, sizeof text, "critical finding read back to the reading physician: %.160s",
                 json_string_value(json_object_get(body, "impression"))
                     ? json_string_value(json_object_get(body, "impression"))
                     : "(no impression)");
    } else {
        const json_t *crit = NULL, *item;
        size_t i;
        json_array_foreach(json_object_get(body, "items"), i, item) {
            if (crit == NULL && json_is_true(json_object_get(item, "critical")))
                crit = item;
        }
        if (crit == NULL)
            return 0;
        const char *name = json_string_value(json_object_get(json_object_get(crit, "test"),
                                                             "display"));
        const char *value = json_string_value(json_object_get(crit, "value"));
        const char *unit = json_string_value(json_object_get(crit, "unit"));
        snprintf(text, sizeof text, "critical value read back to the lab: %s %s %s",
                 name ? name : "result", value ? value : "?", unit ? unit : "");
    }
    if (ref == NULL || ref[0] == '\0')
        return 0;
    snprintf(key, sizeof key, "%s/%s", me->id, ref);
    if (json_object_get(sim->read_back, key) != NULL)
        return 0;
    if (json_object_set_new(sim->read_back, key, json_true()) != 0)
        return -ENOMEM;
    snprintf(by, sizeof by, "Dr. Demo %s-duty", me->id);
    json_t *ack = json_pack("{s:s, s:s, s:s}", imaging ? "accession_number" : "placer_order_number",
                            ref, "read_back_by", by, "read_back_text", text);
    /* A failure is the caller's error (s_answer); only a queued one counts. */
    int rc = s_todo_push(sim, s_mono_ms() + 20 + s_rng_below(&sim->rng, 100), me->idx, to,
                         K_CRITICAL_ACK, "stat", corr, ack);
    sim->readbacks += rc == 0;
    return rc;
}

/* The township's steps for a down-referral: it accepts the patient, sees
 * them arrive, and confirms the follow-up (which completes the referral).
 * The follow-up visit is booked when it accepts: the broker refuses an
 * appointment on the later steps. */
static json_t *s_answer_down_referral(s_sim_t *sim, const json_t *ref, const s_player_t *me,
                                      const char *step)
{
    const char *rid = json_string_value(json_object_get(ref, "referral_id"));
    char loc[96];
    snprintf(loc, sizeof loc, "%s general practice clinic", me->id);
    /* Drawn for every step, so that the run's random sequence stays as it was. */
    json_int_t appt =
        (json_int_t)(s_wall_ms() + 86400000LL * (3 + s_rng_below(&sim->rng, 11)));
    json_t *u = json_pack("{s:s, s:s, s:s}", "referral_id", rid ? rid : "", "step", step,
                          "location", loc);
    if (u != NULL && strcmp(step, "STEP_ACCEPTED") == 0 &&
        json_object_set_new(u, "appointment_at_ms", json_integer(appt)) != 0) {
        json_decref(u);
        return NULL;
    }
    return u;
}

static json_t *s_imaging_report(s_sim_t *sim, const json_t *req, const char *status,
                                bool critical)
{
    const char *part = json_string_value(json_object_get(req, "body_part"));
    char findings[200], impression[160];
    part = part ? part : "region";
    if (critical) {
        snprintf(findings, sizeof findings, "%s: findings of an acute process requiring "
                 "immediate attention (demo).", part);
        snprintf(impression, sizeof impression, "CRITICAL: acute finding in %s; clinician "
                 "notified by phone (demo).", part);
    } else {
        snprintf(findings, sizeof findings, "%s: no acute abnormality demonstrated (demo).", part);
        snprintf(impression, sizeof impression, "No acute abnormality of %s.", part);
    }
    char reader[48];
    snprintf(reader, sizeof reader, "Dr. Demo yx-imaging-%02u", 1 + s_rng_below(&sim->rng, 5));
    const char *acc = json_string_value(json_object_get(req, "accession_number"));
    const char *uid = json_string_value(json_object_get(req, "study_instance_uid"));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:I}", "accession_number",
                     acc ? acc : "", "study_instance_uid", uid ? uid : "", "status", status,
                     "findings", findings, "impression", impression, "reading_physician", reader,
                     "critical_finding", critical, "reported_at_ms", (json_int_t)s_wall_ms());
}

static const s_test_t *s_test_by_loinc(const char *code)
{
    for (int i = 0; code && i < S_N_TESTS; i++)
        if (strcmp(s_tests[i].loinc, code) == 0)
            return &s_tests[i];
    return NULL;
}

/* One result item: mostly normal, some out of range, rarely critical. */
static json_t *s_lab_item(s_sim_t *sim, const s_test_t *t)
{
    double span = t->ref_hi - t->ref_lo, v;
    double x = s_rng_unit(&sim->rng);
    bool has_crit = t->crit_lo >= 0 || t->crit_hi >= 0;
    if (has_crit && x < 0.03) {
        v = t->crit_hi >= 0 && (t->crit_lo < 0 || s_rng_chance(&sim->rng, 0.5))
                ? t->crit_hi * (1.05 + 0.3 * s_rng_unit(&sim->rng)) + 0.01
                : t->crit_lo * (0.6 + 0.3 * s_rng_unit(&sim->rng));
    } else if (x < 0.15) {
        v = s_rng_chance(&sim->rng, 0.5) ? t->ref_hi + span * 0.2 * s_rng_unit(&sim->rng)
                                         : t->ref_lo - span * 0.2 * s_rng_unit(&sim->rng);
    } else {
        v = t->ref_lo + span * (0.1 + 0.8 * s_rng_unit(&sim->rng));
    }
    if (v < 0)
        v = 0;
    /* Keep the flag consistent with the printed value. */
    char value[32], range[32];
    snprintf(value, sizeof value, "%.*f", t->decimals, v);
    v = strtod(value, NULL);
    snprintf(range, sizeof range, "%.*f-%.*f", t->decimals, t->ref_lo, t->decimals, t->ref_hi);
    const char *flag = "ABNORMAL_NORMAL";
    bool critical = false;
    if (t->crit_lo >= 0 && v < t->crit_lo) {
        flag = "ABNORMAL_CRITICAL_LOW";
        critical = true;
    } else if (t->crit_hi >= 0 && v > t->crit_hi) {
        flag = "ABNORMAL_CRITICAL_HIGH";
        critical = true;
    } else if (v < t->ref_lo) {
        flag = "ABNORMAL_LOW";
    } else if (v > t->ref_hi) {
        flag = "ABNORMAL_HIGH";
    }
    sim->crit_values += critical;
    return json_pack("{s:{s:s,s:s,s:s}, s:s, s:s, s:s, s:s, s:b}", "test", "system", "LOINC",
                     "code", t->loinc, "display", t->display, "value", value, "unit", t->unit,
                     "reference_range", range, "abnormal", flag, "critical", critical);
}

static json_t *s_lab_result(s_sim_t *sim, s_player_t *lab, const json_t *order)
{
    const char *placer = json_string_value(json_object_get(order, "placer_order_number"));
    char filler[32];
    snprintf(filler, sizeof filler, "YXLAB-%06u", ++lab->serial);
    json_t *items = json_array();
    size_t i;
    const json_t *code;
    json_array_foreach(json_object_get(order, "tests"), i, code) {
        const s_test_t *t = s_test_by_loinc(json_string_value(json_object_get(code, "code")));
        if (t != NULL && json_array_append_new(items, s_lab_item(sim, t)) != 0) {
            json_decref(items);
            return NULL;
        }
    }
    return json_pack("{s:s, s:s, s:s, s:o, s:s, s:I}", "placer_order_number",
                     placer ? placer : "", "filler_order_number", filler, "status",
                     "RESULT_FINAL", "items", items, "verified_by", "Demo lab technologist 07",
                     "reported_at_ms", (json_int_t)s_wall_ms());
}

/* A priority name as the answer's: "PRIORITY_STAT" -> "stat". */
static const char *s_priority_of(const json_t *env)
{
    const char *p = json_string_value(json_object_get(env, "priority"));
    if (p && strcasestr(p, "stat"))
        return "stat";
    if (p && strcasestr(p, "urgent"))
        return "urgent";
    return "routine";
}

/* Queues this player's answer to a first delivery, if its role answers it. */
static void s_answer(s_sim_t *sim, s_player_t *me, int src, int kind, const mr_delivery_t *d)
{
    bool answers = (me->role == ROLE_LEAD && kind == K_REFERRAL) ||
                   (me->role == ROLE_TOWNSHIP &&
                    (kind == K_REFERRAL || kind == K_IMAGING_REPORT || kind == K_LAB_RESULT)) ||
                   (me->role == ROLE_IMAGING && kind == K_IMAGING_REQUEST) ||
                   (me->role == ROLE_LAB && kind == K_LAB_ORDER);
    if (!answers)
        return;
    json_error_t jerr;
    char *text = mr_delivery_json(d);
    json_t *env = text ? json_loads(text, 0, &jerr) : NULL;
    free(text);
    const json_t *body = json_object_get(env, s_kinds[kind]);
    if (body == NULL) {
        fprintf(stderr, "[%5.1fs] %s: cannot read delivery %" PRIu64 "\n", s_elapsed(sim), me->id,
                d->seq);
        sim->errors++;
        json_decref(env);
        return;
    }
    const char *prio = s_priority_of(env);
    /* Turnaround compressed: stat within ~0.1 s, the rest within ~0.6 s. */
    int64_t due = s_mono_ms() + (strcmp(prio, "stat") == 0 ? 20 + s_rng_below(&sim->rng, 100)
                                                           : 50 + s_rng_below(&sim->rng, 550));
    int rc = 0;
    switch (me->role) {
    case ROLE_LEAD: {
        int64_t appt = s_appointment(sim, prio);
        char loc[128];
        bool accepted;
        rc = s_todo_push(sim, due, me->idx, src, K_REFERRAL_UPDATE, prio, d->message_id,
                         s_answer_referral(sim, body, prio, appt, loc, sizeof loc, &accepted));
        if (rc == 0 && accepted)
            rc = s_walk_referral(sim, me, src, body, prio, appt, loc, due, d->message_id);
        break;
    }
    case ROLE_TOWNSHIP: {
        if (kind != K_REFERRAL) {
            rc = s_read_back(sim, me, src, kind, body, d->message_id);
            break;
        }
        static const char *const steps[] = {"STEP_ACCEPTED", "STEP_ARRIVED",
                                            "STEP_FOLLOW_UP_CONFIRMED"};
        for (int i = 0; i < 3 && rc == 0; i++)
            rc = s_todo_push(sim, due + i * 150, me->idx, src, K_REFERRAL_UPDATE, "routine",
                             d->message_id, s_answer_down_referral(sim, body, me, steps[i]));
        break;
    }
    case ROLE_IMAGING: {
        const char *mod = json_string_value(json_object_get(body, "modality"));
        bool ct = mod && strcasestr(mod, "CT") != NULL;
        bool critical = s_rng_chance(&sim->rng, ct ? 0.06 : 0.02);
        sim->crit_findings += critical;
        if (ct)
            rc = s_todo_push(sim, due, me->idx, src, K_IMAGING_REPORT, prio, d->message_id,
                             s_imaging_report(sim, body, "REPORT_PRELIMINARY", critical));
        if (rc == 0)
            rc = s_todo_push(sim, due + (ct ? 300 + s_rng_below(&sim->rng, 500) : 0), me->idx,
                             src, K_IMAGING_REPORT, prio, d->message_id,
                             s_imaging_report(sim, body, "REPORT_FINAL", critical));
        break;
    }
    case ROLE_LAB:
        rc = s_todo_push(sim, due, me->idx, src, K_LAB_RESULT, prio, d->message_id,
                         s_lab_result(sim, me, body));
        break;
    }
    if (rc < 0) {
        fprintf(stderr, "[%5.1fs] %s: out of memory for an answer\n", s_elapsed(sim), me->id);
        sim->errors++;
    }
    json_decref(env);
}

/* ---- events from the broker ------------------------------------------------- */

/* An Ack marks its message stored, once.  One with a code comes after the
 * message was reported refused (an Error, which stays counted): a copy sent
 * before that refusal of the moment was stored all the same, and the broker
 * delivers it, so it is no longer failed but expected at its destination. */
static void s_on_ack(s_sim_t *sim, const s_player_t *me, const mr_event_t *ev)
{
    s_msg_t *m = s_msg_find(sim, me->idx, ev->message_id);
    if (m == NULL || m->acked || (m->failed && ev->code == 0))
        return;
    if (m->failed) {
        m->failed = false;
        fprintf(stderr, "[%5.1fs] %s: %s, refused (%s), was stored all the same\n",
                s_elapsed(sim), me->id, m->id, ev->code_name ? ev->code_name : "?");
    }
    m->acked = true;
    sim->n_acked++;
    /* The broker is the destination: stored is delivered. */
    if (m->to_broker && m->delivered++ == 0) {
        sim->n_delivered++;
        sim->broker_received[m->kind]++;
    }
}

static int on_event(mr_client_t *client, const mr_event_t *ev, void *arg)
{
    s_player_t *me = arg;
    s_sim_t *sim = me->sim;
    (void)client;
    switch (ev->type) {
    case MR_EVENT_CONNECTED:
        if (sim->o.verbose || ev->pending)
            fprintf(stderr, "[%5.1fs] %s connected, %" PRIu64 " waiting for it\n", s_elapsed(sim),
                    me->id, ev->pending);
        return 0;
    case MR_EVENT_ACK:
        s_on_ack(sim, me, ev);
        return 0;
    case MR_EVENT_ERROR: {
        s_msg_t *m = s_msg_find(sim, me->idx, ev->message_id);
        if (m != NULL)
            m->failed = true;
        sim->errors++;
        fprintf(stderr, "[%5.1fs] %s: ERROR %s (%d): %s [message %s]\n", s_elapsed(sim), me->id,
                ev->code_name ? ev->code_name : "?", ev->code, ev->reason ? ev->reason : "",
                ev->message_id && ev->message_id[0] ? ev->message_id : "-");
        return 0;
    }
    case MR_EVENT_DELIVERY:
        break;
    default:
        return 0;
    }
    const mr_delivery_t *d = ev->delivery;
    sim->redelivered += d->redelivered;
    int src = s_player_find(sim, d->source);
    s_msg_t *m = src >= 0 ? s_msg_find(sim, src, d->message_id) : NULL;
    if (m == NULL) {
        /* Left over from an earlier run against the same store. */
        sim->stale++;
        return 0;
    }
    if (m->dst != me->idx) {
        sim->misrouted++;
        fprintf(stderr, "[%5.1fs] %s: received %s meant for %s\n", s_elapsed(sim), me->id,
                m->id, m->to_broker ? sim->o.broker_id : sim->players[m->dst].id);
        return 0;
    }
    if (m->delivered++ > 0) {
        sim->duplicates++;
        if (!d->redelivered) {
            sim->dup_unmarked++;
            fprintf(stderr, "[%5.1fs] %s: received %s from %s a second time, not marked "
                    "redelivered\n", s_elapsed(sim), me->id, m->id, sim->players[src].id);
        }
        return 0;
    }
    sim->n_delivered++;
    if (m->queued_offline && sim->came_back)
        sim->delivered_after_return++;
    int kind = s_kind_index(d->kind);
    if (kind < 0)
        kind = m->kind;
    me->received[kind]++;
    s_answer(sim, me, src, kind, d);
    return 0;
}

/* ---- the day's schedule ----------------------------------------------------- */

static int s_event_cmp(const void *a, const void *b)
{
    const s_event_t *x = a, *y = b;
    return (x->at_ms > y->at_ms) - (x->at_ms < y->at_ms);
}

/* Per-day volumes of SAMPLE-COUNTY.md, times --scale, spread over the first
 * 85 % of the run so that answers fit in. */
static int s_plan_day(s_sim_t *sim)
{
    const struct {
        s_event_type_t type;
        unsigned per_day;
    } vol[] = {{EV_UP_REFERRAL, 30}, {EV_DOWN_REFERRAL, 10}, {EV_IMAGING, 77}, {EV_LAB, 12}};
    /* The lead, not knowing, down-refers patients to the township that is
     * offline: these must wait in the broker until it returns. */
    size_t n_offline = sim->offline >= 0 ? 3 * (size_t)sim->o.scale : 0;
    size_t n = n_offline;
    for (size_t i = 0; i < sizeof vol / sizeof vol[0]; i++)
        n += vol[i].per_day * (size_t)sim->o.scale;
    sim->events = calloc(n, sizeof *sim->events);
    if (sim->events == NULL)
        return -ENOMEM;
    int64_t span = sim->o.duration_s * 1000;
    int n_town = sim->n_players - 3;
    for (size_t i = 0; i < sizeof vol / sizeof vol[0]; i++) {
        for (size_t k = 0; k < vol[i].per_day * (size_t)sim->o.scale; k++) {
            s_event_t *e = &sim->events[sim->n_events++];
            e->type = vol[i].type;
            e->at_ms = (int64_t)((0.02 + 0.83 * s_rng_unit(&sim->rng)) * (double)span);
            e->township = 3 + (int)s_rng_below(&sim->rng, (uint32_t)n_town);
        }
    }
    for (size_t k = 0; k < n_offline; k++) {
        s_event_t *e = &sim->events[sim->n_events++];
        e->type = EV_DOWN_REFERRAL;
        e->township = sim->offline;
        e->at_ms = sim->offline_at +
                   (sim->online_at - sim->offline_at) * (int64_t)(k + 1) / (int64_t)(n_offline + 1);
    }
    qsort(sim->events, sim->n_events, sizeof *sim->events, s_event_cmp);
    return 0;
}

/* One scheduled event: builds the message and submits it, or queues it while
 * its sender is offline (it goes out when the link is back). */
static void s_fire(s_sim_t *sim, const s_event_t *e)
{
    s_player_t *town = &sim->players[e->township];
    s_player_t *lead = &sim->players[0];
    int src = e->township, dst = 0, kind = K_REFERRAL;
    const char *prio = "routine";
    json_t *payload = NULL;
    switch (e->type) {
    case EV_UP_REFERRAL: {
        const s_reason_t *why = s_pick_reason(&sim->rng, s_up_reasons, S_N_UP_REASONS);
        bool fd = s_rng_chance(&sim->rng, 0.5);
        sim->family_doctor += fd;
        prio = why->priority;
        /* About half urgent or stat: some "routine" reasons come in urgent. */
        if (strcmp(prio, "routine") == 0 && s_rng_chance(&sim->rng, 0.2))
            prio = "urgent";
        payload = s_referral(sim, town, town, why, fd);
        break;
    }
    case EV_DOWN_REFERRAL:
        src = 0;
        dst = e->township;
        payload = s_referral(sim, lead, town, s_pick_reason(&sim->rng, s_down_reasons, 2),
                             s_rng_chance(&sim->rng, 0.5));
        break;
    case EV_IMAGING: {
        const s_modality_t *m = &s_modalities[0];
        int x = (int)s_rng_below(&sim->rng, 77);
        for (size_t i = 0; i < 3; x -= s_modalities[i].weight, i++)
            if (x < s_modalities[i].weight) {
                m = &s_modalities[i];
                break;
            }
        dst = 1;
        kind = K_IMAGING_REQUEST;
        prio = s_rng_chance(&sim->rng, 0.15) ? "urgent" : "routine";
        payload = s_imaging_request(sim, town, m);
        break;
    }
    case EV_LAB:
        dst = 2;
        kind = K_LAB_ORDER;
        prio = s_rng_chance(&sim->rng, 0.1) ? "stat" : "routine";
        payload = s_lab_order(sim, town);
        break;
    }
    if (sim->players[src].client != NULL) {
        (void)s_submit(sim, src, dst, kind, prio, NULL, payload); /* counts its failure */
        return;
    }
    if (s_todo_push(sim, 0, src, dst, kind, prio, NULL, payload) != 0) {
        /* Never submitted, as a failed submission: it must fail the run. */
        sim->submit_failed++;
        fprintf(stderr, "[%5.1fs] %s: out of memory for a %s to send once online\n",
                s_elapsed(sim), sim->players[src].id, s_kinds[kind]);
    }
}

/* ---- clients --------------------------------------------------------------- */

static int s_connect(s_sim_t *sim, s_player_t *p)
{
    mr_client_opts_t o = {.endpoint = sim->o.endpoint, .facility = p->id,
                          .state_dir = sim->o.state_dir, .client_name = "medroute-sim"};
    p->client = mr_client_new(&o);
    if (p->client == NULL) {
        fprintf(stderr, "medroute-sim: cannot create the client of %s\n", p->id);
        return -EIO;
    }
    return 0;
}

/* Polls p's client: what mr_client_poll returns.  A failure is counted (it
 * fails the run: events may have been missed) and told the first time. */
static int s_poll(s_sim_t *sim, s_player_t *p, int timeout_ms)
{
    int rc = mr_client_poll(p->client, timeout_ms, on_event, p);
    if (rc < 0 && sim->poll_failed++ == 0)
        fprintf(stderr, "medroute-sim: %s: poll: %s\n", p->id, strerror(-rc));
    return rc;
}

/* Polls every online client once without waiting; when nothing at all came,
 * waits briefly on one of them (round-robin) instead of spinning. */
static void s_poll_round(s_sim_t *sim)
{
    int total = 0;
    for (int i = 0; i < sim->n_players; i++) {
        s_player_t *p = &sim->players[i];
        if (p->client == NULL)
            continue;
        int rc = s_poll(sim, p, 0);
        total += rc > 0 ? rc : 0;
    }
    if (total > 0)
        return;
    for (int k = 0; k < sim->n_players; k++) {
        s_player_t *p = &sim->players[sim->rr++ % sim->n_players];
        if (p->client != NULL) {
            (void)s_poll(sim, p, 2); /* counts its failure */
            return;
        }
    }
}

/* The township loses its link: let its outbox drain first (its unsent work
 * would otherwise die with the client when no --state-dir is given). */
static void s_go_offline(s_sim_t *sim)
{
    s_player_t *p = &sim->players[sim->offline];
    int64_t until = s_mono_ms() + 2000;
    while (mr_client_unacked(p->client) > 0 && s_mono_ms() < until)
        s_poll_round(sim);
    mr_client_destroy(&p->client);
    sim->went_offline = true;
    fprintf(stderr, "[%5.1fs] %s loses its link (client closed); the broker keeps its messages\n",
            s_elapsed(sim), p->id);
}

static void s_come_back(s_sim_t *sim)
{
    s_player_t *p = &sim->players[sim->offline];
    sim->came_back = true;
    if (s_connect(sim, p) != 0) {
        sim->errors++;
        return;
    }
    fprintf(stderr, "[%5.1fs] %s is back online (%u messages were sent to it meanwhile)\n",
            s_elapsed(sim), p->id, sim->queued_offline);
}

static bool s_all_done(const s_sim_t *sim)
{
    if (sim->next_event < sim->n_events || sim->n_todo > 0 ||
        (sim->offline >= 0 && !sim->came_back))
        return false;
    for (int i = 0; i < sim->n_players; i++)
        if (sim->players[i].client && mr_client_unacked(sim->players[i].client) > 0)
            return false;
    for (size_t i = 0; i < sim->n_msgs; i++) {
        const s_msg_t *m = &sim->msgs[i];
        if (!m->failed && (!m->acked || m->delivered == 0))
            return false;
    }
    return true;
}

/* The day, then the wait for the last Acks and deliveries. */
static void s_run(s_sim_t *sim)
{
    int64_t end = sim->t0 + sim->o.duration_s * 1000, wait_from = 0, next_progress = S_PROGRESS_MS;
    for (;;) {
        int64_t now = s_mono_ms(), at = now - sim->t0;
        if (sim->offline >= 0 && !sim->went_offline && at >= sim->offline_at)
            s_go_offline(sim);
        if (sim->went_offline && !sim->came_back && at >= sim->online_at)
            s_come_back(sim);
        while (sim->next_event < sim->n_events && sim->events[sim->next_event].at_ms <= at)
            s_fire(sim, &sim->events[sim->next_event++]);
        s_drain_todo(sim, now);
        s_poll_round(sim);
        if (at >= next_progress) {
            fprintf(stderr, "[%5.1fs] sent %zu, acked %zu, delivered %zu\n", s_elapsed(sim),
                    sim->n_msgs, sim->n_acked, sim->n_delivered);
            next_progress += S_PROGRESS_MS;
        }
        if (now < end)
            continue;
        if (wait_from == 0) {
            wait_from = now;
            fprintf(stderr, "[%5.1fs] the day is over; waiting for the last Acks and deliveries\n",
                    s_elapsed(sim));
        }
        if (s_all_done(sim) || now - wait_from >= S_FINAL_WAIT_MS)
            break;
    }
}

/* ---- the report -------------------------------------------------------------- */

static const char *const s_short[K_COUNT] = {NULL,         "referral",   "ref_update",
                                             "img_request", "img_report", "lab_order",
                                             "lab_result",  "capacity",   "crit_ack"};

static void s_print_table(const s_sim_t *sim)
{
    unsigned tot_s[K_COUNT] = {0}, tot_r[K_COUNT] = {0};
    printf("\n%-14s", "FACILITY");
    for (int k = 1; k < K_COUNT; k++)
        printf(" %11s", s_short[k]);
    printf(" %11s\n%-14s", "total", "(sent/recv)");
    for (int k = 1; k <= K_COUNT; k++)
        printf(" %11s", "");
    printf("\n");
    for (int i = 0; i < sim->n_players; i++) {
        const s_player_t *p = &sim->players[i];
        unsigned s = 0, r = 0;
        char cell[32];
        printf("%-14s", p->id);
        for (int k = 1; k < K_COUNT; k++) {
            snprintf(cell, sizeof cell, "%u/%u", p->sent[k], p->received[k]);
            printf(" %11s", cell);
            s += p->sent[k];
            r += p->received[k];
            tot_s[k] += p->sent[k];
            tot_r[k] += p->received[k];
        }
        snprintf(cell, sizeof cell, "%u/%u", s, r);
        printf(" %11s\n", cell);
    }
    /* The broker itself: what was addressed to it (the capacity notice). */
    unsigned r = 0;
    char cell[32];
    printf("%-14.14s", sim->o.broker_id);
    for (int k = 1; k < K_COUNT; k++) {
        snprintf(cell, sizeof cell, "0/%u", sim->broker_received[k]);
        printf(" %11s", cell);
        r += sim->broker_received[k];
        tot_r[k] += sim->broker_received[k];
    }
    snprintf(cell, sizeof cell, "0/%u", r);
    printf(" %11s\n", cell);
    unsigned s = 0;
    r = 0;
    printf("%-14s", "all");
    for (int k = 1; k < K_COUNT; k++) {
        snprintf(cell, sizeof cell, "%u/%u", tot_s[k], tot_r[k]);
        printf(" %11s", cell);
        s += tot_s[k];
        r += tot_r[k];
    }
    snprintf(cell, sizeof cell, "%u/%u", s, r);
    printf(" %11s\n\n", cell);
}

static size_t s_lost(const s_sim_t *sim, size_t *unacked)
{
    size_t lost = 0;
    *unacked = 0;
    for (size_t i = 0; i < sim->n_msgs; i++) {
        const s_msg_t *m = &sim->msgs[i];
        lost += m->acked && m->delivered == 0;
        *unacked += !m->acked && !m->failed;
    }
    return lost;
}

/* {"referral": N, ...}: counts[k] under each kind's name, then their
 * "total" when with_total.  Caller owns the result; NULL without memory. */
static json_t *s_kind_counts(const unsigned counts[K_COUNT], bool with_total)
{
    json_t *o = json_object();
    unsigned total = 0;
    for (int k = 1; o != NULL && k < K_COUNT; k++) {
        total += counts[k];
        if (json_object_set_new(o, s_kinds[k], json_integer(counts[k])) != 0)
            goto fail;
    }
    if (o != NULL && with_total && json_object_set_new(o, "total", json_integer(total)) != 0)
        goto fail;
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* {"facility": ID, "sent": {...}, "received": {...}}; NULL without memory. */
static json_t *s_facility_report(const s_player_t *p)
{
    json_t *f = json_pack("{s:s}", "facility", p->id);
    if (f == NULL || json_object_set_new(f, "sent", s_kind_counts(p->sent, true)) != 0 ||
        json_object_set_new(f, "received", s_kind_counts(p->received, true)) != 0) {
        json_decref(f);
        return NULL;
    }
    return f;
}

static int s_write_report(const s_sim_t *sim, size_t lost, size_t unacked)
{
    json_t *facs = json_array();
    json_t *root = json_pack("{s:I, s:I, s:I, s:I, s:o}", "seed", (json_int_t)sim->o.seed,
                             "duration_s", (json_int_t)sim->o.duration_s, "townships",
                             (json_int_t)sim->o.townships, "scale", (json_int_t)sim->o.scale,
                             "facilities", facs);
    int rc = -ENOMEM;
    if (root == NULL)
        goto out;
    for (int i = 0; i < sim->n_players; i++)
        if (json_array_append_new(facs, s_facility_report(&sim->players[i])) != 0)
            goto out;
    json_t *sum = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "sent",
                            (json_int_t)sim->n_msgs, "acked", (json_int_t)sim->n_acked,
                            "delivered", (json_int_t)sim->n_delivered, "lost", (json_int_t)lost,
                            "unacked", (json_int_t)unacked, "errors",
                            (json_int_t)(sim->errors + sim->misrouted), "duplicates",
                            (json_int_t)sim->duplicates, "duplicates_unmarked",
                            (json_int_t)sim->dup_unmarked, "redelivered",
                            (json_int_t)sim->redelivered, "stale", (json_int_t)sim->stale,
                            "submit_failed", (json_int_t)sim->submit_failed, "poll_failed",
                            (json_int_t)sim->poll_failed);
    if (json_object_set_new(root, "summary", sum) != 0)
        goto out;
    json_t *broker = json_pack("{s:s}", "broker_id", sim->o.broker_id);
    if (json_object_set_new(root, "broker", broker) != 0 ||
        json_object_set_new(broker, "received", s_kind_counts(sim->broker_received, false)) != 0 ||
        json_object_set_new(
            root, "clinical",
            json_pack("{s:[s,s,s], s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "capacity_days",
                      sim->days[0], sim->days[1], sim->days[2], "capacity_items",
                      (json_int_t)sim->capacity_items, "accepted", (json_int_t)sim->accepted,
                      "rejected", (json_int_t)sim->rejected, "walked", (json_int_t)sim->walked,
                      "completed", (json_int_t)sim->completed, "critical_values",
                      (json_int_t)(sim->crit_values + sim->crit_findings), "read_backs",
                      (json_int_t)sim->readbacks)) != 0)
        goto out;
    if (sim->offline >= 0 &&
        json_object_set_new(root, "offline",
                            json_pack("{s:s, s:I, s:I}", "facility",
                                      sim->players[sim->offline].id, "queued",
                                      (json_int_t)sim->queued_offline, "delivered_after_return",
                                      (json_int_t)sim->delivered_after_return)) != 0)
        goto out;
    rc = json_dump_file(root, sim->o.report, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -EIO;
out:
    if (rc < 0)
        fprintf(stderr, "medroute-sim: cannot write %s: %s\n", sim->o.report, strerror(-rc));
    json_decref(root);
    return rc;
}

/* One counter of the broker's status as " name=value": a 64-bit value comes
 * as a decimal string (protobuf's JSON), a smaller one as a number. */
static void s_print_counter(const json_t *c)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    const json_t *v = json_object_get(c, "value");
    if (json_is_string(v))
        printf(" %s=%s", name ? name : "?", json_string_value(v));
    else
        printf(" %s=%lld", name ? name : "?",
               json_is_integer(v) ? (long long)json_integer_value(v) : 0LL);
}

/* The broker's own view, for comparison; a failure here is only a warning. */
static void s_print_broker(const s_sim_t *sim)
{
    mr_operator_t *op = mr_operator_new(sim->o.operator_ep);
    char *reply = NULL, err[128];
    json_t *j = NULL;
    json_error_t jerr;
    if (op == NULL || mr_operator_call_json(op, "{\"status\":{}}", &reply, 3000, err, sizeof err) != 0 ||
        (j = json_loads(reply, 0, &jerr)) == NULL) {
        fprintf(stderr, "medroute-sim: (no status from the operator endpoint %s)\n",
                sim->o.operator_ep);
        goto out;
    }
    printf("broker counters:");
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(json_object_get(j, "status"), "counters"), i, c)
        s_print_counter(c);
    printf("\n");
out:
    json_decref(j);
    free(reply);
    mr_operator_destroy(&op);
}

/* 0 when nothing was lost, nothing came twice unmarked, no Error came and
 * nothing failed (a submission, a message queued to be sent once online, a
 * poll); 1 otherwise. */
static int s_exit_status(const s_sim_t *sim, size_t lost, size_t unacked)
{
    return lost == 0 && unacked == 0 && sim->errors == 0 && sim->misrouted == 0 &&
                   sim->dup_unmarked == 0 && sim->submit_failed == 0 && sim->poll_failed == 0 &&
                   sim->queued_offline == sim->delivered_after_return
               ? 0
               : 1;
}

/* ---- setup ------------------------------------------------------------------- */

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: medroute-sim [--endpoint URL] [--operator URL] [--broker-id ID]\n"
            "                    [--duration SECONDS] [--seed N] [--townships N] [--scale N]\n"
            "                    [--state-dir DIR] [--report FILE] [--verbose]\n"
            "Plays yx-lead, yx-imaging, yx-lab and N townships for one compressed day.\n"
            "  --broker-id the broker's id, where the lead's capacity notice goes\n"
            "              (default yx-medroute, as in the embedded config)\n"
            "  --duration  length of the day in seconds (default 20)\n"
            "  --townships how many of the 12 sample townships (default 10)\n"
            "  --scale     multiply the daily volumes (default 1)\n"
            "  --state-dir give the clients an on-disk outbox and seen-set\n"
            "  --report    write the final table as JSON to FILE\n"
            "Exit status 0 when every acknowledged message was delivered, none came twice\n"
            "unmarked (not flagged redelivered), no Error came and no submission or poll\n"
            "failed.\n");
}

static int s_parse_opts(s_opts_t *o, int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'}, {"operator", required_argument, NULL, 'o'},
        {"duration", required_argument, NULL, 'd'}, {"seed", required_argument, NULL, 's'},
        {"townships", required_argument, NULL, 'n'}, {"report", required_argument, NULL, 'r'},
        {"scale", required_argument, NULL, 'x'},    {"state-dir", required_argument, NULL, 'S'},
        {"verbose", no_argument, NULL, 'v'},        {"help", no_argument, NULL, 'h'},
        {"broker-id", required_argument, NULL, 'b'}, {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "e:o:d:s:n:r:x:S:b:vh", opts, NULL)) != -1) {
        long long *num = NULL, lo = 0, hi = 0;
        switch (c) {
        case 'e': o->endpoint = optarg; break;
        case 'o': o->operator_ep = optarg; break;
        case 'r': o->report = optarg; break;
        case 'S': o->state_dir = optarg; break;
        case 'b': o->broker_id = optarg; break;
        case 'v': o->verbose = true; break;
        case 'd': num = &o->duration_s, lo = 1, hi = 86400; break;
        case 's': num = &o->seed, lo = 0, hi = LLONG_MAX; break;
        case 'n': num = &o->townships, lo = 1, hi = S_MAX_TOWNSHIPS; break;
        case 'x': num = &o->scale, lo = 1, hi = 1000; break;
        case 'h': s_usage(stdout); return 1;
        default: s_usage(stderr); return -EINVAL;
        }
        if (num != NULL) {
            char *end = NULL;
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (errno || *end || end == optarg || v < lo || v > hi) {
                fprintf(stderr, "medroute-sim: --%s wants a number in %lld..%lld\n",
                        opts[c == 'd' ? 2 : c == 's' ? 3 : c == 'n' ? 4 : 6].name, lo, hi);
                return -EINVAL;
            }
            *num = v;
        }
    }
    if (optind != argc) {
        s_usage(stderr);
        return -EINVAL;
    }
    return 0;
}

static void s_sim_close(s_sim_t *sim)
{
    for (int i = 0; i < sim->n_players; i++)
        mr_client_destroy(&sim->players[i].client);
    for (size_t i = 0; i < sim->n_todo; i++)
        json_decref(sim->todo[i].payload);
    free(sim->todo);
    json_decref(sim->read_back);
    free(sim->events);
    free(sim->index);
    free(sim->msgs);
}

/* The lead publishes its capacity and waits for the broker's Ack: the day
 * starts only once the ledger exists.  0, or -1 when it was refused or not
 * acknowledged in time. */
static int s_publish_capacity(s_sim_t *sim)
{
    json_t *notice = s_capacity_notice(sim);
    s_msg_t *m = NULL;
    if (notice == NULL ||
        s_submit_msg(sim, 0, S_BROKER, K_CAPACITY, "routine", NULL, notice, &m) != 0) {
        fprintf(stderr, "medroute-sim: yx-lead could not submit its capacity notice\n");
        return -1;
    }
    size_t mi = (size_t)(m - sim->msgs); /* the table may move while polling */
    int64_t until = s_mono_ms() + S_CAPACITY_WAIT_MS;
    while (!sim->msgs[mi].acked && !sim->msgs[mi].failed && s_mono_ms() < until)
        s_poll_round(sim);
    if (!sim->msgs[mi].acked) {
        fprintf(stderr, "medroute-sim: the capacity notice to %s was %s\n", sim->o.broker_id,
                sim->msgs[mi].failed ? "refused" : "not acknowledged within 5 s");
        return -1;
    }
    printf("medroute-sim: yx-lead published capacity for %s, %s and %s to %s: %u resources "
           "(clinic slots per department, beds per ward, exams per modality), 20-25 %% "
           "reserved for family-doctor referrals\n",
           sim->days[0], sim->days[1], sim->days[2], sim->o.broker_id, sim->capacity_items);
    return fflush(stdout) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    /* A standalone program: its local dates are the county's (the daemon's
     * embedded config uses the same zone). */
    if (setenv("TZ", "Asia/Shanghai", 1) != 0)
        return 1;
    tzset();
    s_sim_t sim;
    memset(&sim, 0, sizeof sim);
    sim.o = (s_opts_t){.endpoint = "tcp://127.0.0.1:7700", .operator_ep = "tcp://127.0.0.1:7701",
                       .broker_id = "yx-medroute", .duration_s = 20, .seed = 1, .townships = 10,
                       .scale = 1};
    int rc = s_parse_opts(&sim.o, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    sim.rng.s = (uint64_t)sim.o.seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    const struct {
        const char *id;
        s_role_t role;
    } fixed[] = {{"yx-lead", ROLE_LEAD}, {"yx-imaging", ROLE_IMAGING}, {"yx-lab", ROLE_LAB}};
    for (int i = 0; i < 3 + sim.o.townships; i++) {
        s_player_t *p = &sim.players[sim.n_players++];
        p->sim = &sim;
        p->idx = i;
        p->id = i < 3 ? fixed[i].id : s_townships[i - 3];
        p->role = i < 3 ? fixed[i].role : ROLE_TOWNSHIP;
    }
    /* The remote one: t-lishu when it plays, else the last township. */
    sim.offline = s_player_find(&sim, "t-lishu");
    if (sim.offline < 0)
        sim.offline = sim.n_players - 1;
    sim.offline_at = sim.o.duration_s * 350;
    sim.online_at = sim.o.duration_s * 650;

    int status = 1;
    if ((sim.read_back = json_object()) == NULL || s_plan_dates(&sim) != 0 ||
        s_plan_day(&sim) != 0) {
        fprintf(stderr, "medroute-sim: out of memory\n");
        goto out;
    }
    for (int i = 0; i < sim.n_players; i++)
        if (s_connect(&sim, &sim.players[i]) != 0)
            goto out;
    for (int i = 0; i < sim.n_players; i++) {
        if (mr_client_wait_connected(sim.players[i].client, 5000) != 0) {
            fprintf(stderr, "medroute-sim: %s: no Welcome from %s within 5 s\n",
                    sim.players[i].id, sim.o.endpoint);
            goto out;
        }
    }
    printf("medroute-sim: %d facilities, %zu scheduled requests over %llds (seed %lld); "
           "%s goes offline at %.1fs and returns at %.1fs\n",
           sim.n_players, sim.n_events, sim.o.duration_s, sim.o.seed,
           sim.players[sim.offline].id, (double)sim.offline_at / 1000,
           (double)sim.online_at / 1000);
    if (fflush(stdout) != 0)
        goto out;
    sim.t0 = s_mono_ms();
    if (s_publish_capacity(&sim) != 0)
        goto out;
    sim.t0 = s_mono_ms();
    s_run(&sim);

    size_t unacked, lost = s_lost(&sim, &unacked);
    for (size_t i = 0, shown = 0; i < sim.n_msgs && shown < 10; i++) {
        const s_msg_t *m = &sim.msgs[i];
        if (m->acked && m->delivered == 0 && ++shown)
            fprintf(stderr, "medroute-sim: LOST: %s %s -> %s (%s), acknowledged, never delivered\n",
                    m->id, sim.players[m->src].id,
                    m->to_broker ? sim.o.broker_id : sim.players[m->dst].id, s_kinds[m->kind]);
    }
    unsigned up = sim.players[0].received[K_REFERRAL];
    unsigned down = sim.players[0].sent[K_REFERRAL];
    s_print_table(&sim);
    printf("referrals: up %u (family-doctor %u), down %u, down/up %.2f; accepted %u, "
           "rejected %u\n",
           up, sim.family_doctor, down, up ? (double)down / up : 0.0, sim.accepted, sim.rejected);
    printf("lead walked %u accepted up-referrals on (%u completed with a summary), cancelled "
           "none\n",
           sim.walked, sim.completed);
    printf("critical lab values %u, critical imaging findings %u, read back by the townships "
           "%u\n",
           sim.crit_values, sim.crit_findings, sim.readbacks);
    if (sim.offline >= 0)
        printf("%s offline %.1fs-%.1fs: %u messages sent to it meanwhile, %u delivered after "
               "it returned\n",
               sim.players[sim.offline].id, (double)sim.offline_at / 1000,
               (double)sim.online_at / 1000, sim.queued_offline, sim.delivered_after_return);
    s_print_broker(&sim);
    printf("errors %u, misrouted %u, duplicates %u (%u not marked redelivered), redelivered "
           "%u, stale %u, unacked %zu, submit failures %u, poll failures %u\n",
           sim.errors, sim.misrouted, sim.duplicates, sim.dup_unmarked, sim.redelivered,
           sim.stale, unacked, sim.submit_failed, sim.poll_failed);
    printf("sent %zu, acked %zu, delivered %zu, lost %zu\n", sim.n_msgs, sim.n_acked,
           sim.n_delivered, lost);
    if (fflush(stdout) != 0)
        goto out;
    if (sim.o.report && s_write_report(&sim, lost, unacked) != 0)
        goto out;
    status = s_exit_status(&sim, lost, unacked);
out:
    s_sim_close(&sim);
    return status;
}
