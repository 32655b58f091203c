/*
 * frozen_clock.c - clock_gettime as a test's loop thread sees it
 * (frozen_clock.h).
 */
#include "frozen_clock.h"

#include <time.h>

static _Thread_local bool s_frozen;

int __real_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);

int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    if (!s_frozen)
        return __real_clock_gettime(id, ts);
    ts->tv_sec = id == CLOCK_REALTIME ? 1750000000 : 100000;
    ts->tv_nsec = 0;
    return 0;
}

void frozen_clock_set(bool frozen)
{
    s_frozen = frozen;
}
