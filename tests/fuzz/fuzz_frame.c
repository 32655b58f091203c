/*
 * fuzz_frame.c - libFuzzer target: medroute.v1.Frame from hostile bytes.
 *
 * The input is one facility frame as it arrives on the wire.  When it
 * decodes, every field is read (fuzz_walk) and the frame must re-encode
 * stably (fuzz_repack).  A frame that does not decode is a normal outcome.
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
    medroute__v1__frame__free_unpacked(f, NULL);
    return 0;
}
