// Issue 13, "silently wrong": btrfs mirrored data (RAID1, DUP) with a stale or damaged copy. The kernel
// checks its data checksums and reads the other copy; the view must do the same or fail loudly (EIO,
// logged "no copy verifies"), never serve the copy btrfs itself would reject.
// - RAID1 on two loop devices: files written while the member holding copy 0 was missing (a degraded
//   mount), then remounted whole: copy 0 of those blocks is stale (never written).
// - One copy damaged on the raw device under the view (copy 0, then copy 1): the view is still exact.
// - Both copies damaged: the read fails with EIO, the log names the file and "no copy verifies", and
//   `extfs backup ... -- tar` exits non-zero.
// - Relocated: a balance moves a RAID1 image's data (both copies); `extfs remap` publishes a delta
//   whose extents carry their copies and csums, a mounted view follows it byte-exact, and with the
//   new copy 0 damaged it still reads the other copy (the delta's csums are the ones checked).
// - Served: `extfs backup http://…` of a RAID1 image through `extfs serve` (whose final remap maps
//   the mirrored image) exits 0, byte-exact.
// Copies are located here from FIEMAP and the chunk tree, independently of the manifest. Needs root,
// loop devices and btrfs-progs.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import * as path from 'node:path'
import { attachMember, detachMember, mountBtrfs, unmountBtrfs, withBtrfs, type BtrfsFs } from '../helpers/btrfs'
import { run, runOk } from '../helpers/exec'
import { seededBytes } from '../helpers/populate'
import { EXTFS, extfs, release, scratchDir, startServe, withView } from '../helpers/extfs'
import { readJson, type Loose } from '../helpers/tamper'
import { exportBtrfsImage, IMAGE_FILES, overwrittenOldExtents, readNamed, relocate, rootFiles } from '../helpers/moved'
import { linux } from '../../src/linux'

const KiB = 1024
const MiB = 1024 * KiB
const BG_DATA = 1

interface Copy {
  device: string
  offset: number
  length: number
}

