// Deltas: validation against the map they follow, signatures, files, the chain through the record.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ManifestError } from '../../src/errors'
import { contextAfter, ImageMap } from '../../src/delta/chain'
import { parseDelta, readChain, readDeltaFile, writeDeltaFile } from '../../src/delta/io'
import { signDelta, verifyDeltaSignature } from '../../src/delta/sign'
import type { Delta } from '../../src/delta/types'
import { validateDelta } from '../../src/delta/validate'
import { readRecord, writeRecord } from '../../src/configid/record'
import { extent, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'

const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = any

/** The factory's manifest plus a second regular file (inode 5, 5000 bytes) under the root. */
function manifest() {
  const m = makeManifest()
  m.inodes[0]!.entries!.push({ name: 'b', ino: 5 })
  m.inodes.push(makeInode(5, 'file', { size: 5000, blocks: 16, extents: [extent(0, 0, 65536, 8192)] }))
  return m
}

/** A valid first delta: inode 2 moved on d0, inode 5 moved to a new device d1. */
function delta(): Delta {
  return {
    format: 'extfs-delta', version: 1, image: 'cfg-0001-abcdef', seq: 1, from: 'cfg-0001-abcdef', to: 'cfg-0002-abcdef',
    createdAt: '2024-05-02T12:00:00.000Z', reason: 'extents moved',
    devices: [makeDevice('d1', 2 * 1024 * 1024, { hint: '/dev/vdc' })],
    files: [
      { ino: 2, extents: [extent(0, 0, 131072, 4096), extent(8192, 0, 262144, 4096)] },
      { ino: 5, extents: [extent(0, 1, 0, 8192)] },
    ],
  }
}

const ctx = () => ImageMap.ofManifest(manifest()).context()

function refused(t: Test, fn: () => unknown, message: RegExp): void {
  try {
    fn()
    t.fail(`accepted, expected ${message}`)
  } catch (err) {
    t.type(err, ManifestError)
    t.match((err as Error).message, message)
    t.notMatch((err as Error).message, /\n/, 'one line')
  }
}

function mutated(fn: (d: Loose) => void): Delta {
  const d: Loose = delta()
  fn(d)
  return d
}

t.test('a valid delta is accepted and applies', async (t) => {
  const d = delta()
  t.equal(validateDelta(d, ctx()), d)
  const map = ImageMap.ofManifest(manifest())
  map.apply(d)
  t.equal(map.configId, 'cfg-0002-abcdef')
  t.equal(map.seq, 1)
  t.equal(map.devices.length, 2)
  t.same(map.files.get(5), { size: 5000, extents: [extent(0, 1, 0, 8192)] })
  t.same(map.context().from, 'cfg-0002-abcdef')
  t.same(map.context().seq, 2)
  // Inline content and an all-hole file are locations too.
  t.ok(validateDelta(mutated((x) => { x.files = [{ ino: 5, inline: Buffer.alloc(5000, 7).toString('base64') }, { ino: 2, extents: [] }] }), ctx()))
})

t.test('refused: format, version, unknown fields', async (t) => {
  refused(t, () => validateDelta([], ctx()), /^delta: must be a JSON object/)
  refused(t, () => validateDelta(mutated((d) => { d.format = 'extfs-manifest' }), ctx()), /not an extfs delta/)
  refused(t, () => validateDelta(mutated((d) => { d.version = 2 }), ctx()), /^unknown delta version 2: this extfs reads version 1; upgrade extfs$/)
  refused(t, () => validateDelta(mutated((d) => { d.version = '1' }), ctx()), /version must be a non-negative integer/)
  refused(t, () => validateDelta(mutated((d) => { d.extra = 1 }), ctx()), /unknown field "extra"/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].size = 1 }), ctx()), /files\[0\]: unknown field "size"/)
  refused(t, () => validateDelta(mutated((d) => { d.createdAt = 'yesterday' }), ctx()), /createdAt "yesterday" is not a date/)
  // Found by fuzzing: JSON.parse quotes the text around a syntax error, newlines and all.
  refused(t, () => parseDelta('{\n"format":\n,\n}', ctx(), 'delta d1'), /^delta d1 is not valid JSON \(truncated\?\): [^\n]*\\u000a[^\n]*$/)
})

