// Issue 14: the btrfs bulk mapper (native/export/btrfs_bulk.c) against the VFS walker, the reference.
// For each tree, a subvolume is exported twice with --frozen-image snapshot (the source unchanged in
// between, so both snapshots hold the same tree with the same inode numbers): --mapper bulk (manifest
// format 2) and --mapper vfs (format 1). Then
//   - the two manifests are compared inode by inode, every field (mode, owner, nlink, size, blocks, ns
//     times, rdev, attrs, xattrs with ACLs and btrfs.compression, entries, symlink targets, inline
//     content, extents with their copies, checksums and compression), devices compared by their paths;
//   - both are mounted and the views compared with the source (snapshotTree/diffTrees: bytes, names as
//     bytes, modes, owners, ns mtimes, xattrs, ACLs, hard links), except for the 100,000-entry
//     directory, whose views are compared by listing (the manifests carry every field already).
// Trees: every kind (holes, prealloc, hard links, specials, xattrs, ACLs, odd modes), inline files (one
// grown past its inline bytes), non-UTF-8 names, nodatacow, chattr flags, reflinks, a sparse file with
// data past 4 GiB, a 20,000-extent file, hard links enough for INODE_EXTREF items, a subdirectory as
// the export root; compressed files (zlib, lzo, zstd, inline compressed ones too); RAID1 (copies and
// crc32c checksums); RAID0 (stripes); a 100,000-entry directory; the subvolume mounted on its own (our images
// directory inside it skipped). Refusal: a nested subvolume inside the tree makes
// `--mapper auto` fall back to the walker (said once) and `--mapper bulk` fail in one line.
// Needs root, loop devices, btrfs-progs, xfs_io, setfacl, chattr.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import * as path from 'node:path'
import { withBtrfs, type BtrfsFs, type BtrfsOptions } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { populateEveryKind, seededBytes } from '../helpers/populate'
import { diffTrees, snapshotTree, type Tree } from '../helpers/tree'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'
import { readCheckedManifest } from '../../src/manifest/io'
import type { Inode, Manifest } from '../../src/manifest/types'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

interface Exported {
  bulk: string
  vfs: string
  bulkStderr: string
}

/** Export `target` with the bulk mapper and with the VFS walker; both images are released at t's teardown. */
async function exportBoth(t: Test, target: string, out: string): Promise<Exported> {
  const paths = { bulk: path.join(out, 'bulk.extfs'), vfs: path.join(out, 'vfs.json') }
  const common = ['export', target, '--frozen-image', 'snapshot', '--log-level', 'warn']
  const b = await extfs([...common, '--mapper', 'bulk', '--output', paths.bulk], { timeoutMs: 300_000 })
  t.teardown(() => release(paths.bulk))
  t.equal(b.code, 0, `bulk export: ${b.stderr}`)
  const v = await extfs([...common, '--mapper', 'vfs', '--output', paths.vfs], { timeoutMs: 300_000 })
  t.teardown(() => release(paths.vfs))
  t.equal(v.code, 0, `vfs export: ${v.stderr}`)
  t.equal(fs.readFileSync(paths.bulk).subarray(0, 8).toString('latin1'), 'EXTFSv2\n', 'the bulk mapper writes format 2')
  return { ...paths, bulkStderr: b.stderr }
}

/** JSON with every object's keys sorted: the two readers build their objects in different key orders. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, (x as Record<string, unknown>)[k]])) : x)
}

/**
 * An inode with its devices named by path instead of index (the two manifests number disks in the
 * order met), entries by name, and no extents the same as an empty list (format 1 writes [], format 2 0).
 */
function comparable(m: Manifest, i: Inode): string {
  const dev = (d: number) => m.devices[d]!.hint ?? `#${d}`
  const { extents, entries, ...rest } = i
  return canonical({
    ...rest,
    ...(entries?.length ? { entries: [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)) } : {}),
    ...(extents?.length ? { extents: extents.map((e) => ({ ...e, device: dev(e.device), copies: e.copies?.map((c) => ({ ...c, device: dev(c.device) })) })) } : {}),
  })
}

