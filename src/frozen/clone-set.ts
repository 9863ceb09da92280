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

/** Clone each file into `dir` as `<source inode number>`; metadata is the original's right after cloning. */
export function cloneInto(dir: string): OpenFile {
  return (file, st) => {
    let src: number
    try {
      src = fs.openSync(hostPath(file), fs.constants.O_RDONLY | fs.constants.O_NOATIME | fs.constants.O_NOFOLLOW)
    } catch (err) {
      if (VANISHED.has((err as NodeJS.ErrnoException).code ?? '')) return undefined
      throw err
    }
    try {
      // The name may now belong to another inode (deleted and recreated): that is a different file.
      const before = fs.fstatSync(src, { bigint: true })
      if (!before.isFile() || before.ino !== st.ino) return undefined
      const clonePath = path.join(dir, String(st.ino))
      const clone = fs.openSync(clonePath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600)
      try {
        linux.ficlone(src, clone)
      } catch (err) {
        fs.closeSync(clone)
        const code = (err as NodeJS.ErrnoException).code
        if (code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL') {
          throw new ExportError(`${file}: cannot be cloned (${code}): this filesystem has no reflink; use --frozen-image freeze or none`)
        }
        throw new ExportError(`${file}: cloning failed: ${(err as Error).message}`)
      }
      const meta = fs.fstatSync(src, { bigint: true })
      const data = fs.fstatSync(clone, { bigint: true })
      return { fd: clone, meta, data, attrs: attrFlagsOf(src, file), close: () => fs.closeSync(clone) }
    } finally {
      fs.closeSync(src)
    }
  }
}
