// The streaming loader (src/manifest/stream.ts, the tree check of src/manifest/tree.ts, and the mount's
// packer: src/native-engine/v1-manifest.ts) against the whole-file path and the model: the same verdict
// and message for every layout, the tree the manifest says, exact signatures.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import type { Manifest } from '../../src/manifest/types'
import { readManifestFile, writeManifestFile } from '../../src/manifest/io'
import { signManifest, verifyManifestSignature } from '../../src/manifest/sign'
import { CannotStream, streamManifestFile } from '../../src/manifest/stream'
import { extent, inodeOf, makeInode, makeManifest } from '../helpers/manifest-factory'
import { manifestTree, servedTree } from '../helpers/served-tree'
import { packedTables, packedV1File } from '../helpers/packed-tables'
import { TreeSink } from '../../src/manifest/tree'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = any
/** An inode of a manifest being mangled on purpose: any field may be set, or broken. */
const looseInode = (m: Loose, ino: number): Loose => inodeOf(m, ino)
const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
const FIXTURES = path.join(__dirname, '..', 'fixtures')

const layouts: Record<string, (m: Manifest) => string> = {
  'one inode per line': (m) => m as never, // written by writeManifestFile
  'one line': (m) => JSON.stringify(m),
  'pretty, inode keys reversed': (m) => JSON.stringify({ ...m, inodes: reverseKeys(m.inodes) }, null, 2),
}

function reverseKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reverseKeys)
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).reverse().map(([k, x]) => [k, reverseKeys(x)]))
  return v
}

function write(dir: string, name: string, layout: string, m: Manifest): string {
  const file = path.join(dir, name)
  if (layout === 'one inode per line') writeManifestFile(file, m)
  else fs.writeFileSync(file, layouts[layout]!(m))
  return file
}

/**
 * Streams `file`: the packed image (as a mount packs it: re-encoded and loaded by C), or the error
 * message; 'fallback' when it cannot stream.
 */
function streamed(file: string, key?: Buffer): { image?: Buffer; error?: string } {
  try {
    streamManifestFile(file, new TreeSink(), { maxBytes: 2 ** 30, key })
    return { image: packedV1File(file, key, (n) => Array.from({ length: n }, (_, i) => 100 + i)).image }
  } catch (err) {
    if (err instanceof CannotStream) return { error: 'fallback' }
    return { error: (err as Error).message }
  }
}

function whole(file: string, key?: Buffer): { image?: Buffer; error?: string } {
  try {
    const m = readManifestFile(file)
    if (key) verifyManifestSignature(m, key)
    return { image: packedTables(m, m.devices.map((_, i) => 100 + i)).image }
  } catch (err) {
    return { error: (err as Error).message }
  }
}

t.test('valid manifests: the same tree in every layout', async (t) => {
  const dir = t.testdir({})
  const big = makeManifest()
  for (let ino = 10; ino < 3000; ino++) {
    big.inodes.push(makeInode(ino, ino % 3 ? 'file' : 'fifo', ino % 3 ? { size: 4096, extents: [extent(0, 0, 4096, 4096)] } : {}))
    inodeOf(big, 1).entries!.push({ name: `f${(ino * 7919) % 3001}-é${ino}`, ino })
  }
  const read = (name: string) => JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8')) as Manifest
  const manifests: Record<string, Manifest> = {
    factory: makeManifest(), big, minimal: read('manifest-v1-minimal.json'), 'every kind': read('manifest-v1-every-kind.json'),
    compressed: read('manifest-v1-compressed.json'),
  }
  for (const [name, m] of Object.entries(manifests)) {
    for (const layout of Object.keys(layouts)) {
      const file = write(dir, `${name}-${layout}.json`.replace(/ /g, '-'), layout, m)
      const s = streamed(file)
      t.equal(s.error, undefined, `${name}, ${layout}: streams`)
      t.same(servedTree(s.image!), servedTree(whole(file).image!), `${name}, ${layout}: same tree as the whole-file path`)
      // The model of the manifest as the file has it (a layout may reorder an inode's keys, and so its xattrs).
      t.same(servedTree(s.image!), manifestTree(JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest), `${name}, ${layout}: the tree the manifest says`)
    }
  }
})

