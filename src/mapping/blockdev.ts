// From a filesystem's device number to the raw block device the mover must open, via sysfs.
// No udev here: /sys/dev/block/MAJ:MIN is the authority, /dev/<name> the node devtmpfs made.
import fs from 'node:fs'
import path from 'node:path'
import { ExportError } from '../errors'

export interface RawDevice {
  /** Kernel name of the whole disk, e.g. "loop3". */
  name: string
  /** Device node, e.g. "/dev/loop3". */
  path: string
  /** Byte offset of the filesystem on the raw device: the partition start, 0 for a whole device. */
  offset: number
  /** Size of the whole raw device in bytes. */
  size: number
}

/** Major and minor of a Linux dev_t as stat(2) reports it (glibc encoding, see makedev(3)). */
export function splitDev(dev: bigint | number): { major: number; minor: number } {
  const d = BigInt(dev)
  return {
    major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)),
    minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)),
  }
}

const SECTOR = 512 // sysfs "start" and "size" count 512-byte sectors, whatever the device's block size

function readNumber(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim())
}

/** Resolve the device a filesystem sits on (st_dev) to its raw disk and the partition start. */
export function rawDeviceOf(major: number, minor: number): RawDevice {
  let sysDir: string
  try {
    sysDir = fs.realpathSync(`/sys/dev/block/${major}:${minor}`)
  } catch {
    throw new ExportError(`device ${major}:${minor} is not a block device (is the filesystem network or virtual?)`)
  }
  let offset = 0
  if (fs.existsSync(path.join(sysDir, 'partition'))) {
    offset = readNumber(path.join(sysDir, 'start')) * SECTOR
    sysDir = path.dirname(sysDir)
  }
  if (fs.existsSync(path.join(sysDir, 'dm'))) {
    throw new ExportError(`${path.basename(sysDir)} is a device-mapper device; mapping through device-mapper is not supported yet`)
  }
  const name = path.basename(sysDir)
  const node = `/dev/${name}`
  if (!fs.existsSync(node)) throw new ExportError(`no device node ${node} for ${name}`)
  return { name, path: node, offset, size: readNumber(path.join(sysDir, 'size')) * SECTOR }
}

/** Whole-disk block devices on this host, from /sys/class/block (partitions left out). */
export function listRawDevices(): { name: string; path: string; size: number }[] {
  const out = []
  for (const name of fs.readdirSync('/sys/class/block')) {
    const dir = path.join('/sys/class/block', name)
    if (fs.existsSync(path.join(dir, 'partition'))) continue
    const size = readNumber(path.join(dir, 'size')) * SECTOR
    if (size === 0) continue // unattached loop devices, empty drives
    out.push({ name, path: `/dev/${name}`, size })
  }
  return out
}
