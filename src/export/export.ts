// `extfs export`: stabilize a frozen image of the paths, map every file to raw-device extents and
// publish the manifest plus its config-ID record. Order matters for crash safety: everything is checked,
// the pre-freeze hook runs, the journal is written, and only then is anything created.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { DataChecksums, Device, Extent, FrozenImage, FrozenImageKind, Inode, Manifest, ManifestHeader } from '../manifest/types'
import type { RawDisk } from '../mapping/span'
import type { BulkProgress } from '../linux'
import { MANIFEST_FORMAT, MANIFEST_VERSION } from '../manifest/types'
import { signManifest } from '../manifest/sign'
import { writeManifestFile } from '../manifest/io'
import { writeRecord } from '../configid/record'
import { planSnapshot, SnapshotPlan } from '../frozen/snapshot'
import { imageDirOf, newImageId } from '../frozen/image-dir'
import { journalPathOf, removeJournal, writeJournal } from '../frozen/journal'
import { HookContext, runPostThaw, runPreFreeze } from '../frozen/hooks'
import { Hold, takeImage, undoImage } from './hold'
import { mountOf, MountEntry } from '../mapping/mountinfo'
import { splitDev } from '../mapping/blockdev'
import { FileMapper } from '../mapping/mapper'
import { probeIdentity } from '../device/identity'
import { RawDevice } from '../device/reader'
import { extentsOnDevice, takeFingerprints } from '../device/fingerprint'
import { Walker } from './walk'
import { ExportError, ManifestError } from '../errors'
import { pathOfInode } from '../manifest/paths'
import { assembleV2, writeManifestV2 } from '../manifest/v2/write'
import { ext4Features, mapBulk, whyNotBulk } from './bulk-ext4'
import { bodyPathOf, BulkRefused, type MapperChoice } from './bulk'
import { mapBtrfsBulk, whyNotBtrfsBulk } from './bulk-btrfs'
import { mapXfsBulk, whyNotXfsBulk, xfsFeatures } from './bulk-xfs'
import { bulkProgressOf, wholeFsTotals } from './progress'
import type { Counts, ProgressSink } from '../progress'

/** Filesystems the mapper resolves to raw disks (btrfs through its chunk tree). */
const SUPPORTED_FS = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs'])

/** Default --carry-max: inline files up to this size are carried in the manifest. */
export const DEFAULT_CARRY_MAX = 64 * 1024

export interface ExportOptions {
  paths: string[]
  output: string
  frozenImage: FrozenImageKind
  assumeStable: boolean
  /** Where to publish the config-ID record; default beside the manifest. */
  record?: string
  key?: Buffer
  /** Shell commands run before the image is taken and right after (also when taking it failed). */
  preFreeze?: string
  postThaw?: string
  /** Largest inline or compressed file carried in the manifest, bytes. */
  carryMax: number
  /** Map through loop devices to the disk under their backing files. */
  throughLoop: boolean
  /** auto: the bulk mapper where it applies (ext4 frozen, a btrfs snapshot), else the VFS walker; bulk: it or fail. */
  mapper: MapperChoice
  /** Manifest format version; default 1 for the VFS walker, 2 for the bulk mapper (which writes only 2). */
  format?: 1 | 2
  warn: (msg: string) => void
  /** Told of the phases (image, dirs, map, write) and of every inode described. */
  progress?: ProgressSink
}

/** What export wrote. */
export interface ExportSummary {
  /** The manifest and the config-ID record written (absolute paths). */
  manifest: string
  record: string
  configId: string
  frozenImage: FrozenImage
  inodes: number
  format: 1 | 2
  mapper: 'bulk' | 'vfs'
  /** Inodes in the manifest, and the allocated bytes (st_blocks * 512) of those described: progress's final counts. */
  mapped: Counts
  /** The bulk mapper's own figures: body bytes, whether it read with O_DIRECT, the process's peak RSS then. */
  bulk?: BulkFigures
}

