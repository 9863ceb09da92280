// The data owner keeps writing through the whole backup: export with --frozen-image snapshot, mount,
// tar of the view. The tar must equal the tree as of the image, and the owner must not be blocked once
// the image is taken: it resumes before the view is mounted and keeps completing writes while tar reads
// the view. A filesystem left frozen (or a snapshot that held the writer) would stall it across the
// whole tar: no write would complete in that window. These are orderings and counts, not time bounds:
// the stalls themselves are measured and printed (t.comment), never asserted, since on a loaded 2-core
// host a btrfs write right after a snapshot (copy-on-write of the tree's root) took 110 ms against a
// worst of 34 ms before it, and a time bound there failed without anything being blocked.
//
// The owner (test/helpers/owner-writer.js) appends, overwrites, creates and deletes files nonstop. Its
// pre-freeze hook does what a database's checkpoint does: the writer quiesces, and while it is quiet
// the hook copies a reference of the tree with `cp -a` (not rsync -H, which links hard links after
// setting directory times and so leaves those directories with the copy's time); the post-thaw hook
// lets the writer go on. So the reference
// is exactly the state the image must hold, for snapshots (atomic) and clone sets (per file) alike.
import t, { Test } from 'tap'
import { spawn } from 'node:child_process'
import { promises as fsp, existsSync, readdirSync } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { withBtrfs, BtrfsOptions } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { populateEveryKind, seededBytes } from '../helpers/populate'
import { snapshotTree, diffTrees, Tree } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'

/** Wall-clock milliseconds, on the clock the writer stamps its writes with (test/helpers/owner-writer.js). */
const wallMs = () => performance.timeOrigin + performance.now()
const WRITER = path.resolve(__dirname, '..', 'helpers', 'owner-writer.js')

interface WriterStats {
  ops: [number, number][]
  pauses: [number, number][]
}

