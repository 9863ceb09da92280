// The view's C loader of version 2 manifests (native/view/load2.c), called directly, no mount: what
// it packs serves exactly the tree the JS packer serves for the same manifest (fixtures and random
// trees through the TypeScript writer), and every hostile body is refused with one line naming the
// problem, as version 1's validator refuses its twin.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Inode, Manifest } from '../../src/manifest/types'
import { openManifest } from '../../src/manifest/file'
import { readCheckedManifest } from '../../src/manifest/io'
import { readLayout, verifyMac } from '../../src/manifest/v2/read'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import { encodeTrailer, PREAMBLE } from '../../src/manifest/v2/format'
import { putVarint, zigzag } from '../../src/manifest/v2/varint'
import { loadMappedManifest, mappedTablesOf } from '../../src/native-engine/mapped-tables'
import type { Counts, ProgressSink } from '../../src/progress'
import { TableReader } from '../../src/native-engine/tables'
import { viewAddon } from '../../src/native-engine/addon'
import { encodeName } from '../../src/manifest/names'
import { extent, inodeOf, makeInode, makeManifest, refused } from '../helpers/manifest-factory'
import { servedTree } from '../helpers/served-tree'
import { packedTables, packedV2File } from '../helpers/packed-tables'

const FIXTURES = path.join(__dirname, '..', 'fixtures')
const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
const read = (name: string) => JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8')) as Manifest
const headerOf = (m: Manifest) => {
  const { inodes: _i, signature: _s, ...h } = m
  return h
}

/** The tables C packs from the v2 file (the image read back whole, for comparison), or a ManifestError. */
function loadC(file: string, key?: Buffer): Buffer {
  return packedV2File(file, key, () => []).image
}

const jsTree = (m: Manifest) => servedTree(packedTables(m, m.devices.map(() => -1)).image)

t.test('golden v2 files: C packs the tree the reference reader and the JS packer serve', async (t) => {
  const golden = fs.readdirSync(FIXTURES).filter((f) => /^manifest-v2-.*\.extfs$/.test(f))
  t.ok(golden.length >= 3, `${golden.length} golden files`)
  for (const f of golden) {
    const file = path.join(FIXTURES, f)
    const m = readCheckedManifest(file) // the reference reader
    const image = loadC(file)
    t.same(servedTree(image), jsTree(m), `${f}: the same served tree`)
    t.same(Object.keys(servedTree(image)), Object.keys(jsTree(m)), `${f}: listed in the same order`)
  }
})

t.test('fixtures: C packs the tree the JS packer packs', async (t) => {
  const dir = t.testdir({})
  const cases: Record<string, Manifest> = {
    factory: makeManifest(), minimal: read('manifest-v1-minimal.json'), 'every kind': read('manifest-v1-every-kind.json'),
    compressed: read('manifest-v1-compressed.json'),
  }
  for (const [name, m] of Object.entries(cases)) {
    const file = path.join(dir, `${name.replace(/ /g, '-')}.extfs`)
    writeManifestV2(file, headerOf(m), m.inodes)
    const image = loadC(file)
    t.equal(viewAddon().checkTables(image), null, `${name}: xt_check accepts it`)
    t.same(servedTree(image), jsTree(m), `${name}: the same served tree`)
    t.same(Object.keys(servedTree(image)), Object.keys(jsTree(m)), `${name}: listed in the same order`)
  }
})

// ------------------------------------------------------------------------------ random trees

/** Deterministic (xorshift) so that a failure reproduces from its seed. */
function rng(seed: number): (n: number) => number {
  let x = seed || 1
  return (n) => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return (x >>> 0) % n
  }
}

// Names that sort differently by bytes than by UTF-16 (U+FF21 after U+1F600 in UTF-16, before in bytes),
// prefixes of each other, and one past ASCII.
const NAME_PARTS = ['a', 'ab', 'A', 'b', '~', 'é', 'Ａ', '😀', 'z9', '.x', '-', 'a b']

