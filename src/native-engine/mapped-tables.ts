// Tables the C loader wrote into a file from a version 2 body (native/view/load2*.c: the one packer
// of the view's tables), mapped by the addon (native/view/tables_file.c): JS never holds a copy. For a
// version 2 manifest the header is read and validated here (src/manifest/v2/read.ts readLayout, the
// reference reader's), its HMAC verified streaming, then C decodes, checks and packs the body; a
// version 1 manifest arrives as a body re-encoded from its checked inodes (v1-manifest.ts). A bad
// body is one ManifestError line.
//
// The tables file is unlinked from the start (O_TMPFILE): nothing is left behind, whatever way the
// process ends. It lives in EXTFS_TABLES_DIR, else /var/tmp, else the temporary directory: a disk
// filesystem rather than tmpfs (/run, often /tmp), so that the kernel can drop its clean pages under
// memory pressure instead of holding them as shared memory (or swapping them).
import fs from 'node:fs'
import os from 'node:os'
import { ManifestError } from '../errors'
import { openManifest } from '../manifest/file'
import { decodeName } from '../manifest/names'
import type { DataChecksums, Manifest, ManifestHeader } from '../manifest/types'
import { readLayout, verifyMac } from '../manifest/v2/read'
import type { FileSizes } from '../delta/validate'
import { viewAddon, type LoadedV2, type LoadV2Facts, type TablesHandle } from './addon'
import { csumHeader, type StatFsFigures } from './tables'
import type { ProgressSink } from '../progress'

/** What a log line needs of the tables: index → ino and path, ino → index. */
export interface IndexPaths {
  ino(index: number): number
  index(ino: number): number
  path(index: number): string
}

/** M2L_* of native/view/load2.h: the features that change what a body may hold. */
const FEATURE_BITS = { 'inline-data': 1, 'data-checksums': 2, 'compressed-extents': 4, 'byte-names': 8 } as const

export class MappedTables implements IndexPaths {
  constructor(
    readonly handle: TablesHandle,
    readonly loaded: LoadedV2,
    readonly statfs: StatFsFigures,
  ) {}

  /** Per device: the end (bytes) of the furthest extent on it. */
  get deviceEnds(): number[] {
    return this.loaded.deviceEnds
  }

  ino(index: number): number {
    return viewAddon().tablesIno(this.handle, index)
  }

  index(ino: number): number {
    return viewAddon().tablesIndex(this.handle, ino)
  }

  path(index: number): string {
    if (!Number.isInteger(index) || index < 0 || index >= this.loaded.inodes) return `(inode index ${index})`
    return decodeName(viewAddon().tablesPath(this.handle, index))
  }

  /** Sizes of the regular files, by ino: what checking a delta before mounting needs. */
  fileSizes(): FileSizes {
    return {
      get: (ino) => {
        const index = this.index(ino)
        const size = index < 0 ? -1 : viewAddon().tablesFileSize(this.handle, index)
        return size < 0 ? undefined : size
      },
    }
  }
}

const mapped = new WeakMap<object, MappedTables>()

/** The mapped tables a version 2 manifest was loaded into, or undefined. */
export function mappedTablesOf(m: Manifest): MappedTables | undefined {
  return mapped.get(m)
}

/**
 * An unlinked file (O_TMPFILE) where the tables file goes (see the top of this file): the tables
 * themselves, and the body a version 1 manifest is re-encoded into (v1-manifest.ts).
 */
export function openTablesFile(): number {
  const dirs = [process.env.EXTFS_TABLES_DIR, '/var/tmp', os.tmpdir()].filter((d): d is string => !!d)
  let last: Error | undefined
  for (const dir of dirs) {
    try {
      return viewAddon().openTablesFile(dir)
    } catch (err) {
      last = err as Error
    }
  }
  throw new Error(`cannot make the view's tables file in ${dirs.join(', ')}: ${last?.message}`)
}

/** Where a body to load lies, and what the C loader needs to check it (the header's facts, the counts). */
export interface BodyToLoad {
  fd: number
  start: number
  end: number
  counts: { inodes: number; dirs: number; entries: number }
  facts: LoadV2Facts
}

/**
 * A body decoded, checked and packed by C into a new tables file, mapped. Throws a one-line
 * ManifestError naming `path` for a bad body.
 */
export function loadTables(path: string, body: BodyToLoad, blockSize: number, progress?: ProgressSink): MappedTables {
  const tablesFd = openTablesFile()
  try {
    const result = packTablesFile(path, body, tablesFd, progress)
    const handle = viewAddon().mapTables(tablesFd) // keeps its own descriptor of the file
    const counts = viewAddon().tablesCounts(handle)
    const statfs: StatFsFigures = {
      bsize: blockSize, frsize: blockSize, blocks: counts.sfBlocks, bfree: 0, bavail: 0, files: result.inodes, ffree: 0, favail: 0, namemax: 255,
    }
    return new MappedTables(handle, result, statfs)
  } finally {
    fs.closeSync(tablesFd)
  }
}

