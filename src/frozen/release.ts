// `extfs release`: end the frozen image. The record is marked released first, so movers refuse new
// opens before the filesystem can change under them; then the filesystem is thawed.
import type { Manifest } from '../manifest/types'
import { recordPath, writeRecord } from '../configid/record'
import { thawFilesystem } from './freeze'
import { mountOf } from '../mapping/mountinfo'
import { ExtfsError } from '../errors'
import { ExitCode } from '../cli/exit-codes'

export interface ReleaseResult {
  /** False when the filesystem was not frozen any more (released before, or thawed by hand). */
  thawed: boolean
}

export function releaseImage(manifestPath: string, manifest: Manifest): ReleaseResult {
  const image = manifest.frozenImage
  if (image.kind === 'freeze') {
    const mount = mountOf(image.mountpoint)
    if (!mount || mount.mountpoint !== image.mountpoint || mount.fsType !== image.fsType) {
      throw new ExtfsError(ExitCode.Export, `${image.mountpoint} is no longer the ${image.fsType} filesystem this image froze`)
    }
  }
  writeRecord(recordPath(manifestPath, manifest.configRecord), manifest.configId, 'released')
  return { thawed: image.kind === 'freeze' ? thawFilesystem(image.mountpoint) : false }
}
