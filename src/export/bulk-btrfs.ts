// The btrfs bulk path of `extfs export` (issue 14): instead of walking the snapshot through the VFS,
// the C mapper (native/export/btrfs_bulk.c) sweeps the read-only snapshot's fs tree with
// BTRFS_IOC_TREE_SEARCH_V2 and writes the manifest's version 2 body. This module decides whether it
// applies, composes the map from btrfs logical addresses to raw disks (the chunk map and the device
// stack, through the same code the VFS mapper uses), and runs it.
import fs from 'node:fs'
import type { DataChecksums, Extent } from '../manifest/types'
import { linux, type BtrfsBulkResult, type BulkProgress, type BtrfsSegment } from '../linux'
import type { MountEntry } from '../mapping/mountinfo'
import { BtrfsLayout } from '../mapping/btrfs'
import { DeviceStack } from '../mapping/stack'
import { alongside } from '../mapping/mapper'
import { devKey, type RawDisk } from '../mapping/span'
import { BulkRefused, bulkError, mountsUnder } from './bulk'

/** As many segments as native/export/btrfs_bulk.h BB_MAX_SEGMENTS (RAID0/10: one per 64 KiB stripe unit). */
const MAX_SEGMENTS = 1_000_000

export interface BtrfsBulkTarget {
  mount: MountEntry
  /** The exported directory inside the snapshot (the hold's walk path). */
  walkPath: string
  /** st_dev of the snapshot. */
  dev: bigint
  /** Absolute paths never entered (the image directory), as the walker's skip. */
  skip: Iterable<string>
  throughLoop: boolean
  carryMax: number
  onProgress?: BulkProgress
}

export interface BtrfsBulkBody {
  result: BtrfsBulkResult
  disks: RawDisk[]
  root: number
  features: string[]
  dataChecksums?: DataChecksums
  /** Ranges to fingerprint, by index into `disks`, checksummed ones with their csums. */
  samples: Extent[]
}

/**
 * Why the bulk mapper cannot export this, or undefined when it can; checked before the image is taken.
 * Only a read-only btrfs snapshot: its tree cannot change while it is swept (a freeze would not stop a
 * transaction commit from rewriting the tree under the search, and the top level has no snapshot).
 */
export function whyNotBtrfsBulk(mount: MountEntry, realPaths: string[], mechanism: string | undefined): string | undefined {
  if (mount.fsType !== 'btrfs') return `filesystem type ${mount.fsType}`
  if (mechanism !== 'btrfs-snapshot') return 'only a read-only btrfs snapshot (--frozen-image snapshot of a subvolume) holds the tree still'
  // The POSIX ACL xattrs are in the tree either way; with noacl the kernel does not serve them.
  if (mount.superOptions.includes('noacl')) return 'mounted with noacl'
  if (realPaths.length !== 1) return 'more than one path'
  if (!fs.lstatSync(realPaths[0]!).isDirectory()) return `${realPaths[0]} is not a directory`
  const [under] = mountsUnder(realPaths[0]!)
  if (under !== undefined) return `${under} is a mount point inside the exported tree (the walker serves it as an empty directory)`
  return undefined
}

/**
 * btrfs's logical address space as pieces whose every copy lies unbroken on one raw disk: each chunk
 * through resolveMirrored (btrfs-chunks.ts) and each copy down the device stack, cut where any copy is
 * cut (mapper.ts alongside), neighbours whose copies all continue each other joined.
 */
export function logicalSegments(layout: BtrfsLayout, throughLoop: boolean): { segments: BtrfsSegment[]; disks: RawDisk[] } {
  const stack = new DeviceStack({ throughLoop })
  const disks: RawDisk[] = []
  const index = new Map<string, number>()
  const diskOf = (raw: RawDisk) => {
    let i = index.get(devKey(raw))
    if (i === undefined) {
      i = disks.push(raw) - 1
      index.set(devKey(raw), i)
    }
    return i
  }
  const segments: BtrfsSegment[] = []
  for (const chunk of layout.chunks.chunks) {
    let logical = chunk.logical
    for (const m of layout.resolveMirrored(chunk.logical, chunk.length)) {
      for (const piece of alongside(m.copies.map((c) => stack.resolve(c.dev, c.offset, m.length)))) {
        if (!piece.raw) throw new BulkRefused(`btrfs logical ${logical}+${piece.length} is on no raw disk (thin or sparse backing)`)
        const copies = [{ disk: diskOf(piece.raw), offset: piece.offset }, ...(piece.copies ?? []).map((c) => ({ disk: diskOf(c.raw), offset: c.offset }))]
        push(segments, { logical, length: piece.length, copies })
        if (segments.length > MAX_SEGMENTS) throw new BulkRefused(`the chunk map has more than ${MAX_SEGMENTS} pieces on raw disks`)
        logical += piece.length
      }
    }
  }
  return { segments, disks }
}

