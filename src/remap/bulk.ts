// The bulk path of `extfs remap` (docs/remap.md, "Remapping a bulk-mapped image"): a format 2 image
// whose filesystem a bulk mapper reads (ext4 or XFS frozen, a read-only btrfs snapshot) is mapped again by that
// mapper into a scratch body beside the manifest, then joined by inode number with the manifest's
// INODE records and the files the delta chain replaced (join.ts). Nothing proportional to the image is
// held: the two bodies stream, the deltas' files and the changed files are all that is kept per file.
// The result is the delta the VFS path would publish for the same moves.
import fs from 'node:fs'
import path from 'node:path'
import type { DataChecksums, Device, FrozenImage, ManifestHeader } from '../manifest/types'
import type { ConfigRecord, RecordMapping } from '../configid/record'
import type { MountEntry } from '../mapping/mountinfo'
import type { RawDisk } from '../mapping/span'
import type { DeltaFile } from '../delta/types'
import type { ImageMap } from '../delta/chain'
import type { TrailerCounts } from '../manifest/v2/format'
import { openBodyV2, openManifestV2, sameBodyV2, type V2Inodes } from '../manifest/v2/read'
import { ext4Features, mapBulk, whyNotExt4Mapper } from '../export/bulk-ext4'
import { mapBtrfsBulk } from '../export/bulk-btrfs'
import { mapXfsBulk, whyNotXfsBulk, xfsFeatures } from '../export/bulk-xfs'
import { BulkRefused } from '../export/bulk'
import { inSnapshot } from '../export/hold'
import { imagesRootOf } from '../frozen/image-dir'
import { SNAPSHOT_NAME } from '../frozen/discard'
import { journalPathOf } from '../frozen/journal'
import { ExportError, StaleError } from '../errors'
import type { RemapCache } from './cache'
import { assignDevices, describeNewDevices, globalIndex, inNewMap, knownDeviceChanges } from './devices'
import { checkSameChecksums } from './image'
import { joinByIno, type JoinResult } from './join'
import { publishDelta, type RemapResult } from './publish'

/** The image being remapped, as remap.ts found it. */
export interface ImageToRemap {
  manifestFile: string
  header: ManifestHeader
  manifestBytes: number
  recordFile: string
  record: ConfigRecord
  mapping: RecordMapping
  mount: MountEntry
}

/** A fresh body a bulk mapper wrote, and what reading it needs. */
interface FreshBody {
  disks: RawDisk[]
  root: number
  features: string[]
  dataChecksums?: DataChecksums
  counts: TrailerCounts
}

/**
 * Whether a bulk mapper maps images of this kind (as export chooses it): ext4 or XFS held by a freeze,
 * a read-only btrfs snapshot. Other format 2 images (a clone set, kind none) stay with the VFS path.
 */
export function bulkMapsKind(f: FrozenImage): boolean {
  return ((f.fsType === 'ext4' || f.fsType === 'xfs') && f.kind === 'freeze') || (f.fsType === 'btrfs' && f.kind === 'snapshot' && f.mechanism === 'btrfs-snapshot')
}

/**
 * Remap through the bulk mapper: the result, or why the mapper declined (the caller falls back to the
 * VFS path). Fails as the VFS path fails on everything else.
 */
