// The version 2 loader (load2_internal.h): INODE records, checked in pass 1 and written in pass 3 as
// inodes, extents (merged), copies, checksums, xattrs, symlink targets and inline data.
#include "load2_internal.h"

struct extent {
  uint64_t file_offset, device_offset, length;
  uint32_t device, extras;
  uint32_t n_copies;
  uint64_t copy_device[M2_MAX_COPIES], copy_offset[M2_MAX_COPIES];
  uint64_t csums_at, csums_len; // file offset and length of its checksums in the manifest
  struct xt_compressed z;
};

static void check_device_range(struct loader *L, uint32_t i, const char *what, uint64_t device, uint64_t off, uint64_t span) {
  uint64_t size = L->in->device_sizes[device];
  if (off > size || span > size - off)
    m2l_fail(L, "extents[%u]%s past device end: bytes %llu..%llu of device %llu, which is %llu bytes", i, what, (unsigned long long)off,
         (unsigned long long)(off + span), (unsigned long long)device, (unsigned long long)size);
}

// An extent's copies and checksums (extras bit 0) and encoding (bit 1), read and checked as
// validate.ts checkCompression and checkCopiesAndCsums check them.
static void extent_extras(struct loader *L, uint32_t i, struct extent *e) {
  const struct m2_load_in *in = L->in;
  if (e->extras & ~(uint32_t)(M2_EXT_CSUMS | M2_EXT_COMPRESSED)) m2l_fail(L, "extents[%u] has unknown extras bits 0x%x", i, e->extras);
  if (e->extras & M2_EXT_CSUMS) {
    if (!(in->features & M2L_CHECKSUMS)) m2l_fail(L, "extents[%u] has copies or csums but the manifest does not declare feature \"data-checksums\"", i);
    e->n_copies = (uint32_t)varint_max(L, M2_MAX_COPIES, "extent copies");
    for (uint32_t k = 0; k < e->n_copies; k++) {
      e->copy_device[k] = varint(L, "copy device");
      e->copy_offset[k] = varint(L, "copy deviceOffset");
      if (e->copy_device[k] >= in->n_devices)
        m2l_fail(L, "extents[%u].copies[%u].device %llu does not exist (the manifest lists %u devices)", i, k, (unsigned long long)e->copy_device[k], in->n_devices);
    }
    e->csums_len = varint(L, "csums length");
    e->csums_at = L->w.pos;
    skip(L, e->csums_len);
  }
  if (e->extras & M2_EXT_COMPRESSED) {
    if (!(in->features & M2L_COMPRESSED)) m2l_fail(L, "extents[%u] is compressed but the manifest does not declare feature \"compressed-extents\"", i);
    if (!(e->extras & M2_EXT_CSUMS)) m2l_fail(L, "extents[%u] is compressed but has no csums: what is decoded must be what btrfs checksummed", i);
    e->z.algorithm = byte(L);
    if (e->z.algorithm < XT_ZLIB || e->z.algorithm > XT_ZSTD) m2l_fail(L, "extents[%u].compression must be 1 (zlib), 2 (lzo) or 3 (zstd), got %u", i, e->z.algorithm);
    uint64_t disk = varint(L, "diskLength"), decoded = varint(L, "decodedLength"), decoded_off = varint(L, "decodedOffset");
    if (disk < 1 || disk > XT_ENCODED_MAX) m2l_fail(L, "extents[%u].diskLength must be an integer from 1 to %u, got %llu", i, XT_ENCODED_MAX, (unsigned long long)disk);
    if (decoded < 1 || decoded > XT_DECODED_MAX) m2l_fail(L, "extents[%u].decodedLength must be an integer from 1 to %u, got %llu", i, XT_DECODED_MAX, (unsigned long long)decoded);
    if (decoded_off >= decoded) m2l_fail(L, "extents[%u].decodedOffset must be an integer from 0 to decodedLength - 1, got %llu", i, (unsigned long long)decoded_off);
    if (decoded_off + e->length > decoded)
      m2l_fail(L, "extents[%u]: its %llu bytes from decodedOffset %llu run past decodedLength %llu", i, (unsigned long long)e->length, (unsigned long long)decoded_off,
           (unsigned long long)decoded);
    e->z.disk_length = (uint32_t)disk, e->z.decoded_length = (uint32_t)decoded, e->z.decoded_offset = (uint32_t)decoded_off;
  }
}

