// Loop devices: a range of /dev/loopN is a range of its backing file (plus the loop's offset), and the
// backing file's FIEMAP extents say where those bytes are on the device its own filesystem sits on.
// That is how VM images are stored; mapping through it lets the mover read the image's files from the
// disk underneath without the loop device. The backing file must not change while the manifest is
// used: a file written in place keeps its blocks, but a reflinked or copy-on-write one moves them, so
// map a frozen or cloned (read-only attached) image.
import fs from 'node:fs'
import path from 'node:path'
import {
  linux,
  type FiemapExtent,
  FIEMAP_EXTENT_UNWRITTEN,
  FIEMAP_EXTENT_DATA_INLINE,
  FIEMAP_EXTENT_UNKNOWN,
  FIEMAP_EXTENT_DELALLOC,
  FIEMAP_EXTENT_ENCODED,
  FIEMAP_EXTENT_DATA_ENCRYPTED,
  FIEMAP_EXTENT_NOT_ALIGNED,
  FIEMAP_EXTENT_DATA_TAIL,
} from '../linux'
import { ExportError } from '../errors'
import { splitDev } from './blockdev'
import type { DevNum, Span } from './span'
import { lastAtOrBefore } from '../extents/search'

/** What sysfs says about an attached loop device; offsets and sizes in bytes. */
export interface LoopInfo {
  /** Kernel name, e.g. "loop3". */
  name: string
  backingFile: string
  /** Where the device starts in the backing file (losetup -o). */
  offset: number
  /** The most of the file the device shows (losetup --sizelimit); 0 means up to the file's end. */
  sizelimit: number
}

/** Read /sys/block/<name>/loop/; throws when the device is not an attached loop device. */
export function readLoopInfo(name: string): LoopInfo {
  const dir = path.join('/sys/block', name, 'loop')
  let backingFile: string
  try {
    backingFile = fs.readFileSync(path.join(dir, 'backing_file'), 'utf8').replace(/\n$/, '')
  } catch {
    throw new ExportError(`${name} is not an attached loop device`)
  }
  // The kernel appends this when the file was unlinked: no path leads to those extents any more.
  if (backingFile.endsWith(' (deleted)')) throw new ExportError(`${name}: backing file ${backingFile} was deleted; cannot map through it`)
  const num = (f: string) => Number(fs.readFileSync(path.join(dir, f), 'utf8').trim())
  return { name, backingFile, offset: num('offset'), sizelimit: num('sizelimit') }
}

/** Extents whose bytes are not plainly at `physical`: reading the device underneath would be wrong. */
const UNREADABLE_RAW =
  FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED |
  FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_TAIL

/** A backing file's data extents as parallel arrays sorted by file offset (bytes), for binary search. */
export interface BackingExtents {
  file: string
  /** The device the backing file's filesystem sits on (its st_dev): where `physical` points. */
  dev: DevNum
  /** Bytes of the file the loop device shows, from the loop offset on. */
  deviceSize: number
  /** Where the loop device starts in the file. */
  loopOffset: number
  logical: number[]
  physical: number[]
  length: number[]
}

/**
 * Keep the extents that hold data; unwritten (preallocated) extents read as zeros and become holes.
 * Anything encoded, inline or not yet placed is refused with the backing file named.
 */
