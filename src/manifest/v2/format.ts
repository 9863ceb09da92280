// Manifest format version 2 (docs/manifest-v2.md): the constants, as native/manifest/v2.h holds them
// for C, and the trailer's layout.
import { ManifestError } from '../../errors'

export const V2_VERSION = 2
export const PREAMBLE = Buffer.from('EXTFSv2\n', 'latin1')
export const HEADER_MAX = 16 * 1024 * 1024
/**
 * The largest version 2 manifest a reader takes. A version 2 manifest is streamed and mapped, never
 * held whole, so this bounds the work a mover takes on, not its memory: 16 GiB, 2^24 inodes
 * (LIMITS.inodes) of 1 KiB each. 10,000,000 files of 100 B carried inline make 1.4 GB. (Version 1,
 * parsed whole, stays at 1 GiB: DEFAULT_MAX_MANIFEST_BYTES.)
 */
export const V2_MAX_BYTES = 16 * 2 ** 30
export const TRAILER_MAGIC = Buffer.from('EXTFSEND', 'latin1')
export const TRAILER_BYTES = 64
export const MAC_BYTES = 32
/** Trailer flags: the MAC is set. */
export const SIGNED = 1

export const TAG_DIR = 0x44
export const TAG_INODE = 0x49

/** INODE record `has` bits. */
export const HAS_RDEV = 1
export const HAS_ATTRS = 2
export const HAS_XATTRS = 4
export const HAS_INLINE = 8
export const HAS_ALL = 15

/** Extent `extras` bits. */
export const EXT_CSUMS = 1
export const EXT_COMPRESSED = 2

/** st_mode type bits, as the INODE record carries them. */
export const S_IFMT = 0o170000
export const MODE_OF_KIND = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, fifo: 0o010000, char: 0o020000, block: 0o060000, socket: 0o140000,
} as const
export type Kind = keyof typeof MODE_OF_KIND
const KIND_OF_MODE = new Map<number, Kind>(Object.entries(MODE_OF_KIND).map(([k, m]) => [m, k as Kind]))

/** The kind a mode's type bits name, or undefined. */
export function kindOfMode(mode: number): Kind | undefined {
  return KIND_OF_MODE.get(mode & S_IFMT)
}

/** btrfs's compression numbers (BTRFS_COMPRESS_*), as in the tables. */
export const COMPRESSION_CODES = { zlib: 1, lzo: 2, zstd: 3 } as const

export interface TrailerCounts {
  inodes: number
  dirs: number
  entries: number
}

export interface Trailer extends TrailerCounts {
  signed: boolean
  mac: Buffer
}

/** The trailer's 64 bytes; the MAC is filled in by the caller when signing (bytes 32..63). */
export function encodeTrailer(counts: TrailerCounts, signed: boolean): Buffer {
  const b = Buffer.alloc(TRAILER_BYTES)
  TRAILER_MAGIC.copy(b, 0)
  b.writeUInt32LE(counts.inodes, 8)
  b.writeUInt32LE(counts.dirs, 12)
  b.writeBigUInt64LE(BigInt(counts.entries), 16)
  b.writeUInt32LE(signed ? SIGNED : 0, 24)
  return b
}

/** The trailer's fields; throws ManifestError naming what is wrong. */
export function decodeTrailer(b: Buffer, path: string): Trailer {
  if (b.length !== TRAILER_BYTES || !b.subarray(0, 8).equals(TRAILER_MAGIC)) throw new ManifestError(`manifest ${path}: no version 2 trailer at its end (truncated?)`)
  const flags = b.readUInt32LE(24)
  if ((flags & ~SIGNED) !== 0 || b.readUInt32LE(28) !== 0) throw new ManifestError(`manifest ${path}: trailer has unknown flags ${flags} or reserved bits set`)
  const entries = b.readBigUInt64LE(16)
  if (entries > BigInt(Number.MAX_SAFE_INTEGER)) throw new ManifestError(`manifest ${path}: trailer counts ${entries} entries`)
  const mac = Buffer.from(b.subarray(32))
  if (!(flags & SIGNED) && mac.some((x) => x !== 0)) throw new ManifestError(`manifest ${path}: unsigned, but the trailer's MAC is not zero`)
  return { inodes: b.readUInt32LE(8), dirs: b.readUInt32LE(12), entries: Number(entries), signed: (flags & SIGNED) !== 0, mac }
}
