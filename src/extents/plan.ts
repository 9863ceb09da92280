// Extent arithmetic: which device ranges, and which runs of zeros, make up a read of a file.
// Pure: no I/O. The caller executes the plan (pread each data segment, fill zero segments).
import type { Compression, Extent } from '../manifest/types'
import { lastAtOrBefore } from './search'

/**
 * A piece of a read: `length` bytes of zeros, or `length` bytes of devices[device] at `deviceOffset`,
 * or (a compressed extent's) `length` bytes from `decodedOffset` of what the `diskLength` bytes at
 * `deviceOffset` of devices[device] decode to with `compression`.
 */
export type Segment =
  | { kind: 'zero'; length: number }
  | { kind: 'data'; device: number; deviceOffset: number; length: number }
  | { kind: 'decoded'; device: number; deviceOffset: number; diskLength: number; compression: Compression; decodedOffset: number; length: number }

/**
 * Plan a read of `length` bytes at file offset `offset` of a file of `size` bytes whose data lives in
 * `extents` (sorted by fileOffset, non-overlapping, as the manifest validator guarantees).
 *
 * The request is clipped at EOF; the segments cover it exactly, in file order: a data segment for each
 * part inside an extent, a zero segment for each hole (before the first extent, between extents, after
 * the last one up to EOF). No data segment reaches past its extent or past EOF: the tail of the last
 * block, which the last extent may cover, is never returned. The lengths add up to
 * min(length, max(0, size - offset)); a read at or past EOF gives [].
 *
 * Worked example: size 10000, extents
 *   A = {fileOffset: 0,    device: 0, deviceOffset: 1000000, length: 4096}
 *   B = {fileOffset: 8192, device: 1, deviceOffset: 50000,   length: 4096}   (B runs past EOF to 12288)
 * planRead(extents, 10000, 4000, 8000): the request 4000..12000 is clipped at EOF to 4000..10000, then
 *   data {device 0, deviceOffset 1004000, length 96}    file 4000..4096, the end of A
 *   zero {length 4096}                                  file 4096..8192, the hole
 *   data {device 1, deviceOffset 50000, length 1808}    file 8192..10000, B up to EOF
 * 96 + 4096 + 1808 = 6000 = min(8000, 10000 - 4000).
 *
 * A compressed extent is read whole and decoded, so its segment names the whole encoded stream and
 * where the piece starts in the decoded bytes: with C = {fileOffset: 0, device: 0, deviceOffset: 8192,
 * length: 65536, compression: 'zstd', diskLength: 12288, decodedLength: 131072, decodedOffset: 4096},
 * a read of 100 bytes at 1000 is decoded {device 0, deviceOffset 8192, diskLength 12288, zstd,
 * decodedOffset 5096, length 100}.
 */
export function planRead(extents: readonly Extent[], size: number, offset: number, length: number): Segment[] {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`read offset ${offset} is not a non-negative integer`)
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`read length ${length} is not a non-negative integer`)
  const end = Math.min(offset + length, size)
  const segments: Segment[] = []
  if (offset >= end) return segments

  let pos = offset
  for (let i = firstExtentEndingAfter(extents, offset); i < extents.length && pos < end; i++) {
    const e = extents[i]!
    if (e.fileOffset >= end) break
    if (e.fileOffset > pos) {
      segments.push({ kind: 'zero', length: e.fileOffset - pos })
      pos = e.fileOffset
    }
    const stop = Math.min(e.fileOffset + e.length, end)
    segments.push(e.compression === undefined
      ? { kind: 'data', device: e.device, deviceOffset: e.deviceOffset + (pos - e.fileOffset), length: stop - pos }
      : {
          kind: 'decoded', device: e.device, deviceOffset: e.deviceOffset, diskLength: e.diskLength!, compression: e.compression,
          decodedOffset: e.decodedOffset! + (pos - e.fileOffset), length: stop - pos,
        })
    pos = stop
  }
  if (pos < end) segments.push({ kind: 'zero', length: end - pos })
  return segments
}

/**
 * Index of the first extent that ends after `offset` (extents.length if none). Sorted, non-overlapping
 * extents also have strictly increasing ends, so a binary search over the ends finds it in O(log n).
 */
export function firstExtentEndingAfter(extents: readonly Extent[], offset: number): number {
  return lastAtOrBefore(extents.length, (i) => extents[i]!.fileOffset + extents[i]!.length, offset) + 1
}
