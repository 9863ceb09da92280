// What the bulk mappers (ext4.c, btrfs_bulk.c, xfs_*.c) share: the evenly spaced extents kept for the
// device fingerprints, growing an array, and (ext4, XFS) placing a file's filesystem bytes on raw disks
// through a linear map, joined as the VFS mapper joins FIEMAP's extents. N-API helpers of their faces
// are in bulk_napi.h.
#ifndef EXTFS_EXPORT_BULK_H
#define EXTFS_EXPORT_BULK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BULK_MAX_DISKS 64u
#define BULK_SAMPLES_PER_DISK 1024u // extents kept per disk for the device fingerprints
#define BULK_SAMPLE_CSUM_MAX 64u    // a checksummed sample: 16 sectors of crc32c

// A range of a disk that export may fingerprint; with the checksums of its sectors when it has them,
// so that a damaged or stale copy is never what proves the disk (src/device/fingerprint.ts).
struct bulk_sample {
  uint32_t disk;
  uint64_t offset, length;
  uint32_t csum_len;
  uint8_t csum[BULK_SAMPLE_CSUM_MAX];
};

// Evenly spaced extents of one disk, in manifest order, however many there are: when full, every
// other one is dropped and the stride doubles (deterministic, unlike a reservoir).
struct bulk_sampler {
  struct bulk_sample kept[BULK_SAMPLES_PER_DISK];
  uint32_t n;
  uint64_t stride, seen;
};

// Offer one extent of `disk` to its sampler (csum: csum_len <= BULK_SAMPLE_CSUM_MAX bytes, or none).
void bulk_sample(struct bulk_sampler *s, uint32_t disk, uint64_t offset, uint64_t length, const uint8_t *csum, uint32_t csum_len);

// Room for `need` elements of `size` bytes in *p (capacity *cap, doubled as needed); false when out of memory.
bool bulk_grow(void **p, size_t *cap, size_t need, size_t size);

// A piece of the filesystem's byte address space that lies on one raw disk, unbroken; or, `hole`, on
// none (a loop device's backing file has a hole there: those bytes read as zeros).
struct bulk_segment {
  uint64_t fs_offset, length;
  uint32_t disk;
  uint64_t disk_offset;
  bool hole;
};

#define BULK_MAX_SEGMENTS 4096u

// One file's extents on raw disks, in file order.
struct bulk_runs {
  struct bulk_run {
    uint64_t file_offset, length, disk_offset;
    uint32_t disk;
  } *run;
  size_t n, cap;
};

// Checks a linear map: NULL when usable (and *ndisks one past the highest disk it names), else why not
// (`*refused` false: the caller's map is malformed, not merely beyond this mapper).
const char *bulk_check_segments(const struct bulk_segment *segments, size_t nsegments, uint32_t *ndisks, bool *refused);

enum bulk_place { BULK_PLACED, BULK_OUTSIDE_MAP, BULK_NO_MEMORY };

// Place `len` filesystem bytes at `at`, file bytes from `file_offset`, through `segments` (sorted,
// disjoint) onto `runs`: bytes in a hole segment are left out (as the VFS mapper leaves out spans with
// no raw disk), a run that continues the previous one in the file and on the same disk is joined to it
// (src/mapping/mapper.ts push()). BULK_OUTSIDE_MAP: some byte is in no segment.
enum bulk_place bulk_place(struct bulk_runs *runs, const struct bulk_segment *segments, size_t nsegments, uint64_t file_offset, uint64_t at, uint64_t len);

// Progress of a bulk mapper, for export's status line (src/cli/progress.ts). `report` (NULL: none) is
// called on the mapper's thread when a phase starts and every BULK_PROGRESS_EVERY inodes: cheap enough
// for the initiator, often enough for a line redrawn ten times a second (~4096 inodes take a few ms).
// `done` counts inodes (reached while the directories are walked; described after), `bytes` their
// allocated bytes (st_blocks * 512) once described, `total` the inodes to describe (0: unknown).
enum bulk_phase { BULK_PHASE_DIRS, BULK_PHASE_INODES };
#define BULK_PROGRESS_EVERY 4096u
struct bulk_progress {
  void (*report)(void *ctx, enum bulk_phase phase, uint64_t done, uint64_t bytes, uint64_t total);
  void *ctx;
  uint64_t bytes; // allocated bytes of the inodes described so far
  uint64_t next;  // `done` at which to report next
};

// A phase starts (done and bytes as they stand).
static inline void bulk_progress_phase(struct bulk_progress *p, enum bulk_phase phase, uint64_t done, uint64_t total) {
  if (p == NULL || p->report == NULL) return;
  p->next = done + BULK_PROGRESS_EVERY;
  p->report(p->ctx, phase, done, p->bytes, total);
}

// `done` as it stands in `phase`: reported when it passed the next multiple of the stride.
static inline void bulk_progress_at(struct bulk_progress *p, enum bulk_phase phase, uint64_t done, uint64_t total) {
  if (p && p->report && done >= p->next) bulk_progress_phase(p, phase, done, total);
}

// One more inode described (`done` counts them), of `blocks512` 512-byte units allocated.
static inline void bulk_progress_described(struct bulk_progress *p, uint64_t done, uint64_t blocks512, uint64_t total) {
  if (p == NULL) return;
  p->bytes += blocks512 * 512;
  bulk_progress_at(p, BULK_PHASE_INODES, done, total);
}

#endif
