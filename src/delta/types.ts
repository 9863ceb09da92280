// A delta: what changed in a frozen image's map since the previous config ID (docs/remap.md).
// The image itself never changes (sizes, metadata, tree): only where regular files' bytes lie.
import type { DataChecksums, Device, Extent, Fingerprint, Signature } from '../manifest/types'

export const DELTA_FORMAT = 'extfs-delta'
export const DELTA_VERSION = 1

/** One regular file's complete new location: extents (possibly none: all hole) or carried content. */
export interface DeltaFile {
  ino: number
  /**
   * Sorted by fileOffset, non-overlapping; replaces the file's extent list whole. With the delta's
   * `dataChecksums`, extents carry `copies` and `csums` as the manifest's do.
   */
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
  /**
   * The manifest's `dataChecksums`, repeated: present exactly when the image has feature
   * data-checksums, so that a delta says it was made to carry copies and csums (and an extfs that
   * predates them refuses it as an unknown field, loudly).
   */
  dataChecksums?: DataChecksums
  files: DeltaFile[]
  /**
   * New fingerprints for devices the image had before this delta whose blocks it moves: the old ones
   * may sample blocks the image no longer owns, so a mover mounting later proves the device with
   * these. Written only when there are some (older readers refuse the field, loudly).
   */
  proofs?: DeviceProof[]
  /**
   * Devices no extent uses from this delta on (a replaced member): retired for good, never used by a
   * later delta, and a mover mounting later need not find them. Written only when there are some.
   */
  retired?: number[]
  signature?: Signature
}

/** Fingerprints of device `device` (its index), sampled over the extents on it after the delta. */
export interface DeviceProof {
  device: number
  fingerprints: Fingerprint[]
}
