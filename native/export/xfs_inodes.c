// Pass 2 of the XFS bulk mapper: the INODE records of the tree's inodes in one window of inode
// numbers, in ascending order, from XFS_IOC_BULKSTAT (v5: ns times, mode, owner, nlink, size, blocks,
// xflags, generation) and the window's extents (xfs_fsmap.c). Symlinks and inodes with an attribute
// fork are opened by handle (O_PATH) for their target and xattrs, read as the walker reads them.
#include "xfs_map.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BULKSTAT_BATCH 1024u

// FS_IOC_GETFLAGS on XFS: xfs_fileattr_get() fills the flags from xfs_ip2xflags() through
// fileattr_fill_xflags() (fs/file_attr.c), which maps exactly these; bulkstat's bs_xflags is the
// same xfs_ip2xflags().
static uint32_t getflags_of(uint64_t xflags) {
  static const struct { uint64_t xflag; uint32_t flag; } map[] = {
    {FS_XFLAG_IMMUTABLE, FS_IMMUTABLE_FL}, {FS_XFLAG_APPEND, FS_APPEND_FL}, {FS_XFLAG_SYNC, FS_SYNC_FL},
    {FS_XFLAG_NOATIME, FS_NOATIME_FL},     {FS_XFLAG_NODUMP, FS_NODUMP_FL}, {FS_XFLAG_DAX, FS_DAX_FL},
    {FS_XFLAG_PROJINHERIT, FS_PROJINHERIT_FL},
  };
  uint32_t flags = 0;
  for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
    if (xflags & map[k].xflag) flags |= map[k].flag;
  return flags;
}

static bool fields_of(struct xfs_mapper *m, const struct xfs_bulkstat *bs, struct m2_inode *r) {
  uint32_t type = bs->bs_mode & S_IFMT;
  if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK && type != S_IFIFO && type != S_IFCHR && type != S_IFBLK && type != S_IFSOCK)
    return xm_fail(m, "inode %llu: mode 0%o", (unsigned long long)bs->bs_ino, bs->bs_mode);
  // A realtime file's data is on the realtime device (check_geometry refuses one; a flag without it is damage).
  if (bs->bs_xflags & FS_XFLAG_REALTIME) return xm_refuse(m, "inode %llu is a realtime file", (unsigned long long)bs->bs_ino);
  memset(r, 0, sizeof *r);
  r->ino = bs->bs_ino;
  r->mode = bs->bs_mode;
  r->uid = bs->bs_uid, r->gid = bs->bs_gid;
  // A file's nlink is its names in the tree (as the walker counts them), a directory's the kernel's.
  r->nlink = type == S_IFDIR ? bs->bs_nlink : m->names[bs->bs_ino];
  // XFS files reach 8 EiB; format 2 (as format 1) carries sizes up to 2^53 - 1 (ext4.c, btrfs_bulk.c too).
  if (bs->bs_size > M2_VALUE_MAX) return xm_refuse(m, "inode %llu: size over 2^53", (unsigned long long)bs->bs_ino);
  r->size = bs->bs_size;
  // xfs_vn_getattr: st_blocks = XFS_FSB_TO_BB(i_nblocks + i_delayed_blks); bs_blocks is that sum in filesystem blocks.
  r->blocks = bs->bs_blocks * (m->block_size / 512);
  r->atime = (struct m2_time){bs->bs_atime, bs->bs_atime_nsec};
  r->mtime = (struct m2_time){bs->bs_mtime, bs->bs_mtime_nsec};
  r->ctime = (struct m2_time){bs->bs_ctime, bs->bs_ctime_nsec};
  if (type == S_IFCHR || type == S_IFBLK) {
    // bulkstat gives sysv_encode_dev(i_rdev): major << 18 | minor; stat's st_rdev is glibc's dev_t.
    r->has |= M2_HAS_RDEV;
    r->rdev = makedev(bs->bs_rdev >> 18, bs->bs_rdev & 0x3ffffu);
  }
  // The walker reads chattr's flags of regular files and directories only.
  uint32_t attrs = type == S_IFREG || type == S_IFDIR ? getflags_of(bs->bs_xflags) : 0;
  if (attrs) r->has |= M2_HAS_ATTRS, r->attrs = attrs;
  return true;
}

