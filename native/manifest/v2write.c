// Manifest format version 2 body writer: see v2write.h and docs/manifest-v2.md.
#include "v2write.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

void m2w_init(struct m2w *w, int fd) {
  memset(w, 0, offsetof(struct m2w, buf));
  w->fd = fd;
}

int m2w_flush(struct m2w *w) {
  size_t at = 0;
  while (w->error == 0 && at < w->len) {
    ssize_t n = write(w->fd, w->buf + at, w->len - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) w->error = n < 0 ? errno : EIO;
    else at += (size_t)n;
  }
  w->len = 0;
  return w->error;
}

void m2w_raw(struct m2w *w, const void *data, size_t n) {
  const uint8_t *p = data;
  w->written += n;
  while (n > 0 && w->error == 0) {
    if (w->len == M2W_BUFFER) m2w_flush(w);
    size_t room = M2W_BUFFER - w->len;
    size_t take = n < room ? n : room;
    memcpy(w->buf + w->len, p, take);
    w->len += take;
    p += take;
    n -= take;
  }
}

size_t m2_varint_encode(uint8_t *out, uint64_t v) {
  size_t n = 0;
  // LEB128, shortest form by construction: stop as soon as what is left fits in 7 bits.
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

size_t m2_zigzag_encode(uint8_t *out, int64_t v) {
  return m2_varint_encode(out, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

// A value over the format's limit (every reader refuses it) fails the body with ERANGE: the mappers
// refuse such inodes by name first; this is the backstop that keeps a missed check from exporting a
// manifest no mover can load.
static bool in_range(struct m2w *w, uint64_t encoded) {
  if (encoded <= M2_VALUE_MAX) return true;
  if (w->error == 0) w->error = ERANGE;
  return false;
}

void m2w_varint(struct m2w *w, uint64_t v) {
  uint8_t tmp[M2_VARINT_MAX_BYTES];
  if (in_range(w, v)) m2w_raw(w, tmp, m2_varint_encode(tmp, v));
}

void m2w_zigzag(struct m2w *w, int64_t v) {
  uint8_t tmp[M2_VARINT_MAX_BYTES];
  if (in_range(w, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63))) m2w_raw(w, tmp, m2_zigzag_encode(tmp, v));
}

void m2w_bytes(struct m2w *w, const void *data, size_t n) {
  m2w_varint(w, n);
  m2w_raw(w, data, n);
}

static void m2w_u8(struct m2w *w, uint8_t v) {
  m2w_raw(w, &v, 1);
}

static void m2w_u32(struct m2w *w, uint32_t v) {
  uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  m2w_raw(w, le, 4);
}

void m2w_dir_begin(struct m2w *w, uint64_t dir, uint64_t n) {
  m2w_u8(w, M2_TAG_DIR);
  m2w_varint(w, dir);
  m2w_varint(w, n);
  w->prev_child = 0;
}

size_t m2_dir_entry_encode(uint8_t *out, const void *name, size_t len, uint64_t child, uint64_t *prev_child) {
  size_t n = m2_varint_encode(out, len);
  memcpy(out + n, name, len);
  n += len;
  n += m2_zigzag_encode(out + n, (int64_t)child - (int64_t)*prev_child);
  *prev_child = child;
  return n;
}

void m2w_dir_entry(struct m2w *w, const void *name, size_t len, uint64_t child) {
  uint8_t tmp[M2_MAX_NAME + 2 * M2_VARINT_MAX_BYTES];
  m2w_raw(w, tmp, m2_dir_entry_encode(tmp, name, len, child, &w->prev_child));
}

static void m2w_time(struct m2w *w, int which, struct m2_time t) {
  m2w_zigzag(w, t.sec - w->prev_sec[which]);
  m2w_u32(w, t.nsec);
  w->prev_sec[which] = t.sec;
}

void m2w_inode_begin(struct m2w *w, const struct m2_inode *i) {
  m2w_u8(w, M2_TAG_INODE);
  m2w_varint(w, i->ino - w->prev_ino);
  w->prev_ino = i->ino;
  m2w_varint(w, i->mode);
  m2w_varint(w, i->uid);
  m2w_varint(w, i->gid);
  m2w_varint(w, i->nlink);
  m2w_varint(w, i->size);
  m2w_varint(w, i->blocks);
  m2w_time(w, 0, i->atime);
  m2w_time(w, 1, i->mtime);
  m2w_time(w, 2, i->ctime);
  m2w_varint(w, i->has);
  if (i->has & M2_HAS_RDEV) m2w_varint(w, i->rdev);
  if (i->has & M2_HAS_ATTRS) m2w_varint(w, i->attrs);
}

void m2w_xattrs_begin(struct m2w *w, uint64_t n) {
  m2w_varint(w, n);
}

void m2w_xattr(struct m2w *w, const void *name, size_t name_len, const void *value, size_t value_len) {
  m2w_bytes(w, name, name_len);
  m2w_bytes(w, value, value_len);
}

void m2w_extents_begin(struct m2w *w, uint64_t n) {
  m2w_varint(w, n);
}

void m2w_extent(struct m2w *w, uint64_t gap, uint64_t length, uint32_t device, uint64_t device_offset) {
  m2w_varint(w, gap);
  m2w_varint(w, length);
  m2w_varint(w, device);
  m2w_zigzag(w, (int64_t)(device_offset - w->cursor));
  m2w_varint(w, 0); // extras: ext4 keeps no data checksums and does not compress
  w->cursor = device_offset + length;
}

void m2w_extent_extras(struct m2w *w, uint64_t gap, uint64_t length, uint32_t device, uint64_t device_offset,
                       const struct m2_extent_extras *x) {
  m2w_varint(w, gap);
  m2w_varint(w, length);
  m2w_varint(w, device);
  m2w_zigzag(w, (int64_t)(device_offset - w->cursor));
  m2w_varint(w, (x->csums ? M2_EXT_CSUMS : 0u) | (x->algorithm ? M2_EXT_COMPRESSED : 0u));
  w->cursor = device_offset + length;
  if (x->csums) {
    m2w_varint(w, x->ncopies);
    for (uint32_t k = 0; k < x->ncopies; k++) {
      m2w_varint(w, x->copies[k].device);
      m2w_varint(w, x->copies[k].device_offset);
    }
    m2w_bytes(w, x->csum, x->csum_len);
  }
  if (x->algorithm) {
    m2w_u8(w, x->algorithm);
    m2w_varint(w, x->disk_length);
    m2w_varint(w, x->decoded_length);
    m2w_varint(w, x->decoded_offset);
  }
}
