// Pre-flight checks of the mover's environment: each failure is one line and a documented exit code.
import fs from 'node:fs'
import path from 'node:path'
import { readMountTable } from '../mapping/mountinfo'
import { ExtfsError, MountpointError, ExitCode } from '../errors'

export function requireRoot(what: string): void {
  if (process.geteuid && process.geteuid() !== 0) throw new ExtfsError(ExitCode.Permission, `${what} needs root (raw devices, freezing, mounting)`)
}

export function requireFuse(): void {
  try {
    fs.closeSync(fs.openSync('/dev/fuse', fs.constants.O_RDWR))
  } catch (err) {
    throw new ExtfsError(ExitCode.NoFuse, `FUSE is not available: cannot open /dev/fuse (${(err as NodeJS.ErrnoException).code}); load the fuse module`)
  }
}

/** The mountpoint must be an existing, empty directory that is not already a mount. Returns its real path. */
export function checkMountpoint(mountpoint: string): string {
  let real: string
  try {
    real = fs.realpathSync(mountpoint)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTCONN') throw new MountpointError(`mountpoint ${mountpoint} is a dead FUSE mount; run extfs umount ${mountpoint}`)
    throw new MountpointError(`mountpoint ${mountpoint} does not exist`)
  }
  const existing = readMountTable().find((m) => m.mountpoint === real)
  if (existing?.source.startsWith('extfs:')) throw new MountpointError(`mountpoint ${mountpoint} is already an extfs view (extfs umount ${mountpoint} first)`)
  if (existing) throw new MountpointError(`mountpoint ${mountpoint} is already a mount`)
  if (!fs.statSync(real).isDirectory()) throw new MountpointError(`mountpoint ${mountpoint} is not a directory`)
  if (fs.readdirSync(real).length > 0) throw new MountpointError(`mountpoint ${mountpoint} is not empty`)
  return path.resolve(real)
}