/** Field-for-field differences between the two manifests (at most 10 lines). */
function manifestDifferences(bulk: Manifest, vfs: Manifest): string[] {
  const out: string[] = []
  if (bulk.root !== vfs.root) out.push(`root ${bulk.root} vs ${vfs.root}`)
  if ([...bulk.features].sort().join() !== [...vfs.features].sort().join()) out.push(`features ${bulk.features} vs ${vfs.features}`)
  if (JSON.stringify(bulk.dataChecksums) !== JSON.stringify(vfs.dataChecksums)) out.push(`dataChecksums ${JSON.stringify(bulk.dataChecksums)} vs ${JSON.stringify(vfs.dataChecksums)}`)
  if (bulk.blockSize !== vfs.blockSize) out.push(`blockSize ${bulk.blockSize} vs ${vfs.blockSize}`)
  const disks = (m: Manifest) => m.devices.map((d) => d.hint).sort().join()
  if (disks(bulk) !== disks(vfs)) out.push(`devices ${disks(bulk)} vs ${disks(vfs)}`)
  const theirs = new Map(vfs.inodes.map((i) => [i.ino, i]))
  if (bulk.inodes.length !== vfs.inodes.length) out.push(`${bulk.inodes.length} inodes vs ${vfs.inodes.length}`)
  for (const i of bulk.inodes) {
    if (out.length >= 10) break
    const other = theirs.get(i.ino)
    if (!other) {
      out.push(`inode ${i.ino} only in the bulk manifest`)
      continue
    }
    const [a, b] = [comparable(bulk, i), comparable(vfs, other)]
    if (a !== b) out.push(`inode ${i.ino}:\n  bulk ${a.slice(0, 600)}\n  vfs  ${b.slice(0, 600)}`)
  }
  return out
}

const SNAPSHOT_OPTS = { timePrecisionNs: 1 }

/** The manifests agree field for field, and both views show the source's tree. */
async function compareAll(t: Test, ex: Exported, source: string, opts: { views?: boolean; sub?: string } = {}): Promise<{ bulk: Manifest; vfs: Manifest }> {
  const bulk = readCheckedManifest(ex.bulk)
  const vfs = readCheckedManifest(ex.vfs)
  t.same(manifestDifferences(bulk, vfs), [], 'the bulk manifest equals the walker\'s, field for field')
  if (opts.views === false) return { bulk, vfs }
  const sub = opts.sub ?? '.'
  const expected = await snapshotTree(path.join(source, sub), SNAPSHOT_OPTS)
  const views: Tree[] = []
  for (const m of [ex.bulk, ex.vfs]) views.push(await withView(m, (mnt) => snapshotTree(path.join(mnt, sub), SNAPSHOT_OPTS)))
  t.same(diffTrees(expected, views[0]!), [], 'the bulk view shows the source')
  t.same(diffTrees(views[1]!, views[0]!), [], 'the bulk view equals the walker\'s view')
  return { bulk, vfs }
}

/** Write `data` at each of `offsets` of `file` without syncing in between (xfs_io pwrite). */
async function pwrite(file: string, pieces: { offset: number; data: Buffer }[]): Promise<void> {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o644)
  try {
    for (const p of pieces) fs.writeSync(fd, p.data, 0, p.data.length, p.offset)
  } finally {
    fs.closeSync(fd)
  }
}

async function withSubvolume(t: Test, opts: BtrfsOptions, fn: (ctx: BtrfsFs, vol: string, out: string) => Promise<void>): Promise<void> {
  const out = await scratchDir(t, 'extfs-bulk-out-')
  await withBtrfs(opts, async (ctx) => {
    const vol = path.join(ctx.mountpoint, 'vol')
    await runOk('btrfs', ['subvolume', 'create', vol])
    await fn(ctx, vol, out)
    // Images first: the snapshots live on this filesystem.
    await release(path.join(out, 'bulk.extfs'))
    await release(path.join(out, 'vfs.json'))
  })
}

