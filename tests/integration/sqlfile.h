/*
 * sqlfile.h - for tests that read or damage an SQLite file as a hand or a
 * disk could (a client's state file, the broker's store while it is
 * stopped).  Each asserts (cmocka) that SQLite did as asked.
 */
#ifndef MRT_SQLFILE_H
#define MRT_SQLFILE_H

/* Runs sql on the SQLite file path. */
void sqlfile_exec(const char *path, const char *sql);
/* The integer the one-value query sql gives on the SQLite file path. */
long long sqlfile_int(const char *path, const char *sql);

#endif
