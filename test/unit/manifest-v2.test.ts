// Manifest format version 2 (docs/manifest-v2.md) through its TypeScript writer and reference reader:
// every v1 manifest comes back as the same inodes and serves the same tree, signatures cover every
// byte, and broken bodies are refused with one line.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import type { Inode, Manifest } from '../../src/manifest/types'
import { readCheckedManifest, writeManifestFile } from '../../src/manifest/io'
import { formatSummary, printInodes, summarizeFile } from '../../src/cli/inspect'
import { streamOrReadManifest } from '../../src/manifest/stream'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import { openManifestV2, sameBodyV2 } from '../../src/manifest/v2/read'
import { PREAMBLE, TRAILER_BYTES } from '../../src/manifest/v2/format'
import { getVarint, putVarint, unzigzag, zigzag } from '../../src/manifest/v2/varint'
import { extent, inodeOf, makeInode, makeManifest, refused } from '../helpers/manifest-factory'
import { servedTree } from '../helpers/served-tree'
import { packedTables, packedV2File } from '../helpers/packed-tables'
import { loadMappedManifest } from '../../src/native-engine/mapped-tables'

const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
const FIXTURES = path.join(__dirname, '..', 'fixtures')
const read = (name: string) => JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8')) as Manifest

/** A directory of `n` small files with one extent each, their names not in ino order. */
function bigManifest(n: number): Manifest {
  const m = makeManifest()
  for (let ino = 10; ino < 10 + n; ino++) {
    m.inodes.push(makeInode(ino, ino % 3 ? 'file' : 'fifo', ino % 3 ? { size: 100, blocks: 8, extents: [extent(0, 0, (ino % 200) * 4096, 4096)] } : {}))
    inodeOf(m, 1).entries!.push({ name: `f${(ino * 7919) % (n + 1)}-é${ino}`, ino })
  }
  return m
}

/** A manifest with a byte name, a byte symlink target and a byte xattr name. */
function byteNames(): Manifest {
  const m = makeManifest()
  m.features.push('byte-names')
  m.inodes.push(makeInode(50, 'symlink', { target: 'caf\udce9' }))
  m.inodes.push(makeInode(51, 'file', { size: 0, extents: [], xattrs: { 'user.\udcff': 'AQI=' } }))
  inodeOf(m, 1).entries!.push({ name: 'l\udce9', ino: 50 }, { name: '\udc80\udc81', ino: 51 })
  return m
}

const manifests = (): Record<string, Manifest> => ({
  factory: makeManifest(), minimal: read('manifest-v1-minimal.json'), 'every kind': read('manifest-v1-every-kind.json'),
  compressed: read('manifest-v1-compressed.json'), big: bigManifest(3000), 'byte names': byteNames(),
})

/** Sorted by ino, an empty `extents` left out: version 2 writes no extents and no field alike. */
const byIno = (list: Inode[]) => [...list].sort((a, b) => a.ino - b.ino).map((n) => {
  if (n.extents?.length !== 0) return n
  const { extents: _e, ...rest } = n
  return rest
})
const { signature: _s, ...noSig } = makeManifest()
const headerOf = (m: Manifest) => {
  const { inodes: _i, signature: _sig, ...h } = m
  return h as typeof noSig
}

function servedFromV2(file: string, key?: Buffer): Record<string, unknown> {
  return servedTree(packedV2File(file, key, (n) => Array.from({ length: n }, (_, i) => 100 + i)).image)
}

t.test('every v1 manifest comes back whole, and serves the same tree', async (t) => {
  const dir = t.testdir({})
  for (const [name, m] of Object.entries(manifests())) {
    const file = path.join(dir, `${name.replace(/ /g, '-')}.extfs`)
    writeManifestV2(file, headerOf(m), m.inodes)
    const back = readCheckedManifest(file)
    t.equal(back.version, 2, `${name}: version 2`)
    t.same(byIno(back.inodes), byIno(m.inodes), `${name}: the same inodes`)
    t.same({ ...back, inodes: [], version: 1 }, { ...headerOf(m), inodes: [] }, `${name}: the same header`)
    t.same(servedFromV2(file), servedTree(packedTables(m, m.devices.map((_, i) => 100 + i)).image), `${name}: the same served tree`)
  }
})

t.test('small files cost well under 120 bytes each', async (t) => {
  const dir = t.testdir({})
  const m = bigManifest(20_000)
  const file = path.join(dir, 'big.extfs')
  writeManifestV2(file, headerOf(m), m.inodes)
  const perInode = fs.statSync(file).size / m.inodes.length
  t.ok(perInode < 60, `${perInode.toFixed(1)} bytes per inode`)
})

