// The JavaScript fuzz targets: every parser of input from another host, each with what it must
// never do (throw anything but its one-line refusal, hang) and a model it must agree with. An input
// is bytes (for manifest, stream and record: the file as read; for delta and answers: a JSON case
// holding the context and the text under test). run() throws a Finding on a crash or a disagreement.
import fc from 'fast-check'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { ManifestError } from '../../src/errors'
import { parseManifest, validateManifest, CONFIG_ID } from '../../src/manifest/validate'
import { isV2Path, readCheckedManifest, readManifestFile } from '../../src/manifest/io'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import { signManifest, verifyManifestSignature } from '../../src/manifest/sign'
import { CannotStream, streamManifestFile, streamOrReadManifest } from '../../src/manifest/stream'
import { MANIFEST_FORMAT, MANIFEST_VERSION, KNOWN_FEATURES, type Extent, type Manifest } from '../../src/manifest/types'
import { planRead } from '../../src/extents/plan'
import { decodeName, encodeName } from '../../src/manifest/names'
import { mergeExtents } from '../../src/native-engine/tables'
import { packedTables, packedV1File, packedV2File } from '../../test/helpers/packed-tables'
import { TreeSink } from '../../src/manifest/tree'
import { packDelta } from '../../src/native-engine/delta-tables'
import { viewAddon, type PlannedPiece } from '../../src/native-engine/addon'
import { parseDelta } from '../../src/delta/io'
import { signDelta } from '../../src/delta/sign'
import { ImageMap } from '../../src/delta/chain'
import type { Delta } from '../../src/delta/types'
import { ConfigWatch, MAX_DELTAS, parseRecord, RECORD_FORMAT, writeRecord } from '../../src/configid/record'
import { MAX_WAIT_MS, parseConfigAnswer, parseConfigQuery, parseRemapAnswer } from '../../src/service/protocol'
import { RequestVerifier, MemoryNonceStore, requestMac, sha256Hex, DEFAULT_SKEW_MS } from '../../src/service/auth'
import { manifestTree, servedTree } from '../../test/helpers/served-tree'
import { applyByteEdits, applyEdits, byteEditArb, editArb, layout, LAYOUTS, mutatedSeeds, type Edit, type Json, type Seed } from './mutate'

/** A crash (an exception other than the parser's refusal) or a disagreement with a model. */
export class Finding extends Error {}

/** The key signed seeds are signed with (and readers verify with): the unit tests' key. */
export const KEY = Buffer.from('0123456789abcdef0123456789abcdef')

export interface Target {
  name: string
  /** What it fuzzes and what it asserts, one line (scripts/fuzz --list, docs/fuzzing.md). */
  about: string
  /** Seed directories besides fuzz/corpus/<name>/ (relative to the repository). */
  alsoSeeds?: string[]
  arbitrary(seeds: readonly Seed[]): fc.Arbitrary<Buffer>
  /** One input; throws Finding. */
  run(input: Buffer): void
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function decodeUtf8(b: Buffer): string | undefined {
  try {
    return utf8.decode(b)
  } catch {
    return undefined
  }
}

/** `err`, thrown by a parser, must be its refusal: a ManifestError of one line. */
function refusal(err: unknown, what: string): ManifestError {
  if (!(err instanceof ManifestError)) throw new Finding(`${what} crashed: ${err instanceof Error ? err.stack : String(err)}`)
  if (/[\u0000-\u001f]/.test(err.message)) throw new Finding(`${what} refused in more than one line (or with control characters): ${JSON.stringify(err.message)}`)
  return err
}

function attempt<T>(what: string, fn: () => T): { value?: T; error?: ManifestError } {
  try {
    return { value: fn() }
  } catch (err) {
    return { error: refusal(err, what) }
  }
}

/** `fn` must accept: its value, or a Finding naming the refusal. */
function mustAccept<T>(what: string, fn: () => T): T {
  const r = attempt(what, fn)
  if (r.error !== undefined) throw new Finding(`${what}: refused: ${r.error.message}`)
  return r.value as T
}

/** Manifests validated here are packed with these device fds (C checks fds only for >= -1). */
const fdsOf = (m: { devices: unknown[] }) => m.devices.map((_, i) => 100 + i)

// ------------------------------------------------------------------------------------ manifest

/** What C's plan of a read of an inline file must be: its bytes, clipped at EOF. */
function inlineModel(content: Buffer, offset: number, length: number): PlannedPiece[] {
  const bytes = content.subarray(Math.min(offset, content.length), Math.min(offset + length, content.length))
  return bytes.length > 0 ? [{ kind: 'inline', bytes }] : []
}

/** Reads of every kind for a file of `size` bytes with `extents`: whole, around EOF and around every edge. */
function readsOf(size: number, extents: readonly { fileOffset: number; length: number }[]): [number, number][] {
  const reads: [number, number][] = [[0, size], [0, 4096], [Math.max(0, size - 1), 2], [size, 1], [2 ** 50, 1]]
  for (const e of extents.slice(0, 8)) {
    reads.push([Math.max(0, e.fileOffset - 1), 2], [e.fileOffset, e.length], [e.fileOffset + e.length - 1, 2], [e.fileOffset + 1, e.length + 4096])
  }
  return reads
}

/** The first path where two trees differ, and how. */
function firstDifference(a: Record<string, unknown>, b: Record<string, unknown>): string {
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (!isDeepStrictEqual(a[k], b[k])) return `${JSON.stringify(k)}: ${JSON.stringify(a[k])} against ${JSON.stringify(b[k])}`
  }
  return 'none'
}