/** A bulk mapper's own figures: body bytes, the process's peak RSS then, its tables' bytes; ext4: whether it read with O_DIRECT; XFS: sweeps and handle opens. */
interface BulkFigures {
  bodyBytes: number
  peakRssKiB: number
  tableBytes: number
  directIo?: boolean
  /** XFS: GETFSMAP sweeps, and inodes opened by handle. */
  windows?: number
  handleOpens?: number
}

/** What a bulk mapper (ext4, btrfs or XFS) wrote, as export assembles the manifest around it. */
interface MappedBody {
  counts: { inodes: number; dirs: number; entries: number; allocatedBytes: number }
  disks: RawDisk[]
  root: number
  features: string[]
  dataChecksums?: DataChecksums
  /** Extents to fingerprint, by index into `disks`. */
  samples: Extent[]
  figures: BulkFigures
}

function sourceFilesystem(paths: string[]): { dev: bigint; mount: MountEntry; realPaths: string[] } {
  const realPaths = paths.map((p) => {
    try {
      return fs.realpathSync(p)
    } catch {
      throw new ExportError(`${p}: no such file or directory`)
    }
  })
  for (const a of realPaths) {
    const inside = realPaths.find((b) => b !== a && (a === '/' || b.startsWith(a + '/')))
    if (inside) throw new ExportError(`${inside} is inside ${a}: give each tree once`)
    if (realPaths.indexOf(a) !== realPaths.lastIndexOf(a)) throw new ExportError(`${a} is given twice`)
  }
  const devs = realPaths.map((p) => fs.lstatSync(p, { bigint: true }).dev)
  const other = devs.findIndex((d) => d !== devs[0])
  if (other >= 0) throw new ExportError(`${paths[0]} and ${paths[other]} are on different filesystems (or btrfs subvolumes): export one at a time`)
  const { major, minor } = splitDev(devs[0])
  const mount = mountOf(realPaths[0])
  // btrfs gives every subvolume its own st_dev, so only its mount entry's type can be checked.
  const sameDevice = mount && (mount.fsType === 'btrfs' || (mount.major === major && mount.minor === minor))
  if (!mount || !sameDevice) throw new ExportError(`${paths[0]}: cannot find its mount in /proc/self/mountinfo`)
  const why = whyUnsupported(mount)
  if (why !== undefined) throw new ExportError(`${mount.mountpoint}: ${why}`)
  return { dev: devs[0], mount, realPaths }
}

/** Why the filesystem mounted at `mount` cannot be exported, or undefined. */
export function whyUnsupported(mount: MountEntry): string | undefined {
  if (!SUPPORTED_FS.has(mount.fsType)) return `filesystem type ${mount.fsType} is not supported (ext4, XFS and btrfs are)`
  // FIEMAP gives a realtime file's extents on the realtime device, which every mapper would place on
  // the data device: silently the wrong bytes. (This VM's kernel has no XFS realtime support to test.)
  if (mount.fsType === 'xfs' && mount.superOptions.some((o) => o.startsWith('rtdev='))) return 'XFS with a realtime device is not supported (its files\' extents are on the realtime device)'
  return undefined
}

/** Writing the manifest or record onto the frozen filesystem would block forever. */
function refuseOnFrozenFs(file: string, what: string, dev: bigint): void {
  const dir = fs.realpathSync(path.dirname(path.resolve(file)))
  if (fs.statSync(dir, { bigint: true }).dev === dev) {
    throw new ExportError(`${what} ${file} is on the filesystem being frozen; writing it would deadlock: put it elsewhere`)
  }
}

function allExtents(inodes: Iterable<Inode>): Extent[] {
  const out: Extent[] = []
  for (const inode of inodes) if (inode.extents) out.push(...inode.extents)
  return out
}

