/*
 * walbuf.c - WAL writes gathered per sync (walbuf.h).
 *
 * Invariants (per WAL file handle)
 *   1. The bytes [start, start + len) were written by SQLite and are held
 *      in buf, not yet in the real file; every other byte SQLite wrote is
 *      in the real file.
 *   2. Before any call that reads, measures, truncates, syncs or closes the
 *      real file, the buffer is flushed (len == 0 after success).
 *   3. A write that neither extends the buffer contiguously nor falls inside
 *      it flushes first, then starts a new buffer at its offset.
 */
#include "walbuf.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_BUF_MAX (8 << 20) /* a larger commit is written in pieces of this size */
/* The default VFS writes at most 0x1ffff bytes a call (it masks the length
 * with that: a longer write would be cut short and fail as SQLITE_FULL). */
#define S_WRITE_MAX (120 * 1024)

struct walbuf_t {
    sqlite3_vfs vfs;        /* ours; pAppData -> the real one */
    char name[48];
};

typedef struct {
    sqlite3_file base;      /* pMethods = &s_wal_methods */
    sqlite3_file *real;     /* the default VFS's file, right after this struct */
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 start;
} s_wal_t;

/* Room for the real file after our struct, aligned for any type. */
#define S_REAL_OFFSET ((sizeof(s_wal_t) + 15) & ~(size_t)15)

static int s_flush(s_wal_t *w)
{
    int rc = SQLITE_OK;
    for (size_t done = 0; rc == SQLITE_OK && done < w->len; done += S_WRITE_MAX) {
        size_t n = w->len - done < S_WRITE_MAX ? w->len - done : S_WRITE_MAX;
        rc = w->real->pMethods->xWrite(w->real, w->buf + done, (int)n,
                                       w->start + (sqlite3_int64)done);
    }
    /* On failure the transaction fails as a whole (SQLite rolls back); what
     * was buffered is dropped, as a failed write would have left it. */
    w->len = 0;
    return rc;
}

static bool s_grow(s_wal_t *w, size_t need)
{
    if (need <= w->cap)
        return true;
    size_t cap = w->cap ? w->cap : 256 * 1024;
    while (cap < need)
        cap *= 2;
    unsigned char *b = realloc(w->buf, cap);
    if (b == NULL)
        return false;
    w->buf = b;
    w->cap = cap;
    return true;
}

static int s_close(sqlite3_file *f)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    int rc2 = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    return rc != SQLITE_OK ? rc : rc2;
}

static int s_read(sqlite3_file *f, void *out, int amt, sqlite3_int64 off)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xRead(w->real, out, amt, off);
}

static int s_write(sqlite3_file *f, const void *data, int amt, sqlite3_int64 off)
{
    s_wal_t *w = (s_wal_t *)f;
    size_t n = (size_t)amt;
    sqlite3_int64 end = w->start + (sqlite3_int64)w->len;
    if (w->len > 0 && off >= w->start && off + (sqlite3_int64)n <= end) {
        memcpy(w->buf + (off - w->start), data, n); /* a frame rewritten in the same commit */
        return SQLITE_OK;
    }
    bool extends = w->len > 0 && off == end;
    if (!extends || w->len + n > S_BUF_MAX) {
        int rc = s_flush(w);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (n > S_WRITE_MAX || !s_grow(w, w->len + n)) /* not a frame, or no memory */
        return w->real->pMethods->xWrite(w->real, data, amt, off);
    if (w->len == 0)
        w->start = off;
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    return SQLITE_OK;
}

static int s_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xTruncate(w->real, size);
}

static int s_sync(sqlite3_file *f, int flags)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xSync(w->real, flags);
}

static int s_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xFileSize(w->real, size);
}

static int s_lock(sqlite3_file *f, int level)
{
    s_wal_t *w = (s_wal_t *)f;
    return w->real->pMethods->xLock(w->real, level);
}

static int s_unlock(sqlite3_file *f, int level)
{
    s_wal_t *w = (s_wal_t *)f;
    return w->real->pMethods->xUnlock(w->real, level);
}

static int s_check_reserved(sqlite3_file *f, int *out)
{
    s_wal_t *w = (s_wal_t *)f;
    return w->real->pMethods->xCheckReservedLock(w->real, out);
}

static int s_file_control(sqlite3_file *f, int op, void *arg)
{
    s_wal_t *w = (s_wal_t *)f;
    int rc = s_flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xFileControl(w->real, op, arg);
}

static int s_sector_size(sqlite3_file *f)
{
    s_wal_t *w = (s_wal_t *)f;
    return w->real->pMethods->xSectorSize(w->real);
}

static int s_device(sqlite3_file *f)
{
    s_wal_t *w = (s_wal_t *)f;
    return w->real->pMethods->xDeviceCharacteristics(w->real);
}