/** Whether a time's seconds, an inode number or a device offset reaches 2^51 (differences may then reach 2^52). */
function holdsHugeValues(m: Manifest): boolean {
  const huge = (v: number) => Math.abs(v) >= 2 ** 51
  return m.inodes.some((n) => huge(n.ino) || [n.atime, n.mtime, n.ctime].some((t) => huge(t[0])) ||
    (n.entries ?? []).some((e) => huge(e.ino)) || (n.extents ?? []).some((e) => huge(e.deviceOffset) || (e.copies ?? []).some((c) => huge(c.deviceOffset))))
}

/**
 * A manifest validate() accepted must pack (re-encoded as v2 and loaded by C, as a mount packs it)
 * into tables that serve what it says, pass C's
 * table check (xt_check), and every read of its files must plan in C (plan.c) exactly as
 * src/extents/plan.ts plans it.
 */
function checkPacked(m: Manifest, what: string): void {
  let image: Buffer
  let index: (ino: number) => number
  try {
    const packed = packedTables(m, fdsOf(m))
    image = packed.image
    index = (ino) => packed.paths.index(ino)
  } catch (err) {
    // Version 2 (the packer's input) stores neighbours' differences below 2^52: a manifest holding
    // values of 2^51 or more may be refused, loudly (src/manifest/v2/from-v1.ts encoding); none other.
    if (/the view's tables take differences below 2\^52/.test((err as Error).message) && holdsHugeValues(m)) return
    throw new Finding(`${what}: a manifest validate() accepts does not pack: ${(err as Error).stack}`)
  }
  const served = servedTree(image)
  const want = manifestTree(m)
  if (!isDeepStrictEqual(served, want)) throw new Finding(`${what}: the packed tables serve another tree than the manifest says: ${firstDifference(served, want)}`)
  const addon = viewAddon()
  const refused = addon.checkTables(image)
  if (refused !== null) throw new Finding(`${what}: C refuses the tables of a manifest validate() accepts: ${refused}`)
  let files = 0
  for (const n of m.inodes) {
    if (n.kind !== 'file' || files++ >= 16) continue
    const inline = n.inline === undefined ? undefined : Buffer.from(n.inline, 'base64')
    const merged = mergeExtents(n.extents ?? [])
    for (const [offset, length] of readsOf(n.size, n.extents ?? [])) {
      const want = inline ? inlineModel(inline, offset, length) : planRead(merged, n.size, offset, length)
      let got: PlannedPiece[] | string
      try {
        got = addon.planRead(image, index(n.ino), offset, length)
      } catch (err) {
        got = String(err)
      }
      if (!isDeepStrictEqual(got, want)) {
        throw new Finding(`${what}: C plans a read of inode ${n.ino} (${offset}, +${length}) otherwise than the model: ` +
          `C ${JSON.stringify(got)}, model ${JSON.stringify(want)}`)
      }
    }
  }
}

const manifest: Target = {
  name: 'manifest',
  about: 'validate.ts (parseManifest): refusals are one-line ManifestErrors, wrong formats, versions and features are refused; ' +
    'what it accepts re-validates, packs (tables.ts) into tables serving the tree the manifest says, passes C xt_check and plans every ' +
    'read in C as src/extents/plan.ts does',
  alsoSeeds: ['test/fixtures'],
  arbitrary: (seeds) => mutatedSeeds(seeds),
  run(input) {
    const text = decodeUtf8(input)
    if (text === undefined) return // readManifestFile refuses it before parsing (the stream target reads bytes)
    const r = attempt('parseManifest', () => parseManifest(text))
    if (r.value === undefined) return
    const m = r.value as unknown as Record<string, unknown>
    // What must be refused, whatever else the manifest holds.
    if (m.format !== MANIFEST_FORMAT) throw new Finding(`accepted format ${JSON.stringify(m.format)}`)
    if (m.version !== MANIFEST_VERSION) throw new Finding(`accepted version ${JSON.stringify(m.version)}`)
    const features = m.features as unknown[]
    if (features.some((f) => !(KNOWN_FEATURES as readonly unknown[]).includes(f)) || new Set(features).size !== features.length) {
      throw new Finding(`accepted features ${JSON.stringify(features)}`)
    }
    mustAccept('parseManifest of what it accepted, re-serialized', () => parseManifest(JSON.stringify(r.value)))
    checkPacked(r.value, 'manifest')
  },
}

// ------------------------------------------------------------------------------------ stream

/** Files the readers read, in memory when /dev/shm is there. */
const scratch = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `extfs-fuzz-${process.pid}`)
process.on('exit', () => fs.rmSync(scratch, { recursive: true, force: true }))
function scratchFile(name: string, bytes: Buffer | string): string {
  fs.mkdirSync(scratch, { recursive: true })
  const file = path.join(scratch, name)
  fs.writeFileSync(file, bytes)
  return file
}