t.test('refused: a broken chain', async (t) => {
  refused(t, () => validateDelta(mutated((d) => { d.from = 'cfg-9999-abcdef' }), ctx()), /^delta 1: broken chain: from is "cfg-9999-abcdef", but the map is at "cfg-0001-abcdef"/)
  refused(t, () => validateDelta(mutated((d) => { d.seq = 2 }), ctx()), /broken chain: seq is 2, expected 1/)
  refused(t, () => validateDelta(mutated((d) => { d.image = 'cfg-other-image' }), ctx()), /belongs to image "cfg-other-image"/)
  refused(t, () => validateDelta(mutated((d) => { d.to = 'cfg-0001-abcdef' }), ctx()), /a config ID the chain already had/)
  refused(t, () => validateDelta(mutated((d) => { d.to = 'bad id!' }), ctx()), /to "bad id!" is invalid/)
  // Applying the first moves the expectation on: the same delta again is a broken chain.
  const map = ImageMap.ofManifest(manifest())
  map.apply(delta())
  refused(t, () => validateDelta(delta(), map.context()), /broken chain/)
})

t.test('refused: files that are not regular files of the image, or twice', async (t) => {
  refused(t, () => validateDelta(mutated((d) => { d.files[0].ino = 3 }), ctx()), /files\[0\]: inode 3 is not a regular file of the image/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].ino = 99 }), ctx()), /inode 99 is not a regular file of the image/)
  refused(t, () => validateDelta(mutated((d) => { d.files[1].ino = 2 }), ctx()), /files\[1\]: inode 2 is listed twice/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].ino = 0 }), ctx()), /ino must be a positive integer/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].inline = 'AAAA' }), ctx()), /needs exactly one of extents and inline/)
  refused(t, () => validateDelta(mutated((d) => { d.files[1] = { ino: 5 } }), ctx()), /needs exactly one of extents and inline/)
  refused(t, () => validateDelta(mutated((d) => { d.files[1] = { ino: 5, inline: 'AAAA' } }), ctx()), /delta 1: inode 5: inline data is 3 bytes but size is 5000/)
})

t.test('refused: extents unsorted, overlapping, past size, past device end, on no device', async (t) => {
  refused(t, () => validateDelta(mutated((d) => { d.files[0].extents.reverse() }), ctx()), /^delta 1: inode 2: extents unsorted/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].extents[1].fileOffset = 2048 }), ctx()), /inode 2: extents overlapping/)
  refused(t, () => validateDelta(mutated((d) => { d.files[0].extents[1].fileOffset = 10000 }), ctx()), /at or past the file size 10000/)
  refused(t, () => validateDelta(mutated((d) => { d.files[1].extents[0].deviceOffset = 2 * 1024 * 1024 - 4096 }), ctx()), /inode 5: extents\[0\] past device end/)
  // Device 1 exists only because this delta adds it; device 2 does not exist at all.
  refused(t, () => validateDelta(mutated((d) => { d.files[1].extents[0].device = 2 }), ctx()), /extents\[0\]\.device 2 does not exist/)
  refused(t, () => validateDelta(mutated((d) => { d.devices = [] }), ctx()), /extents\[0\]\.device 1 does not exist/)
  refused(t, () => validateDelta(mutated((d) => { d.devices[0].id = 'd0' }), ctx()), /devices\[1\]: id "d0" is used by another device too/)
  refused(t, () => validateDelta(mutated((d) => { d.devices[0].size = 0 }), ctx()), /devices\[1\]: size must be a positive integer/)
})

/** A fingerprint of the first 4 KiB of a device, with some hash. */
const fp = (offset = 0) => ({ offset, length: 4096, sha256: 'ab'.repeat(32) })

