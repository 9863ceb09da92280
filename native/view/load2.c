// Manifest format version 2 (docs/manifest-v2.md) read straight into the view's tables (tables.h).
//
// The body is hostile input from another host: every rule of version 1's validator
// (src/manifest/validate.ts) and of version 2's encoding is checked here, and the first problem ends
// the load with one line naming it. The body is read through a window of READ_WINDOW bytes (pread),
// never whole, in three passes over the same bytes:
//
// 1. scan: every record decoded and checked on its own; kept per inode are its number (8 bytes,
//    ascending: INODE records must be) and kind (1 byte), and the counts that size each section.
// 2. DIR records: each directory's entries written as dirents with their names, sorted by name bytes
//    (memcmp, then shorter first) in place, duplicates refused; children resolved by binary search
//    over the inode numbers; a parent per inode (4 bytes) recorded. Then the tree: every inode has a
//    parent, every directory reaches the root (no cycles).
// 3. INODE records: the inodes, extents (neighbours contiguous on file and device merged, as the JS
//    packer does), copies, xattrs and the data blob.
//
// Index = rank of the inode number among the INODE records, with the root swapped to index 0 (FUSE
// nodeid 1), so ino → index is a binary search (m2_index_of) and needs no table. tables_fd is sized
// in pass 1; pass 2 writes dirents and names through a shared mapping of it (page cache, written back
// and evictable, not heap; its pages dropped from the resident set every DROP_EVERY dirents), pass 3
// the other sections through 1 MiB appenders (pwrite). Heap: 13 bytes per inode (number, kind and
// flags, parent), 12 per directory (its dirents' range), fixed buffers (window, appenders, dedup
// cache, one inode's xattrs; ~10.5 MiB): 23.5 MB for 1,000,000 files, 141 MB for 10,000,000, reported in
// m2_load_out.heap_bytes.
//
// Sections lie in the order of tables.h (src/native-engine/tables.ts states the layout): header | inodes | dirents | extents | xattrs |
// copies | devices | names | data. Device fds are -1 (none yet): the control plane writes them once it
// has opened and proven the devices (addon setTablesDevices).
#include "load2_internal.h"

static void scan(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->w.pos = in->body_start;
  L->inodes_at = in->body_end;
  while (L->w.pos < L->w.end) {
    uint64_t at = L->w.pos;
    L->where = AT_BODY;
    uint8_t tag = byte(L);
    if (tag == M2_TAG_DIR) {
      if (L->inodes_at != in->body_end) m2l_fail(L, "a DIR record at byte %llu after an INODE record (DIR records come first)", (unsigned long long)at);
      m2l_dir_record(L);
    } else if (tag == M2_TAG_INODE) {
      if (L->inodes_at == in->body_end) L->inodes_at = at;
      m2l_inode_record(L);
    } else {
      m2l_fail(L, "unknown record tag 0x%02x at byte %llu", tag, (unsigned long long)at);
    }
  }
  L->where = AT_BODY;
  if (L->n != in->n_inodes) m2l_fail(L, "the trailer says %u INODE records, the body has %u", in->n_inodes, L->n);
  if (L->dirs != in->n_dirs) m2l_fail(L, "the trailer says %u DIR records, the body has %llu", in->n_dirs, (unsigned long long)L->dirs);
  if (L->entries != in->n_entries)
    m2l_fail(L, "the trailer says %llu directory entries, the body has %llu", (unsigned long long)in->n_entries, (unsigned long long)L->entries);
}

// The root: an inode, a directory, at index 0.
static void place_root(struct loader *L) {
  L->where = AT_BODY;
  int64_t r = m2l_index_of(L, L->in->root); // root_rank is still 0: the index is the rank
  if (r < 0) m2l_fail(L, "root inode %llu is missing from the inode list", (unsigned long long)L->in->root);
  if ((L->flags[r] & F_KIND) != KIND_OF(S_IFDIR))
    m2l_fail(L, "root inode %llu is a %s, not a dir", (unsigned long long)L->in->root, m2l_kind_name(L->flags[r] & F_KIND));
  L->root_rank = (uint32_t)r;
  uint8_t f = L->flags[0];
  L->flags[0] = L->flags[r];
  L->flags[r] = f;
}

static uint64_t align8(uint64_t x) {
  return (x + 7) & ~(uint64_t)7;
}

