/*
 * notify.h - telling systemd how the daemon is (sd_notify): READY=1 once
 * every endpoint is bound and the store is open, WATCHDOG=1 from the loop
 * (a stuck loop stops it, and systemd restarts the service), RELOADING=1
 * and STOPPING=1.  Without NOTIFY_SOCKET every call does nothing.
 */
#ifndef MR_NOTIFY_H
#define MR_NOTIFY_H

#include <stdint.h>

/* Sends one state string ("READY=1\nSTATUS=..."). */
void notify_state(const char *state);
/* The watchdog period in ms (half of WATCHDOG_USEC), or 0 when off. */
int64_t notify_watchdog_ms(void);

#endif