/** The streaming reader's verdict: the packed image and header, a refusal, or 'fallback' (CannotStream). */
function streamed(file: string, key: Buffer | undefined, chunkBytes: number): { image?: Buffer; header?: unknown; error?: string } | 'fallback' {
  try {
    const header = streamManifestFile(file, new TreeSink(), { maxBytes: 2 ** 30, key, chunkBytes })
    // Accepted: packed as a mount packs it (streamed again, in 4 MiB chunks, re-encoded, loaded by C).
    const image = packedV1File(file, key, (n) => Array.from({ length: n }, (_, i) => 3 + i)).image
    return { image, header }
  } catch (err) {
    if (err instanceof CannotStream) return 'fallback'
    return { error: refusal(err, `streamManifestFile (chunks of ${chunkBytes} bytes)`).message }
  }
}

const stream: Target = {
  name: 'stream',
  about: 'stream.ts + the tree walk + the mount\'s packer (v1 re-encoded, loaded by C) against the whole-file reader (io.ts), in chunks of 4 MiB and of a few bytes, with --key ' +
    'when the manifest is signed: both accept or both refuse (or the stream hands over to the whole-file path); ' +
    'accepted, the same header and the same served tree',
  alsoSeeds: ['test/fixtures', 'fuzz/corpus/manifest'],
  // Half the inputs are signed after their edits, so that the streamed HMAC meets odd but valid content.
  arbitrary: (seeds) => mutatedSeeds(seeds, undefined, (v, n) => (n % 2 === 0 ? resigned(v, (x) => signManifest(x as unknown as Manifest, KEY)) : v)),
  run(input) {
    const file = scratchFile('manifest.json', input)
    const key = input.includes('"signature"') ? KEY : undefined
    let whole: { m?: Manifest; error?: string }
    try {
      const m = readManifestFile(file)
      if (key) verifyManifestSignature(m, key)
      whole = { m }
    } catch (err) {
      whole = { error: refusal(err, 'readManifestFile').message }
    }
    // A chunk size from the input's length: replaying the same bytes reads the same chunks.
    for (const chunkBytes of [4 * 1024 * 1024, 3 + (input.length % 61)]) {
      const s = streamed(file, key, chunkBytes)
      if (s === 'fallback') continue
      const at = `chunks of ${chunkBytes} bytes${key ? ', with the key' : ''}`
      if ((s.error === undefined) !== (whole.error === undefined)) {
        throw new Finding(`the streaming reader ${s.error === undefined ? 'accepts' : `refuses (${s.error})`} what the whole-file reader ` +
          `${whole.error === undefined ? 'accepts' : `refuses (${whole.error})`}; ${at}`)
      }
      if (s.error !== undefined) continue
      const { inodes: _inodes, ...header } = whole.m!
      if (!isDeepStrictEqual(s.header, header)) throw new Finding(`the streamed header differs from the whole manifest's; ${at}`)
      const packed = packedTables(whole.m!, fdsOf(whole.m!)).image
      if (!isDeepStrictEqual(servedTree(s.image!), servedTree(packed))) throw new Finding(`the streamed tables serve another tree than the whole manifest's; ${at}`)
    }
  },
}