// Sections sized from pass 1, the file sized to hold them (the data blob at its most, before sharing)
// and mapped.
static void map_tables(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_BODY;
  if (L->entries > UINT32_MAX || L->extents > UINT32_MAX || L->xattrs > UINT32_MAX || L->copies > UINT32_MAX || L->names_size > UINT32_MAX)
    m2l_fail(L, "too many entries, extents, xattrs or copies, or names over 4 GiB, for the tables (u32 indexes)");
  uint64_t off = align8(sizeof(struct xt_header));
  uint64_t inodes_off = off, dirents_off, extents_off, xattrs_off, copies_off, devices_off, names_off, data_off;
  off = dirents_off = align8(off + (uint64_t)L->n * sizeof(struct xt_inode));
  off = extents_off = align8(off + L->entries * sizeof(struct xt_dirent));
  off = xattrs_off = align8(off + L->extents * sizeof(struct xt_extent));
  off = copies_off = align8(off + L->xattrs * sizeof(struct xt_xattr));
  off = devices_off = align8(off + L->copies * sizeof(struct xt_copy));
  off = names_off = align8(off + (uint64_t)in->n_devices * sizeof(struct xt_device));
  off = data_off = align8(off + L->names_size);
  L->map_len = align8(off + L->data_max);
  // Space reserved now: a full disk is an error here, not a SIGBUS when a page is written.
  int err = ftruncate(in->tables_fd, 0) != 0 ? errno : posix_fallocate(in->tables_fd, 0, (off_t)L->map_len);
  if (err == EOPNOTSUPP || err == EINVAL) err = ftruncate(in->tables_fd, (off_t)L->map_len) != 0 ? errno : 0;
  if (err != 0) m2l_fail(L, "cannot make the tables file %llu bytes: %s", (unsigned long long)L->map_len, strerror(err));
  void *map = mmap(NULL, L->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, in->tables_fd, 0);
  if (map == MAP_FAILED) m2l_fail(L, "cannot map the tables file: %s", strerror(errno));
  L->map = map;
  L->h = map;
  *L->h = (struct xt_header){
    .magic = XT_MAGIC, .version = XT_VERSION, .n_inodes = L->n, .n_dirents = (uint32_t)L->entries, .n_extents = (uint32_t)L->extents,
    .n_xattrs = (uint32_t)L->xattrs, .n_devices = in->n_devices, .block_size = in->block_size, .inodes_off = inodes_off, .dirents_off = dirents_off,
    .extents_off = extents_off, .xattrs_off = xattrs_off, .devices_off = devices_off, .names_off = names_off, .names_size = L->names_size,
    .data_off = data_off, .n_copies = (uint32_t)L->copies, .csum_alg = in->csum_alg, .csum_size = in->csum_size, .sector_size = in->sector_size,
    .copies_off = copies_off};
  L->dirents = (struct xt_dirent *)(L->map + dirents_off);
  L->names = (char *)(L->map + names_off);
  struct xt_device *dev = (struct xt_device *)(L->map + devices_off);
  for (uint32_t i = 0; i < in->n_devices; i++) dev[i] = (struct xt_device){.fd = -1, .size = in->device_sizes[i]};
}

// The header's remaining fields; the file cut to the image's size.
static void finish_tables(struct loader *L) {
  struct xt_header *h = L->h;
  L->where = AT_BODY;
  if (L->next_rank != L->n || L->n_dirents != L->entries || L->n_extents != L->extents || L->n_xattrs != L->xattrs || L->n_copies != L->copies ||
      L->n_names != L->names_size)
    m2l_changed(L); // or a bug: passes 2 and 3 wrote other counts than pass 1 found
  h->data_size = L->n_data;
  h->total_size = align8(h->data_off + L->n_data);
  uint64_t bsize = L->in->block_size;
  unsigned __int128 blocks = (L->blocks512 * 512 + bsize - 1) / bsize;
  h->sf_bsize = h->sf_frsize = bsize;
  h->sf_blocks = blocks > UINT64_MAX ? UINT64_MAX : (uint64_t)blocks;
  h->sf_files = L->n;
  h->sf_namemax = M2_MAX_NAME;
}

static void *alloc(struct loader *L, size_t n, size_t size) {
  void *p = calloc(n > 0 ? n : 1, size);
  if (p == NULL) m2l_fail(L, "out of memory (%zu bytes)", n * size);
  L->heap += n * size;
  return p;
}

