// The btrfs bulk mapper: the manifest (format version 2 body) of a tree inside a read-only btrfs
// snapshot, read with BTRFS_IOC_TREE_SEARCH_V2 from the snapshot's fs tree instead of through the
// VFS. See btrfs_bulk.c.
#ifndef EXTFS_EXPORT_BTRFS_BULK_H
#define EXTFS_EXPORT_BTRFS_BULK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulk.h"

#define BB_MAX_COPIES 4u        // copy 0 (the one read) and up to three others (RAID1C4)
#define BB_MAX_DISKS BULK_MAX_DISKS
#define BB_MAX_SEGMENTS 1000000u // RAID0/RAID10 give one per stripe unit: 16,384 per GiB chunk
#define BB_SAMPLE_SECTORS 16u // a checksummed sample: at most this many sectors, with their crc32c

// A piece of btrfs's logical address space whose every copy lies unbroken on one raw disk. The
// caller composes it from the chunk map and the device stack (src/export/bulk-btrfs.ts), so the
// chunk arithmetic keeps its one home in src/mapping/btrfs-chunks.ts.
struct bb_segment {
  uint64_t logical, length;
  uint32_t ncopies;
  struct bb_place {
    uint32_t disk;
    uint64_t offset;
  } copy[BB_MAX_COPIES];
};

struct bb_job {
  int tree_fd;                // an fd inside the snapshot: its subvolume's tree is the one searched
  uint64_t root;              // inode number of the exported directory
  const uint64_t *skip;       // directory inode numbers never entered (the image directory), any order
  size_t nskip;
  const struct bb_segment *segments; // sorted by logical, disjoint
  size_t nsegments;
  uint64_t carry_max;         // largest inline file carried in the manifest, bytes
  uint32_t sector_size, node_size, csum_type, csum_size; // BTRFS_IOC_FS_INFO
  int fd;                     // where the body goes
  int inodes_fd;              // an empty scratch file: INODE records wait here while DIR records go to fd
  struct bulk_progress *progress; // NULL: none; its bytes hold the allocated bytes described
};

enum bb_outcome { BB_OK, BB_REFUSED, BB_FAILED };

struct bb_result {
  enum bb_outcome outcome;
  char why[512];              // refusal or failure, one line
  uint32_t inodes, dirs;
  uint64_t entries;
  bool byte_names, inline_data, data_checksums, compressed;
  uint64_t body_bytes;
  uint64_t table_bytes;       // bytes of the tables that scale with the tree (16 per directory)
  uint64_t searches;          // TREE_SEARCH_V2 calls
  struct bulk_sampler *samplers; // BB_MAX_DISKS of them, by the body's disk index; free with bb_result_free
  // The disks the extents reach, numbered in the order met as the walker's mapper numbers them
  // (FileMapper.indexOf): disk_order[i] is the segments' disk index of the body's disk i.
  uint32_t disk_order[BB_MAX_DISKS];
  uint32_t ndisks;
};

void bb_map(const struct bb_job *job, struct bb_result *out);
void bb_result_free(struct bb_result *r);

#endif