/** The manifest's devices: every disk the extents reach, each with its identity and fingerprints. */
function describeDevices(disks: RawDisk[], extents: Extent[], checksums: DataChecksums | undefined): Device[] {
  return disks.map((disk, index) => {
    const raw = RawDevice.open(`d${index}`, disk.path)
    try {
      const fingerprints = takeFingerprints(raw, extentsOnDevice(extents, index), checksums)
      return { id: `d${index}`, size: disk.size, identity: probeIdentity(disk.path), fingerprints, hint: disk.path }
    } finally {
      raw.close()
    }
  })
}

/** The feature flags the walker's manifest uses: a writer lists a flag only when it needs it. */
function features(walker: Walker, mapper: FileMapper): string[] {
  const out: string[] = []
  if ([...walker.inodes.values()].some((i) => i.inline !== undefined)) out.push('inline-data')
  if (mapper.dataChecksums) out.push('data-checksums')
  if (walker.byteNames) out.push('byte-names')
  if ([...walker.inodes.values()].some((i) => i.extents?.some((e) => e.compression !== undefined))) out.push('compressed-extents')
  return out
}

function synthesizeRoot(children: { name: string; ino: number }[], ino: number): Inode {
  const now = Date.now()
  const t: [number, number] = [Math.floor(now / 1000), (now % 1000) * 1_000_000]
  return { ino, kind: 'dir', perm: 0o755, uid: 0, gid: 0, nlink: 2, size: 0, blocks: 0, atime: t, mtime: t, ctime: t, entries: children }
}

/** `baseNames[i]` is what the view calls `walkPaths[i]` (its base name on the source, also inside a snapshot). */
function buildTree(walker: Walker, walkPaths: string[], baseNames: string[]): { root: number; synthetic: boolean } {
  const roots = walkPaths.map((p, i) => ({ name: baseNames[i], ino: walker.visit(p) }))
  walker.numberMountPoints()
  if (roots.length === 1 && walker.inodes.get(roots[0].ino)!.kind === 'dir') return { root: roots[0].ino, synthetic: false }
  // Several paths, or a single file: a synthetic root holds each by its base name.
  const names = new Set<string>()
  for (const r of roots) {
    if (names.has(r.name)) throw new ExportError(`two exported paths share the name ${r.name}`)
    names.add(r.name)
  }
  const ino = walker.freeIno()
  const root = synthesizeRoot(roots, ino)
  root.nlink = 2 + roots.filter((r) => walker.inodes.get(r.ino)!.kind === 'dir').length
  walker.inodes.set(ino, root)
  return { root: ino, synthetic: true }
}

/** The filesystem's UUID, recorded so that release can tell it is still the same filesystem. */
function fsUuidOf(mount: MountEntry): string | undefined {
  if (!mount.source.startsWith('/dev/')) return undefined
  return probeIdentity(mount.source).fsUuid
}

/** Check what the chosen kind of image needs before anything is created. */
function checkKind(opts: ExportOptions, mount: MountEntry, dev: bigint, realPaths: string[], output: string, record: string): SnapshotPlan | undefined {
  if (opts.frozenImage === 'freeze') {
    refuseOnFrozenFs(output, 'output', dev)
    refuseOnFrozenFs(record, 'config-ID record', dev)
  } else if (opts.frozenImage === 'none' && !mount.readOnly && !opts.assumeStable) {
    throw new ExportError(`${mount.mountpoint} is mounted read-write: --frozen-image none needs a read-only mount, or --assume-stable if you guarantee nothing writes to it`)
  }
  return opts.frozenImage === 'snapshot' ? planSnapshot(mount, realPaths) : undefined
}

