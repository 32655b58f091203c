/*
 * walbuf.h - an SQLite VFS that writes a transaction's WAL frames in one call.
 *
 * SQLite appends each WAL frame with two write calls (its 24-byte header,
 * then the page): about 84 pwrite calls for a commit of 42 pages, a fifth
 * of the store thread's time at moderate load (19 k msg/s in the benchmark;
 * with this VFS the store thread spends 14 % less per message there, 5 %
 * when saturated: docs/performance.md).  This VFS wraps the default
 * one and, for WAL files only, gathers contiguous writes in memory and
 * hands them to the real file in one write when SQLite syncs the WAL (every
 * commit under synchronous=FULL), before any read, size, truncate or file
 * control, and at close.  Every other file, and every other method, is the
 * default VFS's own.
 *
 * Only for synchronous=FULL: a commit is made visible to other connections
 * (through the shared-memory index, not the file) after the WAL's sync,
 * so the frames are in the file by then.  Under NORMAL the WAL is not
 * synced per commit and the frames would still be in memory when another
 * connection reads them: store.c uses the default VFS then.
 *
 * Durability is SQLite's: frames buffered when the process dies belong to a
 * transaction whose commit had not returned, which recovery discards as it
 * discards a torn tail.
 *
 * Thread: a walbuf_t may serve connections on several threads (each file
 * handle is used by one connection at a time, as SQLite guarantees).
 */
#ifndef MR_WALBUF_H
#define MR_WALBUF_H

typedef struct walbuf_t walbuf_t;

/* Registers a VFS of a name unique to this walbuf_t (not the default).  NULL
 * without memory, or if SQLite refuses it. */
walbuf_t *walbuf_new(void);
/* Its name, for sqlite3_open_v2. */
const char *walbuf_name(const walbuf_t *self);
/* Unregisters it; every connection using it must be closed. */
void walbuf_destroy(walbuf_t **self_p);

#endif