// What the extent takes on its device (a compressed one: its encoded stream) and the checks of it.
static uint64_t extent_span(struct loader *L, uint32_t i, const struct extent *e) {
  uint64_t span = e->extras & M2_EXT_COMPRESSED ? e->z.disk_length : e->length;
  check_device_range(L, i, "", e->device, e->device_offset, span);
  if (!(e->extras & M2_EXT_CSUMS)) return span;
  uint32_t sector = L->in->sector_size;
  if (span % sector != 0) m2l_fail(L, "extents[%u] has csums but its %s %llu is not whole sectors of %u bytes", i, e->extras & M2_EXT_COMPRESSED ? "diskLength" : "length",
                               (unsigned long long)span, sector);
  uint64_t want = span / sector * L->in->csum_size;
  if (e->csums_len != want) m2l_fail(L, "extents[%u].csums must be %llu bytes (one checksum per sector), got %llu bytes", i, (unsigned long long)want, (unsigned long long)e->csums_len);
  for (uint32_t k = 0; k < e->n_copies; k++) {
    char what[32];
    snprintf(what, sizeof what, ".copies[%u]", k);
    check_device_range(L, i, what, e->copy_device[k], e->copy_offset[k], span);
  }
  return span;
}

// An extent in the tables' form, its copies and checksums (and encoding) written.
static struct xt_extent table_extent(struct loader *L, const struct extent *e) {
  struct xt_extent x = {.file_offset = e->file_offset, .device_offset = e->device_offset, .length = e->length, .device = e->device};
  if (e->extras & M2_EXT_CSUMS) {
    x.flags = XT_EXT_CSUM;
    x.copy_first = (uint32_t)L->n_copies;
    x.copy_count = (uint16_t)e->n_copies;
    for (uint32_t k = 0; k < e->n_copies; k++, L->n_copies++) {
      if (L->n_copies >= L->copies) m2l_changed(L);
      struct xt_copy c = {.device_offset = e->copy_offset[k], .device = (uint32_t)e->copy_device[k]};
      m2l_put(L, &L->copyv, L->h->copies_off + L->n_copies * sizeof c, &c, sizeof c);
    }
    if (e->extras & M2_EXT_COMPRESSED) {
      x.flags |= XT_EXT_COMPRESSED;
      m2l_data_put(L, (const uint8_t *)&e->z, sizeof e->z, 0); // unshared: it must lie just before the checksums
    }
    x.csum_off = m2l_data_copy(L, e->csums_at, e->csums_len);
  }
  return x;
}

static void write_extent(struct loader *L, const struct xt_extent *x) {
  if (L->n_extents >= L->extents) m2l_changed(L);
  m2l_put(L, &L->extentv, L->h->extents_off + L->n_extents * sizeof *x, x, sizeof *x);
  L->n_extents++;
}

