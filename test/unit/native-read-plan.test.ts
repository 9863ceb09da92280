// The C that serves reads, called through the addon with no mount (src/native-engine/addon.ts checkTables,
// planRead, checkDelta): native/view/read.c's plan of a read against src/extents/plan.ts as the
// model, on random manifests packed by src/native-engine/tables.ts; then tables and deltas the C checkers
// must refuse, and random corruptions of packed tables: whatever xt_check lets through must still
// plan exactly as the model reads those tables back.
//
// Random cases come from one seed (EXTFS_TEST_SEED overrides it); every failure prints it.
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import type { Extent, Inode, Manifest } from '../../src/manifest/types'
import { validateManifest } from '../../src/manifest/validate'
import { planRead } from '../../src/extents/plan'
import { LAYOUT, mergeExtents, TableReader, type StructName } from '../../src/native-engine/tables'
import { packDelta } from '../../src/native-engine/delta-tables'
import { viewAddon, type PlannedPiece } from '../../src/native-engine/addon'
import { extent, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

const SEED = Number(process.env.EXTFS_TEST_SEED ?? 20261206)
const KiB = 1024
const MiB = 1024 * KiB
const addon = viewAddon()

/** mulberry32 with 53-bit draws: `int(n)` is uniform in [0, n) for any safe n. */
function prng(seed: number): { int: (n: number) => number; pick: <T>(xs: readonly T[]) => T } {
  let a = seed >>> 0
  const u32 = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return (x ^ (x >>> 14)) >>> 0
  }
  const int = (n: number) => Math.floor((((u32() >>> 5) * 67108864 + (u32() >>> 6)) / 2 ** 53) * n)
  return { int, pick: (xs) => xs[int(xs.length)]! }
}
type Rand = ReturnType<typeof prng>

// ------------------------------------------------------------------------ random manifests

interface RandomFile {
  ino: number
  size: number
  extents: Extent[]
  inline?: Buffer
}

/** Sorted, disjoint extents: 1-byte, odd and block lengths; holes of every size between them (or none). */
function randomExtents(rand: Rand, deviceSizes: number[]): Extent[] {
  const out: Extent[] = []
  let pos = rand.int(3) === 0 ? 0 : rand.pick([1, rand.int(4096), rand.int(2 ** 40)])
  const count = rand.pick([0, 1, 2, rand.int(12)])
  for (let i = 0; i < count; i++) {
    const prev = out[out.length - 1]
    // Sometimes continuing the previous one on its device: the packer merges those.
    const follow = prev !== undefined && rand.int(5) === 0
    const device = follow ? prev.device : rand.int(deviceSizes.length)
    if (!follow && rand.int(4) === 0) { // a btrfs compressed extent: part of at most 128 KiB decoded
      const c = randomCompressed(rand, pos, device, deviceSizes[device]!)
      out.push(c)
      pos += c.length + (rand.int(3) === 0 ? 0 : rand.pick([1, rand.int(4096), rand.int(2 ** 32)]))
      continue
    }
    const length = rand.pick([1, 1 + rand.int(300), 4096 * (1 + rand.int(64)), 1 + rand.int(8 * MiB)])
    const deviceOffset = follow && prev.deviceOffset + prev.length + length <= deviceSizes[device]! ? prev.deviceOffset + prev.length
      : rand.int(deviceSizes[device]! - length + 1)
    out.push({ fileOffset: pos, device, deviceOffset, length })
    // The gap to the next one: a hole, or an unwritten range (the manifest lists neither).
    pos += length + (follow || rand.int(3) === 0 ? 0 : rand.pick([1, rand.int(4096), rand.int(2 ** 32)]))
  }
  return out
}

/** A compressed extent at `fileOffset`: 1 byte to all of its decoded bytes, from anywhere in them; its stream whole sectors. */
function randomCompressed(rand: Rand, fileOffset: number, device: number, deviceSize: number): Extent {
  const decodedLength = rand.pick([1, 1 + rand.int(128 * KiB), 128 * KiB])
  const decodedOffset = rand.pick([0, 0, rand.int(decodedLength)])
  const length = rand.pick([decodedLength - decodedOffset, 1 + rand.int(decodedLength - decodedOffset)])
  const diskLength = 4096 * (1 + rand.int(32))
  const compression = rand.pick(['zlib', 'lzo', 'zstd'] as const)
  const csums = Buffer.from(Array.from({ length: (diskLength / 4096) * 4 }, () => rand.int(256))).toString('base64')
  return { fileOffset, device, deviceOffset: rand.int(Math.floor((deviceSize - diskLength) / 4096) + 1) * 4096, length, compression, diskLength, decodedLength, decodedOffset, csums }
}