/** `v` signed by `sign`, if it can be (a value mangled past signing, with an infinite number say, stays as it is). */
function resigned(v: Json, sign: (v: object) => object): Json {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return v
  try {
    return sign(v) as unknown as Json
  } catch {
    return v
  }
}

// ------------------------------------------------------------------------------------ v2

/** The v2 bytes of a JSON seed that validates (its edits applied when they keep it valid), else undefined. */
function v2Of(value: Json, edits: readonly Edit[]): Buffer | undefined {
  for (const v of [applyEdits(value, edits), value]) {
    try {
      const m = validateManifest(JSON.parse(JSON.stringify(v)))
      const { inodes, signature: _s, ...header } = m
      const file = scratchFile('seed.extfs', '')
      writeManifestV2(file, header, inodes)
      return fs.readFileSync(file)
    } catch {
      continue
    }
  }
  return undefined
}

/** The manifest a v2 reader accepted, as version 1 would hold it (for validateManifest and the packer). */
function asV1(m: Manifest): Manifest {
  const { signature: _s, ...rest } = m
  return { ...rest, version: MANIFEST_VERSION }
}

const v2: Target = {
  name: 'v2',
  about: 'manifest format 2 (v2/read.ts) on binary files made from the JSON seeds and edited byte by byte: refuses in one line, or ' +
    'accepts only what validateManifest accepts as version 1, loads in C the tree its objects pack into, and writes back the same inodes',
  alsoSeeds: ['test/fixtures', 'fuzz/corpus/manifest'],
  arbitrary: (seeds) => fc.record({
    seed: fc.nat({ max: seeds.length - 1 }),
    edits: fc.array(editArb, { maxLength: 3 }),
    bytes: fc.array(byteEditArb, { maxLength: 4 }),
  }).map(({ seed, edits, bytes }) => {
    const s = seeds[seed]!
    const base = s.value !== undefined ? v2Of(s.value, edits) ?? s.bytes : s.bytes
    return applyByteEdits(base, bytes)
  }),
  run(input) {
    const file = scratchFile('manifest.extfs', input)
    const r = attempt('readCheckedManifest (v2)', () => readCheckedManifest(file))
    if (r.error !== undefined || !isV2Path(file)) return
    const m = asV1(r.value!)
    mustAccept('validateManifest of what the v2 reader accepted', () => validateManifest(JSON.parse(JSON.stringify(m))))
    mustAccept('streamOrReadManifest (v2)', () => streamOrReadManifest(file, new TreeSink()))
    const loadedTree = servedTree(mustAccept('the C loader (v2)', () => packedV2File(file, undefined, (n) => Array.from({ length: n }, (_, i) => 3 + i))).image)
    if (!isDeepStrictEqual(loadedTree, servedTree(packedTables(m, fdsOf(m)).image))) throw new Finding('C loads another tree from the v2 file than from what the v2 reader read of it')
    const again = scratchFile('again.extfs', '')
    const { inodes, ...h } = m
    writeManifestV2(again, h, inodes)
    const back = mustAccept('the v2 reader on what the v2 writer wrote back', () => readCheckedManifest(again))
    if (!isDeepStrictEqual(back.inodes, [...inodes].sort((a, c) => a.ino - c.ino))) throw new Finding('written back, the inodes differ')
  },
}

// ------------------------------------------------------------------------------------ delta

