// From a file's FIEMAP extents to extents on raw disks, through whatever sits between the filesystem
// and the disks: btrfs chunks, partitions, device-mapper tables, loop backing files (--through-loop).
// Export asks one FileMapper per exported filesystem; the disks it meets become the manifest's devices.
import {
  linux,
  type BtrfsFileExtent,
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
import { CSUM_ALGORITHMS, type DataChecksums, type Extent } from '../manifest/types'
import type { MountEntry } from './mountinfo'
import type { RawDisk, RawSpan } from './span'
import { devKey } from './span'
import { BtrfsLayout } from './btrfs'
import { type CompressedItem, writtenExtents } from './btrfs-items'
import { DeviceStack } from './stack'
import { ExportError } from '../errors'

/** Not where `physical` says, or not readable as plain bytes even by carrying raw blocks. */
const UNREADABLE_RAW =
  FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_TAIL

/**
 * `extents`: the file's written data on raw disks (btrfs compressed extents as their encoded streams).
 * `carry`: the file's bytes are inline in the filesystem's metadata, not on any raw block; the caller
 * carries its content in the manifest or refuses the file.
 */
export type FileMapping = { kind: 'extents'; extents: Extent[] } | { kind: 'carry'; why: string }

export interface MapperOptions {
  /** Continue through a loop device's backing file to the disk underneath (VM images). */
  throughLoop: boolean
  /**
   * btrfs: give extents on mirrored profiles their other copies and their data checksums (manifest
   * feature data-checksums), so that the view verifies what it reads and falls back to another copy.
   */
  dataChecksums?: boolean
}

/** A span on raw disks and, for btrfs mirrored profiles, where its other copies are. */
export interface MappedSpan extends RawSpan {
  copies?: { raw: RawDisk; offset: number }[]
}

/** Resolves a range of the filesystem's own address space (what FIEMAP calls physical) to raw disks. */
type AddressSpace = (offset: number, length: number) => MappedSpan[]

/** btrfs checksum algorithms by BTRFS_CSUM_TYPE_*, as the manifest names them (only crc32c is verified). */
const BTRFS_CSUM_NAMES = ['crc32c', 'xxhash64', 'sha256', 'blake2b']

/** Reads the data checksums of a btrfs logical range (the csum tree), or says why it cannot. */
interface CsumSource {
  info: DataChecksums
  /** The checksums of [logical, logical + length), or undefined when the data has none (nodatasum). */
  read(fd: number, file: string, logical: number, length: number): Buffer | undefined
}
export class FileMapper {
  /** Disks met so far; an extent's `device` is an index into this list. */
  readonly disks: RawDisk[] = []
  private readonly diskIndex = new Map<string, number>()

  /** Set once an extent carries checksums: the manifest's `dataChecksums`. */
  dataChecksums: DataChecksums | undefined

  private constructor(private readonly resolve: AddressSpace, private readonly csums?: CsumSource) {}

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
    const mirrored = (logical: number, length: number) => {
      try {
        return layout.resolveMirrored(logical, length)
      } catch {
        // A chunk allocated since the layout was read: the flush that takes the image, or the owner's
        // writes while a clone set is taken file by file. Read the chunk tree again, once.
        layout = BtrfsLayout.read(mount.mountpoint)
        return layout.resolveMirrored(logical, length)
      }
    }
    const copiesToo = opts.dataChecksums === true
    const space: AddressSpace = (logical, length) =>
      mirrored(logical, length).flatMap((m) => alongside((copiesToo ? m.copies : m.copies.slice(0, 1)).map((c) => stack.resolve(c.dev, c.offset, m.length))))
    return new FileMapper(space, copiesToo ? csumSource(mount.mountpoint, layout) : undefined)
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
    if (reported.some((e) => e.flags & FIEMAP_EXTENT_DATA_INLINE)) return { kind: 'carry', why: 'inline' }
    for (const e of reported) {
      if (e.flags & FIEMAP_EXTENT_UNWRITTEN || e.logical >= size) continue
      if (e.flags & UNREADABLE_RAW) {
        throw new ExportError(`${file}: extent at ${e.logical} cannot be read raw (FIEMAP flags 0x${e.flags.toString(16)})`)
      }
    }
    // btrfs compressed extents: FIEMAP tells where an encoded stream starts, not how long it is, how
    // it is encoded or which of its decoded bytes the file uses. The file's extent items tell all of it.
    const written = reported.some((e) => e.flags & FIEMAP_EXTENT_ENCODED) ? this.itemsOf(fd, file) : reported
    const extents: Extent[] = []
    for (const e of written) {
      if ('compression' in e) {
        if (e.fileOffset < size) this.pushCompressed(extents, fd, file, e)
        continue
      }
      if (e.flags & FIEMAP_EXTENT_UNWRITTEN || e.logical >= size) continue
      const spans = this.resolve(e.physical, e.length)
      // Only mirrored data is checked: the copies are what a checksum chooses between.
      const csums = this.csums && spans.some((sp) => sp.copies) ? this.csums.read(fd, file, e.physical, e.length) : undefined
      let fileOffset = e.logical
      for (const span of spans) {
        if (span.raw) {
          const x: Extent = { fileOffset, device: this.indexOf(span.raw), deviceOffset: span.offset, length: span.length }
          const part = csums && this.csumPart(csums, fileOffset - e.logical, span.length, file)
          if (part) {
            if (span.copies?.length) x.copies = span.copies.map((c) => ({ device: this.indexOf(c.raw), deviceOffset: c.offset }))
            this.dataChecksums = this.csums!.info
          }
          this.push(extents, x, part)
        }
        fileOffset += span.length
      }
    }
    for (const x of extents) {
      const parts = this.parts.get(x)
      if (parts) x.csums = Buffer.concat(parts).toString('base64')
    }
    return { kind: 'extents', extents }
  }

  /** The file's written extents from its btrfs extent items (btrfs-items.ts). */
  private itemsOf(fd: number, file: string): (FiemapExtent | CompressedItem)[] {
    let items: BtrfsFileExtent[]
    try {
      items = linux.btrfsFileExtents(fd)
    } catch (err) {
      throw new ExportError(`${file}: cannot read its btrfs extent items: ${(err as Error).message}`)
    }
    return writtenExtents(items, file)
  }

  /**
   * A compressed extent: its whole encoded stream on one raw span (and each copy's), with btrfs's
   * checksums of it, which the view verifies before decoding. What cannot be so described is refused.
   */
  private pushCompressed(extents: Extent[], fd: number, file: string, z: CompressedItem): void {
    const where = `${file}: compressed extent at ${z.fileOffset} (logical ${z.logical}+${z.diskLength})`
    const spans = this.resolve(z.logical, z.diskLength)
    const span = spans[0]
    if (spans.length !== 1 || !span!.raw) {
      throw new ExportError(`${where}: the layers below btrfs split its encoded bytes (${spans.length} pieces: RAID0/RAID10 stripes, a striped or concatenated device); not supported`)
    }
    const csums = this.csums?.read(fd, file, z.logical, z.diskLength)
    if (csums === undefined) throw new ExportError(`${where}: has no btrfs data checksums to verify it with; not supported`)
    this.dataChecksums = this.csums!.info
    const { logical: _, ...fields } = z
    const x: Extent = { device: this.indexOf(span!.raw), deviceOffset: span!.offset, ...fields, csums: csums.toString('base64') }
    if (span!.copies?.length) x.copies = span!.copies.map((c) => ({ device: this.indexOf(c.raw), deviceOffset: c.offset }))
    extents.push(x)
  }

  /** Checksums of an extent's bytes while mapping, in pieces, joined once the file is mapped. */
  private readonly parts = new WeakMap<Extent, Buffer[]>()

  /** The checksums of `length` bytes at `offset` of a FIEMAP extent whose checksums are `csums`. */
  private csumPart(csums: Buffer, offset: number, length: number, file: string): Buffer {
    const { sectorSize } = this.csums!.info
    if (offset % sectorSize !== 0 || length % sectorSize !== 0) {
      throw new ExportError(`${file}: a layer below btrfs splits a checksummed extent at ${offset}+${length}, inside a sector of ${sectorSize} bytes`)
    }
    const per = CSUM_ALGORITHMS[this.csums!.info.algorithm]
    return csums.subarray((offset / sectorSize) * per, ((offset + length) / sectorSize) * per)
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

  /**
   * Append, joining an extent that continues the previous one on the same disk (stripes rejoined),
   * and whose copies, if any, continue the previous one's too; `csums` are the extent's checksums.
   */
  private push(extents: Extent[], e: Extent, csums: Buffer | undefined): void {
    const last = extents[extents.length - 1]
    const lastParts = last && this.parts.get(last)
    if (last && last.compression === undefined && last.device === e.device && last.fileOffset + last.length === e.fileOffset && last.deviceOffset + last.length === e.deviceOffset &&
      (lastParts === undefined) === (csums === undefined) && copiesContinue(last, e)) {
      if (csums) lastParts!.push(csums)
      last.length += e.length
    } else {
      extents.push(e)
      if (csums) this.parts.set(e, [csums])
    }
  }
}

function copiesContinue(a: Extent, b: Extent): boolean {
  const ca = a.copies ?? []
  const cb = b.copies ?? []
  return ca.length === cb.length && ca.every((c, k) => c.device === cb[k]!.device && c.deviceOffset + a.length === cb[k]!.deviceOffset)
}

/**
 * Spans of every copy of the same bytes, each resolved down the stack on its own, cut where any of
 * them is cut: each piece is copy 0's span with the other copies' at the same place. A copy that is
 * a hole there (a lower layer unmapped) is left out of that piece.
 */
export function alongside(copies: RawSpan[][]): MappedSpan[] {
  const out: MappedSpan[] = []
  const at = copies.map(() => ({ i: 0, used: 0 }))
  const [first] = copies
  while (at[0]!.i < first!.length) {
    const n = Math.min(...copies.map((list, k) => list[at[k]!.i]!.length - at[k]!.used))
    const here = copies.map((list, k) => ({ raw: list[at[k]!.i]!.raw, offset: list[at[k]!.i]!.offset + at[k]!.used }))
    const others = here.slice(1).filter((c): c is { raw: RawDisk; offset: number } => c.raw !== null)
    out.push(here[0]!.raw && others.length > 0 ? { ...here[0]!, length: n, copies: others } : { ...here[0]!, length: n })
    copies.forEach((list, k) => {
      const a = at[k]!
      a.used += n
      if (a.used === list[a.i]!.length) {
        a.i++
        a.used = 0
      }
    })
  }
  return out
}

/** The checksums of a mounted btrfs filesystem, read per extent from its csum tree. */
function csumSource(mountpoint: string, layout: BtrfsLayout): CsumSource {
  const { type, size, sectorSize, nodeSize } = layout.csumInfo
  const name = BTRFS_CSUM_NAMES[type] ?? `type ${type}`
  return {
    info: { algorithm: 'crc32c', sectorSize },
    read(fd, file, logical, length) {
      if (name !== 'crc32c' || size !== 4) {
        throw new ExportError(`${mountpoint}: btrfs checksums data with ${name}; extfs verifies mirrored and compressed data with crc32c only, so it cannot export this filesystem's mirrored or compressed data safely`)
      }
      let got: { csums: Buffer; covered: number }
      try {
        got = linux.btrfsCsums(fd, logical, length, sectorSize, size, nodeSize)
      } catch (err) {
        throw new ExportError(`${file}: cannot read the btrfs checksums of logical ${logical}+${length}: ${(err as Error).message}`)
      }
      const sectors = length / sectorSize
      if (got.covered === 0) return undefined // nodatasum (nodatacow) data: nothing to verify with
      if (got.covered !== sectors) throw new ExportError(`${file}: btrfs has checksums for ${got.covered} of the ${sectors} sectors at logical ${logical}`)
      return got.csums
    },
  }
}
