// From a file's FIEMAP extents to extents on raw disks, through whatever sits between the filesystem
// and the disks: btrfs chunks, partitions, device-mapper tables, loop backing files (--through-loop).
// Export asks one FileMapper per exported filesystem; the disks it meets become the manifest's devices.
import {
  linux,
  FiemapExtent,
  FIEMAP_EXTENT_DATA_INLINE,
  FIEMAP_EXTENT_ENCODED,
  FIEMAP_EXTENT_UNWRITTEN,
  FIEMAP_EXTENT_UNKNOWN,
  FIEMAP_EXTENT_DELALLOC,
  FIEMAP_EXTENT_DATA_ENCRYPTED,
  FIEMAP_EXTENT_NOT_ALIGNED,
  FIEMAP_EXTENT_DATA_TAIL,
} from '../linux'
import type { Extent } from '../manifest/types'
import type { MountEntry } from './mountinfo'
import type { RawDisk, RawSpan } from './span'
import { devKey } from './span'
import { BtrfsLayout } from './btrfs'
import { DeviceStack } from './stack'
import { ExportError } from '../errors'

/** Stored somewhere other than plain blocks (inline in metadata, compressed): only the content can be carried. */
const CARRY_ONLY = FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_ENCODED
/** Not where `physical` says, or not readable as plain bytes even by carrying raw blocks. */
const UNREADABLE_RAW =
  FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_TAIL

/**
 * `extents`: the file's written data on raw disks. `carry`: the file's bytes cannot be read raw (inline
 * or compressed); the caller carries its content in the manifest or refuses the file.
 */
export type FileMapping = { kind: 'extents'; extents: Extent[] } | { kind: 'carry'; why: string }

export interface MapperOptions {
  /** Continue through a loop device's backing file to the disk underneath (VM images). */
  throughLoop: boolean
}

/** Resolves a range of the filesystem's own address space (what FIEMAP calls physical) to raw disks. */
type AddressSpace = (offset: number, length: number) => RawSpan[]

export class FileMapper {
  /** Disks met so far; an extent's `device` is an index into this list. */
  readonly disks: RawDisk[] = []
  private readonly diskIndex = new Map<string, number>()

  private constructor(private readonly resolve: AddressSpace) {}

  /**
   * The mapper for the filesystem mounted at `mount`. Call it once the image is stable (frozen, or a
   * snapshot taken): btrfs chunks and loop backing files are read here and not again.
   */
  static forMount(mount: MountEntry, opts: MapperOptions): FileMapper {
    const stack = new DeviceStack({ throughLoop: opts.throughLoop })
    if (mount.fsType !== 'btrfs') {
      const dev = { major: mount.major, minor: mount.minor }
      return new FileMapper((offset, length) => stack.resolve(dev, offset, length))
    }
    // btrfs: FIEMAP's addresses are logical; the chunk tree places them on the member devices,
    // which may themselves sit on partitions, device-mapper or loop files.
    let layout = BtrfsLayout.read(mount.mountpoint)
    const members = (logical: number, length: number) => {
      try {
        return layout.resolve(logical, length)
      } catch {
        // A chunk allocated since the layout was read: the flush that takes the image, or the owner's
        // writes while a clone set is taken file by file. Read the chunk tree again, once.
        layout = BtrfsLayout.read(mount.mountpoint)
        return layout.resolve(logical, length)
      }
    }
    return new FileMapper((logical, length) =>
      members(logical, length).flatMap((s) => (s.dev ? stack.resolve(s.dev, s.offset, s.length) : [{ raw: null, offset: 0, length: s.length }])),
    )
  }

  /**
   * Map one open regular file of `size` bytes. Unwritten (preallocated) extents read as zeros, so they
   * are left out like holes and the stale blocks behind them are never served. Extents at or past EOF
   * are dropped.
   */
  map(fd: number, file: string, size: number): FileMapping {
    let reported: FiemapExtent[]
    try {
      reported = linux.fiemap(fd)
    } catch (err) {
      throw new ExportError(`${file}: FIEMAP failed: ${(err as Error).message}`)
    }
    const carried = reported.find((e) => e.flags & CARRY_ONLY)
    if (carried) return { kind: 'carry', why: carried.flags & FIEMAP_EXTENT_ENCODED ? 'compressed' : 'inline' }
    const extents: Extent[] = []
    for (const e of reported) {
      if (e.flags & FIEMAP_EXTENT_UNWRITTEN || e.logical >= size) continue
      if (e.flags & UNREADABLE_RAW) {
        throw new ExportError(`${file}: extent at ${e.logical} cannot be read raw (FIEMAP flags 0x${e.flags.toString(16)})`)
      }
      let fileOffset = e.logical
      for (const span of this.resolve(e.physical, e.length)) {
        if (span.raw) this.push(extents, { fileOffset, device: this.indexOf(span.raw), deviceOffset: span.offset, length: span.length })
        fileOffset += span.length
      }
    }
    return { kind: 'extents', extents }
  }

  private indexOf(disk: RawDisk): number {
    const key = devKey(disk)
    let i = this.diskIndex.get(key)
    if (i === undefined) {
      i = this.disks.push(disk) - 1
      this.diskIndex.set(key, i)
    }
    return i
  }

  /** Append, joining an extent that continues the previous one on the same disk (stripes rejoined). */
  private push(extents: Extent[], e: Extent): void {
    const last = extents[extents.length - 1]
    if (last && last.device === e.device && last.fileOffset + last.length === e.fileOffset && last.deviceOffset + last.length === e.deviceOffset) {
      last.length += e.length
    } else {
      extents.push(e)
    }
  }
}
