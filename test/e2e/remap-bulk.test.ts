// Issue 14: `extfs remap` of a format 2 image through its bulk mapper (src/remap/bulk.ts), on real loop
// devices. A btrfs subvolume exported as a read-only snapshot with --mapper bulk:
//   - remapped at once: unchanged, through the bulk mapper (its log line says which path ran);
//   - with a mount inside the (live) exported tree: still the bulk mapper (it sweeps the snapshot);
//   - after `btrfs balance -d` (which moves a read-only snapshot's data too) and a fill that reuses the
//     old places: a delta naming exactly the files with extents (the inline ones live in metadata), a
//     mounted view of the manifest follows it and equals the source byte for byte, and a second remap
//     (the delta's files now come from the overlay, the rest from the manifest) is unchanged;
// a btrfs snapshot exported by the walker (format 2) with a nested subvolume, which the bulk mapper
// refuses: remap warns once and maps through the VFS, unchanged;
// and an ext4 or XFS image held by a freeze and signed, remapped at once: unchanged, through the bulk mapper
// (with another key: refused).
// Needs root, loop devices, btrfs-progs.
import t from 'tap'
import fs, { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withBtrfs } from '../helpers/btrfs'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { seededBytes } from '../helpers/populate'
import { diffTrees, snapshotTree } from '../helpers/tree'
import { extfs, release, REMAPPED, scratchDir, withView } from '../helpers/extfs'
import { fillUp } from '../helpers/moved'
import { readCheckedManifest } from '../../src/manifest/io'

const MiB = 1024 * 1024
/** The bulk path's two ways to find an image unchanged or not: the bodies' bytes, or the join by ino. */
const BY_BYTES = /"mapper":"bulk","compared":"bytes"/
const BY_INODES = /"mapper":"bulk","compared":"inodes"/

/** A few MiB-sized files, small (inline) ones and a subdirectory, synced. */
async function populate(dir: string): Promise<void> {
  for (let i = 0; i < 6; i++) await fsp.writeFile(path.join(dir, `big${i}`), seededBytes(100 + i, 2 * MiB + i * 4097))
  await fsp.mkdir(path.join(dir, 'sub'))
  for (let i = 0; i < 20; i++) await fsp.writeFile(path.join(dir, 'sub', `small${i}`), seededBytes(200 + i, 100 + i))
  await fsp.writeFile(path.join(dir, 'sub', 'mid'), seededBytes(300, 300_000))
  await runOk('sync', [])
}

async function remap(manifest: string, extra: string[] = []) {
  return extfs(['remap', manifest, '--log-level', 'info', ...extra], { timeoutMs: 300_000 })
}

