// The btrfs bulk mapper. Given an fd inside a read-only btrfs snapshot (nothing changes its tree while
// we read), it writes the manifest body (docs/manifest-v2.md) of the tree under one directory from two
// sweeps of the snapshot's fs tree with BTRFS_IOC_TREE_SEARCH_V2, in key order (objectid, type, offset):
//   1. the directories: each one's parent (its INODE_REF), 16 bytes per directory, from which the
//      directories inside the exported tree are known before anything is written. Not needed when the
//      whole subvolume is exported (its root directory, nothing skipped inside): then every directory
//      with a name is inside, and sweep 2 alone tells it (a directory's INODE_REF comes before its
//      entries). Sweep 1 copies every item of the tree out of the kernel, as sweep 2 does, so skipping
//      it saves about half of the kernel's share of the export (docs/file-server-scale.md);
//   2. everything: an inode's items come together (INODE_ITEM, INODE_REF/EXTREF, XATTR_ITEM,
//      DIR_INDEX, EXTENT_DATA), so each inode is finished before the next begins. Its DIR record goes
//      straight to the body; its INODE record to a scratch file, appended to the body at the end, because
//      every DIR record must precede every INODE record. That costs writing the INODE records twice
//      (in the kernel, copy_file_range) instead of a third sweep, and holds nothing per inode.
// Held: the directory table, one inode's xattrs, one directory's encoded entries (up to 512 KiB, then
// read again), one file's extents and checksums, the search buffers and two write buffers.
//
// Every field must equal what the VFS walker (src/export/walk.ts) reports through the kernel; where
// the kernel computes a field rather than storing it, this file does what the kernel does and says so.
// What it cannot reproduce exactly it refuses (BB_REFUSED: export falls back to the VFS walker),
// never guesses; what the walker would fail on too fails (BB_FAILED).
#include "btrfs_bulk.h"

#include <endian.h>
#include <errno.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../btrfs.h"
#include "../manifest/utf8.h"
#include "../manifest/v2write.h"
#include "../view/decode.h"

// One TREE_SEARCH_V2 call returns up to this many bytes of items (the kernel's cap is 16 MiB).
#define SEARCH_BUF (256u * 1024u)
#define DIR_BUFFER_MAX (512u << 10)   // a directory's encoded entries kept to count them; past it, read twice
#define XATTR_BUFFER_MAX (4u << 20)   // one inode's xattrs (btrfs keeps each in one leaf, so this is plenty)
#define RUNS_MAX 4000000u             // one file's extents (~64 bytes each)
#define CSUMS_MAX (64u << 20)         // one file's data checksums: 64 GiB of crc32c-summed data

// btrfs inode item flags (fs/btrfs/btrfs_inode.h): the low 32 bits of `flags`; the high 32 are ro_flags.
#define KERNEL_BTRFS_INODE_NODATACOW (1u << 1)
#define KERNEL_BTRFS_INODE_NOCOMPRESS (1u << 3)
#define KERNEL_BTRFS_INODE_SYNC (1u << 5)
#define KERNEL_BTRFS_INODE_IMMUTABLE (1u << 6)
#define KERNEL_BTRFS_INODE_APPEND (1u << 7)
#define KERNEL_BTRFS_INODE_NODUMP (1u << 8)
#define KERNEL_BTRFS_INODE_NOATIME (1u << 9)
#define KERNEL_BTRFS_INODE_DIRSYNC (1u << 10)
#define KERNEL_BTRFS_INODE_COMPRESS (1u << 11)
#define KERNEL_BTRFS_INODE_RO_VERITY (1u << 0)
// The FS_*_FL values FS_IOC_GETFLAGS reports (linux/fs.h).
#define KERNEL_FS_COMPR_FL 0x00000004u
#define KERNEL_FS_SYNC_FL 0x00000008u
#define KERNEL_FS_IMMUTABLE_FL 0x00000010u
#define KERNEL_FS_APPEND_FL 0x00000020u
#define KERNEL_FS_NODUMP_FL 0x00000040u
#define KERNEL_FS_NOATIME_FL 0x00000080u
#define KERNEL_FS_NOCOMP_FL 0x00000400u
#define KERNEL_FS_DIRSYNC_FL 0x00010000u
#define KERNEL_FS_NOCOW_FL 0x00800000u

#define COMPRESSED_MAX (128u * 1024u) // BTRFS_MAX_COMPRESSED and BTRFS_MAX_UNCOMPRESSED

enum dir_state { DIR_UNKNOWN, DIR_VISITING, DIR_IN_TREE, DIR_OUTSIDE };

struct dir_row { // a directory of the snapshot and its parent (0: no INODE_REF seen)
  uint64_t ino, parent;
};

// One TREE_SEARCH_V2 cursor over a key range of one tree, item by item.
struct search {
  int fd;
  struct btrfs_ioctl_search_args_v2 *args;
  struct btrfs_key next, last; // next key to ask for; the range's last key
  uint32_t left;               // items of the current batch not yet handed out
  size_t pos;
  bool done;
  uint64_t tree;
  uint64_t *calls;
};

// A run of a file's bytes on one raw disk, as the VFS mapper joins them (src/mapping/mapper.ts push()).
struct run {
  uint64_t file_offset, length;
  uint32_t disk;
  uint64_t disk_offset;
  uint32_t ncopies; // other copies, recorded only with checksums
  struct m2_copy copies[M2_MAX_COPIES];
  bool csums;
  size_t csum_at, csum_len; // in mapper.csums
  uint8_t algorithm;        // compressed: 1 zlib, 2 lzo, 3 zstd
  uint64_t disk_length, decoded_length, decoded_offset;
};

struct mapper {
  const struct bb_job *job;
  struct bb_result *out;
  struct m2w *dirs_w, *inodes_w;
  struct search fs, aux; // aux: the csum tree, and a big directory read again
  struct xt_decoder decoder;
  uint32_t disk_index[BB_MAX_DISKS]; // segments' disk index -> the body's (UINT32_MAX: not met yet)
  uint64_t *skip;        // sorted copy of job->skip
  struct dir_row *dirs;  // ascending ino
  uint8_t *dir_state;
  size_t ndirs, dirs_cap;
  uint64_t in_tree;      // directories inside the exported tree (sweep 1; not known beforehand when `whole`)
  bool whole;            // the whole subvolume: no sweep 1, every named directory is inside
  uint64_t names_total;  // names of non-directories counted from their refs: must equal the entries
  uint64_t dirs_written_inodes;
  // The inode being read.
  uint64_t ino;
  bool have_item, reachable, is_dir, is_reg, is_lnk;
  struct btrfs_inode_item ii;
  uint64_t size;
  uint32_t names;
  uint8_t *xbuf;
  size_t xlen, xcap, xlisted;
  uint32_t nx;
  uint8_t *ebuf;
  size_t elen, ecap;
  uint64_t n, prev_child;
  bool overflowed;
  struct run *runs;
  size_t nruns, runs_cap;
  uint8_t *csums;
  size_t csum_len, csum_cap;
  uint8_t *bytes; // inline content or symlink target
  size_t nbytes;
  bool carry;
};

