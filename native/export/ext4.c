// The ext4 bulk mapper. Given the block device of a frozen ext4 filesystem (FIFREEZE flushed the
// journal and every inode, so the on-disk metadata is what the kernel would report), it writes the
// manifest body (docs/manifest-v2.md) of the tree under one directory:
//   1. DIR records, from a walk of the directory blocks from the root (ext2fs_dir_iterate2 reads
//      linear, htree and inline-data directories alike), which also marks every inode reached and
//      counts the names of each non-directory (its nlink in the manifest);
//   2. INODE records in ascending inode number from one scan of the inode tables.
// It holds one byte per inode of the filesystem (names found, lazily allocated by calloc) and one
// bit (entered as a directory), a stack of directories still to read, and one file's extents.
//
// Every field must equal what the VFS walker (src/export/walk.ts) reports through the kernel; where
// the kernel's view is computed rather than stored, this file does what the kernel does and says so.
// What it cannot reproduce exactly it refuses (E4_REFUSED: export falls back to the VFS walker),
// never guesses.
#include "ext4.h"

#include <errno.h>
#include <ext2fs/ext2fs.h>
#include <ext2fs/ext2_ext_attr.h> // after ext2fs.h, which defines its __u32
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../manifest/utf8.h"
#include "../manifest/v2write.h"

// The flags FS_IOC_GETFLAGS returns on ext4: the kernel's EXT4_FL_USER_VISIBLE (fs/ext4/ext4.h),
// and ext4_fileattr_get() clears FS_PROJINHERIT_FL for regular files.
#define KERNEL_EXT4_FL_USER_VISIBLE 0x725BDBFFu
#define KERNEL_FS_PROJINHERIT_FL 0x20000000u

// Incompat features whose on-disk formats this mapper (with libext2fs) reads exactly. Encryption
// and casefolding are refused per inode; a journal needing recovery is refused before this test.
#define HANDLED_INCOMPAT                                                                        \
  (EXT2_FEATURE_INCOMPAT_FILETYPE | EXT3_FEATURE_INCOMPAT_RECOVER | EXT2_FEATURE_INCOMPAT_META_BG | \
   EXT3_FEATURE_INCOMPAT_EXTENTS | EXT4_FEATURE_INCOMPAT_64BIT | EXT4_FEATURE_INCOMPAT_MMP |       \
   EXT4_FEATURE_INCOMPAT_FLEX_BG | EXT4_FEATURE_INCOMPAT_EA_INODE | EXT4_FEATURE_INCOMPAT_CSUM_SEED | \
   EXT4_FEATURE_INCOMPAT_LARGEDIR | EXT4_FEATURE_INCOMPAT_INLINE_DATA | EXT4_FEATURE_INCOMPAT_ENCRYPT | \
   EXT4_FEATURE_INCOMPAT_CASEFOLD)

// Inode flags whose files the kernel presents differently from their blocks (encryption, verity's
// Merkle tree past EOF, casefolded lookups) or that are never a file (an xattr value inode).
#define REFUSED_INODE_FLAGS (EXT4_ENCRYPT_FL | EXT4_VERITY_FL | EXT4_CASEFOLD_FL | EXT4_EA_INODE_FL)

#define DIR_BUFFER_MAX (1u << 20) // a directory's encoded entries kept to count them; past it, read twice
#define EXTENTS_MAX 100000000u    // version 1's limit over the whole manifest bounds one file too

struct count_spill { // names of an inode past the u8 counter's 255
  uint32_t ino, count;
};

struct mapper {
  const struct e4_job *job;
  struct e4_result *out;
  ext2_filsys fs;
  struct m2w *w;
  uint32_t inodes_count;
  uint8_t *names;       // per inode number: 0 not reached; else names found (saturated at 255)
  uint8_t *dir_bits;    // per inode number: entered as a directory
  struct count_spill *spill;
  size_t nspill, spill_cap;
  uint32_t *stack;      // directories whose blocks are still to be read
  size_t depth, stack_cap;
  uint64_t reached;     // inodes marked
  // The directory being read.
  uint32_t dir;
  uint64_t n;
  uint8_t *ebuf;
  size_t elen, ecap;
  bool overflowed;
  uint64_t prev_child;
  bool failed;          // a callback hit a refusal or failure; out->why says which
  // The regular file being mapped.
  struct bulk_runs runs;
  uint64_t size;
  uint32_t ino;
  char *block;          // one filesystem block
};

// ----------------------------------------------------------------------------- outcomes

static bool say(struct mapper *m, enum e4_outcome kind, const char *fmt, va_list ap) {
  if (m->out->outcome == E4_OK) {
    m->out->outcome = kind;
    vsnprintf(m->out->why, sizeof m->out->why, fmt, ap);
  }
  m->failed = true;
  return false;
}

// Not something this mapper reproduces exactly: the VFS walker does it instead.
__attribute__((format(printf, 2, 3))) static bool refuse(struct mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, E4_REFUSED, fmt, ap);
  va_end(ap);
  return false;
}

// An error the walker would meet too (I/O, the carry limit): export fails.
__attribute__((format(printf, 2, 3))) static bool fail(struct mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, E4_FAILED, fmt, ap);
  va_end(ap);
  return false;
}

