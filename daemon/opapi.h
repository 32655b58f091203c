/*
 * opapi.h - the operator endpoint: status and queue management requests.
 * One OpRequest in, one OpReply out, matched by request_id.  Loop thread.
 */
#ifndef MR_OPAPI_H
#define MR_OPAPI_H

#include "server.h"

/* The endpoint callback of the operator socket (arg is the server). */
void opapi_on_message(void *arg, const uint8_t *rid, size_t rid_len, const void *const *parts,
                      const size_t *sizes, size_t n_parts, int truncated);

/* Once a second (cron.c): logs how many refusals' lines were left out
 * (operator.rejected_unlogged), how many failed replies' lines
 * (operator.send_failed_unlogged) and how many security events' lines
 * (security.operator_unlogged), if any. */
void opapi_cron(server_t *s, int64_t mono_ms);

#endif
