// Reading and writing delta files. Reading is bounded (size checked with fstat before a byte is read),
// strict UTF-8, then validated against the map it must follow; writing is atomic (the manifest's
// writeFileAtomic), so a mover sees the old file or the new one, never half of one.
import fs from 'node:fs'
import { ManifestError, oneLine } from '../errors'
import { writeFileAtomic } from '../manifest/io'
import type { Manifest } from '../manifest/types'
import { deltaPathOf, type ConfigRecord } from '../configid/record'
import { contextAfter, ImageMap } from './chain'
import { verifyDeltaSignature } from './sign'
import type { Delta } from './types'
import { validateDelta, type DeltaContext } from './validate'

/** A delta holds at most every file's extents once: the manifest's bound is ample. */
export const DEFAULT_MAX_DELTA_BYTES = 256 * 1024 * 1024

export interface ReadDeltaOptions {
  /** Require a valid signature made with this key. */
  key?: Buffer
  /** Refuse files larger than this (default 256 MiB). */
  maxBytes?: number
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** Read, parse and validate the delta in `file` as the next one after `ctx`. One-line ManifestErrors. */
export function readDeltaFile(file: string, ctx: DeltaContext, opts: ReadDeltaOptions = {}): Delta {
  return parseDelta(readDeltaText(file, opts.maxBytes), ctx, `delta ${file}`, opts.key)
}

/**
 * The inode numbers a delta file names (its `files[].ino` that are integers), before it is checked:
 * what a reader that does not hold every file's size must look up first (src/remap/cache.ts). Nothing
 * else of the file is believed; readDeltaFile checks it all afterwards.
 */
export function inosOfDeltaFile(file: string, maxBytes?: number): number[] {
  const name = `delta ${file}`
  let value: unknown
  try {
    value = JSON.parse(readDeltaText(file, maxBytes))
  } catch (err) {
    if (err instanceof ManifestError) throw err
    throw new ManifestError(`${name} is not valid JSON (truncated?): ${oneLine((err as Error).message)}`)
  }
  const files = (value as { files?: unknown } | null)?.files
  if (!Array.isArray(files)) return []
  return files.map((f) => (f as { ino?: unknown } | null)?.ino).filter((ino): ino is number => Number.isSafeInteger(ino))
}

/** The text of a delta file: bounded (fstat before a byte is read), strict UTF-8. */
function readDeltaText(file: string, maxBytes = DEFAULT_MAX_DELTA_BYTES): string {
  const name = `delta ${file}`
  let bytes: Buffer
  let fd: number
  try {
    fd = fs.openSync(file, 'r')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new ManifestError(code === 'ENOENT' ? `${name} does not exist` : `cannot open ${name}: ${code ?? (err as Error).message}`)
  }
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile()) throw new ManifestError(`${name} is not a regular file`)
    if (st.size > maxBytes) throw new ManifestError(`${name} is ${st.size} bytes, over the limit of ${maxBytes}`)
    bytes = Buffer.alloc(st.size)
    let got = 0
    while (got < st.size) {
      const n = fs.readSync(fd, bytes, got, st.size - got, got)
      if (n === 0) throw new ManifestError(`${name} shrank while it was read`)
      got += n
    }
  } catch (err) {
    if (err instanceof ManifestError) throw err
    throw new ManifestError(`cannot read ${name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  } finally {
    fs.closeSync(fd)
  }
  try {
    return utf8.decode(bytes)
  } catch {
    throw new ManifestError(`${name} is not valid UTF-8`)
  }
}

/** Parse and validate delta text (and check its signature when `key` is given). */
export function parseDelta(text: string, ctx: DeltaContext, name: string, key?: Buffer): Delta {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new ManifestError(`${name} is not valid JSON (truncated?): ${oneLine((err as Error).message)}`)
  }
  const d = validateDelta(value, ctx)
  if (key) verifyDeltaSignature(d, key, name)
  return d
}

/**
 * Validate `d` against `ctx` (our own output held to the reader's rules) and write it atomically.
 * Layout: one top-level field per line and one file per line, so deltas diff and grep well.
 */
export function writeDeltaFile(file: string, d: Delta, ctx: DeltaContext): void {
  validateDelta(d, ctx)
  const lines: string[] = []
  const fields = Object.entries(d).filter(([, v]) => v !== undefined)
  fields.forEach(([k, v], i) => {
    const comma = i < fields.length - 1 ? ',' : ''
    if ((k === 'files' || k === 'devices' || k === 'proofs') && Array.isArray(v) && v.length > 0) {
      lines.push(`${JSON.stringify(k)}:[`)
      v.forEach((item, j) => lines.push(JSON.stringify(item) + (j < v.length - 1 ? ',' : '')))
      lines.push(`]${comma}`)
    } else {
      lines.push(`${JSON.stringify(k)}:${JSON.stringify(v)}${comma}`)
    }
  })
  writeFileAtomic(file, `{\n${lines.join('\n')}\n}\n`)
}

/**
 * Read the deltas `names` (the record's entries) in order as the chain after `ctx`, each checked
 * against the map before it (chain, validation, signature with `key`). Returns them and the context
 * after the last: its devices carry the newest fingerprints, its `retired` every retired device.
 */
export function readDeltaChain(recordFile: string, names: readonly string[], ctx: DeltaContext, key?: Buffer): { deltas: Delta[]; ctx: DeltaContext } {
  const deltas: Delta[] = []
  for (const name of names) {
    const d = readDeltaFile(deltaPathOf(recordFile, name), ctx, { key })
    deltas.push(d)
    ctx = contextAfter(ctx, d)
  }
  return { deltas, ctx }
}

/**
 * The current map of `manifest`: its own map with every delta the record names applied in order, each
 * checked against the map before it (chain, validation, signature with `key`). The record's config ID
 * must be where the chain ends.
 */
export function readChain(manifest: Manifest, recordFile: string, record: ConfigRecord, key?: Buffer): ImageMap {
  const map = ImageMap.ofManifest(manifest)
  extendChain(map, recordFile, record, key)
  return map
}

/**
 * Apply to `map` the deltas of `record` it has not applied yet (those after its `seq`: deltas are only
 * ever appended to a chain), each checked as readChain does; then the record's config ID must be where
 * the chain ends. A map that already holds deltas must hold the record's first ones (the caller knows).
 */
export function extendChain(map: ImageMap, recordFile: string, record: ConfigRecord, key?: Buffer): void {
  // All read and checked first: a bad delta leaves the map as it was.
  const { deltas } = readDeltaChain(recordFile, (record.deltas ?? []).slice(map.seq), map.context(), key)
  for (const d of deltas) map.apply(d)
  if (record.configId !== map.configId) {
    throw new ManifestError(`config-ID record ${recordFile} names config ID ${record.configId}, but its delta chain ends at ${map.configId}`)
  }
}