static bool lib_error(struct mapper *m, const char *what, uint32_t ino, errcode_t err) {
  // Checksum and structure errors mean the metadata is not what the kernel accepted: refuse, and
  // let the walker meet (and report) the same inode through the kernel.
  return refuse(m, "inode %u: %s: %s", ino, what, error_message(err));
}

// -------------------------------------------------------------------- names and counts

static void note_name(struct mapper *m, const void *name, size_t len) {
  if (!m->out->byte_names && !m2_valid_utf8(name, len)) m->out->byte_names = true;
}

static bool is_dir_entered(const struct mapper *m, uint32_t ino) {
  return m->dir_bits[ino >> 3] & (1u << (ino & 7));
}

// One more name of a non-directory. Hard links past 255 names (rare) are counted in a small spill list.
static bool count_name(struct mapper *m, uint32_t ino) {
  if (m->names[ino] == 0) m->reached++;
  if (m->names[ino] < 255) {
    m->names[ino]++;
    return true;
  }
  for (size_t i = 0; i < m->nspill; i++)
    if (m->spill[i].ino == ino) return ++m->spill[i].count != 0 || refuse(m, "inode %u: more than 2^32 names", ino);
  if (!bulk_grow((void **)&m->spill, &m->spill_cap, m->nspill + 1, sizeof *m->spill)) return fail(m, "out of memory");
  m->spill[m->nspill++] = (struct count_spill){ino, 256};
  return true;
}

static uint32_t names_of(const struct mapper *m, uint32_t ino) {
  if (m->names[ino] < 255) return m->names[ino];
  for (size_t i = 0; i < m->nspill; i++)
    if (m->spill[i].ino == ino) return m->spill[i].count;
  return 255;
}

static bool skipped(const struct mapper *m, uint32_t ino) {
  for (size_t i = 0; i < m->job->nskip; i++)
    if (m->job->skip[i] == ino) return true;
  return false;
}

// ------------------------------------------------------------------------ directories

static bool enter_dir(struct mapper *m, uint32_t ino) {
  m->names[ino] = 1;
  m->dir_bits[ino >> 3] |= (uint8_t)(1u << (ino & 7));
  m->reached++;
  if (!bulk_grow((void **)&m->stack, &m->stack_cap, m->depth + 1, sizeof *m->stack)) return fail(m, "out of memory");
  m->stack[m->depth++] = ino;
  return true;
}

// First reading of a directory's entries: mark and count the children, keep their encoding.
static bool take_entry(struct mapper *m, const char *name, size_t len, uint32_t child, int type) {
  if (len == 0 || memchr(name, '/', len) || memchr(name, 0, len))
    return refuse(m, "directory inode %u: an entry name holds '/' or NUL, or is empty", m->dir);
  if (child == 0 || child > m->inodes_count) return refuse(m, "directory inode %u: entry names inode %u, out of range", m->dir, child);
  if (child == m->job->root) return refuse(m, "directory inode %u: an entry names the exported root", m->dir);
  if (++m->n > M2_MAX_ENTRIES_PER_DIR) return refuse(m, "directory inode %u: over %u entries", m->dir, M2_MAX_ENTRIES_PER_DIR);
  m->out->entries++;
  note_name(m, name, len);
  if (type == EXT2_FT_DIR) {
    if (m->names[child] != 0) return refuse(m, "directory inode %u entered twice (or also as a file)", child);
    if (!enter_dir(m, child)) return false;
  } else if (type == EXT2_FT_UNKNOWN || type >= EXT2_FT_MAX) {
    return refuse(m, "directory inode %u: entry for inode %u has no file type", m->dir, child);
  } else {
    if (is_dir_entered(m, child)) return refuse(m, "inode %u: entered as a directory and as a file", child);
    if (!count_name(m, child)) return false;
  }
  if (m->overflowed) return true;
  if (!bulk_grow((void **)&m->ebuf, &m->ecap, m->elen + len + 2 * M2_VARINT_MAX_BYTES, 1)) return fail(m, "out of memory");
  m->elen += m2_dir_entry_encode(m->ebuf + m->elen, name, len, child, &m->prev_child);
  if (m->elen > DIR_BUFFER_MAX) m->overflowed = true; // written by a second reading instead
  return true;
}

struct dir_pass {
  struct mapper *m;
  bool second; // the second reading of a directory too big to keep: write entries straight out
  uint64_t n;
};

static int on_entry(ext2_ino_t dir, int entry, struct ext2_dir_entry *d, int offset, int blocksize, char *buf, void *priv) {
  (void)dir, (void)entry, (void)offset, (void)blocksize, (void)buf;
  struct dir_pass *p = priv;
  struct mapper *m = p->m;
  size_t len = ext2fs_dirent_name_len(d);
  if (d->inode == 0) return 0;
  if ((len == 1 && d->name[0] == '.') || (len == 2 && d->name[0] == '.' && d->name[1] == '.')) return 0;
  if (skipped(m, d->inode)) return 0;
  if (p->second) {
    p->n++;
    m2w_dir_entry(m->w, d->name, len, d->inode);
    return 0;
  }
  return take_entry(m, d->name, len, d->inode, ext2fs_dirent_file_type(d)) ? 0 : DIRENT_ABORT;
}

