/* notify.c - thin wrapper around libsystemd's sd_notify. */
#include "notify.h"

#include <systemd/sd-daemon.h>

void notify_state(const char *state)
{
    (void)sd_notify(0, state); /* < 0: no systemd listening, nothing to do */
}

int64_t notify_watchdog_ms(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return 0;
    return (int64_t)(usec / 2000); /* ping twice per period */
}
