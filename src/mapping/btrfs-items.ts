// A btrfs file's EXTENT_DATA items (linux.btrfsFileExtents) → its written extents: plain ones as FIEMAP
// would report them, compressed ones as btrfs stores them. Pure: the mapper (mapper.ts) reads the items
// of a file FIEMAP shows compressed extents in, and resolves what this returns to raw disks.
import type { FiemapExtent, BtrfsFileExtent } from '../linux'
import type { COMPRESSIONS, Extent } from '../manifest/types'
import { ExportError } from '../errors'

/** btrfs's BTRFS_FILE_EXTENT_* item types and the manifest's names of its BTRFS_COMPRESS_* algorithms. */
const FILE_EXTENT_INLINE = 0
const FILE_EXTENT_PREALLOC = 2
const BTRFS_COMPRESSION: readonly ((typeof COMPRESSIONS)[number] | undefined)[] = [undefined, 'zlib', 'lzo', 'zstd']
/** btrfs's BTRFS_MAX_COMPRESSED and BTRFS_MAX_UNCOMPRESSED. */
const COMPRESSED_MAX = 128 * 1024

/**
 * A btrfs compressed extent as its item says: `length` file bytes from `fileOffset` are bytes
 * `decodedOffset`.. of what the `diskLength`-byte stream at logical address `logical` decodes to.
 */
export type CompressedItem = Required<Pick<Extent, 'fileOffset' | 'length' | 'compression' | 'diskLength' | 'decodedLength' | 'decodedOffset'>> & {
  logical: number
}

/**
 * The written extents of `file` from its items, in file order: holes (disk_bytenr 0) and preallocated
 * ranges left out (they read as zeros). Encrypted or otherwise encoded items, an inline item among
 * regular ones, unknown algorithms and items out of btrfs's bounds are refused.
 */
export function writtenExtents(items: readonly BtrfsFileExtent[], file: string): (FiemapExtent | CompressedItem)[] {
  const out: (FiemapExtent | CompressedItem)[] = []
  for (const it of items) {
    const at = `${file}: extent at ${it.fileOffset}`
    if (it.encryption !== 0 || it.otherEncoding !== 0) throw new ExportError(`${at} is encrypted or otherwise encoded: cannot be read raw`)
    if (it.type === FILE_EXTENT_INLINE) throw new ExportError(`${at} is inline among regular ones: not supported`)
    if (it.type === FILE_EXTENT_PREALLOC || it.diskBytenr === 0) continue
    if (it.compression === 0) {
      out.push({ logical: it.fileOffset, physical: it.diskBytenr! + it.offset!, length: it.numBytes!, flags: 0 })
      continue
    }
    const compression = BTRFS_COMPRESSION[it.compression]
    if (compression === undefined) throw new ExportError(`${at} is compressed with btrfs algorithm ${it.compression}, which extfs does not know`)
    if (it.diskNumBytes! > COMPRESSED_MAX || it.ramBytes > COMPRESSED_MAX || it.offset! + it.numBytes! > it.ramBytes) {
      throw new ExportError(`${at} is out of btrfs's bounds (${it.diskNumBytes} bytes on disk, ${it.ramBytes} decoded, ${it.numBytes} used from ${it.offset})`)
    }
    out.push({
      fileOffset: it.fileOffset, compression, logical: it.diskBytenr!, diskLength: it.diskNumBytes!, decodedLength: it.ramBytes,
      decodedOffset: it.offset!, length: it.numBytes!,
    })
  }
  return out
}