static bool read_dir(struct mapper *m, uint32_t dir) {
  struct ext2_inode inode;
  errcode_t err = ext2fs_read_inode(m->fs, dir, &inode);
  if (err) return lib_error(m, "cannot read directory inode", dir, err);
  if (!LINUX_S_ISDIR(inode.i_mode) || inode.i_links_count == 0)
    return refuse(m, "inode %u: entered as a directory but is not one in use", dir);
  if (inode.i_flags & REFUSED_INODE_FLAGS) return refuse(m, "directory inode %u is encrypted or casefolded (flags 0x%x)", dir, inode.i_flags);
  m->dir = dir;
  m->n = 0;
  m->elen = 0;
  m->overflowed = false;
  m->prev_child = 0;
  struct dir_pass p = {m, false, 0};
  // Flags 0: libext2fs reads an inline-data directory by itself (DIRENT_FLAG_INCLUDE_INLINE_DATA is
  // its internal mark for a buffer that is inline data, not a request).
  err = ext2fs_dir_iterate2(m->fs, dir, 0, m->block, on_entry, &p);
  if (m->failed) return false;
  if (err) return lib_error(m, "cannot read directory", dir, err);
  if (m->n == 0) return true; // an inode without a DIR record is an empty directory
  m2w_dir_begin(m->w, dir, m->n);
  m->out->dirs++;
  if (!m->overflowed) {
    m2w_raw(m->w, m->ebuf, m->elen);
    return true;
  }
  p.second = true;
  err = ext2fs_dir_iterate2(m->fs, dir, 0, m->block, on_entry, &p);
  if (err) return lib_error(m, "cannot read directory again", dir, err);
  if (p.n != m->n) return fail(m, "directory inode %u: %llu entries, then %llu (not frozen?)", dir, (unsigned long long)m->n, (unsigned long long)p.n);
  return true;
}

static bool walk_dirs(struct mapper *m) {
  bulk_progress_phase(m->job->progress, BULK_PHASE_DIRS, 0, 0);
  if (!enter_dir(m, m->job->root)) return false;
  while (m->depth > 0) {
    if (!read_dir(m, m->stack[--m->depth])) return false;
    bulk_progress_at(m->job->progress, BULK_PHASE_DIRS, m->reached, 0);
  }
  // Version 1's limit, which the trailer's u32 counts and every reader hold to.
  return m->reached <= M2_MAX_INODES || refuse(m, "%llu inodes in the tree, over %u", (unsigned long long)m->reached, M2_MAX_INODES);
}

// ------------------------------------------------------------------------- inode fields

// ext4_decode_extra_time() (fs/ext4/ext4.h): seconds are signed 32 bits plus an epoch of two
// bits from the extra field, which also holds the nanoseconds; without the extra field, 0 ns.
static bool decode_time(struct mapper *m, uint32_t base, const uint32_t *extra, struct m2_time *t) {
  t->sec = (int32_t)base;
  t->nsec = 0;
  if (extra == NULL) return true;
  if (*extra & EXT4_EPOCH_MASK) t->sec += (int64_t)(*extra & EXT4_EPOCH_MASK) << 32;
  t->nsec = (*extra & EXT4_NSEC_MASK) >> EXT4_EPOCH_BITS;
  return t->nsec < 1000000000u || refuse(m, "inode %u: a time with %u ns", m->ino, t->nsec);
}

// The kernel's EXT4_FITS_IN_INODE: the extra time fields exist when i_extra_isize covers them.
#define FITS(inode, field) \
  (EXT2_INODE_SIZE(m->fs->super) > EXT2_GOOD_OLD_INODE_SIZE && \
   offsetof(struct ext2_inode_large, field) + sizeof((inode)->field) <= (size_t)EXT2_GOOD_OLD_INODE_SIZE + (inode)->i_extra_isize)

static bool times_of(struct mapper *m, const struct ext2_inode_large *i, struct m2_inode *r) {
  return decode_time(m, i->i_atime, FITS(i, i_atime_extra) ? &i->i_atime_extra : NULL, &r->atime) &&
         decode_time(m, i->i_mtime, FITS(i, i_mtime_extra) ? &i->i_mtime_extra : NULL, &r->mtime) &&
         decode_time(m, i->i_ctime, FITS(i, i_ctime_extra) ? &i->i_ctime_extra : NULL, &r->ctime);
}

// st_rdev as glibc's makedev() builds it from statx's major and minor (what Node reports).
static uint64_t makedev_glibc(uint64_t major, uint64_t minor) {
  return ((major & 0xfffff000u) << 32) | ((major & 0xfffu) << 8) | ((minor & 0xffffff00u) << 12) | (minor & 0xffu);
}

// ext4_iget(): the old 16-bit encoding in i_block[0] when non-zero, else the new one in i_block[1].
static uint64_t rdev_of(const struct ext2_inode_large *i) {
  uint32_t old = i->i_block[0], new = i->i_block[1];
  if (old) return makedev_glibc((old >> 8) & 0xff, old & 0xff);
  return makedev_glibc((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00));
}

// ------------------------------------------------------------------------------- xattrs

struct xattr_ref {
  const char *name;
  const void *value;
  size_t len;
  void *converted; // an ACL in the kernel's xattr form, malloc'd
};

