/*
 * intake.h - accepting a facility's Envelope: validate, store, Ack, route.
 * (The handler itself is declared in handlers.h.)
 */
#ifndef MR_INTAKE_H
#define MR_INTAKE_H

#include "server.h"

/* Checks an Envelope from facility `peer`; 0 or an MR_E_* code with reason. */
int intake_validate(server_t *s, int peer, const mr_envelope_t *env, int *dest_out,
                    char *reason, size_t reason_len);

#endif