/** Whether to try the bulk mapper; throws when it was asked for and does not apply. */
function wantBulk(opts: ExportOptions, mount: MountEntry, realPaths: string[], plan: SnapshotPlan | undefined): boolean {
  if (opts.mapper === 'vfs') return false
  if (opts.format === 1) {
    if (opts.mapper === 'bulk') throw new ExportError('--mapper bulk writes manifest format 2 only: drop --format 1')
    return false
  }
  const why = mount.fsType === 'btrfs'
    ? whyNotBtrfsBulk(mount, realPaths, opts.frozenImage === 'snapshot' ? plan?.mechanism : undefined)
    : mount.fsType === 'xfs'
      ? whyNotXfsBulk({ mount, realPaths, frozenImage: opts.frozenImage, skip: [], throughLoop: opts.throughLoop })
      : whyNotBulk({ mount, realPaths, frozenImage: opts.frozenImage, skip: [], throughLoop: opts.throughLoop, carryMax: opts.carryMax })
  if (why !== undefined && opts.mapper === 'bulk') throw new ExportError(`--mapper bulk does not apply: ${why}`)
  return why === undefined
}

export function exportImage(opts: ExportOptions): ExportSummary {
  const { dev, mount, realPaths } = sourceFilesystem(opts.paths)
  const output = path.resolve(opts.output)
  const record = opts.record ? path.resolve(opts.record) : `${output}.config-id`
  const plan = checkKind(opts, mount, dev, realPaths, output, record)
  const tryBulk = wantBulk(opts, mount, realPaths, plan)
  const journal = journalPathOf(output)
  // One image per manifest path: a second export would overwrite the only record of the first image.
  if (fs.existsSync(journal)) throw new ExportError(`${journal} exists: the image last exported to ${opts.output} was not released; run: extfs release ${opts.output}`)
  const mapper = FileMapper.forMount(mount, { throughLoop: opts.throughLoop, dataChecksums: true })

  const imageId = newImageId()
  const frozenImage: FrozenImage = { kind: opts.frozenImage, mountpoint: mount.mountpoint, fsType: mount.fsType }
  const fsUuid = fsUuidOf(mount)
  if (fsUuid) frozenImage.fsUuid = fsUuid
  if (plan) Object.assign(frozenImage, { mechanism: plan.mechanism, imageId, imagePath: imageDirOf(mount.mountpoint, imageId) })
  const hooks: HookContext = {
    imageId, kind: opts.frozenImage, mechanism: plan?.mechanism ?? opts.frozenImage, mountpoint: mount.mountpoint, paths: realPaths, manifest: output,
  }

  runPreFreeze(opts.preFreeze, hooks)
  let thawHookDone = false
  const postThaw = (status: 'taken' | 'failed') => {
    if (thawHookDone) return
    thawHookDone = true
    runPostThaw(opts.postThaw, hooks, status, opts.warn)
  }
  if (opts.frozenImage !== 'none') {
    writeJournal(journal, {
      format: 'extfs-frozen-image-journal', version: 1, imageId, kind: opts.frozenImage, mechanism: plan?.mechanism,
      mountpoint: mount.mountpoint, fsType: mount.fsType, fsUuid, imagePath: frozenImage.imagePath, manifest: output, record, createdAt: new Date().toISOString(),
    })
  }
  /** After a failure: remove what was created; the journal goes only once nothing is left for release to do. */
  const undo = (created: boolean) => {
    try {
      if (created || frozenImage.kind === 'snapshot') undoImage(frozenImage)
      removeJournal(journal)
    } catch (err) {
      opts.warn(`could not undo the image (${(err as Error).message}); run: extfs release ${opts.output}`)
    }
  }

  let hold: Hold
  opts.progress?.setPhase('image')
  try {
    hold = takeImage(frozenImage, plan, realPaths, dev)
  } catch (err) {
    postThaw('failed')
    undo(false)
    throw err
  }
  // A clone set is taken file by file during the walk: its post-thaw hook runs after the last clone.
  if (!hold.live) postThaw('taken')
  const toSource = inSourceTerms(hold, realPaths)
  const body = bodyPathOf(output)
  // Counted with the image held: a frozen filesystem's counts stand still.
  const totals = opts.progress ? wholeFsTotals(mount, realPaths, opts.frozenImage) : undefined
  try {
    const onProgress = bulkProgressOf(opts.progress, totals)
    const bulk = tryBulk ? bulkOrDecline(opts, () => mapBody(opts, mount, realPaths, hold, journal, body, onProgress), body) : undefined
    const configId = randomBytes(16).toString('hex')
    const header = (root: number, features: string[], devices: Device[], checksums?: DataChecksums): ManifestHeader => ({
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      features,
      configId,
      createdAt: new Date().toISOString(),
      source: { host: os.hostname(), paths: realPaths },
      frozenImage,
      // Relative when beside the manifest, so both hosts may mount the shared storage at different paths.
      configRecord: path.dirname(record) === path.dirname(output) ? path.basename(record) : record,
      blockSize: fs.statfsSync(mount.mountpoint).bsize,
      ...(checksums ? { dataChecksums: checksums } : {}),
      devices,
      root,
    })
    let summary: ExportSummary
    if (bulk) {
      postThaw('taken')
      opts.progress?.setPhase('write')
      const h = header(bulk.root, bulk.features, describeDevices(bulk.disks, bulk.samples, bulk.dataChecksums), bulk.dataChecksums)
      assembleV2(output, h, body, bulk.counts, opts.key)
      summary = { manifest: output, record, configId, frozenImage, inodes: bulk.counts.inodes, format: 2, mapper: 'bulk', bulk: bulk.figures,
        mapped: { files: bulk.counts.inodes, bytes: bulk.counts.allocatedBytes } }
    } else {
      const walker = new Walker({ dev: hold.dev, mapper, warn: (m) => opts.warn(toSource(m)), openFile: hold.openFile, carryMax: opts.carryMax, skip: new Set([...hold.skip, journal]), live: hold.live, progress: opts.progress })
      opts.progress?.setPhase('map', totals)
      const { root, synthetic } = buildTree(walker, hold.walkPaths, realPaths.map((p) => path.basename(p)))
      postThaw('taken')
      opts.progress?.setPhase('write')
      const devices = describeDevices(mapper.disks, allExtents(walker.inodes.values()), mapper.dataChecksums)
      const h = header(root, features(walker, mapper), devices, mapper.dataChecksums)
      const inodes = [...walker.inodes.values()].sort((a, b) => a.ino - b.ino)
      if (opts.format === 2) {
        writeManifestV2(output, h, inodes, opts.key) // the header's version becomes 2 there
      } else {
        let manifest: Manifest = { ...h, inodes }
        if (opts.key) manifest = signManifest(manifest, opts.key)
        // writeManifestFile holds our own output to the mover's rules before writing it; without its
        // record a manifest serves nothing, so a failure here leaves nothing usable behind.
        writeOwnManifest(output, manifest, (inView) => sourcePathOf(inView, synthetic, realPaths))
      }
      summary = { manifest: output, record, configId, frozenImage, inodes: inodes.length, format: opts.format ?? 1, mapper: 'vfs', mapped: { files: inodes.length, bytes: walker.described.bytes } }
    }
    try {
      // The mapping options go into the record so that `extfs remap` maps the image the same way.
      writeRecord(record, configId, 'current', { mapping: { throughLoop: opts.throughLoop, carryMax: opts.carryMax } })
    } catch (err) {
      fs.rmSync(output, { force: true })
      throw err
    }
    return summary
  } catch (err) {
    postThaw('failed')
    undo(true)
    if (err instanceof ExportError) err.message = toSource(err.message)
    throw err
  } finally {
    fs.rmSync(body, { force: true })
  }
}

