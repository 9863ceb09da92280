// Reading raw block devices on the mover: read-only, O_DIRECT so that bytes never come from a stale
// page cache of the device (another host may have written them since this host last looked).
import fs from 'node:fs'
import { linux } from '../linux'
import { DeviceError } from '../errors'

export class RawDevice {
  private constructor(readonly id: string, readonly path: string, readonly fd: number, readonly size: number) {}

  static open(id: string, devicePath: string): RawDevice {
    let fd: number
    try {
      fd = fs.openSync(devicePath, fs.constants.O_RDONLY | fs.constants.O_DIRECT)
    } catch (err) {
      throw new DeviceError(`device ${id}: cannot open ${devicePath}: ${(err as NodeJS.ErrnoException).code}`)
    }
    try {
      if (!fs.fstatSync(fd).isBlockDevice()) throw new DeviceError(`device ${id}: ${devicePath} is not a block device`)
      return new RawDevice(id, devicePath, fd, linux.blockDeviceSize(fd))
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
  }

  /**
   * Stands for a device a delta retired (no extent uses it any more): it is not looked for and has no
   * fd (-1), so a read through it fails in the engine instead of reading another device.
   */
  static retired(id: string): RawDevice {
    return new RawDevice(id, '', -1, 0)
  }

  /** Read exactly `length` bytes at `position` into `target[offset..]`; a short read is an error. */
  readExact(target: Buffer, offset: number, length: number, position: number): void {
    const n = linux.preadDirect(this.fd, target, offset, length, position)
    if (n !== length) throw new Error(`short read from ${this.path}: ${n} of ${length} bytes at ${position}`)
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd)
  }
}
