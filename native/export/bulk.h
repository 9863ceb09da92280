// What the bulk mappers (ext4.c, btrfs_bulk.c) share: the evenly spaced extents kept for the device
// fingerprints, and growing an array. N-API helpers of their faces are in bulk_napi.h.
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

#endif