function randomManifest(seed: number): Manifest {
  const r = rng(seed)
  const m = makeManifest()
  m.features = ['inline-data']
  m.devices[0]!.size = 1 << 30
  m.inodes = [makeInode(1, 'dir', { nlink: 2 })]
  const dirs = [m.inodes[0]!]
  const files: Inode[] = []
  let ino = 1
  let devAt = 0
  const n = 20 + r(200)
  for (let k = 0; k < n; k++) {
    ino += 1 + r(3) // gaps in the numbering
    const kinds = ['file', 'file', 'file', 'dir', 'symlink', 'fifo', 'char', 'socket', 'link'] as const
    const kind = kinds[r(kinds.length)]!
    const parent = dirs[r(dirs.length)]!
    const name = `${NAME_PARTS[r(NAME_PARTS.length)]}${NAME_PARTS[r(NAME_PARTS.length)]}${k % 7 === 0 ? '' : k}`
    if (parent.entries!.some((e) => e.name === name)) continue
    if (kind === 'link') { // a hard link to an earlier file
      if (files.length === 0) continue
      const f = files[r(files.length)]!
      f.nlink++
      parent.entries!.push({ name, ino: f.ino })
      continue
    }
    const node = makeInode(ino, kind, { atime: [1_700_000_000 - r(1000) * 1000, r(1e9)], mtime: [-r(100000), 0], ctime: [r(2 ** 40), 999_999_999] })
    if (kind === 'file') {
      if (r(4) === 0) {
        const content = Buffer.from(`inline ${r(3)}`) // repeated contents: shared in the data blob
        node.inline = content.toString('base64')
        node.size = content.length
      } else {
        const extents = []
        let fo = 0
        for (let e = r(4); e > 0; e--) {
          fo += r(2) * 4096 // sometimes a hole
          const len = 4096 * (1 + r(3))
          if (r(2) === 0) devAt += 4096 * r(5) // sometimes not contiguous on the device: no merge
          extents.push(extent(fo, 0, devAt, len))
          fo += len
          devAt += len
        }
        node.extents = extents
        node.size = fo + r(4096)
        node.blocks = fo / 512
      }
      files.push(node)
    }
    if (kind === 'dir') dirs.push(node)
    if (kind === 'symlink') node.target = `../${NAME_PARTS[r(NAME_PARTS.length)]}`
    if (kind === 'char') node.rdev = r(3) === 0 ? undefined : 0x0801
    if ((kind === 'file' || kind === 'dir') && r(5) === 0) node.attrs = 0x80000 + r(16)
    if (r(4) === 0) node.xattrs = { 'user.b': Buffer.from(`v${r(3)}`).toString('base64'), 'security.selinux': 'c3lzdGVt', 'user.a': '' }
    m.inodes.push(node)
    parent.entries!.push({ name, ino })
  }
  m.inodes.sort((a, b) => a.ino - b.ino)
  if (seed % 3 === 0) { // the root not the lowest number: index 0 is swapped with its rank
    const root = m.inodes.find((x) => x.ino === 1)!
    root.ino = ino + 5
    for (const d of dirs) for (const e of d.entries!) if (e.ino === 1) e.ino = root.ino
    m.root = root.ino
    m.inodes.sort((a, b) => a.ino - b.ino)
  }
  return m
}

t.test('random trees: C packs the tree the JS packer packs', async (t) => {
  const dir = t.testdir({})
  for (let seed = 1; seed <= 60; seed++) {
    const m = randomManifest(seed)
    const file = path.join(dir, `random-${seed}.extfs`)
    writeManifestV2(file, headerOf(m), m.inodes)
    const image = loadC(file)
    // servedTree's keys come in readdir order: the same keys in the same order is the same listing.
    const ok = viewAddon().checkTables(image) === null && t.same(servedTree(image), jsTree(m), `seed ${seed}: the same served tree`) &&
      t.same(Object.keys(servedTree(image)), Object.keys(jsTree(m)), `seed ${seed}: listed in the same order`)
    if (!ok) break
  }
})

