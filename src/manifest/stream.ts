// Streaming a manifest file: read in chunks, validate inode by inode, hand each inode to a sink (the
// native engine packs it straight into its tables) and forget it, so the whole object tree never
// exists and manifests past V8's ~512 MiB string limit load too.
//
// Framing: the top level is read as `{ "key": value, ... }`; every value but `inodes` is cut out of
// the text and JSON.parse'd; `inodes` is read element by element, each element JSON.parse'd on its
// own. JSON.parse of a part gives the same value as the part of JSON.parse of the whole, so each
// inode object is the one validateManifest would see. A value is found by a scan that tracks
// strings and nesting; the writer's layout (one inode per line, src/manifest/io.ts formatManifest)
// takes a faster path: the line is parsed as is, and a line that does not parse alone is scanned.
//
// What needs the whole manifest is checked after the stream: duplicate inode numbers, the root, the
// tree (by the sink: src/manifest/tree.ts TreeSink, on compact arrays) and the signature. Header fields
// are checked by validate.ts's own validateHeader once the inodes begin, so they must all come
// before `inodes` except `root` and `signature` (the writer puts `signature` last). A manifest laid
// out otherwise, or with a top-level key twice, throws CannotStream: the caller falls back to the
// whole-file path (readManifestFile), which is bounded by V8's string limit.
import fs from 'node:fs'
import { ManifestError, oneLine } from '../errors'
import { DEFAULT_MAX_MANIFEST_BYTES, isV2Path, openManifest, readCheckedManifest } from './io'
import { streamManifestV2 } from './v2/read'
import { V2_MAX_BYTES } from './v2/format'
import { CanonicalHmac, checkSignature } from './sign'
import type { Inode, Manifest, ManifestHeader } from './types'
import {
  checkEntries, checkInode, checkLateField, checkRoot, LIMITS, validateHeader,
  type HeaderFacts, type Totals,
} from './validate'

/** Receives the validated inodes, in file order; checks the tree once they are all in. */
export interface InodeSink {
  /** Once, before the first inode: the validated header (root and signature may be absent yet). */
  begin(header: Record<string, unknown>, facts: HeaderFacts): void
  /** Each inode, validated on its own (fields, extents, xattrs, its own entries); `i` is its position. */
  inode(n: Inode, i: number): void
  /** After the last inode: the checks that need them all (duplicates, root, tree). Throws ManifestError. */
  finish(root: number): void
}

export interface StreamOptions {
  /** Refuse files larger than this many bytes. */
  maxBytes: number
  /** Verify the signature with this key (after every other check). */
  key?: Buffer
  /** Bytes read at a time (default 4 MiB); tests and fuzzing use a few, to put chunk boundaries anywhere. */
  chunkBytes?: number
}

/** The file is valid JSON laid out in a way this reader does not stream; read it whole instead. */
export class CannotStream extends Error {}

const READ_CHUNK = 4 * 1024 * 1024

/** Top-level fields that must come before `inodes` to stream (the inode checks need them). */
const EARLY_FIELDS = ['format', 'version', 'features', 'configId', 'createdAt', 'source', 'frozenImage', 'configRecord',
  'blockSize', 'devices'] as const

/**
 * The manifest in `path` streamed into `sink`, checked and its signature verified with `key`; when its
 * layout cannot stream it is read whole instead (`whole`; the sink then saw nothing usable). The one
 * place that chooses between the two readers.
 */
export function streamOrReadManifest(path: string, sink: InodeSink, key?: Buffer): { header: ManifestHeader; whole?: Manifest } {
  if (isV2Path(path)) return { header: streamManifestV2(path, sink, key, V2_MAX_BYTES) }
  try {
    return { header: streamManifestFile(path, sink, { maxBytes: DEFAULT_MAX_MANIFEST_BYTES, key }) }
  } catch (err) {
    if (!(err instanceof CannotStream)) throw err
    const whole = readCheckedManifest(path, key)
    return { header: whole, whole }
  }
}

/**
 * The manifest's header (config ID, record, frozen image), checked whole and its signature verified
 * with `key`, without keeping its inodes.
 */
export function readManifestHeader(path: string, key?: Buffer): ManifestHeader {
  const ignore: InodeSink = { begin() {}, inode() {}, finish() {} }
  const { header, whole } = streamOrReadManifest(path, ignore, key)
  return whole ? withoutInodes(whole) : header
}