t.test('proofs and retired devices: the device list after a delta', async (t) => {
  // Everything leaves d0 for the new d1: d0 is retired, d1 carries its own fingerprints.
  const offD0 = mutated((d) => {
    d.files[0].extents = [extent(0, 1, 131072, 4096), extent(8192, 1, 262144, 4096)]
    d.retired = [0]
  })
  const map = ImageMap.ofManifest(manifest())
  map.apply(validateDelta(offD0, map.context()))
  t.same([...map.retired], [0], 'd0 is retired')
  t.same([...map.context().retired], [0], 'and stays so for the next delta')
  const next = (fn: (d: Loose) => void): Delta => mutated((d) => {
    Object.assign(d, { seq: 2, from: 'cfg-0002-abcdef', to: 'cfg-0003-abcdef', devices: [] })
    d.files = [{ ino: 5, extents: [extent(0, 1, 65536, 8192)] }]
    fn(d)
  })
  refused(t, () => validateDelta(next((d) => { d.files[0].extents[0].device = 0 }), map.context()), /^delta 2: files\[0\]: inode 5 has an extent on device 0, which is retired$/)
  refused(t, () => validateDelta(next((d) => { d.retired = [0] }), map.context()), /retired\[0\]: device 0 is already retired/)
  refused(t, () => validateDelta(next((d) => { d.proofs = [{ device: 0, fingerprints: [fp()] }] }), map.context()), /proofs\[0\]: device 0 is retired/)

  // d1 proved again by the second delta: the device list after it carries the new fingerprints.
  const proved = next((d) => { d.proofs = [{ device: 1, fingerprints: [fp(8192)] }] })
  const ctx2 = map.context()
  t.same(contextAfter(ctx2, validateDelta(proved, ctx2)).devices[1]!.fingerprints, [fp(8192)], 'contextAfter carries the proof')
  map.apply(proved)
  t.same(map.devices[1]!.fingerprints, [fp(8192)], 'the map carries the proof')
  t.equal(map.devices[1]!.id, 'd1', 'and keeps the rest of the device')

  // What a mover cannot see, the map can: a file left on a device the delta retires.
  const lying = mutated((d) => {
    d.files = [d.files[1]] // inode 5 moves to d1; inode 2 stays on d0
    d.retired = [0]
  })
  const fresh = ImageMap.ofManifest(manifest())
  validateDelta(lying, fresh.context())
  t.throws(() => fresh.apply(lying), /^delta 1: retires device 0, but inode 2 still has an extent \(or a copy of one\) on it$/, 'the map refuses a delta retiring a device still used')
})

t.test('refused: malformed proofs and retired lists', async (t) => {
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [] }), ctx()), /proofs must be a non-empty array/)
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [{ device: 1, fingerprints: [fp()] }] }), ctx()), /proofs\[0\]: device must be the index of a device before this delta \(0 to 0\), got 1/)
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [{ device: 0, fingerprints: [fp()] }, { device: 0, fingerprints: [fp()] }] }), ctx()), /proofs\[1\]: device 0 is proved twice/)
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [{ device: 0, fingerprints: [] }] }), ctx()), /proofs\[0\]: fingerprints must not be empty/)
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [{ device: 0, fingerprints: [fp(1024 * 1024 - 2048)] }] }), ctx()), /proofs\[0\]\.fingerprints\[0\]: bytes .* run past device end/)
  refused(t, () => validateDelta(mutated((d) => { d.proofs = [{ device: 0, fingerprints: [fp()], why: 1 }] }), ctx()), /proofs\[0\]: unknown field "why"/)
  refused(t, () => validateDelta(mutated((d) => { d.retired = [] }), ctx()), /retired must be a non-empty array/)
  refused(t, () => validateDelta(mutated((d) => { d.retired = [2] }), ctx()), /retired\[0\]: must be a device index from 0 to 1, got 2/)
  refused(t, () => validateDelta(mutated((d) => { d.retired = [1, 1] }), ctx()), /retired\[1\]: device 1 is listed twice/)
  refused(t, () => validateDelta(mutated((d) => { d.retired = [1] }), ctx()), /inode 5 has an extent on device 1, which is retired/)
})

