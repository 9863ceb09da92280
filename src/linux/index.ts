// The Linux calls Node lacks, from our N-API addon (native/extfs_native.c, built by node-gyp at install).
// Every function is synchronous and throws an Error with `code` (e.g. 'EINVAL'), `errno` (22) and `syscall`
// ('FITHAW') set on a failed syscall; bad arguments throw TypeError or RangeError.
import path from 'node:path'

/**
 * One FIEMAP extent as the kernel reports it; offsets and lengths in bytes. On ext4 the last extent's
 * length is rounded up to the block size (a 200-byte file reports 4096), so clamp to st_size. Inline
 * data (FIEMAP_EXTENT_DATA_INLINE) has an unaligned `physical` inside the inode table and its exact
 * length; the device only holds those bytes once the journal is checkpointed (e.g. by FIFREEZE).
 */
export interface FiemapExtent {
  logical: number
  /** Offset on the block device the filesystem sits on (not the raw disk when on a partition). */
  physical: number
  length: number
  /** FIEMAP_EXTENT_* flags. */
  flags: number
}

export const FIEMAP_EXTENT_LAST = 0x00000001
export const FIEMAP_EXTENT_UNKNOWN = 0x00000002
export const FIEMAP_EXTENT_DELALLOC = 0x00000004
export const FIEMAP_EXTENT_ENCODED = 0x00000008
export const FIEMAP_EXTENT_DATA_ENCRYPTED = 0x00000080
export const FIEMAP_EXTENT_NOT_ALIGNED = 0x00000100
export const FIEMAP_EXTENT_DATA_INLINE = 0x00000200
export const FIEMAP_EXTENT_DATA_TAIL = 0x00000400
export const FIEMAP_EXTENT_UNWRITTEN = 0x00000800
export const FIEMAP_EXTENT_MERGED = 0x00001000
export const FIEMAP_EXTENT_SHARED = 0x00002000

/** One btrfs chunk: `length` bytes of logical address space from `logical`, laid out on `stripes`. */
export interface BtrfsChunk {
  logical: number
  length: number
  /** Block group flags: BTRFS_BLOCK_GROUP_{DATA,SYSTEM,METADATA} and the profile bits (RAID0, DUP...). */
  type: number
  /** Bytes per stripe unit (64 KiB in practice). */
  stripeLen: number
  numStripes: number
  /** Copies per stripe set in RAID10 (2); 1 or 0 otherwise. */
  subStripes: number
  /** `offset` is the physical byte offset of the stripe on member `devid`; `devUuid` is that member's UUID. */
  stripes: { devid: number; offset: number; devUuid: string }[]
}

/** A btrfs filesystem's members as BTRFS_IOC_DEV_INFO reports them (`path` as the kernel knows it). */
export interface BtrfsDevices {
  fsid: string
  devices: { devid: number; uuid: string; path: string; totalBytes: number }[]
}

/** A btrfs filesystem's data checksums (BTRFS_IOC_FS_INFO with BTRFS_FS_INFO_FLAG_CSUM_INFO). */
export interface BtrfsCsumInfo {
  /** BTRFS_CSUM_TYPE_*: 0 crc32c, 1 xxhash64, 2 sha256, 3 blake2b. */
  type: number
  /** Bytes per checksum. */
  size: number
  /** Bytes per checksummed sector. */
  sectorSize: number
  /** Bytes per tree node (bounds how much one csum item covers). */
  nodeSize: number
}

/** A btrfs EXTENT_DATA item of a file (linux/btrfs_tree.h, struct btrfs_file_extent_item). */
export interface BtrfsFileExtent {
  /** The item's key offset: where in the file its bytes start. */
  fileOffset: number
  /** BTRFS_FILE_EXTENT_INLINE 0, _REG 1, _PREALLOC 2. */
  type: number
  /** BTRFS_COMPRESS_NONE 0, _ZLIB 1, _LZO 2, _ZSTD 3. */
  compression: number
  encryption: number
  otherEncoding: number
  /** Bytes the extent holds decoded (the whole extent, of which `offset`.. is referenced). */
  ramBytes: number
  /** Regular and preallocated only: the extent's logical address (0: a hole) and bytes there. */
  diskBytenr?: number
  diskNumBytes?: number
  /** Regular and preallocated only: where in the (decoded) extent the file's bytes start, and how many. */
  offset?: number
  numBytes?: number
}