t.test('btrfs snapshot: unchanged, a mount inside the tree, a balance followed byte-exact', async (t) => {
  await withBtrfs({ devices: 1, data: 'single', metadata: 'single', sizeMiB: 320 }, async (bfs) => {
    const source = path.join(bfs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', source])
    await populate(source)
    const scratch = await scratchDir(t, 'extfs-remap-bulk-')
    const manifest = path.join(scratch, 'nightly.extfs')
    const exp = await extfs(['export', source, '--output', manifest, '--frozen-image', 'snapshot', '--mapper', 'bulk'])
    t.teardown(() => release(manifest))
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const m = readCheckedManifest(manifest)
    const withExtents = m.inodes.filter((i) => i.kind === 'file' && (i.extents?.length ?? 0) > 0).map((i) => i.ino).sort((a, b) => a - b)
    t.equal(withExtents.length, 7, 'six big files and the 300 KB one have extents; the small ones are inline')

    const first = await remap(manifest)
    t.equal(first.code, 0, `remap: ${first.stderr}`)
    t.equal(first.stdout, `unchanged ${m.configId}\n`)
    t.match(first.stderr, BY_BYTES, 'mapped again by the bulk mapper, its body byte for byte the manifest\'s')

    // A mount inside the exported tree (of the live subvolume): the snapshot the mapper sweeps is beneath no mount.
    const covered = path.join(source, 'sub')
    await runOk('mount', ['-t', 'tmpfs', 'extfs-remap-test', covered])
    try {
      const mounted = await remap(manifest)
      t.equal(mounted.code, 0, `remap with a mount inside: ${mounted.stderr}`)
      t.equal(mounted.stdout, `unchanged ${m.configId}\n`)
      t.match(mounted.stderr, BY_BYTES, 'still the bulk mapper')
    } finally {
      await runOk('umount', [covered])
    }

    await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', bfs.mountpoint], { timeoutMs: 120_000 })
    await fillUp(bfs.mountpoint)
    const moved = await remap(manifest)
    t.equal(moved.code, 0, `remap after balance: ${moved.stderr}`)
    t.match(moved.stderr, BY_INODES, 'the moves found by the join')
    const match = REMAPPED.exec(moved.stdout)
    t.ok(match, `a delta: ${moved.stdout.trim()}`)
    const delta = JSON.parse(fs.readFileSync(`${manifest}.delta-1`, 'utf8')) as { files: { ino: number; extents?: unknown[] }[]; proofs?: { device: number }[] }
    t.same(delta.files.map((f) => f.ino), withExtents, 'the delta names every file with extents, each once, in ino order')
    t.ok(delta.files.every((f) => Array.isArray(f.extents) && f.extents.length > 0), 'complete new extent lists')
    t.same(delta.proofs?.map((p) => p.device), [0], 'the device is proved again: its blocks moved')

    const again = await remap(manifest)
    t.equal(again.code, 0, `second remap: ${again.stderr}`)
    t.equal(again.stdout, `unchanged ${match?.[2]}\n`, 'nothing moved since the delta')
    t.match(again.stderr, BY_INODES, 'with a delta in the chain: joined, the overlay standing for the manifest')

    const want = await snapshotTree(source, { timePrecisionNs: 1 })
    await withView(manifest, async (mnt) => {
      const diff = diffTrees(want, await snapshotTree(mnt, { timePrecisionNs: 1 }), { ignorePaths: (rel) => rel === '.' })
      t.same(diff, [], 'the view (manifest + delta) equals the source byte for byte')
    })
  })
})

t.test('btrfs snapshot exported by the walker in format 2, with a nested subvolume: the bulk mapper declines, remap says so once and maps through the VFS', async (t) => {
  await withBtrfs({ devices: 1, data: 'single', metadata: 'single' }, async (bfs) => {
    const source = path.join(bfs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', source])
    await populate(source)
    await runOk('btrfs', ['subvolume', 'create', path.join(source, 'nested')])
    const scratch = await scratchDir(t, 'extfs-remap-bulk-')
    const manifest = path.join(scratch, 'walked.extfs')
    const exp = await extfs(['export', source, '--output', manifest, '--frozen-image', 'snapshot', '--mapper', 'vfs', '--format', '2'])
    t.teardown(() => release(manifest))
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const r = await remap(manifest)
    t.equal(r.code, 0, `remap: ${r.stderr}`)
    t.equal(r.stdout, `unchanged ${readCheckedManifest(manifest).configId}\n`)
    t.match(r.stderr, /the bulk mapper declined to map the image again \(.*subvolume.*\); remapping file by file through the VFS/)
    t.equal(r.stderr.match(/declined/g)?.length, 1, 'said once')
    t.match(r.stderr, /"mapper":"vfs"/)
  })
})

for (const held of [{ fs: 'ext4' as const, mkfsArgs: [] }, { fs: 'xfs' as const, mkfsArgs: ['-m', 'rmapbt=1'] }]) {
t.test(`${held.fs} freeze, signed: an unchanged image remaps through the bulk mapper`, async (t) => {
  await withLoopFs({ fs: held.fs, mkfsArgs: held.mkfsArgs }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await populate(tree)
    const scratch = await scratchDir(t, 'extfs-remap-bulk-')
    const manifest = path.join(scratch, 'nightly.extfs')
    const key = path.join(scratch, 'key')
    fs.writeFileSync(key, '0123456789abcdef0123456789abcdef\n')
    try {
      const exp = await extfs(['export', tree, '--output', manifest, '--frozen-image', 'freeze', '--mapper', 'bulk', '--key', key])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const configId = readCheckedManifest(manifest).configId
      const other = path.join(scratch, 'other-key')
      fs.writeFileSync(other, 'another key, another key, another\n')
      const refused = await remap(manifest, ['--key', other])
      t.not(refused.code, 0, 'another key: refused')
      t.match(refused.stderr, /signature does not match/)
      const r = await remap(manifest, ['--key', key])
      t.equal(r.code, 0, `remap: ${r.stderr}`)
      t.equal(r.stdout, `unchanged ${configId}\n`)
      t.match(r.stderr, BY_BYTES)
      t.notMatch(r.stderr, /declined/)
      t.same(fs.readdirSync(scratch).filter((n) => n.includes('remap-body')), [], 'the scratch body is gone')
    } finally {
      await release(manifest)
    }
  })
})
}