function withoutInodes(m: Manifest): ManifestHeader {
  const { inodes: _inodes, ...header } = m
  return header
}

/**
 * Validate the manifest in `path` while streaming its inodes to `sink`; returns the header.
 * Throws ManifestError with one line on any problem, CannotStream when the layout needs the whole-file path.
 */
export function streamManifestFile(path: string, sink: InodeSink, opts: StreamOptions): ManifestHeader {
  const fd = openManifest(path)
  try {
    const st = fs.fstatSync(fd)
    if (st.isDirectory()) throw new ManifestError(`manifest ${path} is a directory`)
    if (st.isFile()) checkSize(path, st.size, opts.maxBytes)
    return new ManifestStream(new TextSource(fd, path, opts.maxBytes, opts.chunkBytes ?? READ_CHUNK), sink, opts.key).run()
  } finally {
    fs.closeSync(fd)
  }
}


function checkSize(path: string, size: number, maxBytes: number): void {
  if (size > maxBytes) throw new ManifestError(`manifest ${path} is ${size} bytes, over the limit of ${maxBytes}`)
}

// ---------------------------------------------------------------------------------------------

class ManifestStream {
  private readonly header: Record<string, unknown> = {}
  private readonly seen = new Set<string>()
  private facts?: HeaderFacts
  private readonly hmac?: CanonicalHmac
  private count = 0
  private readonly totals: Totals = { extents: 0 }
  /** Whether the one-inode-per-line path still pays off (it stops after lines that do not parse alone). */
  private linesMiss = 0

  constructor(private readonly src: TextSource, private readonly sink: InodeSink, key: Buffer | undefined) {
    if (key) this.hmac = new CanonicalHmac(key)
  }

  run(): ManifestHeader {
    const src = this.src
    // Not an object, or an empty one: the whole-file path gives the exact message (and such files are small).
    if (src.skipWs() !== OPEN_BRACE) throw new CannotStream('not an object')
    src.pos++
    if (src.skipWs() === CLOSE_BRACE) throw new CannotStream('empty object')
    for (;;) {
      if (src.skipWs() !== QUOTE) src.syntax('expected a property name')
      const key = src.parse(src.value()) as string
      if (src.skipWs() !== COLON) src.syntax('expected ":"')
      src.pos++
      if (this.seen.has(key)) throw new CannotStream(`top-level field ${key} twice`) // JSON.parse keeps the last
      this.seen.add(key)
      if (key === 'inodes') this.inodes()
      else {
        const value = src.parse(src.value())
        if (this.facts !== undefined) checkLateField(key, value)
        // Own property even for "__proto__", as JSON.parse makes it.
        Object.defineProperty(this.header, key, { value, enumerable: true, writable: true, configurable: true })
      }
      const c = src.skipWs()
      src.pos++
      if (c === COMMA) continue
      if (c === CLOSE_BRACE) break
      src.pos--
      src.syntax('expected "," or "}"')
    }
    if (src.skipWs() !== -1) src.syntax('unexpected text after the manifest')
    if (this.facts === undefined) throw new CannotStream('no inodes') // the whole-file path names what is wrong

    const root = this.header.root
    checkRoot(root)
    this.sink.finish(root)
    if (this.hmac) {
      const hmac = this.hmac
      const after = Object.keys(this.header).filter((k) => k > 'inodes' && k !== 'signature').sort()
      for (const k of after) {
        hmac.raw(`,${JSON.stringify(k)}:`)
        hmac.value(this.header[k])
      }
      hmac.raw('}')
      checkSignature(this.header.signature as Manifest['signature'], () => hmac.digestHex())
    }
    return this.header as unknown as ManifestHeader
  }

