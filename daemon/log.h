/*
 * log.h - one line per event: time, level, event name and key=value fields.
 *
 * Lines go to one FILE (stderr: journald under systemd).  Repeated identical
 * lines are rate-limited and summarised.  Never log patient data: log ids,
 * codes and counts only.
 */
#ifndef MR_LOG_H
#define MR_LOG_H

#include <stdio.h>

typedef enum { MR_LOG_ERROR = 0, MR_LOG_WARN, MR_LOG_INFO, MR_LOG_DEBUG } log_level_t;

typedef struct log_t log_t;

/* out is borrowed and must outlive the logger.  NULL on allocation failure. */
log_t *log_new(log_level_t level, FILE *out);
void log_destroy(log_t **self_p);

/* Parses "error", "warn", "info", "debug"; 0 or -EINVAL. */
int log_level_parse(const char *name, log_level_t *out);
void log_set_level(log_t *self, log_level_t level);
int log_enabled(const log_t *self, log_level_t level);

/*
 * Writes "ts level=L event=EVENT <fields>" where fields is a printf format of
 * key=value pairs.  A control character in the result is written as '?', so
 * that an event is always one line; a foreign string in a quoted value goes
 * through log_clean first (its quotes too).  An identical line repeated
 * within 10 s is written at most 5 times; the count of suppressed ones is
 * written with the next line.
 */
void log_event(log_t *self, log_level_t level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Copies s into buf (len bytes) for use inside a quoted log value: control
 * characters, quotes and backslashes become '?', so that a peer-supplied
 * string cannot forge a line or a field.  Returns buf.
 */
const char *log_clean(char *buf, size_t len, const char *s);

#define log_error(l, ev, ...) log_event((l), MR_LOG_ERROR, (ev), __VA_ARGS__)
#define log_warn(l, ev, ...) log_event((l), MR_LOG_WARN, (ev), __VA_ARGS__)
#define log_info(l, ev, ...) log_event((l), MR_LOG_INFO, (ev), __VA_ARGS__)
#define log_debug(l, ev, ...)                                                                      \
    do {                                                                                           \
        if (log_enabled((l), MR_LOG_DEBUG))                                                        \
            log_event((l), MR_LOG_DEBUG, (ev), __VA_ARGS__);                                       \
    } while (0)

#endif