export function remapBulk(image: ImageToRemap, cache: RemapCache, opts: { key?: Buffer; warn: (m: string) => void }): { result?: RemapResult; declined?: string } {
  const { manifestFile, header } = image
  const body = path.join(path.dirname(manifestFile), `.${path.basename(manifestFile)}.remap-body-${process.pid}`)
  try {
    let fresh: FreshBody
    try {
      fresh = mapFresh(image, body)
    } catch (err) {
      if (err instanceof BulkRefused) return { declined: err.message }
      throw err
    }
    cache.dropWholeMap() // bounded by the deltas from now on, whatever the VFS path kept before
    const chain = cache.currentChain(manifestFile, image.recordFile, image.record, opts.key)
    checkSameChecksums(fresh.dataChecksums, header.dataChecksums, manifestFile)
    if (fresh.root !== header.root) throw new ExportError(`${manifestFile}: the frozen image's tree differs from its manifest (its root is inode ${fresh.root} now, ${header.root} in the manifest): cannot remap`)
    const known = assignDevices(fresh.disks, chain.devices, chain.retired)
    const unchanged = (compared: 'bytes' | 'inodes'): RemapResult => ({ state: 'unchanged', configId: chain.configId, manifestBytes: image.manifestBytes, mapper: 'bulk', compared })
    if (chain.seq === 0 && known.every((d, i) => d === i) && sameBytes(image, cache, body, opts.key)) return { result: unchanged('bytes') }
    const joined = joinStreams(image, opts.key, body, fresh, (was, now) =>
      joinByIno({ was: was.inodes, now: now.inodes, overlay: chain.files, known: (i) => known[i] ?? -1, retired: chain.retired }))
    if (joined.changed.length === 0) return { result: unchanged('inodes') }
    cache.noteFiles(joined.before) // the delta's check needs their sizes; the next remap, their places before it
    return { result: publishJoined(image, chain, fresh, known, joined, opts) }
  } finally {
    fs.rmSync(body, { force: true })
  }
}

/**
 * With no delta yet and every disk the manifest's own device of that index, a fresh body byte for byte
 * the manifest's maps every file as the manifest does; mappers write the same bytes for the same
 * filesystem, so an unchanged image costs one read of the manifest instead of decoding both. The
 * signature was checked when the cache read the file: a file unchanged since (before and after the
 * comparison) holds the bytes checked, else they are checked again in the same pass.
 */
function sameBytes(image: ImageToRemap, cache: RemapCache, body: string, key: Buffer | undefined): boolean {
  const verified = cache.stillVerified(image.manifestFile)
  return sameBodyV2(image.manifestFile, body, verified ? undefined : key) && (!verified || cache.stillVerified(image.manifestFile))
}

/**
 * The delta of what the join found moved, as the VFS path writes it: only the disks the map after the
 * delta uses become (or stay) devices, numbered as the VFS path numbers them; proofs from the spreads.
 */
function publishJoined(
  image: ImageToRemap, chain: ImageMap, fresh: FreshBody, known: number[], joined: JoinResult, opts: { key?: Buffer; warn: (m: string) => void },
): RemapResult {
  const used = fresh.disks.map((_, i) => i).filter((i) => joined.usedDisks.has(i))
  const rawDisks = used.map((i) => fresh.disks[i]!)
  const assigned = used.map((i) => known[i]!)
  const index = globalIndex(assigned, chain.devices.length)
  const files = joined.changed.map((f): DeltaFile => f.extents ? { ino: f.ino, extents: f.extents.map((e) => inNewMap(e, (i) => index(used.indexOf(i)))) } : f)
  const checksums = image.header.dataChecksums
  const newDevices = describeNewDevices(rawDisks, assigned, chain.devices, files, checksums)
  const devices = knownDeviceChanges(chain, joined.touched, (d) => joined.after.get(d)?.extents() ?? [], rawDisks, assigned, checksums, opts.warn)
  return publishDelta({
    manifestFile: image.manifestFile, recordFile: image.recordFile, record: image.record, context: chain.context(), files, newDevices, ...devices,
    checksums, key: opts.key, manifestBytes: image.manifestBytes, mapper: 'bulk', compared: 'inodes',
  })
}

/** Run `join` over the manifest's body and the fresh one, both closed afterwards, whatever happens. */
function joinStreams(image: ImageToRemap, key: Buffer | undefined, body: string, fresh: FreshBody, join: (was: V2Inodes, now: V2Inodes) => JoinResult): JoinResult {
  const was = openManifestV2(image.manifestFile, key, { entries: false })
  try {
    if (was.header.configId !== image.header.configId) throw new StaleError(`${image.manifestFile} was replaced while remapping (now image ${was.header.configId}): nothing done`)
    const now = openBodyV2(body, freshHeader(image.header, fresh), fresh.counts, { entries: false })
    try {
      return join(was, now)
    } finally {
      now.close()
    }
  } finally {
    was.close()
  }
}

