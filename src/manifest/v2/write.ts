// Writing manifest format version 2 (docs/manifest-v2.md). Two writers share one file layer: the
// encoder of v1 inode objects (the reference: fixtures, tests, and manifests the VFS walker maps), and
// assembleV2, which wraps a body that C wrote while it mapped (the bulk mappers) in its preamble,
// header and trailer. Both sign as they write, so signing stays one pass.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { ExportError } from '../../errors'
import { canonicalJson } from '../sign'
import { writeAll, writeAtomicWith } from '../file'
import { encodeName } from '../names'
import type { DirEntry, Extent, Inode, ManifestHeader } from '../types'
import { putVarint, zigzag, VARINT_MAX_BYTES } from './varint'
import {
  COMPRESSION_CODES, encodeTrailer, EXT_COMPRESSED, EXT_CSUMS, HAS_ATTRS, HAS_INLINE, HAS_RDEV, HAS_XATTRS, HEADER_MAX,
  MAC_BYTES, MODE_OF_KIND, PREAMBLE, TAG_DIR, TAG_INODE, TRAILER_BYTES, V2_MAX_BYTES, V2_VERSION, type TrailerCounts,
} from './format'

const FLUSH_AT = 1024 * 1024
/** Room for one field: the largest is an xattr value or inline content (64 KiB) and its length. */
const FIELD_MAX = 64 * 1024 + VARINT_MAX_BYTES

/** The manifest file being written: every byte through the HMAC (when signing) and a 1 MiB buffer. */
class V2File {
  private readonly buf = Buffer.alloc(FLUSH_AT + FIELD_MAX)
  private at = 0
  private written = 0
  private readonly hmac?: crypto.Hmac

  constructor(private readonly fd: number, key: Buffer | undefined) {
    if (key) this.hmac = crypto.createHmac('sha256', key)
  }

  /** Room for `n` more bytes in the buffer; returns it and the position to write at. */
  reserve(n: number): [Buffer, number] {
    if (this.at + n > this.buf.length) this.flush()
    if (n > this.buf.length) throw new RangeError(`field of ${n} bytes`)
    return [this.buf, this.at]
  }

  /** The caller wrote up to `to` (returned by the put* helpers). */
  advance(to: number): void {
    this.at = to
    if (this.at >= FLUSH_AT) this.flush()
  }

  bytes(b: Buffer): void {
    if (b.length > FIELD_MAX) {
      this.flush()
      this.out(b)
      return
    }
    const [buf, at] = this.reserve(b.length)
    b.copy(buf, at)
    this.advance(at + b.length)
  }

  flush(): void {
    if (this.at === 0) return
    this.out(this.buf.subarray(0, this.at))
    this.at = 0
  }

  /** The trailer: its first 32 bytes go through the HMAC, then the MAC itself (or zeros). */
  finish(counts: TrailerCounts): void {
    const trailer = encodeTrailer(counts, this.hmac !== undefined)
    this.bytes(trailer.subarray(0, TRAILER_BYTES - MAC_BYTES))
    this.flush()
    const mac = this.hmac ? this.hmac.digest() : Buffer.alloc(MAC_BYTES)
    writeAll(this.fd, mac) // not through the HMAC: it is the HMAC
  }

  private out(b: Buffer): void {
    // Never a manifest no reader takes (V2_MAX_BYTES): the export fails here instead.
    if ((this.written += b.length) > V2_MAX_BYTES) {
      throw new ExportError(`the manifest would be over ${V2_MAX_BYTES} bytes, the most a mover reads (docs/manifest-v2.md)`)
    }
    this.hmac?.update(b)
    writeAll(this.fd, b)
  }
}

/** Preamble, header length and header JSON: the header as v1 has it, without inodes or signature, version 2. */
function writeHeader(file: V2File, header: ManifestHeader): void {
  const { signature: _signature, ...rest } = header
  const json = Buffer.from(canonicalJson({ ...rest, version: V2_VERSION }), 'utf8')
  if (json.length > HEADER_MAX) throw new ExportError(`manifest header is ${json.length} bytes, over version 2's ${HEADER_MAX}`)
  const len = Buffer.alloc(4)
  len.writeUInt32LE(json.length)
  file.bytes(PREAMBLE)
  file.bytes(len)
  file.bytes(json)
}

/** Encodes DIR and INODE records of v1 inode objects (their names carried as src/manifest/names.ts says). */
class BodyEncoder {
  readonly counts: TrailerCounts = { inodes: 0, dirs: 0, entries: 0 }
  private lastIno = 0
  private readonly lastSec = [0, 0, 0]
  private cursor = 0
  private inodesBegun = false

  constructor(private readonly file: V2File) {}

  dir(ino: number, entries: DirEntry[]): void {
    if (this.inodesBegun) throw new RangeError('DIR records must come before INODE records')
    this.varints([TAG_DIR, ino, entries.length])
    let prev = 0
    for (const e of entries) {
      this.sized(encodeName(e.name))
      this.varints([zigzag(e.ino - prev)])
      prev = e.ino
    }
    this.counts.dirs++
    this.counts.entries += entries.length
  }

