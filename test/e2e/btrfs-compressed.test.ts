// Issue 13, item 6: btrfs compressed extents are exported as the filesystem stores them (the encoded
// stream's place, algorithm, decoded length and offset) and decoded by the view, for zlib, lzo and zstd:
// - mounted with compress=<algorithm>: several MiB of compressible data (push-ahead reads it too),
//   a file whose middle was overwritten (the extent after it is referenced from a decodedOffset > 0),
//   a range cloned out of the middle of another file (decodedOffset > 0), a tail that ends inside a
//   sector, compressed and incompressible extents mixed, an inline file (still carried);
// - exported with freeze and with snapshot, every file read through the view and copied by tar
//   compared with the source byte for byte;
// - relocated: a balance moves a compressed image's extents; `extfs remap` publishes a delta whose
//   extents are compressed as the manifest's are (new place, same encoding), a mounted view follows it
//   byte-exact, and so does a new mount of the manifest with its delta;
// - RAID1: copy 0 of a compressed extent damaged on the raw device under the view, the view reads the
//   other copy (btrfs's checksums cover the encoded bytes); both damaged: EIO, logged, never garbage.
// Needs root, loop devices, btrfs-progs and xfs_io.
import { settledCachedBytes } from '../helpers/page-cache'
import t, { type Test } from 'tap'
import fs from 'node:fs'
import * as path from 'node:path'
import { withBtrfs, type BtrfsFs } from '../helpers/btrfs'
import { run, runOk } from '../helpers/exec'
import { seededBytes } from '../helpers/populate'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'
import { relocate } from '../helpers/moved'
import { RawDevice } from '../../src/device/reader'
import { readJson, type Loose } from '../helpers/tamper'
import { linux } from '../../src/linux'

const KiB = 1024
const MiB = 1024 * KiB
const ALGORITHMS = ['zlib', 'lzo', 'zstd'] as const

/** Compresses well but not to nothing: lines of text with a seeded number, every 4 KiB different. */
function compressible(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length)
  const noise = seededBytes(seed, Math.ceil(length / 64) * 4)
  for (let i = 0; i < length; i += 64) out.write(`${seed} ${i} ${noise.readUInt32LE((i / 64) * 4)} compressible line\n`.padEnd(64, '.'), i)
  return out
}

/** Compresses to about three quarters: random letters from 64 of them (so an extent's stream is many sectors). */
function halfCompressible(length: number, seed: number): Buffer {
  return Buffer.from(seededBytes(seed, length).toString('base64').slice(0, length))
}

/** The test files, written (and rewritten) the way that gives the extents described at the top. */
async function populate(dir: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>()
  const write = async (name: string, data: Buffer) => {
    await fs.promises.writeFile(path.join(dir, name), data)
    files.set(name, Buffer.from(data))
  }
  await write('big', compressible(6 * MiB, 1))
  await write('tail', compressible(300_001, 2))
  const mixed = Buffer.concat(Array.from({ length: 8 }, (_, k) => (k % 2 ? seededBytes(10 + k, 128 * KiB) : compressible(128 * KiB, 10 + k))))
  await write('mixed', mixed)
  await write('inline.txt', Buffer.from('small enough to be inline in the metadata\n'))
  await write('partial', compressible(MiB, 3))
  await runOk('sync', [])
  // Overwrite the middle: the extent that held it is now referenced before and after the new bytes.
  const middle = compressible(64 * KiB, 4)
  const fd = fs.openSync(path.join(dir, 'partial'), 'r+')
  fs.writeSync(fd, middle, 0, middle.length, 300 * KiB)
  fs.closeSync(fd)
  middle.copy(files.get('partial')!, 300 * KiB)
  // A clone of 64 KiB from 20 KiB into `big`: its one extent starts 20 KiB into a decoded extent.
  await runOk('xfs_io', ['-f', '-c', `reflink ${path.join(dir, 'big')} ${20 * KiB} 0 ${64 * KiB}`, path.join(dir, 'cloned')])
  files.set('cloned', files.get('big')!.subarray(20 * KiB, 84 * KiB))
  await runOk('sync', [])
  return files
}

