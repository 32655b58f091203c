/*
 * zap.h - the daemon's own ZAP handler (ZeroMQ RFC 27): it decides which
 * CURVE client keys may connect, and gives each connection its User-Id.
 *
 * Facility endpoint (domain "medroute-facility"): a key listed as a
 * facility's public_key in the registry.  Operator endpoint (domain
 * "medroute-operator"): a key listed in the config's operators.  The
 * User-Id is the client's public key (Z85), not who it belongs to: each
 * frame is judged by what the key is in the configuration of that moment.
 * Everything else is refused (400) and counted as a security event.
 *
 * Must be created (bound to inproc://zeromq.zap.01) before any CURVE server
 * socket binds.  Loop thread.
 */
#ifndef MR_ZAP_H
#define MR_ZAP_H

#include "server.h"

#define MR_ZAP_DOMAIN_FACILITY "medroute-facility"
#define MR_ZAP_DOMAIN_OPERATOR "medroute-operator"

typedef struct zap_t zap_t;

zap_t *zap_new(server_t *s);
void zap_destroy(zap_t **self_p);

#endif
