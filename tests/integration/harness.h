/*
 * harness.h - start the real medrouted for an integration test.
 *
 * Each daemon gets its own temporary directory (config, store, log) and a
 * free loopback TCP port pair that it keeps across restarts, so tests run
 * in parallel and clients reconnect to a restarted daemon.
 */
#ifndef MR_TEST_HARNESS_H
#define MR_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "medroute.h"

#define MRT_ENV_MAX 6

typedef struct {
    pid_t pid;
    char dir[256];
    char conf_path[300];
    char log_path[300];
    char facility_ep[300];
    char operator_ep[300];
    char http_listen[64];      /* 127.0.0.1:PORT of /metrics and /healthz */
    int http_port;
    int starts;                /* server.ready lines in the log before this start */
    char env[MRT_ENV_MAX][300]; /* extra NAME=VALUE for the daemon's environment */
    bool use_ipc;              /* ipc:// endpoints in its directory instead of loopback TCP
                                  (for tests that restart the daemon often: a TCP port
                                  freed by a kill could be taken by another test) */
} mrt_daemon_t;

/* The sample county's facilities, as a libconfig list (for configs). */
extern const char *const mrt_facilities_conf;

/*
 * Writes a config into a new temporary directory and starts medrouted.
 * extra is appended to the config (libconfig settings, may be NULL).
 * Waits until the operator endpoint answers.  0 or -1.
 */
int mrt_daemon_start(mrt_daemon_t *d, const char *extra);
/* The same with a facilities list of the caller's; insecure = false leaves
 * the security settings to extra (server_key_file, keys in the registry). */
int mrt_daemon_start_with(mrt_daemon_t *d, const char *facilities, const char *extra,
                          bool insecure);
/* Rewrites the running daemon's config as mrt_daemon_start_with writes it
 * (same endpoints and directory).  0 or -1. */
int mrt_daemon_rewrite(mrt_daemon_t *d, const char *facilities, const char *extra,
                       bool insecure);
/* SIGHUP, and waits (10 s at most) for the daemon's answer in its log: 0 if
 * it reloaded, 1 if it refused the new config, -1 if neither came. */
int mrt_daemon_reload(mrt_daemon_t *d);
/* Starts the daemon again on the same directory and ports. */
int mrt_daemon_restart(mrt_daemon_t *d);
/* SIGTERM and wait; returns the exit status or -1. */
int mrt_daemon_stop(mrt_daemon_t *d);
/* SIGKILL and wait. */
void mrt_daemon_kill(mrt_daemon_t *d);
/* Stops it (if running) and removes the directory. */
void mrt_daemon_cleanup(mrt_daemon_t *d);
/* Counts lines of the daemon's log containing needle. */
int mrt_log_count(const mrt_daemon_t *d, const char *needle);

/* A client of facility; state in DIR/state-<tag> when tag is not NULL. */
mr_client_t *mrt_client(const mrt_daemon_t *d, const char *facility, const char *state_tag);

/* Polls c until pred(arg) is true or timeout. true if it became true. */
bool mrt_poll_until(mr_client_t *c, int timeout_ms, bool (*pred)(void *), void *arg,
                    mr_handler_t h, void *harg);

/* Operator call (10 s at most); returns the reply JSON (caller frees) or NULL. */
char *mrt_operator(const mrt_daemon_t *d, const char *request_json);
char *mrt_operator_wait(const mrt_daemon_t *d, const char *request_json, int timeout_ms);

long long mrt_now_ms(void);

/* A CURVE key pair (Z85), made with mr_keygen into dir/NAME.key and .pub. */
typedef struct {
    char pub[41], sec[41];
} mrt_keys_t;
int mrt_keygen(const char *dir, const char *name, mrt_keys_t *k);

/* A lab order to yx-lab with message id and placer number id, its
 * clinical_info pad bytes of 'x', as JSON for mr_client_submit_json (the
 * caller frees it). */
char *mrt_lab_order_json(const char *id, size_t pad);

/*
 * Sends {destination: to, kind, priority, <kind>: payload} and waits for the
 * answer: 0 on Ack, else the broker's error code (reason copied to
 * reason_out, 200 bytes, when not NULL); -1 on no answer.
 */
int mrt_send(mr_client_t *c, const char *to, const char *kind, const char *priority,
             const char *payload, char *reason_out);

/* The operator status's flow counter of that name (a zero value, which the
 * JSON leaves out, is 0); -1 when there is no such counter or no answer. */
long long mrt_counter(const mrt_daemon_t *d, const char *name);

/*
 * Submits n lab orders to `to` without waiting for their Acks (a burst),
 * numbered "<prefix>-0" .. "<prefix>-(n-1)".  0, or the first submit's error.
 */
int mrt_submit_orders(mr_client_t *c, const char *to, const char *prefix, int n);

/* GET path from the daemon's HTTP endpoint; the body (caller frees) or NULL. */
char *mrt_http_get(const mrt_daemon_t *d, const char *path);
/* The same, waiting timeout_s at most for the answer; *status is its HTTP
 * status (0: no answer; status may be NULL). */
char *mrt_http_fetch(const mrt_daemon_t *d, const char *path, int timeout_s, int *status);
/* Lines in a file (0 if it does not exist). */
long mrt_count_lines(const char *path);

#endif
