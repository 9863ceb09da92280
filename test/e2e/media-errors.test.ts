// Media errors (issue 13): a device that fails reads on one range, with real kernel errors. ext4 on a
// loop device over a file served by a fault-injecting FUSE fixture (test/helpers/faulty-disk.ts),
// exported clean; then the fault armed on the device bytes of one file's extent, and the view mounted
// with `extfs mount` (the manifest's fingerprints lie outside the faulty ranges, which the test checks):
// - reads touching the range fail with EIO, each failed request logged in one line naming the file's
//   path, the file offset, the device id and the device offset;
// - every other byte is exact: the other files, and the same file's other pages;
// - the view recovers with the device: once disarmed, the same reads return the right bytes (nothing
//   keeps the error: not the view, not the kernel's page cache);
// - push-ahead never turns an error into zeros: a 24 MiB file whose push window crosses a faulty
//   range has no page of that range cached; those pages read EIO while the fault lasts, the rest exact,
//   and the whole file exact after; nor does prefetch: a small file whose prefetch failed reads EIO;
// - `extfs backup` exits 7 naming the file when its command ignored the error (a shell that throws
//   cat's status away, tar --ignore-failed-read), and 0 once the device reads again.
import t from 'tap'
import { settledCachedBytes } from '../helpers/page-cache'
import { promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { withFaultyFs, type FaultyFs } from '../helpers/faulty-disk'
import { seededBytes } from '../helpers/populate'
import { run, runOk } from '../helpers/exec'
import { extfs, ensureUnmounted } from '../helpers/extfs'
import type { Extent, Inode, Manifest } from '../../src/manifest/types'

/**
 * A subtest that hangs (a read stuck in the view) fails after this; the whole test after withFaultyFs's
 * deadline, which then cleans up.
 */
const SUBTEST = { timeout: 120_000 }
const KiB = 1024
const MiB = 1024 * KiB
const PAGE = 4096
const EIO = -5

const FILES: Record<string, Buffer> = {
  a: seededBytes(1, 64 * KiB + 123),
  b: seededBytes(2, 300 * KiB),
  'dir/c': seededBytes(3, 5000),
  victim: seededBytes(4, MiB),
  big: seededBytes(5, 24 * MiB + 999), // over push-ahead's 4 MiB: a read at 0 pushes it whole
}
/** The faulty ranges, in file bytes: inside one extent each, away from its middle (where fingerprints are sampled). */
const VICTIM_FAULT = { file: 'victim', offset: 256 * KiB, length: 64 * KiB }
const BIG_FAULT = { file: 'big', offset: 16 * MiB, length: 64 * KiB }

/** errno of a failing promise (0 when it resolves). */
const errnoOf = (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: NodeJS.ErrnoException) => e.errno ?? -1)

/** `length` bytes at `offset` of `file`, through a fresh open (a read(2) of it; rejects with its errno). */
async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const h = await fsp.open(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await h.read(buf, 0, length, offset)
    return buf.subarray(0, bytesRead)
  } finally {
    await h.close()
  }
}

/**
 * Pages [from, to) of `file`, each read through a fresh open: the offsets of those that failed with
 * EIO (-offset - 1 for any other error), and how many of the others differ from `want`.
 */
async function pageByPage(file: string, want: Buffer, from: number, to: number): Promise<{ failed: number[]; wrong: number }> {
  const failed: number[] = []
  let wrong = 0
  for (let off = from; off < to; off += PAGE) {
    const got = await readAt(file, off, PAGE).catch((e: NodeJS.ErrnoException) => e.errno ?? -1)
    if (typeof got === 'number') failed.push(got === EIO ? off : -off - 1)
    else if (!got.equals(want.subarray(off, off + PAGE))) wrong++
  }
  return { failed, wrong }
}

function inodeAt(m: Manifest, rel: string): Inode {
  let ino = m.root
  for (const name of rel.split('/')) {
    const dir = m.inodes.find((i) => i.ino === ino)!
    ino = dir.entries!.find((e) => e.name === name)!.ino
  }
  return m.inodes.find((i) => i.ino === ino)!
}

/** The extent holding file bytes [offset, offset + length) whole, and where they lie on its device. */
function deviceRange(m: Manifest, f: { file: string; offset: number; length: number }): { extent: Extent; start: number; length: number } {
  const extent = inodeAt(m, f.file).extents!.find((e) => e.fileOffset <= f.offset && f.offset + f.length <= e.fileOffset + e.length)
  if (!extent) throw new Error(`${f.file}: no single extent holds bytes ${f.offset}+${f.length}`)
  return { extent, start: extent.deviceOffset + (f.offset - extent.fileOffset), length: f.length }
}

