// The config-ID record: a small JSON file on storage both hosts share, naming the current layout of a
// frozen image. The initiator rewrites it atomically (temp file + rename); the mover checks it on every open.
import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomic } from '../manifest/io'
import { CONFIG_ID } from '../manifest/validate'
import { ManifestError } from '../errors'

export const RECORD_FORMAT = 'extfs-config-record'

export type RecordState = 'current' | 'released'

export interface ConfigRecord {
  format: typeof RECORD_FORMAT
  version: 1
  configId: string
  state: RecordState
  updatedAt: string
  /**
   * The delta chain (docs/remap.md): deltas[i-1] is delta i's file, a plain name in the record's
   * directory or an absolute path. Absent: no deltas (also records written before deltas existed).
   */
  deltas?: string[]
  /** How export mapped the image, so `extfs remap` maps it the same way. Initiator-only; movers ignore it. */
  mapping?: RecordMapping
}

/** Export's mapping options, kept for remap. Absent (older records): no --through-loop, default --carry-max. */
export interface RecordMapping {
  throughLoop: boolean
  /** --carry-max, bytes. */
  carryMax: number
}

export interface RecordExtras {
  deltas?: string[]
  mapping?: RecordMapping
}

/** Fields a record may hold; readRecord refuses others (a newer writer must bump the version). */
const RECORD_KEYS = new Set(['format', 'version', 'configId', 'state', 'updatedAt', 'deltas', 'mapping'])
/** Most deltas one chain may hold: each remap that found moves adds one. */
export const MAX_DELTAS = 100_000

export function writeRecord(file: string, configId: string, state: RecordState, extras: RecordExtras = {}): void {
  const record: ConfigRecord = { format: RECORD_FORMAT, version: 1, configId, state, updatedAt: new Date().toISOString() }
  if (extras.deltas !== undefined && extras.deltas.length > 0) record.deltas = extras.deltas
  if (extras.mapping !== undefined) record.mapping = extras.mapping
  writeFileAtomic(file, JSON.stringify(record) + '\n')
}