function push(out: BtrfsSegment[], s: BtrfsSegment): void {
  const last = out[out.length - 1]
  const continues = last && last.logical + last.length === s.logical && last.copies.length === s.copies.length &&
    last.copies.every((c, k) => c.disk === s.copies[k]!.disk && c.offset + last.length === s.copies[k]!.offset)
  if (continues) last.length += s.length
  else out.push(s)
}

/** Inode numbers of the skipped paths inside the snapshot: directories (one name each), else declined. */
function skippedDirs(skip: Iterable<string>, dev: bigint): number[] {
  const out: number[] = []
  for (const p of skip) {
    const st = fs.lstatSync(p, { bigint: true, throwIfNoEntry: false })
    if (!st || st.dev !== dev) continue
    if (!st.isDirectory()) throw new BulkRefused(`${p}: a skipped path that is not a directory`)
    out.push(Number(st.ino))
  }
  return out
}

/** The feature flags of the body, in the order the walker's manifest lists them (export.ts features()). */
function featuresOf(r: BtrfsBulkResult): string[] {
  return [
    ...(r.inlineData ? ['inline-data'] : []), ...(r.dataChecksums ? ['data-checksums'] : []),
    ...(r.byteNames ? ['byte-names'] : []), ...(r.compressedExtents ? ['compressed-extents'] : []),
  ]
}

/**
 * Run the bulk mapper on the snapshot, writing the body to `bodyPath`. Throws BulkRefused when it
 * declines, and also when it fails (the carry limit, checksums extfs cannot use): the walker then meets
 * the same problem and reports it in its own words, naming the file, where the C side knows only an
 * inode number. Anything else thrown means export must fail.
 */
export function mapBtrfsBulk(t: BtrfsBulkTarget, bodyPath: string): BtrfsBulkBody {
  // Read with the snapshot taken, as FileMapper reads it: the chunks the snapshot's flush allocated are in.
  const layout = BtrfsLayout.read(t.mount.mountpoint)
  const { segments, disks } = logicalSegments(layout, t.throughLoop)
  const { type, size, sectorSize, nodeSize } = layout.csumInfo
  const treeFd = fs.openSync(t.walkPath, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW)
  const fd = fs.openSync(bodyPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600)
  // INODE records wait in an unlinked scratch file beside the body, never on the snapshot's filesystem.
  const scratch = `${bodyPath}.inodes`
  const inodesFd = fs.openSync(scratch, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_EXCL, 0o600)
  fs.rmSync(scratch)
  let result: BtrfsBulkResult
  let root: number
  try {
    root = Number(fs.fstatSync(treeFd, { bigint: true }).ino)
    result = linux.btrfsBulkMap({
      treeFd, root, skip: skippedDirs(t.skip, t.dev), segments, carryMax: t.carryMax, fd, inodesFd, sectorSize, nodeSize, csumType: type, csumSize: size, onProgress: t.onProgress,
    })
    fs.fsyncSync(fd)
  } catch (err) {
    throw bulkError(err, (message) => new BulkRefused(`failed: ${message}`))
  } finally {
    fs.closeSync(inodesFd)
    fs.closeSync(fd)
    fs.closeSync(treeFd)
  }
  const samples = result.samples.map((s): Extent => ({
    fileOffset: 0, device: s.disk, deviceOffset: s.deviceOffset, length: s.length, ...(s.csums ? { csums: s.csums.toString('base64') } : {}),
  }))
  const dataChecksums: DataChecksums | undefined = result.dataChecksums ? { algorithm: 'crc32c', sectorSize } : undefined
  // Only the disks the extents reach are the manifest's devices, numbered as met (as the walker's).
  return { result, disks: result.disks.map((d) => disks[d]!), root, features: featuresOf(result), dataChecksums, samples }
}