struct xattr_list {
  struct mapper *m;
  struct xattr_ref *refs;
  size_t n, cap, listed; // listed: bytes listxattr would return (names with a NUL each)
};

// The namespaces ext4's listxattr shows (ext4_xattr_handler_map): system.data (inline data) and
// system.richacl never appear there, so they are left out; an unknown index is refused.
static int xattr_kind(const char *name) {
  static const char *const listed[] = {"user.", "trusted.", "security."};
  for (size_t i = 0; i < sizeof listed / sizeof *listed; i++)
    if (strncmp(name, listed[i], strlen(listed[i])) == 0) return 1;
  if (!strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default")) return 2;
  if (!strcmp(name, "system.data") || !strncmp(name, "system.richacl", 14)) return 0;
  return -1;
}

// ext4's on-disk ACL (fs/ext4/acl.h: version 1, short entries for the owner, group, mask and other)
// as the kernel's posix_acl_to_xattr() returns it: version 2, every entry 8 bytes, and the id of the
// short ones ACL_UNDEFINED_ID. Written by hand because libext2fs's conversion sets those ids to 0.
static void *acl_to_xattr(const uint8_t *disk, size_t len, size_t *out_len) {
  if (len < 4 || disk[0] != 1 || disk[1] || disk[2] || disk[3]) return NULL;
  uint8_t *out = malloc(4 + (len / 4) * 8);
  if (out == NULL) return NULL;
  size_t o = 0;
  out[o++] = 2, out[o++] = 0, out[o++] = 0, out[o++] = 0;
  for (size_t at = 4; at < len;) {
    if (at + 4 > len) goto bad;
    uint16_t tag = (uint16_t)(disk[at] | disk[at + 1] << 8);
    memcpy(out + o, disk + at, 4); // tag and perm
    if (tag == 0x02 || tag == 0x08) { // ACL_USER, ACL_GROUP: an id follows
      if (at + 8 > len) goto bad;
      memcpy(out + o + 4, disk + at + 4, 4);
      at += 8;
    } else if (tag == 0x01 || tag == 0x04 || tag == 0x10 || tag == 0x20) {
      memset(out + o + 4, 0xff, 4);
      at += 4;
    } else {
      goto bad;
    }
    o += 8;
  }
  *out_len = o;
  return out;
bad:
  free(out);
  return NULL;
}

static int on_xattr(char *name, char *value, size_t len, void *priv) {
  struct xattr_list *l = priv;
  struct mapper *m = l->m;
  int kind = xattr_kind(name);
  if (kind == 0) return 0;
  if (kind < 0) return refuse(m, "inode %u: xattr %s is in a namespace this mapper does not know", m->ino, name), XATTR_ABORT;
  size_t name_len = strlen(name);
  if (name_len > M2_MAX_NAME) return refuse(m, "inode %u: xattr name of %zu bytes", m->ino, name_len), XATTR_ABORT;
  if (!bulk_grow((void **)&l->refs, &l->cap, l->n + 1, sizeof *l->refs)) return fail(m, "out of memory"), XATTR_ABORT;
  struct xattr_ref *r = &l->refs[l->n++];
  *r = (struct xattr_ref){name, value, len, NULL};
  if (kind == 2) {
    r->converted = acl_to_xattr((const uint8_t *)value, len, &r->len);
    if (r->converted == NULL) return refuse(m, "inode %u: %s is not an ext4 ACL this mapper reads", m->ino, name), XATTR_ABORT;
    r->value = r->converted;
  }
  if (r->len > M2_MAX_XATTR_VALUE) return refuse(m, "inode %u: xattr %s of %zu bytes", m->ino, name, r->len), XATTR_ABORT;
  l->listed += name_len + 1;
  note_name(m, name, name_len);
  return 0;
}

static bool has_xattrs(struct mapper *m, const struct ext2_inode_large *i) {
  if (ext2fs_file_acl_block(m->fs, (struct ext2_inode *)i)) return true;
  if (EXT2_INODE_SIZE(m->fs->super) <= EXT2_GOOD_OLD_INODE_SIZE + i->i_extra_isize + sizeof(uint32_t)) return false;
  uint32_t magic;
  memcpy(&magic, (const char *)i + EXT2_GOOD_OLD_INODE_SIZE + i->i_extra_isize, sizeof magic);
  return magic == EXT2_EXT_ATTR_MAGIC;
}

// Reads the inode's xattrs (in the inode, in its block, in ea_inode value inodes) into l, from the
// inode the scan read. The handle owns the names and values until xattrs_done.
static bool read_xattrs(struct mapper *m, struct ext2_inode_large *i, struct ext2_xattr_handle **h, struct xattr_list *l) {
  *l = (struct xattr_list){.m = m};
  *h = NULL;
  if (!has_xattrs(m, i)) return true;
  errcode_t err = ext2fs_xattrs_open(m->fs, m->ino, h);
  if (!err) err = ext2fs_xattrs_read_inode(*h, i);
  if (err) return lib_error(m, "cannot read its xattrs", m->ino, err);
  err = ext2fs_xattrs_iterate(*h, on_xattr, l);
  if (m->failed) return false;
  if (err) return lib_error(m, "cannot list its xattrs", m->ino, err);
  if (l->listed > M2_MAX_XATTR_LIST) return refuse(m, "inode %u: xattr names over %u bytes", m->ino, M2_MAX_XATTR_LIST);
  return true;
}

static void xattrs_done(struct ext2_xattr_handle **h, struct xattr_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->refs[i].converted);
  free(l->refs);
  l->refs = NULL;
  if (*h) ext2fs_xattrs_close(h);
}