/** Every copy of every extent of `file` (DUP/RAID1: each stripe of the chunk maps it linearly). */
function copiesOf(mountpoint: string, file: string): Copy[][] {
  const dirFd = fs.openSync(mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  const fd = fs.openSync(path.join(mountpoint, file), 'r')
  try {
    const chunks = linux.btrfsChunks(dirFd)
    const paths = new Map(linux.btrfsDevices(dirFd).devices.map((d) => [d.devid, d.path]))
    return linux.fiemap(fd).map((e) => {
      const c = chunks.find((ch) => ch.logical <= e.physical && e.physical < ch.logical + ch.length)!
      return c.stripes.map((s) => ({ device: paths.get(s.devid)!, offset: s.offset + (e.physical - c.logical), length: e.length }))
    })
  } finally {
    fs.closeSync(fd)
    fs.closeSync(dirFd)
  }
}

/** Overwrite 8 KiB in the middle of the first extent's copy `k` with other bytes, on the raw device. */
function damage(copies: Copy[][], k: number, seed: number): void {
  const c = copies[0]![k]!
  const fd = fs.openSync(c.device, 'r+')
  try {
    fs.writeSync(fd, seededBytes(seed, 8 * KiB), 0, 8 * KiB, c.offset + Math.floor(c.length / 4 / (4 * KiB)) * 4 * KiB) // not the middle: fingerprints sample that
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** The stripe 0 devid of the filesystem's data chunk: the member whose absence makes copy 0 stale. */
function dataCopy0Devid(mountpoint: string): number {
  const fd = fs.openSync(mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    const data = linux.btrfsChunks(fd).filter((c) => c.type & BG_DATA)
    t.equal(data.length, 1, 'one data chunk (room for every file of the test)')
    return data[0]!.stripes[0]!.devid
  } finally {
    fs.closeSync(fd)
  }
}

async function write(mountpoint: string, files: Map<string, Buffer>, name: string, content: Buffer): Promise<void> {
  await fs.promises.writeFile(path.join(mountpoint, name), content)
  files.set(name, content)
}

/** Export the whole filesystem frozen; returns the manifest path. */
async function exportFs(t: Test, fsx: BtrfsFs, scratch: string): Promise<string> {
  const manifest = path.join(scratch, 'm.json')
  const r = await extfs(['export', fsx.mountpoint, '--output', manifest, '--frozen-image', 'freeze'])
  t.equal(r.code, 0, `export: ${r.stderr}`)
  t.teardown(() => release(manifest))
  return manifest
}

/**
 * A file's bytes by read(2) until end of file, as backup tools read. Not readFile: Node takes a short
 * read (the kernel returns the bytes before a failed page) for the end of the file.
 */
function readAll(file: string): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const parts: Buffer[] = []
    for (let off = 0; ; ) {
      const b = Buffer.alloc(256 * KiB)
      const n = fs.readSync(fd, b, 0, b.length, off)
      if (n === 0) return Buffer.concat(parts)
      parts.push(b.subarray(0, n))
      off += n
    }
  } finally {
    fs.closeSync(fd)
  }
}

/** Reads through the view: each file's bytes, or the error code its read failed with. */
async function readView(manifest: string, names: string[]): Promise<{ got: Map<string, Buffer | string>; log: string }> {
  return withView(manifest, async (mnt, logFile) => {
    const got = new Map<string, Buffer | string>()
    for (const name of names) {
      try {
        got.set(name, readAll(path.join(mnt, name)))
      } catch (err) {
        got.set(name, (err as NodeJS.ErrnoException).code ?? String(err))
      }
    }
    await new Promise((r) => setTimeout(r, 300)) // failed reads are logged from the event queue
    return { got, log: await fs.promises.readFile(logFile, 'utf8').catch(() => '') }
  })
}

function sameBytes(t: Test, got: Buffer | string | undefined, want: Buffer, what: string): void {
  if (!Buffer.isBuffer(got)) return void t.fail(`${what}: read failed (${got})`)
  const at = got.length === want.length ? got.findIndex((b, i) => b !== want[i]) : Math.min(got.length, want.length)
  t.ok(got.equals(want), `${what}: exact${at >= 0 ? ` (first difference at byte ${at} of ${want.length})` : ''}`)
}

t.test('btrfs RAID1: stale copy 0 after a degraded mount, one copy damaged, both damaged', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 2, data: 'raid1', metadata: 'raid1' }, async (fsx) => {
    const files = new Map<string, Buffer>()
    await write(fsx.mountpoint, files, 'before', seededBytes(1, 1 * MiB))
    await write(fsx.mountpoint, files, 'one-bad', seededBytes(2, 1 * MiB))
    await write(fsx.mountpoint, files, 'both-bad', seededBytes(3, 1 * MiB))
    await runOk('sync', ['-f', fsx.mountpoint])
    const missing = dataCopy0Devid(fsx.mountpoint) - 1

    // Degraded: the member holding copy 0 is gone; new data lands on the other member only.
    await unmountBtrfs(fsx)
    await detachMember(fsx, missing)
    await mountBtrfs(fsx, { degraded: true })
    await write(fsx.mountpoint, files, 'written-degraded', seededBytes(4, 1 * MiB + 4321))
    await write(fsx.mountpoint, files, 'before', seededBytes(5, 1 * MiB)) // rewritten: copy on write, new blocks
    await runOk('sync', ['-f', fsx.mountpoint])
    await unmountBtrfs(fsx)
    await attachMember(fsx, missing)
    await mountBtrfs(fsx)
    t.equal(dataCopy0Devid(fsx.mountpoint) - 1, missing, 'the data chunk is still the RAID1 one, copy 0 on the member that was missing')

    const oneBad = copiesOf(fsx.mountpoint, 'one-bad')
    const bothBad = copiesOf(fsx.mountpoint, 'both-bad')
    t.equal(oneBad[0]!.length, 2, 'RAID1: two copies of each extent')
    const manifest = await exportFs(t, fsx, scratch)
    const m = await readJson(manifest)
    t.ok(m.features.includes('data-checksums'), 'the manifest carries data checksums')
    const stale = m.inodes.find((n: { extents?: { copies?: unknown[] }[] }) => n.extents?.length)
    t.ok(stale.extents.every((e: { copies?: unknown[]; csums?: string }) => e.copies?.length === 1 && e.csums), 'mirrored extents list their other copy and csums')

    damage(oneBad, 0, 10)
    damage(bothBad, 0, 11)
    damage(bothBad, 1, 12)
    const names = [...files.keys()]
    const { got, log } = await readView(manifest, names)
    for (const name of ['written-degraded', 'before', 'one-bad']) sameBytes(t, got.get(name), files.get(name)!, `view of ${name}`)
    t.equal(got.get('both-bad'), 'EIO', 'both copies damaged: the read fails with EIO')
    const failed = log.split('\n').filter((l) => l.includes('no copy verifies'))
    t.ok(failed.some((l) => l.includes('both-bad')), `the failed read is logged naming the file: ${failed[0] ?? log.slice(-400)}`)

    const tar = await extfs(['backup', manifest, '--', 'tar', '-cf', path.join(scratch, 'out.tar'), '.'])
    t.not(tar.code, 0, `extfs backup -- tar exits non-zero (${tar.code}) when a file has no copy that verifies`)

    // The kernel's own bytes agree (it verifies its checksums and reads the good copy).
    await release(manifest)
    for (const name of ['written-degraded', 'before', 'one-bad']) {
      sameBytes(t, readAll(path.join(fsx.mountpoint, name)), files.get(name)!, `kernel read of ${name}`)
    }
    let kernel: Buffer | string | undefined
    try {
      kernel = readAll(path.join(fsx.mountpoint, 'both-bad'))
    } catch (err) {
      kernel = (err as NodeJS.ErrnoException).code
    }
    t.equal(kernel, 'EIO', 'the kernel refuses both-bad too')
  })
})

