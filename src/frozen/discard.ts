// Removing a snapshot image: exactly the directory export made for it, checked by its marker, and the
// btrfs snapshot inside. Used by `release` and by an export that fails after creating the image.
import fs from 'node:fs'
import path from 'node:path'
import type { SnapshotMechanism } from '../manifest/types'
import { imageDirOf, ownershipOf, removeImageDir } from './image-dir'
import { deleteSnapshot, isSubvolume } from './btrfs-snapshot'
import { ExportError } from '../errors'

/** Name of the btrfs snapshot inside the image directory. */
export const SNAPSHOT_NAME = 'snapshot'

export interface ImageToDiscard {
  mountpoint: string
  imageId: string
  imagePath: string
  mechanism?: SnapshotMechanism
}

/** Returns whether anything was removed; throws, touching nothing, when the directory is not ours. */
export function discardImage(image: ImageToDiscard): boolean {
  // A manifest or journal is data: it may only name the one place export puts images.
  if (image.imagePath !== imageDirOf(image.mountpoint, image.imageId)) {
    throw new ExportError(`${image.imagePath} is not where extfs keeps image ${image.imageId}: left untouched`)
  }
  const owner = ownershipOf(image.imagePath, image.imageId)
  if (owner === 'absent') return false
  if (owner === 'foreign') throw new ExportError(`${image.imagePath} does not carry the marker of image ${image.imageId}: left untouched`)
  const snapshot = path.join(image.imagePath, SNAPSHOT_NAME)
  if (fs.existsSync(snapshot)) {
    if (!isSubvolume(snapshot)) throw new ExportError(`${snapshot} is not a btrfs subvolume: left untouched`)
    deleteSnapshot(snapshot)
  }
  removeImageDir(image.imagePath)
  return true
}
