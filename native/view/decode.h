// Decoders of btrfs's compressed extents (zlib, lzo, zstd), pure: bytes in, bytes out, no engine.
// read.c decodes each compressed extent it serves through them; the addon's `decode` (for tests)
// calls them directly on hostile input.
#ifndef EXTFS_VIEW_DECODE_H
#define EXTFS_VIEW_DECODE_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>

// One thread's decoder state, kept between extents (allocated on first use, freed by
// xt_decoder_free): zlib's inflate state with its 32 KiB window, a zstd context (~100 KiB). lzo
// needs none.
struct xt_decoder {
  z_stream zs;
  int zs_ready;
  ZSTD_DCtx *zd;
};

// Decode `in_len` bytes of an extent compressed with `algorithm` (XT_ZLIB, XT_LZO, XT_ZSTD; the lzo
// framing has its segment headers aligned to `sector_size`) into out, which has room for `cap`
// bytes and never gets more: 0 with *out_len set, or EIO with `why` saying what is wrong (a stream
// that does not decode, is truncated, or would decode to more than `cap` bytes), or ENOMEM.
int xt_decode(struct xt_decoder *d, uint32_t algorithm, const uint8_t *in, size_t in_len, uint32_t sector_size, uint8_t *out, size_t cap,
              size_t *out_len, char *why, size_t why_len);
void xt_decoder_free(struct xt_decoder *d);

#endif
