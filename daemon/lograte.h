/*
 * lograte.h - a limit on how many lines one source may put in the log.
 *
 * Every refusal is counted and answered (dispatch.c), but a client that
 * sends a stream of bad frames (a bug, a retry loop, a wrong key) would
 * also write a log line for each: a disk filled, and journald's limit per
 * service, once reached, drops every line of the daemon for a while, a
 * security event or an escalation included.  So each source logs at most
 * LOGRATE_LINES lines per LOGRATE_WINDOW_MS, and the lines it was denied
 * are told once in a while, as a count (lograte_take).
 *
 * Embedded (peer_t, server_t); zero-initialised is ready.  Loop thread.
 */
#ifndef MR_LOGRATE_H
#define MR_LOGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "log.h"

#define LOGRATE_LINES 20
#define LOGRATE_WINDOW_MS 10000

typedef struct {
    int64_t window_ms;     /* when its window began, mr_mono_ms() */
    uint32_t logged;       /* lines allowed in that window */
    uint64_t suppressed;   /* lines denied, not yet told */
    int64_t told_ms;       /* when they were last told; 0: never */
} lograte_t;

/* Whether a line may be logged now (mono_ms: mr_mono_ms()); if not, it is
 * counted as suppressed. */
bool lograte_allow(lograte_t *self, int64_t mono_ms);
/*
 * The lines denied since they were last told, at most once per window
 * (0 otherwise): the caller logs the count.  Resets it.
 */
uint64_t lograte_take(lograte_t *self, int64_t mono_ms);
/* lograte_take's count, if any, logged as event at warn level:
 * "facility=F count=N limit=L window_s=W" (no facility= when NULL). */
void lograte_tell(lograte_t *self, log_t *log, const char *event, const char *facility,
                  int64_t mono_ms);

#endif