/**
 * The C loader's run: `body` decoded, checked and written as tables into `tablesFd`. Progress: phase
 * "load", bytes of the body decoded (half the loader's reading: it reads the body twice) and inodes
 * written, of the body's size and the trailer's count.
 */
export function packTablesFile(path: string, body: BodyToLoad, tablesFd: number, progress?: ProgressSink): LoadedV2 {
  const total = { files: body.counts.inodes, bytes: body.end - body.start }
  progress?.setPhase('load', total)
  const done = { files: 0, bytes: 0 }
  const onProgress = progress && ((read: number, _reading: number, inodes: number) => {
    done.files = inodes
    done.bytes = Math.floor(read / 2)
    progress.update(done, total)
  })
  const result = viewAddon().loadV2(body.fd, { start: body.start, end: body.end }, body.counts, body.facts, tablesFd, onProgress)
  if ('error' in result) throw new ManifestError(`manifest ${path}: ${result.error}`)
  return result
}

/** What the C loader needs from a validated header (either version's: the same fields). */
export function loadFacts(header: Record<string, unknown>, deviceSizes: number[]): LoadV2Facts {
  const csums = csumHeader(header.dataChecksums as DataChecksums | undefined)
  const features = (header.features as string[]).reduce((bits, f) => bits | (FEATURE_BITS[f as keyof typeof FEATURE_BITS] ?? 0), 0)
  return { deviceSizes, features, root: header.root as number, blockSize: header.blockSize as number,
    csumAlg: csums.csum_alg, csumSize: csums.csum_size, sectorSize: csums.sector_size }
}

/**
 * The manifest for the mover: `header` with `inodes` read again with `readWhole` only when asked for
 * (tests and debugging), its body loaded by C into mapped tables (mappedTablesOf).
 */
export function mappedManifest(path: string, header: ManifestHeader, body: BodyToLoad, readWhole: () => Manifest['inodes'], progress?: ProgressSink): Manifest {
  const tables = loadTables(path, body, header.blockSize, progress)
  let inodes: Manifest['inodes'] | undefined
  const m = { ...header }
  Object.defineProperty(m, 'inodes', { enumerable: true, get: () => (inodes ??= readWhole()) })
  mapped.set(m, tables)
  return m as Manifest
}

/**
 * The version 2 manifest in `path` for the native engine: header validated, signature verified with
 * `key` (an unsigned manifest refused), body loaded by C into mapped tables. Reading the returned
 * manifest's `inodes` reads the file again with the reference reader (tests and debugging only).
 */
export function loadMappedManifest(path: string, key: Buffer | undefined, readWhole: () => Manifest['inodes'], progress?: ProgressSink): Manifest {
  const fd = openManifest(path)
  try {
    const layout = readLayout(fd, path, Number.MAX_SAFE_INTEGER)
    if (key) verifyMac(fd, path, layout, key)
    const { header, trailer } = layout
    const { signed, mac } = trailer
    const m = { ...header, ...(signed ? { signature: { alg: 'hmac-sha256', value: mac.toString('hex') } } : {}) } as unknown as ManifestHeader
    return mappedManifest(path, m, bodyOf(fd, layout), readWhole, progress)
  } finally {
    fs.closeSync(fd)
  }
}

function bodyOf(fd: number, layout: ReturnType<typeof readLayout>): BodyToLoad {
  const { header, trailer } = layout
  return { fd, start: layout.bodyStart, end: layout.bodyEnd, counts: { inodes: trailer.inodes, dirs: trailer.dirs, entries: trailer.entries },
    facts: loadFacts(header, layout.facts.deviceSizes) }
}

/**
 * The body of the version 2 manifest in `path` checked by the C loader as a mount checks it (every
 * record, name and extent; the tree: one parent per directory, no cycle, no orphan), the tables it
 * writes thrown away: for `inspect`, which refuses what a mount refuses, in the mover's memory (a few
 * bytes of heap per inode) rather than a tree in JS. The signature is the caller's to verify.
 */
export function checkBodyV2(path: string): void {
  const fd = openManifest(path)
  try {
    const layout = readLayout(fd, path, Number.MAX_SAFE_INTEGER)
    const tablesFd = openTablesFile()
    try {
      packTablesFile(path, bodyOf(fd, layout), tablesFd)
    } finally {
      fs.closeSync(tablesFd)
    }
  } finally {
    fs.closeSync(fd)
  }
}
