// The XFS bulk mapper. On a frozen XFS filesystem (FIFREEZE wrote back every dirty inode and extent),
// it writes the manifest body (docs/manifest-v2.md) of the tree under one directory, using what XFS
// offers for reading its metadata in bulk instead of path by path through the VFS:
//   1. DIR records, from the directories of the tree (xfs_dirs.c): each opened by handle
//      (open_by_handle_at(2), no path lookup) and read with getdents64, counting every inode's names
//      in a table of one byte per inode number;
//   2. INODE records in ascending inode number (xfs_inodes.c), from XFS_IOC_BULKSTAT sweeps (mode,
//      owner, ns times, nlink, size, blocks, xflags of 64 inodes per kernel call), a window of inode
//      numbers at a time, with the regular files' extents from FS_IOC_GETFSMAP (xfs_fsmap.c): the
//      reverse-mapping btree names the owner inode and file offset of every extent, so one sweep
//      of it maps every file of the window without opening any. Only symlinks (their target) and
//      inodes with an attribute fork (their xattrs) are opened, by handle. Without the reverse map
//      (mkfs.xfs's default before rmapbt=1), each regular file is opened by handle for FIEMAP
//      (xfs_fiemap.c): the walker's extent call, without its path lookups and JavaScript.
// bulkstat reads inodes with XFS_IGET_DONTCACHE, and nothing here looks a name up, so the owner's
// dentry and inode caches keep only the directories and the few inodes opened by handle. (An empty
// attribute fork, which this kernel gives every new inode when a security module is loaded, is told
// from the on-disk inode: xfs_peek.c.)
//
// It holds the table (calloc'd: untouched pages cost nothing), the stack of directories to read, up
// to 1 MiB of one directory's entries, up to XM_FSMAP_RECORDS extents of one window and one file's.
// Every field must equal what the VFS walker (src/export/walk.ts) reports through the kernel; what the
// kernel computes is computed here as the kernel does, and said where; what cannot be reproduced
// exactly is refused (XB_REFUSED: export falls back to the walker), never guessed.
#include "xfs_map.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

static bool say(struct xfs_mapper *m, enum xb_outcome kind, const char *fmt, va_list ap) {
  if (m->out->outcome == XB_OK) {
    m->out->outcome = kind;
    vsnprintf(m->out->why, sizeof m->out->why, fmt, ap);
  }
  return false;
}

bool xm_refuse(struct xfs_mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, XB_REFUSED, fmt, ap);
  va_end(ap);
  return false;
}

bool xm_fail(struct xfs_mapper *m, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say(m, XB_FAILED, fmt, ap);
  va_end(ap);
  return false;
}

void xm_note_name(struct xfs_mapper *m, const void *name, size_t len) {
  if (!m->out->byte_names && !m2_valid_utf8(name, len)) m->out->byte_names = true;
}

bool xm_stat_one(struct xfs_mapper *m, uint64_t ino, struct xfs_bulkstat *bs) {
  struct {
    struct xfs_bulk_ireq hdr;
    struct xfs_bulkstat bs;
  } req;
  memset(&req, 0, sizeof req);
  req.hdr.ino = ino; // v5: the first inode number to report
  req.hdr.icount = 1;
  if (ioctl(m->job->root_fd, XFS_IOC_BULKSTAT, &req) != 0) return xm_fail(m, "XFS_IOC_BULKSTAT of inode %llu: %s", (unsigned long long)ino, strerror(errno));
  if (req.hdr.ocount != 1 || req.bs.bs_ino != ino) return xm_fail(m, "inode %llu is named in a directory but not allocated", (unsigned long long)ino);
  *bs = req.bs;
  return true;
}

// XFS's handle (fs/xfs/xfs_export.c xfs_fs_encode_fh): FILEID_INO32_GEN, {u32 ino, u32 gen}, or with
// XFS_FILEID_TYPE_64FLAG (0x80) when inode numbers may exceed 32 bits, {u64 ino, u32 gen} packed.
struct xm_handle {
  struct file_handle fh;
  unsigned char bytes[12];
};

