// `--frozen-image snapshot`: which mechanism holds the image still without blocking the owner.
//   btrfs, paths inside a subvolume other than the top level -> a read-only snapshot of that subvolume
//   XFS with reflink, btrfs top level                           -> a clone set (one reflink per file)
//   anything else                                                -> refused, before anything is created
import { execFileSync } from 'node:child_process'
import type { SnapshotMechanism } from '../manifest/types'
import type { MountEntry } from '../mapping/mountinfo'
import { subvolumeOf, TOP_LEVEL_SUBVOLUME } from './btrfs-snapshot'
import { ExportError } from '../errors'

export type SnapshotPlan =
  | { mechanism: Extract<SnapshotMechanism, 'btrfs-snapshot'>; subvolumeRoot: string }
  | { mechanism: Extract<SnapshotMechanism, 'clone-set'> }

function refuse(mount: MountEntry, why: string): never {
  throw new ExportError(`${mount.mountpoint}: --frozen-image snapshot is not possible (${why}); use --frozen-image freeze, or none on a read-only mount`)
}

/** xfs_info prints the geometry, including `reflink=0|1` in the data section. */
function xfsHasReflink(mountpoint: string): boolean {
  try {
    return /\breflink=1\b/.test(execFileSync('xfs_info', [mountpoint], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))
  } catch {
    return false
  }
}

/** `realPaths` are already known to be on one mount (and, on btrfs, in one subvolume: same st_dev). */
export function planSnapshot(mount: MountEntry, realPaths: string[]): SnapshotPlan {
  if (mount.readOnly) refuse(mount, 'it is mounted read-only; --frozen-image none fits')
  if (mount.fsType === 'btrfs') {
    const sub = subvolumeOf(realPaths[0])
    return sub.id === TOP_LEVEL_SUBVOLUME ? { mechanism: 'clone-set' } : { mechanism: 'btrfs-snapshot', subvolumeRoot: sub.root }
  }
  if (mount.fsType === 'xfs') {
    if (!xfsHasReflink(mount.mountpoint)) refuse(mount, 'XFS without reflink=1')
    return { mechanism: 'clone-set' }
  }
  refuse(mount, `${mount.fsType} has neither snapshots nor reflink`)
}
