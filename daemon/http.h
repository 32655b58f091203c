/*
 * http.h - GET /metrics (Prometheus text exposition) and GET /healthz,
 * served by libmicrohttpd from the daemon's own libuv loop.
 *
 * MHD runs without threads of its own (MHD_USE_EPOLL, external loop): a
 * uv_poll watches MHD's epoll fd and a uv_timer follows MHD_get_timeout.
 * /metrics suspends its connection while the store sums the tallies and
 * resumes it from the store callback, or after 5 s from a timer with a 503
 * (a store that does not answer: http.c).  Loop thread only.
 */
#ifndef MR_HTTP_H
#define MR_HTTP_H

#include "server.h"

typedef struct http_t http_t;

/* Listens on "HOST:PORT" (loopback unless security allows more). NULL on failure. */
http_t *http_new(server_t *s, const char *listen);
/* Stops the daemon; memory is freed from the handles' close callbacks. */
void http_destroy(http_t **self_p);

/* The Prometheus text of all-time tallies, queue gauges and live counters.
 * rows sorted by name, then labels (tally_query's order).  Caller frees.
 * (Used by /metrics; pure apart from reading s.) */
char *http_metrics_text(const server_t *s, const tally_row_t *rows, size_t n,
                        const store_row_t *queues, size_t n_queues);

#endif