function randomFile(rand: Rand, ino: number, deviceSizes: number[]): RandomFile {
  const shape = rand.int(10)
  if (shape === 0) return { ino, size: 0, extents: [] }
  if (shape <= 2) {
    const inline = Buffer.from(Array.from({ length: rand.pick([1, rand.int(64), rand.int(600)]) }, () => rand.int(256)))
    return { ino, size: inline.length, extents: [], inline }
  }
  const extents = randomExtents(rand, deviceSizes)
  const last = extents[extents.length - 1]
  // EOF inside the last extent (its tail past EOF), at its end, or past it (a trailing hole).
  const size = last === undefined ? rand.pick([1, rand.int(100_000), rand.int(2 ** 44)])
    : last.fileOffset + 1 + rand.pick([rand.int(last.length), last.length - 1, rand.int(last.length + 2 * MiB)])
  return { ino, size, extents }
}

/** A root with random files (some also in a subdirectory, through hard links), a symlink, many devices or few. */
function randomManifest(rand: Rand): { manifest: Manifest; files: RandomFile[] } {
  const m = makeManifest()
  m.features = ['inline-data', 'data-checksums', 'compressed-extents']
  m.dataChecksums = { algorithm: 'crc32c', sectorSize: 4096 }
  const nDevices = rand.int(4) === 0 ? 1 + rand.int(64) : 1 + rand.int(3)
  m.devices = Array.from({ length: nDevices }, (_, k) => makeDevice(`d${k}`, rand.pick([16 * MiB, 2 ** 30 + rand.int(2 ** 30), 2 ** 44])))
  const deviceSizes = m.devices.map((d) => d.size)
  const files = Array.from({ length: 1 + rand.int(6) }, (_, k) => randomFile(rand, 10 + k, deviceSizes))
  const linked = files.filter(() => rand.int(4) === 0)
  const inodes: Inode[] = files.map((f) => makeInode(f.ino, 'file', {
    size: f.size, nlink: linked.includes(f) ? 2 : 1,
    ...(f.inline ? { inline: f.inline.toString('base64') } : { extents: f.extents }),
  }))
  m.inodes = [
    makeInode(1, 'dir', { nlink: 3, entries: [...files.map((f) => ({ name: `f${f.ino}`, ino: f.ino })), { name: 'sub', ino: 2 }, { name: 'ln', ino: 3 }] }),
    makeInode(2, 'dir', { nlink: 2, entries: linked.map((f) => ({ name: `hard${f.ino}`, ino: f.ino })) }),
    makeInode(3, 'symlink', { perm: 0o777, size: 2, target: 'f1' }),
    ...inodes,
  ]
  return { manifest: validateManifest(m), files }
}

// ------------------------------------------------------------------------ the model

/** What read.c must plan for a read of an inline file: its bytes, clipped at EOF (nothing when empty). */
function inlineModel(content: Buffer, offset: number, length: number): PlannedPiece[] {
  const bytes = content.subarray(Math.min(offset, content.length), Math.min(offset + length, content.length))
  return bytes.length > 0 ? [{ kind: 'inline', bytes }] : []
}

/** A read of a random file: offsets and lengths around its extents' edges, EOF, 0, and far past EOF. */
function randomRead(rand: Rand, f: RandomFile): { offset: number; length: number } {
  const edges = f.extents.flatMap((e) => [e.fileOffset, e.fileOffset + e.length])
  const near = (x: number) => Math.max(0, x + rand.pick([-1, 0, 0, 1]))
  const edge = () => near(edges.length ? rand.pick(edges) : rand.int(f.size))
  const offset = rand.pick([0, rand.int(f.size), rand.int(f.size), rand.int(f.size), edge(), edge(), edge(), edge(), near(f.size), f.size + rand.int(100), 2 ** 50])
  const length = rand.pick([0, 1, 4096, 128 * KiB, MiB, rand.int(f.size + 100), rand.int(f.size + 100), Math.max(1, edge() - offset), Math.max(1, edge() - offset), 2 ** 40])
  return { offset, length }
}

/** C's plan, or the error it threw (as a string, so that it compares with the model and shows). */
function cPlan(image: Buffer, index: number, offset: number, length: number): PlannedPiece[] | string {
  try {
    return addon.planRead(image, index, offset, length)
  } catch (err) {
    return String(err)
  }
}

// ------------------------------------------------------------------------ random reads