t.test('signatures: the manifest rule, over the delta without its signature', async (t) => {
  const signed = signDelta(delta(), KEY)
  t.match(signed.signature, { alg: 'hmac-sha256', value: /^[0-9a-f]{64}$/ })
  verifyDeltaSignature(signed, KEY, 'delta x')
  // Key order and layout do not matter; content does.
  const reordered = Object.fromEntries(Object.entries(signed).reverse())
  t.doesNotThrow(() => parseDelta(JSON.stringify(reordered, null, 2), ctx(), 'delta x', KEY), 'reordered keys and another layout still verify')
  const tampered: Loose = JSON.parse(JSON.stringify(signed))
  tampered.files[0].extents[0].deviceOffset = 0
  refused(t, () => parseDelta(JSON.stringify(tampered), ctx(), 'delta x', KEY), /^delta x signature does not match: altered, or signed with another key$/)
  refused(t, () => parseDelta(JSON.stringify(signed), ctx(), 'delta x', Buffer.from('another key, 16 bytes or more')), /delta x signature does not match/)
  refused(t, () => parseDelta(JSON.stringify(delta()), ctx(), 'delta x', KEY), /^delta x is not signed but --key was given$/)
  refused(t, () => parseDelta(JSON.stringify({ ...signed, signature: { alg: 'hmac-sha256', value: 'zz' } }), ctx(), 'delta x'), /signature: value must be 64 lowercase hex digits/)
  t.doesNotThrow(() => parseDelta(JSON.stringify(signed), ctx(), 'delta x'), 'without a key the signature is not checked')
})

t.test('files: written atomically and read back bounded; the chain through the record', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-delta-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const m = manifest()
  const file = path.join(dir, 'm.json.delta-1')
  writeDeltaFile(file, signDelta(delta(), KEY), ctx())
  const text = fs.readFileSync(file, 'utf8')
  t.equal(text.split('\n').filter((l) => l.startsWith('{"ino":')).length, 2, 'one file per line')
  const withProof = path.join(dir, 'proof')
  writeDeltaFile(withProof, mutated((d) => { d.proofs = [{ device: 0, fingerprints: [fp()] }] }), ctx())
  t.equal(fs.readFileSync(withProof, 'utf8').split('\n').filter((l) => l.startsWith('{"device":0,')).length, 1, 'one proof per line')
  t.same(readDeltaFile(withProof, ctx()).proofs, [{ device: 0, fingerprints: [fp()] }], 'proofs read back')
  t.same(readDeltaFile(file, ctx(), { key: KEY }).files, delta().files)
  t.throws(() => writeDeltaFile(path.join(dir, 'bad'), mutated((d) => { d.seq = 5 }), ctx()), /broken chain/, 'our own output is validated')
  refused(t, () => readDeltaFile(file, ctx(), { maxBytes: 100 }), /bytes, over the limit of 100/)
  refused(t, () => readDeltaFile(path.join(dir, 'missing'), ctx()), /delta .*missing does not exist/)
  fs.writeFileSync(path.join(dir, 'trunc'), text.slice(0, 100))
  refused(t, () => readDeltaFile(path.join(dir, 'trunc'), ctx()), /is not valid JSON \(truncated\?\)/)
  fs.writeFileSync(path.join(dir, 'latin1'), Buffer.from([0x7b, 0xff, 0x7d]))
  refused(t, () => readDeltaFile(path.join(dir, 'latin1'), ctx()), /is not valid UTF-8/)

  const record = path.join(dir, 'm.json.config-id')
  writeRecord(record, 'cfg-0002-abcdef', 'current', { deltas: ['m.json.delta-1'], mapping: { throughLoop: true, carryMax: 4096 } })
  const r = readRecord(record)
  t.match(r, { configId: 'cfg-0002-abcdef', state: 'current', deltas: ['m.json.delta-1'], mapping: { throughLoop: true, carryMax: 4096 } })
  const map = readChain(m, record, r, KEY)
  t.equal(map.configId, 'cfg-0002-abcdef')
  t.equal(map.devices.length, 2)
  refused(t, () => readChain(m, record, { ...r, configId: 'cfg-0003-abcdef' }, KEY), /names config ID cfg-0003-abcdef, but its delta chain ends at cfg-0002-abcdef/)
  refused(t, () => readChain(m, record, { ...r, deltas: ['m.json.delta-1', 'm.json.delta-1'] }, KEY), /broken chain/)

  writeRecord(record, 'cfg-0001-abcdef', 'current')
  t.notOk('deltas' in readRecord(record), 'a record without deltas is a chain of length 0')
  t.equal(readChain(m, record, readRecord(record)).configId, 'cfg-0001-abcdef')
  fs.writeFileSync(record, JSON.stringify({ format: 'extfs-config-record', version: 1, configId: 'cfg-0001-abcdef', state: 'current', updatedAt: 'x', deltas: ['../elsewhere'] }))
  refused(t, () => readRecord(record), /deltas: "..\/elsewhere" is not a file name beside the record or an absolute path/)
  fs.writeFileSync(record, JSON.stringify({ format: 'extfs-config-record', version: 2, configId: 'cfg-0001-abcdef', state: 'current', updatedAt: 'x' }))
  refused(t, () => readRecord(record), /unknown version 2/)
  refused(t, () => readRecord(path.join(dir, 'none')), /unreadable: ENOENT/)
})

