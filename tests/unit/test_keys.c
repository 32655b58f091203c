/*
 * Unit tests for clients/lib/keys.c: CURVE key files as `medroute keygen`
 * writes them and mr_key_read (and its secret and public readers) read
 * them back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "medroute.h"
#include "mr_keyfile.h"

static void s_rm(const char *dir, const char *name, const char *ext)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s%s", dir, name, ext);
    unlink(p);
}

/* A long name (a file name may have 255 bytes) does not fit the first
 * guess of a buffer: the secret key file still holds the key, and nothing
 * else, or keygen fails; it never reports a key it did not write. */
static void test_keys_long_name_written_whole_or_refused(void **state)
{
    (void)state;
    char dir[] = "/tmp/mr-test-keys-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char name[221];
    memset(name, 'k', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char pub[41], sec[41], derived[41], path[1024];
    int rc = mr_keygen(dir, name, pub);
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/%s.key", dir, name);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_int_equal(mr_key_read(path, sec, derived), 0);
        assert_string_equal(derived, pub);
        snprintf(path, sizeof path, "%s/%s.pub", dir, name);
        assert_int_equal(mr_key_read(path, derived, NULL), 0);
        assert_string_equal(derived, pub);
    } else {
        assert_true(rc < 0);
    }
    s_rm(dir, name, ".key");
    s_rm(dir, name, ".pub");
    assert_int_equal(rmdir(dir), 0);
}

/* Each reader takes its own kind of file and says so of the other; a
 * secret key file other users may read, or its group change, is refused; a
 * file without keygen's comment (written by hand, or by an older tool) is
 * taken as asked. */
