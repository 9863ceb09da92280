// The read path: a request (offset, size) of one file → a plan (xt_plan_read in plan.c: the EOF clip,
// bytes, or zero runs and device ranges: the same plan as src/extents/plan.ts), then the I/O: each
// device range read with pread(2) on the O_DIRECT device fds into a per-thread aligned buffer, then
// one reply. The plan is pure (tables and extents in, pieces out), so tests call it through the addon
// (planRead) with no mount: what they check is what serves. O_DIRECT wants offset, length and buffer
// aligned (4096 covers every logical block size), so a device range is read as the enclosing aligned
// range: straight into the reply buffer when the range and its place in the buffer are both aligned
// (the usual case: block-aligned extents, page-aligned requests), else through a bounce buffer and a copy.
// A device that fails or reads short is EIO, logged with inode, offset and device; never zeros.
// An extent with checksums (btrfs, docs/manifest-format.md "Data checksums") is read in whole sectors,
// each verified; a sector that does not verify (or a device read that fails) is read from the
// extent's other copies in turn, and when no copy verifies the read is EIO, logged with the sector's
// device offset and "no copy verifies": never a copy btrfs itself would reject.
// A compressed extent (btrfs compress=) is read whole: its encoded stream's sectors, verified as above
// (btrfs checksums the encoded bytes), then decoded (decode.c) into a per-thread buffer that is kept
// as a cache of the last extent decoded, and the piece copied out of it. A stream that does not
// decode, or decodes to fewer bytes than the piece needs, is EIO, logged: never zeros.
// Every read first checks the lease (config.c): a clock read while it is fresh. A read may start or
// move a push-ahead job (push.c), which reads through xt_read_into too.
// A request resolves through one map of the file, loaded once (delta.c): the tables' extents, or the
// list the latest delta installed; served reads are noted before the reply (xt_note_served).
#include "engine.h"
#include "../csum.h"
#include "decode.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ALIGN ((uint64_t)4096)
#define BOUNCE (((size_t)1 << 20) + 2 * ALIGN) // bytes; a misaligned range is copied in pieces this size

static uint64_t align_down(uint64_t x) {
  return x & ~(ALIGN - 1);
}
static uint64_t align_up(uint64_t x) {
  return (x + ALIGN - 1) & ~(ALIGN - 1);
}

// Per worker thread (and pusher): the reply buffer, the bounce buffer, the buffer whole sectors are
// verified in and, once a compressed extent was read, the decoder's state and the last extent
// decoded (the cache: `decoded_of` names it, for as long as the thread lives, since extents are
// never freed while the session runs). Freed when the thread ends. Beyond the reply, what compressed
// extents add is bounded per thread: 128 KiB + 1 decoded, 132 KiB of verified sectors, zlib's
// ~40 KiB and zstd's ~100 KiB of state: about 400 KiB, so 17 threads (16 workers, a pusher) ~7 MiB.
struct tbuf {
  uint8_t *out, *bounce, *sectors, *decoded;
  size_t out_cap, sectors_cap, decoded_len;
  const struct xt_extent *decoded_of;
  struct xt_decoder decoder;
};
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

static void tbuf_free(void *p) {
  struct tbuf *b = p;
  free(b->out);
  free(b->bounce);
  free(b->sectors);
  free(b->decoded);
  xt_decoder_free(&b->decoder);
  free(b);
}
static void tbuf_key_init(void) {
  pthread_key_create(&tbuf_key, tbuf_free);
}

// This thread's buffers with at least `need` bytes of reply buffer; NULL when memory ran out.
static struct tbuf *tbuf_get(size_t need) {
  pthread_once(&tbuf_once, tbuf_key_init);
  struct tbuf *b = pthread_getspecific(tbuf_key);
  if (b == NULL) {
    if ((b = calloc(1, sizeof *b)) == NULL) return NULL;
    pthread_setspecific(tbuf_key, b);
  }
  if (b->out_cap < need) {
    void *p;
    if (posix_memalign(&p, ALIGN, need) != 0) return NULL;
    free(b->out);
    b->out = p;
    b->out_cap = need;
  }
  return b;
}