// A regular file's extents: sorted and disjoint by construction (gaps), checked as validate.ts
// checkExtents checks them; neighbours contiguous on file and device without checksums are merged.
// Returns the number of extents in the tables (after merging).
static uint32_t file_extents(struct loader *L, uint64_t size, uint32_t *first) {
  uint64_t n = varint(L, "extents");
  L->raw_extents += n;
  if (L->raw_extents > MAX_EXTENTS_IN_ALL) m2l_fail(L, "more than %u extents in all", MAX_EXTENTS_IN_ALL);
  *first = (uint32_t)L->n_extents;
  uint64_t prev_end = 0;
  uint32_t merged = 0, prev_device = 0;
  int mergeable = 0; // the previous extent has no extras
  struct xt_extent last; // pass 3: the previous extent, written once no other merges into it
  for (uint32_t i = 0; i < n; i++) {
    struct extent e = {0};
    uint64_t gap = varint(L, "extent gap");
    e.length = varint(L, "extent length");
    uint64_t device = varint(L, "extent device");
    int64_t at = zigzag(L, "extent deviceOffset");
    e.extras = (uint32_t)varint_max(L, UINT32_MAX, "extent extras");
    if (e.length == 0) m2l_fail(L, "extents[%u].length must be a positive integer, got 0", i);
    if (gap > M2_VALUE_MAX - prev_end || prev_end + gap > M2_VALUE_MAX - e.length)
      m2l_fail(L, "extents[%u].fileOffset must be a non-negative integer, got %llu", i, (unsigned long long)(prev_end + gap));
    e.file_offset = prev_end + gap;
    if (e.file_offset >= size) m2l_fail(L, "extents[%u] starts at %llu, at or past the file size %llu", i, (unsigned long long)e.file_offset, (unsigned long long)size);
    if (device >= L->in->n_devices) m2l_fail(L, "extents[%u].device %llu does not exist (the manifest lists %u devices)", i, (unsigned long long)device, L->in->n_devices);
    e.device = (uint32_t)device;
    int64_t dev_off = L->cursor + at;
    if (dev_off < 0 || dev_off > (int64_t)M2_VALUE_MAX) m2l_fail(L, "extents[%u].deviceOffset must be a non-negative integer, got %lld", i, (long long)dev_off);
    e.device_offset = (uint64_t)dev_off;
    extent_extras(L, i, &e);
    uint64_t span = extent_span(L, i, &e);
    L->cursor = dev_off + (int64_t)e.length;
    prev_end = e.file_offset + e.length;
    // Continues the previous extent on file (no gap) and device (at the cursor), neither with extras.
    int merges = i > 0 && mergeable && e.extras == 0 && gap == 0 && at == 0 && prev_device == e.device;
    mergeable = e.extras == 0;
    prev_device = e.device;
    if (!L->writing) {
      if (e.device_offset + span > L->device_ends[e.device]) L->device_ends[e.device] = e.device_offset + span;
      if (e.extras & M2_EXT_CSUMS) L->data_max += e.csums_len + (e.extras & M2_EXT_COMPRESSED ? sizeof(struct xt_compressed) : 0);
      L->copies += e.n_copies;
    }
    if (merges) {
      if (L->writing) last.length += e.length;
      continue;
    }
    if (L->writing && merged > 0) write_extent(L, &last);
    merged++;
    if (L->writing) last = table_extent(L, &e);
  }
  if (L->writing && merged > 0) write_extent(L, &last);
  return merged;
}

struct xname {
  uint32_t off;
  uint16_t len;
};

static int xname_cmp(const void *a, const void *b) {
  const struct xname *x = a, *y = b;
  return m2l_name_cmp(m2l_sort_names + x->off, x->len, m2l_sort_names + y->off, y->len);
}

// Names unique within the inode (checked by sorting them: at most XATTRS_MAX).
static void check_xattr_names_unique(struct loader *L, uint32_t n) {
  struct xname *v = (struct xname *)L->xvalue_off; // scratch in pass 1: as many u32 pairs as xattrs
  for (uint32_t k = 0; k < n; k++) v[k] = (struct xname){.off = L->xname_off[k], .len = L->xname_len[k]};
  m2l_sort_names = L->xnames;
  qsort(v, n, sizeof *v, xname_cmp);
  char q[QUOTE_LEN];
  for (uint32_t k = 1; k < n; k++)
    if (xname_cmp(&v[k - 1], &v[k]) == 0) m2l_fail(L, "xattr name %s appears twice", m2l_quoted((const uint8_t *)L->xnames + v[k].off, v[k].len, q, sizeof q));
}

// An inode's xattrs: in the tables, its names back to back in the data blob (listxattr's reply) and
// one record per xattr in manifest order.
static void inode_xattrs(struct loader *L, uint32_t *first, uint32_t *count) {
  char q[QUOTE_LEN];
  uint64_t n = varint(L, "xattrs");
  if (n == 0) m2l_fail(L, "has the xattrs bit but no xattrs");
  if (n > XATTRS_MAX) m2l_fail(L, "xattr names take over %u bytes, more than listxattr can return", M2_MAX_XATTR_LIST);
  uint64_t list = 0;
  for (uint32_t k = 0; k < n; k++) {
    uint64_t len = m2l_bytes_len(L, 0, M2_MAX_NAME, "xattr name");
    const uint8_t *name = take(L, len);
    const char *problem = L->writing ? NULL : m2l_xattr_name_problem(L, name, len);
    if (problem != NULL) m2l_fail(L, "xattr name %s %s", m2l_quoted(name, len, q, sizeof q), problem);
    if (list + len + 1 > M2_MAX_XATTR_LIST) m2l_fail(L, "xattr names take over %u bytes, more than listxattr can return", M2_MAX_XATTR_LIST);
    memcpy(L->xnames + list, name, len);
    L->xnames[list + len] = 0;
    L->xname_off[k] = (uint32_t)list;
    L->xname_len[k] = (uint16_t)len;
    list += len + 1;
    uint64_t value_len = varint(L, "xattr value length");
    if (value_len > M2_MAX_XATTR_VALUE)
      m2l_fail(L, "xattr %s value is over the limit of %u bytes", m2l_quoted((const uint8_t *)L->xnames + L->xname_off[k], len, q, sizeof q), M2_MAX_XATTR_VALUE);
    if (!L->writing) {
      skip(L, value_len);
      L->data_max += value_len;
      continue;
    }
    L->xvalue_len[k] = (uint32_t)value_len;
    L->xvalue_off[k] = m2l_data_add(L, take(L, value_len), value_len, 0);
  }
  if (!L->writing) {
    check_xattr_names_unique(L, (uint32_t)n);
    L->data_max += list;
    L->xattrs += n;
    return;
  }
  uint32_t list_off = m2l_data_add(L, (const uint8_t *)L->xnames, list, 0);
  *first = (uint32_t)L->n_xattrs;
  *count = (uint32_t)n;
  for (uint32_t k = 0; k < n; k++, L->n_xattrs++) {
    if (L->n_xattrs >= L->xattrs) m2l_changed(L);
    struct xt_xattr x = {.name_off = list_off + L->xname_off[k], .value_off = L->xvalue_off[k], .value_len = L->xvalue_len[k], .name_len = L->xname_len[k]};
    m2l_put(L, &L->xattrv, L->h->xattrs_off + L->n_xattrs * sizeof x, &x, sizeof x);
  }
}