type Extent = { fileOffset: number; length: number; device: number; deviceOffset: number; compression?: string; decodedOffset?: number; decodedLength?: number; diskLength?: number; copies?: { device: number; deviceOffset: number }[] }

function extentsByName(m: Loose): Map<string, Extent[]> {
  const byIno = new Map<number, Loose>(m.inodes.map((i: Loose) => [i.ino, i]))
  const out = new Map<string, Extent[]>()
  for (const dir of m.inodes) for (const e of dir.entries ?? []) out.set(e.name, byIno.get(e.ino)!.extents ?? [])
  return out
}

/**
 * Every file through the view (read and tar) equals the source. First `big` (6 MiB) is pushed ahead
 * (native/view/push.c) after a 64 KiB read: the pages the pusher stored are decoded bytes, which the
 * comparison then reads.
 */
async function compareThroughView(t: Test, manifest: string, files: Map<string, Buffer>, scratch: string, what: string): Promise<void> {
  await withView(manifest, async (view) => {
    if (files.has('big')) {
      const big = path.join(view, 'big')
      const fd = fs.openSync(big, 'r')
      try {
        fs.readSync(fd, Buffer.alloc(64 * KiB), 0, 64 * KiB, 0)
        // Readahead alone caches well under 1 MiB after a 64 KiB read, so most of the 6 MiB cached
        // means the pusher stored it. Not "every page": CI runs twice saw 7 and 3 pages of the file
        // left uncached (a race not yet understood; the reads below still check every byte).
        const want = files.get('big')!.length - 64 * KiB
        const got = await settledCachedBytes(big, want)
        t.ok(got >= want, `${what}: after a 64 KiB read, push-ahead cached big but for at most 64 KiB (${got} bytes)`)
      } finally {
        fs.closeSync(fd)
      }
    }
    for (const [name, data] of files) t.ok(fs.readFileSync(path.join(view, name)).equals(data), `${what}: ${name} reads back exactly`)
    const copy = path.join(scratch, `tar-${what.replace(/\W+/g, '-')}`)
    await tarRoundTrip(view, copy)
    for (const [name, data] of files) t.ok(fs.readFileSync(path.join(copy, name)).equals(data), `${what}: tar's copy of ${name} is exact`)
    await fs.promises.rm(copy, { recursive: true, force: true })
  })
}

for (const algorithm of ALGORITHMS) {
  t.test(`compress=${algorithm}: exported as stored, decoded by the view (freeze and snapshot)`, async (t) => {
    const scratch = await scratchDir(t)
    await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', mountOptions: `compress=${algorithm}` }, async (fsx: BtrfsFs) => {
      const source = path.join(fsx.mountpoint, 'data')
      await runOk('btrfs', ['subvolume', 'create', source])
      const files = await populate(source)
      for (const kind of ['freeze', 'snapshot']) {
        const manifest = path.join(scratch, `${kind}.json`)
        const r = await extfs(['export', source, '--mapper', 'vfs', '--output', manifest, '--frozen-image', kind])
        t.equal(r.code, 0, `export --frozen-image ${kind}: ${r.stderr}`)
        try {
          const m = await readJson(manifest)
          t.ok(m.features.includes('compressed-extents') && m.features.includes('data-checksums'), `${kind}: features ${m.features.join(', ')}`)
          const extents = extentsByName(m)
          const big = extents.get('big')!
          t.ok(big.length >= 40 && big.every((e) => e.compression === algorithm), `${kind}: big is ${big.length} ${algorithm} extents, not carried`)
          t.ok(big.every((e) => e.diskLength! < e.length), `${kind}: each takes less on disk than it holds`)
          t.ok(extents.get('partial')!.some((e) => e.compression !== undefined && e.decodedOffset! > 0), `${kind}: partial has an extent referenced from inside its decoded data`)
          t.ok(extents.get('cloned')!.some((e) => e.decodedOffset === 20 * KiB), `${kind}: the clone starts 20 KiB into a decoded extent`)
          t.ok(extents.get('mixed')!.some((e) => e.compression === undefined) && extents.get('mixed')!.some((e) => e.compression !== undefined), `${kind}: mixed has plain and compressed extents`)
          t.ok(m.inodes.some((i: Loose) => i.inline !== undefined), `${kind}: the inline file is carried`)
          await compareThroughView(t, manifest, files, scratch, `${algorithm} ${kind}`)
        } finally {
          await release(manifest)
        }
      }
    })
  })
}