t.test('C plans every random read as src/extents/plan.ts does', async (t) => {
  const rand = prng(SEED)
  const MANIFESTS = 100
  const READS = 60
  let reads = 0
  let nonEmpty = 0
  let decoded = 0
  let failure: object | undefined
  for (let k = 0; k < MANIFESTS && failure === undefined; k++) {
    const { manifest, files } = randomManifest(rand)
    const { image, paths } = packedTables(manifest, manifest.devices.map((_, i) => 100 + i))
    const refused = addon.checkTables(image)
    if (refused !== null) {
      failure = { seed: SEED, manifest: k, refused }
      break
    }
    for (let r = 0; r < READS && failure === undefined; r++) {
      const f = rand.pick(files)
      const { offset, length } = randomRead(rand, f)
      const want = f.inline ? inlineModel(f.inline, offset, length) : planRead(mergeExtents(f.extents), f.size, offset, length)
      const got = cPlan(image, paths.index(f.ino), offset, length)
      reads++
      if (want.length > 0) nonEmpty++
      if (want.some((p) => p.kind === 'decoded')) decoded++
      if (!isDeepStrictEqual(got, want)) failure = { seed: SEED, manifest: k, read: r, ino: f.ino, size: f.size, offset, length, extents: f.extents, want, got }
    }
  }
  if (failure !== undefined) t.fail(`C's plan differs from the model (seed ${SEED}; replay with EXTFS_TEST_SEED=${SEED})`, { failure })
  t.equal(reads, MANIFESTS * READS, `${reads} random reads (${nonEmpty} not empty) of ${MANIFESTS} random manifests planned alike (seed ${SEED})`)
  t.ok(decoded > 100, `${decoded} of them read compressed extents`)
})

t.test('the worked example of planRead, through C', async (t) => {
  const m = makeManifest()
  m.devices.push(makeDevice('d1', MiB))
  m.inodes[1]!.extents = [extent(0, 0, 1000 * KiB, 4096), extent(8192, 1, 50_000, 4096)]
  const { image, paths } = packedTables(validateManifest(m), [100, 101])
  const a = paths.index(2)
  t.same(addon.planRead(image, a, 4000, 8000), [
    { kind: 'data', device: 0, deviceOffset: 1000 * KiB + 4000, length: 96 },
    { kind: 'zero', length: 4096 },
    { kind: 'data', device: 1, deviceOffset: 50_000, length: 1808 },
  ], 'the tail of the last extent past EOF is never planned')
  t.same(addon.planRead(image, a, 10_000, 4096), [], 'at EOF: nothing')
  t.same(addon.planRead(image, a, 100, 0), [], 'length 0: nothing')
  t.throws(() => addon.planRead(image, 0, 0, 10), /planRead: not a regular file/, 'the root')
  t.throws(() => addon.planRead(image, 99, 0, 10), /planRead: inode index out of range/)
  t.throws(() => addon.planRead(image, a, -1, 10), /planRead\(tables, index, offset >= 0, size >= 0\)/, 'a negative offset')
  t.throws(() => addon.planRead('tables' as unknown as Buffer, a, 0, 10), /tables must be a Buffer/)
})

// ------------------------------------------------------------------------ hostile tables

/** Every kind of inode, two devices, xattrs: the image the hostile cases below tamper with. */
function baseManifest(): Manifest {
  const m = makeManifest()
  m.features = ['inline-data', 'data-checksums']
  m.dataChecksums = { algorithm: 'crc32c', sectorSize: 4096 }
  m.devices.push(makeDevice('d1', 64 * MiB))
  const dir = m.inodes[0]!
  dir.entries!.push({ name: 'small', ino: 5 })
  // The first extent mirrored (a btrfs RAID1 extent): its other copy on d1, one checksum.
  const mirrored = { ...extent(0, 0, 0, 4096), copies: [{ device: 1, deviceOffset: MiB }], csums: Buffer.alloc(4, 7).toString('base64') }
  m.inodes[1]!.extents = [mirrored, extent(4096, 1, 8192, 1), extent(8192, 1, 65536, 4096)]
  m.inodes[1]!.xattrs = { 'user.one': Buffer.from('1').toString('base64'), 'user.two': Buffer.from('22').toString('base64') }
  m.inodes.push(makeInode(5, 'file', { size: 12, inline: Buffer.from('small inline').toString('base64') }))
  return validateManifest(m)
}

const base = packedTables(baseManifest(), [100, 101])
const reader = new TableReader(base.image)
const H = reader.header
const idx = { root: 0, a: base.paths.index(2), ln: base.paths.index(4), small: base.paths.index(5) }
const sectionOf: Partial<Record<StructName, number>> = {
  header: 0, inode: H.inodes_off, dirent: H.dirents_off, extent: H.extents_off, xattr: H.xattrs_off, device: H.devices_off,
  copy: H.copies_off,
}

/** Byte offset of `field` of record `k` of struct `name` in the base image. */
function at(name: StructName, k: number, field: string): number {
  return sectionOf[name]! + k * LAYOUT[name].size + (LAYOUT[name].fields as Record<string, { offset: number }>)[field]!.offset
}

