// The XFS bulk mapper: the manifest (format version 2 body) of a tree on a frozen XFS filesystem, read
// with XFS's bulk interfaces (XFS_IOC_BULKSTAT for every inode, FS_IOC_GETFSMAP's reverse mapping for
// every extent) instead of through the VFS file by file. See xfs_bulk.c.
#ifndef EXTFS_EXPORT_XFS_BULK_H
#define EXTFS_EXPORT_XFS_BULK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulk.h"

struct xb_job {
  const char *device;                 // the filesystem's block device, read (O_DIRECT) for on-disk inodes; NULL: never
  int root_fd;                        // the exported directory, O_RDONLY | O_DIRECTORY: also the handle's mount fd
  uint64_t root;                      // its inode number
  const uint64_t *skip;               // directory inode numbers never entered (the image directory), any order
  size_t nskip;
  const struct bulk_segment *segments; // the data device's bytes on raw disks, sorted by fs_offset, disjoint
  size_t nsegments;
  int fd;                             // where the body goes
  uint32_t window_extents;            // extents held per window (0: XM_FSMAP_RECORDS); tests make it small
  struct bulk_progress *progress;     // NULL: none; its bytes hold the allocated bytes described
};

enum xb_outcome { XB_OK, XB_REFUSED, XB_FAILED };

struct xb_result {
  enum xb_outcome outcome;
  char why[512];                      // refusal or failure, one line
  uint32_t inodes, dirs;
  uint64_t entries;
  bool byte_names;
  uint64_t body_bytes;
  uint64_t table_bytes;               // the per-inode-number table's size (virtual: untouched pages cost nothing)
  uint64_t windows;                   // GETFSMAP sweeps (one per window of inode numbers)
  uint64_t handle_opens;              // inodes opened by handle: directories, symlinks, inodes with an attr fork
  struct bulk_sampler *samplers;      // BULK_MAX_DISKS of them; free with xb_result_free
  uint32_t ndisks;
};

void xb_map(const struct xb_job *job, struct xb_result *out);
void xb_result_free(struct xb_result *r);

#endif
