// `extfs remap`: map every regular file of a frozen image again and publish what moved (docs/remap.md).
// Blocks of an image move while it exists (xfs_fsr on clones, btrfs balance or replace). The current
// map (manifest ⊕ the record's deltas) is compared file by file with a fresh mapping; the files whose
// extents differ go into a new delta with their complete new extent lists, disks the current map does
// not know become new devices, and the record moves to a new config ID. Order for readers on the other
// host: the delta file first (atomically), then the record (atomically), so a record's config ID always
// has its delta on storage.
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { DataChecksums, Device, Extent, FrozenImage } from '../manifest/types'
import type { RawDisk } from '../mapping/span'
import { readRecord, recordPath, writeRecord, type RecordMapping } from '../configid/record'
import { writeDeltaFile } from '../delta/io'
import { devicesOfExtent, type FileLocation, type ImageMap } from '../delta/chain'
import { RemapCache, type FileTable } from './cache'
import type { ManifestHeader } from '../manifest/types'
import { decodeName, hostPath } from '../manifest/names'
import { signDelta } from '../delta/sign'
import { DELTA_FORMAT, DELTA_VERSION, type Delta, type DeltaFile, type DeviceProof } from '../delta/types'
import { readMountTable, type MountEntry } from '../mapping/mountinfo'
import { FileMapper, type FileMapping } from '../mapping/mapper'
import { identitiesMatch, probeIdentity } from '../device/identity'
import { RawDevice } from '../device/reader'
import { extentsOnDevice, takeFingerprints } from '../device/fingerprint'
import { imagesRootOf } from '../frozen/image-dir'
import { SNAPSHOT_NAME } from '../frozen/discard'
import { DEFAULT_CARRY_MAX } from '../export/export'
import { ExportError, StaleError } from '../errors'
import { processAlive } from '../process'

export interface RemapOptions {
  /** Shared key: the manifest and every delta must be signed with it, and the new delta is. */
  key?: Buffer
  warn: (m: string) => void
  /** What the last remaps of this image read (`extfs serve` keeps one per image); none: read everything. */
  cache?: RemapCache
}

export interface RemapResult {
  /** unchanged: nothing moved, nothing written. released: the record says released, nothing written. */
  state: 'unchanged' | 'remapped' | 'released'
  /** The config ID now current (the new one when remapped; the record's when released). */
  configId: string
  delta?: Delta
  deltaPath?: string
  /** Size of the delta file written, bytes. */
  deltaBytes?: number
  /** Size of the manifest file, bytes: what a full re-export would publish again. */
  manifestBytes: number
}

export function remapImage(manifestPath: string, opts: RemapOptions): RemapResult {
  const manifestFile = path.resolve(manifestPath)
  const unlock = lockImage(manifestFile)
  try {
    return remapLocked(manifestFile, opts)
  } finally {
    unlock()
  }
}

/**
 * One remap of an image at a time (cron's `extfs remap` and serve's schedule may meet): two would both
 * write delta k+1 and publish a chain that does not hold together. The lock file holds the owner's
 * pid; one left by a process that died is taken over.
 */
function lockImage(manifestFile: string): () => void {
  const lock = `${manifestFile}.remap-lock`
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 })
      return () => fs.rmSync(lock, { force: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) {
        throw new ExportError(`cannot lock ${lock} for remapping: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'held' : (err as Error).message}`)
      }
      const owner = Number.parseInt(fs.readFileSync(lock, 'utf8'), 10)
      if (Number.isSafeInteger(owner) && owner > 0 && processAlive(owner)) {
        throw new ExportError(`another remap of this image is running (pid ${owner}, ${lock}): nothing done`)
      }
      fs.rmSync(lock, { force: true }) // its owner died: take it over
    }
  }
}