t.test('every kind, inline, names, flags, reflinks, sparse past 4 GiB, 20,000 extents, extrefs', async (t) => {
  await withSubvolume(t, { devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (_ctx, vol, out) => {
    await populateEveryKind(vol)
    const at = (rel: string) => path.join(vol, rel)
    fs.mkdirSync(at('extra'))
    // Inline (max_inline is 2048 bytes): small files, and one grown past them (btrfs moves it to an extent).
    for (const size of [1, 100, 2000]) fs.writeFileSync(at(`extra/inline-${size}`), seededBytes(size, size))
    fs.writeFileSync(at('extra/inline-grown'), seededBytes(7, 300))
    fs.truncateSync(at('extra/inline-grown'), 10_000)
    // Names that are not UTF-8, on a file and a directory.
    const bytes = (rel: string, tail: number[]) => Buffer.concat([Buffer.from(at(rel)), Buffer.from(tail)])
    fs.writeFileSync(bytes('extra/', [0x66, 0xff, 0x80]), 'latin-1 name\n')
    fs.mkdirSync(bytes('extra/', [0x64, 0xe9]))
    // nodatacow (set while empty), chattr flags, and a btrfs property (an xattr btrfs.compression).
    fs.writeFileSync(at('extra/nocow'), '')
    await runOk('chattr', ['+C', at('extra/nocow')])
    fs.writeFileSync(at('extra/nocow'), seededBytes(11, 200 * KiB))
    fs.writeFileSync(at('extra/flags'), seededBytes(12, 9000))
    await runOk('chattr', ['+d', '+A', at('extra/flags')])
    fs.mkdirSync(at('extra/flagged-dir'))
    await runOk('chattr', ['+d', at('extra/flagged-dir')])
    fs.writeFileSync(at('extra/prop'), '')
    await runOk('btrfs', ['property', 'set', at('extra/prop'), 'compression', 'zstd'])
    // Reflinks: a whole file, and a range of it inside another.
    fs.writeFileSync(at('extra/original'), seededBytes(13, 512 * KiB))
    await runOk('cp', ['--reflink=always', at('extra/original'), at('extra/reflinked')])
    fs.writeFileSync(at('extra/partly'), seededBytes(14, 256 * KiB))
    await runOk('xfs_io', ['-c', `reflink ${at('extra/original')} ${128 * KiB} ${64 * KiB} ${128 * KiB}`, at('extra/partly')])
    // Data past 4 GiB of a sparse file.
    await pwrite(at('extra/past-4g'), [{ offset: 0, data: seededBytes(15, 4096) }, { offset: 5 * GiB + 12_288, data: seededBytes(16, 70_000) }])
    // 20,000 extents: 4 KiB written every 8 KiB (a hole between each).
    await pwrite(at('extra/20k-extents'), Array.from({ length: 20_000 }, (_, k) => ({ offset: k * 8 * KiB, data: seededBytes(100_000 + k, 4 * KiB) })))
    // Enough long names of one inode in one directory that btrfs spills them into INODE_EXTREF items.
    fs.mkdirSync(at('extra/many-links'))
    fs.writeFileSync(at('extra/many-links/target'), 'linked\n')
    for (let k = 0; k < 200; k++) fs.linkSync(at('extra/many-links/target'), at(`extra/many-links/${'n'.repeat(200)}${k}`))
    await runOk('sync', [])

    const ex = await exportBoth(t, vol, out)
    const { bulk } = await compareAll(t, ex, vol)
    const byName = (dir: Inode, name: string) => bulk.inodes.find((i) => i.ino === dir.entries!.find((e) => e.name === name)?.ino)
    const extra = byName(bulk.inodes.find((i) => i.ino === bulk.root)!, 'extra')!
    t.equal(byName(extra, '20k-extents')?.extents?.length, 20_000, 'the 20,000-extent file has them all')
    t.ok(byName(extra, 'past-4g')?.extents?.some((e) => e.fileOffset > 4 * GiB), 'data past 4 GiB is mapped')
    t.equal(byName(extra, 'inline-2000')?.inline?.length, Math.ceil(2000 / 3) * 4, 'an inline file is carried')
    t.equal(byName(extra, 'inline-grown')?.extents?.length, 1, 'a file grown past its inline bytes was given an extent by btrfs')
    t.ok(byName(extra, 'prop')?.xattrs?.['btrfs.compression'], 'btrfs.compression is an xattr as listxattr shows it')
    t.ok(bulk.features.includes('byte-names') && bulk.features.includes('inline-data'), 'features byte-names and inline-data')
  })
})

t.test('a subdirectory as the root; compressed with zlib, lzo and zstd, inline compressed too', async (t) => {
  await withSubvolume(t, { devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (_ctx, vol, out) => {
    const top = path.join(vol, 'exported')
    fs.mkdirSync(top)
    fs.writeFileSync(path.join(vol, 'outside'), 'not exported\n')
    for (const alg of ['zlib', 'lzo', 'zstd']) {
      const dir = path.join(top, alg)
      fs.mkdirSync(dir)
      await runOk('btrfs', ['property', 'set', dir, 'compression', alg])
      const text = (n: number, seed: number) => Buffer.from(Array.from({ length: Math.ceil(n / 40) }, (_, k) => `${alg} line ${seed} ${k}`.padEnd(39) + '\n').join('').slice(0, n))
      fs.writeFileSync(path.join(dir, 'small'), text(3000, 1)) // compressed inline
      fs.writeFileSync(path.join(dir, 'big'), text(3 * MiB + 17, 2))
      fs.writeFileSync(path.join(dir, 'mixed'), Buffer.concat([text(256 * KiB, 3), seededBytes(3, 128 * KiB), text(100 * KiB, 4)]))
      // The middle overwritten: the extent around it is referenced from a decoded offset.
      await pwrite(path.join(dir, 'big'), [{ offset: MiB, data: text(8 * KiB, 5) }])
    }
    await runOk('sync', [])
    const ex = await exportBoth(t, top, out)
    const { bulk } = await compareAll(t, ex, top)
    t.ok(bulk.features.includes('compressed-extents') && bulk.features.includes('data-checksums'), 'compressed extents with their checksums')
    const algorithms = new Set(bulk.inodes.flatMap((i) => (i.extents ?? []).map((e) => e.compression).filter(Boolean)))
    t.same([...algorithms].sort(), ['lzo', 'zlib', 'zstd'], 'all three algorithms met')
    const carried = bulk.inodes.filter((i) => i.size === 3000 && i.inline !== undefined)
    t.equal(carried.length, 3, 'the small files (inline, compressed in the tree) are carried decoded')
  })
})

t.test('RAID1: other copies and crc32c checksums', async (t) => {
  await withSubvolume(t, { devices: 2, data: 'raid1', metadata: 'raid1', sizeMiB: 512 }, async (_ctx, vol, out) => {
    await populateEveryKind(vol)
    fs.writeFileSync(path.join(vol, 'nocow'), '')
    await runOk('chattr', ['+C', path.join(vol, 'nocow')])
    fs.writeFileSync(path.join(vol, 'nocow'), seededBytes(21, 300 * KiB)) // no checksums: no copies recorded
    await runOk('sync', [])
    const ex = await exportBoth(t, vol, out)
    const { bulk } = await compareAll(t, ex, vol)
    t.ok(bulk.dataChecksums && bulk.inodes.some((i) => i.extents?.some((e) => e.copies?.length === 1 && e.csums)), 'mirrored extents carry a copy and checksums')
    t.equal(bulk.devices.length, 2, 'both members are devices')
  })
})

t.test('RAID0: extents cut at stripe units, joined where they continue', async (t) => {
  await withSubvolume(t, { devices: 2, data: 'raid0', metadata: 'raid1', sizeMiB: 384 }, async (_ctx, vol, out) => {
    for (const [k, size] of [5 * MiB + 123, 64 * KiB, 200 * KiB + 1].entries()) fs.writeFileSync(path.join(vol, `f${k}`), seededBytes(40 + k, size))
    await runOk('sync', [])
    const ex = await exportBoth(t, vol, out)
    const { bulk } = await compareAll(t, ex, vol)
    t.ok(bulk.inodes.some((i) => (i.extents?.length ?? 0) > 1), 'a file spans stripes of both members')
  })
})

t.test('a 100,000-entry directory', async (t) => {
  await withSubvolume(t, { devices: 1, data: 'single', metadata: 'single', sizeMiB: 1024 }, async (_ctx, vol, out) => {
    const dir = path.join(vol, 'wide')
    fs.mkdirSync(dir)
    for (let k = 0; k < 100_000; k++) fs.closeSync(fs.openSync(path.join(dir, `f${String(k).padStart(6, '0')}`), 'w'))
    fs.writeFileSync(path.join(dir, 'f000123'), 'some bytes\n')
    await runOk('sync', [])
    const ex = await exportBoth(t, vol, out)
    const { bulk } = await compareAll(t, ex, vol, { views: false })
    t.equal(bulk.inodes.length, 100_002, 'root, the directory and its files')
    await withView(ex.bulk, async (mnt) => {
      t.equal(fs.readdirSync(path.join(mnt, 'wide')).length, 100_000, 'the view lists every entry')
      t.equal(fs.readFileSync(path.join(mnt, 'wide', 'f000123'), 'utf8'), 'some bytes\n', 'and reads the one with content')
    })
  })
})

t.test('the subvolume mounted on its own: our images directory inside it is skipped', async (t) => {
  const out = await scratchDir(t, 'extfs-bulk-out-')
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 256 }, async (ctx) => {
    await runOk('btrfs', ['subvolume', 'create', path.join(ctx.mountpoint, 'vol')])
    // Mounted by itself, the subvolume holds .extfs-images: each snapshot sees the image directory made
    // for it (and the second one the first image's snapshot, a nested subvolume) unless skipped.
    const own = path.join(ctx.tmpdir, 'own')
    fs.mkdirSync(own)
    await runOk('mount', ['-o', `subvol=vol,device=${ctx.loopDevices[0]}`, ctx.loopDevices[0]!, own])
    try {
      fs.mkdirSync(path.join(own, 'dir'))
      fs.writeFileSync(path.join(own, 'dir', 'file'), seededBytes(31, 50_000))
      await runOk('sync', [])
      const ex = await exportBoth(t, own, out)
      // The source's own .extfs-images holds the snapshots (the same inode numbers): compare below it.
      const { bulk } = await compareAll(t, ex, own, { sub: 'dir' })
      const root = bulk.inodes.find((i) => i.ino === bulk.root)!
      t.same(root.entries!.map((e) => e.name).sort(), ['dir'], 'only the tree, not .extfs-images')
      await release(ex.bulk)
      await release(ex.vfs)
    } finally {
      await runOk('umount', [own])
    }
  })
})