/**
 * A case of JSON: {"manifest": the image's manifest, "delta": the delta's text}. The manifest stays as
 * its seed has it; the delta is edited, laid out, its bytes edited and, half the time, re-signed.
 */
function casesOf(seeds: readonly Seed[], field: string, finish?: (v: Json, n: number) => Json): fc.Arbitrary<Buffer> {
  const usable = seeds.filter((s) => s.value !== null && typeof s.value === 'object' && !Array.isArray(s.value) && field in s.value)
  if (usable.length === 0) throw new Error(`no seed has a ${field}`)
  return fc.record({
    seed: fc.nat({ max: usable.length - 1 }),
    edits: fc.array(editArb, { maxLength: 6 }),
    layout: fc.nat({ max: LAYOUTS - 1 }),
    finish: fc.nat(),
    bytes: fc.oneof({ weight: 4, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(byteEditArb, { minLength: 1, maxLength: 3 }) }),
  }).map(({ seed, edits, layout: l, finish: n, bytes }) => {
    const c = usable[seed]!.value as { [key: string]: Json }
    const text = c[field]!
    // Text that is JSON is edited as a value and laid out; other text (a query string) only as bytes.
    let value: Json | undefined = text
    if (typeof text === 'string') {
      try {
        value = JSON.parse(text) as Json
      } catch {
        value = undefined
      }
    }
    let base = Buffer.from(typeof text === 'string' ? text : JSON.stringify(text))
    if (value !== undefined) {
      value = applyEdits(value, edits)
      base = Buffer.from(layout(finish ? finish(value, n) : value, l))
    }
    return Buffer.from(JSON.stringify({ ...c, [field]: applyByteEdits(base, bytes).toString('utf8') }))
  })
}

function caseOf(input: Buffer): { [key: string]: unknown } | undefined {
  try {
    const v: unknown = JSON.parse(input.toString('utf8'))
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as { [key: string]: unknown }) : undefined
  } catch {
    return undefined
  }
}

const delta: Target = {
  name: 'delta',
  about: 'delta/io.ts parseDelta + delta/validate.ts against the map of a manifest (signed deltas verified): refusals are one-line ' +
    'ManifestErrors; what it accepts applies to the map (ImageMap) and, unless it touches inline content (which the native engine ' +
    'refuses by design), packed by delta-tables.ts passes C xt_check_delta',
  arbitrary: (seeds) => casesOf(seeds, 'delta', (v, n) => (n % 2 === 0 ? resigned(v, (x) => signDelta(x as unknown as Delta, KEY)) : v)),
  run(input) {
    const c = caseOf(input)
    if (c === undefined || typeof c.delta !== 'string') return
    let m: Manifest
    try {
      m = validateManifest(c.manifest)
    } catch {
      return // the context is the seed's, not what is fuzzed
    }
    const map = ImageMap.ofManifest(m)
    const text = c.delta
    const key = text.includes('"signature"') ? KEY : undefined
    const r = attempt('parseDelta', () => parseDelta(text, map.context(), 'delta fuzz', key))
    if (r.value === undefined) return
    const d = r.value
    const applied = attempt('ImageMap.apply', () => map.apply(d))
    if (applied.error !== undefined) return // a retired device still in use: the map's own check
    // What the native engine does with it (NativeEngine.applyDelta). Inline content it neither installs
    // nor replaces (docs/remap.md, "Engine"): such a delta is refused there, by design.
    const inline = new Set(m.inodes.filter((n) => n.inline !== undefined).map((n) => n.ino))
    if (d.files.some((f) => f.inline !== undefined || inline.has(f.ino))) return
    const { image, paths } = packedTables(m, fdsOf(m))
    const files = d.files.map((f) => ({ index: paths.index(f.ino), extents: f.extents ?? [] }))
    if (files.some((f) => f.index < 0)) throw new Finding('a delta names a file the tables do not have')
    let packed: Buffer
    try {
      packed = packDelta(files, d.devices.map((x) => x.size))
    } catch (err) {
      throw new Finding(`a delta parseDelta accepts does not pack: ${(err as Error).stack}`)
    }
    const refused = viewAddon().checkDelta(image, packed, d.devices.length)
    if (refused !== null) throw new Finding(`C refuses a delta parseDelta accepts: ${refused}`)
  },
}

// ------------------------------------------------------------------------------------ record