// ----------------------------------------------------------------------------- outcomes

static bool say(struct mapper *m, enum bb_outcome kind, const char *fmt, va_list ap) {
  if (m->out->outcome == BB_OK) {
    m->out->outcome = kind;
    vsnprintf(m->out->why, sizeof m->out->why, fmt, ap);
  }
  return false;
}

// Not something this mapper reproduces exactly: the VFS walker does it instead.
__attribute__((format(printf, 2, 3))) static bool refuse(struct mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, BB_REFUSED, fmt, ap);
  va_end(ap);
  return false;
}

// What the walker would fail on too (the carry limit, checksums it cannot use, I/O): export fails.
__attribute__((format(printf, 2, 3))) static bool fail(struct mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, BB_FAILED, fmt, ap);
  va_end(ap);
  return false;
}

static void note_name(struct mapper *m, const void *name, size_t len) {
  if (!m->out->byte_names && !m2_valid_utf8(name, len)) m->out->byte_names = true;
}

// ------------------------------------------------------------------------------ search

static const struct btrfs_key KEY_FIRST_INODE = {BTRFS_FIRST_FREE_OBJECTID, 0, 0};
static const struct btrfs_key KEY_LAST_INODE = {BTRFS_LAST_FREE_OBJECTID, 255, UINT64_MAX};

static int key_cmp(const struct btrfs_key *a, const struct btrfs_key *b) {
  if (a->objectid != b->objectid) return a->objectid < b->objectid ? -1 : 1;
  if (a->type != b->type) return a->type < b->type ? -1 : 1;
  if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
  return 0;
}

static bool search_open(struct search *s, int fd, uint64_t tree, struct btrfs_key first, struct btrfs_key last, uint64_t *calls) {
  if (s->args == NULL) s->args = malloc(sizeof *s->args + SEARCH_BUF);
  s->fd = fd, s->tree = tree, s->next = first, s->last = last, s->left = 0, s->pos = 0, s->done = false, s->calls = calls;
  return s->args != NULL;
}

// The key after `k` in key order, or false past the last possible key.
static bool key_after(struct btrfs_key *k) {
  if (k->offset != UINT64_MAX) return k->offset++, true;
  k->offset = 0;
  if (k->type != 255) return k->type++, true;
  k->type = 0;
  return k->objectid++ != UINT64_MAX;
}

// The next item of the range: 1 (header and item set), 0 at its end, or -errno. Keys are compared
// as a whole (objectid, type, offset), as the kernel does, so a range is every item between two keys.
static int search_next(struct search *s, struct btrfs_ioctl_search_header *h, const uint8_t **item) {
  while (s->left == 0) {
    if (s->done) return 0;
    struct btrfs_ioctl_search_key *k = &s->args->key;
    memset(k, 0, sizeof *k);
    k->tree_id = s->tree;
    k->min_objectid = s->next.objectid, k->min_type = s->next.type, k->min_offset = s->next.offset;
    k->max_objectid = s->last.objectid, k->max_type = s->last.type, k->max_offset = s->last.offset;
    k->min_transid = 0, k->max_transid = UINT64_MAX;
    k->nr_items = UINT32_MAX;
    s->args->buf_size = SEARCH_BUF;
    ++*s->calls;
    if (ioctl(s->fd, BTRFS_IOC_TREE_SEARCH_V2, s->args) < 0) return -errno;
    if (k->nr_items == 0) return s->done = true, 0;
    s->left = k->nr_items;
    s->pos = 0;
  }
  if (s->pos + sizeof *h > SEARCH_BUF) return -EIO;
  memcpy(h, (const uint8_t *)s->args->buf + s->pos, sizeof *h); // host order, possibly unaligned
  s->pos += sizeof *h;
  if (s->pos + h->len > SEARCH_BUF) return -EIO;
  *item = (const uint8_t *)s->args->buf + s->pos;
  s->pos += h->len;
  s->left--;
  struct btrfs_key at = {h->objectid, (uint8_t)h->type, h->offset};
  s->next = at;
  if (!key_after(&s->next) || key_cmp(&s->next, &s->last) > 0) s->done = true;
  return 1;
}

// -------------------------------------------------------------------------- directories

static bool skipped(const struct mapper *m, uint64_t ino) {
  size_t lo = 0, hi = m->job->nskip;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (m->skip[mid] == ino) return true;
    if (m->skip[mid] < ino) lo = mid + 1;
    else hi = mid;
  }
  return false;
}

static long dir_index(const struct mapper *m, uint64_t ino) {
  size_t lo = 0, hi = m->ndirs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (m->dirs[mid].ino == ino) return (long)mid;
    if (m->dirs[mid].ino < ino) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

static bool dir_in_tree(const struct mapper *m, uint64_t ino) {
  if (m->whole) return true; // a parent named by a ref: a directory of the subvolume, so inside it
  long i = dir_index(m, ino);
  return i >= 0 && m->dir_state[i] == DIR_IN_TREE;
}

static bool search_error(struct mapper *m, const char *what, int err) {
  return fail(m, "BTRFS_IOC_TREE_SEARCH_V2 (%s): %s", what, strerror(-err));
}

static bool inode_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item, struct btrfs_inode_item *ii) {
  if (h->len < sizeof *ii) return refuse(m, "inode %llu: inode item of %u bytes", (unsigned long long)h->objectid, h->len);
  memcpy(ii, item, sizeof *ii);
  return true;
}

// Sweep 1: every directory and its parent. A directory has exactly one INODE_REF (key offset: the
// parent); the subvolume's root names itself.
static bool sweep_dirs(struct mapper *m) {
  if (!search_open(&m->fs, m->job->tree_fd, 0, KEY_FIRST_INODE, KEY_LAST_INODE, &m->out->searches)) return fail(m, "out of memory");
  struct btrfs_ioctl_search_header h;
  const uint8_t *item;
  int r;
  while ((r = search_next(&m->fs, &h, &item)) > 0) {
    if (h.type == BTRFS_INODE_ITEM_KEY) {
      struct btrfs_inode_item ii;
      if (!inode_item(m, &h, item, &ii)) return false;
      if (!S_ISDIR(le32toh(ii.mode))) continue;
      if (!bulk_grow((void **)&m->dirs, &m->dirs_cap, m->ndirs + 1, sizeof *m->dirs)) return fail(m, "out of memory");
      m->dirs[m->ndirs++] = (struct dir_row){h.objectid, 0};
    } else if (h.type == BTRFS_INODE_REF_KEY && m->ndirs && m->dirs[m->ndirs - 1].ino == h.objectid) {
      if (m->dirs[m->ndirs - 1].parent != 0) return refuse(m, "directory inode %llu has two parents", (unsigned long long)h.objectid);
      m->dirs[m->ndirs - 1].parent = h.offset;
    }
  }
  if (r < 0) return search_error(m, "directories", r);
  m->out->table_bytes = m->ndirs * (sizeof *m->dirs + 1);
  return true;
}