  /** Inodes in strictly ascending ino order. */
  inode(n: Inode): void {
    this.inodesBegun = true
    if (n.ino <= this.lastIno) throw new RangeError(`inode ${n.ino} after ${this.lastIno}: INODE records go in ascending order`)
    // An empty xattr list is no list (the format wants the bit clear): version 1 allows `"xattrs": {}`.
    const xattrs = n.xattrs !== undefined && Object.keys(n.xattrs).length > 0 ? n.xattrs : undefined
    const has = (n.rdev !== undefined ? HAS_RDEV : 0) | (n.attrs !== undefined ? HAS_ATTRS : 0) |
      (xattrs !== undefined ? HAS_XATTRS : 0) | (n.inline !== undefined ? HAS_INLINE : 0)
    this.varints([TAG_INODE, n.ino - this.lastIno, MODE_OF_KIND[n.kind] | n.perm, n.uid, n.gid, n.nlink, n.size, n.blocks])
    this.lastIno = n.ino
    for (const [i, t] of [n.atime, n.mtime, n.ctime].entries()) {
      const [buf, at] = this.file.reserve(VARINT_MAX_BYTES + 4)
      const next = putVarint(buf, at, zigzag(t[0] - this.lastSec[i]!))
      buf.writeUInt32LE(t[1], next)
      this.file.advance(next + 4)
      this.lastSec[i] = t[0]
    }
    this.varints([has])
    if (n.rdev !== undefined) this.varints([n.rdev])
    if (n.attrs !== undefined) this.varints([n.attrs])
    if (xattrs !== undefined) this.xattrs(xattrs)
    if (n.inline !== undefined) this.sized(Buffer.from(n.inline, 'base64'))
    else if (n.kind === 'file') this.extents(n.extents ?? [])
    else if (n.kind === 'symlink') this.sized(encodeName(n.target!))
    this.counts.inodes++
  }

  private xattrs(x: Record<string, string>): void {
    const names = Object.keys(x)
    this.varints([names.length])
    for (const name of names) {
      this.sized(encodeName(name))
      this.sized(Buffer.from(x[name]!, 'base64'))
    }
  }

  private extents(list: Extent[]): void {
    this.varints([list.length])
    let fileEnd = 0
    for (const e of list) {
      const extras = (e.csums !== undefined || e.copies !== undefined ? EXT_CSUMS : 0) | (e.compression !== undefined ? EXT_COMPRESSED : 0)
      this.varints([e.fileOffset - fileEnd, e.length, e.device, zigzag(e.deviceOffset - this.cursor), extras])
      fileEnd = e.fileOffset + e.length
      this.cursor = e.deviceOffset + e.length
      if (extras & EXT_CSUMS) {
        const copies = e.copies ?? []
        this.varints([copies.length, ...copies.flatMap((c) => [c.device, c.deviceOffset])])
        this.sized(Buffer.from(e.csums ?? '', 'base64'))
      }
      if (extras & EXT_COMPRESSED) {
        this.varints([COMPRESSION_CODES[e.compression!], e.diskLength!, e.decodedLength!, e.decodedOffset!])
      }
    }
  }

  private varints(values: number[]): void {
    const [buf, at] = this.file.reserve(values.length * VARINT_MAX_BYTES)
    let next = at
    for (const v of values) next = putVarint(buf, next, v)
    this.file.advance(next)
  }

  /** A `bytes` field: its length, then the bytes. */
  private sized(b: Buffer): void {
    this.varints([b.length])
    this.file.bytes(b)
  }
}

/**
 * A bare body written to `fd` from its current position: records only, no preamble, header or trailer,
 * and no MAC (for a loader told the counts and header itself: a version 1 manifest re-encoded at
 * mount, src/manifest/v2/from-v1.ts). Call flush() when done.
 */
export class BodyStream {
  private readonly file: V2File
  private readonly encoder: BodyEncoder

  constructor(fd: number) {
    this.file = new V2File(fd, undefined)
    this.encoder = new BodyEncoder(this.file)
  }

  get counts(): TrailerCounts {
    return this.encoder.counts
  }

  dir(ino: number, entries: DirEntry[]): void {
    this.encoder.dir(ino, entries)
  }

  /** Inodes in strictly ascending ino order (RangeError otherwise). */
  inode(n: Inode): void {
    this.encoder.inode(n)
  }

  flush(): void {
    this.file.flush()
  }
}

/**
 * Write `header` and `inodes` (a validated manifest's) as a version 2 manifest at `path`, atomically,
 * signed with `key` when given. Directories' entries first, then the inodes by ascending ino.
 */
export function writeManifestV2(path: string, header: ManifestHeader, inodes: readonly Inode[], key?: Buffer): TrailerCounts {
  const sorted = [...inodes].sort((a, b) => a.ino - b.ino)
  let counts: TrailerCounts | undefined
  writeAtomicWith(path, (fd) => {
    const file = new V2File(fd, key)
    writeHeader(file, header)
    const body = new BodyEncoder(file)
    for (const n of sorted) if (n.kind === 'dir') body.dir(n.ino, n.entries ?? [])
    for (const n of sorted) body.inode(n)
    file.finish(body.counts)
    counts = body.counts
  })
  return counts!
}

/**
 * Write a version 2 manifest at `path` around a body a bulk mapper wrote to `bodyPath` (DIR then INODE
 * records, counted as `counts`), signed with `key` when given. The body is copied through the HMAC in
 * 1 MiB pieces: nothing proportional to the tree is held.
 */
export function assembleV2(path: string, header: ManifestHeader, bodyPath: string, counts: TrailerCounts, key?: Buffer): void {
  writeAtomicWith(path, (fd) => {
    const file = new V2File(fd, key)
    writeHeader(file, header)
    const body = fs.openSync(bodyPath, 'r')
    try {
      const chunk = Buffer.alloc(FLUSH_AT)
      for (let n; (n = fs.readSync(body, chunk, 0, chunk.length, null)) > 0;) file.bytes(chunk.subarray(0, n))
    } finally {
      fs.closeSync(body)
    }
    file.finish(counts)
  })
}