// ------------------------------------------------------------------ data checksums (btrfs mirrors)

const SECTOR = 4096
/** One crc32c per 4096-byte sector of `length` bytes (the values do not matter to validation). */
const csumsOf = (length: number, fill = 9) => Buffer.alloc((length / SECTOR) * 4, fill).toString('base64')
const mirrored = (fileOffset: number, device: number, deviceOffset: number, length: number, copies: { device: number; deviceOffset: number }[]) =>
  ({ ...extent(fileOffset, device, deviceOffset, length), copies, csums: csumsOf(length) })

/** manifest() with feature data-checksums: crc32c per 4096 bytes. */
function csumManifest() {
  const m = manifest()
  m.features = ['data-checksums']
  m.dataChecksums = { algorithm: 'crc32c', sectorSize: SECTOR }
  return m
}

/** delta() for csumManifest(): inode 2 mirrored on d0 and the new d1, as remap writes a RAID1 extent. */
function csumDelta(): Loose {
  const d: Loose = delta()
  d.dataChecksums = { algorithm: 'crc32c', sectorSize: SECTOR }
  d.files[0].extents = [mirrored(0, 0, 131072, 8192, [{ device: 1, deviceOffset: 65536 }])]
  return d
}

const csumCtx = () => ImageMap.ofManifest(csumManifest()).context()

function csumMutated(fn: (d: Loose) => void): Delta {
  const d = csumDelta()
  fn(d)
  return d
}

t.test('data checksums: a delta carries copies and csums, the map keeps them, the signature covers them', async (t) => {
  const d = csumDelta()
  t.equal(validateDelta(d, csumCtx()), d, 'accepted')
  const map = ImageMap.ofManifest(csumManifest())
  map.apply(d)
  t.same(map.files.get(2)!.extents, d.files[0]!.extents, 'the map keeps the copies and csums')
  t.same(map.context().dataChecksums, { algorithm: 'crc32c', sectorSize: SECTOR }, 'the next delta is checked against the image\'s checksums too')
  t.same(contextAfter(csumCtx(), d).dataChecksums, { algorithm: 'crc32c', sectorSize: SECTOR })
  const signed = signDelta(d, KEY)
  t.doesNotThrow(() => verifyDeltaSignature(signed, KEY, 'delta 1'))
  const otherCsums: Loose = JSON.parse(JSON.stringify(signed))
  otherCsums.files[0].extents[0].csums = csumsOf(8192, 1)
  t.throws(() => verifyDeltaSignature(otherCsums, KEY, 'delta 1'), /delta 1/, 'a changed csum breaks the signature')
  const otherCopy: Loose = JSON.parse(JSON.stringify(signed))
  otherCopy.files[0].extents[0].copies[0].deviceOffset += SECTOR
  t.throws(() => verifyDeltaSignature(otherCopy, KEY, 'delta 1'), /delta 1/, 'a moved copy breaks the signature')
})

