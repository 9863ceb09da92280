// btrfs logical → physical mapping on real multi-device filesystems: write files with known content,
// FIEMAP them (logical addresses), resolve through the live chunk tree (BtrfsLayout), read those bytes
// from the raw loop devices with O_DIRECT and compare byte for byte. One filesystem per profile.
// Needs root, loop devices and btrfs-progs.
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import * as path from 'node:path'
import { withBtrfs, type BtrfsFs, type BtrfsOptions } from '../helpers/btrfs'
import { seededBytes } from '../helpers/populate'
import { runOk } from '../helpers/exec'
import { BtrfsLayout } from '../../src/mapping/btrfs'
import { BG_DUP, BG_RAID1, BG_RAID10, BG_RAID1C3, BG_RAID1C4, ChunkMap, resolveLogical } from '../../src/mapping/btrfs-chunks'
import { devKey, type Span } from '../../src/mapping/span'
import { RawDevice } from '../../src/device/reader'
import { linux, FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_UNWRITTEN } from '../../src/linux'

const KiB = 1024
const MiB = 1024 * KiB

/** Files that exercise the mapping: large extents, odd sizes, and interleaved/overwritten (fragmented) ones. */
async function writeFiles(mnt: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>()
  const put = (name: string, content: Buffer) => {
    fs.writeFileSync(path.join(mnt, name), content)
    files.set(name, content)
  }
  put('big', seededBytes(1, 6 * MiB))
  put('odd', seededBytes(2, 3 * MiB + 1234)) // tail not block-aligned
  put('small', seededBytes(3, 12 * KiB + 7))

  // Two files grown in turns with an fsync after each piece: their extents interleave on disk.
  const a = seededBytes(4, 2 * MiB)
  const b = seededBytes(5, 2 * MiB)
  const fa = fs.openSync(path.join(mnt, 'interleaved-a'), 'w')
  const fb = fs.openSync(path.join(mnt, 'interleaved-b'), 'w')
  for (let off = 0; off < a.length; off += 96 * KiB) {
    fs.writeSync(fa, a, off, Math.min(96 * KiB, a.length - off), off)
    fs.fsyncSync(fa)
    fs.writeSync(fb, b, off, Math.min(96 * KiB, b.length - off), off)
    fs.fsyncSync(fb)
  }
  fs.closeSync(fa)
  fs.closeSync(fb)
  files.set('interleaved-a', a)
  files.set('interleaved-b', b)

  // Copy-on-write: overwriting blocks in the middle of a file moves just those blocks elsewhere.
  const cow = Buffer.from(seededBytes(6, 4 * MiB))
  fs.writeFileSync(path.join(mnt, 'overwritten'), cow)
  execFileSync('sync', ['-f', mnt])
  const fd = fs.openSync(path.join(mnt, 'overwritten'), 'r+')
  for (let i = 0; i < 12; i++) {
    const off = ((i * 331) % 1000) * 4 * KiB + (i % 3) * 512 // some unaligned, straddling blocks
    const patch = seededBytes(100 + i, 5 * KiB)
    patch.copy(cow, off)
    fs.writeSync(fd, patch, 0, patch.length, off)
    fs.fsyncSync(fd)
  }
  fs.closeSync(fd)
  files.set('overwritten', cow)
  await runOk('sync', ['-f', mnt])
  return files
}

type Resolve = (logical: number, length: number) => Span[]

/** Read every extent of every file through `resolve` and the raw devices; returns the spans used. */
function checkFiles(t: Test, fsx: BtrfsFs, layout: BtrfsLayout, resolve: Resolve, files: Map<string, Buffer>, label = ''): Span[] {
  const raw = new Map(layout.devices.map((d) => [devKey(d.dev), RawDevice.open(`devid ${d.devid}`, d.path)]))
  const used: Span[] = []
  try {
    for (const [name, content] of files) {
      const fd = fs.openSync(path.join(fsx.mountpoint, name), 'r')
      const extents = linux.fiemap(fd)
      fs.closeSync(fd)
      const got = Buffer.alloc(content.length, 0xa5) // poison: bytes no extent covers stay wrong
      let bad = ''
      for (const e of extents) {
        if (e.flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_UNWRITTEN)) bad += ` flags 0x${e.flags.toString(16)} at ${e.logical}`
        // The last extent is reported rounded up to the sector size; only the file's bytes are compared.
        const length = Math.min(e.length, content.length - e.logical)
        if (length <= 0) continue
        let at = e.logical
        for (const s of resolve(e.physical, length)) {
          const dev = raw.get(devKey(s.dev!))
          if (!dev) throw new Error(`${name}: span on ${devKey(s.dev!)}, not a member`)
          dev.readExact(got, at, s.length, s.offset)
          used.push(s)
          at += s.length
        }
        if (at !== e.logical + length) bad += ` spans cover ${at - e.logical} of ${length} bytes at ${e.logical}`
      }
      t.equal(bad, '', `${name}${label}: every extent is plain data`)
      t.ok(got.equals(content), `${name}${label}: ${content.length} bytes read raw through ${extents.length} extents match`)
    }
  } finally {
    for (const d of raw.values()) d.close()
  }
  return used
}

