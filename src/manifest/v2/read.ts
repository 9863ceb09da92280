// Reading manifest format version 2 (docs/manifest-v2.md) in TypeScript: the reference reader. It
// turns records back into v1 inode objects and holds them to exactly version 1's checks
// (validate.ts checkInode, checkEntries, and the sink's tree check), so both versions obey one set of
// rules; the view's own loader reads version 2 in C without building objects (native/view/load2.c).
//
// Two passes over the body, through a bounded window: the first notes where each DIR record starts
// (one number per directory), the second reads the INODE records and, for each directory, its DIR
// record again. The HMAC is checked in a pass of its own before anything else is believed.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { ManifestError, oneLine } from '../../errors'
import { openManifest } from '../file'
import { decodeName } from '../names'
import { checkSignature } from '../sign'
import type { DirEntry, Extent, Inode, ManifestHeader } from '../types'
import { checkEntries, checkInode, checkRoot, validateHeader, LIMITS, type HeaderFacts, type Totals } from '../validate'
import { getVarint, unzigzag } from './varint'
import {
  decodeTrailer, EXT_COMPRESSED, EXT_CSUMS, HAS_ALL, HAS_ATTRS, HAS_INLINE, HAS_RDEV, HAS_XATTRS, HEADER_MAX, kindOfMode,
  MAC_BYTES, PREAMBLE, TAG_DIR, TAG_INODE, TRAILER_BYTES, V2_VERSION, type Trailer, type TrailerCounts,
} from './format'
import type { InodeSink } from '../stream'

const WINDOW = 1024 * 1024
const COMPRESSION_NAMES = ['', 'zlib', 'lzo', 'zstd'] as const

/** The file begins with version 2's preamble. */
export function isV2File(fd: number): boolean {
  const b = Buffer.alloc(PREAMBLE.length)
  return fs.readSync(fd, b, 0, b.length, 0) === b.length && b.equals(PREAMBLE)
}

/** Where a version 2 file's parts lie, and its validated header. */
export interface V2Layout {
  header: Record<string, unknown>
  facts: HeaderFacts
  bodyStart: number
  bodyEnd: number
  trailer: Trailer
}

/**
 * Stream the version 2 manifest in `path` into `sink`, checked as version 1 is; the signature verified
 * with `key` first. Returns the header, with the trailer's MAC as its `signature` when signed.
 */
export function streamManifestV2(path: string, sink: InodeSink, key?: Buffer, maxBytes = Number.MAX_SAFE_INTEGER): ManifestHeader {
  const fd = openManifest(path)
  try {
    const layout = readLayout(fd, path, maxBytes)
    if (key) verifyMac(fd, path, layout, key)
    new BodyReader(fd, path, layout, sink).run()
    return headerOf(layout)
  } finally {
    fs.closeSync(fd)
  }
}

const NO_SINK: InodeSink = { begin() {}, inode() {}, finish() {} }

export interface PullOptions {
  /**
   * false: directories come with no entries, and their DIR records are only counted (held to the
   * trailer), not decoded or checked: for a reader that uses no names (remap joins by ino). Most of
   * the reader's time and garbage is in the names.
   */
  entries?: boolean
}

/** A version 2 body being read inode by inode (openManifestV2, openBodyV2); close() when done. */
export interface V2Inodes {
  /** The validated header (a manifest's: with the trailer's MAC as its signature when signed). */
  header: ManifestHeader
  /** Every INODE record in ascending ino order, each checked as version 1 checks an inode; not the tree. */
  inodes: Iterable<Inode>
  close(): void
}

/**
 * The inodes of the version 2 manifest in `path`, pulled one at a time (remap joins two such streams
 * by ino), its signature verified with `key` first. The same reader and checks as streamManifestV2.
 */
export function openManifestV2(path: string, key?: Buffer, opts: PullOptions = {}): V2Inodes {
  const fd = openManifest(path)
  try {
    const layout = readLayout(fd, path, Number.MAX_SAFE_INTEGER)
    if (key) verifyMac(fd, path, layout, key)
    return pulled(fd, path, layout, headerOf(layout), opts)
  } catch (err) {
    fs.closeSync(fd)
    throw err
  }
}