/** A copy of the base image with fields set: [struct, record, field, value] (u64 fields take a bigint too). */
function tampered(...sets: [StructName, number, string, number | bigint][]): Buffer {
  const img = Buffer.from(base.image)
  for (const [name, k, field, value] of sets) {
    const o = at(name, k, field)
    const size = (LAYOUT[name].fields as Record<string, { size: number }>)[field]!.size
    if (size === 8) img.writeBigUInt64LE(BigInt(value), o)
    else if (size === 4) img.writeUInt32LE(Number(value) >>> 0, o)
    else img.writeUInt16LE(Number(value), o)
  }
  return img
}

t.test('hostile tables are refused by xt_check, and planRead refuses to plan through them', async (t) => {
  t.equal(addon.checkTables(base.image), null, 'the base image is accepted')
  t.equal(addon.checkTables(tampered(['device', 1, 'fd', -1])), null, 'a retired device (fd -1) is accepted')
  const a = reader.inode(idx.a)
  const small = reader.inode(idx.small)
  const ext = (k: number) => reader.struct('extent', H.extents_off + (a.first + k) * LAYOUT.extent.size)
  const dirent0 = reader.struct('dirent', H.dirents_off)
  const swapped = Buffer.from(base.image)
  base.image.copy(swapped, at('extent', a.first, 'file_offset'), at('extent', a.first + 1, 'file_offset'), at('extent', a.first + 2, 'file_offset'))
  base.image.copy(swapped, at('extent', a.first + 1, 'file_offset'), at('extent', a.first, 'file_offset'), at('extent', a.first + 1, 'file_offset'))
  const cases: [string, Buffer, RegExp][] = [
    ['an empty buffer', Buffer.alloc(0), /bad magic/],
    ['shorter than a header', base.image.subarray(0, LAYOUT.header.size - 1), /bad magic/],
    ['truncated', base.image.subarray(0, base.image.length - 8), /size mismatch/],
    ['longer than it says', Buffer.concat([base.image, Buffer.alloc(8)]), /size mismatch/],
    ['bad magic', tampered(['header', 0, 'magic', 0x12345678]), /bad magic/],
    ['another version', tampered(['header', 0, 'version', 1]), /version mismatch/],
    ['an unknown checksum algorithm', tampered(['header', 0, 'csum_alg', 9]), /unknown checksum algorithm/],
    ['a checksum size that is not crc32c\'s', tampered(['header', 0, 'csum_size', 8]), /unknown checksum algorithm/],
    ['checksums with no algorithm', tampered(['header', 0, 'csum_alg', 0]), /checksums but the tables name no algorithm/],
    ['more copies than the image holds', tampered(['header', 0, 'n_copies', 0x1000_0000]), /section copies out of bounds/],
    ['unknown extent flags', tampered(['extent', a.first, 'flags', 4]), /unknown extent flags/],
    ['copies out of range', tampered(['extent', a.first, 'copy_count', 2]), /extent copies out of range/],
    ['copies without checksums', tampered(['extent', a.first, 'flags', 0]), /copies but no checksums/],
    ['a copy device out of range', tampered(['copy', 0, 'device', H.n_devices]), /copy device out of range/],
    ['a copy past 2^64', tampered(['copy', 0, 'device_offset', 2n ** 64n - 1n]), /copy overflows 64 bits/],
    ['checksums past the data blob', tampered(['extent', a.first, 'csum_off', H.data_size - 2]), /extent checksums out of range/],
    ['checksums of part of a sector', tampered(['extent', a.first + 1, 'flags', 1]), /not whole sectors/],
    ['no inodes', tampered(['header', 0, 'n_inodes', 0]), /no inodes/],
    ['more inodes than the image holds', tampered(['header', 0, 'n_inodes', 0xffff_ffff]), /section inodes out of bounds/],
    ['more dirents than the image holds', tampered(['header', 0, 'n_dirents', H.n_dirents + 1000]), /section dirents out of bounds/],
    ['more extents than the image holds', tampered(['header', 0, 'n_extents', 0xffff_ffff]), /section extents out of bounds/],
    ['more devices than the image holds', tampered(['header', 0, 'n_devices', 0x1000_0000]), /section devices out of bounds/],
    ['a misaligned section', tampered(['header', 0, 'dirents_off', H.dirents_off + 4]), /section dirents out of bounds/],
    ['a section past the end', tampered(['header', 0, 'xattrs_off', 2n ** 40n]), /section xattrs out of bounds/],
    ['a section offset that wraps', tampered(['header', 0, 'extents_off', 2n ** 64n - 8n]), /section extents out of bounds/],
    ['names blob past the end', tampered(['header', 0, 'names_size', base.image.length]), /blob out of bounds/],
    ['data blob past the end', tampered(['header', 0, 'data_off', base.image.length]), /blob out of bounds/],
    ['the root no directory', tampered(['inode', 0, 'mode', 0o100644]), /root\) is not a directory/],
    ['a parent out of range', tampered(['inode', idx.a, 'parent', H.n_inodes]), /inode parent out of range/],
    ['dirents out of range', tampered(['inode', 0, 'count', H.n_dirents + 1]), /dirents out of range/],
    ['extents out of range', tampered(['inode', idx.a, 'first', H.n_extents]), /extents out of range/],
    ['an extent count out of range', tampered(['inode', idx.a, 'count', H.n_extents + 1]), /extents out of range/],
    ['an extent device out of range', tampered(['extent', a.first, 'device', H.n_devices]), /extent device out of range/],
    ['overlapping extents', tampered(['extent', a.first + 1, 'file_offset', ext(0).length - 1]), /extents unsorted or overlapping/],
    ['an extent inside the one before', tampered(['extent', a.first, 'length', 65536]), /extents unsorted or overlapping/],
    ['unsorted extents', swapped, /extents unsorted or overlapping/],
    ['an empty extent', tampered(['extent', a.first + 1, 'length', 0]), /empty extent/],
    ['an extent past 2^64 in the file', tampered(['extent', a.first + 2, 'file_offset', 2n ** 64n - 4096n]), /extent overflows 64 bits/],
    ['an extent past 2^64 on the device', tampered(['extent', a.first, 'device_offset', 2n ** 64n - 1n]), /extent overflows 64 bits/],
    ['a dirent child out of range', tampered(['dirent', 0, 'child', H.n_inodes]), /dirent out of range/],
    ['a dirent name out of range', tampered(['dirent', 0, 'name_off', H.names_size]), /dirent out of range/],
    ['a dirent name without its NUL', tampered(['dirent', 0, 'name_len', dirent0.name_len + 1]), /dirent out of range/],
    ['a symlink target out of range', tampered(['inode', idx.ln, 'first', H.data_size]), /symlink target out of range/],
    ['a symlink target without its NUL', tampered(['inode', idx.ln, 'count', 0]), /symlink target out of range/],
    ['inline data out of range', tampered(['inode', idx.small, 'first', H.data_size]), /inline data out of range/],
    ['an inline file larger than its data', tampered(['inode', idx.small, 'size', small.count + 1]), /inline data length differs from the file size/],
    ['an inline file far larger than its data', tampered(['inode', idx.small, 'size', 2 ** 40]), /inline data length differs from the file size/],
    ['an inline file smaller than its data', tampered(['inode', idx.small, 'size', small.count - 1]), /inline data length differs from the file size/],
    ['inline data shorter than the file', tampered(['inode', idx.small, 'count', small.count - 1]), /inline data length differs from the file size/],
    ['xattrs out of range', tampered(['inode', idx.a, 'xattr_first', H.n_xattrs]), /xattrs out of range/],
    ['xattr names not back to back', tampered(['xattr', 1, 'name_off', reader.struct('xattr', H.xattrs_off + LAYOUT.xattr.size).name_off + 1]), /xattr names not contiguous/],
    ['an xattr value out of range', tampered(['xattr', 0, 'value_off', H.data_size]), /xattr out of range/],
    ['an xattr name without its NUL', tampered(['xattr', 1, 'name_len', 1]), /xattr out of range/],
    ['a device fd below -1', tampered(['device', 0, 'fd', -2]), /device fd missing/],
  ]
  for (const [what, image, message] of cases) {
    t.match(addon.checkTables(image), message, what)
    t.throws(() => addon.planRead(image, idx.a, 0, 4096), /planRead: /, `${what}: planRead refuses`)
  }
})

