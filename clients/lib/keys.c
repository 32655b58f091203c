/*
 * keys.c - CURVE keypairs on disk for facilities, operators and the broker.
 *
 * NAME.key: the secret key, created with O_EXCL and mode 0600 (never
 * overwritten); NAME.pub: the public key, for the registry.  Both: comment
 * lines starting with '#', then the Z85 key on its own line.  The first
 * comment says which ("# medroute CURVE secret key of NAME"): the readers
 * of one kind refuse a file that says it is the other (a file without it,
 * written by hand, is taken for what is asked), and the secret reader a
 * file other users may read or change.  Its group may read it: systemd
 * hands a credential (LoadCredential=) to a service user through an ACL
 * whose mask shows as the group's bits (0440).
 */
#include "medroute.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
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

/* What a key file says it holds: mr_keygen's comment line names it. */
typedef enum { S_KIND_UNSAID, S_KIND_PUBLIC, S_KIND_SECRET } s_kind_t;

/*
 * Reads the key of the file path into key_out, what its comments say it is
 * into *kind, and whether group or others may use the file into *open_.
 * 0, -EINVAL (no key in it), or -errno.
 */
static int s_read(const char *path, char key_out[41], s_kind_t *kind, bool *open_)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    struct stat st;
    int rc = -EINVAL;
    *kind = S_KIND_UNSAID;
    if (fstat(fileno(f), &st) != 0)
        rc = -errno;
    else
        *open_ = (st.st_mode & (S_IRWXO | S_IWGRP)) != 0; /* as the daemon's (conf.c) */
    char line[S_TEXT_MAX];
    while (rc == -EINVAL && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, "# medroute CURVE public key", 27) == 0)
            *kind = S_KIND_PUBLIC;
        else if (strncmp(line, "# medroute CURVE secret key", 27) == 0)
            *kind = S_KIND_SECRET;
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
    return rc;
}

int mr_key_read(const char *path, char key_out[41], char public_out[41])
{
    s_kind_t kind;
    bool open_;
    int rc = s_read(path, key_out, &kind, &open_);
    if (rc == 0 && public_out != NULL && zmq_curve_public(public_out, key_out) != 0)
        rc = -EINVAL;
    return rc;
}

int mr_key_read_secret(const char *path, char secret_out[41], char public_out[41])
{
    s_kind_t kind;
    bool open_ = false;
    char key[41];
    int rc = s_read(path, key, &kind, &open_);
    if (rc == 0 && kind == S_KIND_PUBLIC)
        rc = -ENOKEY; /* said first: a .pub is rightly readable by all */
    else if (rc == 0 && open_)
        rc = -EPERM; /* a secret key others could read is no longer secret */
    if (rc == 0 && public_out != NULL && zmq_curve_public(public_out, key) != 0)
        rc = -EINVAL;
    if (rc == 0)
        memcpy(secret_out, key, 41);
    memset(key, 0, sizeof key);
    return rc;
}

int mr_key_read_public(const char *path, char public_out[41])
{
    s_kind_t kind;
    bool open_;
    char key[41];
    int rc = s_read(path, key, &kind, &open_);
    if (rc == 0 && kind == S_KIND_SECRET)
        rc = -ENOKEY; /* and a secret key left where a public one was looked for */
    if (rc == 0)
        memcpy(public_out, key, 41);
    memset(key, 0, sizeof key);
    return rc;
}