/**
 * The same chunk map with copy `m` of every mirror set moved to the front, so resolving reads copy m
 * instead of copy 0 (mirror sets: all stripes for DUP/RAID1/RAID1C*, each pair for RAID10).
 */
function mirrorResolver(layout: BtrfsLayout, mountpoint: string, m: number): Resolve {
  const fd = fs.openSync(mountpoint, 'r')
  const chunks = linux.btrfsChunks(fd)
  fs.closeSync(fd)
  const rotated = chunks.map((c) => {
    const width = c.type & BG_RAID10 ? c.subStripes : c.type & (BG_DUP | BG_RAID1 | BG_RAID1C3 | BG_RAID1C4) ? c.numStripes : 1
    const stripes = c.stripes.map((_, i) => {
      const base = i - (i % width)
      return c.stripes[base + ((i - base + m) % width)]
    })
    return { ...c, stripes }
  })
  const map = new ChunkMap(rotated)
  const devs = new Map(layout.devices.map((d) => [d.devid, d.dev]))
  return (logical, length) => resolveLogical(map, logical, length).map((s) => ({ dev: devs.get(s.devid)!, offset: s.offset, length: s.length }))
}

interface Config {
  name: string
  opts: BtrfsOptions
  /** Copies of each data byte (1 for single/RAID0, 2 for DUP/RAID1/RAID10, 3 for RAID1C3). */
  copies: number
}

const configs: Config[] = [
  { name: 'single device, data single, metadata DUP', opts: { devices: 1, data: 'single', metadata: 'dup' }, copies: 1 },
  { name: 'single device, data DUP', opts: { devices: 1, data: 'dup', metadata: 'dup' }, copies: 2 },
  { name: 'RAID0 over 2 devices', opts: { devices: 2, data: 'raid0', metadata: 'raid1' }, copies: 1 },
  { name: 'RAID1 over 2 devices', opts: { devices: 2, data: 'raid1', metadata: 'raid1' }, copies: 2 },
  { name: 'RAID10 over 4 devices', opts: { devices: 4, data: 'raid10', metadata: 'raid10' }, copies: 2 },
  { name: 'RAID1C3 over 3 devices', opts: { devices: 3, data: 'raid1c3', metadata: 'raid1c3' }, copies: 3 },
]

for (const c of configs) {
  t.test(c.name, async (t) => {
    await withBtrfs(c.opts, async (fsx) => {
      const files = await writeFiles(fsx.mountpoint)
      const layout = BtrfsLayout.read(fsx.mountpoint)

      const fsid = (await runOk('blkid', ['-p', '-s', 'UUID', '-o', 'value', fsx.loopDevices[0]])).stdout.trim()
      t.equal(layout.fsid, fsid, 'fsid is the filesystem UUID blkid sees')
      t.same(layout.devices.map((d) => d.path).sort(), [...fsx.loopDevices].sort(), 'every loop device is a member')
      for (const d of layout.devices) {
        const rdev = fs.statSync(d.path).rdev
        t.equal(devKey(d.dev), `${Math.floor(rdev / 256) & 0xfff}:${rdev & 0xff}`, `devid ${d.devid} is ${d.path}`)
      }

      const used = checkFiles(t, fsx, layout, (l, n) => layout.resolve(l, n), files)
      if (c.opts.data === 'raid0' || c.opts.data === 'raid10') {
        const devs = new Set(used.map((s) => devKey(s.dev!)))
        t.ok(devs.size >= 2, `striped file data read from ${devs.size} devices`)
        t.ok(used.every((s) => s.length <= 64 * KiB), 'striped spans never exceed one 64 KiB stripe unit')
      }
      // Every other copy holds the same bytes: the mirror layout we skip is understood too.
      for (let m = 1; m < c.copies; m++) checkFiles(t, fsx, layout, mirrorResolver(layout, fsx.mountpoint, m), files, ` (copy ${m})`)
      t.throws(() => layout.resolve(0, 4096), /in no chunk/, 'logical 0 is in no chunk (btrfs reserves the first MiB)')
    })
  })
}

t.test('compressed extents are flagged ENCODED', async (t) => {
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', mountOptions: 'compress=zstd' }, async (fsx) => {
    const file = path.join(fsx.mountpoint, 'text')
    fs.writeFileSync(file, Buffer.from('all work and no play makes jack a dull boy\n'.repeat(25_000)))
    const fd = fs.openSync(file, 'r')
    const extents = linux.fiemap(fd)
    fs.closeSync(fd)
    t.ok(extents.length > 0, `${extents.length} extents`)
    t.ok(extents.every((e) => e.flags & FIEMAP_EXTENT_ENCODED), 'every extent of a compressed file is ENCODED')
  })
})

t.test('a directory on another filesystem is refused with a one-line ExportError', async (t) => {
  const dir = fs.mkdtempSync('/dev/shm/extfs-notbtrfs-') // tmpfs: never btrfs
  try {
    t.throws(() => BtrfsLayout.read(dir), /cannot read the btrfs device list: .*(ENOTTY|Inappropriate ioctl)/)
  } finally {
    fs.rmdirSync(dir)
  }
})
