/*
 * fuzz_config.c - libFuzzer target: the daemon's configuration loader.
 *
 * The input, as NUL-terminated text, goes to conf_load_string (libconfig
 * parse, schema, every problem with its line).  An accepted configuration
 * also builds the registry, as server_new does.  A refusal must say why.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz_util.h"
#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[4096];
    err[0] = '\0';
    conf_t *c = conf_load_string(text, "fuzz.conf", err, sizeof err);
    if (c == NULL) {
        FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL && err[0] != '\0');
    } else {
        char rerr[1024];
        registry_t *r = registry_new(c->facilities, c->n_facilities, rerr, sizeof rerr);
        if (r != NULL) {
            for (size_t i = 0; i < registry_count(r); i++) {
                const facility_t *f = registry_at(r, i);
                FUZZ_CHECK(registry_find(r, f->id, strlen(f->id)) == (int)i);
            }
            registry_destroy(&r);
        }
        conf_destroy(&c);
        FUZZ_CHECK(c == NULL);
    }
    free(text);
    return 0;
}
