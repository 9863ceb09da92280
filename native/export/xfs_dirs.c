// Pass 1 of the XFS bulk mapper: the directories of the tree, from the exported directory down. Each
// is opened by handle (its generation from a one-inode bulkstat) and read with getdents64: the
// kernel decodes XFS's shortform, block, leaf and node directories alike, and looks up no child.
// Every entry's inode gets a name counted in the table; its DIR record goes straight to the body.
#include "xfs_map.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIR_BUFFER_MAX (1u << 20) // a directory's encoded entries kept to count them; past it, read twice
#define DENTS_BUFFER (64u * 1024u)

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

struct dir_walk {
  uint64_t *stack; // directories still to read
  size_t depth, cap;
  // The directory being read: its entries, and their encoding while it fits.
  uint64_t n, prev_child, rewritten;
  bool overflowed;
  uint8_t *ebuf;
  size_t elen, ecap;
  char dents[DENTS_BUFFER];
};

static bool skipped(const struct xfs_mapper *m, uint64_t ino) {
  for (size_t k = 0; k < m->job->nskip; k++)
    if (m->job->skip[k] == ino) return true;
  return false;
}

static bool count_name(struct xfs_mapper *m, uint64_t ino, bool dir) {
  if (ino == 0 || ino >= m->table_len) return xm_fail(m, "a directory entry names inode %llu, outside the filesystem's inode numbers", (unsigned long long)ino);
  uint8_t *n = &m->names[ino];
  if (dir && *n) return xm_fail(m, "directory inode %llu has two names in the tree", (unsigned long long)ino);
  if (*n == XM_NAMES_MAX) return xm_refuse(m, "inode %llu has over %u names in the tree", (unsigned long long)ino, XM_NAMES_MAX);
  if ((*n)++ == 0) m->reached++;
  return true;
}

// One getdents64 batch's entries: `on` for each but "." and "..", with what the mapper needs of it.
typedef bool on_entry(struct xfs_mapper *m, struct dir_walk *d, const char *name, size_t len, uint64_t ino, unsigned char type);

static bool read_entries(struct xfs_mapper *m, struct dir_walk *d, int fd, uint64_t dir, on_entry *on) {
  for (;;) {
    long n = getdents64(fd, d->dents, sizeof d->dents);
    if (n < 0) return xm_fail(m, "directory inode %llu: getdents64: %s", (unsigned long long)dir, strerror(errno));
    if (n == 0) return true;
    for (long at = 0; at < n;) {
      const struct linux_dirent64 *e = (const void *)(d->dents + at);
      at += e->d_reclen;
      size_t len = strlen(e->d_name);
      if ((len == 1 && e->d_name[0] == '.') || (len == 2 && e->d_name[0] == '.' && e->d_name[1] == '.')) continue;
      if (skipped(m, e->d_ino)) continue;
      if (!on(m, d, e->d_name, len, e->d_ino, e->d_type)) return false;
    }
  }
}

// First reading: count names, queue subdirectories, keep the encoded entries while they fit.
static bool take_entry(struct xfs_mapper *m, struct dir_walk *d, const char *name, size_t len, uint64_t ino, unsigned char type) {
  // Without ftype (mkfs.xfs -n ftype=0) getdents64 gives DT_UNKNOWN: which entries are
  // directories would take a stat of each.
  if (type == DT_UNKNOWN) return xm_refuse(m, "directory entries without a file type (mkfs.xfs -n ftype=0)");
  if (!count_name(m, ino, type == DT_DIR)) return false;
  xm_note_name(m, name, len);
  if (type == DT_DIR) {
    if (!bulk_grow((void **)&d->stack, &d->cap, d->depth + 1, sizeof *d->stack)) return xm_fail(m, "out of memory");
    d->stack[d->depth++] = ino;
  }
  m->out->entries++;
  return true;
}

static bool keep_entry(struct xfs_mapper *m, struct dir_walk *d, const char *name, size_t len, uint64_t ino, unsigned char type) {
  if (!take_entry(m, d, name, len, ino, type)) return false;
  d->n++;
  if (d->overflowed) return true;
  if (d->elen + M2_MAX_NAME + 2 * M2_VARINT_MAX_BYTES > DIR_BUFFER_MAX) {
    d->overflowed = true;
    return true;
  }
  if (!bulk_grow((void **)&d->ebuf, &d->ecap, d->elen + M2_MAX_NAME + 2 * M2_VARINT_MAX_BYTES, 1)) return xm_fail(m, "out of memory");
  d->elen += m2_dir_entry_encode(d->ebuf + d->elen, name, len, ino, &d->prev_child);
  return true;
}

// Second reading of a large directory: the entries straight to the body.
static bool write_entry(struct xfs_mapper *m, struct dir_walk *d, const char *name, size_t len, uint64_t ino, unsigned char type) {
  (void)type;
  m2w_dir_entry(m->w, name, len, ino);
  d->rewritten++;
  return true;
}

static bool read_dir(struct xfs_mapper *m, struct dir_walk *d, uint64_t dir) {
  struct xfs_bulkstat bs;
  if (!xm_stat_one(m, dir, &bs)) return false;
  if (!S_ISDIR(bs.bs_mode)) return xm_fail(m, "inode %llu is named as a directory but is not one", (unsigned long long)dir);
  // O_NOATIME: reading a directory must not write its metadata (a frozen filesystem skips it anyway).
  int fd = xm_open(m, dir, bs.bs_gen, O_RDONLY | O_DIRECTORY | O_NOATIME);
  if (fd < 0) return false;
  d->n = d->prev_child = d->rewritten = d->elen = 0;
  d->overflowed = false;
  bool ok = read_entries(m, d, fd, dir, keep_entry);
  if (ok && d->n > M2_MAX_ENTRIES_PER_DIR) ok = xm_refuse(m, "directory inode %llu has %llu entries", (unsigned long long)dir, (unsigned long long)d->n);
  if (ok) {
    m2w_dir_begin(m->w, dir, d->n);
    if (!d->overflowed) {
      m2w_raw(m->w, d->ebuf, d->elen);
    } else if (lseek(fd, 0, SEEK_SET) != 0) {
      ok = xm_fail(m, "directory inode %llu: rewind: %s", (unsigned long long)dir, strerror(errno));
    } else {
      ok = read_entries(m, d, fd, dir, write_entry);
      if (ok && d->rewritten != d->n) ok = xm_fail(m, "directory inode %llu changed while read (%llu entries, then %llu)", (unsigned long long)dir,
                                                   (unsigned long long)d->n, (unsigned long long)d->rewritten);
    }
    m->out->dirs++;
  }
  if (close(fd) != 0 && ok) ok = xm_fail(m, "directory inode %llu: close: %s", (unsigned long long)dir, strerror(errno));
  return ok;
}

bool xm_walk_dirs(struct xfs_mapper *m) {
  struct dir_walk *d = calloc(1, sizeof *d);
  if (d == NULL) return xm_fail(m, "out of memory");
  bool ok = count_name(m, m->job->root, true);
  if (ok && bulk_grow((void **)&d->stack, &d->cap, 1, sizeof *d->stack)) d->stack[d->depth++] = m->job->root;
  else ok = ok && xm_fail(m, "out of memory");
  while (ok && d->depth > 0) ok = read_dir(m, d, d->stack[--d->depth]);
  free(d->stack), free(d->ebuf), free(d);
  return ok;
}