/** Run the bulk mapper of the filesystem (btrfs: on the snapshot; ext4: on the frozen device; XFS: on the frozen mount), writing `body`. */
function mapBody(opts: ExportOptions, mount: MountEntry, realPaths: string[], hold: Hold, journal: string, body: string, onProgress: BulkProgress | undefined): MappedBody {
  const skip = [...hold.skip, journal]
  if (mount.fsType === 'btrfs') {
    const b = mapBtrfsBulk({ mount, walkPath: hold.walkPaths[0]!, dev: hold.dev, skip, throughLoop: opts.throughLoop, carryMax: opts.carryMax, onProgress }, body)
    const { bodyBytes, peakRssKiB, tableBytes } = b.result
    return { counts: b.result, disks: b.disks, root: b.root, features: b.features, dataChecksums: b.dataChecksums, samples: b.samples, figures: { bodyBytes, peakRssKiB, tableBytes } }
  }
  if (mount.fsType === 'xfs') {
    const b = mapXfsBulk({ mount, realPaths, frozenImage: opts.frozenImage, skip, throughLoop: opts.throughLoop, onProgress }, body)
    const { bodyBytes, peakRssKiB, tableBytes, windows, handleOpens } = b.result
    return { counts: b.result, disks: b.disks, root: b.root, features: xfsFeatures(b.result), samples: b.samples, figures: { bodyBytes, peakRssKiB, tableBytes, windows, handleOpens } }
  }
  const b = mapBulk({ mount, realPaths, frozenImage: opts.frozenImage, skip, throughLoop: opts.throughLoop, carryMax: opts.carryMax, onProgress }, body)
  const features = ext4Features(b.result)
  const { bodyBytes, directIo, peakRssKiB, tableBytes } = b.result
  return { counts: b.result, disks: b.disks, root: b.root, features, samples: b.samples, figures: { bodyBytes, directIo, peakRssKiB, tableBytes } }
}

