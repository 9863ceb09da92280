// What export says of its progress (to a ProgressSink, src/progress.ts): files are inodes described,
// bytes their allocated bytes (st_blocks * 512), the measure the filesystem's used space is in.
import fs from 'node:fs'
import type { Counts, ProgressSink } from '../progress'
import type { BulkProgress } from '../linux'
import type { MountEntry } from '../mapping/mountinfo'

/**
 * The totals of a whole filesystem, from statfs: inodes and bytes in use. Only when the export is the
 * whole filesystem, as the walker sees it, and nothing else changes them meanwhile:
 * - a sub-tree gets none: statfs's figures would be an upper bound as loose as the tree is small, and
 *   a percentage that stops at 40% tells an admin something false;
 * - btrfs gets none: its statfs counts no inodes, and its space is the subvolumes' together;
 * - a clone set gets none: its clones are made during the walk and counted by statfs too.
 * They are the filesystem's own counts, so export ends a little below them: ext4 counts its reserved
 * inodes (journal, resize) as used, and the used space holds directories' and metadata blocks the
 * inodes' st_blocks may not (ext4's statfs leaves out its fixed metadata, XFS's its log).
 */
export function wholeFsTotals(mount: MountEntry, realPaths: string[], frozenImage: string): Counts | undefined {
  if (realPaths.length !== 1 || realPaths[0] !== mount.mountpoint || (mount.root ?? '/') !== '/') return undefined
  if (mount.fsType === 'btrfs' || frozenImage === 'snapshot') return undefined
  const s = fs.statfsSync(mount.mountpoint)
  const files = s.files - s.ffree
  return files > 0 ? { files, bytes: (s.blocks - s.bfree) * s.bsize } : undefined
}

/**
 * A bulk mapper's callback (src/linux BulkProgress) as phases of `progress`: "dirs" while it walks the
 * directories (inodes reached, no total: the tree is being discovered), "map" while it describes the
 * inodes (of the count reached when it knows it, exact for a sub-tree too; bytes of the filesystem's).
 */
export function bulkProgressOf(progress: ProgressSink | undefined, fsTotals: Counts | undefined): BulkProgress | undefined {
  if (!progress) return undefined
  const done: Counts = { files: 0, bytes: 0 }
  let phase: string | undefined
  return (kind, files, bytes, total) => {
    const name = kind === 'dirs' ? 'dirs' : 'map'
    const totals = kind === 'dirs' ? undefined : { files: total > 0 ? total : fsTotals?.files, bytes: fsTotals?.bytes }
    if (name !== phase) {
      phase = name
      progress.setPhase(name, totals)
    }
    done.files = files
    done.bytes = kind === 'dirs' ? 0 : bytes
    progress.update(done, totals)
  }
}