type LogLine = Record<string, unknown>
const logLines = (file: string): LogLine[] =>
  readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine)

/** The view's `read failed` lines for `rel`, once at least one is there (the view logs asynchronously; 10 s at most). */
async function failedReads(logFile: string, rel: string): Promise<LogLine[]> {
  for (let i = 0; ; i++) {
    const lines = logLines(logFile).filter((l) => l.msg === 'read failed' && l.path === `/${rel}`)
    if (lines.length > 0 || i === 100) return lines
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function populate(fs: FaultyFs): Promise<void> {
  const data = path.join(fs.mountpoint, 'data')
  await fsp.mkdir(path.join(data, 'dir'), { recursive: true })
  for (const [rel, bytes] of Object.entries(FILES)) await fsp.writeFile(path.join(data, rel), bytes)
  await runOk('sync', ['-f', data])
  await runOk('mount', ['-o', 'remount,ro', fs.mountpoint]) // stable: exported with --frozen-image none
}

t.test('media errors: a device that fails reads on one range', async (t) => {
  await withFaultyFs({ sizeMiB: 96 }, async (fs) => {
    await populate(fs)
    const state = path.join(fs.tmpdir, 'state')
    await fsp.mkdir(state)
    const manifestFile = path.join(state, 'nightly.json')
    const exp = await extfs(['export', path.join(fs.mountpoint, 'data'), '--output', manifestFile, '--frozen-image', 'none'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    t.equal((await fs.status()).eio, 0, 'the export read clean')
    await fs.unmountFs() // from here on only the view reads the device
    const m = JSON.parse(await fsp.readFile(manifestFile, 'utf8')) as Manifest
    t.equal(m.devices.length, 1)
    const device = m.devices[0]!
    const victim = deviceRange(m, VICTIM_FAULT)
    const big = deviceRange(m, BIG_FAULT)
    for (const f of [victim, big]) {
      const hit = device.fingerprints.filter((p) => p.offset < f.start + f.length && f.start < p.offset + p.length)
      t.same(hit, [], `no fingerprint lies in the faulty device range ${f.start}+${f.length}: a mount proves the device`)
    }

    const viewMnt = await fs.viewMountpoint('view')
    const logFile = path.join(fs.tmpdir, 'view.log')
    const mounted = await extfs(['mount', manifestFile, viewMnt, '--log-file', logFile])
    t.equal(mounted.code, 0, `mount: ${mounted.stderr}`)
    const v = (rel: string) => path.join(viewMnt, rel)

    await t.test('reads touching the range fail with EIO, each logged naming path, file offset, device and device offset', SUBTEST, async (t) => {
      await fs.arm(victim.start, victim.length)
      t.equal(await errnoOf(fsp.readFile(v('victim'))), EIO, 'reading the whole file fails')
      t.equal(await errnoOf(readAt(v('victim'), VICTIM_FAULT.offset, VICTIM_FAULT.length)), EIO, 'reading just the faulty range fails')
      t.equal(await errnoOf(readAt(v('victim'), VICTIM_FAULT.offset + VICTIM_FAULT.length - 1, 2)), EIO, 'two bytes straddling its end fail')
      const direct = await run('dd', [`if=${v('victim')}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', 'status=none'])
      t.match(direct, { code: 1, stderr: /Input\/output error/ }, 'and an O_DIRECT read (past the page cache)')
      const lines = await failedReads(logFile, 'victim')
      t.ok(lines.length > 0, `logged (${lines.length} line(s): one per failed request)`)
      const { extent } = victim
      for (const l of lines) {
        t.match(l, { level: 50, op: 'read', path: '/victim', ino: inodeAt(m, 'victim').ino, offset: Number, device: device.id, deviceOffset: Number, err: /Input\/output error/ })
        const offset = l.offset as number
        t.equal((l.deviceOffset as number) - offset, extent.deviceOffset - extent.fileOffset, `file offset ${offset} and device offset ${l.deviceOffset} name the same byte`)
        t.ok(offset < VICTIM_FAULT.offset + VICTIM_FAULT.length, 'the failed piece starts before the end of the faulty range')
      }
      t.ok((await fs.status()).eio > 0, 'the errors came from the device (the fixture failed requests)')
    })

    await t.test('everything else is exact', SUBTEST, async (t) => {
      t.ok((await fs.status()).armed, 'the fault is still armed')
      for (const rel of ['a', 'b', 'dir/c', 'big']) t.ok((await fsp.readFile(v(rel))).equals(FILES[rel]!), `${rel} equals the source`)
      // Page by page, each through a fresh open: exactly the faulty pages fail, every other one is exact.
      const want = FILES.victim!
      const { failed, wrong } = await pageByPage(v('victim'), want, 0, want.length)
      const faultPages = Array.from({ length: VICTIM_FAULT.length / PAGE }, (_, i) => VICTIM_FAULT.offset + i * PAGE)
      t.same(failed, faultPages, 'the pages of the faulty range fail with EIO, and only those')
      t.equal(wrong, 0, 'every other page of the same file equals the source')
      t.ok((await readAt(v('victim'), 0, VICTIM_FAULT.offset)).equals(want.subarray(0, VICTIM_FAULT.offset)), 'one read of everything before the range')
      const after = VICTIM_FAULT.offset + VICTIM_FAULT.length
      t.ok((await readAt(v('victim'), after, want.length - after)).equals(want.subarray(after)), 'one read of everything after it')
    })

    await t.test('the view recovers when the device does', SUBTEST, async (t) => {
      const before = await fs.status()
      await fs.disarm()
      t.ok((await fsp.readFile(v('victim'))).equals(FILES.victim!), 'the same file reads whole and exact: no error kept')
      t.ok((await readAt(v('victim'), VICTIM_FAULT.offset, VICTIM_FAULT.length)).equals(FILES.victim!.subarray(VICTIM_FAULT.offset, VICTIM_FAULT.offset + VICTIM_FAULT.length)), 'the faulty range too')
      t.ok((await fs.status()).hits > before.hits, 'read from the device again (not from a cache)')
    })

    await t.test('push-ahead never turns an error into zeros', SUBTEST, async (t) => {
      // A fresh mount: nothing of big cached, no push job yet. A read at 0 starts one that pushes the
      // whole file (24 MiB < the window) in 1 MiB chunks and meets the faulty range on the way.
      await ensureUnmounted(viewMnt)
      const pushLog = path.join(fs.tmpdir, 'push.log')
      const again = await extfs(['mount', manifestFile, viewMnt, '--log-file', pushLog])
      t.equal(again.code, 0, `mount: ${again.stderr}`)
      await fs.arm(big.start, big.length)
      const eioBefore = (await fs.status()).eio
      const want = FILES.big!
      const h = await fsp.open(v('big'), 'r')
      try {
        const first = Buffer.alloc(64 * KiB)
        await h.read(first, 0, first.length, 0)
        t.ok(first.equals(want.subarray(0, first.length)), 'the first 64 KiB')
        let met = false
        for (let i = 0; i < 300 && !met; i++) {
          met = (await fs.status()).eio > eioBefore
          if (!met) await new Promise((r) => setTimeout(r, 100))
        }
        t.ok(met, 'the pusher met the faulty range (the device failed its read)')
        const got = await settledCachedBytes(v('big'))
        t.ok(got <= BIG_FAULT.offset, `and stored nothing from there on (${got} bytes cached, the fault at ${BIG_FAULT.offset})`)
        t.same(await failedReads(pushLog, 'big').then((l) => l.length), 0, 'a push that failed is not logged: only a reader\'s read is')

        // Every page of the chunk that failed, while the fault lasts: the faulty ones EIO, never zeros.
        const { failed, wrong } = await pageByPage(v('big'), want, BIG_FAULT.offset - MiB, BIG_FAULT.offset + MiB)
        const faultPages = Array.from({ length: BIG_FAULT.length / PAGE }, (_, i) => BIG_FAULT.offset + i * PAGE)
        t.same(failed, faultPages, 'the faulty pages fail with EIO (no zeros were stored for them)')
        t.equal(wrong, 0, 'the pages around them equal the source')
        const lines = await failedReads(pushLog, 'big')
        t.ok(lines.length > 0, 'the reader\'s failed reads are logged')
        t.ok(lines.every((l) => (l.offset as number) < BIG_FAULT.offset + BIG_FAULT.length), 'at offsets up to the faulty range')
        const tail = BIG_FAULT.offset + MiB
        t.ok((await readAt(v('big'), tail, want.length - tail)).equals(want.subarray(tail)), 'the rest of the file past the faulty chunk is exact')
      } finally {
        await h.close()
      }
      await fs.disarm()
      t.ok((await fsp.readFile(v('big'))).equals(want), 'disarmed: the whole file is exact (the page cache holds nothing wrong)')
    })

    await t.test('prefetch never turns an error into zeros', SUBTEST, async (t) => {
      // dir/c (5000 bytes) is dir's only file: listing dir prefetches it (native/view/prefetch.c), and
      // the device fails that read. A fresh mount: nothing cached.
      await ensureUnmounted(viewMnt)
      const prefetchLog = path.join(fs.tmpdir, 'prefetch.log')
      const again = await extfs(['mount', manifestFile, viewMnt, '--log-file', prefetchLog])
      t.equal(again.code, 0, `mount: ${again.stderr}`)
      const c = deviceRange(m, { file: 'dir/c', offset: 0, length: PAGE })
      await fs.arm(c.start, c.length)
      const eioBefore = (await fs.status()).eio
      // As a backup lists: after opening a file (prefetch takes files only while a reader opens some).
      await runOk('bash', ['-c', 'cat "$1/a" > /dev/null; ls -f "$1/dir" > /dev/null', 'sh', viewMnt])
      let met = false
      for (let i = 0; i < 100 && !met; i++) {
        met = (await fs.status()).eio > eioBefore
        if (!met) await new Promise((r) => setTimeout(r, 100))
      }
      t.ok(met, 'the prefetch met the faulty range (the device failed its read)')
      t.same(await failedReads(prefetchLog, 'dir/c').then((l) => l.length), 0, 'a prefetch that failed is not logged: only a reader\'s read is')
      t.equal(await errnoOf(fsp.readFile(v('dir/c'))), EIO, 'the reader\'s read fails with EIO: nothing was stored for it')
      t.ok((await failedReads(prefetchLog, 'dir/c')).length > 0, 'and is logged')
      await fs.disarm()
      t.ok((await fsp.readFile(v('dir/c'))).equals(FILES['dir/c']!), 'disarmed: the file reads exact')
    })

    await ensureUnmounted(viewMnt)

    await t.test('extfs backup exits 7 naming the file when the command ignored the error', SUBTEST, async (t) => {
      await fs.arm(victim.start, victim.length)
      const backupLog = path.join(fs.tmpdir, 'backup.log')
      const shrug = await extfs(['backup', manifestFile, '--log-file', backupLog, '--', 'sh', '-c', 'cat victim >/dev/null 2>&1; exit 0'])
      t.equal(shrug.code, 7, `a shell that throws cat's status away: exit 7 (${shrug.stderr.trim()})`)
      const lines = shrug.stderr.split('\n').filter((l) => l.startsWith('extfs: '))
      t.match(lines, [/^extfs: reads of 1 file\(s\) failed \(device errors, \d+ request\(s\)\) while the command ran: \/victim; the backup is incomplete \(log: (.*)\)$/],
        'one line naming the file')
      t.ok(lines[0]?.endsWith(`(log: ${backupLog})`), 'and the log')
      t.ok(logLines(backupLog).some((l) => l.msg === 'read failed' && l.path === '/victim'), 'which has the failed reads')

      const tarFile = path.join(fs.tmpdir, 'backup.tar')
      const tar = await extfs(['backup', manifestFile, '--log-file', backupLog, '--', 'tar', '--ignore-failed-read', '-cf', tarFile, '.'])
      // tar reads 10240-byte records: the one that reaches the range gets the bytes before it (a short
      // read), which tar takes for a file that shrank, and pads with zeros; had a read started in the
      // range, it would have got EIO. Either way it only warns.
      t.match(tar.stderr, /tar: \.\/victim: (File shrank by \d+ bytes; padding with zeros|.*Input\/output error)/, 'tar only warned')
      t.equal(tar.code, 7, 'tar --ignore-failed-read exited 0; backup exits 7')
      t.match(tar.stderr, /^extfs: reads of 1 file\(s\) failed .*\/victim/m, 'naming the file')

      await fs.disarm()
      const clean = await extfs(['backup', manifestFile, '--log-file', backupLog, '--', 'tar', '-cf', tarFile, '.'])
      t.equal(clean.code, 0, `the device reads again: a clean backup (${clean.stderr.trim()})`)
      const listed = await run('tar', ['-tf', tarFile])
      t.match(listed.stdout, /\.\/victim\n/, 'holding the file')
    })
  })
})