// ------------------------------------------------------------------------ random corruption

/** What a reader must get from the tables as TableReader reads them back (the model of what C was given). */
function modelOf(r: TableReader, index: number, offset: number, length: number): PlannedPiece[] {
  const n = r.inode(index)
  if (n.flags & 1) return inlineModel(r.data(index), offset, length)
  return planRead(r.extents(index), n.size, offset, length)
}

t.test('random corruptions: what xt_check accepts still plans as the model reads it', async (t) => {
  const rand = prng(SEED ^ 0x5eed)
  const images = Array.from({ length: 8 }, () => {
    const { manifest } = randomManifest(rand)
    return packedTables(manifest, manifest.devices.map((_, i) => 100 + i)).image
  }).concat([base.image])
  const MUTATIONS = 3000
  let accepted = 0
  let plans = 0
  let failure: object | undefined
  for (let k = 0; k < MUTATIONS && failure === undefined; k++) {
    const image = Buffer.from(rand.pick(images))
    // Small values only: every u64 stays below 2^53, so the model reads back what C sees.
    const where = 4 * rand.int(image.length / 4)
    image.writeUInt32LE(rand.pick([0, 1, 2, rand.int(64), rand.int(4096), rand.int(2 ** 20), image.readUInt32LE(where) + rand.pick([-1, 1])]) >>> 0, where)
    if (image.readUInt32LE(where) >= 2 ** 20 && where % 8 === 4) image.writeUInt32LE(0, where)
    if (addon.checkTables(image) !== null) continue
    accepted++
    const r = new TableReader(image)
    for (let index = 0; index < r.header.n_inodes && failure === undefined; index++) {
      const n = r.inode(index)
      if ((n.mode & 0o170000) !== 0o100000) continue
      const f: RandomFile = { ino: n.ino, size: n.size, extents: n.flags & 1 ? [] : r.extents(index) }
      const { offset, length } = randomRead(rand, f)
      const want = modelOf(r, index, offset, length)
      const got = cPlan(image, index, offset, length)
      plans++
      if (!isDeepStrictEqual(got, want)) failure = { seed: SEED, mutation: k, where, index, inode: n, offset, length, want, got }
    }
  }
  if (failure !== undefined) t.fail(`C's plan of accepted tables differs from the model (seed ${SEED}; replay with EXTFS_TEST_SEED=${SEED})`, { failure })
  t.ok(accepted > MUTATIONS / 10 && plans > accepted, `${MUTATIONS} corruptions: ${accepted} accepted, ${plans} reads of them planned alike (seed ${SEED})`)
})