function remapLocked(manifestFile: string, opts: RemapOptions): RemapResult {
  const cache = opts.cache ?? new RemapCache()
  const { header: manifest, manifestBytes } = cache.manifest(manifestFile, opts.key)
  const recordFile = recordPath(manifestFile, manifest.configRecord)
  const record = readRecord(recordFile)
  if (record.state === 'released') return { state: 'released', configId: record.configId, manifestBytes }
  const map = cache.currentMap(manifestFile, recordFile, record, opts.key)
  const mapping = record.mapping ?? defaultMapping(opts.warn, recordFile)

  const mount = imageMount(manifest)
  // One mapper for the whole remap: btrfs chunks and loop backing files are read once, as export does.
  // An image with data checksums is mapped as export mapped it: copies and csums of mirrored extents.
  const checksums = manifest.dataChecksums
  const mapper = FileMapper.forMount(mount, { throughLoop: mapping.throughLoop, dataChecksums: checksums !== undefined })
  const mapped = mapImage(manifest, map, cache, mapper, mapping.carryMax)
  checkSameChecksums(mapper.dataChecksums, checksums, manifestFile)
  const disks = assignDevices(mapper.disks, map.devices, map.retired)
  const files = changedFiles(map, mapped, disks)
  if (files.length === 0) return { state: 'unchanged', configId: map.configId, manifestBytes }

  const newDevices = describeNewDevices(mapper.disks, disks, map.devices, files, checksums)
  const { proofs, retired } = knownDeviceChanges(map, files, mapper.disks, disks, checksums, opts.warn)
  const seq = map.seq + 1
  let delta: Delta = {
    format: DELTA_FORMAT, version: DELTA_VERSION, image: map.image, seq, from: map.configId,
    to: randomBytes(16).toString('hex'), createdAt: new Date().toISOString(),
    reason: newDevices.length > 0 || retired.length > 0 ? 'extents moved; devices changed' : 'extents moved',
    devices: newDevices,
    ...(checksums ? { dataChecksums: checksums } : {}),
    files,
    ...(proofs.length > 0 ? { proofs } : {}),
    ...(retired.length > 0 ? { retired } : {}),
  }
  if (opts.key) delta = signDelta(delta, opts.key)
  const deltaPath = `${manifestFile}.delta-${seq}`
  writeDeltaFile(deltaPath, delta, map.context())
  const deltaBytes = fs.statSync(deltaPath).size

  // Release may have marked the record meanwhile: never turn a released image current again.
  const now = readRecord(recordFile)
  if (now.state !== 'current' || now.configId !== record.configId || (now.deltas ?? []).length !== (record.deltas ?? []).length) {
    fs.rmSync(deltaPath, { force: true })
    throw new StaleError(`config-ID record ${recordFile} changed while remapping (now ${now.state} ${now.configId}): nothing published`)
  }
  const name = path.dirname(deltaPath) === path.dirname(recordFile) ? path.basename(deltaPath) : deltaPath
  writeRecord(recordFile, delta.to, 'current', { deltas: [...(record.deltas ?? []), name], mapping: record.mapping })
  return { state: 'remapped', configId: delta.to, delta, deltaPath, deltaBytes, manifestBytes }
}

/** The filesystem still checksums data as it did at export (it is the same filesystem: it must). */
function checkSameChecksums(now: DataChecksums | undefined, image: DataChecksums | undefined, manifestFile: string): void {
  if (now === undefined || image === undefined) return // no mirrored extent now, or an image without them
  if (now.algorithm !== image.algorithm || now.sectorSize !== image.sectorSize) {
    throw new ExportError(`${manifestFile}: the filesystem now checksums data with ${now.algorithm} per ${now.sectorSize} bytes, the image with ${image.algorithm} per ${image.sectorSize}: cannot remap`)
  }
}

function defaultMapping(warn: (m: string) => void, recordFile: string): RecordMapping {
  warn(`${recordFile} does not say how export mapped the image (written by an older extfs): remapping without --through-loop, carry max ${DEFAULT_CARRY_MAX}`)
  return { throughLoop: false, carryMax: DEFAULT_CARRY_MAX }
}

/**
 * Every file of the image mapped again, found through the path table kept in `cache` when there is
 * one. A kept path that no longer opens as its file's inode makes one walk of the tree and a second
 * mapping; a fresh table that fails the same way fails the remap, as any file not found does.
 */
