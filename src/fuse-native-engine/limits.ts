// What fuse-native 2.2.6 cannot pass on exactly: its C hands libfuse2 inode and device numbers and
// statfs figures in 32 bits, and times as unsigned milliseconds (nothing before 1970). The engine
// refuses such an image, or such a request, rather than serve the metadata wrong.
import type { Inode, Manifest } from '../manifest/types'
import { pathOfInode } from '../manifest/paths'
import type { StatFs } from './frozen-view'
import { ExtfsError, ExitCode } from '../errors'

export const UINT32_MAX = 0xffff_ffff

/** The last second whose milliseconds (up to .999) a JS number still holds exactly. */
const LAST_SECOND = Math.floor((Number.MAX_SAFE_INTEGER - 999) / 1000)

const TIMES = ['atime', 'mtime', 'ctime'] as const

/** Why fuse-native would pass `inode`'s attributes on wrong, or undefined when it would not. */
function unservable(inode: Inode): string | undefined {
  if (inode.ino > UINT32_MAX) return 'its inode number is over 32 bits'
  if ((inode.rdev ?? 0) > UINT32_MAX) return `its device number ${inode.rdev} is over 32 bits`
  for (const field of TIMES) {
    const seconds = inode[field][0]
    if (seconds < 0 || seconds > LAST_SECOND) return `its ${field} (${seconds} s since 1970) is outside what fuse-native passes (0 to ${LAST_SECOND} s)`
  }
  return undefined
}

/** Refuses (one line, exit 2) an image of which the fuse-native engine would serve some metadata wrong. */
export function requireServable(manifest: Manifest): void {
  for (const inode of manifest.inodes) {
    const why = unservable(inode)
    if (why === undefined) continue
    throw new ExtfsError(ExitCode.Usage,
      `the fuse-native engine cannot serve ${pathOfInode(manifest, inode.ino) ?? `inode ${inode.ino}`} (inode ${inode.ino}) exactly: ${why}; unset EXTFS_ENGINE for the native engine`)
  }
}

/** A path of `ino` in the image, breadth first (only looked for when refusing). */
/** Whether fuse-native can pass these statfs figures on: each in 32 bits. */
export function statfsFits(figures: StatFs): boolean {
  return Object.values(figures).every((v: number) => v <= UINT32_MAX)
}
