// Taking and undoing the frozen image an export reads from: a freeze, a btrfs snapshot, a clone set,
// or nothing (`none`). What the walk needs to know about the image comes back as a `Hold`.
import fs from 'node:fs'
import path from 'node:path'
import type { FrozenImage } from '../manifest/types'
import { freezeFilesystem, thawFilesystem } from '../frozen/freeze'
import { createImageDir, imagesRootOf } from '../frozen/image-dir'
import { takeSnapshot } from '../frozen/btrfs-snapshot'
import { discardImage, SNAPSHOT_NAME } from '../frozen/discard'
import { cloneInto, openInPlace, OpenFile } from '../frozen/clone-set'
import type { SnapshotPlan } from '../frozen/snapshot'

/** Where and how the walk reads the image. */
export interface Hold {
  /** Where the walk finds each exported path (inside the snapshot for btrfs snapshots), same order. */
  walkPaths: string[]
  /** st_dev of what is walked: a btrfs snapshot is a subvolume with a device number of its own. */
  dev: bigint
  openFile: OpenFile
  /** Never walked: our image directory (the clones, the snapshot), as seen from the walk. */
  skip: Set<string>
  /** The owner keeps writing while we walk (clone sets). */
  live: boolean
}

/**
 * Take the image `image` describes. For a clone set only the (empty) image directory is made here: files
 * are cloned as the walk meets them. `dev` is the source paths' st_dev.
 */
export function takeImage(image: FrozenImage, plan: SnapshotPlan | undefined, realPaths: string[], dev: bigint): Hold {
  const inPlace: Hold = { walkPaths: realPaths, dev, openFile: openInPlace, skip: new Set(), live: false }
  if (image.kind === 'none') return inPlace
  if (image.kind === 'freeze') {
    freezeFilesystem(image.mountpoint)
    return inPlace
  }
  const imagesRoot = imagesRootOf(image.mountpoint)
  const dir = createImageDir(image.mountpoint, image.imageId!)
  if (plan?.mechanism === 'clone-set') {
    return { walkPaths: realPaths, dev, openFile: cloneInto(dir), skip: new Set([imagesRoot]), live: true }
  }
  const root = plan!.subvolumeRoot
  const snapshot = path.join(dir, SNAPSHOT_NAME)
  takeSnapshot(root, snapshot)
  return { ...inSnapshot(root, snapshot, realPaths, imagesRoot), dev: fs.statSync(snapshot, { bigint: true }).dev, openFile: openInPlace, live: false }
}

/**
 * Where the exported paths are inside a btrfs snapshot of subvolume `root`, and what a walk there skips;
 * also how remap finds them again (src/remap/bulk.ts).
 */
export function inSnapshot(root: string, snapshot: string, realPaths: string[], imagesRoot: string): { walkPaths: string[]; skip: Set<string> } {
  // The same place inside the snapshot: the walk reads the image, never the live subvolume.
  const inside = (p: string) => path.join(snapshot, path.relative(root, p))
  const skip = new Set([imagesRoot])
  // Our images directory may sit inside the snapshotted subvolume (it was there, empty, when the snapshot was taken).
  if (imagesRoot.startsWith(root + '/')) skip.add(inside(imagesRoot))
  return { walkPaths: realPaths.map(inside), skip }
}

/** Undo what takeImage did, after a failed export. */
export function undoImage(image: FrozenImage): void {
  if (image.kind === 'freeze') thawFilesystem(image.mountpoint)
  if (image.kind === 'snapshot') {
    discardImage({ mountpoint: image.mountpoint, imageId: image.imageId!, imagePath: image.imagePath!, mechanism: image.mechanism })
  }
}
