// The unit every mapping layer speaks: a run of bytes one layer down the storage stack.
// A file's FIEMAP extents are addresses in its filesystem's space; each layer below (btrfs chunks,
// device-mapper tables, a loop device's backing file, a partition) turns a range of its own address
// space into spans on the next device, until only raw disks are left.

/** A block device by number, as stat(2)'s st_dev / st_rdev name it. */
export interface DevNum {
  major: number
  minor: number
}

/** `length` bytes at `offset` on block device `dev`; `dev` null is a hole: those bytes read as zeros. */
export interface Span {
  dev: DevNum | null
  offset: number
  length: number
}

/** A whole disk the mover will open: the bottom of every stack. */
export interface RawDisk {
  /** Kernel name, e.g. "loop3". */
  name: string
  /** Device node, e.g. "/dev/loop3". */
  path: string
  major: number
  minor: number
  /** Size in bytes. */
  size: number
}

/** A span resolved to the bottom: `raw` null is a hole. */
export interface RawSpan {
  raw: RawDisk | null
  offset: number
  length: number
}

export function devKey(d: DevNum): string {
  return `${d.major}:${d.minor}`
}
