/*
 * mr_keyfile.h - reading a CURVE key file, for the daemon (its
 * server_key_file) and libmedroute (mr_key_read*) alike, so that both apply
 * one rule to what a file says it holds and to who may use it.
 *
 * A key file (written by mr_keygen): comment lines starting with '#', the
 * first saying "# medroute CURVE public key of NAME" or "... secret key
 * ...", then the Z85 key on its own line.  One written by hand may have no
 * comment at all.
 */
#ifndef MR_KEYFILE_H
#define MR_KEYFILE_H

#include <stdbool.h>
#include <sys/types.h>

typedef enum {
    MR_KEYFILE_UNSAID = 0, /* no keygen comment: taken for what it is asked for */
    MR_KEYFILE_PUBLIC,
    MR_KEYFILE_SECRET,
} mr_keyfile_kind_t;

typedef struct {
    char key[41];           /* the first line that is not a comment, if 40 bytes long,
                             * else "" (the caller checks it is Z85) */
    mr_keyfile_kind_t kind; /* what its comment says */
    mode_t mode;            /* its permission bits */
    /* Other users may read it or anyone but its owner change it: a secret
     * key so kept is refused.  A group may read it: a deliberate set-up,
     * and how a systemd credential looks when systemd grants it to a
     * service's user through an ACL (its mask shows as the group's bits,
     * 0440).  Only the mode is read: a named user of an ACL is not seen. */
    bool loose;
    /* Owned by another user than the process's effective one or root: that
     * user may read or change it whatever its mode, so a secret key so kept
     * is refused too (PostgreSQL's rule for its key).  A systemd credential
     * is root's, or the service user's where ACLs are not supported. */
    bool foreign;
    uid_t owner; /* its owner's uid */
} mr_keyfile_t;

/* Reads path into out: 0; -EINVAL if it is not a regular file (a device
 * such as /dev/zero would be read for ever, a FIFO block); or -errno if it
 * cannot be opened or looked at.  Its own buffers are wiped; out->key may
 * be a secret key, which the caller wipes (explicit_bzero) once done. */
int mr_keyfile_read(const char *path, mr_keyfile_t *out);

#endif
