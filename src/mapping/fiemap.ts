// A regular file's FIEMAP extents, turned into extents on the raw device.
import {
  native,
  FiemapExtent,
  FIEMAP_EXTENT_DATA_INLINE,
  FIEMAP_EXTENT_UNWRITTEN,
  FIEMAP_EXTENT_UNKNOWN,
  FIEMAP_EXTENT_DELALLOC,
  FIEMAP_EXTENT_ENCODED,
  FIEMAP_EXTENT_DATA_ENCRYPTED,
  FIEMAP_EXTENT_NOT_ALIGNED,
  FIEMAP_EXTENT_DATA_TAIL,
} from '../native'
import type { Extent } from '../manifest/types'
import { ExportError } from '../errors'

/** Extents whose bytes are not where `physical` says, or not stored plainly: they cannot be read raw. */
const UNREADABLE_RAW =
  FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED |
  FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_TAIL

export type FileMapping = { kind: 'extents'; extents: Extent[] } | { kind: 'inline' }

/**
 * Map one open file. `deviceOffset` is where the filesystem starts on the raw device (partition start).
 * Unwritten (preallocated) extents read as zeros, so they are left out: the reader treats them as holes
 * and never returns the stale blocks behind them. Extents starting at or past EOF are dropped too.
 */
export function mapFile(fd: number, file: string, size: number, device: number, deviceOffset: number): FileMapping {
  let reported: FiemapExtent[]
  try {
    reported = native.fiemap(fd)
  } catch (err) {
    throw new ExportError(`${file}: FIEMAP failed: ${(err as Error).message}`)
  }
  if (reported.some((e) => e.flags & FIEMAP_EXTENT_DATA_INLINE)) {
    if (reported.length !== 1) throw new ExportError(`${file}: mixes inline and block extents; cannot be read raw`)
    return { kind: 'inline' }
  }
  const extents: Extent[] = []
  for (const e of reported) {
    if (e.flags & FIEMAP_EXTENT_UNWRITTEN) continue
    if (e.flags & UNREADABLE_RAW) {
      throw new ExportError(`${file}: extent at ${e.logical} is encoded or not block-aligned (flags 0x${e.flags.toString(16)}); cannot be read raw`)
    }
    if (e.logical >= size) continue
    extents.push({ fileOffset: e.logical, device, deviceOffset: e.physical + deviceOffset, length: e.length })
  }
  return { kind: 'extents', extents }
}