/** Checksum algorithms as both addons number them (native/csum.h XT_CSUM_*): the view tables' csum_alg. */
export const CSUM_ALG = { none: 0, crc32c: 1 } as const

/**
 * A piece of btrfs's logical address space whose every copy lies unbroken on one raw disk: `disk` is an
 * index into the caller's disk list, copies[0] the copy read (src/export/bulk-btrfs.ts composes them).
 */
export interface BtrfsSegment {
  logical: number
  length: number
  copies: { disk: number; offset: number }[]
}

/**
 * A bulk mapper's progress (native/export/bulk.h): called synchronously from inside the mapper when a
 * phase starts and every 4096 inodes. `done`: inodes reached ("dirs": while the directories are walked)
 * or described ("inodes"); `bytes`: the allocated bytes (st_blocks * 512) of those described; `total`:
 * the inodes to describe, 0 when unknown. A callback that throws is not called again.
 */
export type BulkProgress = (phase: 'dirs' | 'inodes', done: number, bytes: number, total: number) => void

/** What btrfsBulkMap wrote: the body's counts (the v2 trailer's), the features it needs, extents to fingerprint. */
export interface BtrfsBulkResult {
  inodes: number
  dirs: number
  entries: number
  /** Some name, symlink target or xattr name is not UTF-8: feature byte-names. */
  byteNames: boolean
  /** Some file's content is carried in the body: feature inline-data. */
  inlineData: boolean
  /** Some extent carries crc32c checksums (mirrored or compressed data): feature data-checksums. */
  dataChecksums: boolean
  /** Some extent is compressed: feature compressed-extents. */
  compressedExtents: boolean
  bodyBytes: number
  /** Bytes of the tables that scale with the tree (17 per directory of the subvolume). */
  tableBytes: number
  /** BTRFS_IOC_TREE_SEARCH_V2 calls made. */
  searches: number
  /** ru_maxrss of the process when the mapper finished, KiB. */
  peakRssKiB: number
  /** The allocated bytes (st_blocks * 512) of the inodes described. */
  allocatedBytes: number
  /** Up to 1024 ranges per disk, evenly spaced in body order, checksummed ones with their csums: what export fingerprints. */
  samples: { disk: number; deviceOffset: number; length: number; csums?: Buffer }[]
  /** The disks the extents reach, in the body's numbering: each one's index into the segments' disks. */
  disks: number[]
}

/** What xfsBulkMap wrote: the body's counts (the v2 trailer's), features it needs, and extents to fingerprint. */
export interface XfsBulkResult {
  inodes: number
  dirs: number
  entries: number
  /** Some name, symlink target or xattr name is not UTF-8: feature byte-names. */
  byteNames: boolean
  bodyBytes: number
  /** Address space of the table of one byte per inode number (untouched pages cost nothing). */
  tableBytes: number
  /** FS_IOC_GETFSMAP sweeps, one per window of inode numbers. */
  windows: number
  /** Inodes opened by handle: directories, symlinks, inodes with an attribute fork. */
  handleOpens: number
  /** ru_maxrss of the process when the mapper finished, KiB. */
  peakRssKiB: number
  /** The allocated bytes (st_blocks * 512) of the inodes described. */
  allocatedBytes: number
  /** Up to 1024 ranges per disk, evenly spaced in body order: what export fingerprints. */
  samples: { disk: number; deviceOffset: number; length: number }[]
}

/**
 * A linear piece of a filesystem's byte address space on one raw disk (index into the caller's disk
 * list), or `hole`: on none (a loop backing file's hole, read as zeros; `disk` and `diskOffset` unused).
 */