/** The header of the version 2 manifest in `path`, the signature verified with `key`; the body is not read. */
export function readHeaderV2(path: string, key?: Buffer, maxBytes = Number.MAX_SAFE_INTEGER): ManifestHeader {
  const fd = openManifest(path)
  try {
    const layout = readLayout(fd, path, maxBytes)
    if (key) verifyMac(fd, path, layout, key)
    return headerOf(layout)
  } finally {
    fs.closeSync(fd)
  }
}

/** The header as a manifest's: the trailer's MAC stands for v1's signature field (what `inspect` shows). */
function headerOf(layout: V2Layout): ManifestHeader {
  const { signed, mac } = layout.trailer
  return { ...layout.header, ...(signed ? { signature: { alg: 'hmac-sha256', value: mac.toString('hex') } } : {}) } as unknown as ManifestHeader
}

/**
 * A bare body (what a bulk mapper writes: no preamble, header or trailer) read as the body of a
 * manifest with `header` and the mapper's `counts`; unsigned, for the host's own scratch files.
 */
export function openBodyV2(path: string, header: Record<string, unknown>, counts: TrailerCounts, opts: PullOptions = {}): V2Inodes {
  const fd = openManifest(path)
  try {
    const facts = validateHeader(header, V2_VERSION)
    checkRoot(header.root)
    const layout: V2Layout = { header, facts, bodyStart: 0, bodyEnd: fs.fstatSync(fd).size, trailer: { ...counts, signed: false, mac: Buffer.alloc(MAC_BYTES) } }
    return pulled(fd, path, layout, header as unknown as ManifestHeader, opts)
  } catch (err) {
    fs.closeSync(fd)
    throw err
  }
}

function pulled(fd: number, path: string, layout: V2Layout, header: ManifestHeader, opts: PullOptions): V2Inodes {
  const inodes = new BodyReader(fd, path, layout, NO_SINK, opts.entries ?? true).inodes()
  let open = true
  const close = () => {
    if (open) fs.closeSync(fd)
    open = false
  }
  return { header, inodes, close }
}

/** Preamble, header and trailer: read and checked, the body's bounds known. */
export function readLayout(fd: number, path: string, maxBytes: number): V2Layout {
  const st = fs.fstatSync(fd)
  if (!st.isFile()) throw new ManifestError(`manifest ${path} is not a regular file: version 2 is read from a file`)
  if (st.size > maxBytes) throw new ManifestError(`manifest ${path} is ${st.size} bytes, over the limit of ${maxBytes}`)
  const fixed = PREAMBLE.length + 4
  if (st.size < fixed + TRAILER_BYTES) throw new ManifestError(`manifest ${path} is ${st.size} bytes: too short for version 2 (truncated?)`)
  const head = readAt(fd, 0, fixed)
  if (!head.subarray(0, PREAMBLE.length).equals(PREAMBLE)) throw new ManifestError(`manifest ${path} is not a version 2 manifest`)
  const headerLen = head.readUInt32LE(PREAMBLE.length)
  if (headerLen < 1 || headerLen > HEADER_MAX || fixed + headerLen + TRAILER_BYTES > st.size) {
    throw new ManifestError(`manifest ${path}: header length ${headerLen} does not fit the file (${st.size} bytes; at most ${HEADER_MAX})`)
  }
  const header = parseHeader(readAt(fd, fixed, headerLen), path)
  const facts = validateHeader(header, V2_VERSION)
  checkRoot(header.root)
  const trailer = decodeTrailer(readAt(fd, st.size - TRAILER_BYTES, TRAILER_BYTES), path)
  return { header, facts, bodyStart: fixed + headerLen, bodyEnd: st.size - TRAILER_BYTES, trailer }
}

