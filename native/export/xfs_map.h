// What the passes of the XFS bulk mapper share (xfs_bulk.c, xfs_dirs.c, xfs_fsmap.c, xfs_inodes.c):
// one struct of state, the per-inode-number table, opening an inode by handle, and the outcomes.
#ifndef EXTFS_EXPORT_XFS_MAP_H
#define EXTFS_EXPORT_XFS_MAP_H

#include <fcntl.h>
#include <xfs/xfs.h>

#include "../manifest/utf8.h"
#include "../manifest/v2write.h"
#include "xfs_bulk.h"

#define XM_TABLE_MAX (1ull << 36)     // inode numbers the table may span (64 GiB of address space, virtual)
#define XM_NAMES_MAX 254u             // names of one inode in the tree counted in its table byte
#define XM_FSMAP_RECORDS (1u << 19)   // extents held for one window of inode numbers (16 MiB)

// An extent of a regular file as the reverse map tells it: owner inode, file and device bytes.
struct xm_extent {
  uint64_t ino, offset, physical, length;
};

struct xfs_mapper {
  const struct xb_job *job;
  struct xb_result *out;
  struct m2w *w;
  bool rmap;                          // the reverse map is there: extents from GETFSMAP, else FIEMAP per file
  uint32_t block_size, inode_size, ag_blocks;
  unsigned agino_log, inopblog;       // an inode number is agno << agino_log | agbno << inopblog | index
  // Per inode number: 0 not in the tree; else the names found for it (a directory: 1).
  uint8_t *names;
  uint64_t table_len;
  uint64_t reached;                   // inodes with names[ino] != 0
  // Handles: XFS's file handle for (ino, gen), as name_to_handle_at(2) gives it for the root.
  int handle_type;
  bool handle_ino64;
  // The window of inode numbers being described, and the extents of its regular files, by (ino, offset).
  uint64_t lo, hi;
  struct xm_extent *extents;
  size_t cap, nextents, next;         // cap: the job's window_extents or XM_FSMAP_RECORDS              // next: the first extent not yet consumed
  struct bulk_runs runs;              // one file's extents on raw disks
  struct {                            // on-disk inodes read (xfs_peek.c): one chunk of 64 at a time
    int fd;
    uint8_t *buf;
    size_t len;
    uint64_t at;                      // device byte of buf, UINT64_MAX when none
  } peek;
};

bool xm_refuse(struct xfs_mapper *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool xm_fail(struct xfs_mapper *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void xm_note_name(struct xfs_mapper *m, const void *name, size_t len);

// XFS_IOC_BULKSTAT of exactly `ino` (a directory's generation, for its handle).
bool xm_stat_one(struct xfs_mapper *m, uint64_t ino, struct xfs_bulkstat *bs);
// open_by_handle_at(2) of (ino, gen) with `flags`; -1 after a refusal or failure.
int xm_open(struct xfs_mapper *m, uint64_t ino, uint32_t gen, int flags);

// xfs_peek.c: the device opened with O_DIRECT for on-disk inodes (or not: then every answer is "maybe").
bool xm_peek_open(struct xfs_mapper *m);
void xm_peek_close(struct xfs_mapper *m);
// True only when the on-disk inode bulkstat describes in `bs` has an attribute fork with no entries.
bool xm_attrs_certainly_empty(struct xfs_mapper *m, const struct xfs_bulkstat *bs);

// Pass 1 (xfs_dirs.c): DIR records of every directory in the tree, the table filled.
bool xm_walk_dirs(struct xfs_mapper *m);
// Extents (xfs_fsmap.c): the reverse map's data extents of inodes in the tree from m->lo, as many
// whole inodes as XM_FSMAP_RECORDS allows; sets m->hi to the first inode number not collected.
bool xm_collect_extents(struct xfs_mapper *m);
// Without the reverse map (xfs_fiemap.c): one regular file's extents onto m->runs, by FIEMAP on it.
bool xm_fiemap_file(struct xfs_mapper *m, const struct xfs_bulkstat *bs);
// Pass 2 (xfs_inodes.c): INODE records of the tree's inodes in [m->lo, m->hi), in inode order.
bool xm_describe_window(struct xfs_mapper *m);

#endif
