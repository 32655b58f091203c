/*
 * main.c - medrouted: parse options, load config, create the server, run
 * the loop, destroy.
 */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "conf.h"
#include "log.h"
#include "server.h"
#include "store.h"

extern const char mr_default_conf[];

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: medrouted [--config FILE] [--data-dir DIR] [--log-level LEVEL]\n"
            "       medrouted --check-config FILE\n"
            "       medrouted --print-default-config\n"
            "Without --config the embedded defaults (config/medroute.conf) are used.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'C'},
        {"data-dir", required_argument, NULL, 'd'},
        {"log-level", required_argument, NULL, 'l'},
        {"print-default-config", no_argument, NULL, 'p'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *data_dir = NULL, *level = NULL;
    int check = 0;
    int c;
    while ((c = getopt_long(argc, argv, "c:C:d:l:pVh", opts, NULL)) != -1) {
        switch (c) {
        case 'C': check = 1; /* fall through */
        case 'c': config = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'l': level = optarg; break;
        case 'p': fputs(mr_default_conf, stdout); return 0;
        case 'V': printf("medrouted %s\n", MR_VERSION); return 0;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    char err[4096];
    conf_t *conf = config ? conf_load_file(config, err, sizeof err)
                          : conf_load_string(mr_default_conf, "<embedded>", err, sizeof err);
    if (conf != NULL && conf_check_security(conf, err, sizeof err) != 0) {
        conf_destroy(&conf);
        /* A file that reads well but cannot be run as it is (no broker key,
         * plaintext beyond loopback): at start, the event the operator's
         * table names; --check-config prints it as it prints the others. */
        log_t *log = check ? NULL : log_new(MR_LOG_INFO, stderr);
        if (log != NULL) {
            char safe[1024];
            log_error(log, "server.config_refused", "reason=\"%s\"",
                      log_clean(safe, sizeof safe, err));
            log_destroy(&log);
            return 78; /* EX_CONFIG */
        }
    }
    if (conf == NULL) {
        fprintf(stderr, "%s\n", err);
        return check ? 1 : 78; /* EX_CONFIG */
    }
    if (check) {
        printf("%s: ok (%zu facilities)\n", config, conf->n_facilities);
        conf_destroy(&conf);
        return 0;
    }
    if (data_dir != NULL) {
        char *dup = strdup(data_dir);
        if (dup == NULL) {
            conf_destroy(&conf);
            return 1;
        }
        free(conf->data_dir);
        conf->data_dir = dup;
    }
    log_level_t lvl = MR_LOG_INFO;
    if (log_level_parse(level ? level : conf->log_level, &lvl) < 0) {
        fprintf(stderr, "unknown log level\n");
        conf_destroy(&conf);
        return 2;
    }
    log_t *log = log_new(lvl, stderr);
    if (log == NULL) {
        conf_destroy(&conf);
        return 1;
    }
    umask(077); /* store, keys and sockets are owner-only */
    /* Messages are allocated on one thread and freed on another: without this
     * glibc keeps giving arena memory back (madvise) and taking it again. */
    if (mallopt(M_TRIM_THRESHOLD, 64 << 20) != 1 || mallopt(M_TOP_PAD, 16 << 20) != 1)
        fprintf(stderr, "medrouted: mallopt failed (memory is trimmed more often)\n");
    /* Local days and periods: set once, before any thread starts. */
    if (setenv("TZ", conf->timezone, 1) != 0) {
        fprintf(stderr, "cannot set the time zone\n");
        conf_destroy(&conf);
        log_destroy(&log);
        return 1;
    }
    tzset();
    if (store_process_init() != 0)
        fprintf(stderr, "medrouted: SQLite settings not applied (memory statistics stay on)\n");
    server_t *server = server_new(conf, log); /* takes conf */
    if (server != NULL) {
        server->config_path = config;          /* argv outlives the server */
        server->config_text = mr_default_conf; /* static */
        server->data_dir_override = data_dir;  /* argv, or NULL */
    }
    int rc = server ? server_run(server) : -1;
    server_destroy(&server);
    log_destroy(&log);
    return rc == 0 ? 0 : 1;
}
