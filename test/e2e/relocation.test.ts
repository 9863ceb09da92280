// Blocks of a frozen image move under a mounted view: btrfs balance relocates even a read-only
// snapshot, xfs_fsr defragments the clones of a reflink clone set, btrfs replace moves a member's
// blocks to a spare (the old member is wiped afterwards). `extfs remap` publishes a delta of the moved
// files; the view follows it on the next open and serves the new locations, while the old ones hold
// other data. A view mounted only after the move is proved with the delta's fingerprints (the
// manifest's sample moved blocks) and does not look for a retired member. Files read before the move
// are reported by `extfs backup` unless read again.
import t, { Test } from 'tap'
import { promises as fsp } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import * as path from 'node:path'
import { busiestDevice, withBtrfs, withBtrfsAndSpare } from '../helpers/btrfs'
import { withLoopFs } from '../helpers/loopfs'
import { run, runOk } from '../helpers/exec'
import { seededBytes, writeInterleaved } from '../helpers/populate'
import { snapshotTree, diffTrees, Tree } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { readJson } from '../helpers/tamper'
import { exportBtrfsImage, fillUp, IMAGE_FILES, overwrittenOldExtents, readNamed, relocate, remapMoved, rootFiles } from '../helpers/moved'

const KiB = 1024
/** Times to the nanosecond; the root's own times are the view's, not the image's. */
const TREE = { timePrecisionNs: 1, rootTimes: false }

/**
 * A view mounted after the move, from the same manifest: it must be proved on the delta's fingerprints
 * (the manifest's sample blocks that now hold other data) and tar exact through the followed chain.
 */
async function freshViewIsExact(t: Test, manifest: string, expected: Tree, scratch: string): Promise<void> {
  await withView(manifest, async (view, logFile) => {
    const restored = path.join(scratch, 'restored-fresh')
    await tarRoundTrip(view, restored)
    t.same(diffTrees(expected, await snapshotTree(restored, TREE)), [], 'tar of a view mounted after the move equals the image')
    t.match(await fsp.readFile(logFile, 'utf8'), /followed the config ID/, 'that view followed the delta too')
  })
}

/** Every byte of an open file, read from offset 0 (one byte more is asked for, to see a file too long). */
async function readWhole(fh: FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size + 1)
  let got = 0
  for (let n = -1; n !== 0 && got < buf.length; got += n) n = (await fh.read(buf, got, buf.length - got, got)).bytesRead
  return buf.subarray(0, got)
}

/** A file of the view opened and read in full before the move, kept open to be read again after it. */
interface Held {
  name: string
  fh: FileHandle
  content: Buffer
}

/** Run `fn` with `name` of the view open and read in full (checked against `content`); always closed. */
async function withHeld<T>(t: Test, view: string, name: string, content: Buffer, fn: (held: Held) => Promise<T>): Promise<T> {
  const fh = await fsp.open(path.join(view, name))
  try {
    t.ok((await readWhole(fh, content.length)).equals(content), `${name} reads right before the move`)
    return await fn({ name, fh, content })
  } finally {
    await fh.close()
  }
}

/**
 * After the move and its remap: tar of the still-mounted view equals the image, the view says it
 * followed the delta, and the file held open since before the move reads true through the same handle.
 */
async function viewIsExact(t: Test, view: string, logFile: string, expected: Tree, scratch: string, held: Held): Promise<void> {
  const restored = path.join(scratch, 'restored')
  await tarRoundTrip(view, restored)
  t.same(diffTrees(expected, await snapshotTree(restored, TREE)), [], 'tar of the view after the move equals the image')
  t.match(await fsp.readFile(logFile, 'utf8'), /followed the config ID/, 'the view logged that it followed the delta')
  // Its pages from before the move would read right from the page cache: drop them (fadvise DONTNEED),
  // so the bytes come through the handle from the engine, and so through the new map.
  await runOk('dd', [`if=${path.join(view, held.name)}`, 'iflag=nocache', 'count=0', 'status=none'])
  t.ok((await readWhole(held.fh, held.content.length)).equals(held.content), `${held.name}, open since before the move, reads right again through the same handle`)
}

t.test('a mounted view follows a btrfs balance and the backup stays exact', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
    const { manifest, source } = await exportBtrfsImage(t, fs, scratch)
    const expected = await snapshotTree(source, TREE)
    const contents = await readNamed(source, IMAGE_FILES)
    try {
      await withView(manifest, (view, logFile) => withHeld(t, view, 'a', contents.get('a')!, async (held) => {
        await relocate(fs)
        t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the old locations now hold other data (reading them would be wrong)')
        t.same((await remapMoved(t, manifest)).proved, [0], 'the delta proves the device again: its blocks moved')
        await viewIsExact(t, view, logFile, expected, scratch, held)
      }))
      await freshViewIsExact(t, manifest, expected, scratch)
    } finally {
      await release(manifest)
    }
  })
})