function parseHeader(bytes: Buffer, path: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new ManifestError(`manifest ${path}: header is not valid JSON: ${oneLine((err as Error).message)}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ManifestError(`manifest ${path}: header must be a JSON object`)
  for (const k of ['inodes', 'signature']) if (Object.hasOwn(value, k)) throw new ManifestError(`manifest ${path}: a version 2 header has no ${JSON.stringify(k)}`)
  return value as Record<string, unknown>
}

/** HMAC-SHA256 over everything before the MAC, compared in constant time (one line on failure, as v1). */
export function verifyMac(fd: number, path: string, layout: V2Layout, key: Buffer): void {
  const end = layout.bodyEnd + TRAILER_BYTES - MAC_BYTES
  const hmac = crypto.createHmac('sha256', key)
  const chunk = Buffer.alloc(WINDOW)
  for (let at = 0; at < end;) {
    const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, end - at), at)
    if (n <= 0) throw new ManifestError(`manifest ${path}: short read at ${at}`)
    hmac.update(chunk.subarray(0, n))
    at += n
  }
  const mac = hmac.digest('hex')
  checkSignature(layout.trailer.signed ? { alg: 'hmac-sha256', value: layout.trailer.mac.toString('hex') } : undefined, () => mac)
}

/**
 * Whether the body of the version 2 manifest in `path` is byte for byte the bare body in `bodyPath`
 * (what a bulk mapper writes), the signature verified with `key` in the same pass, so that the bytes
 * compared are the bytes verified. Sizes that differ answer false at once, nothing verified.
 */
export function sameBodyV2(path: string, bodyPath: string, key?: Buffer): boolean {
  const fd = openManifest(path)
  let bodyFd = -1
  try {
    const layout = readLayout(fd, path, Number.MAX_SAFE_INTEGER)
    bodyFd = fs.openSync(bodyPath, 'r')
    if (fs.fstatSync(bodyFd).size !== layout.bodyEnd - layout.bodyStart) return false
    const end = layout.bodyEnd + TRAILER_BYTES - MAC_BYTES
    const hmac = key ? crypto.createHmac('sha256', key) : undefined
    const chunk = Buffer.alloc(WINDOW)
    const other = Buffer.alloc(WINDOW)
    for (let at = 0; at < end;) {
      const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, end - at), at)
      if (n <= 0) throw new ManifestError(`manifest ${path}: short read at ${at}`)
      hmac?.update(chunk.subarray(0, n))
      const from = Math.max(at, layout.bodyStart)
      const to = Math.min(at + n, layout.bodyEnd)
      if (from < to) {
        const len = to - from
        if (fs.readSync(bodyFd, other, 0, len, from - layout.bodyStart) !== len) return false
        if (!chunk.subarray(from - at, to - at).equals(other.subarray(0, len))) return false
      }
      at += n
    }
    if (hmac) {
      const mac = hmac.digest('hex')
      checkSignature(layout.trailer.signed ? { alg: 'hmac-sha256', value: layout.trailer.mac.toString('hex') } : undefined, () => mac)
    }
    return true
  } finally {
    if (bodyFd >= 0) fs.closeSync(bodyFd)
    fs.closeSync(fd)
  }
}

function readAt(fd: number, at: number, len: number): Buffer {
  const b = Buffer.alloc(len)
  let done = 0
  while (done < len) {
    const n = fs.readSync(fd, b, done, len - done, at + done)
    if (n <= 0) throw new ManifestError(`short read of ${len} bytes at ${at}`)
    done += n
  }
  return b
}

/** The body through a bounded window: fields are read whole (at most 64 KiB and a length). */
class Window {
  private buf = Buffer.alloc(WINDOW)
  /** File offset of buf[0], and the valid bytes in buf. */
  private base = 0
  private len = 0
  pos: number

  constructor(private readonly fd: number, private readonly end: number, start: number, private readonly bad: (what: string) => never) {
    this.pos = start
  }

  get atEnd(): boolean {
    return this.pos >= this.end
  }

  /** `n` bytes from pos are in the window (refilled from the file as needed). */
  private ensure(n: number): void {
    if (this.pos + n > this.end) this.bad(`runs past the end of the body (a field of ${n} bytes at ${this.pos})`)
    if (this.pos >= this.base && this.pos + n <= this.base + this.len) return
    if (n > this.buf.length) this.buf = Buffer.alloc(n)
    this.base = this.pos
    this.len = fs.readSync(this.fd, this.buf, 0, Math.min(this.buf.length, this.end - this.pos), this.pos)
    if (this.len < n) this.bad(`short read at ${this.pos}`)
  }

  u8(): number {
    this.ensure(1)
    return this.buf[this.pos++ - this.base]!
  }

  u32(): number {
    this.ensure(4)
    const v = this.buf.readUInt32LE(this.pos - this.base)
    this.pos += 4
    return v
  }

  varint(what: string, max = Number.MAX_SAFE_INTEGER): number {
    // One byte, already in the window (most fields: counts, flags, small deltas): what getVarint would
    // answer, without the pair it allocates. A body of a million inodes has tens of millions of varints.
    const at = this.pos - this.base
    if (at >= 0 && at < this.len) {
      const byte = this.buf[at]!
      if (byte < 0x80 && byte <= max) {
        this.pos++
        return byte
      }
    }
    this.ensure(Math.min(10, this.end - this.pos))
    let got: [number, number] | undefined
    try {
      got = getVarint(this.buf, this.pos - this.base, this.base + this.len - this.base, max)
    } catch (err) {
      this.bad(`${what}: ${(err as Error).message}`)
    }
    if (!got) this.bad(`${what} runs past the end of the body`)
    this.pos = this.base + got[1]
    return got[0]
  }

  zigzag(what: string): number {
    return unzigzag(this.varint(what))
  }

  /** Past a `bytes` field of at most `max` bytes, without copying it. */
  skipSized(what: string, max: number): void {
    const n = this.varint(`${what} length`)
    if (n > max) this.bad(`${what} is ${n} bytes, over the limit of ${max}`)
    this.ensure(n)
    this.pos += n
  }

  /** A `bytes` field of at most `max` bytes (a copy). */
  sized(what: string, max: number): Buffer {
    const n = this.varint(`${what} length`)
    if (n > max) this.bad(`${what} is ${n} bytes, over the limit of ${max}`)
    this.ensure(n)
    const b = Buffer.from(this.buf.subarray(this.pos - this.base, this.pos - this.base + n))
    this.pos += n
    return b
  }
}

/** Reads the body into a sink; see the top of this file. */
class BodyReader {
  /** Where each directory's DIR record begins (after its tag), by the directory's ino. */
  private readonly dirAt = new Map<number, number>()
  private readonly totals: Totals = { extents: 0 }
  private entries = 0

  constructor(
    private readonly fd: number, private readonly path: string, private readonly layout: V2Layout, private readonly sink: InodeSink = NO_SINK,
    /** false: directories come without their entries (and those are not checked), for a reader that uses none (remap). */
    private readonly withEntries = true,
  ) {}

  run(): void {
    const { header, facts } = this.layout
    const inodes = this.inodes()
    this.sink.begin(header, facts)
    let i = 0
    for (const n of inodes) this.sink.inode(n, i++)
    this.sink.finish(header.root as number)
  }

  /**
   * Every INODE record in ascending ino order, each checked as version 1 checks an inode; then the body's counts and DIR records are held to the trailer. The DIR records are
   * indexed (and counted) before the first inode is yielded. The tree is not checked: that needs
   * every inode (run()'s sink does it).
   */
  inodes(): Generator<Inode> {
    const { bodyStart, trailer } = this.layout
    const w = this.window(bodyStart)
    const inodesAt = this.indexDirs(w)
    if (this.dirAt.size !== trailer.dirs || this.entries !== trailer.entries) {
      this.bad('manifest', `the body has ${this.dirAt.size} directory records and ${this.entries} entries; the trailer says ${trailer.dirs} and ${trailer.entries}`)
    }
    return this.records(w, inodesAt)
  }

  private *records(w: Window, inodesAt: number): Generator<Inode> {
    const { bodyStart, facts, trailer } = this.layout
    const dirs = this.window(bodyStart)
    w.pos = inodesAt
    let ino = 0
    let count = 0
    const sec = [0, 0, 0]
    const cursor = { at: 0 }
    while (!w.atEnd) {
      const tag = w.u8()
      if (tag === TAG_DIR) this.bad('manifest', `a directory record after the inode records (at ${w.pos - 1})`)
      if (tag !== TAG_INODE) this.bad('manifest', `unknown record tag ${tag} at ${w.pos - 1}`)
      if (count >= LIMITS.inodes || count >= trailer.inodes) this.bad('manifest', `more inode records than the trailer's ${trailer.inodes}`)
      const step = w.varint('inode number')
      if (step === 0 && count > 0) this.bad(`inode ${ino}`, 'is listed twice (inode records must ascend)')
      ino += step
      if (!Number.isSafeInteger(ino)) this.bad('manifest', 'inode numbers past 2^53')
      const n = this.inode(w, ino, sec, cursor)
      if (n.kind === 'dir' && this.withEntries) n.entries = this.entriesOf(dirs, ino)
      else if (n.kind === 'dir') this.dirAt.delete(ino)
      checkInode(n, count, facts, this.totals)
      if (n.kind === 'dir' && this.withEntries) checkEntries(n.entries as unknown[], ino, facts.byteNames)
      yield n
      count++
    }
    if (count !== trailer.inodes) this.bad('manifest', `the body has ${count} inode records; the trailer says ${trailer.inodes}`)
    for (const dir of this.dirAt.keys()) this.bad(`inode ${dir}`, 'has a directory record but is not a directory with an inode record')
  }

  private window(start: number): Window {
    return new Window(this.fd, this.layout.bodyEnd, start, (what) => this.bad('manifest', what))
  }

  /** First pass: every DIR record's place; returns where the INODE records begin. */
  private indexDirs(w: Window): number {
    while (!w.atEnd) {
      const at = w.pos
      if (w.u8() !== TAG_DIR) return at
      const dir = w.varint('directory inode number')
      if (this.dirAt.has(dir)) this.bad(`inode ${dir}`, 'has two directory records')
      this.dirAt.set(dir, w.pos)
      const n = w.varint('entry count', LIMITS.entriesPerDir)
      for (let i = 0; i < n; i++) {
        w.skipSized('entry name', LIMITS.nameBytes)
        w.varint('entry inode number')
      }
      this.entries += n
    }
    return w.pos
  }

  /** The entries of directory `ino` from its DIR record (none without one); the record is then done with. */
  private entriesOf(w: Window, ino: number): DirEntry[] {
    const at = this.dirAt.get(ino)
    if (at === undefined) return []
    this.dirAt.delete(ino)
    w.pos = at
    const n = w.varint('entry count', LIMITS.entriesPerDir)
    const out: DirEntry[] = []
    let child = 0
    for (let i = 0; i < n; i++) {
      const name = decodeName(w.sized('entry name', LIMITS.nameBytes))
      child += w.zigzag('entry inode number')
      out.push({ name, ino: child })
    }
    return out
  }

  private inode(w: Window, ino: number, sec: number[], cursor: { at: number }): Inode {
    const mode = w.varint('mode', 0o177777)
    const kind = kindOfMode(mode)
    if (kind === undefined) this.bad(`inode ${ino}`, `mode ${mode.toString(8)} names no file type`)
    const n: Inode = {
      ino, kind, perm: mode & 0o7777, uid: w.varint('uid'), gid: w.varint('gid'), nlink: w.varint('nlink'),
      size: w.varint('size'), blocks: w.varint('blocks'), atime: [0, 0], mtime: [0, 0], ctime: [0, 0],
    }
    for (const [i, field] of (['atime', 'mtime', 'ctime'] as const).entries()) {
      sec[i]! += w.zigzag(field)
      n[field] = [sec[i]!, w.u32()]
    }
    const has = w.varint('has')
    if (has & ~HAS_ALL) this.bad(`inode ${ino}`, `unknown bits in has: ${has}`)
    if (has & HAS_RDEV) n.rdev = w.varint('rdev')
    if (has & HAS_ATTRS) n.attrs = w.varint('attrs')
    if (has & HAS_XATTRS) n.xattrs = this.xattrs(w, ino)
    if (has & HAS_INLINE) {
      if (kind !== 'file') this.bad(`inode ${ino}`, `a ${kind} cannot have inline data (only regular files do)`)
      n.inline = w.sized('inline data', LIMITS.inlineBytes).toString('base64')
    } else if (kind === 'file') {
      const extents = this.extents(w, ino, cursor)
      if (extents.length > 0) n.extents = extents // as the v1 writer leaves it out: no extents, all holes
    }
    else if (kind === 'symlink') n.target = decodeName(w.sized('symlink target', LIMITS.symlinkBytes))
    if (kind === 'dir') n.entries = []
    return n
  }

  private xattrs(w: Window, ino: number): Record<string, string> {
    const count = w.varint('xattr count', LIMITS.xattrListBytes / 2)
    if (count === 0) this.bad(`inode ${ino}`, 'has an empty xattr list (leave has bit 2 clear)')
    const out: Record<string, string> = {}
    for (let i = 0; i < count; i++) {
      const name = decodeName(w.sized('xattr name', LIMITS.xattrNameBytes))
      if (Object.hasOwn(out, name)) this.bad(`inode ${ino}`, `xattr ${JSON.stringify(name)} appears twice`)
      Object.defineProperty(out, name, { value: w.sized('xattr value', LIMITS.xattrValueBytes).toString('base64'), enumerable: true, writable: true, configurable: true })
    }
    return out
  }

  private extents(w: Window, ino: number, cursor: { at: number }): Extent[] {
    const count = w.varint('extent count', LIMITS.extents)
    const out: Extent[] = []
    let fileEnd = 0
    for (let i = 0; i < count; i++) {
      const fileOffset = fileEnd + w.varint('extent gap')
      const length = w.varint('extent length')
      const device = w.varint('extent device')
      const deviceOffset = cursor.at + w.zigzag('extent device offset')
      const extras = w.varint('extent extras')
      if (extras & ~(EXT_CSUMS | EXT_COMPRESSED)) this.bad(`inode ${ino}`, `unknown bits in extent extras: ${extras}`)
      if (!Number.isSafeInteger(fileOffset + length) || deviceOffset < 0 || !Number.isSafeInteger(deviceOffset + length)) {
        this.bad(`inode ${ino}`, `extent ${i} lies out of range`)
      }
      const e: Extent = { fileOffset, device, deviceOffset, length }
      if (extras & EXT_CSUMS) this.csums(w, e)
      if (extras & EXT_COMPRESSED) this.compressed(w, ino, e)
      fileEnd = fileOffset + length
      cursor.at = deviceOffset + length
      out.push(e)
    }
    return out
  }

  private csums(w: Window, e: Extent): void {
    const n = w.varint('copy count', LIMITS.extentCopies)
    if (n > 0) {
      e.copies = []
      for (let i = 0; i < n; i++) e.copies.push({ device: w.varint('copy device'), deviceOffset: w.varint('copy device offset') })
    }
    const csums = w.sized('checksums', 4 * 1024 * 1024)
    // Extras bit 0 means checksums (copies come only with them, as in version 1): none is a contradiction.
    if (csums.length === 0) this.bad('manifest', 'an extent with extras bit 0 carries no checksums')
    e.csums = csums.toString('base64')
  }

  private compressed(w: Window, ino: number, e: Extent): void {
    const alg = w.varint('compression', 3)
    if (alg === 0) this.bad(`inode ${ino}`, 'compression 0 names no algorithm')
    e.compression = COMPRESSION_NAMES[alg] as Extent['compression']
    e.diskLength = w.varint('diskLength')
    e.decodedLength = w.varint('decodedLength')
    e.decodedOffset = w.varint('decodedOffset')
  }

  private bad(where: string, what: string): never {
    throw new ManifestError(`manifest ${this.path}: ${where}: ${what}`, { where, what })
  }
}