/** Where copy `k` of a file's first compressed extent's encoded stream lies on its raw device (from btrfs's own items and chunks). */
function compressedCopy(mountpoint: string, file: string, k: number): { device: string; offset: number; length: number } {
  const dirFd = fs.openSync(mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  const fd = fs.openSync(path.join(mountpoint, file), 'r')
  try {
    const item = linux.btrfsFileExtents(fd).find((e) => e.compression !== 0)!
    const chunk = linux.btrfsChunks(dirFd).find((c) => c.logical <= item.diskBytenr! && item.diskBytenr! < c.logical + c.length)!
    const paths = new Map(linux.btrfsDevices(dirFd).devices.map((d) => [d.devid, d.path]))
    const stripe = chunk.stripes[k]!
    return { device: paths.get(stripe.devid)!, offset: stripe.offset + (item.diskBytenr! - chunk.logical), length: item.diskNumBytes! }
  } finally {
    fs.closeSync(fd)
    fs.closeSync(dirFd)
  }
}

/** Overwrite the first sector of an encoded stream on the raw device (fingerprints sample the middle). */
function damage(c: { device: string; offset: number }, seed: number): void {
  const fd = fs.openSync(c.device, 'r+')
  try {
    fs.writeSync(fd, seededBytes(seed, 4 * KiB), 0, 4 * KiB, c.offset)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('RAID1: a damaged copy of a compressed extent is read from the other copy; both damaged: EIO, logged', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 2, data: 'raid1', metadata: 'raid1', mountOptions: 'compress=zstd' }, async (fsx) => {
    const data = halfCompressible(MiB, 7)
    await fs.promises.writeFile(path.join(fsx.mountpoint, 'file'), data)
    await runOk('sync', [])
    const copy0 = compressedCopy(fsx.mountpoint, 'file', 0)
    const copy1 = compressedCopy(fsx.mountpoint, 'file', 1)
    t.ok(copy0.length >= 3 * 4 * KiB, `the first compressed extent's stream is ${copy0.length} bytes: its first sector is not the one fingerprinted`)
    const manifest = path.join(scratch, 'm.json')
    const r = await extfs(['export', fsx.mountpoint, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(r.code, 0, `export: ${r.stderr}`)
    try {
      const m = await readJson(manifest)
      const first = extentsByName(m).get('file')!.find((e) => e.compression === 'zstd')!
      t.equal(first.copies?.length, 1, 'the compressed extent has its mirror')
      const mnt = path.join(scratch, 'fuse-native')
      await fs.promises.mkdir(mnt)
      const fn = await extfs(['mount', manifest, mnt], { env: { ...process.env, EXTFS_ENGINE: 'fuse-native' } })
      t.equal(fn.code, 2, 'the fuse-native engine refuses the manifest: exit 2')
      t.match(fn.stderr, /compressed extents \(feature "compressed-extents"\), which only the native engine decodes/, `in one line: ${fn.stderr.trim()}`)
      t.equal(withoutProgress(fn.stderr).trim().split('\n').length, 1, 'one line')
      damage(copy0, 100)
      await withView(manifest, async (view) => {
        t.ok(fs.readFileSync(path.join(view, 'file')).equals(data), 'copy 0 damaged: the view reads the other copy, exact')
      })
      damage(copy1, 101)
      await withView(manifest, async (view, logFile) => {
        const got = await run('cat', [path.join(view, 'file')], { binary: true })
        t.not(got.code, 0, 'both copies damaged: the read fails')
        t.match(got.stderr.toString(), /Input\/output error/, 'with EIO')
        t.ok(data.subarray(0, got.stdout.length).equals(got.stdout), `what came before the failure (${got.stdout.length} bytes) is the file's own, not zeros`)
        const log = fs.readFileSync(logFile, 'utf8')
        t.match(log, /no copy verifies/, 'the log says no copy verifies')
        t.match(log, /"path":"\/file"|\/file/, 'and names the file')
      })
    } finally {
      await release(manifest)
    }
  })
})

/** The encoded streams of every compressed extent of `m`, as they lie on the devices now. */
function rawStreams(m: Loose): Buffer[] {
  const out: Buffer[] = []
  const devices = m.devices.map((d: { id: string; hint: string }) => RawDevice.open(d.id, d.hint))
  try {
    for (const i of m.inodes) {
      for (const e of (i.extents ?? []) as Extent[]) {
        if (e.compression === undefined) continue
        const b = Buffer.alloc(e.diskLength!)
        devices[e.device].readExact(b, 0, b.length, e.deviceOffset)
        out.push(b)
      }
    }
  } finally {
    for (const d of devices) d.close()
  }
  return out
}

t.test('relocated by a balance: remap publishes compressed extents at their new places, the view follows', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512, mountOptions: 'compress=zstd' }, async (fsx) => {
    const source = path.join(fsx.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', source])
    const files = new Map([['a', compressible(3 * MiB, 20)], ['b', halfCompressible(2 * MiB, 21)]])
    for (const [name, data] of files) await fs.promises.writeFile(path.join(source, name), data)
    await runOk('sync', [])
    const manifest = path.join(scratch, 'nightly.json')
    const r = await extfs(['export', source, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot'])
    t.equal(r.code, 0, `export: ${r.stderr}`)
    try {
      const m = await readJson(manifest)
      const before = rawStreams(m)
      t.ok(before.length > 20, `${before.length} compressed extents`)
      await withView(manifest, async (view, logFile) => {
        for (const [name, data] of files) t.ok(fs.readFileSync(path.join(view, name)).equals(data), `${name} before the move`)
        await relocate(fsx)
        const after = rawStreams(m)
        t.ok(after.filter((b, k) => !b.equals(before[k]!)).length > before.length / 2, 'most old places of the streams now hold other bytes')
        const remap = await extfs(['remap', manifest])
        t.equal(remap.code, 0, `remap: ${remap.stderr.trim()}`)
        const delta: Loose = await readJson(`${manifest}.delta-1`)
        const moved: Extent[] = delta.files.flatMap((f: Loose) => f.extents ?? [])
        t.ok(moved.length > 20 && moved.every((e) => e.compression === 'zstd' && e.diskLength! > 0 && e.decodedLength! > 0), 'the delta carries the extents compressed, with their encoding')
        for (const [name, data] of files) t.ok(fs.readFileSync(path.join(view, name)).equals(data), `${name} through the view after the move`)
        t.match(fs.readFileSync(logFile, 'utf8'), /followed the config ID/, 'the view followed the delta')
      })
      await compareThroughView(t, manifest, files, scratch, 'after remap, a new mount')
    } finally {
      await release(manifest)
    }
  })
})

t.test('RAID0: a compressed extent whose stream crosses a stripe boundary is refused, naming the file', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 2, data: 'raid0', metadata: 'raid1', mountOptions: 'compress=zstd' }, async (fsx) => {
    // 4 MiB that packs to about 3 MiB of streams, laid back to back: many cross a 64 KiB stripe boundary.
    await fs.promises.writeFile(path.join(fsx.mountpoint, 'striped'), halfCompressible(4 * MiB, 30))
    await runOk('sync', [])
    const manifest = path.join(scratch, 'm.json')
    const r = await extfs(['export', fsx.mountpoint, '--output', manifest, '--frozen-image', 'freeze'])
    try {
      t.not(r.code, 0, 'export fails')
      t.match(r.stderr, /striped: compressed extent at \d+ .*the layers below btrfs split its encoded bytes/, `naming the file: ${r.stderr.trim()}`)
      t.equal(withoutProgress(r.stderr).trim().split('\n').length, 1, 'in one line')
      t.notOk(fs.existsSync(manifest), 'and writes no manifest')
    } finally {
      await release(manifest)
    }
  })
})