function mapImage(m: ManifestHeader, map: ImageMap, cache: RemapCache, mapper: FileMapper, carryMax: number): Mapped {
  const kept = cache.files()
  if (kept) {
    try {
      return mapAll(map, kept, mapper, carryMax)
    } catch (err) {
      if (!(err instanceof PathGone)) throw err
      cache.dropFiles()
    }
  }
  const files = locateFiles(m, map)
  const mapped = mapAll(map, files, mapper, carryMax)
  if (treeIsFixed(m.frozenImage)) cache.keepFiles(files)
  return mapped
}

/**
 * Images whose tree of names cannot change while they exist: a frozen filesystem, a read-only btrfs
 * snapshot, a clone set (named by ino). An image of kind none is the live tree: walked every time.
 */
function treeIsFixed(f: FrozenImage): boolean {
  return f.kind === 'freeze' || f.kind === 'snapshot'
}

/** The mount the image lives on, still the filesystem export saw (type, and UUID where it can tell). */
function imageMount(m: ManifestHeader): MountEntry {
  const f = m.frozenImage
  const mount = readMountTable().filter((e) => e.mountpoint === f.mountpoint).pop()
  if (!mount) throw new ExportError(`${f.mountpoint} is not mounted: cannot remap its image`)
  if (mount.fsType !== f.fsType) throw new ExportError(`${f.mountpoint} is now ${mount.fsType}, the image was on ${f.fsType}: cannot remap`)
  if (f.fsUuid && mount.source.startsWith('/dev/')) {
    // After a btrfs replace the mount source may name the old, wiped member: no UUID there is no contradiction.
    const now = probeIdentity(mount.source).fsUuid
    if (now !== undefined && now !== f.fsUuid) throw new ExportError(`${f.mountpoint} holds filesystem ${now}, the image was on ${f.fsUuid}: cannot remap`)
  }
  return mount
}

/**
 * ino → a path naming that file's bytes in the image: the clone `<imagePath>/<ino>` of a clone set; the
 * file inside a btrfs snapshot (whose inode numbers are the manifest's); otherwise the exported file.
 */
function locateFiles(m: ManifestHeader, map: ImageMap): FileTable {
  const f = m.frozenImage
  if (f.kind === 'snapshot') {
    if (!fs.existsSync(f.imagePath!)) throw new ExportError(`image directory ${f.imagePath} is gone: released without its record?`)
    if (f.mechanism === 'clone-set') {
      const paths = new Map<number, string>()
      for (const ino of map.files.keys()) paths.set(ino, path.join(f.imagePath!, String(ino)))
      return { paths }
    }
    // The whole snapshot: only the manifest's inodes are kept, so what lies outside the exported
    // paths costs an lstat and nothing else.
    return walk([path.join(f.imagePath!, SNAPSHOT_NAME)], new Set(), map)
  }
  return walk(m.source.paths, new Set([imagesRootOf(f.mountpoint)]), map)
}

/** Walk `roots` (same st_dev as the first, `skip` not entered), noting the path of each wanted regular file. */
function walk(roots: string[], skip: ReadonlySet<string>, map: ImageMap): FileTable {
  const dev = fs.lstatSync(roots[0]!).dev
  const out = new Map<number, string>()
  const stack = [...roots]
  while (stack.length > 0 && out.size < map.files.size) {
    const p = stack.pop()!
    const st = fs.lstatSync(hostPath(p))
    if (st.dev !== dev) continue
    if (st.isFile() && map.files.has(st.ino) && !out.has(st.ino)) out.set(st.ino, p)
    else if (st.isDirectory()) {
      for (const name of fs.readdirSync(hostPath(p), { encoding: 'buffer' })) {
        const child = path.join(p, decodeName(name))
        if (!skip.has(child)) stack.push(child)
      }
    }
  }
  return { paths: out, dev }
}

/** ino → the file's new mapping, or its content when it can only be carried. */
type Mapped = Map<number, Extract<FileMapping, { kind: 'extents' }> | { kind: 'inline'; inline: string }>

/** A path of the table does not lead to its file (gone, or another inode): the tree is not the one walked. */
class PathGone extends ExportError {}

