/*
 * medroute.h - the medroute client library: the one public header.
 *
 * A facility's software links libmedroute to send messages to other
 * facilities through medrouted and to receive what is sent to it.
 *
 *   mr_client_t *c = mr_client_new(&opts);        connects and says Hello
 *   mr_client_send_json(c, json, &res, 10000);    one message, waits for its Ack
 *   mr_client_poll(c, 1000, on_event, arg);       receives deliveries, Acks, Errors
 *   mr_client_destroy(&c);
 *
 * Guarantees (see docs/delivery.md):
 *   - A message is kept by the client (in memory, and on disk in state_dir
 *     when given) until the broker's Ack; it is resent with the same
 *     message id after a reconnect or an Ack time-out.  The broker routes
 *     it once.
 *   - A delivery is handed to the handler once: its id is recorded (on disk
 *     when state_dir is given) when the handler returns 0, before the
 *     DeliveryAck is sent, and later copies are acknowledged and dropped.
 *     If the process dies inside the handler, the message comes again with
 *     `redelivered` set.
 *
 * Threads: a client is used by one thread at a time.  Errors are negative
 * errno values; constructors return NULL.  Strings in events are valid only
 * during the callback.
 */
#ifndef MEDROUTE_H
#define MEDROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MR_CLIENT_VERSION "0.1.0"

typedef struct mr_client_t mr_client_t;
struct ProtobufCMessage;

typedef struct {
    const char *endpoint;      /* broker's facility endpoint, e.g. "tcp://127.0.0.1:7700" */
    const char *facility;      /* our facility id, as in the broker's registry */
    const char *state_dir;     /* outbox and seen-set on disk; NULL: memory only */
    const char *client_name;   /* for the broker's logs; NULL: "libmedroute" */
    uint32_t max_inflight;     /* deliveries we accept unacknowledged; 0: broker default */
    uint32_t ack_timeout_ms;   /* resend an unacknowledged message after this; 0: 10000 */
    /* CURVE (all three, Z85: 40 characters each, else mr_client_new fails)
     * or plaintext (all NULL; the broker must allow it) */
    const char *server_public_key;
    const char *public_key;
    const char *secret_key;
} mr_client_opts_t;

typedef enum {
    MR_EVENT_CONNECTED = 1,    /* the broker welcomed us (after every (re)connect) */
    MR_EVENT_ACK,              /* a message we sent is stored by the broker (once per
                                  submission; also after its ERROR: see code) */
    MR_EVENT_ERROR,            /* the broker refused a message, or reports a dead letter */
    MR_EVENT_DELIVERY,         /* a message for us */
} mr_event_type_t;

typedef struct {
    uint64_t seq;              /* the broker's number for it */
    const char *message_id;
    const char *source;
    const char *destination;
    const char *kind;          /* "referral", "lab_result", ... */
    const char *priority;      /* "routine", "urgent", "stat" */
    const char *correlation_id;
    bool redelivered;          /* it may have reached the application before: its
                                  handler was interrupted (state_dir), or, without
                                  state_dir, the broker had sent it before; or it
                                  was stored more than 7 days ago, longer than the
                                  client remembers the messages it handled */
    uint32_t attempt;          /* the broker's send count */
    /* The decoded medroute.v1.Envelope (a Medroute__V1__Envelope: include
     * "medroute/v1/envelope.pb-c.h" to read its fields), or use
     * mr_delivery_json. */
    const struct ProtobufCMessage *envelope;
} mr_delivery_t;

typedef struct {
    mr_event_type_t type;
    const char *message_id;    /* ACK, ERROR: the message concerned ("" if unknown) */
    uint64_t seq;              /* ACK: broker's seq; ERROR: seq of a dead letter */
    bool duplicate;            /* ACK: the broker had it already */
    /* ERROR: medroute.v1.ErrorCode.  ACK: 0, or the code of the final
     * refusal this message was reported with before (an ERROR event): a
     * copy sent before that refusal came was stored all the same (a
     * refusal of the moment, e.g. QUEUE_FULL), and the broker will
     * deliver it.  Told once, for the last 1,024 such refusals, within
     * one process (docs/delivery.md, point 5). */
    int code;
    const char *code_name;     /* ERROR, ACK with a code: "UNKNOWN_DESTINATION", ... */
    const char *reason;        /* ERROR */
    uint64_t pending;          /* CONNECTED: messages waiting for us */
    const mr_delivery_t *delivery; /* DELIVERY */
} mr_event_t;