// Which directories lie inside the exported tree: the root, and those whose parent does, not entering
// a skipped one. Each chain of parents is followed once (states memoized).
static bool mark_tree(struct mapper *m) {
  m->dir_state = calloc(m->ndirs ? m->ndirs : 1, 1);
  size_t *chain = malloc((m->ndirs ? m->ndirs : 1) * sizeof *chain);
  if (m->dir_state == NULL || chain == NULL) return free(chain), fail(m, "out of memory");
  for (size_t i = 0; i < m->ndirs; i++) {
    size_t len = 0, j = i;
    uint8_t result;
    for (;;) {
      if (m->dir_state[j] != DIR_UNKNOWN) {
        result = m->dir_state[j] == DIR_VISITING ? DIR_OUTSIDE : m->dir_state[j]; // a cycle reaches nothing
        break;
      }
      chain[len++] = j;
      m->dir_state[j] = DIR_VISITING;
      const struct dir_row *d = &m->dirs[j];
      if (d->ino == m->job->root) {
        result = DIR_IN_TREE;
        break;
      }
      long p = d->parent == 0 || d->parent == d->ino || skipped(m, d->ino) ? -1 : dir_index(m, d->parent);
      if (p < 0) {
        result = DIR_OUTSIDE;
        break;
      }
      j = (size_t)p;
    }
    for (size_t k = 0; k < len; k++) m->dir_state[chain[k]] = result;
  }
  free(chain);
  for (size_t i = 0; i < m->ndirs; i++) m->in_tree += m->dir_state[i] == DIR_IN_TREE;
  return dir_in_tree(m, m->job->root) || refuse(m, "inode %llu is not a directory of this subvolume", (unsigned long long)m->job->root);
}

// ------------------------------------------------------------------------------ samples

// Samples of a run on every copy: its bytes on the disk (a compressed run's encoded stream); for a
// checksummed run the BB_SAMPLE_SECTORS sectors at its middle, with their checksums.
static void sample_run(struct mapper *m, const struct run *r) {
  uint64_t start = 0, length = r->algorithm ? r->disk_length : r->length, sector = m->job->sector_size;
  const uint8_t *csum = NULL;
  uint32_t csum_len = 0;
  if (r->csums) {
    uint64_t sectors = length / sector, first = sectors > BB_SAMPLE_SECTORS ? (sectors - BB_SAMPLE_SECTORS) / 2 : 0;
    start = first * sector;
    length = (sectors - first < BB_SAMPLE_SECTORS ? sectors - first : BB_SAMPLE_SECTORS) * sector;
    csum = m->csums + r->csum_at + first * m->job->csum_size;
    csum_len = (uint32_t)(length / sector * m->job->csum_size);
  }
  bulk_sample(&m->out->samplers[r->disk], r->disk, r->disk_offset + start, length, csum, csum_len);
  for (uint32_t k = 0; k < r->ncopies; k++)
    bulk_sample(&m->out->samplers[r->copies[k].device], r->copies[k].device, r->copies[k].device_offset + start, length, csum, csum_len);
}

// ---------------------------------------------------------------------------- checksums

// The data checksums of logical [logical, logical + length) appended to m->csums; *covered: how many of
// its sectors the csum tree has (0: nodatasum data). As src/mapping/mapper.ts csumSource reads them.
static bool read_csums(struct mapper *m, uint64_t logical, uint64_t length, uint64_t *covered) {
  const struct bb_job *j = m->job;
  if (j->csum_type != BTRFS_CSUM_TYPE_CRC32 || j->csum_size != 4)
    return fail(m, "btrfs checksums data with type %u; extfs verifies mirrored and compressed data with crc32c only, so it cannot export this filesystem's mirrored or compressed data safely", j->csum_type);
  uint64_t n = length / j->sector_size;
  size_t bytes = (size_t)(n * j->csum_size);
  if (m->csum_len + bytes > CSUMS_MAX) return refuse(m, "inode %llu: over %u bytes of data checksums", (unsigned long long)m->ino, CSUMS_MAX);
  if (!bulk_grow((void **)&m->csums, &m->csum_cap, m->csum_len + bytes, 1)) return fail(m, "out of memory");
  uint8_t *out = m->csums + m->csum_len;
  memset(out, 0, bytes);
  // An EXTENT_CSUM item is keyed by the logical address of its first sector and holds at most one
  // node of checksums, so the search starts that far before `logical`.
  uint64_t reach = (uint64_t)j->node_size / j->csum_size * j->sector_size;
  struct btrfs_key first = {BTRFS_EXTENT_CSUM_OBJECTID, BTRFS_EXTENT_CSUM_KEY, logical > reach ? logical - reach : 0};
  struct btrfs_key last = {BTRFS_EXTENT_CSUM_OBJECTID, BTRFS_EXTENT_CSUM_KEY, logical + length - 1};
  if (!search_open(&m->aux, j->tree_fd, BTRFS_CSUM_TREE_OBJECTID, first, last, &m->out->searches)) return fail(m, "out of memory");
  struct btrfs_ioctl_search_header h;
  const uint8_t *item;
  int r;
  *covered = 0;
  while ((r = search_next(&m->aux, &h, &item)) > 0)
    if (h.objectid == BTRFS_EXTENT_CSUM_OBJECTID && h.type == BTRFS_EXTENT_CSUM_KEY && h.offset % j->sector_size == 0)
      *covered += btrfs_csum_overlap(h.offset, h.len, item, logical, n, j->sector_size, j->csum_size, out);
  if (r < 0) return search_error(m, "checksums", r);
  if (*covered == n) m->csum_len += bytes;
  return true;
}

// ------------------------------------------------------------------------------ extents

static const struct bb_segment *segment_at(const struct mapper *m, uint64_t logical) {
  const struct bb_segment *seg = m->job->segments;
  size_t lo = 0, hi = m->job->nsegments;
  while (lo < hi) { // the last segment starting at or before `logical`
    size_t mid = (lo + hi) / 2;
    if (seg[mid].logical <= logical) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0 || logical >= seg[lo - 1].logical + seg[lo - 1].length) return NULL;
  return &seg[lo - 1];
}

static bool copies_continue(const struct run *a, const struct run *b) {
  if (a->ncopies != b->ncopies) return false;
  for (uint32_t k = 0; k < a->ncopies; k++)
    if (a->copies[k].device != b->copies[k].device || a->copies[k].device_offset + a->length != b->copies[k].device_offset) return false;
  return true;
}

// Append, joining a run that continues the previous one in the file and on every copy, checksummed
// alike, as the VFS mapper joins FIEMAP's extents (src/mapping/mapper.ts push()).
static bool add_run(struct mapper *m, const struct run *r) {
  struct run *last = m->nruns ? &m->runs[m->nruns - 1] : NULL;
  if (last && !last->algorithm && !r->algorithm && last->disk == r->disk && last->file_offset + last->length == r->file_offset &&
      last->disk_offset + last->length == r->disk_offset && last->csums == r->csums && copies_continue(last, r)) {
    last->length += r->length;
    last->csum_len += r->csum_len; // appended in order, so they follow each other in m->csums
    return true;
  }
  if (m->nruns >= RUNS_MAX) return refuse(m, "inode %llu: over %u extents", (unsigned long long)m->ino, RUNS_MAX);
  if (!bulk_grow((void **)&m->runs, &m->runs_cap, m->nruns + 1, sizeof *m->runs)) return fail(m, "out of memory");
  m->runs[m->nruns++] = *r;
  return true;
}