/** Map every regular file of the image once more; the mapper's device indexes are its own. */
function mapAll(map: ImageMap, files: FileTable, mapper: FileMapper, carryMax: number): Mapped {
  const out: Mapped = new Map()
  for (const [ino, loc] of map.files) {
    // Carried content (inline data; compressed data before extfs decoded it) is in the manifest
    // itself: nothing of it can move.
    if (loc.inline !== undefined) continue
    const file = files.paths.get(ino)
    if (file === undefined) throw new PathGone(`inode ${ino}: not found in the image any more`)
    let fd: number
    try {
      fd = fs.openSync(hostPath(file), fs.constants.O_RDONLY | fs.constants.O_NOATIME | fs.constants.O_NOFOLLOW)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new (code === 'ENOENT' ? PathGone : ExportError)(`${file} (inode ${ino}): cannot open: ${code}`)
    }
    try {
      const st = fs.fstatSync(fd)
      if (files.dev !== undefined && (st.ino !== ino || st.dev !== files.dev)) {
        throw new PathGone(`${file}: is inode ${st.ino} on device ${st.dev}, the image's file is inode ${ino} on ${files.dev}: the image changed`)
      }
      if (!st.isFile() || st.size !== loc.size) {
        throw new ExportError(`${file} (inode ${ino}): is ${st.isFile() ? `${st.size} bytes` : 'not a regular file'}, the image's file is ${loc.size} bytes: the image changed`)
      }
      const m = mapper.map(fd, file, loc.size)
      if (m.kind === 'extents') {
        out.set(ino, m)
        continue
      }
      // Raw blocks before, inline in metadata now: carry the content, as export does.
      if (loc.size > carryMax) throw new ExportError(`${file}: ${m.why} data of ${loc.size} bytes is over the ${carryMax}-byte limit for carrying it (--carry-max at export)`)
      const content = Buffer.alloc(loc.size)
      if (fs.readSync(fd, content, 0, loc.size, 0) !== loc.size) throw new ExportError(`${file}: short read of ${m.why} data`)
      out.set(ino, { kind: 'inline', inline: content.toString('base64') })
    } finally {
      fs.closeSync(fd)
    }
  }
  return out
}

/**
 * For each disk the mapper met, its index in the new map: a device of the current map keeps its index
 * when it is the same device node on this host, of the same size, with a matching identity. Anything
 * else is new (-1 here) — a replaced device included: btrfs replace gives the new member the old one's
 * UUIDs, so identity alone would not tell them apart.
 */
function assignDevices(disks: RawDisk[], devices: Device[], retired: ReadonlySet<number>): number[] {
  return disks.map((disk) => {
    const found = probeIdentity(disk.path)
    return devices.findIndex((d, i) => !retired.has(i) && d.hint === disk.path && d.size === disk.size &&
      (identitiesMatch(d.identity, found) || (isEmpty(d.identity) && isEmpty(found))))
  })
}

function isEmpty(o: object): boolean {
  return Object.keys(o).length === 0
}

/** Index of mapper disk `i` in the new map: known devices keep theirs; new ones follow, in mapper order. */
function globalIndex(disks: number[], known: number): (i: number) => number {
  const next: number[] = []
  let n = known
  for (const d of disks) next.push(d >= 0 ? d : n++)
  return (i) => next[i]!
}

function changedFiles(map: ImageMap, mapped: Mapped, disks: number[]): DeltaFile[] {
  const index = globalIndex(disks, map.devices.length)
  const out: DeltaFile[] = []
  const inos = [...mapped.keys()].sort((a, b) => a - b)
  for (const ino of inos) {
    const m = mapped.get(ino)!
    const loc = map.files.get(ino)!
    if (m.kind === 'inline') {
      out.push({ ino, inline: m.inline })
      continue
    }
    const extents = m.extents.map((e) => inNewMap(e, index))
    if (!sameExtents(loc, extents)) out.push({ ino, extents })
  }
  return out
}

/** A mapped extent with the new map's device indexes, for its copies too. */
function inNewMap(e: Extent, index: (i: number) => number): Extent {
  const out = { ...e, device: index(e.device) }
  if (e.copies) out.copies = e.copies.map((c) => ({ ...c, device: index(c.device) }))
  return out
}