t.test('signatures cover every byte', async (t) => {
  const dir = t.testdir({})
  const m = read('manifest-v1-every-kind.json')
  const file = path.join(dir, 'signed.extfs')
  writeManifestV2(file, headerOf(m), m.inodes, KEY)
  t.same(byIno(readCheckedManifest(file, KEY).inodes), byIno(m.inodes), 'verifies with the key')
  refused(t, () => readCheckedManifest(file, Buffer.from('another key, long enough')), /^manifest signature does not match: altered, or signed with another key$/)
  const bytes = fs.readFileSync(file)
  // Every 97th byte flipped in turn, everywhere but the MAC itself: each is noticed with the key.
  for (let at = 0; at < bytes.length - 32; at += 97) {
    const bad = Buffer.from(bytes)
    bad[at]! ^= 0x01
    const f = path.join(dir, 'flipped.extfs')
    fs.writeFileSync(f, bad)
    t.throws(() => readCheckedManifest(f, KEY), `a bit flipped at ${at} is refused`)
  }
  const unsigned = path.join(dir, 'unsigned.extfs')
  writeManifestV2(unsigned, headerOf(m), m.inodes)
  refused(t, () => readCheckedManifest(unsigned, KEY), /^manifest is not signed but --key was given$/)
})

t.test('broken bodies are refused with one line', async (t) => {
  const dir = t.testdir({})
  const m = bigManifest(10)
  const good = path.join(dir, 'good.extfs')
  writeManifestV2(good, headerOf(m), m.inodes)
  const bytes = fs.readFileSync(good)
  const headerEnd = PREAMBLE.length + 4 + bytes.readUInt32LE(PREAMBLE.length)
  const bodyEnd = bytes.length - TRAILER_BYTES
  const variant = (name: string, b: Buffer) => {
    const f = path.join(dir, `${name}.extfs`)
    fs.writeFileSync(f, b)
    return f
  }
  const withTrailerInodes = (n: number) => {
    const b = Buffer.from(bytes)
    b.writeUInt32LE(n, bodyEnd + 8)
    return b
  }
  const body = bytes.subarray(headerEnd, bodyEnd)
  const rebuilt = (newBody: Buffer) => Buffer.concat([bytes.subarray(0, headerEnd), newBody, bytes.subarray(bodyEnd)])
  const cases: [string, Buffer, RegExp][] = [
    ['truncated', bytes.subarray(0, bytes.length - 10), /no version 2 trailer at its end \(truncated\?\)/],
    ['cut in the body', Buffer.concat([bytes.subarray(0, headerEnd + 20), bytes.subarray(bodyEnd)]), /runs past the end of the body|record/],
    ['more inodes than the trailer says', withTrailerInodes(3), /more inode records than the trailer's 3/],
    ['fewer inodes than the trailer says', withTrailerInodes(99), /the body has \d+ inode records; the trailer says 99/],
    ['unknown tag', rebuilt(Buffer.concat([body, Buffer.of(0x58)])), /unknown record tag 88/],
    ['a DIR record after the inodes', rebuilt(Buffer.concat([body, Buffer.of(0x44, 0x01, 0x00)])), /a directory record after the inode records/],
    ['header length past the end', (() => { const b = Buffer.from(bytes); b.writeUInt32LE(bytes.length, 8); return b })(), /header length \d+ does not fit the file/],
    ['not version 2', Buffer.concat([Buffer.from('EXTFSv3\n'), bytes.subarray(8)]), /is not a version 2 manifest|not valid UTF-8/],
  ]
  for (const [name, b, msg] of cases) {
    t.throws(() => readCheckedManifest(variant(name.replace(/ /g, '-'), b)), msg, name)
    try {
      readCheckedManifest(variant(name.replace(/ /g, '-'), b))
    } catch (err) {
      t.notOk((err as Error).message.includes('\n'), `${name}: one line`)
    }
  }
})

// A fuzz finding (fuzz/corpus/manifest/regress-empty-xattrs.json): version 1 allows `"xattrs": {}`,
// and the encoder set the xattrs bit with no xattrs, which the C loader refuses: the manifest did not mount.
t.test('an empty xattr list in version 1 is no list in version 2: it packs, and reads back without one', async (t) => {
  const dir = t.testdir({})
  const m = makeManifest()
  inodeOf(m, 1).xattrs = {}
  t.doesNotThrow(() => packedTables(m, m.devices.map((_, i) => 100 + i)), 'packed as a mount packs it')
  const f = path.join(dir, 'empty-xattrs.extfs')
  writeManifestV2(f, headerOf(m), m.inodes)
  t.equal(inodeOf(readCheckedManifest(f), 1).xattrs, undefined, 'read back without xattrs')
})

t.test('the tree rules of version 1 hold', async (t) => {
  const dir = t.testdir({})
  const write = (name: string, m: Manifest) => {
    const f = path.join(dir, `${name}.extfs`)
    writeManifestV2(f, headerOf(m), m.inodes)
    return f
  }
  const orphan = makeManifest()
  orphan.inodes.push(makeInode(77, 'fifo'))
  refused(t, () => readCheckedManifest(write('orphan', orphan)), /inode 77.*not reachable|orphan/)
  const cycle = makeManifest()
  cycle.inodes.push(makeInode(60, 'dir', { entries: [] }))
  inodeOf(cycle, 1).entries!.push({ name: 'c', ino: 60 })
  inodeOf(cycle, 60).entries!.push({ name: 'up', ino: 60 })
  refused(t, () => readCheckedManifest(write('cycle', cycle)), /its own ancestor \(a cycle\)/)
  const slash = makeManifest()
  inodeOf(slash, 1).entries![0]!.name = 'a/b'
  refused(t, () => readCheckedManifest(write('slash', slash)), /contains "\/"/)
  const missing = makeManifest()
  inodeOf(missing, 1).entries!.push({ name: 'ghost', ino: 999 })
  refused(t, () => readCheckedManifest(write('missing', missing)), /points at inode 999, which does not exist/)
})

t.test('inspect summarizes either version alike, streamed', async (t) => {
  const dir = t.testdir({})
  const m = read('manifest-v1-every-kind.json')
  // A file deep in the tree holding an ACL no FUSE reader can have, reached through two hard links.
  const acl = Buffer.alloc(5000, 7).toString('base64')
  m.inodes.push(makeInode(900, 'dir', { entries: [{ name: 'deep', ino: 901 }] }), makeInode(901, 'file', { nlink: 2, xattrs: { 'system.posix_acl_access': acl } }))
  const root = inodeOf(m, m.root)
  root.entries!.push({ name: 'acl-dir', ino: 900 }, { name: 'acl-link', ino: 901 })
  const v1 = path.join(dir, 'm.json')
  writeManifestFile(v1, m)
  const v2 = path.join(dir, 'm.extfs')
  writeManifestV2(v2, headerOf(m), m.inodes, KEY)
  const s1 = summarizeFile(v1)
  const s2 = summarizeFile(v2, KEY)
  t.same({ ...s2, format: 1, signed: s1.signed }, s1, 'the same summary')
  t.equal(s2.format, 2)
  t.equal(s2.signed, true, 'a signed v2 shows as signed')
  t.equal(s1.largeAcls.length, 1, `the large ACL is found once: ${s1.largeAcls}`)
  t.match(s1.largeAcls[0], /^\/acl-(dir\/deep|link)$/)
  t.match(formatSummary(s2), /^format {8}version 2 \(binary\)$/m)
})

t.test('golden v2 fixtures keep reading as their v1 twins', async (t) => {
  // Written once by this version's writer; a change of the format that breaks them fails here.
  const FIXTURE_KEY = Buffer.from('extfs-test-key-do-not-use-0123456789')
  for (const [name, key] of [['every-kind', FIXTURE_KEY], ['minimal', undefined], ['compressed', undefined]] as const) {
    const v1 = read(`manifest-v1-${name}.json`)
    const v2 = readCheckedManifest(path.join(FIXTURES, `manifest-v2-${name}.extfs`), key)
    t.same(byIno(v2.inodes), byIno(v1.inodes), `${name}: the v1 twin's inodes`)
    t.same({ ...v2, inodes: [], version: 1, signature: undefined }, { ...v1, inodes: [], signature: undefined }, `${name}: the v1 twin's header`)
  }
  refused(t, () => readCheckedManifest(path.join(FIXTURES, 'manifest-v2-every-kind.extfs'), KEY), /^manifest signature does not match/)
})

t.test('varints: shortest form only, at most 2^53 - 1', async (t) => {
  const enc = (v: number) => {
    const b = Buffer.alloc(10)
    return b.subarray(0, putVarint(b, 0, v))
  }
  for (const v of [0, 1, 127, 128, 300, 2 ** 32, 2 ** 52 + 5, Number.MAX_SAFE_INTEGER]) {
    const b = enc(v)
    t.same(getVarint(b, 0, b.length), [v, b.length], `${v} round-trips in ${b.length} bytes`)
  }
  t.equal(enc(127).length, 1)
  t.equal(enc(Number.MAX_SAFE_INTEGER).length, 8)
  t.throws(() => getVarint(Buffer.of(0x80, 0x00), 0, 2), /shortest form/, '0 written in two bytes')
  t.throws(() => getVarint(Buffer.of(0x81, 0x80, 0x00), 0, 3), /shortest form/, '1 with a trailing zero group')
  t.throws(() => getVarint(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x10]), 0, 8), /over/, '2^53 is refused')
  t.throws(() => getVarint(Buffer.alloc(11, 0xff), 0, 11), /over|longer/, 'eleven bytes')
  t.equal(getVarint(Buffer.of(0x80), 0, 1), undefined, 'cut short: undefined, the caller says where')
  t.throws(() => putVarint(Buffer.alloc(10), 0, -1), RangeError)
  for (const v of [0, -1, 1, -(2 ** 51), 2 ** 51, 2 ** 52 - 1, -(2 ** 52 - 1)]) t.equal(unzigzag(zigzag(v)), v, `zigzag ${v}`)
  t.throws(() => zigzag(2 ** 52), RangeError, 'a difference of 2^52 is refused by the writer')
})