static void write_xattrs(struct mapper *m, const struct xattr_list *l) {
  m2w_xattrs_begin(m->w, l->n);
  for (size_t i = 0; i < l->n; i++) m2w_xattr(m->w, l->refs[i].name, strlen(l->refs[i].name), l->refs[i].value, l->refs[i].len);
}

// ------------------------------------------------------------------------------ extents

// Written blocks [lblk, lblk + len) at pblk: through the linear map onto the raw disks. Blocks at or
// past EOF are left out as the walker leaves FIEMAP's extents that start there.
static bool add_blocks(struct mapper *m, uint64_t lblk, uint64_t pblk, uint64_t len) {
  uint64_t bs = m->fs->blocksize;
  uint64_t file_offset = lblk * bs, at = pblk * bs;
  if (file_offset >= m->size) return true;
  if (pblk + len > ext2fs_blocks_count(m->fs->super) || pblk < m->fs->super->s_first_data_block)
    return refuse(m, "inode %u: blocks %llu+%llu outside the filesystem", m->ino, (unsigned long long)pblk, (unsigned long long)len);
  switch (bulk_place(&m->runs, m->job->segments, m->job->nsegments, file_offset, at, len * bs)) {
  case BULK_PLACED: break;
  case BULK_OUTSIDE_MAP: return refuse(m, "inode %u: filesystem bytes at %llu are outside the device map", m->ino, (unsigned long long)at);
  case BULK_NO_MEMORY: return fail(m, "out of memory");
  }
  if (m->runs.n > EXTENTS_MAX) return refuse(m, "inode %u: over %u extents", m->ino, EXTENTS_MAX);
  return true;
}

static bool map_extent_tree(struct mapper *m, struct ext2_inode_large *i) {
  ext2_extent_handle_t h;
  struct ext2fs_extent e;
  errcode_t err = ext2fs_extent_open2(m->fs, m->ino, (struct ext2_inode *)i, &h);
  if (err) return lib_error(m, "cannot open its extent tree", m->ino, err);
  bool ok = true;
  for (err = ext2fs_extent_get(h, EXT2_EXTENT_ROOT, &e); !err && ok; err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT, &e)) {
    if (!(e.e_flags & EXT2_EXTENT_FLAGS_LEAF) || (e.e_flags & EXT2_EXTENT_FLAGS_SECOND_VISIT)) continue;
    // Unwritten extents read as zeros: absent, like holes (and their stale blocks never served).
    if (e.e_flags & EXT2_EXTENT_FLAGS_UNINIT) continue;
    ok = add_blocks(m, e.e_lblk, e.e_pblk, e.e_len);
  }
  ext2fs_extent_free(h);
  if (!ok) return false;
  if (err != EXT2_ET_EXTENT_NO_NEXT && err != EXT2_ET_NO_CURRENT_NODE) return lib_error(m, "cannot read its extent tree", m->ino, err);
  return true;
}

struct block_run {
  struct mapper *m;
  uint64_t lblk, pblk, len;
};

static int on_block(ext2_filsys fs, blk64_t *blocknr, e2_blkcnt_t blockcnt, blk64_t ref, int ref_offset, void *priv) {
  (void)fs, (void)ref, (void)ref_offset;
  struct block_run *r = priv;
  if (blockcnt < 0) return 0;
  if (r->len && r->lblk + r->len == (uint64_t)blockcnt && r->pblk + r->len == *blocknr) {
    r->len++;
    return 0;
  }
  if (r->len && !add_blocks(r->m, r->lblk, r->pblk, r->len)) return BLOCK_ABORT;
  *r = (struct block_run){r->m, (uint64_t)blockcnt, *blocknr, 1};
  return 0;
}

// Files of a filesystem made without extents (indirect blocks): libext2fs walks the block map.
static bool map_block_map(struct mapper *m) {
  struct block_run r = {m, 0, 0, 0};
  errcode_t err = ext2fs_block_iterate3(m->fs, m->ino, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY, NULL, on_block, &r);
  if (m->failed) return false;
  if (err) return lib_error(m, "cannot read its block map", m->ino, err);
  return r.len == 0 || add_blocks(m, r.lblk, r.pblk, r.len);
}

static void write_extents(struct mapper *m) {
  m2w_extents_begin(m->w, m->runs.n);
  uint64_t end = 0;
  for (size_t k = 0; k < m->runs.n; k++) {
    struct bulk_run *r = &m->runs.run[k];
    m2w_extent(m->w, r->file_offset - end, r->length, r->disk, r->disk_offset);
    end = r->file_offset + r->length;
    bulk_sample(&m->out->samplers[r->disk], r->disk, r->disk_offset, r->length, NULL, 0);
  }
}

// ---------------------------------------------------------------- inline data, symlinks

