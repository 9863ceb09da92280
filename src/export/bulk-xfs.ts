// The XFS bulk path of `extfs export`: instead of walking the frozen tree through the VFS, the C mapper
// (native/export/xfs_bulk.c) reads every inode with XFS_IOC_BULKSTAT and every extent from the
// reverse map (FS_IOC_GETFSMAP), and writes the manifest's version 2 body. This module decides whether
// it applies, gives it the linear map of the data device onto raw disks (as the ext4 one), and runs it.
import fs from 'node:fs'
import type { Extent } from '../manifest/types'
import { linux, type BulkProgress, type XfsBulkResult } from '../linux'
import type { MountEntry } from '../mapping/mountinfo'
import type { RawDisk } from '../mapping/span'
import { ExportError } from '../errors'
import { BulkRefused, bulkError, mountsUnder } from './bulk'
import { linearMap } from './bulk-ext4'

export interface XfsBulkTarget {
  mount: MountEntry
  /** The exported path (a real path) and how the image is held. */
  realPaths: string[]
  frozenImage: string
  /** Absolute paths never entered (image directories, the journal), as the walker's skip. */
  skip: Iterable<string>
  throughLoop: boolean
  onProgress?: BulkProgress
}

export interface XfsBulkBody {
  result: XfsBulkResult
  disks: RawDisk[]
  root: number
  /** Extents to fingerprint, by index into `disks`. */
  samples: Extent[]
}

/**
 * Why the bulk mapper cannot export this, or undefined when it can; checked before the image is taken.
 * Only a freeze holds every inode and extent still while bulkstat and GETFSMAP sweep them; a clone set
 * is made file by file during the walk (the clones are what is mapped), `none` leaves nothing holding
 * a read-write mount still.
 */
export function whyNotXfsBulk(t: XfsBulkTarget): string | undefined {
  if (t.mount.fsType !== 'xfs') return `filesystem type ${t.mount.fsType}`
  if (t.frozenImage !== 'freeze') return `--frozen-image ${t.frozenImage} (only freeze holds the whole filesystem still; a clone set is made file by file)`
  if (!t.mount.source.startsWith('/dev/')) return `mount source ${t.mount.source} is not a block device`
  // A realtime or external log device: the data device's linear map is not the whole filesystem.
  if (t.mount.superOptions.some((o) => o.startsWith('rtdev='))) return 'a realtime device'
  // Handles are decoded against the mount: inodes outside a bound subdirectory would not open.
  if (t.mount.root !== undefined && t.mount.root !== '/') return `a bind mount of ${t.mount.root} (directories are opened by handle, which a bound subdirectory does not serve for all inodes)`
  if (t.realPaths.length !== 1) return 'more than one path'
  if (!fs.lstatSync(t.realPaths[0]!).isDirectory()) return `${t.realPaths[0]} is not a directory`
  const [under] = mountsUnder(t.realPaths[0]!)
  if (under !== undefined) return `${under} is a mount point inside the exported tree (the walker serves it as an empty directory)`
  return undefined
}

/** Inode numbers of the skipped paths on the exported filesystem: directories, else declined (the mapper skips directories only). */
function skippedDirs(skip: Iterable<string>, dev: number): number[] {
  const out: number[] = []
  for (const p of skip) {
    const st = fs.lstatSync(p, { throwIfNoEntry: false })
    if (!st || st.dev !== dev) continue
    if (!st.isDirectory()) throw new BulkRefused(`${p}: a skipped path inside the tree that is not a directory`)
    out.push(st.ino)
  }
  return out
}

/**
 * Run the bulk mapper on the frozen filesystem, writing the body to `bodyPath`. Throws BulkRefused when
 * it declines (the caller may fall back to the walker), ExportError when export must fail.
 */
/** The manifest features an XFS body needs (XFS has no inline data the view could need, no data checksums). */
export function xfsFeatures(r: XfsBulkResult): string[] {
  return r.byteNames ? ['byte-names'] : []
}

export function mapXfsBulk(t: XfsBulkTarget, bodyPath: string): XfsBulkBody {
  const { segments, disks } = linearMap(t.mount, t.throughLoop)
  const rootFd = fs.openSync(t.realPaths[0]!, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW)
  let fd: number | undefined
  let result: XfsBulkResult
  let root: number
  try {
    const st = fs.fstatSync(rootFd)
    root = st.ino
    const skip = skippedDirs(t.skip, st.dev).filter((ino) => ino !== root)
    fd = fs.openSync(bodyPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600)
    // Not fsync'd: a scratch file that assembleV2 reads back at once into the manifest, which is.
    // EXTFS_XFS_WINDOW_EXTENTS: a small window of extents, so that tests exercise many GETFSMAP sweeps.
    const window = process.env.EXTFS_XFS_WINDOW_EXTENTS
    result = linux.xfsBulkMap({ device: t.mount.source, rootFd, root, skip, segments, fd, onProgress: t.onProgress, ...(window ? { windowExtents: Number(window) } : {}) })
  } catch (err) {
    throw bulkError(err, (message) => new ExportError(`${t.realPaths[0]}: ${message}`))
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
    fs.closeSync(rootFd)
  }
  const samples = result.samples.map((s) => ({ fileOffset: 0, device: s.disk, deviceOffset: s.deviceOffset, length: s.length }))
  // As the ext4 mapper: the disks before the last one used stay, so that the body's disk indices hold.
  const used = samples.reduce((n, s) => Math.max(n, s.device + 1), 0)
  return { result, disks: disks.slice(0, used), root, samples }
}