t.test('inspect --inodes prints either version as the same lines', async (t) => {
  const dir = t.testdir({})
  const m = read('manifest-v1-every-kind.json')
  const v1 = path.join(dir, 'm.json')
  writeManifestFile(v1, m)
  const v2 = path.join(dir, 'm.extfs')
  writeManifestV2(v2, headerOf(m), m.inodes)
  const lines = (file: string) => {
    const out: string[] = []
    printInodes(file, undefined, (l) => out.push(...l.split('\n')))
    return out.map((l) => JSON.parse(l))
  }
  const a = lines(v1)
  const b = lines(v2)
  t.equal(a.length, m.inodes.length + 1, 'a header line and a line per inode')
  t.same({ ...b[0].header, version: 1 }, a[0].header, 'the same header')
  t.same(byIno(b.slice(1)), byIno(a.slice(1)), 'the same inodes')
})

t.test('inspect refuses a tree mount refuses, in either version', async (t) => {
  const dir = t.testdir({})
  const cycle = makeManifest()
  cycle.inodes.push(makeInode(60, 'dir', { entries: [] }))
  inodeOf(cycle, 1).entries!.push({ name: 'c', ino: 60 })
  inodeOf(cycle, 60).entries!.push({ name: 'up', ino: 60 })
  const v2 = path.join(dir, 'cycle.extfs')
  writeManifestV2(v2, headerOf(cycle), cycle.inodes)
  // Version 2: the mover's C loader checks the tree for both, so inspect says what mount says.
  let mountSays = ''
  try {
    loadMappedManifest(v2, undefined, () => [])
  } catch (err) {
    mountSays = (err as Error).message
  }
  t.match(mountSays, /directory has two parents/, 'the mover\'s loader refuses it')
  refused(t, () => summarizeFile(v2), new RegExp(`^${mountSays.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`))
  const v1 = path.join(dir, 'cycle.json')
  fs.writeFileSync(v1, JSON.stringify(cycle)) // writeManifestFile would refuse it
  refused(t, () => summarizeFile(v1), /its own ancestor \(a cycle\)/)
})

