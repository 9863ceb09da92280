// The one binary search of sorted ranges: extents by file offset, btrfs chunks, thin-pool runs and loop
// backing extents by logical address all ask "which is the last one starting at or before here?".

/**
 * Index of the last of `n` ascending keys that is <= `key` (`keyAt(i)` is the i-th key), or -1 when
 * none is. E.g. keys [0, 10, 20]: key 15 -> 1, key 20 -> 2, key -1 -> -1.
 */
export function lastAtOrBefore(n: number, keyAt: (i: number) => number, key: number): number {
  let lo = 0
  let hi = n - 1
  let found = -1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    if (keyAt(mid) <= key) {
      found = mid
      lo = mid + 1
    } else {
      hi = mid - 1
    }
  }
  return found
}
