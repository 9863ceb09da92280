// `extfs export`: stabilize a frozen image of the paths, map every file to raw-device extents and
// publish the manifest plus its config-ID record.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { Device, Extent, FrozenImageKind, Inode, Manifest } from '../manifest/types'
import type { RawDisk } from '../mapping/span'
import { MANIFEST_FORMAT, MANIFEST_VERSION } from '../manifest/types'
import { signManifest } from '../manifest/sign'
import { writeManifestFile } from '../manifest/io'
import { writeRecord } from '../configid/record'
import { freezeFilesystem, thawFilesystem } from '../frozen/freeze'
import { mountOf, MountEntry } from '../mapping/mountinfo'
import { splitDev } from '../mapping/blockdev'
import { FileMapper } from '../mapping/mapper'
import { probeIdentity } from '../device/identity'
import { RawDevice } from '../device/reader'
import { takeFingerprints } from '../device/fingerprint'
import { Walker } from './walk'
import { ExportError } from '../errors'

/** Filesystems whose FIEMAP `physical` is a byte offset on their block device. (btrfs reports logical addresses.) */
const SUPPORTED_FS = new Set(['ext2', 'ext3', 'ext4', 'xfs'])

export interface ExportOptions {
  paths: string[]
  output: string
  frozenImage: FrozenImageKind
  assumeStable: boolean
  /** Where to publish the config-ID record; default beside the manifest. */
  record?: string
  key?: Buffer
  warn: (msg: string) => void
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
  if (other >= 0) throw new ExportError(`${paths[0]} and ${paths[other]} are on different filesystems: export one filesystem at a time`)
  const { major, minor } = splitDev(devs[0])
  const mount = mountOf(realPaths[0])
  if (!mount || mount.major !== major || mount.minor !== minor) throw new ExportError(`${paths[0]}: cannot find its mount in /proc/self/mountinfo`)
  if (!SUPPORTED_FS.has(mount.fsType)) throw new ExportError(`${mount.mountpoint}: filesystem type ${mount.fsType} is not supported (ext4 and XFS are)`)
  return { dev: devs[0], mount, realPaths }
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
function describeDevices(disks: RawDisk[], extents: Extent[]): Device[] {
  return disks.map((disk, index) => {
    const raw = RawDevice.open(`d${index}`, disk.path)
    try {
      const fingerprints = takeFingerprints(raw, extents.filter((e) => e.device === index))
      return { id: `d${index}`, size: disk.size, identity: probeIdentity(disk.path), fingerprints, hint: disk.path }
    } finally {
      raw.close()
    }
  })
}

function synthesizeRoot(children: { name: string; ino: number }[], ino: number): Inode {
  const now = Date.now()
  const t: [number, number] = [Math.floor(now / 1000), (now % 1000) * 1_000_000]
  return { ino, kind: 'dir', perm: 0o755, uid: 0, gid: 0, nlink: 2, size: 0, blocks: 0, atime: t, mtime: t, ctime: t, entries: children }
}

function buildTree(walker: Walker, realPaths: string[]): number {
  const roots = realPaths.map((p) => ({ name: path.basename(p), ino: walker.visit(p) }))
  if (roots.length === 1 && walker.inodes.get(roots[0].ino)!.kind === 'dir') return roots[0].ino
  // Several paths, or a single file: a synthetic root holds each by its base name.
  const names = new Set<string>()
  for (const r of roots) {
    if (names.has(r.name)) throw new ExportError(`two exported paths share the name ${r.name}`)
    names.add(r.name)
  }
  const ino = Math.max(...walker.inodes.keys()) + 1
  const root = synthesizeRoot(roots, ino)
  root.nlink = 2 + roots.filter((r) => walker.inodes.get(r.ino)!.kind === 'dir').length
  walker.inodes.set(ino, root)
  return ino
}

export function exportImage(opts: ExportOptions): Manifest {
  const { dev, mount, realPaths } = sourceFilesystem(opts.paths)
  const output = path.resolve(opts.output)
  const record = opts.record ? path.resolve(opts.record) : `${output}.config-id`
  if (opts.frozenImage === 'freeze') {
    refuseOnFrozenFs(output, 'output', dev)
    refuseOnFrozenFs(record, 'config-ID record', dev)
  } else if (!mount.readOnly && !opts.assumeStable) {
    throw new ExportError(`${mount.mountpoint} is mounted read-write: --frozen-image none needs a read-only mount, or --assume-stable if you guarantee nothing writes to it`)
  }

  const mapper = FileMapper.forMount(mount, { throughLoop: false })
  if (opts.frozenImage === 'freeze') freezeFilesystem(mount.mountpoint)
  try {
    const walker = new Walker({ dev, mapper, warn: opts.warn })
    const root = buildTree(walker, realPaths)
    const devices = describeDevices(mapper.disks, allExtents(walker.inodes.values()))
    const configId = randomBytes(16).toString('hex')
    let manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      features: [...walker.inodes.values()].some((i) => i.inline !== undefined) ? ['inline-data'] : [],
      configId,
      createdAt: new Date().toISOString(),
      source: { host: os.hostname(), paths: realPaths },
      frozenImage: { kind: opts.frozenImage, mountpoint: mount.mountpoint, fsType: mount.fsType },
      // Relative when beside the manifest, so both hosts may mount the shared storage at different paths.
      configRecord: path.dirname(record) === path.dirname(output) ? path.basename(record) : record,
      blockSize: fs.statfsSync(mount.mountpoint).bsize,
      devices,
      root,
      inodes: [...walker.inodes.values()].sort((a, b) => a.ino - b.ino),
    }
    if (opts.key) manifest = signManifest(manifest, opts.key)
    // writeManifestFile holds our own output to the mover's rules before writing it; without its
    // record a manifest serves nothing, so a failure here leaves nothing usable behind.
    writeManifestFile(output, manifest)
    try {
      writeRecord(record, configId, 'current')
    } catch (err) {
      fs.rmSync(output, { force: true })
      throw err
    }
    return manifest
  } catch (err) {
    if (opts.frozenImage === 'freeze') thawFilesystem(mount.mountpoint)
    throw err
  }
}
