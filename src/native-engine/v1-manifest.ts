// A version 1 manifest for the native engine: streamed and validated in TypeScript as always
// (src/manifest/stream.ts: every inode checked, the tree walked, the signature verified), re-encoded
// as a version 2 body into an unlinked file in the tables' directory, and loaded from it by the one
// packer of the view's tables, the C loader (mapped-tables.ts, native/view/load2*.c).
//
// The body carries no MAC of its own, and needs none: it is made here from a manifest whose signature
// was verified (streamOrReadManifest verifies it before returning, over the canonical JSON of the very
// values encoded), it lives in a file opened O_TMPFILE by this process (no name: no other process can
// open it to write), and the C loader reads it after. The loader checks it whole again anyway.
//
// Memory: the tree check's compact arrays (src/manifest/tree.ts, about 50 bytes per small file) and
// the C loader's (13 bytes per inode); the records are on disk (page cache), the tables too.
import fs from 'node:fs'
import type { Inode, Manifest, ManifestHeader } from '../manifest/types'
import { readCheckedManifest } from '../manifest/io'
import { streamOrReadManifest } from '../manifest/stream'
import { TreeSink } from '../manifest/tree'
import { bothSinks, encoding, SpooledInodes, Unsorted, V2BodySink } from '../manifest/v2/from-v1'
import { loadFacts, loadTables, mappedManifest, openTablesFile, type BodyToLoad, type MappedTables } from './mapped-tables'
import type { ProgressSink } from '../progress'

const COPY_BYTES = 1024 * 1024

/** The version 1 manifest in `path` checked (signature with `key`) and loaded by C into mapped tables. */
export function loadV1Manifest(path: string, key: Buffer | undefined, progress?: ProgressSink): Manifest {
  progress?.setPhase('parse') // streamed in JavaScript: no counts (the C loader's "load" that follows has them)
  const body = encodeV1Body(path, key)
  try {
    return mappedManifest(path, body.header, body, () => readCheckedManifest(path, key).inodes, progress)
  } finally {
    fs.closeSync(body.fd)
  }
}

/**
 * The tables of a manifest held as objects (one made or edited in memory: tests), through the same
 * encoding and C loader; C checks it whole (a manifest read by the mover was checked before).
 */
export function tablesOfManifest(manifest: Manifest): MappedTables {
  return withBodyOf(manifest, (body) => loadTables(IN_MEMORY, body, manifest.blockSize))
}

const IN_MEMORY = '(in memory)'

/** `use` given the body of a manifest held as objects, in an unlinked file closed after. */
export function withBodyOf<T>(manifest: Manifest, use: (body: BodyToLoad) => T): T {
  const scratch = new Scratch()
  try {
    const [dirs, inodes] = [scratch.open(), scratch.open()]
    const body = new V2BodySink(dirs, inodes, false)
    const count = encodeWhole(manifest.inodes, body)
    const bytes = append(dirs, inodes)
    const facts = loadFacts(manifest as unknown as Record<string, unknown>, manifest.devices.map((d) => d.size))
    return use({ fd: dirs, start: 0, end: bytes, counts: body.counts(count), facts })
  } finally {
    scratch.closeAll()
  }
}

export interface EncodedBody extends BodyToLoad {
  header: ManifestHeader
  /** `fd`: the body file (DIR then INODE records), open; the caller closes it. */
}

/**
 * The manifest's body in a new unlinked file. Streamed once while its inodes ascend (the writer's
 * order); a manifest whose inodes do not is streamed again with its inodes spooled and sorted, and
 * one laid out so that it cannot stream is read whole and encoded from its objects.
 */
export function encodeV1Body(path: string, key: Buffer | undefined): EncodedBody {
  const scratch = new Scratch()
  try {
    let dirs = scratch.open()
    let inodes = scratch.open()
    let body = new V2BodySink(dirs, inodes)
    let header: ManifestHeader
    let inodeCount: number | undefined
    try {
      const read = streamOrReadManifest(path, bothSinks(new TreeSink(), body), key)
      header = read.header
      if (read.whole) {
        // The stream gave up (its sinks saw part of it): the whole manifest, already checked, encoded anew.
        ;[dirs, inodes] = [scratch.open(), scratch.open()]
        body = new V2BodySink(dirs, inodes, false)
        inodeCount = encodeWhole(read.whole.inodes, body)
      }
    } catch (err) {
      if (!(err instanceof Unsorted)) throw err
      ;[dirs, inodes] = [scratch.open(), scratch.open()]
      body = new V2BodySink(dirs, inodes, false)
      const spool = new SpooledInodes(scratch.open())
      header = streamOrReadManifest(path, bothSinks(new TreeSink(), body, spool), key).header
      inodeCount = spool.encode(body.inodeStream())
    }
    const bytes = append(dirs, inodes)
    scratch.keep(dirs)
    const facts = loadFacts(header as unknown as Record<string, unknown>, header.devices.map((d) => d.size))
    return { header, fd: dirs, start: 0, end: bytes, counts: body.counts(inodeCount), facts }
  } finally {
    scratch.closeAll()
  }
}

/** A checked manifest's inodes: DIR records in list order, INODE records by ascending number. */
function encodeWhole(inodes: readonly Inode[], body: V2BodySink): number {
  for (const n of inodes) if (n.kind === 'dir') body.inode(n) // DIR records only (the sink does not stop)
  const out = body.inodeStream()
  for (const n of [...inodes].sort((a, b) => a.ino - b.ino)) encoding(n, () => out.inode(n))
  body.finish()
  return inodes.length
}

/** `from`'s bytes appended to `to`; returns `to`'s size. */
function append(to: number, from: number): number {
  const buf = Buffer.allocUnsafe(COPY_BYTES)
  let at = fs.fstatSync(to).size
  for (let pos = 0, n; (n = fs.readSync(from, buf, 0, buf.length, pos)) > 0; pos += n) {
    for (let done = 0; done < n;) done += fs.writeSync(to, buf, done, n - done, at + done)
    at += n
  }
  return at
}

/** Unlinked files in the tables' directory, closed together unless kept. */
class Scratch {
  private readonly fds = new Set<number>()

  open(): number {
    const fd = openTablesFile()
    this.fds.add(fd)
    return fd
  }

  keep(fd: number): void {
    this.fds.delete(fd)
  }

  closeAll(): void {
    for (const fd of this.fds) fs.closeSync(fd)
    this.fds.clear()
  }
}
