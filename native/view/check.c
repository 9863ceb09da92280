// The checks of what JS hands the engine: the tables at mount (xt_check) and every delta
// (xt_check_delta), before C trusts a single index or offset in them. Pure: no libfuse, no N-API, no
// I/O, so the fuzzers (fuzz/c/) link this file alone; engine.c and delta.c call it.
#include "tables.h"
#include "../csum.h"

#include <stdio.h>
#include <sys/stat.h>

// -------------------------------------------------------------------------------- table check

static int in_range(uint64_t off, uint64_t len, uint64_t size) {
  return off <= size && len <= size - off;
}

// A NUL-terminated string of `len` bytes at blob[off].
static int cstring_at(const char *blob, uint64_t size, uint64_t off, uint64_t len) {
  return in_range(off, len + 1, size) && blob[off + len] == '\0';
}

// A file's extents: each non-empty, within 64 bits, sorted by file offset and disjoint. The read plan
// (read.c) relies on it: a list that steps back would make a piece of negative length.
static const char *check_extents(const struct xt_extent *x, uint32_t count) {
  for (uint32_t i = 0; i < count; i++) {
    if (x[i].length == 0) return "empty extent";
    if (x[i].file_offset + x[i].length < x[i].file_offset || x[i].device_offset + x[i].length < x[i].device_offset)
      return "extent overflows 64 bits";
    if (i > 0 && x[i].file_offset < x[i - 1].file_offset + x[i - 1].length) return "extents unsorted or overlapping";
  }
  return NULL;
}

// A compressed extent's struct xt_compressed: a known algorithm, btrfs's bounds, whole sectors on
// disk, the file's bytes inside the decoded ones. read.c and the decoders trust all of it.
static const char *check_compressed(const struct xt_header *h, const struct xt_extent *x, const char *data, uint64_t data_size) {
  if (x->csum_off < sizeof(struct xt_compressed) || x->csum_off > data_size) return "compressed extent's encoding out of range";
  struct xt_compressed z = xt_compressed_of(x, data);
  if (z.algorithm != XT_ZLIB && z.algorithm != XT_LZO && z.algorithm != XT_ZSTD) return "compressed extent: unknown algorithm";
  if (z.disk_length == 0 || z.disk_length > XT_ENCODED_MAX || z.disk_length % h->sector_size != 0)
    return "compressed extent: disk length not whole sectors up to 128 KiB";
  if (z.decoded_length == 0 || z.decoded_length > XT_DECODED_MAX) return "compressed extent: decoded length not 1 byte to 128 KiB";
  if ((uint64_t)z.decoded_offset + x->length > z.decoded_length) return "compressed extent: its bytes run past the decoded data";
  return NULL;
}

// An extent's device, its other copies (each on a device, the same length inside 64 bits), its
// checksums (whole sectors, one checksum each, inside the data blob) and, compressed, its encoding.
// read.c trusts all of it.
const char *xt_check_extent_extras(const struct xt_header *h, const struct xt_extent *x, uint64_t n_devices, const struct xt_copy *copies,
                                   uint64_t n_copies, const char *data, uint64_t data_size) {
  if (x->device >= n_devices) return "extent device out of range";
  if (x->flags & ~(XT_EXT_CSUM | XT_EXT_COMPRESSED)) return "unknown extent flags";
  if (!in_range(x->copy_first, x->copy_count, n_copies)) return "extent copies out of range";
  for (uint32_t k = 0; k < x->copy_count; k++)
    if (copies[x->copy_first + k].device >= n_devices) return "copy device out of range";
  // btrfs checksums every compressed extent, and what is decoded must be what btrfs wrote.
  if ((x->flags & XT_EXT_COMPRESSED) && !(x->flags & XT_EXT_CSUM)) return "compressed extent without checksums";
  if (!(x->flags & XT_EXT_CSUM)) return x->copy_count == 0 ? NULL : "extent has copies but no checksums to choose between them";
  if (h->csum_alg == XT_CSUM_NONE) return "extent has checksums but the tables name no algorithm";
  const char *bad = x->flags & XT_EXT_COMPRESSED ? check_compressed(h, x, data, data_size) : NULL;
  if (bad != NULL) return bad;
  // The bytes on the device (and at each copy): the encoded stream of a compressed extent.
  uint64_t span = x->flags & XT_EXT_COMPRESSED ? xt_compressed_of(x, data).disk_length : x->length;
  if (x->device_offset + span < x->device_offset) return "extent overflows 64 bits";
  for (uint32_t k = 0; k < x->copy_count; k++)
    if (copies[x->copy_first + k].device_offset + span < copies[x->copy_first + k].device_offset) return "copy overflows 64 bits";
  if (span % h->sector_size != 0) return "extent with checksums is not whole sectors";
  if (!in_range(x->csum_off, span / h->sector_size * h->csum_size, data_size)) return "extent checksums out of range";
  return NULL;
}

#define SECTION(field, off, n, type)                                                                   \
  do {                                                                                                  \
    if ((off) % 8 != 0 || !in_range((off), (uint64_t)(n) * sizeof(type), len)) return "section " #field " out of bounds"; \
    t->field = (const type *)(base + (off));                                                            \
  } while (0)

