// What a remap reads before it maps any file, kept between remaps of one image (docs/remap.md, "What
// serve keeps between remaps"). `extfs serve` keeps one RemapCache per image and remaps it once per backup and on its
// schedule: without this each remap read and verified the manifest, read the whole delta chain and
// walked the image tree again, though none of them had changed. `extfs remap` from the command line
// uses a fresh one, which holds nothing when the remap starts.
//
// Nothing here is used without being checked against the files first:
// - the manifest (verified, and the map built from it) by the manifest file's identity (st_dev, st_ino,
//   size, mtime, ctime): export writes it by rename, so a manifest exported again under the same name
//   is another file and is read and verified again;
// - for a bulk remap of a version 2 manifest, only the header and a partial map: the files the deltas
//   name (src/delta/chain.ts ImageMap.partial), so what is kept is bounded by the deltas, not the image;
// - the current map by the record's delta chain: deltas are only appended, so the cached map takes the
//   record's new deltas (each read and checked as ever); when the record's chain does not start with the
//   deltas the map holds, or one of their files is not the file read, the map is built again from the
//   manifest;
// - the ino → path table by each file opening as the inode it is listed for (src/remap/remap.ts).
import fs from 'node:fs'
import type { Extent, Manifest, ManifestHeader } from '../manifest/types'
import { deltaPathOf, fileStamp, type ConfigRecord } from '../configid/record'
import { ImageMap, locationOf, type FileLocation } from '../delta/chain'
import { extendChain, inosOfDeltaFile } from '../delta/io'
import { isV2Path, readCheckedManifest } from '../manifest/io'
import { openManifestV2, readHeaderV2 } from '../manifest/v2/read'
import { StaleError } from '../errors'


/** Where each regular file of the image is opened to be mapped again. */
export interface FileTable {
  /** ino → a path naming that file's bytes in the image. */
  paths: Map<number, string>
  /**
   * st_dev of the walked tree: each path must open as the inode it is listed for, on this device.
   * Undefined for a clone set, whose clone `<imagePath>/<ino>` is another inode named after the file's.
   */
  dev?: number
}

/** A map and the record's delta names it holds, with fileStamp() of each delta file when it was read. */
interface Chain {
  /** The manifest's map (or a partial one) with the first `map.seq` deltas of `deltas` applied. */
  map: ImageMap
  deltas: { name: string; identity: string }[]
}

interface CachedImage {
  /** fileStamp() of the manifest file read; '' when it changed while it was read (never matches). */
  identity: string
  key?: Buffer
  header: ManifestHeader
  manifestBytes: number
  /** Every regular file of the image (the VFS path); built from the whole manifest when first needed. */
  full?: Chain
  /** Only the files the deltas name (the bulk path: it reads every other file from the manifest as it goes). */
  partial?: Chain
  /** Kept only for images whose tree cannot change (remap.ts decides). */
  files?: FileTable
}

/** Heap bytes of one map entry of a file, one extent object, and one path table entry before its characters. */
const HEAP_BYTES = { file: 90, extent: 112, path: 160 }

export class RemapCache {
  private cached?: CachedImage

  /**
   * The manifest's header at `manifestFile`, verified with `key`: the one kept when the file is the one
   * read then (and the key the same), else read again. A new manifest starts with nothing else kept.
   * Version 2: only the header is read here (and the signature checked over the whole file).
   */
  manifest(manifestFile: string, key: Buffer | undefined): { header: ManifestHeader; manifestBytes: number } {
    const identity = fileStamp(manifestFile)
    if (this.cached === undefined || identity === '' || this.cached.identity !== identity || !sameKey(this.cached.key, key)) {
      this.cached = undefined
      this.cached = readImage(manifestFile, key, identity)
    }
    return this.cached
  }

  /**
   * The current map: the manifest's map with every delta `record` names applied, each checked against
   * the map before it (chain, validation, signature with `key`), ending at the record's config ID. Only
   * the deltas the kept map lacks are read. After manifest() for the same file.
   */
  currentMap(manifestFile: string, recordFile: string, record: ConfigRecord, key: Buffer | undefined): ImageMap {
    const whole = () => ImageMap.ofManifest(this.sameImage(manifestFile, readCheckedManifest(manifestFile, key)))
    return this.extend('full', whole, recordFile, record, key, () => {})
  }

  /**
   * The current map as far as the delta chain goes (src/delta/chain.ts ImageMap.partial): devices,
   * retired devices, config ID, and only the files some delta names, with their current locations.
   * Bounded by the deltas, not by the image: what a bulk remap keeps. After manifest() for a version 2 file.
   */
  currentChain(manifestFile: string, recordFile: string, record: ConfigRecord, key: Buffer | undefined): ImageMap {
    const seed = (map: ImageMap, names: readonly string[]) => seedFiles(map, manifestFile, key, recordFile, names, this.image().header.configId)
    return this.extend('partial', () => ImageMap.partial(this.image().header), recordFile, record, key, seed)
  }

  /**
   * Files of a delta this remap is publishing, with their locations before it: the partial map holds
   * them before the next remap reads that delta, so it need not look them up in the manifest.
   */
  noteFiles(before: ReadonlyMap<number, FileLocation>): void {
    const map = this.cached?.partial?.map
    if (map) for (const [ino, loc] of before) if (!map.files.has(ino)) map.files.set(ino, loc)
  }

  /**
   * Whether the manifest file is still the one manifest() read and verified (fileStamp: st_dev, st_ino,
   * size, mtime and ctime in ns; any write changes ctime), so its bytes are the bytes verified then.
   */
  stillVerified(manifestFile: string): boolean {
    const c = this.cached
    return c !== undefined && c.identity !== '' && fileStamp(manifestFile) === c.identity
  }

