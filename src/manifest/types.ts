// The extent manifest: what the initiator publishes and the mover serves.
// Format documented in docs/manifest-format.md. Everything here is plain JSON data.

export const MANIFEST_FORMAT = 'extfs-manifest'
export const MANIFEST_VERSION = 1
/** The newest version this build reads: 2 is the binary layout (docs/manifest-v2.md). */
export const MANIFEST_VERSION_MAX = 2
/** Feature flags this build understands; a manifest naming any other is refused. */
export const KNOWN_FEATURES = ['inline-data', 'data-checksums', 'byte-names', 'compressed-extents'] as const
export type Feature = (typeof KNOWN_FEATURES)[number]

/** Seconds and nanoseconds since the epoch, as stat(2) reports them. */
export type Timespec = [sec: number, nsec: number]

/**
 * One physical extent: `length` bytes of the file starting at `fileOffset` live on
 * devices[device] starting at byte `deviceOffset` (offsets on the raw device, partition start included).
 * Only written data is listed: holes and unwritten (preallocated) extents are simply absent and read as zeros.
 * The last extent may run past the file size (the tail of the last block); readers clip at `size`.
 */
export interface Extent {
  fileOffset: number
  device: number
  deviceOffset: number
  length: number
  /** Feature `data-checksums`: the other copies (btrfs mirrors) of the same `length` bytes. */
  copies?: ExtentCopy[]
  /** Feature `data-checksums`: base64, one checksum per sector of the extent (header `dataChecksums`). */
  csums?: string
  /**
   * Feature `compressed-extents` (btrfs compress=): the bytes on the device are encoded. `diskLength`
   * bytes at `deviceOffset` (and at each copy; `csums` cover them) decode to at most `decodedLength`
   * bytes, and the file's `length` bytes are those from `decodedOffset` on. All four come together.
   */
  compression?: Compression
  diskLength?: number
  decodedLength?: number
  decodedOffset?: number
}

/** The compression algorithms a manifest may name: btrfs's. */
export const COMPRESSIONS = ['zlib', 'lzo', 'zstd'] as const
export type Compression = (typeof COMPRESSIONS)[number]

/** Bytes an extent takes on its device and at each copy: a compressed extent's encoded stream, else its length. */
export function bytesOnDevice(e: Extent): number {
  return e.diskLength ?? e.length
}

/** Another copy of an extent's bytes: `length` bytes at `deviceOffset` of devices[device]. */
export interface ExtentCopy {
  device: number
  deviceOffset: number
}

/** The checksum algorithms a manifest may name, with their checksum sizes in bytes. */
export const CSUM_ALGORITHMS = { crc32c: 4 } as const
export type CsumAlgorithm = keyof typeof CSUM_ALGORITHMS

/** Feature `data-checksums`: how extents' `csums` were computed (btrfs's own data checksums). */
export interface DataChecksums {
  algorithm: CsumAlgorithm
  /** Bytes covered by one checksum (the btrfs sector size). */
  sectorSize: number
}

/** Stable identifiers of a raw block device, as far as the initiator could find them. */
export interface DeviceIdentity {
  /** Filesystem UUID, when the filesystem sits directly on this device. */
  fsUuid?: string
  /** Partition-table UUID (GPT disk GUID or MBR disk id), when the device is partitioned. */
  ptUuid?: string
  /** Member-device UUID of a multi-device filesystem (btrfs UUID_SUB); fsUuid alone is shared by all members. */
  devUuid?: string
  wwn?: string
  serial?: string
}

/** A hash of one sampled block inside the frozen extents, taken at export through O_DIRECT. */
export interface Fingerprint {
  offset: number
  length: number
  sha256: string
}

export interface Device {
  /** Short name used in logs and `--device <id>=<path>`, e.g. "d0". */
  id: string
  /** Size in bytes (BLKGETSIZE64). */
  size: number
  identity: DeviceIdentity
  fingerprints: Fingerprint[]
  /** The device path on the initiator: a hint for the mover, never trusted on its own. */
  hint?: string
}

export type InodeKind = 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket'

export interface DirEntry {
  name: string
  ino: number
}

export interface Inode {
  /** View inode number; hard links share one inode. Stable for the life of the manifest. */
  ino: number
  kind: InodeKind
  /** Permission bits incl. setuid/setgid/sticky (st_mode & 07777); the type comes from `kind`. */
  perm: number
  uid: number
  gid: number
  nlink: number
  size: number
  /** st_blocks: 512-byte units allocated on the initiator (unwritten extents included). */
  blocks: number
  atime: Timespec
  mtime: Timespec
  ctime: Timespec
  /** Device number for char/block nodes (st_rdev). */
  rdev?: number
  /**
   * Regular files and directories: the file attribute flags (FS_IOC_GETFLAGS, what chattr sets and
   * lsattr shows: FS_IMMUTABLE_FL, FS_APPEND_FL, FS_NODUMP_FL, ...); absent when 0.
   */
  attrs?: number
  /** Extended attributes, values base64 (POSIX ACLs are the system.posix_acl_* names). */
  xattrs?: Record<string, string>
  /** Regular files: physical extents sorted by fileOffset, non-overlapping. */
  extents?: Extent[]
  /** Regular files whose data the filesystem keeps inline (not readable raw): the content, base64. */
  inline?: string
  /** Symlinks: the target. */
  target?: string
  /** Directories: the entries, without "." and "..". */
  entries?: DirEntry[]
}

export type FrozenImageKind = 'freeze' | 'none' | 'snapshot'

/** How a `snapshot` image is held: a read-only btrfs subvolume snapshot, or reflink clones of each file. */
export type SnapshotMechanism = 'btrfs-snapshot' | 'clone-set'

export interface FrozenImage {
  kind: FrozenImageKind
  /** Mountpoint of the frozen filesystem on the initiator (what `release` thaws). */
  mountpoint: string
  fsType: string
  fsUuid?: string
  /** `snapshot` only: which mechanism export picked. */
  mechanism?: SnapshotMechanism
  /** `snapshot` only: 32 hex digits naming the image directory (`<mountpoint>/.extfs-images/<imageId>`). */
  imageId?: string
  /** `snapshot` only: the image directory export created and `release` removes (holds the snapshot or the clones). */
  imagePath?: string
}

export interface Signature {
  alg: 'hmac-sha256'
  /** Hex HMAC over the canonical JSON of the manifest without its signature. */
  value: string
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT
  version: number
  features: string[]
  configId: string
  createdAt: string
  /** Initiator host name and the paths exported (as given). */
  source: { host: string; paths: string[] }
  frozenImage: FrozenImage
  /** Path of the config-ID record on storage both hosts share. */
  configRecord: string
  /** Filesystem block size, reported by statfs on the view. */
  blockSize: number
  /** Feature `data-checksums` only: the algorithm and sector size of every extent's `csums`. */
  dataChecksums?: DataChecksums
  devices: Device[]
  root: number
  inodes: Inode[]
  signature?: Signature
}

/** Everything of a manifest but its inodes. */
export type ManifestHeader = Omit<Manifest, 'inodes'>
