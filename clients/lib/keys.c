/*
 * keys.c - CURVE keypairs on disk for facilities, operators and the broker.
 *
 * NAME.key: the secret key, created with O_EXCL and mode 0600 (never
 * overwritten); NAME.pub: the public key, for the registry.  Both: comment
 * lines starting with '#', then the Z85 key on its own line.
 */
#include "medroute.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

/* A key file's text, and the longest line read back: room for the comment
 * line of any name a file may have (255 bytes). */
#define S_TEXT_MAX 512

static int s_write(const char *path, int flags, mode_t mode, const char *what, const char *name,
                   const char *key)
{
    /* Made before the file is, so that a name it cannot hold leaves no
     * file behind. */
    char text[S_TEXT_MAX];
    int n = snprintf(text, sizeof text, "# medroute CURVE %s key of %s%s\n%s\n", what, name,
                     strcmp(what, "secret") == 0 ? " - keep it on that machine only" : "", key);
    if (n < 0 || (size_t)n >= sizeof text)
        return -ENAMETOOLONG;
    int fd = open(path, flags | O_WRONLY | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int rc = write(fd, text, (size_t)n) == n ? 0 : -EIO;
    if (fsync(fd) != 0 && rc == 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

int mr_keygen(const char *dir, const char *name, char public_out[41])
{
    char pub[41], sec[41], path[4096];
    if (dir == NULL || name == NULL || name[0] == '\0' || strchr(name, '/'))
        return -EINVAL;
    if (zmq_curve_keypair(pub, sec) != 0)
        return -ENOTSUP; /* libzmq without CURVE */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    int n = snprintf(path, sizeof path, "%s/%s.key", dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    int rc = s_write(path, O_EXCL, 0600, "secret", name, sec);
    memset(sec, 0, sizeof sec);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    rc = s_write(path, O_TRUNC, 0644, "public", name, pub);
    if (rc == 0 && public_out)
        memcpy(public_out, pub, 41);
    return rc;
}

int mr_key_read(const char *path, char key_out[41], char public_out[41])
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    char line[S_TEXT_MAX];
    int rc = -EINVAL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        uint8_t raw[32];
        if (strlen(line) == 40 && zmq_z85_decode(raw, line) != NULL) {
            memcpy(key_out, line, 41);
            rc = 0;
        }
        break;
    }
    fclose(f);
    if (rc == 0 && public_out != NULL && zmq_curve_public(public_out, key_out) != 0)
        rc = -EINVAL;
    return rc;
}