t.test('the mount\'s packer: inodes in any order, a layout that cannot stream, refusals with their messages', async (t) => {
  const dir = t.testdir({})
  const fds = (n: number) => Array.from({ length: n }, (_, i) => 100 + i)
  const every = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'manifest-v1-every-kind.json'), 'utf8')) as Manifest
  const { signature: _s, ...unsigned } = every
  const cases: Record<string, Manifest> = {
    'writer order': unsigned,
    'inodes reversed (spooled, sorted)': { ...unsigned, inodes: [...unsigned.inodes].reverse() },
    'one inode out of place at the end': { ...unsigned, inodes: [...unsigned.inodes.slice(1), unsigned.inodes[0]!] },
  }
  for (const [name, m] of Object.entries(cases)) {
    const file = write(dir, 'm.json', 'one inode per line', m)
    t.same(servedTree(packedV1File(file, undefined, fds).image), manifestTree(m), `${name}: the tree the manifest says`)
  }
  const reversedKeys = path.join(dir, 'keys.json')
  fs.writeFileSync(reversedKeys, JSON.stringify(reverseKeys(unsigned), null, 2))
  t.equal(streamed(reversedKeys).error, 'fallback', 'top-level keys reversed: cannot stream')
  t.same(servedTree(packedV1File(reversedKeys, undefined, fds).image), manifestTree(JSON.parse(fs.readFileSync(reversedKeys, 'utf8')) as Manifest),
    '... read whole and packed as it says')
  const refusals: Array<[string, (m: Loose) => void, RegExp]> = [
    ['an ino twice, out of order (the sorting pass)', (m) => { m.inodes.push(makeInode(2, 'fifo')) }, /^inode 2: is listed twice/],
    ['an ino twice, side by side', (m) => { m.inodes.push(makeInode(4, 'fifo')) }, /^inode 4: is listed twice/],
    ['a cycle', (m) => { looseInode(m, 3).entries.push({ name: 'me', ino: 3 }) }, /^inode 3: entry "me" points at directory 3, its own ancestor \(a cycle\)/],
    ['an orphan, out of order', (m) => { m.inodes.unshift(makeInode(9, 'file')) }, /^inode 9: is not reachable from the root \(an orphan\)/],
    // v1 takes times up to 2^53 - 1; v2, the tables' input, differences below 2^52: refused, never wrapped.
    ['times 2^52 apart', (m) => { looseInode(m, 3).mtime = [2 ** 53 - 1, 0] }, /^inode 3: cannot be loaded: the view's tables take differences below 2\^52/],
  ]
  for (const [name, mutate, want] of refusals) {
    const m: Loose = makeManifest()
    mutate(m)
    const file = path.join(dir, 'bad.json')
    fs.writeFileSync(file, JSON.stringify(m))
    t.throws(() => packedV1File(file, undefined, fds), want, name)
  }
})

t.test('signatures: verified exactly, in every layout', async (t) => {
  const dir = t.testdir({})
  const signed = signManifest(makeManifest(), KEY)
  for (const layout of Object.keys(layouts)) {
    t.equal(streamed(write(dir, 'ok.json', layout, signed), KEY).error, undefined, `${layout}: verifies`)
    const tampered: Loose = JSON.parse(JSON.stringify(signed))
    looseInode(tampered, 2).extents[0].deviceOffset += 4096
    t.match(streamed(write(dir, 'bad.json', layout, tampered), KEY).error, /^manifest signature does not match/, `${layout}: tampered inode refused`)
    const header: Loose = JSON.parse(JSON.stringify(signed))
    header.source.host = 'other'
    t.match(streamed(write(dir, 'bad2.json', layout, header), KEY).error, /^manifest signature does not match/, `${layout}: tampered header refused`)
    t.match(streamed(write(dir, 'unsigned.json', layout, makeManifest()), KEY).error, /^manifest is not signed but --key was given$/)
  }
  const reversed = path.join(dir, 'reversed.json')
  fs.writeFileSync(reversed, JSON.stringify(reverseKeys(signed), null, 2))
  t.equal(streamed(reversed, KEY).error, 'fallback', 'top-level keys reversed (inodes before devices): read whole instead')
  t.equal(whole(reversed, KEY).error, undefined, '... where it verifies')
  const fixture = path.join(FIXTURES, 'manifest-v1-every-kind.json')
  t.equal(streamed(fixture, Buffer.from('extfs-test-key-do-not-use-0123456789')).error, undefined, 'the golden signed fixture')
})

