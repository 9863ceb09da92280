// The ext4 bulk path of `extfs export`: instead of walking the frozen tree through the VFS, the C
// mapper (native/export/ext4.c) reads the filesystem's metadata from its block device and writes the
// manifest's version 2 body; this module decides whether it applies, gives it the linear map from
// the filesystem's bytes to raw disks, and assembles the manifest around the body.
import fs from 'node:fs'
import type { Extent } from '../manifest/types'
import { linux, type BulkProgress, type Ext4BulkResult, type Ext4Segment } from '../linux'
import type { MountEntry } from '../mapping/mountinfo'
import { DeviceStack } from '../mapping/stack'
import { devKey, type RawDisk } from '../mapping/span'
import { ExportError } from '../errors'
import { BulkRefused, bulkError, mountsUnder } from './bulk'

/** More pieces than this is not "a linear map" (thin pools, fragmented loop backing files): the VFS walker maps those. */
const MAX_SEGMENTS = 4096

export interface BulkTarget {
  mount: MountEntry
  /** The exported paths (real paths) and how the image is held. */
  realPaths: string[]
  frozenImage: string
  /** Absolute paths never entered (image directories, the journal), as the walker's skip. */
  skip: Iterable<string>
  throughLoop: boolean
  carryMax: number
  onProgress?: BulkProgress
}

export interface BulkBody {
  result: Ext4BulkResult
  disks: RawDisk[]
  root: number
  /** Extents to fingerprint, by index into `disks`. */
  samples: Extent[]
}

/**
 * Why the bulk mapper cannot export this, or undefined when it can. Checked before the image is taken.
 * Only a freeze: it leaves the on-disk metadata exactly the kernel's (journal flushed, inodes written).
 * `none` is not accepted even on a read-only mount, where it would be true, because nothing keeps
 * the mount read-only while the device is read; `snapshot` does not apply to ext4.
 */
export function whyNotBulk(t: BulkTarget): string | undefined {
  const why = whyNotExt4Mapper(t)
  if (why !== undefined) return why
  // Without these the kernel's listxattr hides user.* or the ACLs that the blocks hold.
  for (const opt of ['noacl', 'nouser_xattr']) if (t.mount.superOptions.includes(opt)) return `mounted with ${opt}`
  const under = mountsUnder(t.realPaths[0]!)
  if (under.length > 0) return `${under[0]} is a mount point inside the exported tree`
  return undefined
}

/**
 * What the mapper itself needs, or why it cannot run: one directory of an ext4 filesystem on a block
 * device, held by a freeze. Remap asks only this: the extents it compares are the blocks' whatever a
 * mount or a mount option would show on top of them (whyNotBulk's other checks are about the view).
 */
export function whyNotExt4Mapper(t: Pick<BulkTarget, 'mount' | 'realPaths' | 'frozenImage'>): string | undefined {
  if (t.mount.fsType !== 'ext4') return `filesystem type ${t.mount.fsType}`
  if (t.frozenImage !== 'freeze') return `--frozen-image ${t.frozenImage} (only freeze holds the on-disk metadata still)`
  if (!t.mount.source.startsWith('/dev/')) return `mount source ${t.mount.source} is not a block device`
  if (t.realPaths.length !== 1) return 'more than one path'
  const st = fs.lstatSync(t.realPaths[0]!)
  if (!st.isDirectory()) return `${t.realPaths[0]} is not a directory`
  return undefined
}

/** Mount points strictly below `dir`: the walker serves them as empty directories, the blocks hold what is under them. */
/**
 * The filesystem's block device as pieces on raw disks (and holes), or a refusal when the stack is more
 * than MAX_SEGMENTS pieces. Resolved once, with the image held, like FileMapper's stack.
 */
export function linearMap(mount: MountEntry, throughLoop: boolean): { segments: Ext4Segment[]; disks: RawDisk[] } {
  const fd = fs.openSync(mount.source, 'r')
  let size: number
  try {
    size = linux.blockDeviceSize(fd)
  } finally {
    fs.closeSync(fd)
  }
  const stack = new DeviceStack({ throughLoop })
  const spans = stack.resolve({ major: mount.major, minor: mount.minor }, 0, size)
  if (spans.length > MAX_SEGMENTS) throw new BulkRefused(`${mount.source} lies on ${spans.length} pieces of raw disks (more than ${MAX_SEGMENTS})`)
  const disks: RawDisk[] = []
  const index = new Map<string, number>()
  const segments: Ext4Segment[] = []
  let fsOffset = 0
  for (const s of spans) {
    if (!s.raw) {
      // Unbacked (a loop backing file's hole, thin space never written): reads as zeros, as FileMapper leaves it out.
      segments.push({ fsOffset, length: s.length, hole: true })
      fsOffset += s.length
      continue
    }
    const key = devKey(s.raw)
    let disk = index.get(key)
    if (disk === undefined) {
      disk = disks.push(s.raw) - 1
      index.set(key, disk)
    }
    segments.push({ fsOffset, length: s.length, disk, diskOffset: s.offset })
    fsOffset += s.length
  }
  return { segments, disks }
}

/** The feature flags of an ext4 body, as export.ts features() lists the walker's. */
export function ext4Features(r: Ext4BulkResult): string[] {
  return [...(r.inlineData ? ['inline-data'] : []), ...(r.byteNames ? ['byte-names'] : [])]
}

/** Inode numbers of the skipped paths that exist on the exported filesystem. */
function skippedInodes(skip: Iterable<string>, dev: number): number[] {
  const out: number[] = []
  for (const p of skip) {
    const st = fs.lstatSync(p, { throwIfNoEntry: false })
    if (st && st.dev === dev) out.push(st.ino)
  }
  return out
}

/**
 * Run the bulk mapper on the held image, writing the body to `bodyPath`. Throws BulkRefused when it
 * declines (the caller may fall back to the walker), ExportError when export must fail.
 */
export function mapBulk(t: BulkTarget, bodyPath: string): BulkBody {
  const { segments, disks } = linearMap(t.mount, t.throughLoop)
  const st = fs.statSync(t.realPaths[0]!)
  const fd = fs.openSync(bodyPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600)
  let result: Ext4BulkResult
  try {
    // Not fsync'd: a scratch file that assembleV2 reads back at once into the manifest, which is.
    result = linux.ext4BulkMap({ device: t.mount.source, root: st.ino, skip: skippedInodes(t.skip, st.dev), segments, carryMax: t.carryMax, fd, onProgress: t.onProgress })
  } catch (err) {
    throw bulkError(err, (message) => new ExportError(`${t.realPaths[0]}: ${message}`))
  } finally {
    fs.closeSync(fd)
  }
  const samples = result.samples.map((s) => ({ fileOffset: 0, device: s.disk, deviceOffset: s.deviceOffset, length: s.length }))
  // The devices are the disks extents reach, as the walker's (every disk used has a sample: its first
  // extent); those before the last one used stay so that the body's disk indices hold.
  const used = samples.reduce((n, s) => Math.max(n, s.device + 1), 0)
  return { result, disks: disks.slice(0, used), root: st.ino, samples }
}