// Places the copies of one segment piece in a run; copy 0 is the run's own place.
static void place(struct run *r, const struct bb_segment *s, uint64_t within) {
  r->disk = s->copy[0].disk;
  r->disk_offset = s->copy[0].offset + within;
  r->ncopies = s->ncopies - 1;
  for (uint32_t k = 1; k < s->ncopies; k++) r->copies[k - 1] = (struct m2_copy){s->copy[k].disk, s->copy[k].offset + within};
}

// A plain extent: `length` file bytes from `file_offset` are logical [logical, logical + length).
// Checksums are kept only for mirrored data (what they choose a copy with), as the VFS mapper does.
static bool plain_extent(struct mapper *m, uint64_t file_offset, uint64_t logical, uint64_t length) {
  bool mirrored = false;
  for (uint64_t at = logical; at < logical + length;) {
    const struct bb_segment *s = segment_at(m, at);
    if (s == NULL) return fail(m, "inode %llu: btrfs logical address %llu is in no chunk (range %llu+%llu)", (unsigned long long)m->ino,
                               (unsigned long long)at, (unsigned long long)logical, (unsigned long long)length);
    mirrored |= s->ncopies > 1;
    at = s->logical + s->length;
  }
  uint64_t covered = 0, sector = m->job->sector_size;
  size_t csum_at = m->csum_len;
  if (mirrored && !read_csums(m, logical, length, &covered)) return false;
  bool csums = mirrored && covered > 0;
  if (csums && covered != length / sector)
    return fail(m, "inode %llu: btrfs has checksums for %llu of the %llu sectors at logical %llu", (unsigned long long)m->ino,
                (unsigned long long)covered, (unsigned long long)(length / sector), (unsigned long long)logical);
  if (csums) m->out->data_checksums = true;
  for (uint64_t at = logical; at < logical + length;) {
    const struct bb_segment *s = segment_at(m, at);
    uint64_t take = s->logical + s->length - at;
    if (take > logical + length - at) take = logical + length - at;
    if (csums && ((at - logical) % sector || take % sector))
      return fail(m, "inode %llu: a layer below btrfs splits a checksummed extent inside a sector of %llu bytes", (unsigned long long)m->ino, (unsigned long long)sector);
    struct run r = {.file_offset = file_offset + (at - logical), .length = take, .csums = csums};
    place(&r, s, at - s->logical);
    if (!csums) r.ncopies = 0; // other copies are recorded with the checksums that choose between them
    r.csum_at = csum_at + (size_t)((at - logical) / sector * m->job->csum_size);
    r.csum_len = csums ? (size_t)(take / sector * m->job->csum_size) : 0;
    if (!add_run(m, &r)) return false;
    at += take;
  }
  return true;
}

// A compressed extent: its whole encoded stream on one raw span, with its checksums, as the VFS
// mapper (pushCompressed) describes it; what cannot be so described fails there too.
static bool compressed_extent(struct mapper *m, uint64_t file_offset, const struct btrfs_file_extent_item *fe) {
  uint64_t disk = le64toh(fe->disk_bytenr), disk_len = le64toh(fe->disk_num_bytes), ram = le64toh(fe->ram_bytes);
  uint64_t offset = le64toh(fe->offset), num = le64toh(fe->num_bytes);
  unsigned long long ino = (unsigned long long)m->ino;
  if (fe->compression > 3) return fail(m, "inode %llu: extent at %llu is compressed with btrfs algorithm %u, which extfs does not know", ino, (unsigned long long)file_offset, fe->compression);
  if (disk_len > COMPRESSED_MAX || ram > COMPRESSED_MAX || offset + num > ram)
    return fail(m, "inode %llu: extent at %llu is out of btrfs's bounds", ino, (unsigned long long)file_offset);
  const struct bb_segment *s = segment_at(m, disk);
  if (s == NULL) return fail(m, "inode %llu: btrfs logical address %llu is in no chunk", ino, (unsigned long long)disk);
  if (disk + disk_len > s->logical + s->length)
    return fail(m, "inode %llu: compressed extent at %llu: the layers below btrfs split its encoded bytes; not supported", ino, (unsigned long long)file_offset);
  uint64_t covered;
  size_t csum_at = m->csum_len;
  if (!read_csums(m, disk, disk_len, &covered)) return false;
  if (covered != disk_len / m->job->sector_size)
    return fail(m, "inode %llu: compressed extent at %llu has no btrfs data checksums to verify it with; not supported", ino, (unsigned long long)file_offset);
  m->out->data_checksums = m->out->compressed = true;
  struct run r = {.file_offset = file_offset, .length = num, .csums = true, .csum_at = csum_at, .csum_len = m->csum_len - csum_at,
                  .algorithm = fe->compression, .disk_length = disk_len, .decoded_length = ram, .decoded_offset = offset};
  place(&r, s, disk - s->logical);
  return add_run(m, &r);
}

// ------------------------------------------------------------------ inline data, symlinks

// An inline extent: the bytes (decoded) kept in the tree. A regular file's are carried in the manifest
// as the walker carries what read() returns: the decoded bytes, zeros up to the size.
static bool inline_extent(struct mapper *m, uint64_t file_offset, const struct btrfs_file_extent_item *fe, const uint8_t *data, size_t len) {
  unsigned long long ino = (unsigned long long)m->ino;
  uint64_t ram = le64toh(fe->ram_bytes);
  if (file_offset != 0 || m->nruns || m->carry) return refuse(m, "inode %llu: inline extent at %llu among others", ino, (unsigned long long)file_offset);
  if (m->is_lnk) {
    if (fe->compression || len != m->size || len == 0 || len > M2_MAX_SYMLINK || memchr(data, 0, len))
      return refuse(m, "inode %llu: symlink extent of %zu bytes for a size of %llu", ino, len, (unsigned long long)m->size);
    if ((m->bytes = malloc(len)) == NULL) return fail(m, "out of memory");
    memcpy(m->bytes, data, len);
    m->nbytes = len;
    note_name(m, data, len);
    return true;
  }
  if (m->size > m->job->carry_max)
    return fail(m, "inode %llu: inline data of %llu bytes is over the %llu-byte limit for carrying it in the manifest (--carry-max)", ino,
                (unsigned long long)m->size, (unsigned long long)m->job->carry_max);
  m->carry = true;
  m->nbytes = (size_t)m->size;
  if ((m->bytes = calloc(m->nbytes ? m->nbytes : 1, 1)) == NULL) return fail(m, "out of memory");
  uint8_t *decoded = (uint8_t *)data;
  size_t have = len;
  if (fe->compression) {
    if (fe->compression > 3 || ram > COMPRESSED_MAX) return refuse(m, "inode %llu: inline extent compressed with algorithm %u, %llu bytes", ino, fe->compression, (unsigned long long)ram);
    char why[200];
    if ((decoded = malloc(ram ? ram : 1)) == NULL) return fail(m, "out of memory");
    int err = xt_decode(&m->decoder, fe->compression, data, len, m->job->sector_size, decoded, ram, &have, why, sizeof why);
    if (err) return free(decoded), refuse(m, "inode %llu: inline extent does not decode: %s", ino, err == ENOMEM ? "out of memory" : why);
  } else if (len != ram) {
    return refuse(m, "inode %llu: inline extent of %zu bytes says %llu", ino, len, (unsigned long long)ram);
  }
  memcpy(m->bytes, decoded, have < m->nbytes ? have : m->nbytes);
  if (decoded != data) free(decoded);
  if (m->nbytes) m->out->inline_data = true;
  return true;
}