static void test_keys_readers_tell_secret_from_public(void **state)
{
    (void)state;
    char dir[] = "/tmp/mrt-keys-kind-XXXXXX", path[1024], pubpath[1024];
    assert_non_null(mkdtemp(dir));
    char pub[41], sec[41], derived[41];
    assert_int_equal(mr_keygen(dir, "t-aihua", pub), 0);
    snprintf(path, sizeof path, "%s/t-aihua.key", dir);
    snprintf(pubpath, sizeof pubpath, "%s/t-aihua.pub", dir);
    assert_int_equal(mr_key_read_secret(path, sec, derived), 0);
    assert_string_equal(derived, pub);
    assert_int_equal(mr_key_read_public(pubpath, derived), 0);
    assert_string_equal(derived, pub);
    assert_int_equal(mr_key_read_secret(pubpath, sec, derived), -ENOKEY);
    assert_int_equal(mr_key_read_public(path, derived), -ENOKEY);
    assert_int_equal(chmod(path, 0604), 0);
    assert_int_equal(mr_key_read_secret(path, sec, derived), -EPERM);
    assert_int_equal(chmod(path, 0620), 0);
    assert_int_equal(mr_key_read_secret(path, sec, derived), -EPERM);
    /* A group may read it: systemd's credentials show 0440 (their ACL). */
    assert_int_equal(chmod(path, 0440), 0);
    assert_int_equal(mr_key_read_secret(path, sec, derived), 0);
    assert_int_equal(chmod(path, 0600), 0);
    /* By hand: the key line alone. */
    char bare[1024];
    snprintf(bare, sizeof bare, "%s/bare", dir);
    FILE *f = fopen(bare, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", sec);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(bare, 0600), 0);
    assert_int_equal(mr_key_read_secret(bare, derived, NULL), 0);
    assert_string_equal(derived, sec);
    assert_int_equal(mr_key_read_public(bare, derived), 0);
    unlink(bare);
    s_rm(dir, "t-aihua", ".key");
    s_rm(dir, "t-aihua", ".pub");
    assert_int_equal(rmdir(dir), 0);
}

/* A comment line longer than the reader's line buffer (512 bytes) is one
 * line still: its tail is not read as the key line.  Until the seventeenth
 * session the tail of such a comment, 40 bytes of Z85, was taken as the
 * key and the real key line after it ignored. */
static void test_keys_long_comment_line_is_one_line(void **state)
{
    (void)state;
    char dir[] = "/tmp/mrt-keys-long-XXXXXX", path[1024];
    assert_non_null(mkdtemp(dir));
    char pub[41], derived[41];
    assert_int_equal(mr_keygen(dir, "t-aihua", pub), 0);
    snprintf(path, sizeof path, "%s/hand.pub", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    /* 511 bytes fill the buffer; the 40 after them are Z85, not the key */
    fprintf(f, "#");
    for (int i = 0; i < 510; i++)
        fputc('x', f);
    fprintf(f, "%s\n%s\n", "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", pub);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(mr_key_read_public(path, derived), 0);
    assert_string_equal(derived, pub);
    unlink(path);
    s_rm(dir, "t-aihua", ".key");
    s_rm(dir, "t-aihua", ".pub");
    assert_int_equal(rmdir(dir), 0);
}

/* Only a regular file is read: /dev/zero is one endless line (a start, or
 * a reload on the daemon's loop, read it for ever), a FIFO without a writer
 * blocked the open, /dev/null and a directory read as a file holding no
 * key.  All are refused as not a key file. */
static void test_keys_only_a_regular_file_is_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/mrt-keys-kind-XXXXXX", fifo[1024];
    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof fifo, "%s/key.fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    mr_keyfile_t kf;
    assert_int_equal(mr_keyfile_read("/dev/null", &kf), -EINVAL);
    assert_int_equal(mr_keyfile_read("/dev/zero", &kf), -EINVAL);
    assert_int_equal(mr_keyfile_read(dir, &kf), -EINVAL);
    assert_int_equal(mr_keyfile_read(fifo, &kf), -EINVAL);
    unlink(fifo);
    assert_int_equal(rmdir(dir), 0);
}

/* A secret key file owned by another user than ours (or root) is refused,
 * whatever its mode: its owner may read or change it.  A public key, which
 * all may read, is not.  Giving a file away takes root (as CI runs): an
 * ordinary user cannot, and the test is skipped, saying so. */
static void test_keys_secret_key_of_another_owner_refused(void **state)
{
    (void)state;
    char dir[] = "/tmp/mrt-keys-owner-XXXXXX", path[1024], pubpath[1024];
    assert_non_null(mkdtemp(dir));
    char pub[41], sec[41], derived[41];
    assert_int_equal(mr_keygen(dir, "t-aihua", pub), 0);
    snprintf(path, sizeof path, "%s/t-aihua.key", dir);
    snprintf(pubpath, sizeof pubpath, "%s/t-aihua.pub", dir);
    /* An owner that is neither us nor root: nobody, or one more than us. */
    uid_t other = geteuid() == 65534 ? 65533 : 65534;
    if (chown(path, other, (gid_t)-1) != 0 || chown(pubpath, other, (gid_t)-1) != 0) {
        s_rm(dir, "t-aihua", ".key");
        s_rm(dir, "t-aihua", ".pub");
        assert_int_equal(rmdir(dir), 0);
        print_message("skipped: cannot give a file to uid %u (%s); run as root\n",
                      (unsigned)other, strerror(errno));
        skip();
    }
    mr_keyfile_t kf;
    assert_int_equal(mr_keyfile_read(path, &kf), 0);
    assert_true(kf.foreign);
    assert_int_equal(kf.owner, other);
    assert_false(kf.loose);
    assert_int_equal(mr_key_read_secret(path, sec, derived), -EPERM);
    assert_int_equal(mr_key_read_public(pubpath, derived), 0);
    assert_string_equal(derived, pub);
    /* Root's, as a systemd credential is: taken. */
    assert_int_equal(chown(path, 0, (gid_t)-1), 0);
    assert_int_equal(mr_key_read_secret(path, sec, derived), 0);
    assert_string_equal(derived, pub);
    s_rm(dir, "t-aihua", ".key");
    s_rm(dir, "t-aihua", ".pub");
    assert_int_equal(rmdir(dir), 0);
}

/* A CURVE key shorter than Z85's 40 characters makes mr_client_new and
 * mr_operator_new_curve fail, reading no byte past its end: ZeroMQ reads 40
 * bytes whatever the string's length.  The key here ends a page whose next
 * one may not be read, so a read past it is a crash, not a silent one. */
static void test_keys_short_key_is_refused_unread_past_its_end(void **state)
{
    (void)state;
    long page = sysconf(_SC_PAGESIZE);
    assert_true(page > 0);
    char *map = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(map != MAP_FAILED);
    assert_int_equal(mprotect(map + page, (size_t)page, PROT_NONE), 0);
    /* The example keys of the CurveZMQ specification. */
    const char *pub = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
    const char *sec = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
    static const char short_key[] = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    char *key = map + page - 20; /* a Z85 key cut to 19 characters */
    memcpy(key, short_key, 19);
    key[19] = '\0';
    mr_client_opts_t o = {.endpoint = "tcp://127.0.0.1:1", .facility = "t-aihua",
                          .server_public_key = key, .public_key = pub, .secret_key = sec};
    mr_client_t *c = mr_client_new(&o);
    assert_null(c);
    o = (mr_client_opts_t){.endpoint = "tcp://127.0.0.1:1", .facility = "t-aihua",
                           .server_public_key = pub, .public_key = pub, .secret_key = key};
    c = mr_client_new(&o);
    assert_null(c);
    mr_operator_t *op = mr_operator_new_curve("tcp://127.0.0.1:1", key, pub, sec);
    assert_null(op);
    op = mr_operator_new_curve("tcp://127.0.0.1:1", pub, key, sec);
    assert_null(op);
    /* Whole keys are taken. */
    o = (mr_client_opts_t){.endpoint = "tcp://127.0.0.1:1", .facility = "t-aihua",
                           .server_public_key = pub, .public_key = pub, .secret_key = sec};
    c = mr_client_new(&o);
    assert_non_null(c);
    mr_client_destroy(&c);
    op = mr_operator_new_curve("tcp://127.0.0.1:1", pub, pub, sec);
    assert_non_null(op);
    mr_operator_destroy(&op);
    assert_int_equal(munmap(map, 2 * (size_t)page), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_long_name_written_whole_or_refused),
        cmocka_unit_test(test_keys_readers_tell_secret_from_public),
        cmocka_unit_test(test_keys_long_comment_line_is_one_line),
        cmocka_unit_test(test_keys_only_a_regular_file_is_read),
        cmocka_unit_test(test_keys_secret_key_of_another_owner_refused),
        cmocka_unit_test(test_keys_short_key_is_refused_unread_past_its_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
