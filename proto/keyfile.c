/*
 * keyfile.c - reading a CURVE key file (mr_keyfile.h).  No state.  What it
 * read of the file is wiped before it returns: only out holds the key then.
 */
#include "mr_keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The longest line read back: room for the comment line of any name a key
 * file may have (255 bytes). */
#define S_LINE_MAX 512

int mr_keyfile_read(const char *path, mr_keyfile_t *out)
{
    memset(out, 0, sizeof *out);
    /* Non-blocking, so that a FIFO without a writer does not hang the open
     * (a start, or a reload on the daemon's loop); a regular file ignores it. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = -errno;
        (void)close(fd);
        return rc;
    }
    /* A device (/dev/zero: an endless line), a FIFO or a directory holds
     * no key file. */
    if (!S_ISREG(st.st_mode)) {
        (void)close(fd);
        return -EINVAL;
    }
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        int rc = -errno;
        (void)close(fd);
        return rc;
    }
    /* Read through a buffer of ours, wiped with the line after it: stdio's
     * own would be freed holding the secret key. */
    char buf[S_LINE_MAX];
    if (setvbuf(f, buf, _IOFBF, sizeof buf) != 0) {
        (void)fclose(f);
        return -ENOMEM;
    }
    out->mode = st.st_mode & 07777;
    out->loose = (st.st_mode & (S_IRWXO | S_IWGRP)) != 0;
    out->owner = st.st_uid;
    out->foreign = st.st_uid != geteuid() && st.st_uid != 0;
    char line[S_LINE_MAX];
    while (fgets(line, sizeof line, f)) {
        /* A line longer than the buffer is still one line: its rest is
         * dropped, never read as a line of its own (the tail of a long
         * comment is not the key). */
        if (strchr(line, '\n') == NULL) {
            int c;
            while ((c = getc(f)) != EOF && c != '\n')
                ;
        }
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, "# medroute CURVE public key", 27) == 0)
            out->kind = MR_KEYFILE_PUBLIC;
        else if (strncmp(line, "# medroute CURVE secret key", 27) == 0)
            out->kind = MR_KEYFILE_SECRET;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (strlen(line) == 40)
            memcpy(out->key, line, 41);
        break;
    }
    (void)fclose(f); /* read only: nothing to lose */
    explicit_bzero(line, sizeof line);
    explicit_bzero(buf, sizeof buf);
    return 0;
}
