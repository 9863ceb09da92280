// Decoders of btrfs's compressed extents. Every input is hostile: the devices' bytes passed their
// checksums, but the manifest that names them comes from another host. So each decoder writes into
// a buffer of a fixed capacity and never past it (zlib and zstd bound their output themselves, lzo
// through lzo1x_decompress_safe), a stream that would decode to more is refused, and so is one that
// does not decode or ends early; the caller turns any refusal into EIO.
//
// The streams, as btrfs writes them (fs/btrfs/zlib.c, zstd.c, lzo.c):
// - zlib: one zlib stream (2-byte header, deflate data, adler32) over the extent's data, zero-padded
//   to whole sectors. Like the kernel, a header without a preset dictionary is skipped and the
//   deflate data inflated raw, so the adler32 trailer is not checked (the checksums were).
// - zstd: one zstd frame, zero-padded to whole sectors; what follows the frame is ignored.
// - lzo: a 4-byte little-endian total length (the header included), then segments, each a 4-byte
//   little-endian length and that many bytes of lzo1x data decoding to at most one sector. A segment
//   header never straddles a sector boundary: when fewer than 4 bytes are left in a sector after a
//   segment, they are zero padding and the next header starts the next sector.
#include "decode.h"
#include "tables.h"

#include <errno.h>
#include <lzo/lzo1x.h>
#include <zstd_errors.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LZO_LEN 4u
// The most one sector of input can take lzo1x-compressed (lzo1x_worst_compress in the kernel).
#define LZO_WORST(n) ((n) + (n) / 16u + 64u + 3u)

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// EIO, with `why` saying what is wrong.
__attribute__((format(printf, 3, 4))) static int refuse(char *why, size_t why_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_len, fmt, ap);
  va_end(ap);
  return EIO;
}

static int decode_zlib(struct xt_decoder *d, const uint8_t *in, size_t in_len, uint8_t *out, size_t cap, size_t *out_len, char *why,
                       size_t why_len) {
  if (!d->zs_ready) {
    memset(&d->zs, 0, sizeof d->zs);
    if (inflateInit2(&d->zs, -MAX_WBITS) != Z_OK) return ENOMEM;
    d->zs_ready = 1;
  }
  // A zlib header (RFC 1950): method 8, a window of at most 32 KiB, no preset dictionary, a check
  // that divides by 31. Anything else is inflated as a zlib stream, which then fails loudly.
  int raw = in_len >= 2 && (in[0] & 0x0f) == Z_DEFLATED && (in[0] >> 4) <= 7 && !(in[1] & 0x20) && ((in[0] << 8) | in[1]) % 31 == 0;
  if (inflateReset2(&d->zs, raw ? -((in[0] >> 4) + 8) : MAX_WBITS) != Z_OK) return refuse(why, why_len, "zlib: cannot reset inflate");
  d->zs.next_in = (Bytef *)(raw ? in + 2 : in);
  d->zs.avail_in = (uInt)(raw ? in_len - 2 : in_len);
  d->zs.next_out = out;
  d->zs.avail_out = (uInt)cap;
  int r = inflate(&d->zs, Z_FINISH);
  if (r == Z_STREAM_END) return *out_len = cap - d->zs.avail_out, 0;
  if (r == Z_BUF_ERROR && d->zs.avail_out == 0) return refuse(why, why_len, "zlib stream decodes past its buffer of %llu bytes", (unsigned long long)cap);
  if (r == Z_BUF_ERROR) return refuse(why, why_len, "zlib stream ends early (%llu bytes decoded, %u of input left)", (unsigned long long)(cap - d->zs.avail_out), d->zs.avail_in);
  return refuse(why, why_len, "zlib stream does not decode: %s", d->zs.msg != NULL ? d->zs.msg : "error");
}

