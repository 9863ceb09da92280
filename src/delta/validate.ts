// Validation of a delta read from shared storage: pure, no I/O. The same rules as the manifest's
// extents (src/manifest/validate.ts, reused), plus the chain: a delta must name this image, follow the
// config ID the reader is at, and touch only regular files the image has. The first problem throws a
// one-line ManifestError, e.g. `delta 2: files[3]: inode 17 is not a regular file of the image`.
import { ManifestError } from '../errors'
import {
  bad, checkChecksumsShape, checkDevice, checkExtents, checkFingerprints, checkInline, checkSignatureShape, CONFIG_ID, describe, isInt, isObject, LIMITS, quote,
  type CsumFacts,
} from '../manifest/validate'
import { DELTA_FORMAT, DELTA_VERSION, type Delta } from './types'
import type { DataChecksums, Device, Extent } from '../manifest/types'
import { devicesOfExtent } from './chain'

/** A Map does; a mounted view answers from its tables instead of holding one entry per file in JS. */
export interface FileSizes {
  get(ino: number): number | undefined
}

/** What checking one delta needs to know about the image's map before it (manifest ⊕ earlier deltas). */
export interface DeltaContext {
  /** c0, the manifest's configId. */
  image: string
  /** The seq and `from` the next delta must carry: the number of deltas so far + 1, and the current config ID. */
  seq: number
  from: string
  /** Every device so far (manifest's, then earlier deltas'), in index order: ids must stay unique. */
  devices: readonly Device[]
  /** Size in bytes of each regular file of the image, by ino (undefined: not a regular file of it). */
  fileSizes: FileSizes
  /** Devices retired by earlier deltas: no extent may use them again. */
  retired: ReadonlySet<number>
  /** The manifest's `dataChecksums` (feature data-checksums): every delta must repeat it. */
  dataChecksums?: DataChecksums
}

const DELTA_KEYS = new Set(['format', 'version', 'image', 'seq', 'from', 'to', 'createdAt', 'reason', 'devices', 'dataChecksums', 'files', 'proofs', 'retired', 'signature'])
const FILE_KEYS = new Set(['ino', 'extents', 'inline'])
const PROOF_KEYS = new Set(['device', 'fingerprints'])

/** Check a parsed delta against `ctx`; returns it typed, unchanged. */
export function validateDelta(value: unknown, ctx: DeltaContext): Delta {
  if (!isObject(value)) bad('delta', `must be a JSON object, got ${describe(value)}`)
  if (value.format !== DELTA_FORMAT) bad('delta', `format is ${describe(value.format)}, expected "${DELTA_FORMAT}": not an extfs delta`)
  const v = value.version
  if (!isInt(v, 0, Number.MAX_SAFE_INTEGER)) bad('delta', `version must be a non-negative integer, got ${describe(v)}`)
  if (v !== DELTA_VERSION) {
    throw new ManifestError(`unknown delta version ${v}: this extfs reads version ${DELTA_VERSION}${v > DELTA_VERSION ? '; upgrade extfs' : ''}`)
  }
  for (const k in value) if (!DELTA_KEYS.has(k)) bad('delta', `unknown field ${quote(k)}`)
  const where = `delta ${ctx.seq}`
  if (value.image !== ctx.image) bad(where, `belongs to image ${describe(value.image)}, not ${quote(ctx.image)}`)
  if (value.seq !== ctx.seq) bad(where, `broken chain: seq is ${describe(value.seq)}, expected ${ctx.seq}`)
  if (value.from !== ctx.from) bad(where, `broken chain: from is ${describe(value.from)}, but the map is at ${quote(ctx.from)}`)
  if (typeof value.to !== 'string' || !CONFIG_ID.test(value.to)) {
    bad(where, `to ${describe(value.to)} is invalid: expected 8 to 128 characters of A-Z a-z 0-9 _ -`)
  }
  if (value.to === ctx.from || value.to === ctx.image) bad(where, `to ${quote(value.to)} is a config ID the chain already had`)
  if (typeof value.createdAt !== 'string' || value.createdAt.length > LIMITS.shortString || Number.isNaN(Date.parse(value.createdAt))) {
    bad(where, `createdAt ${describe(value.createdAt)} is not a date`)
  }
  if (typeof value.reason !== 'string' || value.reason.length > LIMITS.shortString) {
    bad(where, `reason must be a string of at most ${LIMITS.shortString} characters, got ${describe(value.reason)}`)
  }
  const sizes = checkNewDevices(value.devices, ctx, where)
  const retired = checkRetired(value.retired, ctx, sizes.length, where)
  const checksums = checkDeclaredChecksums(value.dataChecksums, ctx.dataChecksums, where)
  checkFiles(value.files, ctx, sizes, retired, checksums, where)
  checkProofs(value.proofs, ctx, retired, where)
  if (value.signature !== undefined) checkSignatureShape(value.signature)
  return value as unknown as Delta
}

/**
 * The delta's `dataChecksums`: present exactly when the image's manifest has them, and the same. An
 * image keeps its filesystem, so its checksums keep their algorithm and sector size.
 */
function checkDeclaredChecksums(c: unknown, image: DataChecksums | undefined, where: string): CsumFacts | undefined {
  if (c === undefined) {
    if (image !== undefined) bad(where, 'has no dataChecksums, but the image has data checksums (feature "data-checksums"): its extents would lose their copies and csums')
    return undefined
  }
  if (image === undefined) bad(where, 'has dataChecksums, but the image has none (its manifest does not declare feature "data-checksums")')
  const facts = checkChecksumsShape(c, `${where}: dataChecksums`)
  const { algorithm, sectorSize } = c as DataChecksums
  if (algorithm !== image.algorithm || sectorSize !== image.sectorSize) {
    bad(where, `dataChecksums ${algorithm} per ${sectorSize} bytes differ from the image's, ${image.algorithm} per ${image.sectorSize} bytes`)
  }
  return facts
}