// One EXTENT_DATA item of a file inside the tree, in file order. Holes and preallocated (unwritten)
// ranges are left out: they read as zeros, and the stale blocks behind prealloc must never be served.
static bool extent_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item) {
  unsigned long long ino = (unsigned long long)m->ino;
  const size_t head = offsetof(struct btrfs_file_extent_item, disk_bytenr);
  struct btrfs_file_extent_item fe;
  memset(&fe, 0, sizeof fe);
  if (!m->is_reg && !m->is_lnk) return refuse(m, "inode %llu: extent items on a special file", ino);
  if (h->len < head) return refuse(m, "inode %llu: extent item of %u bytes", ino, h->len);
  memcpy(&fe, item, h->len < sizeof fe ? h->len : sizeof fe);
  if (fe.encryption || fe.other_encoding) return refuse(m, "inode %llu: extent at %llu is encrypted or otherwise encoded", ino, (unsigned long long)h->offset);
  if (fe.type == BTRFS_FILE_EXTENT_INLINE) return inline_extent(m, h->offset, &fe, item + head, h->len - head);
  if (fe.type != BTRFS_FILE_EXTENT_REG && fe.type != BTRFS_FILE_EXTENT_PREALLOC) return refuse(m, "inode %llu: extent type %u", ino, fe.type);
  if (h->len < sizeof fe) return refuse(m, "inode %llu: extent item of %u bytes", ino, h->len);
  if (fe.type == BTRFS_FILE_EXTENT_PREALLOC || fe.disk_bytenr == 0) return true;
  if (m->is_lnk || m->carry) return refuse(m, "inode %llu: data extent at %llu beside inline data", ino, (unsigned long long)h->offset);
  // FIEMAP would report it and the walker drop it, unless FIEMAP joined it to the extent before: refuse
  // rather than reproduce FIEMAP's joining (btrfs truncates extents past EOF, so this is rare).
  if (h->offset >= m->size) return refuse(m, "inode %llu: extent at %llu, past the size %llu", ino, (unsigned long long)h->offset, (unsigned long long)m->size);
  if (fe.compression) return compressed_extent(m, h->offset, &fe);
  return plain_extent(m, h->offset, le64toh(fe.disk_bytenr) + le64toh(fe.offset), le64toh(fe.num_bytes));
}

// ------------------------------------------------------------------------------- xattrs

// Every XATTR_ITEM name is listed by btrfs's listxattr (btrfs.compression, POSIX ACLs as the kernel's
// xattr form, security.*), in key order (name hash), as getxattr returns its value.
static bool xattr_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item) {
  unsigned long long ino = (unsigned long long)m->ino;
  for (size_t at = 0; at < h->len;) {
    struct btrfs_dir_item d;
    if (at + sizeof d > h->len) return refuse(m, "inode %llu: truncated xattr item", ino);
    memcpy(&d, item + at, sizeof d);
    size_t name_len = le16toh(d.name_len), data_len = le16toh(d.data_len);
    const uint8_t *name = item + at + sizeof d;
    if (at + sizeof d + name_len + data_len > h->len) return refuse(m, "inode %llu: truncated xattr item", ino);
    if (name_len == 0 || name_len > M2_MAX_NAME || memchr(name, 0, name_len)) return refuse(m, "inode %llu: xattr name of %zu bytes", ino, name_len);
    if (data_len > M2_MAX_XATTR_VALUE) return refuse(m, "inode %llu: xattr value of %zu bytes", ino, data_len);
    size_t need = name_len + data_len + 2 * M2_VARINT_MAX_BYTES;
    if (m->xlen + need > XATTR_BUFFER_MAX) return refuse(m, "inode %llu: over %u bytes of xattrs", ino, XATTR_BUFFER_MAX);
    if (!bulk_grow((void **)&m->xbuf, &m->xcap, m->xlen + need, 1)) return fail(m, "out of memory");
    m->xlen += m2_varint_encode(m->xbuf + m->xlen, name_len);
    memcpy(m->xbuf + m->xlen, name, name_len), m->xlen += name_len;
    m->xlen += m2_varint_encode(m->xbuf + m->xlen, data_len);
    memcpy(m->xbuf + m->xlen, name + name_len, data_len), m->xlen += data_len;
    m->nx++;
    m->xlisted += name_len + 1;
    note_name(m, name, name_len);
    at += sizeof d + name_len + data_len;
  }
  return m->xlisted <= M2_MAX_XATTR_LIST || refuse(m, "inode %llu: xattr names over %u bytes", ino, M2_MAX_XATTR_LIST);
}

// ------------------------------------------------------------------------------- names

// Names of this inode (a non-directory) inside the exported tree: its nlink in the manifest, as the
// walker counts them. INODE_REF: key offset the parent, then (index, name_len, name)...
static bool ref_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item) {
  bool in_tree = dir_in_tree(m, h->offset);
  for (size_t at = 0; at < h->len;) {
    struct btrfs_inode_ref r;
    if (at + sizeof r > h->len) return refuse(m, "inode %llu: truncated ref item", (unsigned long long)m->ino);
    memcpy(&r, item + at, sizeof r);
    at += sizeof r + le16toh(r.name_len);
    if (at > h->len) return refuse(m, "inode %llu: truncated ref item", (unsigned long long)m->ino);
    if (in_tree) m->names++;
  }
  return true;
}

// INODE_EXTREF (many hard links): key offset a hash, then (parent, index, name_len, name)...
static bool extref_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item) {
  for (size_t at = 0; at < h->len;) {
    struct btrfs_inode_extref r;
    if (at + sizeof r > h->len) return refuse(m, "inode %llu: truncated extref item", (unsigned long long)m->ino);
    memcpy(&r, item + at, sizeof r);
    at += sizeof r + le16toh(r.name_len);
    if (at > h->len) return refuse(m, "inode %llu: truncated extref item", (unsigned long long)m->ino);
    if (dir_in_tree(m, le64toh(r.parent_objectid))) m->names++;
  }
  return true;
}

