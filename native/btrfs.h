// What native/btrfs.c shares with the btrfs bulk mapper (native/export/btrfs_bulk.c): pure helpers
// over btrfs items, no N-API.
#ifndef EXTFS_BTRFS_H
#define EXTFS_BTRFS_H

#include <stdint.h>

// Copy the part of csum item (at logical `item_start`, `item_len` bytes) that covers the sectors of
// [logical, logical + n·sector) into out (n·csum_size bytes); returns the sectors copied.
uint64_t btrfs_csum_overlap(uint64_t item_start, uint32_t item_len, const uint8_t *item, uint64_t logical, uint64_t n,
                            uint32_t sector, uint32_t csum_size, uint8_t *out);

#endif