t.test('a nested subvolume: auto falls back to the walker, bulk refuses in one line', async (t) => {
  await withSubvolume(t, { devices: 1, data: 'single', metadata: 'dup', sizeMiB: 256 }, async (_ctx, vol, out) => {
    fs.writeFileSync(path.join(vol, 'file'), 'x\n')
    await runOk('btrfs', ['subvolume', 'create', path.join(vol, 'nested')])
    const bulk = await extfs(['export', vol, '--frozen-image', 'snapshot', '--mapper', 'bulk', '--output', path.join(out, 'bulk.extfs')])
    t.not(bulk.code, 0, 'bulk fails')
    t.match(bulk.stderr.trim(), /^extfs: .*--mapper bulk: directory inode 256 holds btrfs subvolume \d+/, 'naming why')
    t.equal(withoutProgress(bulk.stderr).trim().split('\n').length, 1, 'in one line')
    t.notOk(fs.existsSync(path.join(out, 'bulk.extfs')), 'and writes no manifest')
    const auto = await extfs(['export', vol, '--frozen-image', 'snapshot', '--output', path.join(out, 'vfs.json')])
    t.equal(auto.code, 0, auto.stderr)
    t.match(auto.stderr, /bulk mapper declined \(directory inode 256 holds btrfs subvolume \d+/, 'auto says it fell back')
    t.equal(fs.readFileSync(path.join(out, 'vfs.json')).subarray(0, 1).toString(), '{', 'and the walker wrote a format 1 manifest')
  })
})