/** The bulk mapper's body, or undefined when it declined and the walker is allowed to map instead (said once). */
function bulkOrDecline(opts: ExportOptions, map: () => MappedBody, body: string): MappedBody | undefined {
  try {
    return map()
  } catch (err) {
    if (!(err instanceof BulkRefused)) throw err
    if (opts.mapper === 'bulk') throw new ExportError(`--mapper bulk: ${err.message}`)
    opts.warn(`bulk mapper declined (${err.message}); mapping through the VFS instead`)
    fs.rmSync(body, { force: true })
    return undefined
  }
}

/**
 * A tree the mover's rules refuse is a problem of the source (exit 8 naming the file), not of a
 * manifest from elsewhere (exit 3 naming an inode number).
 */
export function writeOwnManifest(output: string, manifest: Manifest, sourcePath: (inView: string) => string): void {
  try {
    writeManifestFile(output, manifest)
  } catch (err) {
    const ino = err instanceof ManifestError ? /^inode (\d+)$/.exec(err.at?.where ?? '')?.[1] : undefined
    if (ino === undefined) throw err
    const inView = pathOfInode(manifest, Number(ino))
    const file = inView === undefined ? `inode ${ino}` : sourcePath(inView)
    throw new ExportError(`${file}: the manifest cannot carry it: ${(err as ManifestError).at!.what}`)
  }
}

/** Where the view's `/a/b` lies on the source: below the exported directory, or one of several paths. */
export function sourcePathOf(inView: string, synthetic: boolean, realPaths: string[]): string {
  if (!synthetic) return path.join(realPaths[0]!, inView)
  const [first] = inView.split('/').filter(Boolean)
  const under = realPaths.find((p) => path.basename(p) === first)
  return under === undefined ? inView : path.join(path.dirname(under), inView)
}

/** Messages name files as the owner knows them, not by their place inside our snapshot. */
function inSourceTerms(hold: Hold, realPaths: string[]): (text: string) => string {
  const moved = hold.walkPaths.map((w, i) => [w, realPaths[i]]).filter(([w, r]) => w !== r)
  return (text) => moved.reduce((t, [w, r]) => t.split(w).join(r), text)
}