// The trailer's counts bound what is allocated before the body is read.
static void check_counts(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_BODY;
  if (in->body_start > in->body_end) m2l_fail(L, "the body ends before it starts");
  if (in->n_inodes > M2_MAX_INODES) m2l_fail(L, "the trailer counts %u inodes, over the limit of %u", in->n_inodes, M2_MAX_INODES);
  if (in->n_dirs > in->n_inodes) m2l_fail(L, "the trailer counts %u DIR records but only %u inodes", in->n_dirs, in->n_inodes);
  // An entry takes 3 bytes at least (a name length, a name byte, a child).
  if (in->n_entries > (in->body_end - in->body_start) / 3)
    m2l_fail(L, "the trailer counts %llu directory entries, more than the body's %llu bytes can hold", (unsigned long long)in->n_entries,
         (unsigned long long)(in->body_end - in->body_start));
  if (in->n_devices > 0 && in->device_sizes == NULL) m2l_fail(L, "device sizes missing");
  if (in->csum_alg != XT_CSUM_NONE && (in->sector_size == 0 || in->csum_size == 0)) m2l_fail(L, "data checksums without a sector or checksum size");
  if ((in->features & M2L_CHECKSUMS) && in->csum_alg == XT_CSUM_NONE) m2l_fail(L, "feature data-checksums without an algorithm");
}

static void release(struct loader *L) {
  if (L->map != NULL) munmap(L->map, L->map_len);
  free(L->w.buf);
  free(L->inos);
  free(L->flags);
  free(L->parent);
  free(L->dedup);
  free(L->xnames);
  free(L->xname_off);
  free(L->xname_len);
  free(L->xvalue_off);
  free(L->xvalue_len);
  free(L->dir_ranges);
  free(L->scratch);
  free(L->inodes.buf);
  free(L->extentv.buf);
  free(L->xattrv.buf);
  free(L->copyv.buf);
  free(L->data.buf);
}

int m2_load(const struct m2_load_in *in, struct m2_load_out *out, char *msg, size_t msg_len) {
  struct loader *L = calloc(1, sizeof *L);
  if (L == NULL) return snprintf(msg, msg_len, "out of memory"), -1;
  L->in = in;
  L->msg = msg;
  L->msg_len = msg_len;
  L->w = (struct window){.fd = in->manifest_fd, .end = in->body_end};
  L->device_ends = out->device_ends;
  if (setjmp(L->fail) != 0) {
    release(L);
    free(L);
    return -1;
  }
  check_counts(L);
  for (uint32_t i = 0; i < in->n_devices; i++) L->device_ends[i] = 0;
  L->w.buf = alloc(L, READ_WINDOW, 1);
  L->inos = alloc(L, in->n_inodes, sizeof *L->inos);
  L->flags = alloc(L, in->n_inodes, 1);
  L->xnames = alloc(L, M2_MAX_XATTR_LIST + M2_MAX_NAME + 1, 1);
  L->xname_off = alloc(L, XATTRS_MAX, sizeof *L->xname_off);
  L->xname_len = alloc(L, XATTRS_MAX, sizeof *L->xname_len);
  L->xvalue_off = alloc(L, XATTRS_MAX * 2, sizeof *L->xvalue_off); // doubles as the name sort's scratch
  L->xvalue_len = alloc(L, XATTRS_MAX, sizeof *L->xvalue_len);
  scan(L);
  place_root(L);
  L->parent = alloc(L, L->n, sizeof *L->parent);
  memset(L->parent, 0xff, (size_t)L->n * sizeof *L->parent); // NO_PARENT
  L->dedup = alloc(L, DEDUP_SLOTS, sizeof *L->dedup);
  L->dir_ranges = alloc(L, in->n_dirs, sizeof *L->dir_ranges);
  L->scratch = alloc(L, SCRATCH_BYTES, 1);
  struct appender *all[] = {&L->inodes, &L->extentv, &L->xattrv, &L->copyv, &L->data};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) all[i]->buf = alloc(L, APPEND_BYTES, 1);
  map_tables(L);
  L->read_before = in->body_end - in->body_start; // passes 2 and 3 read the body once more, in order
  m2l_write_dirs(L);
  m2l_check_tree(L);
  m2l_write_inodes(L);
  finish_tables(L);
  L->w.pos = in->body_end;
  m2l_progress(L);
  *out = (struct m2_load_out){
    .tables_bytes = L->h->total_size, .n_inodes = L->n, .n_dirents = (uint32_t)L->n_dirents, .n_extents = (uint32_t)L->n_extents,
    .n_xattrs = (uint32_t)L->n_xattrs, .n_copies = (uint32_t)L->n_copies, .names_size = L->n_names, .data_size = L->n_data,
    .device_ends = L->device_ends, .heap_bytes = L->heap};
  uint64_t total = L->h->total_size;
  release(L); // unmaps: what was written is in the file
  L->map = NULL;
  int err = ftruncate(in->tables_fd, (off_t)total) != 0 ? errno : 0;
  free(L);
  if (err != 0) return snprintf(msg, msg_len, "cannot cut the tables file to %llu bytes: %s", (unsigned long long)total, strerror(err)), -1;
  return 0;
}