/** Read and check the record in `file`: one-line ManifestErrors naming the file and the problem. */
export function readRecord(file: string): ConfigRecord {
  let text: string
  try {
    const st = fs.statSync(file)
    // A record is a few hundred bytes plus ~30 per delta: anything far larger is not one.
    if (st.size > 64 * 1024 + MAX_DELTAS * 300) throw new ManifestError(`config-ID record ${file} is ${st.size} bytes: not a record`)
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if (err instanceof ManifestError) throw err
    throw new ManifestError(`config-ID record ${file} unreadable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  return parseRecord(text, file)
}

/** Check the text of the record in `file` (named in messages): readRecord without the I/O. */
export function parseRecord(text: string, file: string): ConfigRecord {
  let r: unknown
  try {
    r = JSON.parse(text)
  } catch {
    throw new ManifestError(`config-ID record ${file} is not valid JSON`)
  }
  const bad = (what: string): never => { throw new ManifestError(`config-ID record ${file}: ${what}`) }
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return bad('not a JSON object')
  const o = r as Record<string, unknown>
  if (o.format !== RECORD_FORMAT) bad(`format is ${JSON.stringify(o.format)}, expected "${RECORD_FORMAT}"`)
  if (o.version !== 1) bad(`unknown version ${JSON.stringify(o.version)}: this extfs reads version 1; upgrade extfs`)
  for (const k in o) if (!RECORD_KEYS.has(k)) bad(`unknown field ${JSON.stringify(k)}`)
  if (typeof o.configId !== 'string' || !CONFIG_ID.test(o.configId)) bad(`configId ${JSON.stringify(o.configId)} is invalid`)
  if (o.state !== 'current' && o.state !== 'released') bad(`unknown state ${JSON.stringify(o.state)}`)
  if (typeof o.updatedAt !== 'string') bad('updatedAt must be a string')
  if (o.deltas !== undefined) {
    if (!Array.isArray(o.deltas) || o.deltas.length > MAX_DELTAS) bad(`deltas must be an array of at most ${MAX_DELTAS} file names`)
    for (const d of o.deltas as unknown[]) {
      if (typeof d !== 'string' || !isDeltaName(d)) bad(`deltas: ${JSON.stringify(d)} is not a file name beside the record or an absolute path`)
    }
  }
  if (o.mapping !== undefined) {
    const m = o.mapping as Record<string, unknown> | null
    if (typeof m !== 'object' || m === null || typeof m.throughLoop !== 'boolean' || !Number.isSafeInteger(m.carryMax) || (m.carryMax as number) < 0 ||
        Object.keys(m).some((k) => k !== 'throughLoop' && k !== 'carryMax')) {
      bad(`mapping must be {throughLoop: boolean, carryMax: bytes}, got ${JSON.stringify(o.mapping)}`)
    }
  }
  return o as unknown as ConfigRecord
}

/** Like the manifest's configRecord: a plain name (beside the record) or an absolute path; no NUL. */
function isDeltaName(d: string): boolean {
  if (d.length === 0 || d.length > 4096 || d.includes('\0')) return false
  return d.startsWith('/') || (!d.includes('/') && d !== '.' && d !== '..')
}

/** Where a delta named in the record at `recordFile` lives. */
export function deltaPathOf(recordFile: string, name: string): string {
  return path.resolve(path.dirname(recordFile), name)
}

/** Where the record named in a manifest lives: relative names are beside the manifest. */
export function recordPath(manifestPath: string, configRecord: string): string {
  return path.resolve(path.dirname(manifestPath), configRecord)
}

/** A file's identity for change detection: the initiator replaces the record by rename, so any change shows. */
export function statsStamp(st: fs.Stats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`
}

/** statsStamp of `file`, '' when it cannot be stat'ed. */
export function fileStamp(file: string): string {
  try {
    return statsStamp(fs.statSync(file))
  } catch {
    return ''
  }
}

/** The verdict of one check: whether opens may be served. */
export type Verdict =
  | { ok: true }
  | { ok: false; reason: string }

/**
 * The verdict on the record's text: opens are served only while the record reads as readRecord reads
 * it (a record it refuses, of another version say, refuses opens too) and names this config ID, current.
 */
function judge(text: string, file: string, expectedId: string): Verdict {
  let r: ConfigRecord
  try {
    r = parseRecord(text, file)
  } catch (err) {
    return { ok: false, reason: (err as Error).message }
  }
  if (r.state === 'released') return { ok: false, reason: `frozen image ${r.configId} was released` }
  if (r.configId !== expectedId) return { ok: false, reason: `config ID changed from ${expectedId} to ${r.configId}` }
  return { ok: true }
}

/**
 * What the view asks on every open whose record changed (and every open and read once a lease
 * expired): may opens be served? (`file` is the record.) A promise when the answer needs the network.
 */
export interface ConfigCheck {
  readonly file: string
  check(): Verdict | Promise<Verdict>
}

/**
 * Checks the record for one expected config ID. Each check costs one stat(2); the file is re-read and
 * re-judged only when its identity (inode, size, mtime, ctime) changed, since the initiator always
 * replaces it by rename.
 */
export class ConfigWatch implements ConfigCheck {
  private stamp = ''
  private verdict: Verdict = { ok: false, reason: 'not checked yet' }

  constructor(readonly file: string, readonly expectedId: string) {}

  check(): Verdict {
    let st: fs.Stats
    try {
      st = fs.statSync(this.file)
    } catch (err) {
      this.stamp = ''
      return { ok: false, reason: `config-ID record ${this.file} unreadable: ${(err as NodeJS.ErrnoException).code}` }
    }
    const stamp = statsStamp(st)
    if (stamp !== this.stamp) {
      try {
        this.verdict = judge(fs.readFileSync(this.file, 'utf8'), this.file, this.expectedId)
        this.stamp = stamp
      } catch (err) {
        return { ok: false, reason: `config-ID record ${this.file} unreadable: ${(err as NodeJS.ErrnoException).code}` }
      }
    }
    return this.verdict
  }
}
