// Validation of a delta read from shared storage: pure, no I/O. The same rules as the manifest's
// extents (src/manifest/validate.ts, reused), plus the chain: a delta must name this image, follow the
// config ID the reader is at, and touch only regular files the image has. The first problem throws a
// one-line ManifestError, e.g. `delta 2: files[3]: inode 17 is not a regular file of the image`.
import { ManifestError } from '../errors'
import {
  bad, checkDevice, checkExtents, checkInline, checkSignatureShape, CONFIG_ID, describe, isInt, isObject, LIMITS, quote,
} from '../manifest/validate'
import { DELTA_FORMAT, DELTA_VERSION, type Delta } from './types'

/** What checking one delta needs to know about the image's map before it (manifest ⊕ earlier deltas). */
export interface DeltaContext {
  /** c0, the manifest's configId. */
  image: string
  /** The seq and `from` the next delta must carry: the number of deltas so far + 1, and the current config ID. */
  seq: number
  from: string
  /** Every device so far (manifest's, then earlier deltas'), in index order: ids must stay unique. */
  devices: readonly { id: string; size: number }[]
  /** ino → size in bytes of every regular file of the image. */
  fileSizes: ReadonlyMap<number, number>
}

const DELTA_KEYS = new Set(['format', 'version', 'image', 'seq', 'from', 'to', 'createdAt', 'reason', 'devices', 'files', 'signature'])
const FILE_KEYS = new Set(['ino', 'extents', 'inline'])

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
  checkFiles(value.files, ctx, sizes, where)
  if (value.signature !== undefined) checkSignatureShape(value.signature)
  return value as unknown as Delta
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

function checkFiles(list: unknown, ctx: DeltaContext, deviceSizes: number[], where: string): void {
  if (!Array.isArray(list)) bad(where, `files must be an array, got ${describe(list)}`)
  if (list.length > ctx.fileSizes.size) bad(where, `${list.length} files, more than the image's ${ctx.fileSizes.size} regular files`)
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
      if (f.extents !== undefined) extents += checkExtents(f.extents, ino, size, deviceSizes)
      else checkInline({ inline: f.inline, size }, ino, true)
    } catch (err) {
      if (err instanceof ManifestError) err.message = `${where}: ${err.message}`
      throw err
    }
    if (extents > LIMITS.extents) bad(where, `more than ${LIMITS.extents} extents in all`)
  }
}