// The bytes kept in the inode (i_block and the system.data xattr), malloc'd.
static bool inline_bytes(struct mapper *m, struct ext2_inode_large *i, char **data, size_t *len) {
  size_t size = 0;
  errcode_t err = ext2fs_inline_data_size(m->fs, m->ino, &size);
  if (err) return lib_error(m, "cannot size its inline data", m->ino, err);
  *data = malloc(size ? size : 1);
  if (*data == NULL) return fail(m, "out of memory");
  err = ext2fs_inline_data_get(m->fs, m->ino, (struct ext2_inode *)i, *data, len);
  if (err) {
    free(*data);
    return lib_error(m, "cannot read its inline data", m->ino, err);
  }
  return true;
}

// ext4_inode_is_fast_symlink(): no blocks but an xattr block's (the target is in i_block).
static bool fast_symlink(struct mapper *m, struct ext2_inode_large *i) {
  blk64_t ea = ext2fs_file_acl_block(m->fs, (struct ext2_inode *)i) ? EXT2FS_CLUSTER_RATIO(m->fs) * (m->fs->blocksize >> 9) : 0;
  return ext2fs_get_stat_i_blocks(m->fs, (struct ext2_inode *)i) - ea == 0;
}

// The target as readlink returns it: from i_block (fast), the inline data, or the first block.
// Written by hand: libext2fs has no readlink (ext2fs_follow_link resolves rather than reads).
static bool symlink_target(struct mapper *m, struct ext2_inode_large *i, char **target, size_t *len) {
  uint64_t size = EXT2_I_SIZE(i);
  if (size == 0 || size > M2_MAX_SYMLINK) return refuse(m, "inode %u: symlink of %llu bytes", m->ino, (unsigned long long)size);
  *len = size;
  if (i->i_flags & EXT4_INLINE_DATA_FL) {
    size_t have;
    if (!inline_bytes(m, i, target, &have)) return false;
    if (have < size) return free(*target), refuse(m, "inode %u: inline symlink shorter than its size", m->ino);
  } else if (fast_symlink(m, i)) {
    if (size >= sizeof i->i_block) return refuse(m, "inode %u: fast symlink of %llu bytes", m->ino, (unsigned long long)size);
    if ((*target = malloc(size)) == NULL) return fail(m, "out of memory");
    memcpy(*target, i->i_block, size);
  } else {
    blk64_t pblk = 0;
    if (size > m->fs->blocksize) return refuse(m, "inode %u: symlink longer than a block", m->ino);
    errcode_t err = ext2fs_bmap2(m->fs, m->ino, (struct ext2_inode *)i, NULL, 0, 0, NULL, &pblk);
    if (!err && pblk == 0) return refuse(m, "inode %u: symlink without its block", m->ino);
    if (!err) err = io_channel_read_blk64(m->fs->io, pblk, 1, m->block);
    if (err) return lib_error(m, "cannot read its symlink block", m->ino, err);
    if ((*target = malloc(size)) == NULL) return fail(m, "out of memory");
    memcpy(*target, m->block, size);
  }
  if (memchr(*target, 0, size)) return free(*target), refuse(m, "inode %u: symlink target holds NUL", m->ino);
  note_name(m, *target, size);
  return true;
}

// ------------------------------------------------------------------------------ inodes

// An inode the tree names, as ext4_iget() would accept it and as this mapper reproduces it.
static bool check_inode(struct mapper *m, uint32_t ino, const struct ext2_inode_large *i) {
  uint32_t type = i->i_mode & LINUX_S_IFMT;
  if (i->i_links_count == 0) return refuse(m, "an entry names inode %u, which is not in use", ino);
  // ext4_iget() refuses an inode whose extra part is odd or overruns it; only valid ones are read here.
  if (EXT2_INODE_SIZE(m->fs->super) > EXT2_GOOD_OLD_INODE_SIZE &&
      ((i->i_extra_isize & 3) || EXT2_GOOD_OLD_INODE_SIZE + i->i_extra_isize > EXT2_INODE_SIZE(m->fs->super)))
    return refuse(m, "inode %u: i_extra_isize %u", ino, i->i_extra_isize);
  if ((type == LINUX_S_IFDIR) != is_dir_entered(m, ino)) return refuse(m, "inode %u: its entry's file type disagrees with its mode", ino);
  if (i->i_flags & REFUSED_INODE_FLAGS) return refuse(m, "inode %u: encrypted, verity, casefolded or an xattr inode (flags 0x%x)", ino, i->i_flags);
  if (type != LINUX_S_IFREG && type != LINUX_S_IFDIR && type != LINUX_S_IFLNK && type != LINUX_S_IFIFO && type != LINUX_S_IFCHR &&
      type != LINUX_S_IFBLK && type != LINUX_S_IFSOCK)
    return refuse(m, "inode %u: mode 0%o", ino, i->i_mode);
  return EXT2_I_SIZE(i) <= M2_VALUE_MAX || refuse(m, "inode %u: size over 2^53", ino);
}