  /** `"inodes": [` was reached: check the header, then stream the elements. */
  private inodes(): void {
    for (const k of EARLY_FIELDS) if (!this.seen.has(k)) throw new CannotStream(`${k} after inodes`)
    // Optional, but the inode checks need it when the manifest declares the feature.
    const features = this.header.features
    if (Array.isArray(features) && features.includes('data-checksums') && !this.seen.has('dataChecksums')) throw new CannotStream('dataChecksums after inodes')
    const facts = validateHeader(this.header)
    this.facts = facts
    const src = this.src
    if (src.skipWs() !== OPEN_BRACKET) throw new CannotStream('inodes is not an array') // refused by the whole-file path
    src.pos++
    this.sink.begin(this.header, facts)
    const hmac = this.hmac
    if (hmac) {
      // Canonical order: the keys sorting before "inodes" are all in the header by now (the required
      // ones checked above; validateHeader refused unknown ones); root and signature sort after it.
      hmac.raw('{')
      for (const k of Object.keys(this.header).filter((k) => k < 'inodes').sort()) {
        hmac.raw(`${JSON.stringify(k)}:`)
        hmac.value(this.header[k])
        hmac.raw(',')
      }
      hmac.raw('"inodes":[')
    }
    if (src.skipWs() === CLOSE_BRACKET) {
      src.pos++
      if (hmac) hmac.raw(']')
      return
    }
    for (let i = 0; ; i++) {
      if (i >= LIMITS.inodes) throw new ManifestError(`manifest: more than ${LIMITS.inodes} inodes, over the limit of ${LIMITS.inodes}`)
      const n = this.element() as Inode
      checkInode(n, i, facts, this.totals)
      if (n.kind === 'dir') checkEntries(n.entries as unknown[], n.ino, facts.byteNames)
      if (hmac) {
        if (i > 0) hmac.raw(',')
        hmac.value(n)
      }
      this.sink.inode(n, i)
      this.count++
      const c = src.skipWs()
      src.pos++
      if (c === COMMA) {
        src.skipWs()
        continue
      }
      if (c === CLOSE_BRACKET) break
      src.pos--
      src.syntax('expected "," or "]" after an inode')
    }
    if (hmac) hmac.raw(']')
  }

  /** One element of `inodes`, parsed; the cursor at its first character. */
  private element(): unknown {
    const src = this.src
    if (this.linesMiss < 8 && src.peek() === OPEN_BRACE) {
      const value = src.line()
      if (value !== undefined) {
        this.linesMiss = 0
        return value
      }
      this.linesMiss++
    }
    return src.parse(src.value())
  }
}

// ---------------------------------------------------------------------------------------------
// The text, decoded chunk by chunk (fatal UTF-8, as readManifestFile decodes it whole).

const QUOTE = 0x22
const COMMA = 0x2c
const COLON = 0x3a
const OPEN_BRACKET = 0x5b
const BACKSLASH = 0x5c
const CLOSE_BRACKET = 0x5d
const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d

function isWs(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09
}

/** Lines longer than this are not tried as one inode (a one-line manifest has a single huge line). */
const MAX_LINE = 1024 * 1024

class TextSource {
  /** Decoded text from `keep` on; what lies before was consumed. */
  text = ''
  pos = 0
  private eof = false
  private bytes = 0
  /** Characters of the text dropped so far, for positions in messages. */
  private dropped = 0
  private readonly decoder = new TextDecoder('utf-8', { fatal: true })
  private readonly buf: Buffer

  constructor(private readonly fd: number, private readonly path: string, private readonly maxBytes: number, chunkBytes: number) {
    this.buf = Buffer.allocUnsafe(chunkBytes)
  }

