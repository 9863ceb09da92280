// Reading and writing manifest files. Reading is bounded (the size is checked before any byte is read)
// and ends in parseManifest, so what comes back is validated. Writing is atomic: readers on the other
// host see the old file or the new one, never half of one.
import fs from 'node:fs'
import { constants as bufferConstants } from 'node:buffer'
import { ManifestError } from '../errors'
import type { Manifest } from './types'
import { parseManifest, validateManifest } from './validate'
import { verifyManifestSignature } from './sign'
import { openManifest, writeAll, writeAtomicWith } from './file'
import { isV2File } from './v2/read'
import { V2_MAX_BYTES } from './v2/format'
import { readWholeV2 } from './v2/whole'

export { openManifest }

export const DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024 * 1024

/**
 * The longest text V8 can hold (about 512 MiB on 64-bit): JSON.parse needs the whole file as one
 * string, and UTF-8 never decodes to more UTF-16 units than it has bytes, so this bounds the file.
 */
const MAX_PARSABLE_BYTES = bufferConstants.MAX_STRING_LENGTH

const READ_CHUNK = 4 * 1024 * 1024

export interface ReadManifestOptions {
  /** Refuse files larger than this many bytes (default 1 GiB). */
  maxBytes?: number
}

/** Read, parse and validate the manifest in `path`. Throws ManifestError with one line on any problem. */
export function readManifestFile(path: string, opts: ReadManifestOptions = {}): Manifest {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_MANIFEST_BYTES
  return parseManifest(readManifestText(path, maxBytes))
}

/**
 * The whole manifest as objects, its signature verified with `key`: version 1 bounded by V8's string
 * limit, version 2 (binary) by memory alone.
 */
export function readCheckedManifest(path: string, key?: Buffer): Manifest {
  if (isV2Path(path)) return readWholeV2(path, key)
  const manifest = readManifestFile(path)
  if (key) verifyManifestSignature(manifest, key)
  return manifest
}

/**
 * The file at `path` is a version 2 manifest (its preamble). A missing file, and one over version 2's
 * size limit, are left to the JSON reader's own message: the latter is refused before any byte is read.
 */
export function isV2Path(path: string): boolean {
  let fd: number
  try {
    fd = fs.openSync(path, 'r')
  } catch {
    return false
  }
  try {
    const st = fs.fstatSync(fd)
    return st.isFile() && st.size <= V2_MAX_BYTES && isV2File(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Write `data` to `path` atomically: a temporary file in the same directory is written and fsynced,
 * renamed over `path`, and the directory fsynced so the rename itself survives a crash.
 */
export function writeFileAtomic(path: string, data: string | Buffer): void {
  writeAtomicWith(path, (fd) => writeAll(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data))
}

/**
 * Validate `m` and write it atomically. Layout: one top-level field per line, and one device or inode
 * per line, so a manifest diffs and greps well without the bulk of full indentation.
 */
export function writeManifestFile(path: string, m: Manifest): void {
  validateManifest(m)
  writeAtomicWith(path, (fd) => {
    const out = new BufferedWriter(fd)
    formatManifest(m, out)
    out.flush()
  })
}

// ---------------------------------------------------------------------------------------------
// Reading

function readManifestText(path: string, maxBytes: number): string {
  const fd = openManifest(path)
  try {
    const st = fs.fstatSync(fd)
    if (st.isDirectory()) throw new ManifestError(`manifest ${path} is a directory`)
    // Regular files are refused on their size before anything is read; pipes and devices have no
    // size to check, so the read below is bounded too (and catches a file that grows meanwhile).
    if (st.isFile()) checkSize(path, st.size, maxBytes)
    const bytes = readUpTo(fd, path, Math.min(maxBytes, MAX_PARSABLE_BYTES) + 1, st.isFile() ? st.size + 1 : READ_CHUNK)
    checkSize(path, bytes.length, maxBytes)
    return decodeUtf8(bytes, path)
  } finally {
    fs.closeSync(fd)
  }
}

function checkSize(path: string, size: number, maxBytes: number): void {
  if (size > maxBytes) {
    throw new ManifestError(`manifest ${path} is ${size} bytes, over the limit of ${maxBytes}`)
  }
  if (size > MAX_PARSABLE_BYTES) {
    throw new ManifestError(`manifest ${path} is ${size} bytes, more than Node can parse as one JSON text (${MAX_PARSABLE_BYTES})`)
  }
}

/** Reads until EOF or `limit` bytes, whichever comes first. */
function readUpTo(fd: number, path: string, limit: number, firstChunk: number): Buffer {
  const chunks: Buffer[] = []
  let total = 0
  let chunkSize = Math.min(firstChunk, limit)
  while (total < limit) {
    const buf = Buffer.allocUnsafe(Math.min(chunkSize, limit - total))
    let got = 0
    while (got < buf.length) {
      let n: number
      try {
        n = fs.readSync(fd, buf, got, buf.length - got, null)
      } catch (err) {
        throw new ManifestError(`cannot read manifest ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      }
      if (n === 0) break
      got += n
    }
    chunks.push(buf.subarray(0, got))
    total += got
    if (got < buf.length) break // EOF
    chunkSize = READ_CHUNK
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total)
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function decodeUtf8(bytes: Buffer, path: string): string {
  try {
    return utf8.decode(bytes)
  } catch {
    throw new ManifestError(`manifest ${path} is not valid UTF-8`)
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Collects text and writes it in blocks of about 1 MiB: the whole manifest may not fit in one string. */
class BufferedWriter {
  private parts: string[] = []
  private length = 0
  constructor(private readonly fd: number) {}
  write(s: string): void {
    this.parts.push(s)
    this.length += s.length
    if (this.length >= 1024 * 1024) this.flush()
  }
  flush(): void {
    if (this.parts.length === 0) return
    writeAll(this.fd, Buffer.from(this.parts.join(''), 'utf8'))
    this.parts = []
    this.length = 0
  }
}

/** Lists written one element per line. */
const LONG_LISTS = new Set(['devices', 'inodes'])

function formatManifest(m: Manifest, out: BufferedWriter): void {
  const fields = Object.entries(m).filter(([, v]) => v !== undefined)
  out.write('{\n')
  fields.forEach(([key, value], i) => {
    const comma = i < fields.length - 1 ? ',' : ''
    if (LONG_LISTS.has(key) && Array.isArray(value) && value.length > 0) {
      out.write(`${JSON.stringify(key)}:[\n`)
      for (let j = 0; j < value.length; j++) {
        out.write(JSON.stringify(value[j]) + (j < value.length - 1 ? ',\n' : '\n'))
      }
      out.write(`]${comma}\n`)
    } else {
      out.write(`${JSON.stringify(key)}:${JSON.stringify(value)}${comma}\n`)
    }
  })
  out.write('}\n')
}