static void make_handle(const struct xfs_mapper *m, uint64_t ino, uint32_t gen, struct xm_handle *h) {
  memset(h, 0, sizeof *h);
  h->fh.handle_type = m->handle_type;
  if (m->handle_ino64) {
    h->fh.handle_bytes = 12;
    memcpy(h->fh.f_handle, &ino, 8);
    memcpy(h->fh.f_handle + 8, &gen, 4);
  } else {
    uint32_t ino32 = (uint32_t)ino;
    h->fh.handle_bytes = 8;
    memcpy(h->fh.f_handle, &ino32, 4);
    memcpy(h->fh.f_handle + 4, &gen, 4);
  }
}

int xm_open(struct xfs_mapper *m, uint64_t ino, uint32_t gen, int flags) {
  struct xm_handle h;
  if (!m->handle_ino64 && ino > UINT32_MAX) return xm_fail(m, "inode %llu does not fit the filesystem's 32-bit handles", (unsigned long long)ino), -1;
  make_handle(m, ino, gen, &h);
  int fd = open_by_handle_at(m->job->root_fd, &h.fh, flags | O_CLOEXEC);
  if (fd < 0) return xm_fail(m, "inode %llu: open by handle: %s", (unsigned long long)ino, strerror(errno)), -1;
  m->out->handle_opens++;
  return fd;
}

// Learn the handle format from the kernel's handle of the exported directory, and prove that
// make_handle() builds exactly that one from its inode number and generation.
static bool learn_handles(struct xfs_mapper *m) {
  struct xm_handle kernel, ours;
  struct xfs_bulkstat bs;
  int mount_id;
  kernel.fh.handle_bytes = sizeof kernel.bytes;
  if (name_to_handle_at(m->job->root_fd, "", &kernel.fh, &mount_id, AT_EMPTY_PATH) != 0) return xm_refuse(m, "name_to_handle_at: %s", strerror(errno));
  if (kernel.fh.handle_type == 0x01 && kernel.fh.handle_bytes == 8) m->handle_ino64 = false;
  else if (kernel.fh.handle_type == 0x81 && kernel.fh.handle_bytes == 12) m->handle_ino64 = true;
  else return xm_refuse(m, "an XFS file handle of type 0x%x and %u bytes is not one this mapper builds", kernel.fh.handle_type, kernel.fh.handle_bytes);
  m->handle_type = kernel.fh.handle_type;
  if (!xm_stat_one(m, m->job->root, &bs)) return false;
  make_handle(m, bs.bs_ino, bs.bs_gen, &ours);
  if (memcmp(ours.fh.f_handle, kernel.fh.f_handle, kernel.fh.handle_bytes) != 0) return xm_refuse(m, "the kernel's handle of the exported directory is not (inode, generation)");
  return true;
}

// The filesystem's shape: what this mapper reads exactly, and the span of its inode numbers.
static bool check_geometry(struct xfs_mapper *m) {
  struct xfs_fsop_geom g;
  memset(&g, 0, sizeof g);
  if (ioctl(m->job->root_fd, XFS_IOC_FSGEOMETRY, &g) != 0) return xm_refuse(m, "XFS_IOC_FSGEOMETRY: %s", strerror(errno));
  // Without the reverse map, GETFSMAP knows no owners: each regular file is opened (by handle) for
  // its own extent map, FIEMAP as the walker's (xfs_fiemap.c).
  m->rmap = (g.flags & XFS_FSOP_GEOM_FLAGS_RMAPBT) != 0;
  // A realtime file's extents are on the realtime device, which the linear map of the data device does not place.
  if (g.rtblocks != 0) return xm_refuse(m, "a realtime device");
  if (g.blocksize < 512 || g.blocksize % 512 != 0 || g.inodesize == 0 || g.blocksize < g.inodesize) return xm_refuse(m, "block size %u, inode size %u", g.blocksize, g.inodesize);
  m->block_size = g.blocksize;
  // Inode numbers are (AG number, block in the AG, inode in the block): agcount << (agblklog + inopblog),
  // agblklog rounding the AG's blocks up to a power of two (xfs_sb.c, sb_agblklog).
  unsigned agblklog = 0, inopblog = 0;
  while ((1ull << agblklog) < g.agblocks) agblklog++;
  while ((g.inodesize << inopblog) < g.blocksize) inopblog++;
  if (agblklog + inopblog > 40) return xm_refuse(m, "inode numbers of %u bits", agblklog + inopblog);
  m->table_len = (uint64_t)g.agcount << (agblklog + inopblog);
  m->inode_size = g.inodesize, m->ag_blocks = g.agblocks, m->agino_log = agblklog + inopblog, m->inopblog = inopblog;
  if (m->table_len > XM_TABLE_MAX) return xm_refuse(m, "inode numbers up to %llu: over the table's %llu", (unsigned long long)m->table_len, XM_TABLE_MAX);
  return true;
}