t.test('btrfs DUP on one device: copy 0 damaged is served from copy 1; both damaged is EIO', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'dup', metadata: 'dup' }, async (fsx) => {
    const files = new Map<string, Buffer>()
    await write(fsx.mountpoint, files, 'one-bad', seededBytes(21, 512 * KiB))
    await write(fsx.mountpoint, files, 'both-bad', seededBytes(22, 512 * KiB))
    await runOk('sync', ['-f', fsx.mountpoint])
    const oneBad = copiesOf(fsx.mountpoint, 'one-bad')
    const bothBad = copiesOf(fsx.mountpoint, 'both-bad')
    t.equal(oneBad[0]!.length, 2, 'DUP: two copies on the one device')
    const manifest = await exportFs(t, fsx, scratch)
    const m = await readJson(manifest)
    const extents = m.inodes.flatMap((n: { extents?: unknown[] }) => n.extents ?? [])
    t.ok(extents.length > 0 && extents.every((e: { copies?: unknown[]; csums?: string }) => e.copies?.length === 1 && e.csums), "DUP extents list their other copy and csums")
    damage(oneBad, 0, 30)
    damage(bothBad, 0, 31)
    damage(bothBad, 1, 32)
    const { got } = await readView(manifest, [...files.keys()])
    sameBytes(t, got.get('one-bad'), files.get('one-bad')!, 'view of one-bad')
    t.equal(got.get('both-bad'), 'EIO', 'both copies damaged: EIO')
  })
})

