/*
 * lograte.c - a limit on log lines per source (lograte.h).
 *
 * Invariants
 *   1. logged <= LOGRATE_LINES.
 *   2. A window lasts LOGRATE_WINDOW_MS from the first line after the last
 *      one ended, so a quiet source starts afresh.
 */
#include "lograte.h"

bool lograte_allow(lograte_t *self, int64_t mono_ms)
{
    if (self->logged == 0 || mono_ms - self->window_ms >= LOGRATE_WINDOW_MS) {
        self->window_ms = mono_ms;
        self->logged = 0;
    }
    if (self->logged < LOGRATE_LINES) {
        self->logged++;
        return true;
    }
    self->suppressed++;
    return false;
}

uint64_t lograte_take(lograte_t *self, int64_t mono_ms)
{
    if (self->suppressed == 0 ||
        (self->told_ms != 0 && mono_ms - self->told_ms < LOGRATE_WINDOW_MS))
        return 0;
    uint64_t n = self->suppressed;
    self->suppressed = 0;
    self->told_ms = mono_ms;
    return n;
}

void lograte_tell(lograte_t *self, log_t *log, const char *event, const char *facility,
                  int64_t mono_ms)
{
    uint64_t n = lograte_take(self, mono_ms);
    if (n == 0)
        return;
    if (facility != NULL)
        log_warn(log, event, "facility=%s count=%llu limit=%d window_s=%d", facility,
                 (unsigned long long)n, LOGRATE_LINES, LOGRATE_WINDOW_MS / 1000);
    else
        log_warn(log, event, "count=%llu limit=%d window_s=%d", (unsigned long long)n,
                 LOGRATE_LINES, LOGRATE_WINDOW_MS / 1000);
}