const RECORD_KEYS = new Set(['format', 'version', 'configId', 'state', 'updatedAt', 'deltas', 'mapping'])

/** The record as docs/remap.md and record.ts's types describe it, written apart from parseRecord. */
function recordModel(v: unknown): boolean {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false
  const o = v as Record<string, unknown>
  const name = (d: unknown) => typeof d === 'string' && d.length > 0 && d.length <= 4096 && !d.includes('\0') &&
    (d.startsWith('/') || (!d.includes('/') && d !== '.' && d !== '..'))
  const mapping = (x: unknown) => x !== null && typeof x === 'object' && !Array.isArray(x) &&
    Object.keys(x).every((k) => k === 'throughLoop' || k === 'carryMax') && typeof (x as { throughLoop?: unknown }).throughLoop === 'boolean' &&
    Number.isSafeInteger((x as { carryMax?: unknown }).carryMax) && ((x as { carryMax: number }).carryMax >= 0)
  return Object.keys(o).every((k) => RECORD_KEYS.has(k)) && o.format === RECORD_FORMAT && o.version === 1 &&
    typeof o.configId === 'string' && CONFIG_ID.test(o.configId) && (o.state === 'current' || o.state === 'released') &&
    typeof o.updatedAt === 'string' &&
    (o.deltas === undefined || (Array.isArray(o.deltas) && o.deltas.length <= MAX_DELTAS && o.deltas.every(name))) &&
    (o.mapping === undefined || mapping(o.mapping))
}

const record: Target = {
  name: 'record',
  about: 'configid/record.ts parseRecord (readRecord without its I/O) against a model of the record; the per-open check ' +
    '(ConfigWatch) lets opens through exactly when the reader accepts a current record of that config ID; what is accepted writes back (writeRecord) and reads the same',
  arbitrary: (seeds) => mutatedSeeds(seeds),
  run(input) {
    const text = input.toString('utf8') // readRecord reads with replacement, not fatal
    const r = attempt('parseRecord', () => parseRecord(text, 'record'))
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch {
      value = undefined
    }
    if ((r.value !== undefined) !== recordModel(value)) {
      throw new Finding(`parseRecord ${r.value !== undefined ? 'accepts' : `refuses (${r.error!.message})`} a record the model ${r.value !== undefined ? 'refuses' : 'accepts'}`)
    }
    const asked = typeof (value as { configId?: unknown } | undefined)?.configId === 'string' ? (value as { configId: string }).configId : 'cfg-0001-abcdef'
    const file = scratchFile('record.json', input)
    const verdict = new ConfigWatch(file, asked).check()
    const current = r.value !== undefined && r.value.state === 'current' && r.value.configId === asked
    if (verdict.ok !== current) {
      throw new Finding(`the per-open check says ${verdict.ok ? 'ok' : `no (${verdict.reason})`} to a record the reader ` +
        `${r.value === undefined ? `refuses (${r.error!.message})` : `reads as ${r.value.state} ${r.value.configId}`}`)
    }
    if (r.value === undefined) return
    writeRecord(file, r.value.configId, r.value.state, { deltas: r.value.deltas, mapping: r.value.mapping })
    const back = mustAccept('parseRecord of a record written back', () => parseRecord(fs.readFileSync(file, 'utf8'), 'record'))
    // Written back without its time, and without an empty chain (absent means none).
    const { updatedAt: _a, deltas: d0, ...was } = r.value
    const { updatedAt: _b, deltas: d1, ...now } = back
    if (d0 !== undefined && d0.length > 0) Object.assign(was, { deltas: d0 })
    if (d1 !== undefined) Object.assign(now, { deltas: d1 })
    if (!isDeepStrictEqual(now, was)) throw new Finding(`a record written back reads otherwise: ${JSON.stringify(now)} for ${JSON.stringify(was)}`)
  },
}

// ------------------------------------------------------------------------------------ answers

const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0
const isConfigId = (v: unknown) => typeof v === 'string' && CONFIG_ID.test(v)

/** A config answer as protocol.ts documents it (ConfigAnswer), written apart from parseConfigAnswer. */
function configAnswerModel(v: Record<string, unknown>): boolean {
  return isConfigId(v.image) && isConfigId(v.configId) && (v.state === 'current' || v.state === 'released' || v.state === 'unknown') &&
    (v.reason === undefined || (typeof v.reason === 'string' && v.reason.length <= 4096)) && Array.isArray(v.deltas) && v.deltas.length <= MAX_DELTAS && v.deltas.every((s, i) => s === i + 1) && isCount(v.leaseMs) && isCount(v.heldMs)
}

