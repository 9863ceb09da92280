// The ext4 bulk mapper: the manifest (format version 2 body) of a tree on a frozen ext4 filesystem,
// read with libext2fs from the block device instead of through the VFS. See ext4.c.
#ifndef EXTFS_EXPORT_EXT4_H
#define EXTFS_EXPORT_EXT4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulk.h"

#define E4_MAX_SEGMENTS BULK_MAX_SEGMENTS
#define E4_MAX_DISKS BULK_MAX_DISKS

struct e4_job {
  const char *device;        // the ext4 block device, opened read-only
  uint32_t root;             // inode number of the exported directory
  const uint32_t *skip;      // inode numbers never entered (a few: image directories, the journal)
  size_t nskip;
  const struct bulk_segment *segments; // sorted by fs_offset, disjoint
  size_t nsegments;
  uint64_t carry_max;        // largest inline file carried in the manifest, bytes
  int fd;                    // where the body goes
  struct bulk_progress *progress; // NULL: none; its bytes hold the allocated bytes described
};

enum e4_outcome { E4_OK, E4_REFUSED, E4_FAILED };

struct e4_result {
  enum e4_outcome outcome;
  char why[512];             // refusal or failure, one line
  uint32_t inodes, dirs;
  uint64_t entries;
  bool byte_names, inline_data, direct_io;
  uint64_t body_bytes;
  uint64_t table_bytes;      // what the mapper allocated for tables that scale with the filesystem
  struct bulk_sampler *samplers; // one per disk (E4_MAX_DISKS), malloc'd; free with e4_result_free
  uint32_t ndisks;
};

void e4_map(const struct e4_job *job, struct e4_result *out);
void e4_result_free(struct e4_result *r);

#endif