// Read `want` bytes at `off` into `dst`, going on after short reads; 0 when at least `need` arrived
// (an aligned range may run past the end of the device), else an errno with `why` filled in.
static int pread_full(int fd, uint8_t *dst, size_t want, uint64_t off, size_t need, char *why, size_t why_len) {
  size_t got = 0;
  while (got < want) {
    ssize_t n = pread(fd, dst + got, want - got, (off_t)(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      snprintf(why, why_len, "pread of %zu bytes at %llu: %s", want - got, (unsigned long long)(off + got), strerror(err));
      return EIO;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  if (got >= need) return 0;
  snprintf(why, why_len, "short read: %zu of %zu bytes at %llu", got, need, (unsigned long long)off);
  return EIO;
}

// `len` bytes of device `d` at `doff` into dst, which has room up to align_up(len) bytes further
// when dst is aligned.
static int read_range(struct tbuf *b, const struct xt_device *d, uint8_t *dst, uint64_t doff, size_t len, char *why, size_t why_len) {
  // No fd: a device a delta retired, never opened on this host. The map in force names no extent on
  // it, so only a map that lies about it gets here: fail rather than read any other device.
  if (d->fd < 0) return snprintf(why, why_len, "the device is retired (not opened on this host)"), EIO;
  if ((uintptr_t)dst % ALIGN == 0 && doff % ALIGN == 0) {
    // Straight in. The aligned length may run past this range into the buffer's slack or the next
    // piece's place, which is filled after this one.
    return pread_full(d->fd, dst, (size_t)align_up(len), doff, len, why, why_len);
  }
  if (b->bounce == NULL) { // only misaligned ranges need one: allocated on first use
    void *p;
    if (posix_memalign(&p, ALIGN, BOUNCE) != 0) return snprintf(why, why_len, "out of memory"), ENOMEM;
    b->bounce = p;
  }
  while (len > 0) {
    uint64_t start = align_down(doff), skip = doff - start;
    size_t chunk = len < BOUNCE - 2 * ALIGN ? len : BOUNCE - 2 * ALIGN;
    int err = pread_full(d->fd, b->bounce, (size_t)align_up(skip + chunk), start, (size_t)(skip + chunk), why, why_len);
    if (err != 0) return err;
    memcpy(dst, b->bounce + skip, chunk);
    dst += chunk;
    doff += chunk;
    len -= chunk;
  }
  return 0;
}

int xt_read_aligned(const struct xt_device *d, uint8_t *dst, uint64_t doff, size_t len, size_t need) {
  char why[256]; // prefetch's reads fail silently: the reader's own read then fails, and says why
  if (d->fd < 0) return EIO; // a retired device (read_range)
  return pread_full(d->fd, dst, len, doff, need, why, sizeof why);
}

// -------------------------------------------------------------------------------------- the I/O

// Sector `o` (its offset in extent x) of a copy verifies against x's checksum of it (in plan p's checksums).
static int sector_ok(const struct xt_tables *t, const struct xt_plan *p, const struct xt_extent *x, uint64_t o, const uint8_t *bytes) {
  const struct xt_header *h = t->h;
  return extfs_csum_ok(h->csum_alg, bytes, h->sector_size, (const uint8_t *)p->csums + x->csum_off + o / h->sector_size * h->csum_size);
}

// Sector `o` of extent x from its other copies (in plan p's copies), in order, into `dst` (aligned,
// sector_size bytes): 1 once one verifies, 0 when none does.
static int sector_from_copies(struct tbuf *b, const struct xt_tables *t, const struct xt_plan *p, const struct xt_device *devs,
                              const struct xt_extent *x, uint64_t o, uint8_t *dst) {
  char ignored[256]; // a copy that cannot be read is one more copy that does not verify
  for (uint32_t k = 0; k < x->copy_count; k++) {
    const struct xt_copy *c = &p->copies[x->copy_first + k];
    if (read_range(b, &devs[c->device], dst, c->device_offset + o, t->h->sector_size, ignored, sizeof ignored) == 0 &&
        sector_ok(t, p, x, o, dst))
      return 1;
  }
  return 0;
}

// This thread's buffer for `need` bytes of whole sectors (and ALIGN of slack); NULL when memory ran out.
static uint8_t *sectors_buffer(struct tbuf *b, size_t need) {
  if (b->sectors_cap < need) {
    void *p;
    if (posix_memalign(&p, ALIGN, need) != 0) return NULL;
    free(b->sectors);
    b->sectors = p;
    b->sectors_cap = need;
  }
  return b->sectors;
}

// Sectors [from, to) of extent x's bytes on its device (offsets from x->device_offset, whole sectors
// inside them, as xt_check saw to) into b->sectors: each read from the extent's device and verified,
// a bad one replaced from the other copies. EIO when a sector has no copy that verifies; *bad_offset
// is then that sector's offset on the extent's device.
static int verified_sectors(struct tbuf *b, const struct xt_tables *t, const struct xt_plan *p, const struct xt_device *devs,
                            const struct xt_extent *x, uint64_t from, uint64_t to, uint64_t *bad_offset, char *why, size_t why_len) {
  const uint64_t ss = t->h->sector_size;
  if (sectors_buffer(b, (size_t)(to - from) + ALIGN) == NULL) return snprintf(why, why_len, "out of memory"), ENOMEM;
  char read_err[256] = "";
  if (read_range(b, &devs[x->device], b->sectors, x->device_offset + from, (size_t)(to - from), read_err, sizeof read_err) != 0)
    memset(b->sectors, 0, (size_t)(to - from)); // every sector then stands or falls by its copies
  for (uint64_t o = from; o < to; o += ss) {
    uint8_t *sector = b->sectors + (o - from);
    if (read_err[0] == '\0' && sector_ok(t, p, x, o, sector)) continue;
    if (sector_from_copies(b, t, p, devs, x, o, sector)) continue;
    *bad_offset = x->device_offset + o;
    snprintf(why, why_len, "no copy verifies: sector of %llu bytes, %u other %s tried (%s checksums)%s%s", (unsigned long long)ss,
             x->copy_count, x->copy_count == 1 ? "copy" : "copies", t->h->csum_alg == XT_CSUM_CRC32C ? "crc32c" : "unknown",
             read_err[0] ? "; " : "", read_err);
    return EIO;
  }
  return 0;
}

// Piece `pc` of an extent with checksums into dst: the whole sectors around it, verified.
static int read_verified(struct tbuf *b, const struct xt_tables *t, const struct xt_plan *p, const struct xt_device *devs, const struct xt_piece *pc,
                         uint8_t *dst, uint64_t *bad_offset, char *why, size_t why_len) {
  const uint64_t ss = t->h->sector_size;
  uint64_t rel = pc->device_offset - pc->x->device_offset;
  uint64_t from = rel / ss * ss, to = (rel + pc->length + ss - 1) / ss * ss; // to <= x->length: xt_check saw whole sectors
  int err = verified_sectors(b, t, p, devs, pc->x, from, to, bad_offset, why, why_len);
  if (err == 0) memcpy(dst, b->sectors + (rel - from), (size_t)pc->length);
  return err;
}

// Piece `pc` of a compressed extent into dst: the extent's encoded stream read whole and verified,
// decoded (unless it is the one this thread decoded last), and the piece's bytes copied out. EIO when
// the stream does not decode, or decodes to fewer bytes than the piece needs.
static int read_compressed(struct tbuf *b, const struct xt_tables *t, const struct xt_plan *p, const struct xt_device *devs,
                           const struct xt_piece *pc, uint8_t *dst, uint64_t *bad_offset, char *why, size_t why_len) {
  const struct xt_extent *x = pc->x;
  struct xt_compressed z = xt_compressed_of(x, p->csums);
  if (b->decoded_of != x) {
    b->decoded_of = NULL; // until this one decoded
    if (b->decoded == NULL && (b->decoded = malloc(XT_DECODED_MAX + 1)) == NULL) return snprintf(why, why_len, "out of memory"), ENOMEM;
    int err = verified_sectors(b, t, p, devs, x, 0, z.disk_length, bad_offset, why, why_len);
    // One byte more than decoded_length: a stream that fills it decodes to too much.
    if (err == 0) err = xt_decode(&b->decoder, z.algorithm, b->sectors, z.disk_length, t->h->sector_size, b->decoded, (size_t)z.decoded_length + 1,
                                  &b->decoded_len, why, why_len);
    if (err == 0 && b->decoded_len > z.decoded_length)
      err = EIO, snprintf(why, why_len, "compressed extent decodes to more than its %u bytes", z.decoded_length);
    if (err != 0) return err;
    b->decoded_of = x;
  }
  if (pc->decoded_offset + pc->length > b->decoded_len)
    return snprintf(why, why_len, "compressed extent decodes to %zu bytes; the file needs bytes up to %llu of it", b->decoded_len,
                    (unsigned long long)(pc->decoded_offset + pc->length)), EIO;
  memcpy(dst, b->decoded + pc->decoded_offset, (size_t)pc->length);
  return 0;
}

// Carry out plan `p` of inode `index` (extent pieces only) into this thread's buffer; 0 with *data
// set, or an errno. A failure is posted as a `read failed` event when `report` is set.
static int read_plan(struct engine *e, uint32_t index, struct xt_plan *p, const uint8_t **data, int report) {
  struct tbuf *b = tbuf_get((size_t)align_up(p->end - p->start) + ALIGN);
  if (b == NULL) return ENOMEM;
  // After the map: a delta publishes its devices before the maps that use them.
  const struct xt_device *devs = atomic_load_explicit(&e->devs, memory_order_acquire)->d;
  struct xt_piece piece;
  while (xt_plan_next(p, &piece)) {
    size_t pos = (size_t)(piece.file_offset - p->start);
    if (piece.zero) {
      memset(b->out + pos, 0, (size_t)piece.length);
      continue;
    }
    char why[512];
    uint64_t at = piece.device_offset;
    int compressed = (piece.x->flags & XT_EXT_COMPRESSED) != 0;
    int err = compressed                     ? read_compressed(b, &e->t, p, devs, &piece, b->out + pos, &at, why, sizeof why)
              : piece.x->flags & XT_EXT_CSUM ? read_verified(b, &e->t, p, devs, &piece, b->out + pos, &at, why, sizeof why)
                                             : read_range(b, &devs[piece.device], b->out + pos, piece.device_offset, (size_t)piece.length, why, sizeof why);
    if (err != 0) {
      if (report) {
        // A sector that failed verification may start before the piece: name it, not the piece. A
        // compressed extent's sectors hold encoded bytes of no one file offset: name the piece's.
        uint64_t file_offset = at == piece.device_offset || compressed ? piece.file_offset : piece.x->file_offset + (at - piece.x->device_offset);
        struct xt_event ev = {.kind = XT_EV_READ_FAILED, .index = index, .offset = file_offset,
                              .device = piece.device, .device_offset = at};
        snprintf(ev.reason, sizeof ev.reason, "%s", why);
        xt_post_event(e, &ev);
      }
      return err;
    }
  }
  *data = b->out;
  return 0;
}

// Bytes [start, end) of inode `index` (a regular file without inline content) through map `m`
// (NULL: the tables' extents) into this thread's buffer, as read_plan.
int xt_read_into(struct engine *e, uint32_t index, struct xt_map *m, uint64_t start, uint64_t end, const uint8_t **data, int report) {
  const struct xt_inode *n = &e->t.inodes[index];
  struct xt_plan p;
  xt_plan_through(&p, &e->t, n, m, start, end);
  return read_plan(e, index, &p, data, report);
}

void xt_read(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, struct fuse_file_info *fi) {
  struct engine *e = fuse_req_userdata(req);
  const struct xt_inode *n = xt_node(e, nodeid);
  if (n == NULL) return (void)fuse_reply_err(req, ENOENT);
  if (!S_ISREG(n->mode)) return (void)fuse_reply_err(req, EISDIR);
  uint32_t index = (uint32_t)(nodeid - 1);
  int refused = xt_read_check(e, index, off < 0 ? 0 : (uint64_t)off);
  if (refused != 0) return (void)fuse_reply_err(req, refused);

  struct xt_map *m = xt_map_of(e, index);
  struct xt_plan p;
  xt_plan_read(&p, &e->t, index, m, off < 0 ? 0 : (uint64_t)off, size);
  size_t len = (size_t)(p.end - p.start);
  xt_stats_read(e, len);
  if (len == 0) return (void)fuse_reply_buf(req, NULL, 0); // at or past EOF, or a read of nothing
  if (p.inline_bytes != NULL) return (void)fuse_reply_buf(req, p.inline_bytes, len);
  const uint8_t *data;
  int err = read_plan(e, index, &p, &data, 1);
  if (err != 0) return (void)fuse_reply_err(req, err);
  xt_note_served(e, index, m, len);
  fuse_reply_buf(req, (const char *)data, len);
  xt_push_read(e, fi->fh, index, p.start, p.end); // after the reply: the reader waits for nothing here
  if (p.start == 0) xt_prefetch_read(e, index);
}
