/*
 * reload.h - SIGHUP (or the operator's reload): read the config again and
 * apply the facility registry, keys, operators, limits, service levels and
 * indicator targets without dropping connections or messages.
 *
 * Endpoints, data directory, store settings, the broker's key and
 * insecure need a restart: a new config that changes them is refused, as is
 * an invalid one; the old config then stays in force.  A facility removed
 * from the registry is disconnected; its pending messages stay in the store.
 * Loop thread.
 */
#ifndef MR_RELOAD_H
#define MR_RELOAD_H

#include <stddef.h>

#include "server.h"

/* 0, or -EINVAL with the reason in why (the old config stays); -ESHUTDOWN,
 * nothing read, once a stop signal began the drain. */
int reload_config(server_t *s, char *why, size_t why_len);

#endif
