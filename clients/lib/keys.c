/*
 * keys.c - CURVE keypairs on disk for facilities, operators and the broker.
 *
 * NAME.key: the secret key, created with O_EXCL and mode 0600 (never
 * overwritten); NAME.pub: the public key, for the registry.  Both: comment
 * lines starting with '#', then the Z85 key on its own line.  The first
 * comment says which ("# medroute CURVE secret key of NAME"): the readers
 * of one kind refuse a file that says it is the other (a file without it,
 * written by hand, is taken for what is asked), and the secret reader a
 * file other users may read or change, or that another user than ours or
 * root owns (mr_keyfile.h: the daemon reads its own key with the same
 * rules).
 */
#include "medroute.h"
#include "mr_keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

/* A key file's text: room for the comment line of any name a file may have
 * (255 bytes). */
#define S_TEXT_MAX 512

static int s_write(const char *path, int flags, mode_t mode, const char *what, const char *name,
                   const char *key)
{
    /* Made before the file is, so that a name it cannot hold leaves no
     * file behind. */
    char text[S_TEXT_MAX];
    int n = snprintf(text, sizeof text, "# medroute CURVE %s key of %s%s\n%s\n", what, name,
                     strcmp(what, "secret") == 0 ? " - keep it on that machine only" : "", key);
    int rc = 0, fd = -1;
    if (n < 0 || (size_t)n >= sizeof text) {
        rc = -ENAMETOOLONG;
        goto out;
    }
    fd = open(path, flags | O_WRONLY | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = write(fd, text, (size_t)n) == n ? 0 : -EIO;
    if (fsync(fd) != 0 && rc == 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
out:
    explicit_bzero(text, sizeof text); /* a secret key's text holds the key */
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
    explicit_bzero(sec, sizeof sec);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    rc = s_write(path, O_TRUNC, 0644, "public", name, pub);
    if (rc == 0 && public_out)
        memcpy(public_out, pub, 41);
    return rc;
}

/* Reads the key of the file path into *kf (mr_keyfile_read, whose rules
 * the daemon applies too): 0, -EINVAL (no Z85 key in it), or -errno. */
static int s_read(const char *path, mr_keyfile_t *kf)
{
    int rc = mr_keyfile_read(path, kf);
    uint8_t raw[32];
    if (rc == 0 && (kf->key[0] == '\0' || zmq_z85_decode(raw, kf->key) == NULL))
        rc = -EINVAL;
    explicit_bzero(raw, sizeof raw); /* a secret key, decoded */
    return rc;
}

int mr_key_read(const char *path, char key_out[41], char public_out[41])
{
    mr_keyfile_t kf;
    int rc = s_read(path, &kf);
    if (rc == 0)
        memcpy(key_out, kf.key, 41);
    if (rc == 0 && public_out != NULL && zmq_curve_public(public_out, key_out) != 0)
        rc = -EINVAL;
    explicit_bzero(&kf, sizeof kf);
    return rc;
}

int mr_key_read_secret(const char *path, char secret_out[41], char public_out[41])
{
    mr_keyfile_t kf;
    int rc = s_read(path, &kf);
    if (rc == 0 && kf.kind == MR_KEYFILE_PUBLIC)
        rc = -ENOKEY; /* said first: a .pub is rightly readable by all */
    else if (rc == 0 && (kf.loose || kf.foreign))
        rc = -EPERM; /* a secret key others could read is no longer secret */
    if (rc == 0 && public_out != NULL && zmq_curve_public(public_out, kf.key) != 0)
        rc = -EINVAL;
    if (rc == 0)
        memcpy(secret_out, kf.key, 41);
    explicit_bzero(&kf, sizeof kf);
    return rc;
}

int mr_key_read_public(const char *path, char public_out[41])
{
    mr_keyfile_t kf;
    int rc = s_read(path, &kf);
    if (rc == 0 && kf.kind == MR_KEYFILE_SECRET)
        rc = -ENOKEY; /* and a secret key left where a public one was looked for */
    if (rc == 0)
        memcpy(public_out, kf.key, 41);
    explicit_bzero(&kf, sizeof kf);
    return rc;
}
