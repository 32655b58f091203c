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

#endif