// ------------------------------------------------------------------------ hostile deltas

t.test('hostile deltas are refused by the C delta check', async (t) => {
  const image = base.image
  const nInodes = H.n_inodes
  const u32 = (b: Buffer, s: 'delta_header' | 'delta_file', field: string, value: number, off = 0) => {
    b.writeUInt32LE(value, off + (LAYOUT[s].fields as Record<string, { offset: number }>)[field]!.offset)
    return b
  }
  const u64 = (b: Buffer, s: 'delta_header' | 'extent', field: string, value: bigint, off = 0) => {
    b.writeBigUInt64LE(value, off + (LAYOUT[s].fields as Record<string, { offset: number }>)[field]!.offset)
    return b
  }
  const good = () => packDelta([{ index: idx.a, extents: [] }], [])
  const fileDelta = (extents: Extent[]) => packDelta([{ index: idx.a, extents }], [])
  const filesOff = LAYOUT.delta_header.size
  const extentsAt = (b: Buffer) => Number(b.readBigUInt64LE(LAYOUT.delta_header.fields.extents_off.offset))

  t.equal(addon.checkDelta(image, good(), 0), null, 'a file becoming all hole')
  t.equal(addon.checkDelta(image, packDelta([{ index: idx.a, extents: [extent(0, 2, 0, 4096), extent(8192, 1, 0, 1)] }], [MiB]), 1), null, 'extents on a new device')
  const cases: [string, Buffer, number, RegExp][] = [
    ['bad magic', u32(good(), 'delta_header', 'magic', 0x12345678), 0, /not a delta \(bad magic\)/],
    ['another version', u32(good(), 'delta_header', 'version', 1), 0, /delta version 1, expected 3/],
    ['truncated', good().subarray(0, 88), 0, /delta size 96, buffer holds 88/],
    ['a section past the end', u64(good(), 'delta_header', 'extents_off', 1n << 40n), 0, /section extents out of bounds/],
    ['a misaligned section', u64(good(), 'delta_header', 'files_off', 60n), 0, /section files out of bounds/],
    ['fds and devices disagree', good(), 1, /0 new devices but 1 device fds/],
    ['an index out of range', u32(good(), 'delta_file', 'index', nInodes, filesOff), 0, new RegExp(`inode index ${nInodes} out of range \\(${nInodes} inodes\\)`)],
    ['a directory', packDelta([{ index: 0, extents: [] }], []), 0, /inode index 0 is not a regular file/],
    ['an inline file', packDelta([{ index: idx.small, extents: [] }], []), 0, /has inline content, which a delta cannot replace/],
    ['files unsorted', u32(packDelta([{ index: idx.a, extents: [] }, { index: idx.small, extents: [] }], []), 'delta_file', 'index', idx.a, filesOff + 16),
      0, /file 1: inode index \d+ not after \d+ \(files must be sorted, each once\)/],
    ['overlapping extents', fileDelta([extent(0, 1, 0, 8192), extent(4096, 1, 65536, 4096)]), 0, /file 0: extent 1 starts at 4096, before the previous one ends/],
    ['unsorted extents', fileDelta([extent(8192, 1, 0, 4096), extent(0, 1, 65536, 4096)]), 0, /extent 1 starts at 0, before the previous one ends/],
    ['an empty extent', fileDelta([extent(0, 1, 0, 0)]), 0, /file 0: extent 0 is empty/],
    ['a device out of range', fileDelta([extent(0, 2, 0, 4096)]), 0, /extent 0: device 2 out of range \(2 devices\)/],
    ['a 64-bit overflow', (() => { const b = fileDelta([extent(0, 1, 0, 4096)]); return u64(b, 'extent', 'device_offset', 0xffff_ffff_ffff_f000n, extentsAt(b)) })(),
      0, /extent 0 overflows 64 bits/],
    ['extents of no file', u32(fileDelta([extent(0, 1, 0, 4096)]), 'delta_file', 'count', 0, filesOff), 0, /1 of 1 extents belong to no file/],
  ]
  for (const [what, delta, fds, message] of cases) t.match(addon.checkDelta(image, delta, fds), message, what)
  t.throws(() => addon.checkDelta(tampered(['header', 0, 'n_inodes', 0]), good(), 0), /checkDelta: bad tables: no inodes/, 'bad tables: no verdict on the delta')
})