static int known_type(uint64_t type) {
  return type == S_IFREG || type == S_IFDIR || type == S_IFLNK || type == S_IFIFO || type == S_IFCHR || type == S_IFBLK || type == S_IFSOCK;
}

// A symlink's target: 1..4095 bytes, no NUL, UTF-8 unless byte-names. Returns its data offset.
static uint32_t symlink_target(struct loader *L, uint32_t *count) {
  char q[QUOTE_LEN];
  uint64_t len = m2l_bytes_len(L, 1, M2_MAX_SYMLINK, "symlink target");
  const uint8_t *p = take(L, len);
  *count = (uint32_t)len;
  if (L->writing) return m2l_data_add(L, p, len, 1); // NUL-terminated: readlink replies with a C string
  if (memchr(p, 0, len) != NULL) m2l_fail(L, "symlink target %s contains NUL", m2l_quoted(p, len, q, sizeof q));
  if (!m2l_byte_names(L) && !m2_valid_utf8(p, len)) m2l_fail(L, "symlink target %s %s", m2l_quoted(p, len, q, sizeof q), m2l_NOT_UTF8);
  L->data_max += len + 1;
  return 0;
}

static uint32_t inline_content(struct loader *L, uint64_t size, uint32_t *count) {
  if (!(L->in->features & M2L_INLINE)) m2l_fail(L, "has inline data but the manifest does not declare feature \"inline-data\"");
  uint64_t len = m2l_bytes_len(L, 0, M2_MAX_INLINE, "inline data");
  if (len != size) m2l_fail(L, "inline data is %llu bytes but size is %llu", (unsigned long long)len, (unsigned long long)size);
  *count = (uint32_t)len;
  if (L->writing) return m2l_data_add(L, take(L, len), len, 0);
  skip(L, len);
  L->data_max += len;
  return 0;
}