/**
 * The header the fresh body is read under: the manifest's, with the disks the mapper met as its devices
 * (extents are checked inside them) and the features and checksums it found.
 */
function freshHeader(h: ManifestHeader, fresh: FreshBody): Record<string, unknown> {
  const { signature: _signature, dataChecksums: _checksums, ...rest } = h
  const devices: Device[] = fresh.disks.map((d, i) => ({ id: `disk${i}`, size: d.size, identity: {}, fingerprints: [] }))
  return { ...rest, version: 2, features: fresh.features, devices, root: fresh.root, ...(fresh.dataChecksums ? { dataChecksums: fresh.dataChecksums } : {}) }
}

/**
 * The image mapped again by its filesystem's bulk mapper into `body`, as export ran it (same paths,
 * skips and mapping options). BulkRefused when it does not apply or declines. Mounts inside the
 * exported tree do not matter here (export declines them for the view's sake): the ext4 mapper reads
 * the device beneath them, the btrfs one the snapshot, which no mount covers.
 */
function mapFresh(image: ImageToRemap, body: string): FreshBody {
  const { header, mount, mapping } = image
  const f = header.frozenImage
  const realPaths = header.source.paths
  const opts = { throughLoop: mapping.throughLoop, carryMax: mapping.carryMax }
  if (f.fsType === 'ext4') {
    const t = { mount, realPaths, frozenImage: f.kind, skip: [journalPathOf(image.manifestFile)], ...opts }
    const why = whyNotExt4Mapper(t)
    if (why !== undefined) throw new BulkRefused(why)
    const b = mapBulk(t, body)
    return { disks: b.disks, root: b.root, features: ext4Features(b.result), counts: b.result }
  }
  if (f.fsType === 'xfs') {
    const t = { mount, realPaths, frozenImage: f.kind, skip: [journalPathOf(image.manifestFile)], throughLoop: mapping.throughLoop }
    const why = whyNotXfsBulk(t)
    if (why !== undefined) throw new BulkRefused(why)
    const b = mapXfsBulk(t, body)
    return { disks: b.disks, root: b.root, features: xfsFeatures(b.result), counts: b.result }
  }
  if (mount.fsType === 'btrfs' && realPaths.length === 1) {
    const snapshot = path.join(f.imagePath!, SNAPSHOT_NAME)
    const dev = fs.statSync(snapshot, { bigint: true }).dev
    const root = subvolumeRootOf(snapshot, dev, realPaths[0]!, header.root)
    const { walkPaths, skip } = inSnapshot(root, snapshot, realPaths, imagesRootOf(f.mountpoint))
    const b = mapBtrfsBulk({ mount, walkPath: walkPaths[0]!, dev, skip: [...skip, journalPathOf(image.manifestFile)], ...opts }, body)
    return { disks: b.disks, root: b.root, features: b.features, dataChecksums: b.dataChecksums, counts: b.result }
  }
  throw new BulkRefused(realPaths.length === 1 ? `no bulk mapper reads a ${mount.fsType} image held by ${f.kind}` : 'more than one path')
}

/**
 * Where the snapshot's subvolume was mounted on this host when export took it, found without the live
 * tree (which may have changed since): the ancestor of the exported path whose remainder names, inside
 * the snapshot, the manifest's root directory. A directory has one name, so one ancestor fits at most.
 */
function subvolumeRootOf(snapshot: string, dev: bigint, exported: string, rootIno: number): string {
  const parts = exported.split('/').filter(Boolean)
  for (let i = parts.length; i >= 0; i--) {
    const st = fs.lstatSync(path.join(snapshot, ...parts.slice(i)), { bigint: true, throwIfNoEntry: false })
    if (st?.isDirectory() && st.dev === dev && st.ino === BigInt(rootIno)) return '/' + parts.slice(0, i).join('/')
  }
  throw new BulkRefused(`the exported directory ${exported} (inode ${rootIno}) is not found in the snapshot ${snapshot}`)
}