const char *xt_check_sections(const void *image, uint64_t len, struct xt_tables *t) {
  const char *base = image;
  const struct xt_header *h = image;
  if (len < sizeof *h || h->magic != XT_MAGIC) return "not a table image (bad magic)";
  if (h->version != XT_VERSION) return "table image version mismatch";
  if (h->total_size != len) return "table image size mismatch";
  if (h->n_inodes == 0) return "no inodes";
  t->image = (void *)image;
  t->h = h;
  SECTION(inodes, h->inodes_off, h->n_inodes, struct xt_inode);
  SECTION(dirents, h->dirents_off, h->n_dirents, struct xt_dirent);
  SECTION(extents, h->extents_off, h->n_extents, struct xt_extent);
  SECTION(xattrs, h->xattrs_off, h->n_xattrs, struct xt_xattr);
  SECTION(devices, h->devices_off, h->n_devices, struct xt_device);
  SECTION(copies, h->copies_off, h->n_copies, struct xt_copy);
  if (!in_range(h->names_off, h->names_size, len) || !in_range(h->data_off, h->data_size, len)) return "blob out of bounds";
  t->names = base + h->names_off;
  t->data = base + h->data_off;
  return NULL;
}

// Every XT_PACE_EVERY items of each sweep over a section, pace(arg) (when not NULL): a caller
// checking a mapped file drops the pages behind it, so the check does not keep the whole image resident.
#define XT_PACE_EVERY 65536u
#define PACE(i)                                                                  \
  do {                                                                           \
    if (pace != NULL && ((i) & (XT_PACE_EVERY - 1)) == XT_PACE_EVERY - 1) pace(arg); \
  } while (0)

const char *xt_check(const void *image, uint64_t len, struct xt_tables *t) {
  return xt_check_paced(image, len, t, NULL, NULL);
}

const char *xt_check_paced(const void *image, uint64_t len, struct xt_tables *t, void (*pace)(void *arg), void *arg) {
  const char *bad = xt_check_sections(image, len, t);
  if (bad != NULL) return bad;
  const struct xt_header *h = t->h;
  if (!S_ISDIR(t->inodes[0].mode)) return "inode 0 (the root) is not a directory";
  for (uint32_t i = 0; i < h->n_inodes; i++) {
    PACE(i);
    const struct xt_inode *n = &t->inodes[i];
    if (n->parent >= h->n_inodes) return "inode parent out of range";
    if (S_ISDIR(n->mode) && !in_range(n->first, n->count, h->n_dirents)) return "dirents out of range";
    if (S_ISREG(n->mode) && (n->flags & XT_INLINE) && !in_range(n->first, n->count, h->data_size)) return "inline data out of range";
    // read.c takes the reply's length from the size, so the inline bytes must be exactly that many.
    if (S_ISREG(n->mode) && (n->flags & XT_INLINE) && n->count != n->size) return "inline data length differs from the file size";
    if (S_ISREG(n->mode) && !(n->flags & XT_INLINE)) {
      if (!in_range(n->first, n->count, h->n_extents)) return "extents out of range";
      bad = check_extents(t->extents + n->first, n->count);
      if (bad != NULL) return bad;
    }
    if (S_ISLNK(n->mode) && !cstring_at(t->data, h->data_size, n->first, n->count)) return "symlink target out of range";
    if (!in_range(n->xattr_first, n->xattr_count, h->n_xattrs)) return "xattrs out of range";
    // listxattr replies with one inode's names as they lie: they must be back to back.
    for (uint32_t k = 1; k < n->xattr_count; k++) {
      const struct xt_xattr *a = &t->xattrs[n->xattr_first + k - 1];
      if ((uint64_t)a->name_off + a->name_len + 1 != a[1].name_off) return "xattr names not contiguous";
    }
  }
  for (uint32_t i = 0; i < h->n_dirents; i++) {
    PACE(i);
    const struct xt_dirent *d = &t->dirents[i];
    if (d->child >= h->n_inodes || !cstring_at(t->names, h->names_size, d->name_off, d->name_len)) return "dirent out of range";
  }
  if (h->csum_alg != XT_CSUM_NONE && (h->csum_alg != XT_CSUM_CRC32C || h->csum_size != 4 || h->sector_size < 512 ||
                                     h->sector_size > 65536 || (h->sector_size & (h->sector_size - 1)) != 0))
    return "unknown checksum algorithm, or a checksum or sector size that does not go with it";
  for (uint32_t i = 0; i < h->n_extents; i++) {
    PACE(i);
    bad = xt_check_extent_extras(h, &t->extents[i], h->n_devices, t->copies, h->n_copies, t->data, h->data_size);
    if (bad != NULL) return bad;
  }
  for (uint32_t i = 0; i < h->n_xattrs; i++) {
    PACE(i);
    const struct xt_xattr *x = &t->xattrs[i];
    if (!cstring_at(t->data, h->data_size, x->name_off, x->name_len) || !in_range(x->value_off, x->value_len, h->data_size))
      return "xattr out of range";
  }
  for (uint32_t i = 0; i < h->n_devices; i++)
    if (t->devices[i].fd < -1) return "device fd missing"; // -1: retired, never opened (read.c refuses it)
  return NULL;
}