/*
 * Event handler.  For MR_EVENT_DELIVERY, return 0 once the message is safely
 * taken (it is then recorded as seen and acknowledged); any other value
 * leaves it unacknowledged, and the broker sends it again later.  The
 * return value of other events is ignored.  A handler may submit messages
 * (mr_client_submit_*) but must not poll the same client (mr_client_poll,
 * mr_client_send_json): a redelivery of the message in hand would be handed
 * over again while it runs.
 */
typedef int (*mr_handler_t)(mr_client_t *client, const mr_event_t *event, void *arg);

/* Creates the client, opens its state, connects and sends Hello.  NULL on
 * failure (bad options, state_dir unusable). Caller owns the result.
 * An outbox row in state_dir that the library cannot send (damaged outside
 * it: no message id, one over 64 bytes or not UTF-8, a body without that
 * id) does not stop it: the row is moved to the table outbox_damaged of the
 * state file, kept, never sent, and reported as an ERROR event, INVALID,
 * naming the row and why (message_id "" if the id is what is damaged), to
 * the first mr_client_poll with a handler, once; mr_client_outbox_damaged
 * counts them at every start until they are dealt with (deleted from that
 * table).  A row that cannot be moved stays in the outbox, unsent, and is
 * reported once at each start that finds it (not kept for a later start). */
mr_client_t *mr_client_new(const mr_client_opts_t *opts);
/* Closes the socket and state; unacknowledged messages stay in state_dir. */
void mr_client_destroy(mr_client_t **self_p);

/*
 * Queues a message given as the JSON of a medroute.v1.Envelope (field names
 * as in the .proto; enums by name, e.g. "kind": "referral").  Missing
 * source, message_id and created_at_ms are filled in.  The message id used is
 * copied to id_out (at least 65 bytes) when not NULL.  0, -EINVAL with a
 * reason in err, or -EEXIST or -EMSGSIZE (see mr_client_submit_packed;
 * reason in err).
 * The Ack or Error arrives as an event.
 */
int mr_client_submit_json(mr_client_t *self, const char *json, char *id_out, char *err,
                          size_t errlen);
/* Queues an already packed Envelope whose source is ours and message_id set
 * (1..64 bytes of UTF-8; -EINVAL if not, or if that message_id cannot be
 * read off envelope's top-level fields).  -EMSGSIZE, not queued, if its frame
 * exceeds the broker's limit (Welcome.max_message_bytes) once a Welcome has
 * told it; one queued before that is taken out of the outbox at the Welcome
 * and reported as an ERROR event TOO_LARGE naming it, never sent.
 * Submitting an id already waiting for its Ack (in the outbox, on disk with
 * state_dir) with the same content does nothing and returns 0; "the same"
 * as for the broker: equal but for created_at_ms.  Other content under that
 * id returns -EEXIST and is not queued: the queued version stays and is the
 * one sent.  Once the id is acknowledged, the broker answers a resubmission
 * (Ack duplicate, or Error CONFLICT for other content).  A message sent more
 * than once (Ack time-out, reconnect) may draw an answer per copy: a late
 * one names the id but answers an earlier submission.  Each submission's
 * frames carry its own tag, which the broker echoes (docs/protocol.md 4.6):
 * an answer with another tag settles nothing and is not reported, but for
 * the first Ack of a submission reported refused while other copies of it
 * were unanswered: one of them was stored after all, and that Ack is
 * reported as an ACK event whose code is the refusal's.  From a
 * broker that predates the tag, an Ack of the seq that other content was
 * acknowledged as is dropped for a resubmission, and the broker's CONFLICT
 * is its answer; the library remembers this for the last 1,024 ids
 * acknowledged after more than one send (16 MiB of content at most; see
 * docs/delivery.md, Limits).  An EXPIRED notice (a dead letter, with its
 * seq) is reported and settles no submission. */