/* Version 1 methods: SQLite maps no shared memory nor pages of a WAL file. */
static const sqlite3_io_methods s_wal_methods = {
    .iVersion = 1,
    .xClose = s_close,
    .xRead = s_read,
    .xWrite = s_write,
    .xTruncate = s_truncate,
    .xSync = s_sync,
    .xFileSize = s_file_size,
    .xLock = s_lock,
    .xUnlock = s_unlock,
    .xCheckReservedLock = s_check_reserved,
    .xFileControl = s_file_control,
    .xSectorSize = s_sector_size,
    .xDeviceCharacteristics = s_device,
};

static int s_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                  int *out_flags)
{
    sqlite3_vfs *real = vfs->pAppData;
    if (!(flags & SQLITE_OPEN_WAL))
        return real->xOpen(real, name, f, flags, out_flags); /* the real file in our room */
    s_wal_t *w = (s_wal_t *)f;
    memset(w, 0, sizeof *w);
    w->real = (sqlite3_file *)((char *)f + S_REAL_OFFSET);
    int rc = real->xOpen(real, name, w->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        /* SQLite calls xClose only when pMethods is set: close the real
         * half if it was opened, and leave ours unset. */
        if (w->real->pMethods != NULL)
            w->real->pMethods->xClose(w->real);
        return rc;
    }
    w->base.pMethods = &s_wal_methods;
    return SQLITE_OK;
}

/* The rest of the VFS is the real one's, called with the real one (its
 * functions may read their own pAppData). */
#define S_REAL(vfs) ((sqlite3_vfs *)(vfs)->pAppData)

static int s_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    return S_REAL(vfs)->xDelete(S_REAL(vfs), name, sync_dir);
}

static int s_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    return S_REAL(vfs)->xAccess(S_REAL(vfs), name, flags, out);
}

static int s_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    return S_REAL(vfs)->xFullPathname(S_REAL(vfs), name, n, out);
}

static void *s_dl_open(sqlite3_vfs *vfs, const char *name)
{
    return S_REAL(vfs)->xDlOpen(S_REAL(vfs), name);
}

static void s_dl_error(sqlite3_vfs *vfs, int n, char *out)
{
    S_REAL(vfs)->xDlError(S_REAL(vfs), n, out);
}

static void (*s_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    return S_REAL(vfs)->xDlSym(S_REAL(vfs), h, sym);
}

static void s_dl_close(sqlite3_vfs *vfs, void *h)
{
    S_REAL(vfs)->xDlClose(S_REAL(vfs), h);
}

static int s_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    return S_REAL(vfs)->xRandomness(S_REAL(vfs), n, out);
}

static int s_sleep(sqlite3_vfs *vfs, int us)
{
    return S_REAL(vfs)->xSleep(S_REAL(vfs), us);
}

static int s_current_time(sqlite3_vfs *vfs, double *out)
{
    return S_REAL(vfs)->xCurrentTime(S_REAL(vfs), out);
}

static int s_last_error(sqlite3_vfs *vfs, int n, char *out)
{
    return S_REAL(vfs)->xGetLastError(S_REAL(vfs), n, out);
}

static int s_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    return S_REAL(vfs)->xCurrentTimeInt64(S_REAL(vfs), out);
}

walbuf_t *walbuf_new(void)
{
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (real == NULL)
        return NULL;
    walbuf_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    snprintf(self->name, sizeof self->name, "mr-walbuf-%p", (void *)self);
    if (real->iVersion < 2) { /* every SQLite of the last decade has 3 */
        free(self);
        return NULL;
    }
    self->vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)(S_REAL_OFFSET + (size_t)real->szOsFile),
        .mxPathname = real->mxPathname,
        .zName = self->name,
        .pAppData = real,
        .xOpen = s_open,
        .xDelete = s_delete,
        .xAccess = s_access,
        .xFullPathname = s_full_pathname,
        .xDlOpen = s_dl_open,
        .xDlError = s_dl_error,
        .xDlSym = s_dl_sym,
        .xDlClose = s_dl_close,
        .xRandomness = s_randomness,
        .xSleep = s_sleep,
        .xCurrentTime = s_current_time,
        .xGetLastError = s_last_error,
        .xCurrentTimeInt64 = s_current_time64,
    };
    if (sqlite3_vfs_register(&self->vfs, 0) != SQLITE_OK) {
        free(self);
        return NULL;
    }
    return self;
}

const char *walbuf_name(const walbuf_t *self)
{
    return self ? self->name : NULL;
}

void walbuf_destroy(walbuf_t **self_p)
{
    walbuf_t *self = *self_p;
    if (self == NULL)
        return;
    (void)sqlite3_vfs_unregister(&self->vfs);
    free(self);
    *self_p = NULL;
}
