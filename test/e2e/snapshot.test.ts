// `--frozen-image snapshot` on real filesystems: an XFS reflink clone set (the owner keeps writing,
// the view keeps serving the image), ext4 refused with nothing left behind, and a btrfs subvolume
// snapshot (once btrfs mapping is wired in).
import t from 'tap'
import { existsSync, promises as fsp, readFileSync, readdirSync } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { withBtrfs } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { populateEveryKind, seededBytes } from '../helpers/populate'
import { snapshotTree, diffTrees, Tree } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'

const NS = 1
const isSocket = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket'
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))

/** Overwrite, append to, delete and create files in the source after the image was taken. */
/** What is left in the mount's images directory: it stays after release, empty (docs/frozen-images.md). */
function imagesLeft(mountpoint: string): string[] {
  const dir = path.join(mountpoint, '.extfs-images')
  return existsSync(dir) ? readdirSync(dir) : []
}

async function scribble(data: string): Promise<void> {
  await fsp.writeFile(path.join(data, 'regular/f4096'), seededBytes(9001, 4096))
  await fsp.appendFile(path.join(data, 'regular/f1048579'), seededBytes(9002, 70_000))
  await fsp.rm(path.join(data, 'regular/f4097'))
  await fsp.writeFile(path.join(data, 'regular/new-after-image'), 'written after the image\n')
  const fh = await fsp.open(path.join(data, 'frag/one'), 'r+')
  await fh.write(seededBytes(9003, 65536), 0, 65536, 128 * 1024)
  await fh.sync()
  await fh.close()
}

t.test('XFS reflink: a clone set serves the image while the owner keeps writing', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await populateEveryKind(data)
    const manifest = path.join(state, 'snap.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      // Nothing writes between the clones and this snapshot, so it is the image.
      const image = await snapshotTree(data, { timePrecisionNs: NS })
      const m = readJson(manifest)
      t.match(m.frozenImage, { kind: 'snapshot', mechanism: 'clone-set', fsType: 'xfs', imageId: /^[0-9a-f]{32}$/ })
      t.equal(m.frozenImage.imagePath, path.join(fs.mountpoint, '.extfs-images', m.frozenImage.imageId))
      t.match(exp.stdout, /image: clone-set at .*\.extfs-images/, 'export says which mechanism it used')
      const ins = await extfs(['inspect', manifest])
      t.match(ins.stdout, /frozen image {2}snapshot \(clone-set at /, 'inspect shows the mechanism')
      t.ok(existsSync(`${manifest}.frozen-image`), 'the journal stays until release')

      await scribble(data)
      await withView(manifest, async (view) => {
        const out = path.join(state, 'tar')
        await tarRoundTrip(view, out)
        t.same(diffTrees(image, await snapshotTree(out, { timePrecisionNs: NS }), { ignorePaths: isSocket(image) }), [], 'tar of the view equals the source as of the image')
        t.same(await fsp.readFile(path.join(view, 'regular/f4097')), seededBytes(1000 + 4, 4097), 'a file deleted after the image is still served')
      })

      const owners = await snapshotTree(data, { timePrecisionNs: NS })
      const rel = await extfs(['release', manifest])
      t.equal(rel.code, 0, `release: ${rel.stderr}`)
      t.match(rel.stdout, /removed .*\.extfs-images/)
      t.same(imagesLeft(fs.mountpoint), [], 'release removed the clone set (the images directory stays, empty)')
      t.notOk(existsSync(`${manifest}.frozen-image`), 'release removed the journal')
      t.same(diffTrees(owners, await snapshotTree(data, { timePrecisionNs: NS })), [], "the owner's files are untouched by release")
      t.equal(await fsp.readFile(path.join(data, 'regular/new-after-image'), 'utf8'), 'written after the image\n')
      const again = await extfs(['release', manifest])
      t.equal(again.code, 0, `releasing twice is harmless: ${again.stderr}`)

      // The next night: export and release leave the owner's mount root as they found it.
      const root = await fsp.stat(fs.mountpoint, { bigint: true })
      t.equal((await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])).code, 0, 'exported again')
      t.equal((await extfs(['release', manifest])).code, 0, 'released again')
      const after = await fsp.stat(fs.mountpoint, { bigint: true })
      t.same([after.mtimeNs, after.ctimeNs], [root.mtimeNs, root.ctimeNs], "a second night's clone set does not touch the mount root's mtime or ctime")
    } finally {
      await release(manifest)
    }
  })
})

t.test('ext4: snapshot is refused, nothing left behind', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'a'), 'a\n')
    const manifest = path.join(state, 'm.json')
    const r = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
    t.equal(r.code, 8, 'exit code Export')
    t.match(r.stderr, /^extfs: .*snapshot is not possible .*use --frozen-image freeze, or none/)
    t.equal(withoutProgress(r.stderr).trim().split('\n').length, 1, 'one line')
    t.same((await fsp.readdir(state)).sort(), [], 'no manifest, record or journal')
    t.notOk(existsSync(path.join(fs.mountpoint, '.extfs-images')), 'no image directory')
  })
})

