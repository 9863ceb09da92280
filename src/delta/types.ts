// A delta: what changed in a frozen image's map since the previous config ID (docs/remap.md).
// The image itself never changes (sizes, metadata, tree): only where regular files' bytes lie.
import type { Device, Extent, Signature } from '../manifest/types'

export const DELTA_FORMAT = 'extfs-delta'
export const DELTA_VERSION = 1

/** One regular file's complete new location: extents (possibly none: all hole) or carried content. */
export interface DeltaFile {
  ino: number
  /** Sorted by fileOffset, non-overlapping; replaces the file's extent list whole. */
  extents?: Extent[]
  /** The whole content, base64 (data the device holds no plain copy of: inline, compressed). */
  inline?: string
}

export interface Delta {
  format: typeof DELTA_FORMAT
  version: number
  /** c0: the manifest's configId, naming the image this delta belongs to. */
  image: string
  /** 1 for the first delta after the manifest, then 2, 3, ... */
  seq: number
  /** The config ID this delta applies to (c(seq-1)) and the one it leads to (c(seq)). */
  from: string
  to: string
  createdAt: string
  reason: string
  /** Devices new in this delta: index n + j is devices[j] when the image had n devices before it. */
  devices: Device[]
  files: DeltaFile[]
  signature?: Signature
}