int mr_client_submit_packed(mr_client_t *self, const char *message_id, const void *envelope,
                            size_t len);

/* Result of a synchronous send. */
typedef struct {
    char message_id[65];
    uint64_t seq;
    bool duplicate;
    int code;                  /* 0 on Ack, else medroute.v1.ErrorCode */
    char reason[256];
} mr_result_t;

/*
 * Submits json and polls until its Ack or Error: the one that answers this
 * submission (or the one queued with the same content, see
 * mr_client_submit_packed), not an outcome of an earlier submission of the
 * same id, which goes to handler or is kept as any other event.  Other
 * events go to handler; with handler NULL, deliveries and the other
 * messages' Acks and Errors are kept for the next mr_client_poll with a
 * handler.  0 on Ack; -EPROTO on an Error (see res->code; TOO_LARGE
 * without sending, when the frame exceeds the broker's limit; should a
 * copy sent before the Error be stored after all, its Ack comes later as
 * an ACK event with that code, see mr_event_t); -ETIMEDOUT;
 * -EACCES when the broker refused our Hello (res->code says why);
 * -EINVAL for bad JSON (reason in res->reason); -EEXIST when the message id
 * waits in the outbox with other content (mr_client_submit_packed; nothing
 * is sent or waited for, reason in res->reason).
 */
int mr_client_send_json(mr_client_t *self, const char *json, mr_result_t *res, int timeout_ms,
                        mr_handler_t handler, void *arg);

/*
 * Waits up to timeout_ms (negative: until something is handled) for traffic
 * and handles everything that arrived:
 * events go to handler.  With handler NULL, deliveries are kept (not
 * acknowledged) and handed, in order, to the next poll that has a handler;
 * so are the outcomes of submitted messages (ACK, and ERROR that is final
 * for a message, so that no refusal is lost to a poll without handler), up to
 * 4,096 (later ones are not kept until a poll with a handler takes these),
 * handed over first.  With state_dir they are kept on disk too, written in
 * the transaction that takes the message out of the outbox: a process that
 * ends before they are handed over hands them over after its next start
 * (the one whose handler it ended inside again, not those handed before).
 * Also sends heartbeats and resends what is due; during a long pass over
 * many deliveries (a slow handler), the acks gathered and a heartbeat go out
 * every 200 ms, so the broker does not take the session for dead.
 * Returns the number of events handled, or a negative errno.
 */
int mr_client_poll(mr_client_t *self, int timeout_ms, mr_handler_t handler, void *arg);

/* Polls until the broker has welcomed us, reading nothing past the Welcome
 * (deliveries wait for the next mr_client_poll), and sends no Heartbeat
 * (one shows the broker that we read, and would earn another copy of the
 * deliveries not read yet). 0, -ETIMEDOUT, or -EACCES when
 * the broker refused our Hello (facility unknown to it).  The CONNECTED event
 * of that Welcome goes to no handler: an application that wants its
 * `pending` count polls with a handler instead. */
int mr_client_wait_connected(mr_client_t *self, int timeout_ms);

/* Messages submitted and not yet acknowledged by the broker. */
size_t mr_client_unacked(const mr_client_t *self);
/* Deliveries held, unacknowledged, for the next poll with a handler (they
 * arrived during a poll or a send without one); at most the broker's window
 * (Welcome.max_inflight): one the broker sends again is held once. */
size_t mr_client_deferred(const mr_client_t *self);
bool mr_client_connected(const mr_client_t *self);
/* Damaged outbox rows (see mr_client_new): those in the table
 * outbox_damaged of state_dir, set aside at this start or an earlier one
 * and not yet deleted by someone who dealt with them (at least those found
 * at this start); 0 without state_dir. */
