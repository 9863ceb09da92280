// Everything the mover checks before serving: manifest, signature, devices, fingerprints, config ID.
import type { Manifest } from '../manifest/types'
import { DEFAULT_MAX_MANIFEST_BYTES, readManifestFile } from '../manifest/io'
import { verifyManifestSignature } from '../manifest/sign'
import { CannotStream, streamManifestFile } from '../manifest/stream'
import { streamedManifest, TablesBuilder } from '../engine/stream-tables'
import { stagedTablesOf } from '../engine/tables'
import { resolveDevices } from '../device/resolve'
import type { RawDevice } from '../device/reader'
import { ConfigWatch, readRecord, recordPath } from '../configid/record'
import { StaleError } from '../errors'

export interface LoadOptions {
  key?: Buffer
  deviceOverrides: Map<string, string>
  /** The config-ID record, instead of the one the manifest names (a mover following `extfs serve`). */
  recordFile?: string
}

export interface LoadedImage {
  /**
   * For the native engine, a streamed manifest: the header, its inodes packed into the engine's
   * tables as they were read (src/engine/stream-tables.ts; reading `inodes` reads the file again,
   * whole: only tests and debugging do). For the
   * fuse-native engine, or a manifest laid out so it cannot stream, the whole object tree.
   */
  manifest: Manifest
  devices: RawDevice[]
  config: ConfigWatch
}

/** The whole manifest as objects (inspect, release, the fuse-native engine): bounded by V8's string limit. */
export function readCheckedManifest(manifestPath: string, key?: Buffer): Manifest {
  const manifest = readManifestFile(manifestPath)
  if (key) verifyManifestSignature(manifest, key)
  return manifest
}

/**
 * The manifest for the native engine: streamed, validated and packed inode by inode (memory about
 * 200 bytes per file, no limit from V8's string length); read whole when its layout cannot stream.
 */
export function readPackedManifest(manifestPath: string, key?: Buffer): Manifest {
  const builder = new TablesBuilder()
  let header
  try {
    header = streamManifestFile(manifestPath, builder, { maxBytes: DEFAULT_MAX_MANIFEST_BYTES, key })
  } catch (err) {
    if (err instanceof CannotStream) return readCheckedManifest(manifestPath, key)
    throw err
  }
  return streamedManifest(header, builder.build(), () => readCheckedManifest(manifestPath, key).inodes)
}

export function loadImage(manifestPath: string, opts: LoadOptions): LoadedImage {
  // The fuse-native engine serves from the object tree (src/view/view.ts).
  const manifest = process.env.EXTFS_ENGINE === 'fuse-native'
    ? readCheckedManifest(manifestPath, opts.key)
    : readPackedManifest(manifestPath, opts.key)
  const config = new ConfigWatch(opts.recordFile ?? recordPath(manifestPath, manifest.configRecord), manifest.configId)
  const verdict = config.check()
  // The native engine follows a record that moved on through deltas (src/mover/follow.ts); its first
  // open reads and checks the chain. The fuse-native engine cannot follow: it needs the manifest's own ID.
  if (!verdict.ok && !(process.env.EXTFS_ENGINE !== 'fuse-native' && followable(config.file))) {
    throw new StaleError(`frozen image not current: ${verdict.reason}`)
  }
  const devices = resolveDevices(manifest, opts.deviceOverrides, stagedTablesOf(manifest)?.deviceEnds)
  return { manifest, devices, config }
}

/** A current record whose config ID is reached through deltas. */
function followable(recordFile: string): boolean {
  try {
    const r = readRecord(recordFile)
    return r.state === 'current' && (r.deltas?.length ?? 0) > 0
  } catch {
    return false
  }
}
