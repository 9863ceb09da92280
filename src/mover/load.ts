// Everything the mover checks before serving: manifest, signature, devices, fingerprints, config ID.
import type { Manifest } from '../manifest/types'
import { readManifestFile } from '../manifest/io'
import { verifyManifestSignature } from '../manifest/sign'
import { resolveDevices } from '../device/resolve'
import type { RawDevice } from '../device/reader'
import { ConfigWatch, recordPath } from '../configid/record'
import { StaleError } from '../errors'

export interface LoadOptions {
  key?: Buffer
  deviceOverrides: Map<string, string>
}

export interface LoadedImage {
  manifest: Manifest
  devices: RawDevice[]
  config: ConfigWatch
}

export function readCheckedManifest(manifestPath: string, key?: Buffer): Manifest {
  const manifest = readManifestFile(manifestPath)
  if (key) verifyManifestSignature(manifest, key)
  return manifest
}

export function loadImage(manifestPath: string, opts: LoadOptions): LoadedImage {
  const manifest = readCheckedManifest(manifestPath, opts.key)
  const config = new ConfigWatch(recordPath(manifestPath, manifest.configRecord), manifest.configId)
  const verdict = config.check()
  if (!verdict.ok) throw new StaleError(`frozen image not current: ${verdict.reason}`)
  const devices = resolveDevices(manifest, opts.deviceOverrides)
  return { manifest, devices, config }
}
