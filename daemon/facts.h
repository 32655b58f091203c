/*
 * facts.h - reading, from a decoded Envelope, the facts the clinical state
 * needs (clinical.h): referral ids and steps, accession and order numbers,
 * report status, critical flags, capacity items, the appointment's local day.
 * Loop thread; pure apart from the local-time conversion.
 */
#ifndef MR_FACTS_H
#define MR_FACTS_H

#include "clinical.h"
#include "server.h"

/*
 * Builds the facts of env from facility src to dest (-1: the broker).  0 and
 * *out (caller owns; clinical_facts_free) on success; an MR_E_* code with a
 * reason when the message is refused before storing (a reserve under the
 * minimum share); -ENOMEM.
 */
int facts_extract(const server_t *s, int src, int dest, const mr_envelope_t *env,
                  int64_t expires_ms, int64_t now_ms, clin_facts_t **out, char *reason,
                  size_t reason_len);

/* Travels ahead of routine traffic: a critical value or finding, or stat. */
bool facts_express(const clin_facts_t *f);

/* Whether day is a calendar day written YYYY-MM-DD (years from 1900). */
bool facts_day_valid(const char *day);

/* Local calendar day (YYYY-MM-DD) of a Unix ms time, in the daemon's time zone. */
void facts_local_day(int64_t ms, char out[11]);

#endif
