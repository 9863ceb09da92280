// Freezing a filesystem (FIFREEZE) for the life of a frozen image. The freeze outlives this process:
// the kernel keeps the filesystem frozen until FITHAW, which `extfs release` issues.
// While frozen, every writer to that filesystem blocks (uninterruptibly) until the thaw.
import fs from 'node:fs'
import { linux } from '../linux'
import { ExportError } from '../errors'

function withDirFd<T>(mountpoint: string, fn: (fd: number) => T): T {
  const fd = fs.openSync(mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    return fn(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Flush and freeze. FIFREEZE itself syncs the filesystem before it returns. */
export function freezeFilesystem(mountpoint: string): void {
  withDirFd(mountpoint, (fd) => {
    try {
      linux.freeze(fd)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EBUSY') throw new ExportError(`${mountpoint} is already frozen (an earlier export not released?)`)
      if (code === 'EOPNOTSUPP' || code === 'ENOTTY') throw new ExportError(`${mountpoint}: filesystem cannot be frozen`)
      throw new ExportError(`cannot freeze ${mountpoint}: ${(err as Error).message}`)
    }
  })
}

/** Thaw; returns false when the filesystem was not frozen (EINVAL), e.g. released twice. */
export function thawFilesystem(mountpoint: string): boolean {
  return withDirFd(mountpoint, (fd) => {
    try {
      linux.thaw(fd)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EINVAL') return false
      throw err
    }
  })
}