  /** The bulk path mapped the image: what only the VFS path uses (the whole map, the path table) goes. */
  dropWholeMap(): void {
    if (this.cached) this.cached.full = this.cached.files = undefined
  }

  /** The ino → path table kept for this manifest, if any. */
  files(): FileTable | undefined {
    return this.image().files
  }

  /** Keep `files` for the next remaps of this manifest (an image whose tree cannot change). */
  keepFiles(files: FileTable): void {
    this.image().files = files
  }

  /** A kept path no longer names its file: walk again. */
  dropFiles(): void {
    if (this.cached) this.cached.files = undefined
  }

  /**
   * About how many bytes of heap this cache holds: what serve's LRU of caches is bounded by
   * (src/service/remap-thread.ts). Counted from the objects it keeps, at the per-object costs
   * measured in docs/remap.md ("What serve keeps between remaps").
   */
  approxBytes(): number {
    const c = this.cached
    if (!c) return 0
    let bytes = 0
    for (const chain of [c.full, c.partial]) {
      for (const f of chain?.map.files.values() ?? []) {
        bytes += HEAP_BYTES.file + (f.inline?.length ?? 0)
        for (const e of f.extents ?? []) bytes += extentBytes(e)
      }
    }
    for (const p of c.files?.paths.values() ?? []) bytes += HEAP_BYTES.path + p.length
    return bytes
  }

  /**
   * The kept chain `which`, built by `build` when there is none or the record's chain does not start
   * with the deltas it holds, then extended by the record's new deltas (`before` runs first, on their
   * names). A failure drops the chain: it may be half extended.
   */
  private extend(
    which: 'full' | 'partial', build: () => ImageMap, recordFile: string, record: ConfigRecord, key: Buffer | undefined,
    before: (map: ImageMap, names: readonly string[]) => void,
  ): ImageMap {
    const image = this.image()
    let chain = image[which]
    if (chain === undefined || !holdsPrefixOf(chain, recordFile, record)) chain = image[which] = { map: build(), deltas: [] }
    // Identities taken before the files are read: a file replaced in between differs next time.
    const names = (record.deltas ?? []).slice(chain.deltas.length)
    const added = names.map((name) => ({ name, identity: fileStamp(deltaPathOf(recordFile, name)) }))
    try {
      before(chain.map, names)
      extendChain(chain.map, recordFile, record, key)
    } catch (err) {
      image[which] = undefined
      throw err
    }
    chain.deltas.push(...added)
    return chain.map
  }

  /** `m`, read again from the kept image's file, is still that image (else nothing is kept). */
  private sameImage(manifestFile: string, m: Manifest): Manifest {
    if (m.configId !== this.image().header.configId) {
      this.cached = undefined
      throw new StaleError(`${manifestFile} was replaced while remapping (now image ${m.configId}): nothing done`)
    }
    return m
  }

  private image(): CachedImage {
    if (!this.cached) throw new Error('RemapCache: manifest() first')
    return this.cached
  }
}

function readImage(manifestFile: string, key: Buffer | undefined, identity: string): CachedImage {
  const v2 = isV2Path(manifestFile)
  const m = v2 ? undefined : readCheckedManifest(manifestFile, key)
  const header = m ? headerOf(m) : readHeaderV2(manifestFile, key)
  // Replaced while it was read: what was read is used this once, and not kept.
  const unchanged = identity !== '' && fileStamp(manifestFile) === identity
  return {
    identity: unchanged ? identity : '', key, manifestBytes: fs.statSync(manifestFile).size, header,
    ...(m ? { full: { map: ImageMap.ofManifest(m), deltas: [] } } : {}),
  }
}

/** The manifest without its inodes: the map holds what a remap needs of them. */
function headerOf(m: Manifest): ManifestHeader {
  const { inodes: _inodes, ...header } = m
  return header
}

/**
 * Add to the partial `map` the files the deltas `names` name that it lacks, at their manifest
 * locations, read in one pass over the manifest (stopping past the largest). Checking the deltas needs
 * each file's size, and applying them the location they replace. An ino that is no regular file of the
 * manifest is left out: the delta's check then refuses it.
 */
function seedFiles(map: ImageMap, manifestFile: string, key: Buffer | undefined, recordFile: string, names: readonly string[], image: string): void {
  const wanted = new Set<number>()
  for (const name of names) for (const ino of inosOfDeltaFile(deltaPathOf(recordFile, name))) if (!map.files.has(ino)) wanted.add(ino)
  if (wanted.size === 0) return
  const last = Math.max(...wanted)
  const m = openManifestV2(manifestFile, key, { entries: false })
  try {
    if (m.header.configId !== image) throw new StaleError(`${manifestFile} was replaced while remapping (now image ${m.header.configId}): nothing done`)
    for (const n of m.inodes) {
      if (n.ino > last) break
      if (n.kind === 'file' && wanted.has(n.ino)) map.files.set(n.ino, locationOf(n))
    }
  } finally {
    m.close()
  }
}

/** The record's chain starts with the deltas the kept map holds, and their files are the ones read. */
function holdsPrefixOf(chain: Chain, recordFile: string, record: ConfigRecord): boolean {
  const names = record.deltas ?? []
  if (names.length < chain.deltas.length) return false
  return chain.deltas.every((d, i) => d.name === names[i] && d.identity !== '' && fileStamp(deltaPathOf(recordFile, d.name)) === d.identity)
}

function sameKey(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b)
}

/**
 * One extent's heap cost; its csums (feature data-checksums) are a string of about their length, and
 * each copy is counted as much as an extent (a smaller object: an upper bound, not measured).
 */
function extentBytes(e: Extent): number {
  return HEAP_BYTES.extent * (1 + (e.copies?.length ?? 0)) + (e.csums?.length ?? 0)
}