t.test('XFS without reflink: snapshot is refused', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=0'] }, async (fs) => {
    const manifest = path.join(state, 'm.json')
    const r = await extfs(['export', fs.mountpoint, '--output', manifest, '--frozen-image', 'snapshot'])
    t.equal(r.code, 8)
    t.match(r.stderr, /XFS without reflink=1.*--frozen-image freeze/)
    t.same(await fsp.readdir(state), [])
    t.notOk(existsSync(path.join(fs.mountpoint, '.extfs-images')))
  })
})

t.test('btrfs: a subvolume gets a read-only snapshot, the top level a clone set', async (t) => {
  const state = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup' }, async (fs) => {
    const sv = path.join(fs.mountpoint, 'sv')
    await runOk('btrfs', ['subvolume', 'create', sv])
    const data = path.join(sv, 'data')
    await fsp.mkdir(data)
    await populateEveryKind(data)
    const manifest = path.join(state, 'btrfs.json')
    try {
      const exp = await extfs(['export', data, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const image = await snapshotTree(data, { timePrecisionNs: NS })
      const m = readJson(manifest)
      t.match(m.frozenImage, { kind: 'snapshot', mechanism: 'btrfs-snapshot', fsType: 'btrfs' })
      t.equal(m.frozenImage.imagePath, path.join(fs.mountpoint, '.extfs-images', m.frozenImage.imageId), 'outside the exported subvolume')
      await scribble(data)
      await withView(manifest, async (view) => {
        const out = path.join(state, 'tar')
        await tarRoundTrip(view, out)
        t.same(diffTrees(image, await snapshotTree(out, { timePrecisionNs: NS }), { ignorePaths: isSocket(image) }), [], 'tar of the view equals the subvolume as of the snapshot')
      })
      const rel = await extfs(['release', manifest])
      t.equal(rel.code, 0, `release: ${rel.stderr}`)
      t.same(imagesLeft(fs.mountpoint), [], 'snapshot deleted')
      t.equal(await fsp.readFile(path.join(data, 'regular/new-after-image'), 'utf8'), 'written after the image\n', "the owner's subvolume is untouched")
    } finally {
      await release(manifest)
    }

    const top = path.join(fs.mountpoint, 'top')
    await fsp.mkdir(top)
    await fsp.writeFile(path.join(top, 'big'), seededBytes(42, 300_000))
    const m2 = path.join(state, 'top.json')
    try {
      const exp = await extfs(['export', top, '--output', m2, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      t.equal(readJson(m2).frozenImage.mechanism, 'clone-set', 'the top level (id 5) gets a clone set')
      await fsp.writeFile(path.join(top, 'big'), 'overwritten')
      await withView(m2, async (view) => {
        t.same(await fsp.readFile(path.join(view, 'big')), seededBytes(42, 300_000), 'the view serves the clone')
      })
    } finally {
      await release(m2)
    }
    t.same(imagesLeft(fs.mountpoint), [], 'clones removed')

    // Compressed extents (btrfs property compression=zstd) of a clone set: mapped from the clone's own
    // extent items, decoded by the view (test/e2e/btrfs-compressed.test.ts has the rest).
    const comp = path.join(fs.mountpoint, 'comp')
    await fsp.mkdir(comp)
    await runOk('btrfs', ['property', 'set', comp, 'compression', 'zstd'])
    const compressible = Buffer.from('compressible '.repeat(20_000))
    await fsp.writeFile(path.join(comp, 'big'), compressible)
    await runOk('sync', ['-f', comp])
    const compState = await scratchDir(t)
    const m3 = path.join(compState, 'comp.json')
    const r = await extfs(['export', comp, '--output', m3, '--frozen-image', 'snapshot', '--carry-max', '65536'])
    try {
      t.equal(r.code, 0, `a compressed file over --carry-max is exported, not carried: ${r.stderr}`)
      const m = readJson(m3)
      t.equal(m.frozenImage.mechanism, 'clone-set', 'from a clone set')
      const file = m.inodes.find((i: { kind: string; size: number }) => i.kind === 'file' && i.size === 260_000)
      t.ok(file?.extents?.length > 0 && file.extents.every((e: { compression?: string }) => e.compression === 'zstd'), 'its extents are zstd, as stored')
      await withView(m3, async (view) => {
        t.ok((await fsp.readFile(path.join(view, 'big'))).equals(compressible), 'the view decodes it, exact')
      })
    } finally {
      await release(m3)
    }
    t.same(imagesLeft(fs.mountpoint), [], 'its clones were removed')
  })
})