t.test('load progress: C calls back as it goes; a callback that throws is dropped and the load goes on', async (t) => {
  const m = randomManifest(11)
  /** The tables packed with a sink that records each update (and throws at each when `throws`). */
  const load = (throws: boolean) => {
    const updates: Counts[] = []
    const sink: ProgressSink = {
      setPhase: () => undefined,
      update: (done) => {
        updates.push({ ...done })
        if (throws) throw new Error('progress sink down')
      },
    }
    return { updates, tables: packedTables(m, m.devices.map(() => -1), sink).image }
  }
  const calm = load(false)
  t.ok(calm.updates.length >= 2, `${calm.updates.length} updates`)
  t.equal(calm.updates.at(-1)!.files, m.inodes.length, 'the last update counts every inode')
  const throwing = load(true)
  t.equal(throwing.updates.length, 1, 'a callback that threw is not called again')
  t.ok(throwing.tables.equals(calm.tables), 'and the load went on: the same tables')
})

t.test('mapped: paths, inode numbers and sizes come from the file; signatures as version 1', async (t) => {
  const dir = t.testdir({})
  const m = randomManifest(3) // root renumbered: not rank 0
  const file = path.join(dir, 'signed.extfs')
  writeManifestV2(file, headerOf(m), m.inodes, KEY)
  const loaded = loadMappedManifest(file, KEY, () => [])
  const tables = mappedTablesOf(loaded)!
  t.equal(tables.index(m.root), 0, 'the root is index 0')
  const js = packedTables(m, [-1])
  for (let i = 0; i < m.inodes.length; i++) {
    const ino = js.paths.ino(i)
    const index = tables.index(ino)
    t.equal(tables.ino(index), ino, `ino ${ino} round trip`)
    // A hard link's first name may differ (the JS packer's first is breadth-first): the path names the inode.
    t.equal(js.paths.ino(new TableReader(js.image).resolve(tables.path(index)) ?? -1), ino, `ino ${ino}: ${tables.path(index)} names it`)
    const node = m.inodes.find((n) => n.ino === ino)!
    t.equal(tables.fileSizes().get(ino), node.kind === 'file' ? node.size : undefined, `ino ${ino}: size`)
  }
  t.equal(tables.index(123456789), -1, 'no such inode')
  t.throws(() => viewAddon().largeAcls(tables.handle), /not checked whole yet/, 'ACLs only once a mount checked the tables whole')
  refused(t, () => loadMappedManifest(file, Buffer.from('another key, long enough'), () => []), /^manifest signature does not match/)
  const unsigned = path.join(dir, 'unsigned.extfs')
  writeManifestV2(unsigned, headerOf(m), m.inodes)
  refused(t, () => loadMappedManifest(unsigned, KEY, () => []), /^manifest is not signed but --key was given$/)
})

// ------------------------------------------------------------------------------ hostile bodies

const v = (...xs: number[]) => Buffer.concat(xs.map((x) => {
  const b = Buffer.alloc(10)
  return b.subarray(0, putVarint(b, 0, x))
}))
const zz = (x: number) => v(zigzag(x))
const bytes = (b: Buffer | string) => Buffer.concat([v(Buffer.byteLength(b)), Buffer.from(b)])
const u32 = (x: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(x)
  return b
}

function dirRecord(dir: number, entries: [Buffer | string, number][]): Buffer {
  let prev = 0
  return Buffer.concat([Buffer.of(0x44), v(dir, entries.length), ...entries.flatMap(([name, ino]) => {
    const d = zz(ino - prev)
    prev = ino
    return [bytes(name), d]
  })])
}

interface InodeFields { mode: number; uid?: Buffer; nlink?: number; size?: number; sizeRaw?: Buffer; times?: Buffer; has?: number; tail?: Buffer }

const TIMES = Buffer.concat([zz(0), u32(0), zz(0), u32(0), zz(0), u32(0)])
const DIR = 0o40755
const FILE = 0o100644

