// Reflink clone sets: each regular file is cloned (FICLONE) into the image directory as it is walked.
// A clone shares the original's blocks; later writes to the original go to new blocks (copy on
// write), so the clone's extents stay put until release. Consistent per file only: files are cloned
// one after another while the owner keeps writing (cross-file consistency is the pre-freeze hook's job).
import fs from 'node:fs'
import path from 'node:path'
import { linux } from '../linux'
import { ExportError } from '../errors'
import { hostPath } from '../manifest/names'

/** An open regular file to describe: metadata from `meta`, data (size, extents) from `fd`. */
export interface FileData {
  fd: number
  /** Owner, mode and times, as the walk records them. */
  meta: fs.BigIntStats
  /** Size and allocation of the bytes behind `fd`. */
  data: fs.BigIntStats
  /** chattr's flags of the file itself (a clone has its own, not the original's). */
  attrs: number
  close(): void
}

/** Opens a regular file found by the walk; undefined when it vanished (or was replaced) since readdir. */
export type OpenFile = (file: string, st: fs.BigIntStats) => FileData | undefined

const VANISHED = new Set(['ENOENT', 'ELOOP', 'ENOTDIR'])

/** Open in place (frozen or otherwise stable filesystems). O_NOATIME: reading must not write metadata. */
export const openInPlace: OpenFile = (file, st) => {
  const fd = fs.openSync(hostPath(file), fs.constants.O_RDONLY | fs.constants.O_NOATIME)
  try {
    return { fd, meta: st, data: st, attrs: attrFlagsOf(fd, file), close: () => fs.closeSync(fd) }
  } catch (err) {
    fs.closeSync(fd)
    throw err
  }
}

/** FS_IOC_GETFLAGS of an open file or directory: what chattr set (0 where the filesystem keeps none). */
export function attrFlagsOf(fd: number, file: string): number {
  try {
    return linux.attrFlags(fd)
  } catch (err) {
    // Filesystems without flags (tmpfs before 6.0, some FUSE) have none to lose.
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTTY' || code === 'EOPNOTSUPP') return 0
    throw new ExportError(`${file}: cannot read its attribute flags: ${(err as Error).message}`)
  }
}

/**
 * Clone each file into `dir` as `<source inode number>`; metadata is the original's right after cloning.
 * Per file: open, FICLONE into a new file, fstat of both, FS_IOC_GETFLAGS: whether the name still
 * names the inode the walk met is told by the fstat after the clone (a clone of another file is
 * removed), not by one more fstat before it.
 */
export function cloneInto(dir: string): OpenFile {
  return (file, st) => {
    let src: number
    try {
      // O_NONBLOCK: the name may now be a FIFO, whose open would wait for a writer.
      src = fs.openSync(hostPath(file), fs.constants.O_RDONLY | fs.constants.O_NOATIME | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
    } catch (err) {
      if (VANISHED.has((err as NodeJS.ErrnoException).code ?? '')) return undefined
      throw err
    }
    try {
      const clonePath = path.join(dir, String(st.ino))
      const clone = fs.openSync(clonePath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600)
      let meta: fs.BigIntStats
      try {
        try {
          linux.ficlone(src, clone)
        } catch (err) {
          // The name may now be another inode, or no regular file (deleted and recreated): a different file.
          if (!isStill(fs.fstatSync(src, { bigint: true }), st)) return gone(clone, clonePath)
          const code = (err as NodeJS.ErrnoException).code
          if (code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL') {
            throw new ExportError(`${file}: cannot be cloned (${code}): this filesystem has no reflink; use --frozen-image freeze or none`)
          }
          throw new ExportError(`${file}: cloning failed: ${(err as Error).message}`)
        }
        meta = fs.fstatSync(src, { bigint: true })
        if (!isStill(meta, st)) return gone(clone, clonePath)
      } catch (err) {
        fs.closeSync(clone)
        throw err
      }
      const data = fs.fstatSync(clone, { bigint: true })
      return { fd: clone, meta, data, attrs: attrFlagsOf(src, file), close: () => fs.closeSync(clone) }
    } finally {
      fs.closeSync(src)
    }
  }
}

/** The open file is still the regular file the walk met under that name. */
function isStill(now: fs.BigIntStats, met: fs.BigIntStats): boolean {
  return now.isFile() && now.ino === met.ino
}

/** Drop a clone made of a file that is not the one the walk met: undefined, as for a vanished file. */
function gone(clone: number, clonePath: string): undefined {
  fs.closeSync(clone)
  fs.rmSync(clonePath)
  return undefined
}
