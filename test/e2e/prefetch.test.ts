// Prefetch of small files (native/view/prefetch.c) through the kernel: views mounted in this process,
// what they prefetched counted by the engine (prefetchStats) and the kernel's cached pages by fincore.
// - a listing caches the files it lists, and tar of the whole view is byte-exact;
// - bounded: a reader that lists every directory and opens nothing costs nothing; one open wakes
//   prefetch, which stops at one window; once the reader opens more files the window moves on, never
//   holding more than it;
// - a delta landing mid-prefetch: every read after applyDelta returned has the new map's bytes;
// - a release: no file is prefetched after it, no open succeeds, and an open file never shows bytes
//   the owner wrote after it.
// Reads go through child processes (ls, tar, cat, sha256sum): the view is served by this process.
import t from 'tap'
import { createHash } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs, isMounted } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { run, runOk } from '../helpers/exec'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir } from '../helpers/extfs'
import { loadImage, type LoadedImage } from '../../src/mover/load'
import { mountNative, type Mounted } from '../helpers/native-mount'
import { RawDevice } from '../../src/device/reader'
import type { PrefetchStats } from '../../src/native-engine/addon'
import type { Extent } from '../../src/manifest/types'

const KiB = 1024
const MiB = 1024 * KiB
const DIRS = 6
const PER_DIR = 150
const SIZES = [100, 4096, 5000, 70 * KiB, 1, 12288] // cycled: a page, less, more, several
const MOVED_DIRS = 6 // m0..m5: one directory a round of the delta test
const ESTALE = -116
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const fileName = (i: number) => `f${String(i).padStart(3, '0')}`
const rel = (d: number, i: number) => `d${d}/${fileName(i)}`
const contentOf = (d: number, i: number) => seededBytes(d * 1000 + i + 1, SIZES[(i + d) % SIZES.length]!)

/**
 * DIRS directories of PER_DIR files, written interleaved (file i of every directory, then file i + 1),
 * so a directory's files are not neighbours on disk (each is a device read of its own); MOVED_DIRS more,
 * written the same way, for the delta test; and in d0 the
 * odd ones: empty, sparse, over the size prefetch takes, a hard link.
 */
async function populate(data: string): Promise<void> {
  for (let d = 0; d < DIRS; d++) await fsp.mkdir(path.join(data, `d${d}`), { recursive: true })
  for (let i = 0; i < PER_DIR; i++) for (let d = 0; d < DIRS; d++) await fsp.writeFile(path.join(data, rel(d, i)), contentOf(d, i))
  for (let r = 0; r < MOVED_DIRS; r++) await fsp.mkdir(path.join(data, `m${r}`))
  for (let i = 0; i < PER_DIR; i++) for (let r = 0; r < MOVED_DIRS; r++) await fsp.writeFile(path.join(data, `m${r}`, fileName(i)), contentOf(10 + r, i))
  await fsp.writeFile(path.join(data, 'd0/empty'), '')
  const sparse = await fsp.open(path.join(data, 'd0/sparse'), 'w')
  await sparse.write(seededBytes(7, 4096), 0, 4096, 64 * KiB)
  await sparse.close()
  await fsp.writeFile(path.join(data, 'd0/large'), seededBytes(8, 2 * MiB + 5))
  await fsp.link(path.join(data, rel(1, 0)), path.join(data, 'd0/link'))
}

/** The engine's figures once storedBytes stayed the same for a second (at most 20 s). */
async function settled(view: Mounted): Promise<PrefetchStats> {
  let last = view.engine.prefetchStats()
  for (let i = 0; i < 40; i++) {
    await sleep(500)
    const now = view.engine.prefetchStats()
    if (now.storedBytes === last.storedBytes && i > 0) return now
    last = now
  }
  return last
}

