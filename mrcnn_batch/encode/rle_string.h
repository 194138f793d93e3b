/* pycocotools' compressed RLE string (its rleToString): each run length, less the one two
   before it from the third run on, in 5-bit groups, low group first, 0x20 marking that another
   follows (0x10 of the last one carries the sign), each plus 48. Shared by the encoder's
   kernel (_paste.c) and evaluation's (../evaluate/_rle.c). out needs room for 7 characters a
   run (35 bits); returns the characters written. */
#ifndef MRCNN_BATCH_RLE_STRING_H
#define MRCNN_BATCH_RLE_STRING_H

#include <stddef.h>
#include <stdint.h>

static size_t rle_string(const uint32_t *runs, int64_t n, char *out) {
    size_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t x = (int64_t)runs[i];
        if (i > 2) x -= (int64_t)runs[i - 2];
        int more = 1;
        while (more) {
            int64_t c = x & 0x1f;
            x >>= 5; /* arithmetic: a negative number keeps its sign */
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            out[k++] = (char)(c + 48);
        }
    }
    return k;
}

#endif