t.test('refusals: the same message as the whole-file path', async (t) => {
  const dir = t.testdir({})
  const mutations: Array<[string, (m: Loose) => void]> = [
    ['version 2', (m) => { m.version = 2 }],
    ['unknown feature', (m) => { m.features = ['zstd'] }],
    ['unknown top-level field', (m) => { m.compression = 1 }],
    ['bad configId', (m) => { m.configId = 'x' }],
    ['device past fingerprint', (m) => { m.devices[0].fingerprints[0].offset = 2 ** 20 }],
    ['ino twice', (m) => { m.inodes.push(makeInode(4, 'fifo')) }],
    ['sparse ino twice', (m) => { looseInode(m, 4).ino = 2 ** 50; m.inodes.push(makeInode(2 ** 50, 'fifo')) }],
    ['unknown inode field', (m) => { looseInode(m, 2).x = 1 }],
    ['extent past device end', (m) => { looseInode(m, 2).extents[1].deviceOffset = 2 ** 20 - 100 }],
    ['extents unsorted', (m) => { looseInode(m, 2).extents.reverse() }],
    ['xattr bad base64', (m) => { looseInode(m, 2).xattrs = { 'user.a': 'abc' } }],
    ['entry name with /', (m) => { looseInode(m, 1).entries[0].name = 'a/b' }],
    ['entry twice', (m) => { looseInode(m, 1).entries[2].name = 'a' }],
    ['entry to a missing inode', (m) => { looseInode(m, 1).entries[0].ino = 42 }],
    ['entry back to the root', (m) => { looseInode(m, 3).entries.push({ name: 'up', ino: 1 }) }],
    ['dir containing itself', (m) => { looseInode(m, 3).entries.push({ name: 'me', ino: 3 }) }],
    ['dir with two parents', (m) => { m.inodes.push(makeInode(5, 'dir', { entries: [{ name: 'again', ino: 3 }] })); looseInode(m, 1).entries.push({ name: 'other', ino: 5 }) }],
    ['dir entered twice in one dir', (m) => { looseInode(m, 1).entries.push({ name: 'sub2', ino: 3 }) }],
    ['orphan', (m) => { m.inodes.push(makeInode(9, 'file')) }],
    ['root missing', (m) => { m.root = 77 }],
    ['root a file', (m) => { m.root = 2 }],
    ['root not a number', (m) => { m.root = 'one' }],
    ['no inodes', (m) => { m.inodes = [] }],
    ['bad signature shape', (m) => { m.signature = { alg: 'md5', value: 'x' } }],
  ]
  for (const [name, mutate] of mutations) {
    for (const layout of Object.keys(layouts)) {
      const m: Loose = makeManifest()
      mutate(m)
      const file = path.join(dir, 'm.json')
      fs.writeFileSync(file, layout === 'one inode per line' ? formatLikeWriter(m) : layouts[layout]!(m))
      const s = streamed(file)
      const w = whole(file)
      t.ok(w.error, `${name}: refused by the whole-file path`)
      t.ok(s.error === 'fallback' || s.error === w.error, `${name}, ${layout}: ${s.error} / ${w.error}`)
    }
  }
})

t.test('not JSON', async (t) => {
  const dir = t.testdir({})
  const text = fs.readFileSync(path.join(FIXTURES, 'manifest-v1-every-kind.json'), 'utf8')
  for (const cut of [10, 300, 900, text.length - 3]) {
    const file = path.join(dir, `cut${cut}.json`)
    fs.writeFileSync(file, text.slice(0, cut))
    const e = streamed(file).error
    t.ok(e === 'fallback' || /^manifest is not valid JSON \(truncated\?\)/.test(e!), `cut at ${cut}: ${e}`)
  }
  fs.writeFileSync(path.join(dir, 'trail.json'), text + 'x')
  t.match(streamed(path.join(dir, 'trail.json')).error, /^manifest is not valid JSON/)
  // Found by fuzzing: the quoted text around a syntax error stays one line.
  fs.writeFileSync(path.join(dir, 'newline.json'), text.replace('"blockSize":4096,', '"blockSize":[1,\n,2],'))
  t.match(streamed(path.join(dir, 'newline.json')).error, /^manifest is not valid JSON \(truncated\?\): [^\n]*\\u000a[^\n]*$/, 'one line')
  fs.writeFileSync(path.join(dir, 'twice.json'), text.replace('{', '{"root": 3,'))
  t.equal(streamed(path.join(dir, 'twice.json')).error, 'fallback', 'a key twice: JSON.parse semantics, read whole')
})

/** The writer's layout without its validation (mutated manifests are invalid on purpose). */
function formatLikeWriter(m: Loose): string {
  const lines = Object.entries(m).map(([k, v]) => k === 'inodes' && Array.isArray(v) && v.length > 0
    ? `${JSON.stringify(k)}:[\n${v.map((x) => JSON.stringify(x)).join(',\n')}\n]`
    : `${JSON.stringify(k)}:${JSON.stringify(v)}`)
  return `{\n${lines.join(',\n')}\n}\n`
}
