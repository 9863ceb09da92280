// The wire format of `extfs serve`: what each route answers and how each side checks it. Both ends
// import this module (server.ts and http.ts answer, client.ts asks), so the two cannot drift apart.
// Every request is signed and every answer carries a MAC (auth.ts); this module says what is inside.
//
//   GET  /images                                  {"images": [name...]}
//   GET  /images/:name/manifest                   the manifest file's bytes
//   GET  /images/:name/config?after=<c>&wait=<ms> ConfigAnswer, held up to wait ms until it changes
//   GET  /images/:name/deltas/:seq                delta seq's bytes
//   POST /images/:name/remap                      RemapAnswer
import path from 'node:path'
import { CONFIG_ID } from '../manifest/validate'
import { MAX_DELTAS } from '../configid/record'
import { ExitCode, ExtfsError } from '../errors'

/** Image names: the manifest's base name without `.json`; no dot first, so never `.` or `..`. */
export const IMAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** The longest a config request may be held open, ms. */
export const MAX_WAIT_MS = 60_000

export type ConfigAnswerState = 'current' | 'released' | 'unknown'

/** Longest `reason` of an unknown answer, characters. */
const MAX_REASON_CHARS = 4096

/** A config answer: what the mover needs to follow the chain and how long it may trust it. */
export interface ConfigAnswer {
  /** c0: the manifest's config ID. */
  image: string
  configId: string
  /**
   * released: final. current: the config-ID record proves configId current (and serve does not
   * remember the image released). unknown: neither serve's state nor the record can prove it current
   * (the record is unreadable or invalid): not current, movers refuse opens; `reason` says why.
   */
  state: ConfigAnswerState
  /** Why the state is unknown (one line); only with unknown. */
  reason?: string
  /** Sequence numbers of every delta of the chain, 1..k. */
  deltas: number[]
  leaseMs: number
  /** How long the server held the request before answering, ms: the answer was true at least that long after the request was sent. */
  heldMs: number
}

/** What a remap asked for did. */
export interface RemapAnswer {
  state: 'unchanged' | 'remapped' | 'released'
  /** The config ID current after it (the record's when released). */
  configId: string
  /** How many deltas of the chain lead to configId; absent when released, or when serve's chain does not reach it. */
  seq?: number
  deltaBytes?: number
  manifestBytes: number
}

/** The query of GET config: `after` a config ID, `wait` milliseconds (capped at MAX_WAIT_MS). */
export interface ConfigQuery {
  after?: string
  waitMs: number
}

export function formatConfigQuery(q: ConfigQuery): string {
  const p = new URLSearchParams()
  if (q.after !== undefined) p.set('after', q.after)
  if (q.waitMs > 0) p.set('wait', String(q.waitMs))
  const s = p.toString()
  return s ? `?${s}` : ''
}

/** The query as the server reads it, or the one line that refuses it. */
export function parseConfigQuery(p: URLSearchParams): ConfigQuery | { error: string } {
  const after = p.get('after') ?? undefined
  const waitText = p.get('wait') ?? '0'
  if (after !== undefined && !CONFIG_ID.test(after)) return { error: 'after must be a config ID' }
  if (!/^[0-9]{1,9}$/.test(waitText)) return { error: 'wait must be milliseconds' }
  return { after, waitMs: Math.min(Number(waitText), MAX_WAIT_MS) }
}

/**
 * A config answer as the client reads it: undefined when any field is missing or out of shape. The
 * mover names the image in messages and mirrors the chain as a record (src/mover/remote.ts), so the
 * image is a config ID and the chain no longer than a record may hold.
 */
export function parseConfigAnswer(v: Record<string, unknown>): ConfigAnswer | undefined {
  const ok = isConfigId(v.image) && isConfigId(v.configId) && (v.state === 'current' || v.state === 'released' || v.state === 'unknown') &&
    (v.reason === undefined || (typeof v.reason === 'string' && v.reason.length <= MAX_REASON_CHARS)) && Array.isArray(v.deltas) &&
    v.deltas.length <= MAX_DELTAS && v.deltas.every((s: unknown, i: number) => s === i + 1) && isCount(v.leaseMs) && isCount(v.heldMs)
  return ok ? (v as unknown as ConfigAnswer) : undefined
}

/** A remap answer as the client reads it: undefined when out of shape (byte counts are counts). */
export function parseRemapAnswer(v: Record<string, unknown>): RemapAnswer | undefined {
  const ok = (v.state === 'unchanged' || v.state === 'remapped' || v.state === 'released') && isConfigId(v.configId) &&
    (v.seq === undefined || isCount(v.seq)) && (v.deltaBytes === undefined || isCount(v.deltaBytes)) && isCount(v.manifestBytes)
  return ok ? (v as unknown as RemapAnswer) : undefined
}

/** `/shared/nightly.json` → `nightly`; refuses names a URL path could not carry safely. */
export function imageNameOf(manifestPath: string): string {
  const name = path.basename(manifestPath).replace(/\.json$/, '')
  if (!IMAGE_NAME.test(name)) {
    throw new ExtfsError(ExitCode.Usage, `${manifestPath}: image name ${JSON.stringify(name)} must be letters, digits, '.', '_' or '-' (not first), at most 128`)
  }
  return name
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0
}

function isConfigId(v: unknown): v is string {
  return typeof v === 'string' && CONFIG_ID.test(v)
}