// The INODE record's fixed fields: what stat and FS_IOC_GETFLAGS report for it.
static bool fields_of(struct mapper *m, uint32_t ino, const struct ext2_inode_large *i, struct m2_inode *r) {
  uint32_t type = i->i_mode & LINUX_S_IFMT;
  *r = (struct m2_inode){
    .ino = ino, .mode = i->i_mode, .uid = inode_uid(*i), .gid = inode_gid(*i),
    // A directory's nlink is the filesystem's; a file's counts the names found in the tree.
    .nlink = type == LINUX_S_IFDIR ? i->i_links_count : names_of(m, ino),
    .size = EXT2_I_SIZE(i), .blocks = ext2fs_get_stat_i_blocks(m->fs, (struct ext2_inode *)i),
  };
  // ext4_file_getattr(): a regular file with inline data reports one more 512-byte unit per 512
  // bytes of size than it allocates ("so tar and rsync do not think it sparse").
  if (type == LINUX_S_IFREG && (i->i_flags & EXT4_INLINE_DATA_FL)) r->blocks += (r->size + 511) >> 9;
  if (type == LINUX_S_IFCHR || type == LINUX_S_IFBLK) {
    r->has |= M2_HAS_RDEV;
    r->rdev = rdev_of(i);
  }
  if (type == LINUX_S_IFREG || type == LINUX_S_IFDIR) {
    r->attrs = i->i_flags & KERNEL_EXT4_FL_USER_VISIBLE;
    if (type == LINUX_S_IFREG) r->attrs &= ~KERNEL_FS_PROJINHERIT_FL;
    if (r->attrs) r->has |= M2_HAS_ATTRS;
  }
  return times_of(m, i, r);
}

// One INODE record: the fixed fields, then xattrs, then the content its type has.
static bool describe(struct mapper *m, uint32_t ino, struct ext2_inode_large *i) {
  m->ino = ino;
  uint32_t type = i->i_mode & LINUX_S_IFMT;
  struct m2_inode r;
  if (!check_inode(m, ino, i) || !fields_of(m, ino, i, &r)) return false;
  m->size = r.size;
  struct ext2_xattr_handle *h;
  struct xattr_list xl;
  char *bytes = NULL; // inline content or symlink target
  size_t nbytes = 0;
  bool ok = read_xattrs(m, i, &h, &xl);
  if (ok && xl.n) r.has |= M2_HAS_XATTRS;
  m->runs.n = 0;
  if (ok && type == LINUX_S_IFREG && (i->i_flags & EXT4_INLINE_DATA_FL)) {
    // FIEMAP reports inline data only inside the size: an empty inline file is one without extents.
    if (r.size > 0) {
      if (r.size > m->job->carry_max) {
        ok = fail(m, "inode %u: inline data of %llu bytes is over the %llu-byte limit for carrying it in the manifest (--carry-max)", ino,
                  (unsigned long long)r.size, (unsigned long long)m->job->carry_max);
      } else if ((ok = inline_bytes(m, i, &bytes, &nbytes)) && nbytes < r.size) {
        ok = refuse(m, "inode %u: inline data of %zu bytes for a size of %llu", ino, nbytes, (unsigned long long)r.size);
      }
      nbytes = r.size;
      r.has |= M2_HAS_INLINE;
      m->out->inline_data = true;
    }
  } else if (ok && type == LINUX_S_IFREG) {
    ok = (i->i_flags & EXT4_EXTENTS_FL) ? map_extent_tree(m, i) : map_block_map(m);
  } else if (ok && type == LINUX_S_IFLNK) {
    ok = symlink_target(m, i, &bytes, &nbytes);
  }
  if (ok) {
    m2w_inode_begin(m->w, &r);
    if (xl.n) write_xattrs(m, &xl);
    if (type == LINUX_S_IFREG && (r.has & M2_HAS_INLINE)) m2w_bytes(m->w, bytes, nbytes);
    else if (type == LINUX_S_IFREG) write_extents(m);
    else if (type == LINUX_S_IFLNK) m2w_bytes(m->w, bytes, nbytes);
    m->out->inodes++;
    bulk_progress_described(m->job->progress, m->out->inodes, r.blocks, m->reached);
  }
  free(bytes);
  xattrs_done(&h, &xl);
  return ok;
}

// Some inode of block group `g` is in the tree. A tree that is a small part of a large filesystem
// then reads only its own groups' inode tables.
static bool group_reached(const struct mapper *m, uint32_t g) {
  uint64_t ipg = m->fs->super->s_inodes_per_group;
  uint64_t first = (uint64_t)g * ipg + 1, last = first + ipg - 1;
  if (last > m->inodes_count) last = m->inodes_count;
  for (uint64_t ino = first; ino <= last; ino++)
    if (m->names[ino]) return true;
  return false;
}

