// Request and response authentication for `extfs serve` (docs/remap.md, "extfs serve and leases").
// Both hosts hold the shared key. Every request carries a timestamp, a fresh nonce and an HMAC over
// method, path (with its query), time, nonce and the body's SHA-256; every response carries an HMAC over
// its status, the request's nonce and its body's SHA-256, so an answer cannot be forged or replayed
// into another request. Pure functions plus one verifier: the nonce store is injected (SQLite in serve).
import crypto from 'node:crypto'
import type { RefusalReason } from './metrics'

export const TIME_HEADER = 'x-extfs-time'
export const NONCE_HEADER = 'x-extfs-nonce'
export const AUTH_HEADER = 'x-extfs-auth'

/** Default allowed difference between the request's clock and ours, ms (either direction). */
export const DEFAULT_SKEW_MS = 60_000

const TIME_RE = /^[0-9]{1,16}$/
const NONCE_RE = /^[0-9a-f]{32}$/
const MAC_RE = /^[0-9a-f]{64}$/

export function sha256Hex(body: Buffer | string): string {
  return crypto.createHash('sha256').update(body).digest('hex')
}

/**
 * HMAC-SHA256(key, method + "\n" + path + "\n" + time + "\n" + nonce + "\n" + sha256hex(body)), hex.
 * `path` is the request target exactly as sent, query included (`/images/a/config?after=x&wait=1000`),
 * so neither the resource nor its parameters can be changed in transit.
 */
export function requestMac(key: Buffer, method: string, path: string, time: string, nonce: string, bodySha256Hex: string): string {
  return crypto.createHmac('sha256', key).update(`${method}\n${path}\n${time}\n${nonce}\n${bodySha256Hex}`, 'utf8').digest('hex')
}

/** HMAC-SHA256(key, status + "\n" + requestNonce + "\n" + sha256hex(body)), hex. */
export function responseMac(key: Buffer, status: number, requestNonce: string, bodySha256Hex: string): string {
  return crypto.createHmac('sha256', key).update(`${status}\n${requestNonce}\n${bodySha256Hex}`, 'utf8').digest('hex')
}

export interface SignedRequestHeaders {
  'X-Extfs-Time': string
  'X-Extfs-Nonce': string
  'X-Extfs-Auth': string
}

/** The three headers of a request; `now` (unix ms) and `nonce` are for tests. */
export function signRequest(key: Buffer, method: string, path: string, body: Buffer | string = '', now = Date.now(), nonce = crypto.randomBytes(16).toString('hex')): SignedRequestHeaders {
  const time = String(now)
  return { 'X-Extfs-Time': time, 'X-Extfs-Nonce': nonce, 'X-Extfs-Auth': requestMac(key, method, path, time, nonce, sha256Hex(body)) }
}

/** Where seen nonces are remembered until they could no longer pass the time check anyway. */
export interface NonceStore {
  /** Records `nonce` until `expiresAt` (unix ms); false when it is already recorded (a replay). */
  claim(nonce: string, expiresAt: number, now: number): boolean
  /**
   * Unix ms from which the store has seen every nonce claimed (serve's SQLite store: when it was
   * opened, since it may be a fresh start or an old copy); requests signed before it are refused, as
   * their nonces cannot be checked. Absent: the store remembers everything still inside the skew.
   */
  readonly since?: number
}

/** A nonce store in memory (tests, and a fallback); serve uses the SQLite one so a restart keeps it. */
export class MemoryNonceStore implements NonceStore {
  private readonly seen = new Map<string, number>()
  claim(nonce: string, expiresAt: number, now: number): boolean {
    if (this.seen.size > 10_000) for (const [n, exp] of this.seen) if (exp < now) this.seen.delete(n)
    const exp = this.seen.get(nonce)
    if (exp !== undefined && exp >= now) return false
    this.seen.set(nonce, expiresAt)
    return true
  }
}

/** Why the verifier refused a request (serve counts refusals by it). */
export type AuthRefusal = Extract<RefusalReason, 'unauthenticated' | 'malformed_auth' | 'skew' | 'bad_signature' | 'replay'>

export type RequestVerdict =
  | { ok: true; nonce: string }
  /** `nonce`: the request's nonce when it was well-formed, so even a refusal can be answered with a MAC. */
  | { ok: false; reason: AuthRefusal; error: string; nonce?: string }

type HeaderBag = Record<string, string | string[] | undefined>

/**
 * Checks a request's headers and body. Order matters: the cheap format and time checks first, the nonce
 * is claimed only after the MAC verified, so a forger can neither fill the store nor burn a real
 * client's nonce.
 */
export class RequestVerifier {
  constructor(private readonly key: Buffer, private readonly nonces: NonceStore, readonly skewMs = DEFAULT_SKEW_MS) {}

  verify(method: string, path: string, headers: HeaderBag, body: Buffer, now = Date.now()): RequestVerdict {
    const time = single(headers[TIME_HEADER])
    const nonceRaw = single(headers[NONCE_HEADER])
    const mac = single(headers[AUTH_HEADER])
    if (time === undefined || nonceRaw === undefined || mac === undefined) {
      return { ok: false, reason: 'unauthenticated', error: 'missing X-Extfs-Time, X-Extfs-Nonce or X-Extfs-Auth header' }
    }
    if (!NONCE_RE.test(nonceRaw)) return { ok: false, reason: 'malformed_auth', error: 'X-Extfs-Nonce must be 16 bytes in lower-case hex' }
    const nonce = nonceRaw
    if (!TIME_RE.test(time)) return { ok: false, reason: 'malformed_auth', error: 'X-Extfs-Time must be unix milliseconds', nonce }
    if (!MAC_RE.test(mac)) return { ok: false, reason: 'malformed_auth', error: 'X-Extfs-Auth must be an HMAC-SHA256 in lower-case hex', nonce }
    const skew = Number(time) - now
    if (Math.abs(skew) > this.skewMs) {
      return { ok: false, reason: 'skew', error: `request time is ${Math.round(skew / 1000)} s off this host's clock (allowed ±${this.skewMs / 1000} s)`, nonce }
    }
    const expected = Buffer.from(requestMac(this.key, method, path, time, nonce, sha256Hex(body)), 'hex')
    if (!crypto.timingSafeEqual(expected, Buffer.from(mac, 'hex'))) {
      return { ok: false, reason: 'bad_signature', error: 'request signature does not match: altered, or signed with another key', nonce }
    }
    if (this.nonces.since !== undefined && Number(time) < this.nonces.since) {
      return { ok: false, reason: 'replay', error: 'request signed before this serve started: it may be a replay (its nonce is not known from before the start); sign it again', nonce }
    }
    // A request older than now - skew is refused above, so the nonce need not be kept past time + skew.
    if (!this.nonces.claim(nonce, Number(time) + this.skewMs, now)) return { ok: false, reason: 'replay', error: 'nonce already used: replayed request', nonce }
    return { ok: true, nonce }
  }
}

/** True when `mac` (a header value) is the response MAC of (status, nonce, body) under `key`. */
export function verifyResponseMac(key: Buffer, status: number, requestNonce: string, body: Buffer, mac: string | string[] | undefined): boolean {
  const given = single(mac)
  if (given === undefined || !MAC_RE.test(given)) return false
  const expected = Buffer.from(responseMac(key, status, requestNonce, sha256Hex(body)), 'hex')
  return crypto.timingSafeEqual(expected, Buffer.from(given, 'hex'))
}

function single(v: string | string[] | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined
}