size_t mr_client_outbox_damaged(const mr_client_t *self);
/* The error code with which the broker refused our last Hello (the facility
 * unknown to it, a key not the facility's), until a Welcome; 0 if none.
 * An Error frame does not say which frame it answers: a refusal is an
 * UNKNOWN_SOURCE, FORBIDDEN or INVALID without message id that comes while
 * a Hello of ours waits for its answer, which nothing else this library
 * sends can draw from medrouted (docs/protocol.md 3.1). */
int mr_client_refused(const mr_client_t *self);

/* The JSON text of a delivery's Envelope.  Caller frees with free(). */
char *mr_delivery_json(const mr_delivery_t *delivery);

/* ---- operator endpoint --------------------------------------------------- */

typedef struct mr_operator_t mr_operator_t;

/* Connects to the broker's operator endpoint. NULL on failure. Caller owns it. */
mr_operator_t *mr_operator_new(const char *endpoint);
/* The same with CURVE keys (Z85, 40 characters each, else NULL): the
 * broker's public key and ours. */
mr_operator_t *mr_operator_new_curve(const char *endpoint, const char *server_public_key,
                                     const char *public_key, const char *secret_key);
void mr_operator_destroy(mr_operator_t **self_p);

/*
 * Sends one medroute.v1.OpRequest given as JSON without version and
 * request_id (e.g. {"status":{}} or {"queue_list":{"dead":true}}) and waits
 * for its OpReply, returned as JSON in *reply (caller frees with free()).
 * 0; -EINVAL for bad JSON (reason in err); -ETIMEDOUT; -EPROTO when the
 * reply is an Error (the JSON is still returned).
 */
int mr_operator_call_json(mr_operator_t *self, const char *request_json, char **reply,
                          int timeout_ms, char *err, size_t errlen);

/*
 * Waits up to timeout_ms for the next OpReply of any request (e.g. a
 * `watch` event) and returns it as JSON in *reply (caller frees); first
 * those that arrived while a call waited for its own reply (up to 1,024).
 * 0, -ETIMEDOUT, or another negative errno.
 */
int mr_operator_next_json(mr_operator_t *self, char **reply, int timeout_ms);

/* ---- keys ------------------------------------------------------------------- */

/*
 * Makes a CURVE keypair: DIR/NAME.key (the secret key, mode 0600) and
 * DIR/NAME.pub (the public key, for the broker's registry).  Each file holds
 * the Z85 key on its first line after comment lines.  0 or -errno
 * (-EEXIST: NAME.key exists already; keys are never overwritten; -EINVAL:
 * NAME is empty or holds a '/').
 */
int mr_keygen(const char *dir, const char *name, char public_out[41]);
/* Reads a key file written by mr_keygen (.key or .pub): the Z85 key into
 * key_out.  From a .key file, public_out (may be NULL) gets its public key.
 * It does not tell the two apart: mr_key_read_secret and _public do. */
int mr_key_read(const char *path, char key_out[41], char public_out[41]);
/* Reads a secret key file (NAME.key): the Z85 secret key into secret_out,
 * its public key into public_out (may be NULL).  0; -ENOKEY if the file
 * says it holds a public key (mr_keygen's comment line; a file without one
 * is taken for a secret key); -EPERM if other users may read it or anyone
 * but its owner may change it (chmod 600; 0640 or 0440, a group that may
 * read it, is accepted, as the daemon does), or if its owner is another
 * user than the process's effective one or root; -EINVAL if it holds
 * no Z85 key; -errno if it cannot be read. */
int mr_key_read_secret(const char *path, char secret_out[41], char public_out[41]);
/* Reads a public key file (NAME.pub): 0, -ENOKEY if the file says it holds
 * a secret key, -EINVAL if it holds no Z85 key, -errno. */
int mr_key_read_public(const char *path, char public_out[41]);

/* "ERROR_X" names without the prefix, e.g. "UNKNOWN_DESTINATION". */
const char *mr_error_code_name(int code);

#ifdef __cplusplus
}
#endif
#endif