// One entry of a directory inside the tree, in index order (readdir's order). A subvolume inside the
// tree (its entry names a ROOT_ITEM) is refused: the walker serves it as an empty mount point.
static bool take_entry(struct mapper *m, const uint8_t *name, size_t len, uint64_t child) {
  unsigned long long dir = (unsigned long long)m->ino;
  if (len == 0 || len > M2_MAX_NAME || memchr(name, '/', len) || memchr(name, 0, len) || (len == 1 && name[0] == '.') ||
      (len == 2 && name[0] == '.' && name[1] == '.'))
    return refuse(m, "directory inode %llu: an entry name is empty, too long, or holds '/' or NUL", dir);
  if (child == m->job->root) return refuse(m, "directory inode %llu: an entry names the exported root", dir);
  if (++m->n > M2_MAX_ENTRIES_PER_DIR) return refuse(m, "directory inode %llu: over %u entries", dir, M2_MAX_ENTRIES_PER_DIR);
  m->out->entries++;
  note_name(m, name, len);
  if (m->overflowed) return true;
  if (!bulk_grow((void **)&m->ebuf, &m->ecap, m->elen + len + 2 * M2_VARINT_MAX_BYTES, 1)) return fail(m, "out of memory");
  m->elen += m2_dir_entry_encode(m->ebuf + m->elen, name, len, child, &m->prev_child);
  if (m->elen > DIR_BUFFER_MAX) m->overflowed = true; // written by a second reading instead
  return true;
}

// A DIR_INDEX item: one btrfs_dir_item and its name. Returns the child (0: left out) in *child.
static bool dir_index_entry(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item, uint64_t *child,
                            const uint8_t **name, size_t *len) {
  struct btrfs_dir_item d;
  *child = 0;
  if (h->len < sizeof d) return refuse(m, "directory inode %llu: truncated entry", (unsigned long long)h->objectid);
  memcpy(&d, item, sizeof d);
  *len = le16toh(d.name_len);
  *name = item + sizeof d;
  if (sizeof d + *len > h->len) return refuse(m, "directory inode %llu: truncated entry", (unsigned long long)h->objectid);
  if (d.location.type == BTRFS_ROOT_ITEM_KEY)
    return refuse(m, "directory inode %llu holds btrfs subvolume %llu (the walker serves it as an empty mount point)", (unsigned long long)h->objectid,
                  (unsigned long long)le64toh(d.location.objectid));
  if (d.location.type != BTRFS_INODE_ITEM_KEY) return refuse(m, "directory inode %llu: entry of location type %u", (unsigned long long)h->objectid, d.location.type);
  uint64_t c = le64toh(d.location.objectid);
  if (!skipped(m, c)) *child = c;
  return true;
}

// A directory whose entries passed DIR_BUFFER_MAX: read its DIR_INDEX items again, writing them out.
static bool write_entries_again(struct mapper *m) {
  struct btrfs_key first = {m->ino, BTRFS_DIR_INDEX_KEY, 0}, last = {m->ino, BTRFS_DIR_INDEX_KEY, UINT64_MAX};
  if (!search_open(&m->aux, m->job->tree_fd, 0, first, last, &m->out->searches)) return fail(m, "out of memory");
  struct btrfs_ioctl_search_header h;
  const uint8_t *item, *name;
  size_t len;
  uint64_t child, n = 0;
  int r;
  while ((r = search_next(&m->aux, &h, &item)) > 0) {
    if (h.objectid != m->ino || h.type != BTRFS_DIR_INDEX_KEY) continue;
    if (!dir_index_entry(m, &h, item, &child, &name, &len)) return false;
    if (child == 0) continue;
    m2w_dir_entry(m->dirs_w, name, len, child);
    n++;
  }
  if (r < 0) return search_error(m, "directory entries", r);
  return n == m->n || fail(m, "directory inode %llu: %llu entries, then %llu", (unsigned long long)m->ino, (unsigned long long)m->n, (unsigned long long)n);
}

static bool write_dir(struct mapper *m) {
  if (m->n == 0) return true; // an inode without a DIR record is an empty directory
  m2w_dir_begin(m->dirs_w, m->ino, m->n);
  m->out->dirs++;
  if (!m->overflowed) {
    m2w_raw(m->dirs_w, m->ebuf, m->elen);
    return true;
  }
  return write_entries_again(m);
}

// ------------------------------------------------------------------------------ inodes

// btrfs_inode_flags_to_fsflags() (fs/btrfs/ioctl.c): what FS_IOC_GETFLAGS reports.
static uint32_t fsflags_of(uint64_t item_flags) {
  uint32_t f = (uint32_t)item_flags, out = 0;
  if (f & KERNEL_BTRFS_INODE_SYNC) out |= KERNEL_FS_SYNC_FL;
  if (f & KERNEL_BTRFS_INODE_IMMUTABLE) out |= KERNEL_FS_IMMUTABLE_FL;
  if (f & KERNEL_BTRFS_INODE_APPEND) out |= KERNEL_FS_APPEND_FL;
  if (f & KERNEL_BTRFS_INODE_NODUMP) out |= KERNEL_FS_NODUMP_FL;
  if (f & KERNEL_BTRFS_INODE_NOATIME) out |= KERNEL_FS_NOATIME_FL;
  if (f & KERNEL_BTRFS_INODE_DIRSYNC) out |= KERNEL_FS_DIRSYNC_FL;
  if (f & KERNEL_BTRFS_INODE_NODATACOW) out |= KERNEL_FS_NOCOW_FL;
  if (f & KERNEL_BTRFS_INODE_NOCOMPRESS) out |= KERNEL_FS_NOCOMP_FL;
  else if (f & KERNEL_BTRFS_INODE_COMPRESS) out |= KERNEL_FS_COMPR_FL;
  return out;
}

// st_rdev as glibc's makedev() builds it from statx's major and minor (what Node reports); btrfs keeps
// the kernel's dev_t (major << 20 | minor).
static uint64_t rdev_of(uint64_t kdev) {
  uint64_t major = kdev >> 20, minor = kdev & 0xfffff;
  return ((major & 0xfffff000u) << 32) | ((major & 0xfffu) << 8) | ((minor & 0xffffff00u) << 12) | (minor & 0xffu);
}

static bool time_of(struct mapper *m, const struct btrfs_timespec *t, struct m2_time *out) {
  out->sec = (int64_t)le64toh(t->sec);
  out->nsec = le32toh(t->nsec);
  return out->nsec < 1000000000u || refuse(m, "inode %llu: a time with %u ns", (unsigned long long)m->ino, out->nsec);
}

// The body's index of a disk of the segments: numbered as first met, so that only the disks the
// extents reach become the manifest's devices, as the walker's.
static uint32_t disk_met(struct mapper *m, uint32_t disk) {
  if (m->disk_index[disk] == UINT32_MAX) {
    m->disk_index[disk] = m->out->ndisks;
    m->out->disk_order[m->out->ndisks++] = disk;
  }
  return m->disk_index[disk];
}

