// Manifest signing: an HMAC-SHA256, with a key both hosts share, over the canonical JSON of the
// manifest without its `signature` field. Canonical JSON makes the signature independent of how the
// file was formatted (indentation, key order), so any writer can produce it and any reader check it.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { ExtfsError, ManifestError, ExitCode } from '../errors'
import type { Manifest } from './types'

export const MIN_KEY_BYTES = 16
/** A key file longer than this is a mistake (pointed at the wrong file), not a key. */
const MAX_KEY_FILE_BYTES = 64 * 1024

/**
 * The canonical JSON text of `value`: object keys sorted (JavaScript's default order, by UTF-16 code
 * units), no whitespace, arrays in order, strings and numbers written as JSON.stringify writes them,
 * object fields whose value is `undefined` left out (as JSON.stringify does).
 * Example: canonicalJson({b: [1, {d: 'x', c: null}], a: true}) === '{"a":true,"b":[1,{"c":null,"d":"x"}]}'
 * Throws TypeError on values JSON cannot hold exactly (NaN, Infinity, bigint, functions, undefined in arrays).
 */
export function canonicalJson(value: unknown): string {
  const parts: string[] = []
  writeCanonical(value, (chunk) => parts.push(chunk))
  return parts.join('')
}

/** A copy of `m` with a signature over everything else in it (an existing signature is replaced). */
export function signManifest(m: Manifest, key: Buffer): Manifest {
  const body = withoutSignature(m)
  return { ...body, signature: { alg: 'hmac-sha256', value: hmacHex(body, key) } }
}

/** Throws ManifestError unless `m` carries a valid signature made with `key`. */
export function verifyManifestSignature(m: Manifest, key: Buffer): void {
  checkSignature(m.signature, () => hmacHex(withoutSignature(m), key))
}

/**
 * Throws ManifestError unless `sig` is an hmac-sha256 signature equal to the HMAC `expectedHex()`
 * computes (constant-time comparison). Shared by verifyManifestSignature and the streaming loader,
 * which computes the HMAC with CanonicalHmac as the manifest streams by.
 */
export function checkSignature(sig: Manifest['signature'] | null, expectedHex: () => string): void {
  if (sig === undefined || sig === null) throw new ManifestError('manifest is not signed but --key was given')
  if (sig.alg !== 'hmac-sha256') {
    throw new ManifestError(`manifest signature algorithm ${JSON.stringify(sig.alg)} is not supported (expected hmac-sha256)`)
  }
  const expected = Buffer.from(expectedHex(), 'hex')
  const given = typeof sig.value === 'string' && /^[0-9a-f]{64}$/.test(sig.value) ? Buffer.from(sig.value, 'hex') : undefined
  if (given === undefined || !crypto.timingSafeEqual(given, expected)) {
    throw new ManifestError('manifest signature does not match: altered, or signed with another key')
  }
}

/**
 * An HMAC over canonical JSON written piece by piece: `raw` for structure the caller lays out itself
 * (braces, keys, commas), `value` for a whole value in canonical form. The streaming loader writes
 * `{` + the sorted top-level pairs before "inodes" + `"inodes":[` + each inode + `]` + the pairs
 * after it + `}`, which is exactly canonicalJson of the manifest without its signature.
 */
export class CanonicalHmac {
  private readonly hmac: crypto.Hmac
  private readonly out: ChunkWriter

  constructor(key: Buffer) {
    const hmac = crypto.createHmac('sha256', key)
    this.hmac = hmac
    this.out = new ChunkWriter((chunk) => hmac.update(chunk, 'utf8'))
  }

  raw(text: string): void {
    this.out.push(text)
  }

  value(v: unknown): void {
    writeValue(v, this.out)
  }

  digestHex(): string {
    this.out.flush()
    return this.hmac.digest('hex')
  }
}

/**
 * The key in `path`: the file's bytes with trailing whitespace (a final newline from `echo` or an
 * editor) removed. At least MIN_KEY_BYTES bytes, e.g. from `head -c 32 /dev/urandom > key`.
 */
