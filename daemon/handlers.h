/*
 * handlers.h - the facility frame handlers that dispatch's table names.
 *
 * Each returns 0 when the frame was handled (its reply may come later), or
 * an MR_E_* code with err filled in.  Defined in session.c, intake.c and
 * router.c, next to the state they change.
 */
#ifndef MR_HANDLERS_H
#define MR_HANDLERS_H

#include "dispatch.h"

int handle_hello(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err);
int handle_heartbeat(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err);
int handle_envelope(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f, mr_err_t *err);
int handle_delivery_ack(server_t *s, const dispatch_ctx_t *ctx, const mr_frame_t *f,
                        mr_err_t *err);

#endif