/** Same places and lengths, and the same copies and csums: a mirror moving alone is a change too. */
function sameExtents(loc: FileLocation, now: Extent[]): boolean {
  const was = loc.extents
  if (was === undefined || was.length !== now.length) return false
  for (let i = 0; i < now.length; i++) {
    const a = was[i]!
    const b = now[i]!
    if (a.fileOffset !== b.fileOffset || a.device !== b.device || a.deviceOffset !== b.deviceOffset || a.length !== b.length) return false
    if (a.csums !== b.csums || !sameCopies(a, b)) return false
    if (a.compression !== b.compression || a.diskLength !== b.diskLength || a.decodedLength !== b.decodedLength || a.decodedOffset !== b.decodedOffset) return false
  }
  return true
}

function sameCopies(a: Extent, b: Extent): boolean {
  const ca = a.copies ?? []
  const cb = b.copies ?? []
  return ca.length === cb.length && ca.every((c, k) => c.device === cb[k]!.device && c.deviceOffset === cb[k]!.deviceOffset)
}

/** The delta's new devices, in index order, fingerprinted over the delta's extents on each. */
function describeNewDevices(rawDisks: RawDisk[], disks: number[], devices: Device[], files: DeltaFile[], checksums: DataChecksums | undefined): Device[] {
  const index = globalIndex(disks, devices.length)
  const ids = new Set(devices.map((d) => d.id))
  const out: Device[] = []
  for (let i = 0; i < rawDisks.length; i++) {
    if (disks[i]! >= 0) continue
    const disk = rawDisks[i]!
    const at = index(i)
    let id = `d${at}`
    for (let k = 1; ids.has(id); k++) id = `d${at}-${k}`
    ids.add(id)
    const extents = extentsOnDevice(files.flatMap((f) => f.extents ?? []), at)
    const raw = RawDevice.open(id, disk.path)
    try {
      out.push({ id, size: disk.size, identity: probeIdentity(disk.path), fingerprints: takeFingerprints(raw, extents, checksums), hint: disk.path })
    } finally {
      raw.close()
    }
  }
  return out
}

/**
 * What the delta says about the devices the map had before it. A device whose blocks it moves (a file
 * of the delta had or has extents or copies there) is proved again: fingerprints over every extent and
 * copy on it after the delta, since the old samples may lie in blocks the image gave up and that now
 * hold other data; with data checksums only over sectors that verify, as export samples.
 * A device no extent or copy uses any more is retired: a mover mounting later need not find it (btrfs replace
 * leaves the old member outside the filesystem, perhaps wiped). Devices the delta does not touch keep
 * their proof: their blocks did not move.
 */
function knownDeviceChanges(
  map: ImageMap, files: DeltaFile[], rawDisks: RawDisk[], disks: number[], checksums: DataChecksums | undefined, warn: (m: string) => void,
): { proofs: DeviceProof[]; retired: number[] } {
  const known = map.devices.length
  const touched = new Set<number>()
  const moved = new Map<number, DeltaFile>()
  for (const f of files) {
    moved.set(f.ino, f)
    for (const e of [...(map.files.get(f.ino)!.extents ?? []), ...(f.extents ?? [])]) for (const d of devicesOfExtent(e)) if (d < known) touched.add(d)
  }
  const after: Extent[] = []
  for (const [ino, loc] of map.files) after.push(...((moved.get(ino) ?? loc).extents ?? []))
  const retired: number[] = []
  const proofs: DeviceProof[] = []
  for (let d = 0; d < known; d++) {
    if (map.retired.has(d)) continue
    const on = extentsOnDevice(after, d)
    if (on.length === 0) retired.push(d)
    else if (touched.has(d)) {
      const disk = rawDisks[disks.indexOf(d)]! // a device with extents after the remap is one the mapper met
      const raw = RawDevice.open(map.devices[d]!.id, disk.path)
      try {
        const fingerprints = takeFingerprints(raw, on, checksums)
        // Every sample failed its checksum: no proof rather than one of damaged bytes; the old one stands.
        if (fingerprints.length > 0) proofs.push({ device: d, fingerprints })
        else warn(`device ${d} (${disk.path}): no sampled block verifies against its checksums: its fingerprints are not renewed`)
      } finally {
        raw.close()
      }
    }
  }
  return { proofs, retired }
}