/** Export, mount and tar the view of `source` while the owner writes to it; returns what was measured. */
async function backupUnderWrites(t: Test, fsTop: string, source: string, expectMechanism: string): Promise<void> {
  const scratch = await scratchDir(t, 'extfs-owner-')
  const flag = path.join(scratch, 'pause')
  const statsFile = path.join(scratch, 'writer.json')
  const reference = path.join(scratch, 'reference')
  const imageTaken = path.join(scratch, 'image-taken')
  const manifest = path.join(scratch, 'nightly.json')
  await fsp.mkdir(reference)

  const writer = spawn(process.execPath, [WRITER, source, statsFile, flag], { stdio: ['ignore', 'ignore', 'pipe'] })
  let writerErr = ''
  writer.stderr.on('data', (d) => (writerErr += d))
  const writerDone = new Promise<number | null>((resolve) => writer.on('exit', resolve))
  const stopWriter = async () => {
    await fsp.writeFile(`${flag}.stop`, '')
    return writerDone
  }
  t.teardown(async () => {
    if (writer.exitCode === null) await stopWriter()
  })
  await new Promise((r) => setTimeout(r, 500)) // let it churn first

  const preFreeze = `touch ${flag}; while [ ! -e ${flag}.ack ]; do sleep 0.005; done; cp -a ${source}/. ${reference}/`
  const postThaw = `date +%s%N > ${imageTaken}; rm -f ${flag}`
  const exp = await extfs(['export', source, '--output', manifest, '--frozen-image', 'snapshot', '--pre-freeze', preFreeze, '--post-thaw', postThaw])
  t.equal(exp.code, 0, `export: ${exp.stderr}`)
  if (exp.code !== 0) return
  t.match(exp.stdout + exp.stderr, expectMechanism, `export says it used ${expectMechanism}`)
  const inspect = await extfs(['inspect', manifest])
  t.match(inspect.stdout, expectMechanism, 'inspect shows the mechanism')
  const takenAtMs = Number(BigInt((await fsp.readFile(imageTaken, 'utf8')).trim()) / 1_000_000n)

  try {
    const ref = await snapshotTree(reference, { timePrecisionNs: 1, rootTimes: false })
    const restored = path.join(scratch, 'restored')
    let mountedAtMs = 0
    let tarMs: [number, number] = [0, 0]
    await withView(manifest, async (view) => {
      // The owner is writing all along; tar reads the view while it does.
      mountedAtMs = wallMs()
      await tarRoundTrip(view, restored)
      tarMs = [mountedAtMs, wallMs()]
    })
    const sockets = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket' // tar skips sockets
    t.same(diffTrees(ref, await snapshotTree(restored, { timePrecisionNs: 1, rootTimes: false }), { ignorePaths: sockets(ref) }), [], 'tar of the view equals the tree as of the image')

    t.equal(await stopWriter(), 0, `the owner's writer ran without error ${writerErr}`)
    const stats: WriterStats = JSON.parse(await fsp.readFile(statsFile, 'utf8'))
    const after = stats.ops.filter(([start]) => start >= takenAtMs)
    const worst = Math.max(...after.map(([s, e]) => e - s))
    const firstAfter = after.length ? after[0][0] - takenAtMs : Infinity
    const hookPause = stats.pauses[0]?.[0] ?? takenAtMs
    const before = stats.ops.filter(([start]) => start < hookPause)
    const noise = Math.max(0, ...before.map(([s, e]) => e - s))
    const duringTar = after.filter(([start, end]) => start >= tarMs[0] && end <= tarMs[1])
    t.ok(before.length > 10, `the owner wrote before the image too (${before.length} writes)`)
    t.ok(after.length > 100, `the owner kept writing during mount and tar (${after.length} writes after the image)`)
    t.ok(after.length > 0 && after[0][1] < mountedAtMs, 'the owner completed a write after the image was taken, before the view was mounted')
    t.ok(duringTar.length > 0, `the owner completed writes while tar read the view (${duringTar.length} in ${(tarMs[1] - tarMs[0]).toFixed(0)} ms)`)
    t.comment(`owner: ${stats.ops.length} writes; worst stall before the image ${noise.toFixed(2)} ms, after it ${worst.toFixed(2)} ms; resumed ${firstAfter.toFixed(2)} ms after it`)
  } finally {
    await release(manifest)
  }
  t.same(readdirSync(fsTop).filter((n) => n.startsWith('.extfs')).flatMap((n) => readdirSync(path.join(fsTop, n))), [], 'release removed the image')
}

async function populate(source: string): Promise<void> {
  await populateEveryKind(source)
  // Large enough to span several 64 KiB stripes and more than one extent.
  await fsp.writeFile(path.join(source, 'regular', 'striped'), seededBytes(77, 6 * 1024 * 1024 + 123))
  await runOk('sync', [])
}

t.test('XFS with reflink: clone set', async (t) => {
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const source = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(source)
    await populate(source)
    await backupUnderWrites(t, fs.mountpoint, source, 'clone-set')
  })
})

const btrfsLayouts: { name: string; opts: BtrfsOptions }[] = [
  { name: 'btrfs, one device', opts: { devices: 1, data: 'single', metadata: 'dup' } },
  { name: 'btrfs RAID0 over two devices', opts: { devices: 2, data: 'raid0', metadata: 'raid1' } },
  { name: 'btrfs RAID1 over two devices', opts: { devices: 2, data: 'raid1', metadata: 'raid1' } },
]

for (const layout of btrfsLayouts) {
  t.test(`${layout.name}: subvolume snapshot`, async (t) => {
    await withBtrfs(layout.opts, async (fs) => {
      const source = path.join(fs.mountpoint, 'data')
      await runOk('btrfs', ['subvolume', 'create', source])
      await populate(source)
      await backupUnderWrites(t, fs.mountpoint, source, 'btrfs-snapshot')
      t.notOk(existsSync(path.join(fs.mountpoint, '.extfs-images')) && readdirSync(path.join(fs.mountpoint, '.extfs-images')).length > 0, 'no snapshot left')
    })
  })
}