/** Overwrite 8 KiB of extent `e`'s own place (copy 0: the one the view reads first) on the raw device `device`. */
function damageAt(device: string, e: { deviceOffset: number; length: number }, seed: number): void {
  const fd = fs.openSync(device, 'r+')
  try {
    fs.writeSync(fd, seededBytes(seed, 8 * KiB), 0, 8 * KiB, e.deviceOffset + Math.floor(e.length / 4 / (4 * KiB)) * 4 * KiB)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('btrfs RAID1 relocated by a balance: the delta carries copies and csums, the view follows and still falls back', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 2, data: 'raid1', metadata: 'raid1', sizeMiB: 512 }, async (fsx) => {
    const { manifest } = await exportBtrfsImage(t, fsx, scratch)
    const contents = await readNamed(path.join(fsx.mountpoint, 'data'), IMAGE_FILES)
    try {
      t.ok((await readJson(manifest)).features.includes('data-checksums'), 'a mirrored image: the manifest has data checksums')
      await withView(manifest, async (view, logFile) => {
        sameBytes(t, readAll(path.join(view, 'a')), contents.get('a')!, 'a before the move')
        await relocate(fsx) // balance (both copies move), then fill: the old places hold other bytes
        t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the old locations now hold other data')

        const remap = await extfs(['remap', manifest])
        t.equal(remap.code, 0, `extfs remap of a data-checksums image exits 0: ${remap.stderr.trim()}`)
        const delta: Loose = await readJson(`${manifest}.delta-1`).catch(() => undefined)
        t.same(delta?.dataChecksums, (await readJson(manifest)).dataChecksums, 'the delta repeats the image\'s dataChecksums')
        const moved: Loose[] = (delta?.files ?? []).flatMap((f: Loose) => f.extents ?? [])
        t.ok(moved.length > 0 && moved.every((e) => e.copies?.length === 1 && e.csums), 'every moved extent carries its other copy and its csums')

        for (const name of IMAGE_FILES) sameBytes(t, readAll(path.join(view, name)), contents.get(name)!, `view of ${name} after the move`)
        t.match(await fs.promises.readFile(logFile, 'utf8'), /followed the config ID/, 'the view followed the delta')

        // Copy 0 of a's new place damaged: only the delta's csums tell the view to read the other copy.
        const m = await readJson(manifest)
        const ino = rootFiles(m).get('b').ino
        const first = delta?.files.find((f: Loose) => f.ino === ino)?.extents?.[0]
        t.ok(first, 'b moved')
        if (first) {
          const devices = [...m.devices, ...delta.devices]
          damageAt(devices[first.device].hint, first, 40)
          await run('dd', [`if=${path.join(view, 'b')}`, 'iflag=nocache', 'count=0', 'status=none']) // drop b's cached pages
          sameBytes(t, readAll(path.join(view, 'b')), contents.get('b')!, 'b with its new copy 0 damaged: read from the other copy')
        }
      })
    } finally {
      await release(manifest)
    }
  })
})

t.test('btrfs RAID1 served: extfs backup http://… exits 0 (serve\'s final remap maps the mirrored image)', async (t) => {
  const scratch = await scratchDir(t)
  const keyFile = path.join(scratch, 'key')
  await fs.promises.writeFile(keyFile, seededBytes(77, 32).toString('hex'))
  await withBtrfs({ devices: 2, data: 'raid1', metadata: 'raid1' }, async (fsx) => {
    const source = path.join(fsx.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', source])
    for (const [i, name] of ['x', 'y'].entries()) await fs.promises.writeFile(path.join(source, name), seededBytes(80 + i, 1 * MiB + i))
    await runOk('sync', [])
    const manifest = path.join(scratch, 'served.json')
    const exp = await extfs(['export', source, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot', '--key', keyFile])
    t.equal(exp.code, 0, `export: ${exp.stderr.trim()}`)
    try {
      t.ok((await readJson(manifest)).features.includes('data-checksums'), 'a mirrored image: the manifest has data checksums')
      const served = await startServe(t, ['--key', keyFile, '--state', path.join(scratch, 'serve.db'), '--interval', '0', manifest])
      const out = path.join(scratch, 'out')
      await fs.promises.mkdir(out)
      const r = await run(EXTFS, ['backup', `${served.url}/served`, '--key', keyFile, '--', 'cp', '-a', '.', out], { timeoutMs: 180_000 })
      t.equal(r.code, 0, `extfs backup of a served RAID1 image exits 0: ${r.stderr.trim()}`)
      const remaps = served.stderr().split('\n').filter((l) => l.includes('"msg":"remap"')).map((l) => JSON.parse(l).state)
      t.same(remaps, ['unchanged'], 'the final remap finds the image where export mapped it, copies and csums alike')
      for (const name of ['x', 'y']) sameBytes(t, await fs.promises.readFile(path.join(out, name)).catch(() => Buffer.alloc(0)), await fs.promises.readFile(path.join(source, name)), `backup of ${name}`)
      await served.stop()
    } finally {
      await release(manifest)
    }
  })
})