static bool scan_inodes(struct mapper *m) {
  ext2_inode_scan scan;
  size_t isize = EXT2_INODE_SIZE(m->fs->super);
  if (isize < sizeof(struct ext2_inode_large)) isize = sizeof(struct ext2_inode_large);
  struct ext2_inode_large *inode = calloc(1, isize);
  if (inode == NULL) return fail(m, "out of memory");
  errcode_t err = ext2fs_open_inode_scan(m->fs, 0, &scan);
  if (err) {
    free(inode);
    return fail(m, "cannot scan the inode tables: %s", error_message(err));
  }
  uint64_t done = 0;
  bool ok = true;
  bulk_progress_phase(m->job->progress, BULK_PHASE_INODES, 0, m->reached);
  while (ok && done < m->reached) {
    ext2_ino_t ino = 0;
    err = ext2fs_get_next_inode_full(scan, &ino, (struct ext2_inode *)inode, (int)EXT2_INODE_SIZE(m->fs->super));
    if (err == 0 && ino == 0) break;
    if (ino == 0 || ino > m->inodes_count) {
      ok = fail(m, "cannot scan the inode tables: %s", error_message(err));
      break;
    }
    uint32_t ipg = m->fs->super->s_inodes_per_group;
    if ((ino - 1) % ipg == 0 && !group_reached(m, (ino - 1) / ipg)) {
      uint32_t next = (ino - 1) / ipg + 1;
      if (next >= m->fs->group_desc_count) break;
      err = ext2fs_inode_scan_goto_blockgroup(scan, (int)next);
      if (err) ok = fail(m, "cannot scan the inode tables: %s", error_message(err));
      continue;
    }
    if (m->names[ino] == 0) continue; // not in the tree: a checksum error there is none of ours
    if (err) ok = lib_error(m, "cannot read the inode", ino, err);
    else ok = describe(m, ino, inode);
    done++;
  }
  ext2fs_close_inode_scan(scan);
  free(inode);
  if (ok && done < m->reached) return refuse(m, "%llu inodes named in the tree are not in the inode tables", (unsigned long long)(m->reached - done));
  return ok;
}

// ------------------------------------------------------------------------------ opening

static bool open_fs(struct mapper *m) {
  // O_DIRECT: the metadata is read once, so the page cache would only hold it for nobody; and it
  // cannot evict the owner's cached pages. libext2fs aligns its buffers for it. Buffered as fallback
  // (a device that refuses O_DIRECT).
  int flags = EXT2_FLAG_64BITS | EXT2_FLAG_DIRECT_IO;
  errcode_t err = ext2fs_open(m->job->device, flags, 0, 0, unix_io_manager, &m->fs);
  if (err == EINVAL) err = ext2fs_open(m->job->device, flags &= ~EXT2_FLAG_DIRECT_IO, 0, 0, unix_io_manager, &m->fs);
  if (err == EXT2_ET_UNSUPP_FEATURE || err == EXT2_ET_RO_UNSUPP_FEATURE)
    return refuse(m, "%s: %s", m->job->device, error_message(err));
  if (err) return fail(m, "%s: cannot open as ext4: %s", m->job->device, error_message(err));
  m->out->direct_io = (flags & EXT2_FLAG_DIRECT_IO) != 0;
  struct ext2_super_block *sb = m->fs->super;
  if (sb->s_feature_incompat & EXT3_FEATURE_INCOMPAT_RECOVER)
    return refuse(m, "%s: the journal needs recovery (is the filesystem frozen?)", m->job->device);
  if (sb->s_feature_incompat & ~HANDLED_INCOMPAT)
    return refuse(m, "%s: incompat features 0x%x are not read by this mapper", m->job->device, sb->s_feature_incompat & ~HANDLED_INCOMPAT);
  if (!(sb->s_feature_incompat & EXT2_FEATURE_INCOMPAT_FILETYPE))
    return refuse(m, "%s: directory entries without file types", m->job->device);
  m->inodes_count = sb->s_inodes_count;
  if (m->job->root == 0 || m->job->root > m->inodes_count) return refuse(m, "root inode %u out of range", m->job->root);
  // Untouched pages of these cost nothing: RSS grows with the inode numbers the tree uses.
  m->names = calloc((size_t)m->inodes_count + 1, 1);
  m->dir_bits = calloc((size_t)m->inodes_count / 8 + 1, 1);
  m->block = malloc(m->fs->blocksize);
  m->w = malloc(sizeof *m->w);
  if (!m->names || !m->dir_bits || !m->block || !m->w) return fail(m, "out of memory");
  m->out->table_bytes = (uint64_t)m->inodes_count + 1 + m->inodes_count / 8 + 1;
  m2w_init(m->w, m->job->fd);
  return true;
}

static bool check_job(struct mapper *m) {
  bool refused;
  const char *why = bulk_check_segments(m->job->segments, m->job->nsegments, &m->out->ndisks, &refused);
  if (why) return refused ? refuse(m, "%s", why) : fail(m, "%s", why);
  m->out->samplers = calloc(E4_MAX_DISKS, sizeof *m->out->samplers);
  return m->out->samplers != NULL || fail(m, "out of memory");
}

void e4_map(const struct e4_job *job, struct e4_result *out) {
  static bool messages;
  if (!messages) { // libext2fs's error codes have messages once their table is added (com_err)
    initialize_ext2_error_table();
    messages = true;
  }
  memset(out, 0, sizeof *out);
  struct mapper m = {.job = job, .out = out};
  if (check_job(&m) && open_fs(&m) && walk_dirs(&m) && scan_inodes(&m)) {
    int err = m2w_flush(m.w);
    if (err) fail(&m, "cannot write the manifest body: %s", strerror(err));
    out->body_bytes = m.w->written;
  } else if (m.w && m.w->error) {
    fail(&m, "cannot write the manifest body: %s", strerror(m.w->error));
  }
  if (m.fs) ext2fs_close_free(&m.fs);
  free(m.names), free(m.dir_bits), free(m.spill), free(m.stack), free(m.ebuf), free(m.runs.run), free(m.block), free(m.w);
}

void e4_result_free(struct e4_result *r) {
  free(r->samplers);
  r->samplers = NULL;
}