// -------------------------------------------------------------------------------- delta check

#undef SECTION
#define SECTION(off, n, type, what)                                                                    \
  do {                                                                                                  \
    if ((off) % 8 != 0 || !in_range((off), (uint64_t)(n) * sizeof(type), len))                          \
      return snprintf(msg, msg_len, "section %s out of bounds", what), -1;                              \
  } while (0)

int xt_check_delta(const struct xt_tables *t, const void *buf, uint64_t len, uint32_t n_old, uint32_t n_fds, char *msg, size_t msg_len) {
  const struct xt_delta_header *h = buf;
  const char *base = buf;
  if (len < sizeof *h || h->magic != XT_DELTA_MAGIC) return snprintf(msg, msg_len, "not a delta (bad magic)"), -1;
  if (h->version != XT_DELTA_VERSION) return snprintf(msg, msg_len, "delta version %u, expected %u", h->version, XT_DELTA_VERSION), -1;
  if (h->total_size != len) return snprintf(msg, msg_len, "delta size %llu, buffer holds %llu", (unsigned long long)h->total_size, (unsigned long long)len), -1;
  SECTION(h->files_off, h->n_files, struct xt_delta_file, "files");
  SECTION(h->extents_off, h->n_extents, struct xt_extent, "extents");
  SECTION(h->devices_off, h->n_devices, struct xt_device, "devices");
  SECTION(h->copies_off, h->n_copies, struct xt_copy, "copies");
  SECTION(h->data_off, h->data_size, char, "data");
  if (h->n_devices != n_fds) return snprintf(msg, msg_len, "%u new devices but %u device fds", h->n_devices, n_fds), -1;
  if ((uint64_t)n_old + h->n_devices > UINT32_MAX) return snprintf(msg, msg_len, "too many devices"), -1;
  uint64_t n_dev = (uint64_t)n_old + h->n_devices;
  const struct xt_delta_file *files = (const void *)(base + h->files_off);
  const struct xt_extent *ext = (const void *)(base + h->extents_off);
  const struct xt_copy *copies = (const void *)(base + h->copies_off);
  uint64_t next = 0;
  for (uint32_t k = 0; k < h->n_files; k++) {
    const struct xt_delta_file *f = &files[k];
    if (f->index >= t->h->n_inodes) return snprintf(msg, msg_len, "file %u: inode index %u out of range (%u inodes)", k, f->index, t->h->n_inodes), -1;
    if (k > 0 && f->index <= files[k - 1].index) return snprintf(msg, msg_len, "file %u: inode index %u not after %u (files must be sorted, each once)", k, f->index, files[k - 1].index), -1;
    const struct xt_inode *n = &t->inodes[f->index];
    if (!S_ISREG(n->mode)) return snprintf(msg, msg_len, "file %u: inode index %u is not a regular file", k, f->index), -1;
    if (n->flags & XT_INLINE) return snprintf(msg, msg_len, "file %u: inode index %u has inline content, which a delta cannot replace", k, f->index), -1;
    if (f->first != next || !in_range(f->first, f->count, h->n_extents))
      return snprintf(msg, msg_len, "file %u: extents [%u, +%u) do not follow the previous file's (at %llu) within %u extents", k, f->first, f->count, (unsigned long long)next, h->n_extents), -1;
    next = (uint64_t)f->first + f->count;
    for (uint32_t i = 0; i < f->count; i++) {
      const struct xt_extent *x = &ext[f->first + i];
      if (x->length == 0) return snprintf(msg, msg_len, "file %u: extent %u is empty", k, i), -1;
      if (x->file_offset + x->length < x->file_offset || x->device_offset + x->length < x->device_offset)
        return snprintf(msg, msg_len, "file %u: extent %u overflows 64 bits", k, i), -1;
      if (x->device >= n_dev) return snprintf(msg, msg_len, "file %u: extent %u: device %u out of range (%llu devices)", k, i, x->device, (unsigned long long)n_dev), -1;
      // Copies and checksums point into this delta's sections, measured as the tables' header says.
      const char *bad = xt_check_extent_extras(t->h, x, n_dev, copies, h->n_copies, base + h->data_off, h->data_size);
      if (bad != NULL) return snprintf(msg, msg_len, "file %u: extent %u: %s", k, i, bad), -1;
      if (i > 0 && x->file_offset < x[-1].file_offset + x[-1].length)
        return snprintf(msg, msg_len, "file %u: extent %u starts at %llu, before the previous one ends (extents must be sorted, non-overlapping)", k, i, (unsigned long long)x->file_offset), -1;
    }
  }
  if (next != h->n_extents) return snprintf(msg, msg_len, "%llu of %u extents belong to no file", (unsigned long long)(h->n_extents - next), h->n_extents), -1;
  return 0;
}