t.test('copies and checksums of delta extents: accepted as the tables\' are, refused when they point anywhere else', async (t) => {
  const image = base.image // crc32c per 4096 bytes, 2 devices
  /** A mirrored extent as remap writes it: copies, one checksum per 4096-byte sector. */
  const mirrored = (fileOffset: number, device: number, deviceOffset: number, length: number, copies: { device: number; deviceOffset: number }[]): Extent =>
    ({ ...extent(fileOffset, device, deviceOffset, length), copies, csums: Buffer.alloc((length / 4096) * 4, 9).toString('base64') })
  const good = () => packDelta([{ index: idx.a, extents: [mirrored(0, 1, 0, 8192, [{ device: 0, deviceOffset: MiB }])] }], [])
  /** `good()` with one field of its header, its extent or its copy set to `value`. */
  const set = (name: 'delta_header' | 'extent' | 'copy', field: string, value: number | bigint): Buffer => {
    const b = good()
    const off = (f: string) => Number(b.readBigUInt64LE(LAYOUT.delta_header.fields[f as 'extents_off'].offset))
    const at = (name === 'extent' ? off('extents_off') : name === 'copy' ? off('copies_off') : 0) + (LAYOUT[name].fields as Record<string, { offset: number }>)[field]!.offset
    const size = (LAYOUT[name].fields as Record<string, { size: number }>)[field]!.size
    if (size === 8) b.writeBigUInt64LE(BigInt(value), at)
    else if (size === 4) b.writeUInt32LE(Number(value) >>> 0, at)
    else b.writeUInt16LE(Number(value), at)
    return b
  }
  t.equal(addon.checkDelta(image, good(), 0), null, 'a mirrored extent with its copy and checksums')
  t.equal(addon.checkDelta(image, packDelta([{ index: idx.a, extents: [mirrored(0, 0, 0, 4096, [{ device: 2, deviceOffset: 0 }])] }], [MiB]), 1), null,
    'a copy on the delta\'s new device')
  const dataSize = Number(good().readBigUInt64LE(LAYOUT.delta_header.fields.data_size.offset))
  const cases: [string, Buffer, number, RegExp][] = [
    ['a copy on a device that does not exist', packDelta([{ index: idx.a, extents: [mirrored(0, 1, 0, 4096, [{ device: 2, deviceOffset: 0 }])] }], []), 0,
      /^file 0: extent 0: copy device out of range$/],
    ['copies without checksums', set('extent', 'flags', 0), 0, /^file 0: extent 0: extent has copies but no checksums to choose between them$/],
    ['unknown extent flags', set('extent', 'flags', 4), 0, /^file 0: extent 0: unknown extent flags$/],
    ['more copies than the delta holds', set('extent', 'copy_count', 2), 0, /^file 0: extent 0: extent copies out of range$/],
    ['copies past the copies section', set('extent', 'copy_first', 1), 0, /^file 0: extent 0: extent copies out of range$/],
    ['a copy past 2^64', set('copy', 'device_offset', 2n ** 64n - 1n), 0, /^file 0: extent 0: copy overflows 64 bits$/],
    ['checksums past the delta\'s data', set('extent', 'csum_off', dataSize - 4), 0, /^file 0: extent 0: extent checksums out of range$/],
    ['checksums of part of a sector', set('extent', 'length', 6144), 0, /^file 0: extent 0: extent with checksums is not whole sectors$/],
    ['a copies section past the end', set('delta_header', 'n_copies', 0x1000_0000), 0, /^section copies out of bounds$/],
    ['a data section past the end', set('delta_header', 'data_size', 1n << 40n), 0, /^section data out of bounds$/],
  ]
  for (const [what, delta, fds, message] of cases) t.match(addon.checkDelta(image, delta, fds), message, what)
  // Tables without checksums have no algorithm to measure a delta's by.
  const plain = makeManifest()
  const tables = packedTables(validateManifest(plain), [3])
  t.match(addon.checkDelta(tables.image, packDelta([{ index: tables.paths.index(2), extents: [mirrored(0, 0, 0, 4096, [])] }], []), 0),
    /^file 0: extent 0: extent has checksums but the tables name no algorithm$/, 'checksums on an image without them')
})