static void write_extents(struct mapper *m) {
  m2w_extents_begin(m->inodes_w, m->nruns);
  uint64_t end = 0;
  for (size_t k = 0; k < m->nruns; k++) {
    struct run *r = &m->runs[k];
    r->disk = disk_met(m, r->disk);
    for (uint32_t c = 0; c < r->ncopies; c++) r->copies[c].device = disk_met(m, r->copies[c].device);
    if (!r->csums && !r->algorithm) {
      m2w_extent(m->inodes_w, r->file_offset - end, r->length, r->disk, r->disk_offset);
    } else {
      struct m2_extent_extras x = {.csums = r->csums, .ncopies = r->ncopies, .csum = m->csums + r->csum_at, .csum_len = r->csum_len,
                                   .algorithm = r->algorithm, .disk_length = r->disk_length, .decoded_length = r->decoded_length,
                                   .decoded_offset = r->decoded_offset};
      memcpy(x.copies, r->copies, sizeof x.copies);
      m2w_extent_extras(m->inodes_w, r->file_offset - end, r->length, r->disk, r->disk_offset, &x);
    }
    end = r->file_offset + r->length;
    sample_run(m, r);
  }
}

// The INODE record of the inode just read, when it is inside the tree.
static bool write_inode(struct mapper *m) {
  unsigned long long ino = (unsigned long long)m->ino;
  const struct btrfs_inode_item *ii = &m->ii;
  uint32_t mode = le32toh(ii->mode), type = mode & S_IFMT;
  uint64_t flags = le64toh(ii->flags);
  if ((flags >> 32) & KERNEL_BTRFS_INODE_RO_VERITY) return refuse(m, "inode %llu has fs-verity", ino);
  if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK && type != S_IFIFO && type != S_IFCHR && type != S_IFBLK && type != S_IFSOCK)
    return refuse(m, "inode %llu: mode 0%o", ino, mode);
  if (m->is_lnk && m->bytes == NULL) return refuse(m, "inode %llu: symlink without its target", ino);
  // st_blocks: btrfs_getattr() rounds the inode's bytes (nbytes, inline bytes included) up to the
  // sector size; nothing is delayed-allocated in a read-only snapshot.
  uint64_t sector = m->job->sector_size, nbytes = le64toh(ii->nbytes);
  struct m2_inode r = {
    .ino = m->ino, .mode = mode, .uid = le32toh(ii->uid), .gid = le32toh(ii->gid),
    // A directory's nlink is the filesystem's (btrfs keeps 1); a file's counts its names in the tree.
    .nlink = m->is_dir ? le32toh(ii->nlink) : m->names,
    .size = m->size, .blocks = (nbytes + sector - 1) / sector * sector / 512,
  };
  if (m->size > M2_VALUE_MAX) return refuse(m, "inode %llu: size over 2^53", ino);
  if (!time_of(m, &ii->atime, &r.atime) || !time_of(m, &ii->mtime, &r.mtime) || !time_of(m, &ii->ctime, &r.ctime)) return false;
  if (type == S_IFCHR || type == S_IFBLK) {
    r.has |= M2_HAS_RDEV;
    r.rdev = rdev_of(le64toh(ii->rdev));
  }
  if (type == S_IFREG || type == S_IFDIR) {
    r.attrs = fsflags_of(flags);
    if (r.attrs) r.has |= M2_HAS_ATTRS;
  }
  if (m->nx) r.has |= M2_HAS_XATTRS;
  if (m->carry && m->nbytes) r.has |= M2_HAS_INLINE;
  m2w_inode_begin(m->inodes_w, &r);
  if (m->nx) {
    m2w_xattrs_begin(m->inodes_w, m->nx);
    m2w_raw(m->inodes_w, m->xbuf, m->xlen);
  }
  if (r.has & M2_HAS_INLINE) m2w_bytes(m->inodes_w, m->bytes, m->nbytes);
  else if (m->is_reg) write_extents(m);
  else if (m->is_lnk) m2w_bytes(m->inodes_w, m->bytes, m->nbytes);
  m->out->inodes++;
  bulk_progress_described(m->job->progress, m->out->inodes, r.blocks, 0);
  if (m->is_dir) m->dirs_written_inodes++;
  else m->names_total += m->names;
  return true;
}

static void begin_inode(struct mapper *m, uint64_t ino) {
  m->ino = ino;
  m->have_item = m->reachable = m->is_dir = m->is_reg = m->is_lnk = m->carry = m->overflowed = false;
  m->names = m->nx = 0;
  m->xlen = m->xlisted = m->elen = m->nruns = m->csum_len = m->nbytes = 0;
  m->n = m->prev_child = 0;
  free(m->bytes);
  m->bytes = NULL;
}

static bool finish_inode(struct mapper *m) {
  if (!m->reachable) return true;
  if (!m->have_item) return refuse(m, "inode %llu is named in the tree but has no inode item", (unsigned long long)m->ino);
  return (!m->is_dir || write_dir(m)) && write_inode(m);
}

// Whether the inode whose items are being read is inside the tree, once its refs are read: a directory
// by the table, anything else by a name in a directory inside the tree.
static bool inside(const struct mapper *m) {
  // The others once their INODE_REF is read. (An unlinked directory held open at the snapshot has
  // none, but btrfs deletes a snapshot's orphans when it is first opened, before we read it: a test
  // that held one open found nothing to leave out. An unnamed one is left out all the same.)
  if (m->whole && m->is_dir) return m->ino == m->job->root;
  return m->is_dir ? dir_in_tree(m, m->ino) && !skipped(m, m->ino) : m->names > 0 && !skipped(m, m->ino);
}

// One item of sweep 2, of the inode m->ino.
static bool take_item(struct mapper *m, const struct btrfs_ioctl_search_header *h, const uint8_t *item) {
  switch (h->type) {
  case BTRFS_INODE_ITEM_KEY: {
    if (!inode_item(m, h, item, &m->ii)) return false;
    uint32_t type = le32toh(m->ii.mode) & S_IFMT;
    m->have_item = true;
    m->is_dir = type == S_IFDIR, m->is_reg = type == S_IFREG, m->is_lnk = type == S_IFLNK;
    m->size = le64toh(m->ii.size);
    m->reachable = m->is_dir && inside(m); // a file's names come next
    return true;
  }
  case BTRFS_INODE_REF_KEY:
  case BTRFS_INODE_EXTREF_KEY:
    if (m->is_dir) {
      // A directory has one INODE_REF, keyed by its parent; the subvolume's root names itself.
      if (m->whole && h->type == BTRFS_INODE_REF_KEY && h->offset != m->ino) m->reachable = m->have_item;
      return true;
    }
    if (!(h->type == BTRFS_INODE_REF_KEY ? ref_item(m, h, item) : extref_item(m, h, item))) return false;
    m->reachable = m->have_item && inside(m);
    return true;
  case BTRFS_DIR_ITEM_KEY:
    return true; // the same entries in hash order; DIR_INDEX gives readdir's order
  }
  if (!m->reachable) return true;
  switch (h->type) {
  case BTRFS_XATTR_ITEM_KEY:
    return xattr_item(m, h, item);
  case BTRFS_DIR_INDEX_KEY: {
    const uint8_t *name;
    size_t len;
    uint64_t child;
    if (!m->is_dir) return refuse(m, "inode %llu: directory entries on a non-directory", (unsigned long long)m->ino);
    return dir_index_entry(m, h, item, &child, &name, &len) && (child == 0 || take_entry(m, name, len, child));
  }
  case BTRFS_EXTENT_DATA_KEY:
    return extent_item(m, h, item);
  case BTRFS_VERITY_DESC_ITEM_KEY:
  case BTRFS_VERITY_MERKLE_ITEM_KEY:
    return refuse(m, "inode %llu has fs-verity", (unsigned long long)m->ino);
  default:
    return refuse(m, "inode %llu: item type %u, which this mapper does not read", (unsigned long long)m->ino, h->type);
  }
}