  /**
   * Appends the next chunk, dropping the text before `keep` (positions shift down by `keep`: the
   * caller rebases its own indexes by the return value). Returns -1 at the end of the file.
   */
  private more(keep: number): number {
    if (this.eof) return -1
    let n: number
    try {
      n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null)
    } catch (err) {
      throw new ManifestError(`cannot read manifest ${this.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    this.bytes += n
    checkSize(this.path, this.bytes, this.maxBytes) // pipes, and a file that grows meanwhile
    let decoded: string
    try {
      decoded = n === 0 ? this.decoder.decode() : this.decoder.decode(this.buf.subarray(0, n), { stream: true })
    } catch {
      throw new ManifestError(`manifest ${this.path} is not valid UTF-8`)
    }
    if (n === 0) this.eof = true
    this.text = this.text.slice(keep) + decoded
    this.pos -= keep
    this.dropped += keep
    return keep
  }

  /** Skips JSON whitespace; the character at the cursor, or -1 at the end of the file. */
  skipWs(): number {
    for (;;) {
      const t = this.text
      let i = this.pos
      while (i < t.length && isWs(t.charCodeAt(i))) i++
      this.pos = i
      if (i < t.length) return t.charCodeAt(i)
      if (this.more(i) < 0) return -1
    }
  }

  peek(): number {
    return this.pos < this.text.length ? this.text.charCodeAt(this.pos) : -1
  }

  /**
   * The rest of the line from the cursor parsed, when it holds exactly one JSON object (and maybe a
   * comma): then the cursor moves to its end. Undefined otherwise (the cursor stays). Sound because JSON
   * strings hold no raw newline and an object ends where its braces close: if the trimmed line parses
   * alone and starts with "{", it is exactly the element.
   */
  line(): unknown {
    let nl = this.text.indexOf('\n', this.pos)
    while (nl < 0 && !this.eof && this.text.length - this.pos < MAX_LINE) {
      this.more(this.pos)
      nl = this.text.indexOf('\n', this.pos)
    }
    if (nl < 0 || nl - this.pos > MAX_LINE) return undefined
    const t = this.text
    let end = nl
    while (end > this.pos && isWs(t.charCodeAt(end - 1))) end--
    if (end > this.pos && t.charCodeAt(end - 1) === COMMA) end--
    while (end > this.pos && isWs(t.charCodeAt(end - 1))) end--
    if (t.charCodeAt(end - 1) !== CLOSE_BRACE) return undefined
    let value: unknown
    try {
      value = JSON.parse(t.slice(this.pos, end))
    } catch {
      return undefined
    }
    this.pos = end
    return value
  }

  /** The text of the JSON value at the cursor (after whitespace); the cursor moves past it. */
  value(): string {
    const first = this.skipWs()
    if (first < 0) this.syntax('unexpected end of the manifest (truncated?)')
    let start = this.pos
    let i = start
    if (first === OPEN_BRACE || first === OPEN_BRACKET) {
      let depth = 0
      for (;;) {
        const t = this.text
        const n = t.length
        let done = false
        while (i < n) {
          const c = t.charCodeAt(i)
          if (c === QUOTE) {
            const close = closingQuote(t, i + 1)
            if (close < 0) break // the string continues in the next chunk: rescan it from its quote
            i = close + 1
            continue
          }
          if (c === OPEN_BRACE || c === OPEN_BRACKET) depth++
          else if ((c === CLOSE_BRACE || c === CLOSE_BRACKET) && --depth === 0) {
            i++
            done = true
            break
          }
          i++
        }
        if (done) break
        const shift = this.more(start)
        if (shift < 0) this.syntax('unexpected end of the manifest (truncated?)')
        start -= shift
        i -= shift
      }
    } else if (first === QUOTE) {
      for (;;) {
        const close = closingQuote(this.text, i + 1)
        if (close >= 0) {
          i = close + 1
          break
        }
        const shift = this.more(start)
        if (shift < 0) this.syntax('unexpected end of the manifest (truncated?)')
        start -= shift
        i -= shift
      }
    } else {
      // A number, true, false or null: up to the next delimiter. JSON.parse judges what it is.
      for (;;) {
        const t = this.text
        while (i < t.length) {
          const c = t.charCodeAt(i)
          if (c === COMMA || c === CLOSE_BRACE || c === CLOSE_BRACKET || isWs(c)) break
          i++
        }
        if (i < t.length) break
        const shift = this.more(start)
        if (shift < 0) break
        start -= shift
        i -= shift
      }
    }
    this.pos = i
    return this.text.slice(start, i)
  }

  parse(text: string): unknown {
    try {
      return JSON.parse(text)
    } catch (err) {
      return this.syntax(oneLine((err as Error).message), this.pos - text.length)
    }
  }

  syntax(what: string, at = this.pos): never {
    throw new ManifestError(`manifest is not valid JSON (truncated?): ${what} (near character ${this.dropped + at})`)
  }
}

/** Index of the quote that closes a string whose text starts at `from`, or -1 if it is not in `t` yet. */
function closingQuote(t: string, from: number): number {
  let j = t.indexOf('"', from)
  while (j >= 0) {
    let k = j - 1
    while (t.charCodeAt(k) === BACKSLASH) k--
    if ((j - 1 - k) % 2 === 0) return j
    j = t.indexOf('"', j + 1)
  }
  return -1
}

