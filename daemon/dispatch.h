/*
 * dispatch.h - the facility protocol's one table and its one error path.
 *
 * Every frame from a facility goes through dispatch_facility: size, decode,
 * version, "has this connection said Hello", every string valid UTF-8, then
 * the handler for the frame's body.  Handlers hold domain logic only; when
 * they refuse, they fill an mr_err_t and return non-zero, and dispatch turns
 * it into the Error reply, the log line and the counter, in one place.
 * Replies that come later (after a commit) use dispatch_reply_error for the
 * same effect.
 */
#ifndef MR_DISPATCH_H
#define MR_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct {
    const uint8_t *rid;
    size_t rid_len;
    int peer;               /* registry index of the connection's facility, -1 before Hello */
    const char *user_id;    /* ZAP User-Id: the client's Z85 public key (CURVE); NULL if insecure */
    const uint8_t *frame;   /* the frame as received, frame_bytes long */
    size_t frame_bytes;
    bool late;              /* a DeliveryAck after its session ended (session_former) */
} dispatch_ctx_t;

typedef struct {
    int code;               /* MR_E_* */
    char message_id[MR_MESSAGE_ID_MAX + 1];
    char reason[200];       /* never patient data */
    uint64_t seq;           /* the broker's seq the error concerns, 0 if none */
    uint64_t submission_tag; /* the refused envelope frame's Frame.submission_tag, echoed */
    bool tallied;           /* the store already counted it (in its transaction) */
} mr_err_t;

/* Every string of a frame of type d is UTF-8 (mr_codec.h): what the broker
 * stores and delivers must decode in any conforming decoder, and what it
 * answers may echo these strings.  0, or MR_E_MALFORMED / MR_E_INVALID with
 * err filled; the reason names the field, never its content. */
int dispatch_check_utf8(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                        mr_err_t *err);
/* Fills err and returns code: `return mr_fail(err, MR_E_X, "fmt", ...);` */
int mr_fail(mr_err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The endpoint callback of the facility socket (arg is the server). */
void dispatch_facility(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                       const size_t *sizes, size_t n_parts, int truncated);

/* Sends Error{code, reason}, logs it and counts it. peer may be -1.  Each
 * facility (and frames of none, together) logs at most LOGRATE_LINES such
 * lines per LOGRATE_WINDOW_MS (lograte.h); every refusal is still answered
 * and counted. */
void dispatch_reply_error(server_t *s, const uint8_t *rid, size_t rid_len, int peer,
                          const mr_err_t *err);
/* Periodic (cron.c): logs how many refusals each source was not allowed to
 * log (message.rejected_unlogged), and how many frames without a key
 * (security.facility_unlogged), at most once per window each. */
void dispatch_cron(server_t *s, int64_t mono_ms);

#endif
