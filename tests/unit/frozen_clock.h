/*
 * frozen_clock.h - clock_gettime for unit tests linked with
 * -Wl,--wrap=clock_gettime: the real clocks until a test freezes the
 * calling thread's (then CLOCK_REALTIME reads 1750000000 s, any other
 * clock 100000 s).  Per thread: the store's threads, which wait with
 * deadlines, keep the real clocks.
 */
#ifndef MRT_FROZEN_CLOCK_H
#define MRT_FROZEN_CLOCK_H

#include <stdbool.h>

/* Stops (true) or restarts (false) the calling thread's clocks. */
void frozen_clock_set(bool frozen);

#endif