function inodeRecord(step: number, f: InodeFields): Buffer {
  return Buffer.concat([Buffer.of(0x49), v(step, f.mode), f.uid ?? v(0), v(0, f.nlink ?? 1), f.sizeRaw ?? v(f.size ?? 0), v(0), f.times ?? TIMES, v(f.has ?? 0), f.tail ?? Buffer.alloc(0)])
}

/** The good body's INODE records with record `k` replaced by `rec`. */
const withInode = (k: number, rec: Buffer) => goodRecords().inodes.map((r, i) => (i === k ? rec : r))

const oneExtent = (gap: number, len: number, dev: number, at: number, extras = 0) => Buffer.concat([v(1, gap, len, dev), zz(at), v(extras)])

/**
 * The valid body the hostile ones are made from: root 1 {a → 2 (a file, one extent), d → 3 (dir
 * {x → 4, a symlink})}.
 */
function goodRecords(): { dirs: Buffer[]; inodes: Buffer[] } {
  return {
    dirs: [dirRecord(1, [['a', 2], ['d', 3]]), dirRecord(3, [['x', 4]])],
    inodes: [
      inodeRecord(1, { mode: DIR }),
      inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 0, 0) }),
      inodeRecord(1, { mode: DIR }),
      inodeRecord(1, { mode: 0o120777, tail: bytes('t') }),
    ],
  }
}

function entriesOf(dirs: Buffer[]): number {
  return dirs.reduce((n, d) => {
    let at = 1
    while (d[at]! & 0x80) at++
    return n + d[at + 1]! // fewer than 128 entries in these tests
  }, 0)
}

/** A v2 file around `body`, its trailer's counts from the records unless given. */
function v2File(dir: string, name: string, body: Buffer, counts: { inodes: number; dirs: number; entries: number }, features: string[] = []): string {
  const header = Buffer.from(JSON.stringify({ ...headerOf(makeManifest()), version: 2, features }))
  const file = path.join(dir, `${name}.extfs`)
  fs.writeFileSync(file, Buffer.concat([PREAMBLE, u32(header.length), header, body, encodeTrailer(counts, false)]))
  return file
}

interface Variant {
  name: string
  dirs?: Buffer[]
  inodes?: Buffer[]
  body?: (b: Buffer) => Buffer
  counts?: Partial<{ inodes: number; dirs: number; entries: number }>
  features?: string[]
  want: RegExp
}