/** A remap answer as protocol.ts documents it (RemapAnswer). */
function remapAnswerModel(v: Record<string, unknown>): boolean {
  return (v.state === 'unchanged' || v.state === 'remapped' || v.state === 'released') && isConfigId(v.configId) &&
    (v.seq === undefined || isCount(v.seq)) && (v.deltaBytes === undefined || isCount(v.deltaBytes)) && isCount(v.manifestBytes)
}

const answers: Target = {
  name: 'answers',
  about: "serve's protocol (service/protocol.ts, auth.ts): config and remap answers against models of what they may say, a config " +
    "answer's delta chain as a record the mover can read back, the config query, request authentication (no forged request accepted)",
  arbitrary: (seeds) => casesOf(seeds, 'body'),
  run(input) {
    const c = caseOf(input)
    if (c === undefined || typeof c.body !== 'string') return
    const body = c.body
    if (c.kind === 'query') {
      const q = parseConfigQuery(new URLSearchParams(body))
      if ('error' in q) return
      if ((q.after !== undefined && !isConfigId(q.after)) || !isCount(q.waitMs) || q.waitMs > MAX_WAIT_MS) throw new Finding(`config query read as ${JSON.stringify(q)}`)
      return
    }
    let v: unknown
    try {
      v = JSON.parse(body)
    } catch {
      return // the client refuses an answer that is not JSON
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return // ... or not an object
    const o = v as Record<string, unknown>
    if (c.kind === 'config') {
      const a = parseConfigAnswer(o)
      if ((a !== undefined) !== configAnswerModel(o)) throw new Finding(`parseConfigAnswer ${a ? 'accepts' : 'refuses'} an answer the model ${a ? 'refuses' : 'accepts'}`)
      // An unknown answer is not mirrored: the mover only ends its lease (src/mover/remote.ts).
      if (a === undefined || a.state === 'unknown') return
      // The mover mirrors it as a record (src/mover/remote.ts), which its readers must accept.
      const file = scratchFile('mirror-record.json', '')
      writeRecord(file, a.configId, a.state, { deltas: a.deltas.map((seq) => `delta-${seq}`) })
      mustAccept('parseRecord of a config answer mirrored as a record', () => parseRecord(fs.readFileSync(file, 'utf8'), file))
    } else if (c.kind === 'remap') {
      const a = parseRemapAnswer(o)
      if ((a !== undefined) !== remapAnswerModel(o)) throw new Finding(`parseRemapAnswer ${a ? 'accepts' : 'refuses'} an answer the model ${a ? 'refuses' : 'accepts'}`)
    } else if (c.kind === 'request') {
      // {method, path, headers, now}: a request as serve sees it. Only what KEY signed may pass.
      if (typeof o.method !== 'string' || typeof o.path !== 'string') return // serve has them from the request line
      const method = o.method
      const target = o.path
      const now = typeof o.now === 'number' ? o.now : 0
      const headers = (o.headers !== null && typeof o.headers === 'object' ? o.headers : {}) as Record<string, string | string[] | undefined>
      let verdict
      try {
        verdict = new RequestVerifier(KEY, new MemoryNonceStore()).verify(method, target, headers, Buffer.alloc(0), now)
      } catch (err) {
        throw new Finding(`RequestVerifier.verify crashed: ${(err as Error).stack}`)
      }
      if (!verdict.ok) return
      const [time, nonce, mac] = ['x-extfs-time', 'x-extfs-nonce', 'x-extfs-auth'].map((h) => headers[h])
      if (typeof time !== 'string' || typeof nonce !== 'string' || mac !== requestMac(KEY, method, target, time, nonce, sha256Hex('')) ||
        Math.abs(Number(time) - now) > DEFAULT_SKEW_MS) {
        throw new Finding(`a request KEY did not sign, or out of time, is accepted: ${JSON.stringify(o)}`)
      }
    }
  },
}

export const TARGETS: readonly Target[] = [manifest, stream, v2, delta, record, answers]