/** The delta's devices, appended to those before it; returns every device's size, in index order. */
function checkNewDevices(list: unknown, ctx: DeltaContext, where: string): number[] {
  if (!Array.isArray(list)) bad(where, `devices must be an array, got ${describe(list)}`)
  const n = ctx.devices.length
  if (n + list.length > LIMITS.devices) bad(where, `${n + list.length} devices in all, over the limit of ${LIMITS.devices}`)
  const ids = new Set(ctx.devices.map((d) => d.id))
  const sizes = ctx.devices.map((d) => d.size)
  for (let j = 0; j < list.length; j++) {
    const d = checkDevice(list[j], n + j)
    if (ids.has(d.id)) bad(`${where}: devices[${n + j}]`, `id ${quote(d.id)} is used by another device too`)
    ids.add(d.id)
    sizes.push(d.size)
  }
  return sizes
}

/** Newly retired devices: known ones (this delta's own included), not retired before, each once. All retired devices are returned. */
function checkRetired(list: unknown, ctx: DeltaContext, deviceCount: number, where: string): ReadonlySet<number> {
  if (list === undefined) return ctx.retired
  if (!Array.isArray(list) || list.length === 0) bad(where, `retired must be a non-empty array of device indexes, got ${describe(list)}`)
  const all = new Set(ctx.retired)
  for (let i = 0; i < list.length; i++) {
    const d: unknown = list[i]
    if (!isInt(d, 0, deviceCount - 1)) bad(`${where}: retired[${i}]`, `must be a device index from 0 to ${deviceCount - 1}, got ${describe(d)}`)
    if (all.has(d)) bad(`${where}: retired[${i}]`, `device ${d} is ${ctx.retired.has(d) ? 'already retired' : 'listed twice'}`)
    all.add(d)
  }
  return all
}

/** Proofs of devices the map had before this delta (new ones carry their own), not retired, each once. */
function checkProofs(list: unknown, ctx: DeltaContext, retired: ReadonlySet<number>, where: string): void {
  if (list === undefined) return
  if (!Array.isArray(list) || list.length === 0) bad(where, `proofs must be a non-empty array, got ${describe(list)}`)
  const seen = new Set<number>()
  for (let i = 0; i < list.length; i++) {
    const p: unknown = list[i]
    const at = `${where}: proofs[${i}]`
    if (!isObject(p)) bad(at, `must be an object {device, fingerprints}, got ${describe(p)}`)
    for (const k in p) if (!PROOF_KEYS.has(k)) bad(at, `unknown field ${quote(k)}`)
    const d = p.device
    if (!isInt(d, 0, ctx.devices.length - 1)) bad(at, `device must be the index of a device before this delta (0 to ${ctx.devices.length - 1}), got ${describe(d)}`)
    if (retired.has(d)) bad(at, `device ${d} is retired: there is nothing on it to prove`)
    if (seen.has(d)) bad(at, `device ${d} is proved twice`)
    seen.add(d)
    checkFingerprints(p.fingerprints, ctx.devices[d]!.size, at)
    if ((p.fingerprints as unknown[]).length === 0) bad(at, 'fingerprints must not be empty')
  }
}

function checkFiles(
  list: unknown, ctx: DeltaContext, deviceSizes: number[], retired: ReadonlySet<number>, checksums: CsumFacts | undefined, where: string,
): void {
  // No count check: each entry must be a different regular file of the image, which bounds the list.
  if (!Array.isArray(list)) bad(where, `files must be an array, got ${describe(list)}`)
  const seen = new Set<number>()
  let extents = 0
  for (let i = 0; i < list.length; i++) {
    const f: unknown = list[i]
    const at = `${where}: files[${i}]`
    if (!isObject(f)) bad(at, `must be an object {ino, extents} or {ino, inline}, got ${describe(f)}`)
    for (const k in f) if (!FILE_KEYS.has(k)) bad(at, `unknown field ${quote(k)}`)
    const ino = f.ino
    if (!isInt(ino, 1, Number.MAX_SAFE_INTEGER)) bad(at, `ino must be a positive integer, got ${describe(ino)}`)
    const size = ctx.fileSizes.get(ino)
    if (size === undefined) bad(at, `inode ${ino} is not a regular file of the image`)
    if (seen.has(ino)) bad(at, `inode ${ino} is listed twice`)
    seen.add(ino)
    if ((f.extents === undefined) === (f.inline === undefined)) bad(at, `inode ${ino} needs exactly one of extents and inline`)
    try {
      if (f.extents !== undefined) extents += checkExtents(f.extents, ino, size, deviceSizes, checksums, true) // compressed ones need csums, so the image's dataChecksums
      else checkInline({ inline: f.inline, size }, ino, true)
    } catch (err) {
      if (err instanceof ManifestError) err.message = `${where}: ${err.message}`
      throw err
    }
    for (const e of (f.extents ?? []) as Extent[]) {
      const d = devicesOfExtent(e).find((x) => retired.has(x))
      if (d !== undefined) bad(at, `inode ${ino} has ${d === e.device ? 'an extent' : 'a copy of an extent'} on device ${d}, which is retired`)
    }
    if (extents > LIMITS.extents) bad(where, `more than ${LIMITS.extents} extents in all`)
  }
}
