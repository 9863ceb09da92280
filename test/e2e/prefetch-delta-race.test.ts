// A delta racing a prefetch read, made deterministic: the device is the fault-injecting fixture
// (test/helpers/faulty-disk.ts), which holds prefetch's read of the old location in flight while the
// delta is applied. native/view/prefetch.c has two guards against a store of the old map's bytes that
// lands after the delta dropped the pages:
// - the delta waits (at most 1 s) for prefetch reads in flight of the files it moves (xt_prefetch_settle):
//   here the read is let go 0.3 s into that wait;
// - a prefetch thread that stored through a map the delta replaced drops what it stored: here the
//   read is let go 1.5 s after the delta, past the wait's bound.
// Either way every read after applyDelta returned must be the new location's bytes. Without the
// guards both fail: the old bytes stay cached.
import t from 'tap'
import { createHash } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withFaultyFs } from '../helpers/faulty-disk'
import { seededBytes } from '../helpers/populate'
import { run, runOk } from '../helpers/exec'
import { extfs } from '../helpers/extfs'
import { loadImage } from '../../src/mover/load'
import { mountNative } from '../helpers/native-mount'
import { RawDevice } from '../../src/device/reader'
import type { Manifest } from '../../src/manifest/types'

const KiB = 1024
const FILES = 8
const SIZE = 8 * KiB
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const oldBytes = (d: string, i: number) => seededBytes(100 * d.charCodeAt(0) + i, SIZE)
const newBytes = (d: string, i: number) => seededBytes(7000 + 100 * d.charCodeAt(0) + i, SIZE)

t.test('a delta while a prefetch read of the old location is in flight', async (t) => {
  await withFaultyFs({ sizeMiB: 64 }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    const dirs = ['a', 'b'] // one a case: let go within the delta's wait, and past it
    for (const d of dirs) {
      await fsp.mkdir(path.join(data, d), { recursive: true })
      for (let i = 0; i < FILES; i++) await fsp.writeFile(path.join(data, d, `f${i}`), oldBytes(d, i))
    }
    await fsp.writeFile(path.join(data, 'opener'), 'a reader opens files\n')
    await runOk('sync', ['-f', data])
    await runOk('mount', ['-o', 'remount,ro', fs.mountpoint]) // stable: exported with --frozen-image none
    const manifestFile = path.join(fs.tmpdir, 'm.json')
    const exp = await extfs(['export', data, '--output', manifestFile, '--frozen-image', 'none'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const inos = new Map<string, number[]>()
    for (const d of dirs) inos.set(d, await Promise.all(Array.from({ length: FILES }, async (_, i) => (await fsp.stat(path.join(data, d, `f${i}`))).ino)))
    await fs.unmountFs() // from here on only the view reads the device

    // The new location: another device holding other bytes, file after file.
    const bImage = path.join(fs.tmpdir, 'b.img')
    await fsp.writeFile(bImage, Buffer.concat(dirs.flatMap((d) => Array.from({ length: FILES }, (_, i) => newBytes(d, i)))))
    const bLoop = (await runOk('losetup', ['-f', '--show', bImage])).stdout.trim()
    t.teardown(() => run('losetup', ['-d', bLoop]))
    const devB = RawDevice.open('b', bLoop)
    t.teardown(() => devB.close())

    const image = loadImage(manifestFile, { deviceOverrides: new Map() })
    const m: Manifest = image.manifest
    const view = await mountNative(fs.tmpdir, 'view', image, path.join(fs.tmpdir, 'view.log'))
    try {
      const extentsOf = (ino: number) => m.inodes.find((n) => n.ino === ino)!.extents!
      for (const [k, d] of dirs.entries()) {
        const letGoAfterMs = k === 0 ? 300 : 1500
        // Hold every read of the directory's files on the device: they lie together.
        const ranges = inos.get(d)!.flatMap(extentsOf)
        const start = Math.min(...ranges.map((x) => x.deviceOffset))
        const end = Math.max(...ranges.map((x) => x.deviceOffset + x.length))
        await fs.hold(start, end - start)
        const heldBefore = (await fs.status()).held
        // A reader: it opens a file, then lists the directory; prefetch takes its files and its read waits.
        await runOk('bash', ['-c', 'cat "$1/opener" > /dev/null; ls -f "$1/$2" > /dev/null', 'sh', view.mnt, d])
        let held = 0
        for (let i = 0; i < 100 && held === 0; i++) {
          held = (await fs.status()).held - heldBefore
          if (held === 0) await sleep(50)
        }
        t.ok(held > 0, `${d}: prefetch's read of the old location is in flight, held by the device`)
        // Let it go from another process while the delta runs (applyDelta holds this thread).
        const letGo = run('bash', ['-c', `sleep ${letGoAfterMs / 1000}; echo "let go" > "$1"`, 'sh', fs.ctl])
        const storedBefore = view.engine.prefetchStats().storedFiles
        const at = dirs.indexOf(d) * FILES * SIZE
        view.engine.applyDelta(inos.get(d)!.map((ino, i) => ({ ino, extents: [{ fileOffset: 0, device: m.devices.length, deviceOffset: at + i * SIZE, length: SIZE }] })),
          k === 0 ? [devB] : [])
        await letGo
        // Past the wait's bound the old bytes are stored after the delta returned; wait for that store.
        for (let i = 0; i < 100 && view.engine.prefetchStats().storedFiles === storedBefore; i++) await sleep(50)
        t.ok(view.engine.prefetchStats().storedFiles > storedBefore, `${d}: the held read went on and was stored (${letGoAfterMs} ms in)`)
        await sleep(200)
        const r = await runOk('bash', ['-c', 'cd "$1" && sha256sum f*', 'sh', path.join(view.mnt, d)])
        const got = new Map(r.stdout.split('\n').filter(Boolean).map((l) => [l.slice(66), l.slice(0, 64)]))
        const stale = Array.from({ length: FILES }, (_, i) => i).filter((i) => got.get(`f${i}`) !== sha(newBytes(d, i)))
        t.same(stale, [], `${d}: every file reads the new location's bytes (the read was let go ${letGoAfterMs} ms into a wait of at most 1 s)`)
      }
    } finally {
      await fs.letGo()
      await view.close()
      for (const dev of image.devices) dev.close()
    }
  })
})
