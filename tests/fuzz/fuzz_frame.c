/*
 * fuzz_frame.c - libFuzzer target: medroute.v1.Frame from hostile bytes.
 *
 * The input is one facility frame as it arrives on the wire.  When it
 * decodes, every field is read (fuzz_walk), the frame must re-encode
 * stably (fuzz_repack), and dispatch's UTF-8 walk of its bytes must find
 * them well-formed (it answers 1 or 0, never -1, for what protobuf-c took).
 * A frame that does not decode is a normal outcome.
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "mr_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mr_frame_t *f = medroute__v1__frame__unpack(NULL, size, data);
    if (f == NULL)
        return 0;
    fuzz_walk(&f->base);
    fuzz_repack(&f->base);
    char path[96];
    FUZZ_CHECK(mr_find_bad_utf8(&medroute__v1__frame__descriptor, data, size, path,
                                sizeof path) >= 0);
    medroute__v1__frame__free_unpacked(f, NULL);
    return 0;
}