export function buildBackingExtents(
  file: string, dev: DevNum, fileSize: number, loop: { offset: number; sizelimit: number }, reported: FiemapExtent[],
): BackingExtents {
  const avail = Math.max(0, fileSize - loop.offset)
  // The loop driver shows whole 512-byte sectors only (loop_set_size rounds down).
  const deviceSize = Math.floor((loop.sizelimit > 0 ? Math.min(avail, loop.sizelimit) : avail) / 512) * 512
  const out: BackingExtents = { file, dev, deviceSize, loopOffset: loop.offset, logical: [], physical: [], length: [] }
  const sorted = [...reported].sort((a, b) => a.logical - b.logical)
  for (const e of sorted) {
    if (e.flags & FIEMAP_EXTENT_UNWRITTEN) continue
    if (e.flags & UNREADABLE_RAW) {
      throw new ExportError(`loop backing file ${file}: extent at ${e.logical} is inline, encoded or not yet placed (flags 0x${e.flags.toString(16)}); cannot map through it`)
    }
    const k = out.logical.length - 1
    if (k >= 0 && out.logical[k] + out.length[k] > e.logical) throw new ExportError(`loop backing file ${file}: FIEMAP extents overlap at ${e.logical}`)
    if (k >= 0 && out.logical[k] + out.length[k] === e.logical && out.physical[k] + out.length[k] === e.physical) {
      out.length[k] += e.length // the filesystem split one contiguous run; keep it whole
    } else {
      out.logical.push(e.logical)
      out.physical.push(e.physical)
      out.length.push(e.length)
    }
  }
  return out
}

/**
 * Spans on the backing filesystem's device for `length` bytes at `offset` of the loop device. Worked
 * example, loop offset 1 MiB, extent file 1 MiB..3 MiB at physical 40 MiB: loop byte 4096 is file byte
 * 1 MiB + 4096, physical 40 MiB + 4096. Bytes between extents are holes.
 */
export function mapLoopRange(b: BackingExtents, offset: number, length: number): Span[] {
  if (offset < 0 || length < 0 || offset + length > b.deviceSize) {
    throw new ExportError(`range ${offset}+${length} is outside the loop device on ${b.file} (${b.deviceSize} bytes)`)
  }
  const out: Span[] = []
  let pos = offset + b.loopOffset
  const end = pos + length
  const n = b.logical.length
  // k: the first extent that ends after pos.
  let k = lastAtOrBefore(n, (i) => b.logical[i]!, pos)
  if (k < 0 || b.logical[k] + b.length[k] <= pos) k++
  while (pos < end) {
    if (k < n && b.logical[k] <= pos) {
      const take = Math.min(b.logical[k] + b.length[k], end) - pos
      out.push({ dev: b.dev, offset: b.physical[k] + (pos - b.logical[k]), length: take })
      pos += take
      k++
    } else {
      const holeEnd = Math.min(k < n ? b.logical[k] : Infinity, end)
      out.push({ dev: null, offset: 0, length: holeEnd - pos })
      pos = holeEnd
    }
  }
  return out
}


/** FIEMAP the backing file of an attached loop device (flushing its dirty pages first). */
export function readBackingExtents(info: LoopInfo): BackingExtents {
  let fd: number
  try {
    // O_NOATIME: mapping a VM image must not look like reading it.
    fd = fs.openSync(info.backingFile, fs.constants.O_RDONLY | fs.constants.O_NOATIME)
  } catch (err) {
    throw new ExportError(`${info.name}: cannot open backing file ${info.backingFile}: ${(err as NodeJS.ErrnoException).code}`)
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true })
    if (st.isBlockDevice()) {
      // A loop on a block device is a linear window onto it.
      const size = linux.blockDeviceSize(fd)
      const whole: FiemapExtent = { logical: 0, physical: 0, length: size, flags: 0 }
      return buildBackingExtents(info.backingFile, splitDev(st.rdev), size, info, [whole])
    }
    if (!st.isFile()) throw new ExportError(`${info.name}: backing file ${info.backingFile} is neither a regular file nor a block device`)
    let reported: FiemapExtent[]
    try {
      reported = linux.fiemap(fd)
    } catch (err) {
      throw new ExportError(`${info.name}: FIEMAP of backing file ${info.backingFile} failed: ${(err as Error).message}`)
    }
    return buildBackingExtents(info.backingFile, splitDev(st.dev), Number(st.size), info, reported)
  } finally {
    fs.closeSync(fd)
  }
}