void m2l_inode_record(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_RECORD;
  L->where_n = L->writing ? L->next_rank : L->n;
  uint64_t delta = varint(L, "ino");
  if (delta == 0) m2l_fail(L, "ino not above the previous INODE record's (inode numbers must ascend)");
  uint64_t ino = L->prev_ino + delta;
  if (ino > M2_VALUE_MAX) m2l_fail(L, "ino %llu is over 2^53 - 1", (unsigned long long)ino);
  L->prev_ino = ino;
  L->where = AT_INODE;
  L->where_n = ino;
  uint32_t rank = L->writing ? L->next_rank++ : L->n++;
  if (!L->writing && rank >= in->n_inodes) m2l_fail(L, "more INODE records than the trailer's %u", in->n_inodes);
  if (!L->writing) L->inos[rank] = ino;
  else if (rank >= L->n || L->inos[rank] != ino) m2l_changed(L);

  struct xt_inode o = {.ino = ino};
  uint64_t mode = varint(L, "mode");
  if ((mode & ~(uint64_t)(S_IFMT | 07777)) != 0 || !known_type(mode & S_IFMT))
    m2l_fail(L, "mode 0%llo is not a file type (regular, dir, symlink, fifo, char, block, socket) with permission bits", (unsigned long long)mode);
  unsigned type = (unsigned)(mode & S_IFMT);
  const char *kind = m2l_kind_name(KIND_OF(type));
  o.mode = (uint16_t)mode;
  o.uid = (uint32_t)varint_max(L, UINT32_MAX, "uid");
  o.gid = (uint32_t)varint_max(L, UINT32_MAX, "gid");
  o.nlink = (uint32_t)varint_max(L, UINT32_MAX, "nlink");
  if (o.nlink == 0) m2l_fail(L, "nlink must be an integer from 1 to %u, got 0", UINT32_MAX);
  o.size = varint(L, "size");
  o.blocks = varint(L, "blocks");
  static const char *const time_names[3] = {"atime", "mtime", "ctime"};
  int64_t *secs[3] = {&o.atime_sec, &o.mtime_sec, &o.ctime_sec};
  uint32_t *nsecs[3] = {&o.atime_nsec, &o.mtime_nsec, &o.ctime_nsec};
  for (int t = 0; t < 3; t++) {
    int64_t sec = L->prev_time[t] + zigzag(L, time_names[t]);
    if (sec > (int64_t)M2_VALUE_MAX || sec < -(int64_t)M2_VALUE_MAX) m2l_fail(L, "%s seconds %lld are beyond 2^53 - 1", time_names[t], (long long)sec);
    L->prev_time[t] = *secs[t] = sec;
    *nsecs[t] = u32le(L);
    if (*nsecs[t] > 999999999u) m2l_fail(L, "%s must be [seconds, nanoseconds] with 0 <= nanoseconds < 1e9, got %u nanoseconds", time_names[t], *nsecs[t]);
  }
  uint64_t has = varint(L, "has");
  if (has & ~(uint64_t)M2_HAS_ALL) m2l_fail(L, "unknown has bits 0x%llx", (unsigned long long)has);
  int device_node = type == S_IFCHR || type == S_IFBLK, file = type == S_IFREG;
  // rdev is optional on char and block devices, as in version 1.
  if ((has & M2_HAS_RDEV) && !device_node) m2l_fail(L, "a %s cannot have rdev (only char and block devices do)", kind);
  if (has & M2_HAS_RDEV) o.rdev = varint(L, "rdev");
  if ((has & M2_HAS_ATTRS) && !file && type != S_IFDIR) m2l_fail(L, "a %s cannot have attrs (only regular files and directories do)", kind);
  if (has & M2_HAS_ATTRS) {
    o.attrs = (uint32_t)varint_max(L, UINT32_MAX, "attrs");
    if (o.attrs == 0) m2l_fail(L, "attrs must be an integer from 1 to %u, got 0", UINT32_MAX);
  }
  if (has & M2_HAS_XATTRS) inode_xattrs(L, &o.xattr_first, &o.xattr_count);
  if ((has & M2_HAS_INLINE) && !file) m2l_fail(L, "a %s cannot have inline data (only regular files do)", kind);
  if (has & M2_HAS_INLINE) {
    o.first = inline_content(L, o.size, &o.count);
    o.flags = XT_INLINE;
  } else if (file) {
    o.count = file_extents(L, o.size, &o.first);
  } else if (type == S_IFLNK) {
    o.first = symlink_target(L, &o.count);
  }
  if (!L->writing) {
    L->flags[rank] = (uint8_t)KIND_OF(type);
    L->blocks512 += o.blocks;
    if (file && !(has & M2_HAS_INLINE)) L->extents += o.count;
    return;
  }
  uint32_t index = m2l_rank_to_index(L, rank);
  if (m2l_kind_of(L, index) != KIND_OF(type)) m2l_changed(L);
  if (type == S_IFDIR) m2l_dir_range_of(L, index, &o.first, &o.count);
  o.parent = L->parent[index];
  m2l_put(L, &L->inodes, L->h->inodes_off + (uint64_t)index * sizeof o, &o, sizeof o);
}

void m2l_write_inodes(struct loader *L) {
  L->w.pos = L->inodes_at;
  L->next_rank = 0;
  L->prev_ino = 0;
  L->prev_time[0] = L->prev_time[1] = L->prev_time[2] = 0;
  L->cursor = 0;
  while (L->w.pos < L->w.end) {
    if (byte(L) != M2_TAG_INODE) m2l_changed(L);
    m2l_inode_record(L);
  }
  struct appender *all[] = {&L->inodes, &L->extentv, &L->xattrv, &L->copyv, &L->data};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) m2l_flush(L, all[i]);
}