/** sha256 of every file under `dir` (relative path → hex), read by a child process. */
async function shasUnder(dir: string): Promise<Map<string, string>> {
  const r = await runOk('bash', ['-c', 'cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum', 'sh', dir], { timeoutMs: 120_000 })
  const out = new Map<string, string>()
  for (const line of r.stdout.split('\n').filter(Boolean)) out.set(line.slice(66).replace(/^\.\//, ''), line.slice(0, 64))
  return out
}

/**
 * List `dir` of the view as a backup does: after opening a file (prefetch takes files only while a
 * reader opens some), one child process. The open may be refused (after a release): the listing goes on.
 */
async function listAsReader(mnt: string, dir: string): Promise<void> {
  await runOk('bash', ['-c', 'cat "$1/d0/empty" 2>/dev/null; ls -f "$1/$2" > /dev/null', 'sh', mnt, dir])
}

/** Cached bytes of each file (fincore, which opens them: an open the view sees). */
async function cachedBytes(files: string[]): Promise<number[]> {
  const r = await runOk('fincore', ['--bytes', '--noheadings', '--output', 'RES', ...files])
  return r.stdout.split('\n').filter(Boolean).map(Number)
}

t.test('prefetch of small files', async (t) => {
  const state = await scratchDir(t, 'extfs-prefetch-')
  await withLoopFs({ fs: 'ext4', sizeMiB: 128 }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await populate(data)
    const manifest = path.join(state, 'm.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    let image: LoadedImage | undefined
    const views: Mounted[] = []
    const mount = async (name: string, prefetchWindowBytes?: number) => {
      const v = await mountNative(state, name, image!, path.join(state, `${name}.log`), image!.manifest, prefetchWindowBytes === undefined ? {} : { prefetchWindowBytes })
      views.push(v)
      return v
    }
    try {
      image = loadImage(manifest, { deviceOverrides: new Map() })
      const source = await shasUnder(data)

      await t.test('a listing caches the files it lists; tar of the view is byte-exact', async (t) => {
        const view = await mount('whole')
        t.equal(view.engine.prefetchStats().window, 32 * MiB, 'the default window')
        await listAsReader(view.mnt, 'd2')
        const st = await settled(view)
        t.ok(st.storedFiles >= PER_DIR, `the listing prefetched the directory's files (${st.storedFiles} files, ${st.storedBytes} bytes)`)
        const first = Array.from({ length: 24 }, (_, i) => path.join(view.mnt, rel(2, i)))
        const cached = await cachedBytes(first)
        const sizes = Array.from({ length: 24 }, (_, i) => contentOf(2, i).length)
        // The kernel may reclaim page cache at any time (this VM's balloon keeps it under pressure:
        // kswapd steals file pages all along a test run, and a prefetched page is on the inactive
        // list), so a page or two of a file may be gone by the time fincore looks; stores that did
        // not land would leave whole files out.
        const whole = cached.filter((c, i) => c >= sizes[i]!).length
        t.ok(whole >= sizes.length - 2 && cached.every((c) => c > 0), `their pages are in the kernel's cache: ${whole} of ${sizes.length} files whole, none missing (${cached.join(' ')})`)
        t.equal(st.failedReads, 0, 'no device read failed')

        const out = path.join(state, 'tar-out')
        await tarRoundTrip(view.mnt, out)
        t.same(await shasUnder(out), source, 'tar of the whole view equals the source, file by file')
        t.ok(view.engine.prefetchStats().storedFiles >= DIRS * PER_DIR, 'and the files were prefetched as tar went')
        const large = await cachedBytes([path.join(view.mnt, 'd0/large')])
        t.ok(large[0]! >= 2 * MiB, 'the large file too, read by tar (not prefetched: over the size prefetch takes)')
      })

      await t.test('bounded: listing costs nothing, one open at most a window; reading moves it on', async (t) => {
        const WINDOW = 1 * MiB
        const view = await mount('bounded', WINDOW)
        await runOk('find', [view.mnt, '-printf', '%s\n'])
        t.same(await settled(view).then((s) => [s.storedFiles, s.pending]), [0, 0], 'an indexer (find) that opens nothing: nothing prefetched')
        await runOk('cat', [path.join(view.mnt, 'd0/empty')]) // a reader: prefetch wakes for what was listed
        const idle = await settled(view)
        t.ok(idle.storedBytes <= WINDOW, `one open: ${idle.storedBytes} bytes stored, at most the window ${WINDOW}`)
        // pending counts whole pages per file, stored bytes the files' sizes.
        t.ok(idle.pending <= WINDOW && idle.pending > WINDOW - 70 * KiB, `the window is full (${idle.pending} bytes taken): it, not a lack of files, stopped prefetch`)
        // Read two directories: their opens retire what was taken, and prefetch goes on within the window.
        let worst = 0
        const reading = runOk('bash', ['-c', 'cat "$1"/d3/* "$1"/d4/* > /dev/null', 'sh', view.mnt])
        let done = false
        void reading.finally(() => (done = true))
        while (!done) {
          worst = Math.max(worst, view.engine.prefetchStats().pending)
          await sleep(2)
        }
        await reading
        const after = await settled(view)
        t.ok(after.storedBytes > idle.storedBytes + WINDOW, `reading moved the window on (${after.storedBytes} bytes stored)`)
        t.ok(worst <= WINDOW && after.pending <= WINDOW, `never more than the window taken (at most ${worst} seen)`)
        const out = path.join(state, 'tar-bounded')
        await tarRoundTrip(view.mnt, out)
        t.same(await shasUnder(out), source, 'tar through a small window is byte-exact')
      })

      await t.test('a delta landing mid-prefetch: what follows reads the new map, never the old bytes', async (t) => {
        // Each round lists one of the m directories (prefetch starts) and, as soon as prefetch stored a
        // first file, moves all of that directory's files to another device holding other bytes: a read
        // says which map served it. A file once moved is tainted and never prefetched again, hence one
        // directory a round.
        const ROUNDS = MOVED_DIRS
        const files = Array.from({ length: PER_DIR }, (_, i) => i)
        const other = (r: number, i: number) => seededBytes(90000 + r * 1000 + i, contentOf(10 + r, i).length)
        const pages = (n: number) => Math.ceil(n / 4096) * 4096
        const bImage = path.join(state, 'b.img')
        const at = new Map<string, number>()
        let off = 0
        for (let r = 0; r < ROUNDS; r++) for (const i of files) at.set(`${r}/${i}`, off), (off += pages(other(r, i).length))
        await fsp.writeFile(bImage, Buffer.alloc(0))
        await fsp.truncate(bImage, off + MiB)
        const bFile = await fsp.open(bImage, 'r+')
        for (let r = 0; r < ROUNDS; r++) for (const i of files) await bFile.write(other(r, i), 0, undefined, at.get(`${r}/${i}`)!)
        await bFile.close()
        const bLoop = (await runOk('losetup', ['-f', '--show', bImage])).stdout.trim()
        t.teardown(() => run('losetup', ['-d', bLoop]))
        const devB = RawDevice.open('b', bLoop)
        t.teardown(() => devB.close())

        const view = await mount('delta')
        const nDev = image!.manifest.devices.length
        let midway = 0
        for (let r = 0; r < ROUNDS; r++) {
          const dir = `m${r}`
          const inos = await Promise.all(files.map(async (i) => (await fsp.stat(path.join(data, dir, fileName(i)))).ino))
          const start = view.engine.prefetchStats().storedFiles
          const listing = listAsReader(view.mnt, dir)
          let stored = 0
          for (const until = Date.now() + 10_000; stored === 0 && Date.now() < until; ) {
            stored = view.engine.prefetchStats().storedFiles - start
            if (stored === 0) await new Promise((resolve) => setImmediate(resolve))
          }
          view.engine.applyDelta(inos.map((ino, k) => ({ ino, extents: [{ fileOffset: 0, device: nDev, deviceOffset: at.get(`${r}/${k}`)!, length: pages(other(r, k).length) }] })),
            r === 0 ? [devB] : [])
          if (stored > 0 && stored < PER_DIR) midway++
          await listing
          const got = await shasUnder(path.join(view.mnt, dir))
          const bad = files.filter((i) => got.get(fileName(i)) !== sha(other(r, i)))
          t.same(bad, [], `round ${r}: every file reads the new location's bytes (the delta came after ${stored} stored)`)
        }
        t.ok(midway > 0, `in ${midway} of ${ROUNDS} rounds the delta landed mid-prefetch`)
      })

      await t.test('a release: nothing prefetched after it, no open, no byte the owner wrote after it', async (t) => {
        const view = await mount('release')
        await listAsReader(view.mnt, 'd1')
        await settled(view)
        const opened = await fsp.open(path.join(view.mnt, rel(1, 3)), 'r') // prefetched, opened before the release
        try {
          const r = await extfs(['release', manifest])
          t.equal(r.code, 0, `release: ${r.stderr}`)
          view.engine.setLease(0) // what the view's watch does once it sees the record say released
          const stored = view.engine.prefetchStats().storedFiles
          // The owner's filesystem is its own again: overwrite files in place (their blocks).
          for (const i of [3, 4, 5]) {
            const h = await fsp.open(path.join(data, rel(1, i)), 'r+')
            await h.write(Buffer.alloc(contentOf(1, i).length, 0x55), 0)
            await h.sync()
            await h.close()
          }
          await runOk('bash', ['-c', 'echo 1 > /proc/sys/vm/drop_caches'])
          await listAsReader(view.mnt, 'd1') // its open is refused now: prefetch hears of no reader
          await runOk('ls', ['-f', path.join(view.mnt, 'd3')])
          await sleep(1000)
          t.equal(view.engine.prefetchStats().storedFiles, stored, 'listings after the release prefetch nothing')
          const cat = await run('cat', [path.join(view.mnt, rel(1, 4))])
          t.match(cat, { code: 1, stderr: /Stale file handle/ }, 'a new open is refused (ESTALE)')
          const buf = Buffer.alloc(contentOf(1, 3).length)
          const got = await opened.read(buf, 0, buf.length, 0).then(({ bytesRead }) => buf.subarray(0, bytesRead), (e: NodeJS.ErrnoException) => e.errno ?? -1)
          if (typeof got === 'number') t.equal(got, ESTALE, 'the file opened before: ESTALE')
          else t.ok(got.equals(contentOf(1, 3)), 'the file opened before: the image\'s bytes (cached before the release), never the new ones')
        } finally {
          await opened.close()
        }
      })
    } finally {
      for (const v of views) await v.close()
      t.ok(views.every((v) => !isMounted(v.mnt)), 'every view unmounted')
      for (const dev of image?.devices ?? []) dev.close()
      await release(manifest)
    }
  })
})