// The xattrs of the inode behind the O_PATH `fd`, as listxattr(2) and getxattr(2) give them (the walker's
// calls: POSIX ACLs come out in the kernel's xattr form, converted from XFS's by the kernel itself).
// Through /proc/self/fd: an O_PATH descriptor takes no f*xattr calls, and the magic link is not
// resolved again (a symlink's own xattrs, not its target's).
struct xattr_buffers {
  char list[M2_MAX_XATTR_LIST];
  ssize_t len; // of list
  char value[M2_MAX_XATTR_VALUE];
};

// Lists the names into b: whether there are any (false also after a failure: see m->out).
static bool list_xattrs(struct xfs_mapper *m, uint64_t ino, int fd, struct xattr_buffers *b) {
  char at[32];
  snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
  b->len = listxattr(at, b->list, sizeof b->list);
  if (b->len < 0 && errno == ENOTSUP) b->len = 0; // as the walker: no xattrs where none are supported
  // XFS keeps more names than one listxattr can list (E2BIG past 64 KiB): no tool can copy them all.
  // Refused, so that auto's walker fails the export naming the file, not an inode number.
  if (b->len < 0 && (errno == E2BIG || errno == ERANGE)) return xm_refuse(m, "inode %llu: more xattr names than listxattr can list", (unsigned long long)ino);
  if (b->len < 0) return xm_fail(m, "inode %llu: listxattr: %s", (unsigned long long)ino, strerror(errno));
  return b->len > 0;
}

static bool write_xattrs(struct xfs_mapper *m, uint64_t ino, int fd, struct xattr_buffers *b) {
  char at[32];
  snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
  uint64_t n = 0;
  for (ssize_t k = 0; k < b->len; k += (ssize_t)strlen(b->list + k) + 1) n++;
  m2w_xattrs_begin(m->w, n);
  for (ssize_t k = 0; k < b->len; k += (ssize_t)strlen(b->list + k) + 1) {
    const char *name = b->list + k;
    ssize_t v = getxattr(at, name, b->value, sizeof b->value);
    if (v < 0) return xm_fail(m, "inode %llu: getxattr %s: %s", (unsigned long long)ino, name, strerror(errno));
    xm_note_name(m, name, strlen(name));
    m2w_xattr(m->w, name, strlen(name), b->value, (size_t)v);
  }
  return true;
}

static bool symlink_target(struct xfs_mapper *m, uint64_t ino, int fd) {
  char target[M2_MAX_SYMLINK + 1];
  ssize_t n = readlinkat(fd, "", target, sizeof target);
  if (n < 0) return xm_fail(m, "inode %llu: readlink: %s", (unsigned long long)ino, strerror(errno));
  if (n == 0 || n > (ssize_t)M2_MAX_SYMLINK) return xm_fail(m, "inode %llu: a symlink target of %zd bytes", (unsigned long long)ino, n);
  xm_note_name(m, target, (size_t)n);
  m2w_bytes(m->w, target, (size_t)n);
  return true;
}

static bool write_runs(struct xfs_mapper *m, const struct xfs_bulkstat *bs);

// The window's extents of `ino` (consumed whatever its type), placed on raw disks and written; without
// the reverse map, the file's own FIEMAP.
static bool write_extents(struct xfs_mapper *m, const struct xfs_bulkstat *bs, bool regular) {
  if (!m->rmap) {
    m->runs.n = 0;
    return !regular || (xm_fiemap_file(m, bs) && write_runs(m, bs));
  }
  while (m->next < m->nextents && m->extents[m->next].ino < bs->bs_ino) m->next++;
  m->runs.n = 0;
  // The walker keeps a FIEMAP extent that starts before EOF whole, and drops one starting at or past
  // it; where FIEMAP cuts extents the reverse map does not say, so written blocks past the last block
  // of the file (speculative preallocation kept) are refused rather than cut one way or the other.
  uint64_t last_block_end = (bs->bs_size + m->block_size - 1) / m->block_size * m->block_size;
  for (; m->next < m->nextents && m->extents[m->next].ino == bs->bs_ino; m->next++) {
    const struct xm_extent *e = &m->extents[m->next];
    if (!regular) continue;
    if (e->offset + e->length > last_block_end)
      return xm_refuse(m, "inode %llu: written blocks past its end of file (at %llu)", (unsigned long long)bs->bs_ino, (unsigned long long)e->offset);
    switch (bulk_place(&m->runs, m->job->segments, m->job->nsegments, e->offset, e->physical, e->length)) {
    case BULK_PLACED: break;
    case BULK_OUTSIDE_MAP: return xm_refuse(m, "inode %llu: filesystem bytes at %llu are outside the device map", (unsigned long long)bs->bs_ino, (unsigned long long)e->physical);
    case BULK_NO_MEMORY: return xm_fail(m, "out of memory");
    }
  }
  return !regular || write_runs(m, bs);
}