// Sweep 2: every item, inode by inode.
static bool sweep_inodes(struct mapper *m) {
  if (!search_open(&m->fs, m->job->tree_fd, 0, KEY_FIRST_INODE, KEY_LAST_INODE, &m->out->searches)) return fail(m, "out of memory");
  struct btrfs_ioctl_search_header h;
  const uint8_t *item;
  int r;
  begin_inode(m, 0);
  while ((r = search_next(&m->fs, &h, &item)) > 0) {
    if (h.objectid != m->ino) {
      if (!finish_inode(m)) return false;
      begin_inode(m, h.objectid);
    }
    if (!take_item(m, &h, item)) return false;
  }
  if (r < 0) return search_error(m, "inodes", r);
  if (!finish_inode(m)) return false;
  // Every entry names an inode that was written, each directory but the root once: refs and entries agree.
  // (A whole subvolume has no table to hold the written directories to: they count themselves.)
  uint64_t dirs = m->whole ? m->dirs_written_inodes : m->in_tree;
  if (m->dirs_written_inodes != dirs || m->out->entries != m->names_total + dirs - 1)
    return refuse(m, "the tree's entries (%llu) and its inodes' names (%llu, %llu directories) disagree", (unsigned long long)m->out->entries,
                  (unsigned long long)m->names_total, (unsigned long long)dirs);
  return true;
}

// ------------------------------------------------------------------------------ output

// The INODE records after the DIR records: copied in the kernel from the scratch file.
static bool append_inodes(struct mapper *m) {
  int err = m2w_flush(m->inodes_w);
  if (!err) err = m2w_flush(m->dirs_w);
  if (err) return fail(m, "cannot write the manifest body: %s", strerror(err));
  loff_t in = 0;
  uint64_t left = m->inodes_w->written;
  while (left > 0) {
    ssize_t n = copy_file_range(m->job->inodes_fd, &in, m->job->fd, NULL, left, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
      char buf[65536]; // another filesystem or an old kernel: through user space
      ssize_t got = pread(m->job->inodes_fd, buf, left < sizeof buf ? left : sizeof buf, in);
      if (got <= 0) return fail(m, "cannot read back the INODE records: %s", got < 0 ? strerror(errno) : "short file");
      for (ssize_t at = 0; at < got;) {
        ssize_t w = write(m->job->fd, buf + at, (size_t)(got - at));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return fail(m, "cannot write the manifest body: %s", w < 0 ? strerror(errno) : "short write");
        at += w;
      }
      in += got, left -= (uint64_t)got;
      continue;
    }
    if (n <= 0) return fail(m, "cannot append the INODE records: %s", n < 0 ? strerror(errno) : "short copy");
    left -= (uint64_t)n;
  }
  m->out->body_bytes = m->dirs_w->written + m->inodes_w->written;
  return true;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static bool check_job(struct mapper *m) {
  const struct bb_job *j = m->job;
  if (j->sector_size == 0 || j->csum_size == 0 || j->node_size == 0) return fail(m, "sector, node or checksum size 0");
  if (j->root < BTRFS_FIRST_FREE_OBJECTID) return refuse(m, "root inode %llu", (unsigned long long)j->root);
  for (size_t k = 0; k < j->nsegments; k++) {
    const struct bb_segment *s = &j->segments[k];
    if (s->ncopies < 1 || s->ncopies > BB_MAX_COPIES || s->length == 0) return fail(m, "segment %zu: %u copies, %llu bytes", k, s->ncopies, (unsigned long long)s->length);
    for (uint32_t c = 0; c < s->ncopies; c++) {
      if (s->copy[c].disk >= BB_MAX_DISKS) return refuse(m, "the chunk map names disk %u", s->copy[c].disk);
    }
    if (k && s->logical < j->segments[k - 1].logical + j->segments[k - 1].length) return fail(m, "segments overlap or are unsorted");
  }
  for (uint32_t d = 0; d < BB_MAX_DISKS; d++) m->disk_index[d] = UINT32_MAX;
  m->skip = malloc((j->nskip ? j->nskip : 1) * sizeof *m->skip);
  m->out->samplers = calloc(BB_MAX_DISKS, sizeof *m->out->samplers);
  m->dirs_w = malloc(sizeof *m->dirs_w);
  m->inodes_w = malloc(sizeof *m->inodes_w);
  if (!m->skip || !m->out->samplers || !m->dirs_w || !m->inodes_w) return fail(m, "out of memory");
  memcpy(m->skip, j->skip, j->nskip * sizeof *m->skip);
  qsort(m->skip, j->nskip, sizeof *m->skip, cmp_u64);
  m2w_init(m->dirs_w, j->fd);
  m2w_init(m->inodes_w, j->inodes_fd);
  return true;
}

void bb_map(const struct bb_job *job, struct bb_result *out) {
  memset(out, 0, sizeof *out);
  struct mapper m = {.job = job, .out = out, .whole = job->root == BTRFS_FIRST_FREE_OBJECTID && job->nskip == 0};
  // The inodes' total is not known before their sweep: the tree's directories name them, not count them.
  if (check_job(&m) && (m.whole || (bulk_progress_phase(job->progress, BULK_PHASE_DIRS, 0, 0), sweep_dirs(&m) && mark_tree(&m))) &&
      (bulk_progress_phase(job->progress, BULK_PHASE_INODES, 0, 0), sweep_inodes(&m)))
    append_inodes(&m);
  if (out->outcome == BB_OK) {
    // nothing more
  } else if (m.dirs_w && (m.dirs_w->error || (m.inodes_w && m.inodes_w->error))) {
    out->outcome = BB_FAILED;
    snprintf(out->why, sizeof out->why, "cannot write the manifest body: %s", strerror(m.dirs_w->error ? m.dirs_w->error : m.inodes_w->error));
  }
  xt_decoder_free(&m.decoder);
  free(m.fs.args), free(m.aux.args), free(m.skip), free(m.dirs), free(m.dir_state), free(m.xbuf), free(m.ebuf), free(m.runs), free(m.csums),
      free(m.bytes), free(m.dirs_w), free(m.inodes_w);
}

void bb_result_free(struct bb_result *r) {
  free(r->samplers);
  r->samplers = NULL;
}
