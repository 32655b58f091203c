/*
 * conf.h - the daemon's configuration, loaded with libconfig.
 *
 * A conf_t is plain data: built once by conf_load_*, read by everyone, freed
 * by conf_destroy.  Unknown keys, wrong types and out-of-range values are
 * errors, each reported as "file:line: key: reason".
 */
#ifndef MR_CONF_H
#define MR_CONF_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mr_codec.h"
#include "registry.h"

/* An operator tool's key and role (CURVE on the operator endpoint). */
typedef struct {
    char *name;
    char *public_key;      /* Z85, 40 characters */
    bool admin;            /* else read-only */
} conf_operator_t;

typedef struct {
    char *broker_id;
    char *facility_endpoint;   /* ZeroMQ endpoint facilities connect to */
    char *operator_endpoint;   /* ZeroMQ endpoint for operator tools */
    char *http_listen;         /* HOST:PORT for /metrics and /healthz; NULL = off */
    char *data_dir;            /* store directory; relative to the working directory */
    bool insecure;             /* plaintext links; only allowed on loopback */
    char *server_key_file;     /* the broker's CURVE secret key (medroute keygen) */
    char *server_secret_key;   /* read from server_key_file at load, Z85 */
    conf_operator_t *operators;
    size_t n_operators;
    uint32_t handshake_ms;     /* CURVE handshake must finish within this */
    uint32_t rate_per_s;       /* messages a facility may send per second (sustained) */
    uint32_t rate_burst;       /* ... and in a burst */
    uint32_t queue_quota;      /* pending messages a destination may hold */
    char *log_level;

    /* limits */
    uint32_t max_message_bytes;     /* larger frames get ERROR_TOO_LARGE */
    uint32_t max_inflight;          /* deliveries per facility awaiting DeliveryAck */
    uint32_t heartbeat_interval_ms;
    uint32_t heartbeat_timeout_ms;  /* silence this long: the facility is offline */
    uint32_t redelivery_timeout_ms; /* unacknowledged delivery is sent again */

    /* store */
    bool sync_full;            /* synchronous=FULL (default) or NORMAL */
    uint32_t batch_max;        /* group commit: messages per transaction at most */
    uint32_t batch_ms;         /* group commit: a batch closes after this long */
    uint32_t retention_days;   /* delivered messages kept this long */
    uint32_t restart_scan_rows; /* an open reads at most ~this many rows but the pinned */
    uint32_t stall_after_s;    /* a request waiting this long: the store is stalled (/healthz) */

    /* time-to-live per kind, seconds; index by Kind */
    uint32_t ttl_s[MR_KIND_MAX + 1];

    /* referrals and the reserved-capacity ledger */
    double min_reserved_share;       /* refuse a capacity notice reserving less (0.20) */
    bool allow_low_reserve;          /* accept it anyway, with a warning */
    uint32_t reserve_cutoff_s;       /* unclaimed reserve released this long before the slots */
    uint32_t appointment_grace_s;    /* a referral with an appointment stays open this long past it */
    char *timezone;                  /* local time for days and periods */

    /* service levels: past these, an escalation event */
    uint32_t sla_urgent_accept_s;
    uint32_t sla_stat_accept_s;
    uint32_t sla_imaging_final_s;
    uint32_t sla_stat_imaging_final_s;
    uint32_t sla_lab_result_s;
    uint32_t sla_stat_lab_result_s;
    uint32_t sla_critical_readback_s;

    /* indicator targets and warning thresholds, by name */
    struct indicator_conf_s *indicators;
    size_t n_indicators;

    facility_t *facilities;
    size_t n_facilities;
} conf_t;

/*
 * Loads and validates a config file.  On failure returns NULL and writes
 * every problem found, one per line, into err.  Caller owns the result.
 */
conf_t *conf_load_file(const char *path, char *err, size_t errlen);
/* The same from text; name is used in messages in place of a file name. */
conf_t *conf_load_string(const char *text, const char *name, char *err, size_t errlen);
void conf_destroy(conf_t **self_p);

/* The security settings hold together: CURVE needs the broker's key unless
 * insecure = true, and plaintext only loopback (or ipc/inproc) endpoints and
 * a loopback http_listen.  0, or -EINVAL with the reason. */
int conf_check_security(const conf_t *c, char *err, size_t errlen);
/* True for an endpoint on this machine only: ipc://, inproc://, or
 * tcp://HOST:PORT with HOST an IPv4 address in 127.0.0.0/8, localhost or
 * [::1], and PORT a number or *. */
bool conf_endpoint_is_local(const char *endpoint);
/* Reads http_listen as the HTTP listener binds it: HOST:PORT, HOST an IPv4
 * address or localhost, PORT 1..65535 in digits only, nothing after it.
 * 0 and the address in *sa (may be NULL), or -EINVAL. */
int conf_http_listen_parse(const char *listen, struct sockaddr_in *sa);
/* The operator whose public key (Z85) is key, or NULL. */
const conf_operator_t *conf_operator_of(const conf_t *c, const char *key);

#endif
