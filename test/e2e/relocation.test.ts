// Blocks of a frozen image move under a mounted view (btrfs balance relocates even a read-only
// snapshot). `extfs remap` publishes a delta of the moved files; the view follows it on the next open
// and serves the new locations, while the old ones are overwritten with other data. Files read before
// the move are reported by `extfs backup` unless read again.
import t, { Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withBtrfs, BtrfsFs } from '../helpers/btrfs'
import { run, runOk } from '../helpers/exec'
import { seededBytes } from '../helpers/populate'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { readJson } from '../helpers/tamper'
import { overwrittenOldExtents as countOverwritten } from '../helpers/moved'

const MiB = 1024 * 1024
const FILES = ['a', 'b', 'c', 'd', 'e', 'f']

/** A subvolume with a few MiB-sized files, exported as a read-only snapshot. */
async function exportImage(t: Test, fs: BtrfsFs, scratch: string): Promise<{ manifest: string; source: string }> {
  const source = path.join(fs.mountpoint, 'data')
  await runOk('btrfs', ['subvolume', 'create', source])
  for (const [i, name] of FILES.entries()) await fsp.writeFile(path.join(source, name), seededBytes(100 + i, 3 * MiB + i * 4097))
  await runOk('sync', [])
  const manifest = path.join(scratch, 'nightly.json')
  const exp = await extfs(['export', source, '--output', manifest, '--frozen-image', 'snapshot'])
  t.equal(exp.code, 0, `export: ${exp.stderr}`)
  return { manifest, source }
}

/** Relocate every data chunk, then fill the filesystem, so the old locations hold other bytes. */
async function relocate(fs: BtrfsFs): Promise<void> {
  await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', fs.mountpoint], { timeoutMs: 120_000 })
  // Until the filesystem is full: btrfs places new chunks anywhere free, the old ones' places included.
  await run('dd', ['if=/dev/zero', `of=${path.join(fs.mountpoint, 'filler')}`, 'bs=1M', 'conv=fsync'], { timeoutMs: 120_000 })
  await runOk('sync', [])
}

/** How many of the manifest's extents no longer hold the file's bytes at their old place. */
async function overwrittenOldExtents(manifest: string, source: string): Promise<number> {
  const m = await readJson(manifest)
  const byName = new Map<string, number>()
  for (const i of m.inodes) for (const e of i.entries ?? []) byName.set(e.name, e.ino)
  return countOverwritten(manifest, await Promise.all(FILES.map(async (name) => ({ ino: byName.get(name)!, content: await fsp.readFile(path.join(source, name)) }))))
}

t.test('a mounted view follows a btrfs balance and the backup stays exact', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
    const { manifest, source } = await exportImage(t, fs, scratch)
    const expected = await snapshotTree(source, { timePrecisionNs: 1, rootTimes: false })
    try {
      await withView(manifest, async (view, logFile) => {
        t.ok((await fsp.readFile(path.join(view, 'a'))).equals(await fsp.readFile(path.join(source, 'a'))), 'a reads right before the move')
        await relocate(fs)
        t.ok((await overwrittenOldExtents(manifest, source)) > 0, 'the old locations now hold other data (reading them would be wrong)')
        const remap = await extfs(['remap', manifest])
        t.equal(remap.code, 0, `remap: ${remap.stderr}`)
        t.match(remap.stdout, /^remapped /, `remap published a delta: ${remap.stdout.trim()}`)

        const restored = path.join(scratch, 'restored')
        await tarRoundTrip(view, restored)
        t.same(diffTrees(expected, await snapshotTree(restored, { timePrecisionNs: 1, rootTimes: false })), [], 'tar of the view after the move equals the image')
        t.match(await fsp.readFile(logFile, 'utf8'), /followed the config ID/, 'the view logged that it followed the delta')
      })
    } finally {
      await release(manifest)
    }
  })
})

t.test('extfs backup names the files read under a superseded map, unless they were read again', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
    const { manifest } = await exportImage(t, fs, scratch)
    const move = `btrfs balance start -d --full-balance ${fs.mountpoint} >/dev/null && ${path.resolve('bin/extfs')} remap ${manifest} >/dev/null`
    try {
      const stale = await run(path.resolve('bin/extfs'), ['backup', manifest, '--', 'sh', '-c', `cat a b >/dev/null && ${move} && cat c >/dev/null`], { timeoutMs: 180_000 })
      t.equal(stale.code, 7, `a clean command is turned into exit 7 (stale): ${stale.stderr.trim()}`)
      t.match(stale.stderr, /read under a superseded map/, 'says why')
      t.match(stale.stderr, /\ba\b/, 'names a')
      t.match(stale.stderr, /\bb\b/, 'names b')
      t.notMatch(stale.stderr, /\bc\b/, 'not c, read only after the move')

      const reread = await run(path.resolve('bin/extfs'), ['backup', manifest, '--', 'sh', '-c', `cat a >/dev/null && ${move} && cat a c >/dev/null`], { timeoutMs: 180_000 })
      t.equal(reread.code, 0, `a file read again in full after the move is fine: ${reread.stderr.trim()}`)

      const failing = await run(path.resolve('bin/extfs'), ['backup', manifest, '--', 'sh', '-c', `cat d >/dev/null && ${move} && exit 3`], { timeoutMs: 180_000 })
      t.equal(failing.code, 3, 'the command\'s own failure status is kept')
      t.match(failing.stderr, /\bd\b/, 'and d is still named')
      const reports = (await fsp.readdir('/run/extfs').catch(() => [] as string[])).filter((n) => n.endsWith('.report.json'))
      t.same(reports, [], 'no view report is left behind in /run/extfs')
    } finally {
      await release(manifest)
    }
  })
})