static bool check_job(struct xfs_mapper *m) {
  bool refused;
  const char *why = bulk_check_segments(m->job->segments, m->job->nsegments, &m->out->ndisks, &refused);
  if (why) return refused ? xm_refuse(m, "%s", why) : xm_fail(m, "%s", why);
  return true;
}

static bool map_all(struct xfs_mapper *m) {
  if (!check_job(m) || !check_geometry(m) || !learn_handles(m)) return false;
  // MAP_NORESERVE: address space for every possible inode number; only the pages of inode numbers
  // in use are touched (inodes come in chunks of 64 consecutive numbers).
  void *t = mmap(NULL, m->table_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (t == MAP_FAILED) return xm_fail(m, "mmap of the inode table (%llu bytes): %s", (unsigned long long)m->table_len, strerror(errno));
  m->names = t;
  m->out->table_bytes = m->table_len;
  m->cap = m->job->window_extents ? m->job->window_extents : XM_FSMAP_RECORDS;
  if (m->cap < 2 || m->cap > XM_FSMAP_RECORDS) return xm_fail(m, "a window of %zu extents", m->cap);
  m->extents = malloc(m->cap * sizeof *m->extents);
  if (m->extents == NULL) return xm_fail(m, "out of memory");
  bulk_progress_phase(m->job->progress, BULK_PHASE_DIRS, 0, 0);
  if (!xm_peek_open(m) || !xm_walk_dirs(m)) return false;
  bulk_progress_phase(m->job->progress, BULK_PHASE_INODES, 0, m->reached);
  for (m->lo = 0; m->lo < m->table_len; m->lo = m->hi) {
    if (!m->rmap) m->hi = m->table_len; // one window: extents come per file
    else if (!xm_collect_extents(m)) return false;
    if (!xm_describe_window(m)) return false;
  }
  if (m->out->inodes != m->reached) return xm_fail(m, "%llu inodes named in the tree, %u described", (unsigned long long)m->reached, m->out->inodes);
  return true;
}

void xb_map(const struct xb_job *job, struct xb_result *out) {
  memset(out, 0, sizeof *out);
  struct xfs_mapper m = {.job = job, .out = out, .peek.fd = -1};
  out->samplers = calloc(BULK_MAX_DISKS, sizeof *out->samplers);
  m.w = malloc(sizeof *m.w);
  if (out->samplers == NULL || m.w == NULL) {
    xm_fail(&m, "out of memory");
  } else {
    m2w_init(m.w, job->fd);
    if (map_all(&m)) {
      int err = m2w_flush(m.w);
      if (err) xm_fail(&m, "writing the manifest body: %s", strerror(err));
      out->body_bytes = m.w->written;
    }
  }
  xm_peek_close(&m);
  if (m.names) munmap(m.names, m.table_len);
  free(m.extents), free(m.runs.run), free(m.w);
}

void xb_result_free(struct xb_result *r) {
  free(r->samplers);
  r->samplers = NULL;
}