export function readKeyFile(path: string): Buffer {
  let raw: Buffer
  try {
    raw = readBounded(path, MAX_KEY_FILE_BYTES + 1)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new ExtfsError(ExitCode.Usage, `key file ${path} does not exist`)
    throw new ExtfsError(ExitCode.Usage, `cannot read key file ${path}: ${code ?? (err as Error).message}`)
  }
  if (raw.length > MAX_KEY_FILE_BYTES) {
    throw new ExtfsError(ExitCode.Usage, `key file ${path} is over ${MAX_KEY_FILE_BYTES} bytes: not a key file?`)
  }
  let end = raw.length
  while (end > 0 && isWhitespace(raw[end - 1]!)) end--
  if (end < MIN_KEY_BYTES) {
    throw new ExtfsError(ExitCode.Usage, `key file ${path} is too short (need ${MIN_KEY_BYTES} bytes or more)`)
  }
  return Buffer.from(raw.subarray(0, end)) // a copy: do not pin the 64 KiB read buffer
}

// ---------------------------------------------------------------------------------------------

function withoutSignature(m: Manifest): Omit<Manifest, 'signature'> {
  const { signature: _ignored, ...body } = m
  return body
}

/**
 * HMAC of the canonical JSON, fed in chunks: a large manifest's canonical text can exceed the
 * longest string V8 can hold (about 512 MiB), so it is never built in one piece here.
 */
function hmacHex(body: unknown, key: Buffer): string {
  const hmac = crypto.createHmac('sha256', key)
  writeCanonical(body, (chunk) => hmac.update(chunk, 'utf8'))
  return hmac.digest('hex')
}

/** Streams canonical JSON to `emit` in chunks of roughly CHUNK_PARTS pieces. */
function writeCanonical(value: unknown, emit: (chunk: string) => void): void {
  const out = new ChunkWriter(emit)
  writeValue(value, out)
  out.flush()
}

const CHUNK_PARTS = 8192

class ChunkWriter {
  private parts: string[] = []
  constructor(private readonly emit: (chunk: string) => void) {}
  push(s: string): void {
    this.parts.push(s)
    if (this.parts.length >= CHUNK_PARTS) this.flush()
  }
  flush(): void {
    if (this.parts.length > 0) this.emit(this.parts.join(''))
    this.parts = []
  }
}

function writeValue(v: unknown, out: ChunkWriter): void {
  switch (typeof v) {
    case 'string':
      out.push(JSON.stringify(v))
      return
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`canonicalJson: ${v} has no JSON form`)
      out.push(JSON.stringify(v))
      return
    case 'boolean':
      out.push(v ? 'true' : 'false')
      return
    case 'object':
      if (v === null) out.push('null')
      else if (Array.isArray(v)) writeArray(v, out)
      else writeObject(v as Record<string, unknown>, out)
      return
    default:
      throw new TypeError(`canonicalJson: a ${typeof v} has no JSON form`)
  }
}

function writeArray(a: unknown[], out: ChunkWriter): void {
  out.push('[')
  for (let i = 0; i < a.length; i++) {
    if (i > 0) out.push(',')
    if (a[i] === undefined) throw new TypeError(`canonicalJson: undefined at array index ${i}`)
    writeValue(a[i], out)
  }
  out.push(']')
}

function writeObject(o: Record<string, unknown>, out: ChunkWriter): void {
  const keys = Object.keys(o).sort()
  out.push('{')
  let first = true
  for (const k of keys) {
    const v = o[k]
    if (v === undefined) continue
    out.push(first ? JSON.stringify(k) + ':' : ',' + JSON.stringify(k) + ':')
    first = false
    writeValue(v, out)
  }
  out.push('}')
}

function isWhitespace(byte: number): boolean {
  // space, \t, \n, \v, \f, \r
  return byte === 0x20 || (byte >= 0x09 && byte <= 0x0d)
}

/** Reads at most `limit` bytes of `path` (works for pipes and devices too, which fstat cannot size). */
function readBounded(path: string, limit: number): Buffer {
  const fd = fs.openSync(path, 'r')
  try {
    const buf = Buffer.alloc(limit)
    let got = 0
    while (got < limit) {
      const n = fs.readSync(fd, buf, got, limit - got, null)
      if (n === 0) break
      got += n
    }
    return buf.subarray(0, got)
  } finally {
    fs.closeSync(fd)
  }
}