static int decode_zstd(struct xt_decoder *d, const uint8_t *in, size_t in_len, uint8_t *out, size_t cap, size_t *out_len, char *why,
                       size_t why_len) {
  // The first frame only: btrfs writes one, then zero padding.
  size_t frame = ZSTD_findFrameCompressedSize(in, in_len);
  if (ZSTD_isError(frame)) return refuse(why, why_len, "zstd frame not found: %s", ZSTD_getErrorName(frame));
  if (d->zd == NULL && (d->zd = ZSTD_createDCtx()) == NULL) return ENOMEM;
  size_t n = ZSTD_decompressDCtx(d->zd, out, cap, in, frame); // one shot: decodes into `out` alone, no window buffer
  if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) return refuse(why, why_len, "zstd frame decodes past its buffer of %llu bytes", (unsigned long long)cap);
  if (ZSTD_isError(n)) return refuse(why, why_len, "zstd frame does not decode: %s", ZSTD_getErrorName(n));
  *out_len = n;
  return 0;
}

static pthread_once_t lzo_once = PTHREAD_ONCE_INIT;
static int lzo_ready;
static void lzo_setup(void) {
  lzo_ready = lzo_init() == LZO_E_OK;
}

static int decode_lzo(const uint8_t *in, size_t in_len, uint32_t sector, uint8_t *out, size_t cap, size_t *out_len, char *why, size_t why_len) {
  pthread_once(&lzo_once, lzo_setup);
  if (!lzo_ready) return refuse(why, why_len, "lzo: lzo_init failed");
  if (sector < LZO_LEN || in_len < LZO_LEN) return refuse(why, why_len, "lzo stream of %zu bytes has no header (sector %u)", in_len, sector);
  uint32_t total = le32(in); // the stream's length, its own header included
  if (total < LZO_LEN || total > in_len) return refuse(why, why_len, "lzo header says %u bytes, the extent holds %zu", total, in_len);
  if ((total + (uint64_t)sector - 1) / sector * sector < in_len) return refuse(why, why_len, "lzo header says %u bytes: the extent's %zu leave whole sectors unused", total, in_len);
  size_t pos = LZO_LEN, done = 0;
  while (pos < total) {
    if (pos / sector != (pos + LZO_LEN - 1) / sector) return refuse(why, why_len, "lzo segment header at %zu crosses a sector boundary", pos);
    if (total - pos < LZO_LEN) return refuse(why, why_len, "lzo stream ends inside a segment header at %zu of %u", pos, total);
    uint32_t seg = le32(in + pos);
    pos += LZO_LEN;
    if (seg > total - pos) return refuse(why, why_len, "lzo segment of %u bytes runs past the stream's end at %u", seg, total);
    if (seg > LZO_WORST(sector)) return refuse(why, why_len, "lzo segment of %u bytes is longer than one sector can take (%u)", seg, LZO_WORST(sector));
    lzo_uint n = cap - done;
    int r = lzo1x_decompress_safe(in + pos, seg, out + done, &n, NULL);
    if (r == LZO_E_OUTPUT_OVERRUN) return refuse(why, why_len, "lzo stream decodes past its buffer of %llu bytes", (unsigned long long)cap);
    if (r != LZO_E_OK) return refuse(why, why_len, "lzo segment at %zu does not decode (lzo1x error %d)", pos - LZO_LEN, r);
    done += n;
    pos += seg;
    size_t left = sector - pos % sector; // fewer than a header's bytes: padding up to the next sector
    if (left < LZO_LEN) pos += left;
  }
  *out_len = done;
  return 0;
}

int xt_decode(struct xt_decoder *d, uint32_t algorithm, const uint8_t *in, size_t in_len, uint32_t sector_size, uint8_t *out, size_t cap,
              size_t *out_len, char *why, size_t why_len) {
  switch (algorithm) {
  case XT_ZLIB: return decode_zlib(d, in, in_len, out, cap, out_len, why, why_len);
  case XT_ZSTD: return decode_zstd(d, in, in_len, out, cap, out_len, why, why_len);
  case XT_LZO: return decode_lzo(in, in_len, sector_size, out, cap, out_len, why, why_len);
  default: return refuse(why, why_len, "unknown compression algorithm %u", algorithm);
  }
}

void xt_decoder_free(struct xt_decoder *d) {
  if (d->zs_ready) inflateEnd(&d->zs);
  d->zs_ready = 0;
  ZSTD_freeDCtx(d->zd); // NULL is fine
  d->zd = NULL;
}