static bool write_runs(struct xfs_mapper *m, const struct xfs_bulkstat *bs) {
  m2w_extents_begin(m->w, m->runs.n);
  uint64_t end = 0;
  for (size_t k = 0; k < m->runs.n; k++) {
    const struct bulk_run *r = &m->runs.run[k];
    if (r->file_offset < end) return xm_fail(m, "inode %llu: extents overlap at %llu", (unsigned long long)bs->bs_ino, (unsigned long long)r->file_offset);
    m2w_extent(m->w, r->file_offset - end, r->length, r->disk, r->disk_offset);
    end = r->file_offset + r->length;
    bulk_sample(&m->out->samplers[r->disk], r->disk, r->disk_offset, r->length, NULL, 0);
  }
  return true;
}

static bool describe(struct xfs_mapper *m, const struct xfs_bulkstat *bs, struct xattr_buffers *b) {
  struct m2_inode r;
  if (!fields_of(m, bs, &r)) return false;
  if (++m->out->inodes > M2_MAX_INODES) return xm_refuse(m, "over %u inodes", M2_MAX_INODES);
  bulk_progress_described(m->job->progress, m->out->inodes, r.blocks, m->reached);
  uint32_t type = bs->bs_mode & S_IFMT;
  // Only these need the inode itself: bs_forkoff is 0 when it has no attribute fork (no xattrs), and
  // an attribute fork may be certainly empty on disk.
  bool attrs = bs->bs_forkoff != 0 && !xm_attrs_certainly_empty(m, bs);
  int fd = -1;
  if (type == S_IFLNK || attrs) {
    fd = xm_open(m, bs->bs_ino, bs->bs_gen, O_PATH | O_NOFOLLOW);
    if (fd < 0) return false;
  }
  if (attrs && list_xattrs(m, bs->bs_ino, fd, b)) r.has |= M2_HAS_XATTRS;
  bool ok = m->out->outcome == XB_OK;
  if (ok) m2w_inode_begin(m->w, &r);
  if (ok && (r.has & M2_HAS_XATTRS)) ok = write_xattrs(m, bs->bs_ino, fd, b);
  if (ok && type == S_IFLNK) ok = symlink_target(m, bs->bs_ino, fd);
  if (ok) ok = write_extents(m, bs, type == S_IFREG);
  if (fd >= 0 && close(fd) != 0 && ok) ok = xm_fail(m, "inode %llu: close: %s", (unsigned long long)bs->bs_ino, strerror(errno));
  return ok;
}

bool xm_describe_window(struct xfs_mapper *m) {
  struct {
    struct xfs_bulk_ireq hdr;
    struct xfs_bulkstat bs[BULKSTAT_BATCH];
  } *req = calloc(1, sizeof *req);
  struct xattr_buffers *b = malloc(sizeof *b);
  bool ok = req != NULL && b != NULL;
  if (!ok) xm_fail(m, "out of memory");
  if (ok) req->hdr.ino = m->lo; // v5: the first inode number to report; the kernel advances it
  for (bool done = false; ok && !done;) {
    req->hdr.icount = BULKSTAT_BATCH;
    if (ioctl(m->job->root_fd, XFS_IOC_BULKSTAT, req) != 0) {
      ok = xm_fail(m, "XFS_IOC_BULKSTAT from inode %llu: %s", (unsigned long long)req->hdr.ino, strerror(errno));
      break;
    }
    if (req->hdr.ocount == 0) break;
    for (uint32_t k = 0; ok && k < req->hdr.ocount; k++) {
      const struct xfs_bulkstat *bs = &req->bs[k];
      if (bs->bs_ino >= m->hi) {
        done = true;
        break;
      }
      if (bs->bs_ino >= m->table_len) {
        ok = xm_fail(m, "bulkstat gives inode %llu, past the geometry's inode numbers", (unsigned long long)bs->bs_ino);
        break;
      }
      if (m->names[bs->bs_ino]) ok = describe(m, bs, b);
    }
  }
  free(req), free(b);
  return ok;
}