t.test('sameBodyV2: the body byte for byte, the signature checked over the bytes compared; openManifestV2 pulls inodes', async (t) => {
  const dir = t.testdir({})
  const m = read('manifest-v1-every-kind.json')
  const file = path.join(dir, 'signed.extfs')
  writeManifestV2(file, headerOf(m), m.inodes, KEY)
  const bytes = fs.readFileSync(file)
  const bodyStart = PREAMBLE.length + 4 + bytes.readUInt32LE(PREAMBLE.length)
  const body = path.join(dir, 'body')
  fs.writeFileSync(body, bytes.subarray(bodyStart, bytes.length - TRAILER_BYTES))
  t.equal(sameBodyV2(file, body, KEY), true, 'the same body')
  t.equal(sameBodyV2(file, body), true, 'without a key too')
  refused(t, () => sameBodyV2(file, body, Buffer.from('another key, long enough')), /^manifest signature does not match/)
  const other = Buffer.from(bytes.subarray(bodyStart, bytes.length - TRAILER_BYTES))
  other[other.length >> 1]! ^= 1
  fs.writeFileSync(body, other)
  t.equal(sameBodyV2(file, body, KEY), false, 'one byte differs')
  fs.writeFileSync(body, other.subarray(1))
  t.equal(sameBodyV2(file, body, KEY), false, 'another length')
  const pulled = openManifestV2(file, KEY, { entries: false })
  const inos = [...pulled.inodes].map((n) => [n.ino, n.kind === 'dir' ? n.entries!.length : -1])
  pulled.close()
  t.same(inos.map(([ino]) => ino), byIno(m.inodes).map((n) => n.ino), 'every inode, ascending')
  t.ok(inos.every(([, entries]) => entries <= 0), 'directories without their entries when asked')
})