t.test('data checksums: refused deltas', async (t) => {
  const cases: [string, () => unknown, RegExp][] = [
    ['no dataChecksums for an image with them', () => validateDelta(csumMutated((d) => { delete d.dataChecksums }), csumCtx()),
      /^delta 1: has no dataChecksums, but the image has data checksums \(feature "data-checksums"\)/],
    ['dataChecksums for an image without them', () => validateDelta(mutated((d) => { d.dataChecksums = { algorithm: 'crc32c', sectorSize: SECTOR } }), ctx()),
      /^delta 1: has dataChecksums, but the image has none/],
    ['another sector size', () => validateDelta(csumMutated((d) => { d.dataChecksums.sectorSize = 8192 }), csumCtx()),
      /^delta 1: dataChecksums crc32c per 8192 bytes differ from the image's, crc32c per 4096 bytes$/],
    ['an unknown algorithm', () => validateDelta(csumMutated((d) => { d.dataChecksums.algorithm = 'sha256' }), csumCtx()),
      /^delta 1: dataChecksums: algorithm must be one of crc32c; got "sha256"$/],
    ['an unknown field in dataChecksums', () => validateDelta(csumMutated((d) => { d.dataChecksums.x = 1 }), csumCtx()),
      /^delta 1: dataChecksums: unknown field "x"$/],
    ['dataChecksums not an object', () => validateDelta(csumMutated((d) => { d.dataChecksums = 'crc32c' }), csumCtx()),
      /^delta 1: dataChecksums: must be an object \{algorithm, sectorSize\}/],
    ['csums on a delta of an image without checksums', () => validateDelta(mutated((d) => { d.files[0].extents = [mirrored(0, 0, 131072, 8192, [])] }), ctx()),
      /^delta 1: inode 2: extents\[0\] has copies or csums but the manifest does not declare feature "data-checksums"$/],
    ['one csum short', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].csums = csumsOf(4096) }), csumCtx()),
      /^delta 1: inode 2: extents\[0\]\.csums must be strict base64 of 8 bytes \(one checksum per sector\), got 4 bytes$/],
    ['csums not base64', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].csums = 'AAAA AAA' }), csumCtx()),
      /extents\[0\]\.csums must be strict base64 of 8 bytes \(one checksum per sector\), got something else$/],
    ['csums of part of a sector', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].length = 6000 }), csumCtx()),
      /extents\[0\] has csums but its length 6000 is not whole sectors of 4096 bytes/],
    ['copies without csums', () => validateDelta(csumMutated((d) => { delete d.files[0].extents[0].csums }), csumCtx()),
      /^delta 1: inode 2: extents\[0\] has copies but no csums to choose between them$/],
    ['no copies in the list', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies = [] }), csumCtx()),
      /extents\[0\]\.copies must be an array of 1 to 3 copies/],
    ['four other copies', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies = Array(4).fill({ device: 1, deviceOffset: 0 }) }), csumCtx()),
      /extents\[0\]\.copies must be an array of 1 to 3 copies/],
    ['a copy on a device that does not exist', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies[0].device = 2 }), csumCtx()),
      /extents\[0\]\.copies\[0\]\.device 2 does not exist/],
    ['a copy past its device\'s end', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies[0].deviceOffset = 2 * 1024 * 1024 - 4096 }), csumCtx()),
      /extents\[0\]\.copies\[0\] past device end/],
    ['a copy at a negative offset', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies[0].deviceOffset = -4096 }), csumCtx()),
      /extents\[0\]\.copies\[0\]\.deviceOffset must be a non-negative integer/],
    ['an unknown field in a copy', () => validateDelta(csumMutated((d) => { d.files[0].extents[0].copies[0].x = 1 }), csumCtx()),
      /copies\[0\]: unknown field "x"/],
    ['a copy on a retired device', () => validateDelta(csumMutated((d) => {
      d.devices = []
      d.files = [{ ino: 5, extents: [mirrored(0, 1, 0, 8192, [{ device: 0, deviceOffset: 0 }])] }]
    }), { ...ImageMap.ofManifest((() => { const m = csumManifest(); m.devices.push(makeDevice('d1', 2 * 1024 * 1024)); return m })()).context(), retired: new Set([0]) }),
      /^delta 1: files\[0\]: inode 5 has a copy of an extent on device 0, which is retired$/],
  ]
  for (const [what, fn, message] of cases) t.test(what, async (t) => refused(t, fn, message))

  // The map has every file: retiring a device that only a copy still uses is refused too.
  const map = ImageMap.ofManifest(csumManifest())
  map.apply(csumDelta()) // inode 2's copy on d1
  const lying: Loose = { ...csumDelta(), seq: 2, from: 'cfg-0002-abcdef', to: 'cfg-0003-abcdef', devices: [], retired: [1], files: [{ ino: 5, extents: [extent(0, 0, 524288, 8192)] }] }
  t.doesNotThrow(() => validateDelta(lying, map.context()), 'the delta alone looks fine')
  t.throws(() => map.apply(lying), /^delta 2: retires device 1, but inode 2 still has an extent \(or a copy of one\) on it$/, 'the map sees the copy still there')
})