const name256 = 'n'.repeat(256)
const VARIANTS: Variant[] = [
  { name: 'truncated record', body: (b) => b.subarray(0, b.length - 1), want: /runs past the end of the body \(truncated\)/ },
  { name: 'more inodes than the limit', counts: { inodes: 16_777_217 }, want: /^manifest \S+: manifest: the trailer counts 16777217 inodes, over the limit of 16777216$/ },
  { name: 'more entries than the body holds', counts: { entries: 1_000_000 }, want: /the trailer counts 1000000 directory entries, more than the body's \d+ bytes can hold/ },
  { name: 'trailer counts one inode fewer', counts: { inodes: 3 }, want: /inode 4: more INODE records than the trailer's 3/ },
  { name: 'trailer counts one inode more', counts: { inodes: 5 }, want: /the trailer says 5 INODE records, the body has 4/ },
  { name: 'trailer counts other entries', counts: { entries: 2 }, want: /inode 3: more directory entries than the trailer's 2/ },
  { name: 'trailer counts other dirs', counts: { dirs: 1 }, want: /inode 3: more DIR records than the trailer's 1/ },
  { name: 'non-minimal varint', dirs: [Buffer.concat([Buffer.of(0x44, 0x81, 0x00), v(0)]), dirRecord(3, [['x', 4]])], counts: { entries: 1 }, want: /DIR record: directory inode: varint not in its shortest form/ },
  { name: 'value over 2^53 - 1', inodes: withInode(1, inodeRecord(1, { mode: FILE, sizeRaw: Buffer.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10) })), want: /inode 2: size: 9007199254740992 is over the limit of 9007199254740991/ },
  { name: 'uid past 32 bits', inodes: withInode(0, inodeRecord(1, { mode: DIR, uid: v(2 ** 32) })), want: /inode 1: uid: 4294967296 is over the limit of 4294967295/ },
  { name: 'nanoseconds out of range', inodes: withInode(0, inodeRecord(1, { mode: DIR, times: Buffer.concat([zz(0), u32(1e9), zz(0), u32(0), zz(0), u32(0)]) })), want: /inode 1: atime must be \[seconds, nanoseconds\] with 0 <= nanoseconds < 1e9/ },
  { name: 'unknown mode', inodes: withInode(0, inodeRecord(1, { mode: 0o170755 })), want: /inode 1: mode 0170755 is not a file type/ },
  { name: 'inode numbers not ascending', inodes: withInode(1, inodeRecord(0, { mode: FILE })), want: /INODE record 1: ino not above the previous/ },
  { name: 'unknown tag', body: (b) => Buffer.concat([b, Buffer.of(0x58)]), want: /manifest: unknown record tag 0x58 at byte \d+/ },
  { name: 'DIR after INODE', body: (b) => Buffer.concat([b, dirRecord(5, [])]), counts: { dirs: 3 }, want: /a DIR record at byte \d+ after an INODE record/ },
  { name: 'unknown has bits', inodes: withInode(0, inodeRecord(1, { mode: DIR, has: 16 })), want: /inode 1: unknown has bits 0x10/ },
  { name: 'unknown extent extras', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 0, 0, 4) })), want: /inode 2: extents\[0\] has unknown extras bits 0x4/ },
  { name: 'checksums without the feature', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: Buffer.concat([oneExtent(0, 4096, 0, 0, 1), v(0), bytes('abcd')]) })), want: /inode 2: extents\[0\] has copies or csums but the manifest does not declare feature "data-checksums"/ },
  { name: 'inline without the feature', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 2, has: 8, tail: bytes('hi') })), want: /inode 2: has inline data but the manifest does not declare feature "inline-data"/ },
  { name: 'inline of another size', features: ['inline-data'], inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 3, has: 8, tail: bytes('hi') })), want: /inode 2: inline data is 2 bytes but size is 3/ },
  { name: 'inline on a dir', features: ['inline-data'], inodes: withInode(0, inodeRecord(1, { mode: DIR, has: 8, tail: bytes('hi') })), want: /inode 1: a dir cannot have inline data/ },
  { name: 'rdev on a file', inodes: withInode(1, inodeRecord(1, { mode: FILE, has: 1, tail: v(5, 0) })), want: /inode 2: a file cannot have rdev/ },
  { name: 'extent past the device end', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 0, 1024 * 1024 - 100) })), want: /inode 2: extents\[0\] past device end: bytes 1048476..1052572 of device 0, which is 1048576 bytes/ },
  { name: 'extent on no device', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 1, 0) })), want: /inode 2: extents\[0\].device 1 does not exist \(the manifest lists 1 devices\)/ },
  { name: 'extent past the file size', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(100, 4096, 0, 0) })), want: /inode 2: extents\[0\] starts at 100, at or past the file size 100/ },
  { name: 'empty extent', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 0, 0, 0) })), want: /inode 2: extents\[0\].length must be a positive integer, got 0/ },
  { name: 'extent before device offset 0', inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 0, -1) })), want: /inode 2: extents\[0\].deviceOffset must be a non-negative integer, got -1/ },
  { name: 'entry "."', dirs: [dirRecord(1, [['.', 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry "." is reserved/ },
  { name: 'entry ".."', dirs: [dirRecord(1, [['..', 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry ".." is reserved/ },
  { name: 'entry with "/"', dirs: [dirRecord(1, [['a/b', 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry "a\/b" contains "\/"/ },
  { name: 'entry with NUL', dirs: [dirRecord(1, [['a\0b', 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry "a\\x00b" contains NUL/ },
  { name: 'empty entry', dirs: [dirRecord(1, [['', 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry "" is empty/ },
  { name: 'entry of 256 bytes', dirs: [dirRecord(1, [[name256, 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry name is 256 bytes, over the limit of 255/ },
  { name: 'entry not UTF-8', dirs: [dirRecord(1, [[Buffer.of(0x61, 0xff), 2], ['d', 3]]), dirRecord(3, [['x', 4]])], want: /inode 1: entry "a\\xff" holds bytes that are not UTF-8 but the manifest does not declare feature "byte-names"/ },
  { name: 'duplicate names', dirs: [dirRecord(1, [['a', 2], ['d', 3], ['a', 4]]), dirRecord(3, [])], want: /inode 1: entry "a" appears twice/ },
  { name: 'entry to a missing inode', dirs: [dirRecord(1, [['a', 2], ['d', 3], ['g', 99]]), dirRecord(3, [['x', 4]])], counts: { entries: 4 }, want: /inode 1: entry "g" points at inode 99, which does not exist/ },
  { name: 'entry to the root', dirs: [dirRecord(1, [['a', 2], ['d', 3]]), dirRecord(3, [['x', 4], ['up', 1]])], counts: { entries: 4 }, want: /inode 3: entry "up" points back at the root directory \(a cycle\)/ },
  { name: 'entry ino not positive', dirs: [dirRecord(1, [['a', 2], ['d', 3]]), Buffer.concat([Buffer.of(0x44), v(3, 1), bytes('x'), zz(-4)])], want: /inode 3: entry "x" has ino -4, not a positive integer/ },
  { name: 'a dir with two parents', dirs: [dirRecord(1, [['a', 2], ['d', 3], ['e', 4]]), dirRecord(4, [['y', 3]]), dirRecord(3, [])], inodes: [...goodRecords().inodes.slice(0, 3), inodeRecord(1, { mode: DIR })], counts: { dirs: 3 }, want: /inode 3: directory has two parents: inode 1 and inode 4 \(entry "y"\)/ },
  { name: 'a dir entered twice', dirs: [dirRecord(1, [['a', 2], ['d', 3], ['e', 3]]), dirRecord(3, [['x', 4]])], counts: { entries: 4 }, want: /inode 1: directory 3 has two parents: it is entered twice here, the second time as "e"/ },
  { name: 'a cycle cut off from the root', dirs: [dirRecord(1, [['a', 2]]), dirRecord(3, [['x', 4], ['c', 5]]), dirRecord(5, [['b', 3]])], inodes: [...goodRecords().inodes, inodeRecord(1, { mode: DIR })], counts: { dirs: 3 }, want: /is not reachable from the root: its directory is its own ancestor \(a cycle\)/ },
  { name: 'an orphan', dirs: [dirRecord(1, [['a', 2], ['d', 3]]), dirRecord(3, [])], want: /inode 4: is not reachable from the root \(an orphan\)/ },
  { name: 'a DIR record of a file', dirs: [...goodRecords().dirs, dirRecord(2, [])], counts: { dirs: 3 }, want: /inode 2: is a file, not a dir, but has a DIR record/ },
  { name: 'two DIR records of one dir', dirs: [...goodRecords().dirs, dirRecord(3, [])], counts: { dirs: 3 }, want: /inode 3: has two DIR records/ },
  { name: 'a DIR record without an inode', dirs: [...goodRecords().dirs, dirRecord(9, [])], counts: { dirs: 3 }, want: /inode 9: has a DIR record but no INODE record/ },
  { name: 'the root not a dir', inodes: withInode(0, inodeRecord(1, { mode: FILE, tail: v(0) })), want: /manifest: root inode 1 is a file, not a dir/ },
  { name: 'no root', inodes: [inodeRecord(2, { mode: FILE, size: 100, tail: oneExtent(0, 4096, 0, 0) }), ...goodRecords().inodes.slice(2)], counts: { inodes: 3 }, want: /manifest: root inode 1 is missing from the inode list/ },
  { name: 'symlink target with NUL', inodes: [...goodRecords().inodes.slice(0, 3), inodeRecord(1, { mode: 0o120777, tail: bytes('a\0') })], want: /inode 4: symlink target "a\\x00" contains NUL/ },
  { name: 'empty symlink target', inodes: [...goodRecords().inodes.slice(0, 3), inodeRecord(1, { mode: 0o120777, tail: bytes('') })], want: /inode 4: symlink target is empty/ },
  { name: 'xattr without a namespace', inodes: [inodeRecord(1, { mode: DIR, has: 4, tail: Buffer.concat([v(1), bytes('user.'), bytes('v')]) }), ...goodRecords().inodes.slice(1)], want: /inode 1: xattr name "user." has nothing after its namespace/ },
  { name: 'xattr twice', inodes: [inodeRecord(1, { mode: DIR, has: 4, tail: Buffer.concat([v(2), bytes('user.a'), bytes('v'), bytes('user.a'), bytes('w')]) }), ...goodRecords().inodes.slice(1)], want: /inode 1: xattr name "user.a" appears twice/ },
  { name: 'xattr of an unknown namespace', inodes: [inodeRecord(1, { mode: DIR, has: 4, tail: Buffer.concat([v(1), bytes('other.a'), bytes('v')]) }), ...goodRecords().inodes.slice(1)], want: /inode 1: xattr name "other.a" must start with user./ },
  { name: 'no xattrs under the xattr bit', inodes: [inodeRecord(1, { mode: DIR, has: 4, tail: v(0) }), ...goodRecords().inodes.slice(1)], want: /inode 1: has the xattrs bit but no xattrs/ },
  { name: 'compressed without the feature', features: ['data-checksums'], inodes: withInode(1, inodeRecord(1, { mode: FILE, size: 100, tail: Buffer.concat([oneExtent(0, 4096, 0, 0, 3), v(0), bytes(Buffer.alloc(4)), Buffer.of(1), v(4096, 4096, 0)]) })), want: /compressed|dataChecksums/ },
]

t.test('hostile bodies are refused with one line each', async (t) => {
  const dir = t.testdir({})
  const good = goodRecords()
  const goodFile = v2File(dir, 'good', Buffer.concat([...good.dirs, ...good.inodes]), { inodes: 4, dirs: 2, entries: 3 })
  t.equal(viewAddon().checkTables(loadC(goodFile)), null, 'the body they are made from loads')
  for (const [k, c] of VARIANTS.entries()) {
    const dirs = c.dirs ?? good.dirs
    const inodes = c.inodes ?? good.inodes
    let body: Buffer = Buffer.concat([...dirs, ...inodes])
    if (c.body) body = c.body(body)
    const counts = { inodes: inodes.length, dirs: dirs.length, entries: entriesOf(dirs), ...c.counts }
    const file = v2File(dir, `${k}-${c.name.replace(/[^a-z0-9]+/gi, '-')}`, body, counts, c.features)
    t.test(c.name, async (t) => refused(t, () => loadC(file), c.want))
  }
})

t.test('a name sorts by bytes, and a byte name loads with feature byte-names', async (t) => {
  const dir = t.testdir({})
  const names: [Buffer | string, number][] = [[Buffer.from('ｚ'), 2], [Buffer.from('😀'), 3], [Buffer.of(0x61, 0xff), 4], [Buffer.from('a'), 5]]
  const body = Buffer.concat([dirRecord(1, names), inodeRecord(1, { mode: DIR }), ...[2, 3, 4, 5].map(() => inodeRecord(1, { mode: 0o10644 }))])
  const file = v2File(dir, 'bytes', body, { inodes: 5, dirs: 1, entries: 4 }, ['byte-names'])
  const image = loadC(file)
  const order = Object.keys(servedTree(image)).slice(1).map((p) => encodeName(p.slice(1)).toString('hex'))
  t.same(order, ['61', '61ff', 'efbd9a', 'f09f9880'], 'memcmp order, shorter first')
})