t.test('a mounted view follows xfs_fsr of a reflink clone set and the backup stays exact', async (t) => {
  const scratch = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    for (let i = 0; i < 20; i++) await fsp.writeFile(path.join(data, `small-${i}`), seededBytes(300 + i, 8 * KiB + i))
    const bigNames = ['big-0', 'big-1', 'big-2']
    // Interleaved: each file (and so its clone) in many extents, which xfs_fsr gathers into one.
    await writeInterleaved(bigNames.map((n, i) => ({ file: path.join(data, n), seed: 400 + i })), 48, 64 * KiB)
    await runOk('sync', ['-f', data])
    const manifest = path.join(scratch, 'xfs.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const m = await readJson(manifest)
      t.equal(m.frozenImage.mechanism, 'clone-set', 'a reflink clone set')
      const expected = await snapshotTree(data, TREE)
      const contents = await readNamed(data, bigNames)
      const files = rootFiles(m)
      t.ok(bigNames.every((n) => files.get(n).extents.length > 1), 'the big files are fragmented')

      await withView(manifest, (view, logFile) => withHeld(t, view, 'big-0', contents.get('big-0')!, async (held) => {
        t.ok((await fsp.readFile(path.join(view, 'big-1'))).equals(contents.get('big-1')!), 'big-1 reads right before the move')
        t.ok((await fsp.readFile(path.join(view, 'small-3'))).equals(await fsp.readFile(path.join(data, 'small-3'))), 'small-3 reads right before the move')
        for (const n of bigNames) await runOk('xfs_fsr', ['-v', path.join(m.frozenImage.imagePath, String(files.get(n).ino))], { timeoutMs: 60_000 })
        // The clones' old blocks now belong to the originals alone: the owner deletes them (the image
        // does not need them any more), and new data takes their place.
        for (const n of bigNames) await fsp.rm(path.join(data, n))
        await fillUp(fs.mountpoint)
        t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the old locations now hold other data (reading them would be wrong)')
        const moved = await remapMoved(t, manifest)
        t.equal(moved.files, bigNames.length, 'the delta holds the defragmented files')
        t.same(moved.proved, [0], 'the delta proves the device again: its blocks moved')
        await viewIsExact(t, view, logFile, expected, scratch, held)
      }))
      await freshViewIsExact(t, manifest, expected, scratch)
    } finally {
      await release(manifest)
    }
  })
})

t.test('a mounted view follows a btrfs replace whose old member was wiped, and the backup stays exact', async (t) => {
  const scratch = await scratchDir(t)
  const sizeMiB = 160
  // raid0 data: every file has extents on both members, so a moved file keeps some on the member kept.
  await withBtrfsAndSpare({ members: 2, data: 'raid0', metadata: 'raid1', sizeMiB }, async (fs, spare) => {
    const { manifest, source } = await exportBtrfsImage(t, fs, scratch)
    try {
      const expected = await snapshotTree(source, TREE)
      const contents = await readNamed(source, IMAGE_FILES)
      const m = await readJson(manifest)
      t.equal(m.devices.length, 2, 'the image spans two members')
      // Replace the member holding the most extents; hold open a file that has extents there.
      const oldIndex = busiestDevice(m)
      const old = m.devices[oldIndex].hint as string
      t.ok(fs.loopDevices.includes(old), `the replaced member ${old} is one of ours`)
      const heldName = [...rootFiles(m)].find(([, i]) => i.extents?.some((e: { device: number }) => e.device === oldIndex))![0]

      await withView(manifest, (view, logFile) => withHeld(t, view, heldName, contents.get(heldName)!, async (held) => {
        await runOk('btrfs', ['replace', 'start', '-B', '-f', old, spare, fs.mountpoint], { timeoutMs: 120_000 })
        // No longer part of the filesystem: wipe it whole.
        await runOk('dd', ['if=/dev/urandom', `of=${old}`, 'bs=1M', `count=${sizeMiB}`, 'oflag=direct', 'status=none'], { timeoutMs: 120_000 })
        t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the old member now holds other data (reading it would be wrong)')
        const moved = await remapMoved(t, manifest)
        t.equal(moved.newDevices, 1, 'the delta brings the spare as a new device')
        await viewIsExact(t, view, logFile, expected, scratch, held)
        t.match(await fsp.readFile(logFile, 'utf8'), /followed the config ID .*: \d+ files moved, 1 new devices/, 'the view found the new device')
        t.same(moved.retired, [oldIndex], 'the delta retires the replaced member')
        t.same(moved.proved, [1 - oldIndex], 'and proves the member kept again (files on it moved too)')
      }))
      // The wiped member cannot be found by identity any more: only a view that does not look for it mounts.
      await freshViewIsExact(t, manifest, expected, scratch)
    } finally {
      await release(manifest)
    }
  })
})

t.test('extfs backup names the files read under a superseded map, unless they were read again', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
    const { manifest } = await exportBtrfsImage(t, fs, scratch)
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