export type Ext4Segment = { fsOffset: number; length: number; disk: number; diskOffset: number; hole?: false } | { fsOffset: number; length: number; hole: true }

/** What ext4BulkMap wrote: the body's counts (the v2 trailer's), features it needs, and extents to fingerprint. */
export interface Ext4BulkResult {
  inodes: number
  dirs: number
  entries: number
  /** Some name, symlink target or xattr name is not UTF-8: feature byte-names. */
  byteNames: boolean
  /** Some file's content is carried in the body: feature inline-data. */
  inlineData: boolean
  /** The device was read with O_DIRECT (else buffered: the device refused O_DIRECT). */
  directIo: boolean
  bodyBytes: number
  /** Bytes of the per-inode tables (one byte and one bit per inode of the filesystem, lazily touched). */
  tableBytes: number
  /** ru_maxrss of the process when the mapper finished, KiB. */
  peakRssKiB: number
  /** The allocated bytes (st_blocks * 512) of the inodes described. */
  allocatedBytes: number
  /** Up to 1024 extents per disk, evenly spaced in body order: what export fingerprints. */
  samples: { disk: number; deviceOffset: number; length: number }[]
}

export interface NativeAddon {
  /** All extents of the open file `fd`, with FIEMAP_FLAG_SYNC (dirty data flushed first). */
  fiemap(fd: number): FiemapExtent[]
  /** FIFREEZE on a file descriptor open on the filesystem's mountpoint directory. */
  freeze(fd: number): void
  /** FITHAW; throws EINVAL when the filesystem is not frozen. */
  thaw(fd: number): void
  /** FS_IOC_GETFLAGS: the file attribute flags of an open file or directory (chattr's, FS_*_FL). */
  attrFlags(fd: number): number
  /** FICLONE: `destFd` (an empty file opened for writing) shares every block of `srcFd`; EOPNOTSUPP without reflink. */
  ficlone(srcFd: number, destFd: number): void
  /** BLKGETSIZE64: the size of an open block device in bytes. */
  blockDeviceSize(fd: number): number
  /** BLKSSZGET: the logical sector size of an open block device in bytes. */
  logicalBlockSize(fd: number): number
  /**
   * llistxattr(2): attribute names of a path, without following a final symlink. Names are bytes (not
   * always UTF-8), paths and names given as strings are UTF-8: a Buffer passes any bytes but NUL.
   */
  listXattrs(path: string | Buffer): Buffer[]
  /** lgetxattr(2): one attribute's value. */
  getXattr(path: string | Buffer, name: string | Buffer): Buffer
  /**
   * Read `length` bytes at byte `position` of `fd` (opened with O_DIRECT) into `target[targetOffset..]`.
   * Offsets and lengths need no alignment: the addon reads the enclosing 4096-aligned range into an
   * aligned bounce buffer and copies. Returns the bytes copied, short only at the end of the device.
   */
  preadDirect(fd: number, target: Buffer, targetOffset: number, length: number, position: number): number
  /** BTRFS_IOC_TREE_SEARCH_V2 over the chunk tree of the btrfs filesystem `fd` is open on, sorted by `logical`. */
  btrfsChunks(fd: number): BtrfsChunk[]
  /** BTRFS_IOC_FS_INFO + BTRFS_IOC_DEV_INFO: the fsid and every present member device, by devid. */
  btrfsDevices(fd: number): BtrfsDevices
  /** The data checksum algorithm of the btrfs filesystem `fd` is on; EOPNOTSUPP before Linux 5.5. */
  btrfsCsumInfo(fd: number): BtrfsCsumInfo
  /**
   * The csum tree's checksums of logical bytes [logical, logical + length) (multiples of sectorSize),
   * one per sector in order, and how many sectors have one (the others are zeros: nodatasum data).
   * `fd`: any file or directory on the filesystem.
   */
  btrfsCsums(fd: number, logical: number, length: number, sectorSize: number, csumSize: number, nodeSize: number): { csums: Buffer; covered: number }
  /** The EXTENT_DATA items of the regular file `fd` is open on, in file order (tree search of its subvolume). */
  btrfsFileExtents(fd: number): BtrfsFileExtent[]
  /** Index of the first sector of `data` whose checksum in `csums` differs, or -1. `alg`: 1 crc32c (native/csum.h). */
  csumVerify(alg: number, data: Buffer, csums: Buffer, sectorSize: number): number
  /** glibc's malloc_trim(0): free pages of the malloc arenas given back to the kernel; whether any were. */
  mallocTrim(): boolean
  /**
   * The ext4 bulk mapper (native/export/ext4.c): reads the frozen ext4 on `device` with libext2fs and
   * writes the manifest v2 body (DIR then INODE records) of the tree under inode `root` to `fd`, entries
   * naming an inode in `skip` left out, extents placed on raw disks through `segments` (sorted, disjoint;
   * the bytes of a file in a `hole` segment are left out, as the VFS mapper leaves out unbacked spans).
   * Throws code ERR_BULK_REFUSED for what it does not reproduce exactly (the VFS walker may do it
   * instead), ERR_BULK_FAILED for what the walker would fail on too (I/O, the carry limit).
   */
  ext4BulkMap(opts: { device: string; root: number; skip: number[]; segments: Ext4Segment[]; carryMax: number; fd: number; onProgress?: BulkProgress }): Ext4BulkResult
  /**
   * The btrfs bulk mapper (native/export/btrfs_bulk.c): two sweeps of the fs tree of the subvolume
   * `treeFd` is in (a read-only snapshot) write the manifest v2 body of the tree under directory inode
   * `root` to `fd` (DIR records there, INODE records first to the empty scratch file `inodesFd`),
   * entries naming a directory in `skip` left out, logical addresses placed on raw disks through
   * `segments` (sorted, disjoint). Throws code ERR_BULK_REFUSED for what it does not reproduce exactly
   * (the VFS walker may do it instead), ERR_BULK_FAILED for what the walker would fail on too.
   */
  /**
   * The XFS bulk mapper (native/export/xfs_bulk.c): on the frozen XFS that `rootFd` (the exported
   * directory, inode `root`) is on, writes the manifest v2 body of the tree under it to `fd` from
   * XFS_IOC_BULKSTAT and FS_IOC_GETFSMAP (directories read by handle), entries naming a directory in
   * `skip` left out, the data device's bytes placed on raw disks through `segments` (as ext4BulkMap's).
   * `device` (the filesystem's block device) is read with O_DIRECT for on-disk inodes only, to skip
   * opening those whose attribute fork is empty. `windowExtents` (default 524,288): extents held per window of inode numbers (tests make it small).
   * Throws code ERR_BULK_REFUSED for what it does not reproduce exactly (no reverse map, realtime, ...:
   * the VFS walker may do it instead), ERR_BULK_FAILED for what the walker would fail on too.
   */
  xfsBulkMap(opts: { device: string; rootFd: number; root: number; skip: number[]; segments: Ext4Segment[]; fd: number; windowExtents?: number; onProgress?: BulkProgress }): XfsBulkResult
  btrfsBulkMap(opts: {
    treeFd: number; root: number; skip: number[]; segments: BtrfsSegment[]; carryMax: number; fd: number; inodesFd: number
    sectorSize: number; nodeSize: number; csumType: number; csumSize: number; onProgress?: BulkProgress
  }): BtrfsBulkResult
}

// dist/linux/index.js and src/linux/index.ts both sit two levels below the package root. EXTFS_ADDON_DIR
// names another build of both addons (scripts/sanitize: an AddressSanitizer build).
export const linux: NativeAddon = require(path.join(process.env.EXTFS_ADDON_DIR || path.join(__dirname, '..', '..', 'build', 'Release'), 'extfs_native.node'))
