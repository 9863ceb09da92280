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
// - the current map by the record's delta chain: deltas are only appended, so the cached map takes the
//   record's new deltas (each read and checked as ever); when the record's chain does not start with the
//   deltas the map holds, or one of their files is not the file read, the map is built again from the
//   manifest;
// - the ino → path table by each file opening as the inode it is listed for (src/remap/remap.ts).
import fs from 'node:fs'
import type { Extent, Manifest, ManifestHeader } from '../manifest/types'
import { deltaPathOf, fileStamp, type ConfigRecord } from '../configid/record'
import { ImageMap } from '../delta/chain'
import { extendChain } from '../delta/io'
import { readCheckedManifest } from '../manifest/io'
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

interface CachedImage {
  /** fileStamp() of the manifest file read; '' when it changed while it was read (never matches). */
  identity: string
  key?: Buffer
  header: ManifestHeader
  manifestBytes: number
  /** The manifest's map with the first `map.seq` deltas of `deltas` applied. */
  map: ImageMap
  /** The record's delta names the map holds, and fileStamp() of each file when it was read. */
  deltas: { name: string; identity: string }[]
  /** Kept only for images whose tree cannot change (remap.ts decides). */
  files?: FileTable
}

/** Heap bytes of one map entry of a file, one extent object, and one path table entry before its characters. */
const HEAP_BYTES = { file: 90, extent: 112, path: 160 }

export class RemapCache {
  private cached?: CachedImage

  /**
   * The manifest at `manifestFile`, verified with `key`: the one kept when the file is the one read
   * then (and the key the same), else read again. A new manifest starts with its own map and nothing else.
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
    let image = this.image()
    if (!holdsPrefixOf(image, recordFile, record)) {
      const again = readImage(manifestFile, key, image.identity)
      if (again.header.configId !== image.header.configId) {
        this.cached = undefined
        throw new StaleError(`${manifestFile} was replaced while remapping (now image ${again.header.configId}): nothing done`)
      }
      image = this.cached = again
    }
    // Identities taken before the files are read: a file replaced in between differs next time.
    const added = (record.deltas ?? []).slice(image.deltas.length).map((name) => ({ name, identity: fileStamp(deltaPathOf(recordFile, name)) }))
    try {
      extendChain(image.map, recordFile, record, key)
    } catch (err) {
      this.cached = undefined // a map perhaps half extended: read everything again next time
      throw err
    }
    image.deltas.push(...added)
    return image.map
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
    for (const f of c.map.files.values()) {
      bytes += HEAP_BYTES.file + (f.inline?.length ?? 0)
      for (const e of f.extents ?? []) bytes += extentBytes(e)
    }
    for (const p of c.files?.paths.values() ?? []) bytes += HEAP_BYTES.path + p.length
    return bytes
  }

  private image(): CachedImage {
    if (!this.cached) throw new Error('RemapCache: manifest() first')
    return this.cached
  }
}

function readImage(manifestFile: string, key: Buffer | undefined, identity: string): CachedImage {
  const m = readCheckedManifest(manifestFile, key)
  // Replaced while it was read: what was read is used this once, and not kept.
  const unchanged = identity !== '' && fileStamp(manifestFile) === identity
  return {
    identity: unchanged ? identity : '', key, manifestBytes: fs.statSync(manifestFile).size,
    header: headerOf(m),
    map: ImageMap.ofManifest(m), deltas: [],
  }
}

/** The manifest without its inodes: the map holds what a remap needs of them. */
function headerOf(m: Manifest): ManifestHeader {
  const { inodes: _inodes, ...header } = m
  return header
}

/** The record's chain starts with the deltas the kept map holds, and their files are the ones read. */
function holdsPrefixOf(image: CachedImage, recordFile: string, record: ConfigRecord): boolean {
  const names = record.deltas ?? []
  if (names.length < image.deltas.length) return false
  return image.deltas.every((d, i) => d.name === names[i] && d.identity !== '' && fileStamp(deltaPathOf(recordFile, d.name)) === d.identity)
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