// ------------------------------------------------------------------------ compressed extents

/** One file: a plain extent, then a zstd extent used from 4 KiB into its decoded bytes (the example of plan.ts). */
function compressedManifest(): Manifest {
  const m = makeManifest()
  m.features = ['data-checksums', 'compressed-extents']
  m.dataChecksums = { algorithm: 'crc32c', sectorSize: 4096 }
  const csums = Buffer.alloc(12, 5).toString('base64')
  m.inodes[1]!.size = 200_000
  m.inodes[1]!.extents = [
    { fileOffset: 0, device: 0, deviceOffset: 8192, length: 65536, compression: 'zstd', diskLength: 12288, decodedLength: 131072, decodedOffset: 4096, csums },
    extent(65536, 0, 512 * KiB, 4096),
  ]
  return validateManifest(m)
}

t.test('compressed extents: C plans the decoded pieces of plan.ts, and refuses hostile encodings', async (t) => {
  const { image, paths } = packedTables(compressedManifest(), [100])
  const a = paths.index(2)
  const zstd = { kind: 'decoded', device: 0, deviceOffset: 8192, diskLength: 12288, compression: 'zstd' }
  t.same(addon.planRead(image, a, 1000, 100), [{ ...zstd, decodedOffset: 5096, length: 100 }], 'the worked example of planRead')
  t.same(addon.planRead(image, a, 60_000, 10_000), [{ ...zstd, decodedOffset: 64_096, length: 5536 }, { kind: 'data', device: 0, deviceOffset: 512 * KiB, length: 4096 }, { kind: 'zero', length: 368 }],
    'a read across its end: the rest of the decoded bytes it uses, then the plain extent and a hole')
  t.same(new TableReader(image).extents(a)[0], { fileOffset: 0, device: 0, deviceOffset: 8192, length: 65536, compression: 'zstd', diskLength: 12288, decodedLength: 131072, decodedOffset: 4096 },
    'the tables read back with its encoding')

  const r = new TableReader(image)
  const x = r.struct('extent', r.header.extents_off + r.inode(a).first * LAYOUT.extent.size)
  const zAt = r.header.data_off + x.csum_off - LAYOUT.compressed.size
  const F = LAYOUT.compressed.fields
  const withZ = (field: keyof typeof F, value: number) => {
    const img = Buffer.from(image)
    img.writeUInt32LE(value, zAt + F[field].offset)
    return img
  }
  const extentAt = r.header.extents_off + r.inode(a).first * LAYOUT.extent.size
  const withX = (field: string, value: number) => {
    const img = Buffer.from(image)
    const f = (LAYOUT.extent.fields as Record<string, { offset: number; size: number }>)[field]!
    if (f.size === 2) img.writeUInt16LE(value, extentAt + f.offset)
    else img.writeUInt32LE(value, extentAt + f.offset)
    return img
  }
  t.equal(addon.checkTables(image), null, 'the image is accepted')
  const cases: [string, Buffer, RegExp][] = [
    ['an unknown algorithm', withZ('algorithm', 4), /unknown algorithm/],
    ['no algorithm', withZ('algorithm', 0), /unknown algorithm/],
    ['a stream of part of a sector', withZ('disk_length', 12287), /disk length not whole sectors/],
    ['a stream over 128 KiB', withZ('disk_length', 128 * KiB + 4096), /disk length not whole sectors up to 128 KiB/],
    ['an empty stream', withZ('disk_length', 0), /disk length/],
    ['decoding to over 128 KiB', withZ('decoded_length', 128 * KiB + 1), /decoded length not 1 byte to 128 KiB/],
    ['its bytes past the decoded ones', withZ('decoded_offset', 65537), /run past the decoded data/],
    ['a stream whose checksums are fewer', withZ('disk_length', 16384), /extent checksums out of range/],
    ['compressed without checksums', withX('flags', 2), /compressed extent without checksums/],
    ['its encoding before the data blob', withX('csum_off', 8), /encoding out of range/],
  ]
  for (const [what, img, message] of cases) {
    t.match(addon.checkTables(img), message, what)
    t.throws(() => addon.planRead(img, a, 0, 4096), /planRead: /, `${what}: planRead refuses`)
  }
})
