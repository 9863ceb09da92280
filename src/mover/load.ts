// Everything the mover checks before serving: manifest, signature, devices, fingerprints, config ID.
import type { Manifest } from '../manifest/types'
import { isV2Path, readCheckedManifest } from '../manifest/io'
import { loadMappedManifest, mappedTablesOf } from '../native-engine/mapped-tables'
import { loadV1Manifest } from '../native-engine/v1-manifest'
import { resolveDevices, type CurrentDevices } from '../device/resolve'
import type { RawDevice } from '../device/reader'
import { ConfigWatch, readRecord, recordPath, type ConfigRecord } from '../configid/record'
import { readDeltaChain } from '../delta/io'
import { StaleError } from '../errors'
import { fuseNativeSelected } from '../view/engine'
import type { ProgressSink } from '../progress'

export interface LoadOptions {
  key?: Buffer
  deviceOverrides: Map<string, string>
  /** The config-ID record, instead of the one the manifest names (a mover following `extfs serve`). */
  recordFile?: string
  /** Told of the manifest's load (phases "parse" for version 1, "load"). */
  progress?: ProgressSink
}

export interface LoadedImage {
  /**
   * For the native engine, the header, its inodes packed by C into the engine's tables
   * (src/native-engine/mapped-tables.ts; reading `inodes` reads the file again, whole: only tests and
   * debugging do). For the fuse-native engine, the whole object tree.
   */
  manifest: Manifest
  devices: RawDevice[]
  config: ConfigWatch
  /** The config ID current when loaded: the manifest's, or the later one its record reached through deltas. */
  configId: string
}

/**
 * The manifest for the native engine, loaded by C into tables in a file that the engine maps
 * (native/view/load2*.c; a few bytes of heap per file). Version 1 is streamed and validated first,
 * and re-encoded as a version 2 body for the same loader (src/native-engine/v1-manifest.ts).
 */
export function readPackedManifest(manifestPath: string, key?: Buffer, progress?: ProgressSink): Manifest {
  if (isV2Path(manifestPath)) return loadMappedManifest(manifestPath, key, () => readCheckedManifest(manifestPath, key).inodes, progress)
  return loadV1Manifest(manifestPath, key, progress)
}

export function loadImage(manifestPath: string, opts: LoadOptions): LoadedImage {
  // The fuse-native engine serves from the object tree (src/fuse-native-engine/frozen-view.ts).
  const native = !fuseNativeSelected()
  const manifest = native ? readPackedManifest(manifestPath, opts.key, opts.progress) : readCheckedManifest(manifestPath, opts.key)
  const config = new ConfigWatch(opts.recordFile ?? recordPath(manifestPath, manifest.configRecord), manifest.configId)
  let current: CurrentDevices = { devices: manifest.devices, retired: new Set() }
  let configId = manifest.configId
  const verdict = config.check()
  if (!verdict.ok) {
    // The native engine follows a record that moved on through deltas (src/mover/follow.ts), from its
    // first open. The fuse-native engine cannot follow: it needs the manifest's own ID.
    const record = native ? followable(config.file) : undefined
    if (!record) throw new StaleError(`frozen image not current: ${verdict.reason}`)
    current = devicesOfChain(manifest, config.file, record, opts.key)
    configId = record.configId
  }
  const deviceEnds = mappedTablesOf(manifest)?.deviceEnds
  const devices = resolveDevices(manifest, current, opts.deviceOverrides, deviceEnds)
  return { manifest, devices, config, configId }
}

/**
 * The devices at the end of the record's delta chain, read and checked now, so that the view is proved
 * with fingerprints of blocks the image still owns (the manifest's may have moved away) and never looks
 * for a device the chain retired (a replaced member, perhaps wiped). Its first open reads the chain
 * again to apply it.
 */
function devicesOfChain(manifest: Manifest, recordFile: string, record: ConfigRecord, key?: Buffer): CurrentDevices {
  // Only the native engine follows a chain, and its manifests are always in mapped tables.
  const fileSizes = mappedTablesOf(manifest)?.fileSizes() ?? fileSizesOfManifest(manifest)
  const start = { image: manifest.configId, seq: 1, from: manifest.configId, devices: manifest.devices, fileSizes, retired: new Set<number>(),
    dataChecksums: manifest.dataChecksums }
  const { ctx } = readDeltaChain(recordFile, record.deltas ?? [], start, key)
  if (ctx.from !== record.configId) throw new StaleError(`config-ID record ${recordFile} names ${record.configId}, but its delta chain ends at ${ctx.from}`)
  return ctx
}

/** ino → size of every regular file of a manifest held as objects. */
function fileSizesOfManifest(manifest: Manifest): Map<number, number> {
  return new Map(manifest.inodes.filter((i) => i.kind === 'file').map((i) => [i.ino, i.size]))
}

/** A current record whose config ID is reached through deltas. */
function followable(recordFile: string): ConfigRecord | undefined {
  try {
    const r = readRecord(recordFile)
    return r.state === 'current' && (r.deltas?.length ?? 0) > 0 ? r : undefined
  } catch {
    return undefined
  }
}
