// `extfs remap`: map every regular file of a frozen image again and publish what moved (docs/remap.md).
// Blocks of an image move while it exists (xfs_fsr on clones, btrfs balance or replace). The current
// map (manifest ⊕ the record's deltas) is compared file by file with a fresh mapping; the files whose
// extents differ go into a new delta with their complete new extent lists, disks the current map does
// not know become new devices, and the record moves to a new config ID. Order for readers on the other
// host: the delta file first (atomically), then the record (atomically), so a record's config ID always
// has its delta on storage.
import fs from 'node:fs'
import path from 'node:path'
import type { Extent, FrozenImage } from '../manifest/types'
import { readRecord, recordPath } from '../configid/record'
import type { ImageMap } from '../delta/chain'
import { RemapCache, type FileTable } from './cache'
import type { ManifestHeader } from '../manifest/types'
import { decodeName, hostPath } from '../manifest/names'
import type { DeltaFile } from '../delta/types'
import { FileMapper, type FileMapping } from '../mapping/mapper'
import { devicesOfExtent } from '../delta/chain'
import { extentsOnDevice } from '../device/fingerprint'
import { imagesRootOf } from '../frozen/image-dir'
import { SNAPSHOT_NAME } from '../frozen/discard'
import { ExportError } from '../errors'
import { processAlive } from '../process'
import { assignDevices, describeNewDevices, globalIndex, inNewMap, knownDeviceChanges } from './devices'
import { checkSameChecksums, defaultMapping, imageMount } from './image'
import { publishDelta, type RemapResult } from './publish'
import { bulkMapsKind, remapBulk } from './bulk'
import { sameExtents } from './join'

export type { RemapResult } from './publish'

export interface RemapOptions {
  /** Shared key: the manifest and every delta must be signed with it, and the new delta is. */
  key?: Buffer
  warn: (m: string) => void
  /** What the last remaps of this image read (`extfs serve` keeps one per image); none: read everything. */
  cache?: RemapCache
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
  const mapping = record.mapping ?? defaultMapping(opts.warn, recordFile)
  const mount = imageMount(manifest)
  const image = { manifestFile, header: manifest, manifestBytes, recordFile, record, mapping, mount }
  if (manifest.version === 2 && bulkMapsKind(manifest.frozenImage)) {
    const bulk = remapBulk(image, cache, opts)
    if (bulk.result) return bulk.result
    // The bulk mapper declined (a mount inside the tree, a refusal of its own): the VFS path is as exact,
    // at the cost the bulk path avoids (the whole manifest held, a FIEMAP per file). Said once, loudly.
    opts.warn(`${manifestFile}: the bulk mapper declined to map the image again (${bulk.declined}); remapping file by file through the VFS, holding the whole manifest`)
  }
  const map = cache.currentMap(manifestFile, recordFile, record, opts.key)

  // One mapper for the whole remap: btrfs chunks and loop backing files are read once, as export does.
  // An image with data checksums is mapped as export mapped it: copies and csums of mirrored extents.
  const checksums = manifest.dataChecksums
  const mapper = FileMapper.forMount(mount, { throughLoop: mapping.throughLoop, dataChecksums: checksums !== undefined })
  const mapped = mapImage(manifest, map, cache, mapper, mapping.carryMax)
  checkSameChecksums(mapper.dataChecksums, checksums, manifestFile)
  const disks = assignDevices(mapper.disks, map.devices, map.retired)
  const files = changedFiles(map, mapped, disks)
  if (files.length === 0) return { state: 'unchanged', configId: map.configId, manifestBytes, mapper: 'vfs' }

  const newDevices = describeNewDevices(mapper.disks, disks, map.devices, files, checksums)
  const { touched, after } = afterDelta(map, files)
  const known = knownDeviceChanges(map, touched, (d) => extentsOnDevice(after, d), mapper.disks, disks, checksums, opts.warn)
  return publishDelta({
    manifestFile, recordFile, record, context: map.context(), files, newDevices, ...known, checksums, key: opts.key, manifestBytes, mapper: 'vfs',
  })
}

/** The devices of the map a file of the delta had or has extents on, and every extent of the map after it. */
function afterDelta(map: ImageMap, files: DeltaFile[]): { touched: Set<number>; after: Extent[] } {
  const known = map.devices.length
  const touched = new Set<number>()
  const moved = new Map<number, DeltaFile>()
  for (const f of files) {
    moved.set(f.ino, f)
    for (const e of [...(map.files.get(f.ino)!.extents ?? []), ...(f.extents ?? [])]) for (const d of devicesOfExtent(e)) if (d < known) touched.add(d)
  }
  const after: Extent[] = []
  for (const [ino, loc] of map.files) after.push(...((moved.get(ino) ?? loc).extents ?? []))
  return { touched, after }
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
    if (loc.extents === undefined || !sameExtents(loc.extents, extents, (d) => d)) out.push({ ino, extents })
  }
  return out
}

