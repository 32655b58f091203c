/*
 * log.c - the daemon's event log.
 *
 * Owns: the last line written and its repeat count (for rate limiting).
 * Thread: the loop thread and the store thread both log; a mutex guards the
 * repeat state and keeps lines whole.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mr_codec.h"

#define S_REPEAT_WINDOW_S 10
#define S_REPEAT_MAX 5

/* A line's level, event and fields, at most: room for a path of the store
 * or a reason with its context.  A longer one is cut on a UTF-8 character,
 * its open quote closed, and " truncated=1" added (s_mark_cut), so that it
 * still parses as key=value pairs. */
#define S_BODY_MAX 2048
static const char s_cut_mark[] = " truncated=1";

struct log_t {
    FILE *out;
    log_level_t level;
    pthread_mutex_t lock;
    char last[S_BODY_MAX];   /* level+event+fields of the last line */
    time_t last_window_start; /* CLOCK_MONOTONIC s: a wall clock step moves no window */
    unsigned repeats;        /* identical lines in the current window */
    unsigned suppressed;     /* of those, not written */
};

static const char *const s_names[] = {"error", "warn", "info", "debug"};

log_t *log_new(log_level_t level, FILE *out)
{
    log_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->out = out;
    self->level = level;
    if (pthread_mutex_init(&self->lock, NULL) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

void log_destroy(log_t **self_p)
{
    log_t *self = *self_p;
    if (self == NULL)
        return;
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

int log_level_parse(const char *name, log_level_t *out)
{
    for (int i = 0; i <= MR_LOG_DEBUG; i++) {
        if (strcasecmp(name, s_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

void log_set_level(log_t *self, log_level_t level)
{
    self->level = level;
}

int log_enabled(const log_t *self, log_level_t level)
{
    return level <= self->level;
}

/* body was cut at size bytes: cut it again where s_cut_mark and a closing
 * quote fit, on a character, and mark it.  Quoted values hold no quote of
 * their own (log_clean), so an odd count means the cut is inside one. */
static void s_mark_cut(char *body, size_t size)
{
    size_t keep = mr_utf8_cut(body, size - sizeof s_cut_mark - 1);
    body[keep] = '\0';
    size_t quotes = 0;
    for (size_t i = 0; i < keep; i++)
        quotes += body[i] == '"';
    if (quotes % 2 == 1)
        body[keep++] = '"';
    memcpy(body + keep, s_cut_mark, sizeof s_cut_mark);
}

/* A control character (a newline above all) in a value would end the line
 * there and could start a forged one: written as '?', as log_clean does, so
 * that an event is one line whatever a caller passed.  Quotes are
 * log_clean's: here a value's quote cannot be told from the format's. */
static void s_one_line(char *body)
{
    for (; *body != '\0'; body++)
        if ((unsigned char)*body < 0x20 || *body == 0x7f)
            *body = '?';
}

void log_event(log_t *self, log_level_t level, const char *event, const char *fields, ...)
{
    if (self == NULL || level > self->level)
        return;
    char body[S_BODY_MAX];
    int n = snprintf(body, sizeof body, "level=%s event=%s ", s_names[level], event);
    if (n < 0 || (size_t)n >= sizeof body)
        return;
    va_list ap;
    va_start(ap, fields);
    int m = vsnprintf(body + n, sizeof body - (size_t)n, fields, ap);
    va_end(ap);
    if (m < 0)
        return;
    if ((size_t)m >= sizeof body - (size_t)n)
        s_mark_cut(body, sizeof body);
    s_one_line(body);

    struct timespec ts, mono;
    clock_gettime(CLOCK_REALTIME, &ts);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    if (strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        when[0] = '\0';

    pthread_mutex_lock(&self->lock);
    unsigned summary = 0;
    if (strcmp(body, self->last) == 0 &&
        mono.tv_sec - self->last_window_start < S_REPEAT_WINDOW_S) {
        if (++self->repeats > S_REPEAT_MAX) {
            self->suppressed++;
            pthread_mutex_unlock(&self->lock);
            return;
        }
    } else {
        summary = self->suppressed;
        snprintf(self->last, sizeof self->last, "%s", body);
        self->last_window_start = mono.tv_sec;
        self->repeats = 1;
        self->suppressed = 0;
    }
    if (summary > 0)
        fprintf(self->out, "%s.%03ldZ level=warn event=log.suppressed count=%u\n", when,
                ts.tv_nsec / 1000000, summary);
    fprintf(self->out, "%s.%03ldZ %s\n", when, ts.tv_nsec / 1000000, body);
    fflush(self->out);
    pthread_mutex_unlock(&self->lock);
}

const char *log_clean(char *buf, size_t len, const char *s)
{
    size_t i = 0;
    for (; s != NULL && s[i] != '\0' && i + 1 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    if (len > 0) {
        buf[i] = '\0';
        /* Cut short: on a character boundary (the text also goes into
         * WatchEvent frames, whose strings must be UTF-8). */
        if (s != NULL && s[i] != '\0')
            buf[mr_utf8_cut(buf, i)] = '\0';
    }
    return buf;
}
