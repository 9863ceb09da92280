// The native engine's tables: one little-endian image that the C engine serves from without calling
// back into JS, packed by C from a manifest body of either version (native/view/load2*.c,
// mapped-tables.ts). Here: the layout contract, what deltas share with the packer, and a reader for
// tests. Pure: no I/O.
//
// This module and native/view/tables.h are the two halves of one layout; the addon exports its
// struct sizes, field offsets and signedness, and `checkLayout` refuses to run when they differ
// from LAYOUT.
//
//   header | inodes | dirents | extents | xattrs | copies | devices | names blob | data blob   (8-aligned)
//
// - inodes by dense index: the rank of the inode number, the root swapped to index 0 (FUSE nodeid =
//   index + 1, so the root is FUSE_ROOT_ID; load2.h m2_index_of). Hard links are one index named by
//   several dirents. st_ino is the manifest `ino`.
// - dirents of one directory are contiguous and sorted by the UTF-8 bytes of their names
//   (Buffer.compare = memcmp, then shorter first): lookup is a binary search; readdir walks them in
//   order with the position as the offset.
// - extents of one file are contiguous, sorted by fileOffset; neighbours contiguous on file and
//   device are merged (fewer preads, same bytes).
// - names blob: entry names, each NUL-terminated. data blob: symlink targets (NUL-terminated), inline
//   contents, xattr name lists (one inode's names back to back, NUL-terminated: listxattr's reply)
//   and xattr values; identical values and name lists are stored once; extents' data checksums.
// - copies: the other copies of extents with checksums (feature data-checksums), each extent's
//   back to back; such extents are not merged (their checksums and copies would have to be).
// - compressed extents (feature compressed-extents, which always have checksums): their encoding, a
//   `compressed` struct, lies in the data blob just before their checksums (tables.h).
//
// Cost per inode: 112 bytes (inode) + 12 per name (dirent) + name bytes + 1, + 40 per extent, + 16
// per xattr (+ its name and value unless shared). A 4 KiB file named "f000123" with one extent:
// 112 + 12 + 8 + 40 = 172 bytes.
import { CSUM_ALG } from '../linux'
import { COMPRESSIONS, CSUM_ALGORITHMS, type DataChecksums, type Extent, type ExtentCopy } from '../manifest/types'
import { Blob } from './blob'
import { decodeName, encodeName } from '../manifest/names'

export const TABLES_MAGIC = 0x54565845 // "EXVT" as a little-endian u32
export const TABLES_VERSION = 4
/** xt_inode.flags: a regular file whose content is in the data blob. */
export const FLAG_INLINE = 1
/** xt_extent.flags: the extent's sectors have checksums in the data blob (native/view/tables.h). */
export const EXTENT_CSUM = 1
/** xt_extent.flags: the extent's bytes are encoded; its `compressed` struct precedes its checksums. */
export const EXTENT_COMPRESSED = 2
/** xt_compressed.algorithm: btrfs's numbering (BTRFS_COMPRESS_ZLIB, _LZO, _ZSTD). */
export const COMPRESSION_ALG: Record<(typeof COMPRESSIONS)[number], number> = { zlib: 1, lzo: 2, zstd: 3 }

type FieldType = 'u16' | 'u32' | 'i32' | 'u64' | 'i64'
const FIELD_BYTES: Record<FieldType, number> = { u16: 2, u32: 4, i32: 4, u64: 8, i64: 8 }

export interface StructLayout {
  size: number
  fields: Record<string, { offset: number; size: number; type: FieldType }>
}

/** Offsets as a C compiler lays the struct out on x86-64 and arm64: natural alignment, no packing. */
function struct(spec: string): StructLayout {
  const fields: StructLayout['fields'] = {}
  let offset = 0
  let align = 1
  for (const item of spec.trim().split(/\s+/)) {
    const [name, type] = item.split(':') as [string, FieldType]
    const size = FIELD_BYTES[type]
    offset = Math.ceil(offset / size) * size
    fields[name] = { offset, size, type }
    offset += size
    align = Math.max(align, size)
  }
  return { size: Math.ceil(offset / align) * align, fields }
}

export const LAYOUT = {
  header: struct(`magic:u32 version:u32 total_size:u64 n_inodes:u32 n_dirents:u32 n_extents:u32 n_xattrs:u32
    n_devices:u32 block_size:u32 inodes_off:u64 dirents_off:u64 extents_off:u64 xattrs_off:u64 devices_off:u64
    names_off:u64 names_size:u64 data_off:u64 data_size:u64 sf_bsize:u64 sf_frsize:u64 sf_blocks:u64
    sf_bfree:u64 sf_bavail:u64 sf_files:u64 sf_ffree:u64 sf_favail:u64 sf_namemax:u64 n_copies:u32 csum_alg:u32
    csum_size:u32 sector_size:u32 copies_off:u64`),
  inode: struct(`ino:u64 size:u64 blocks:u64 rdev:u64 atime_sec:i64 mtime_sec:i64 ctime_sec:i64 atime_nsec:u32
    mtime_nsec:u32 ctime_nsec:u32 uid:u32 gid:u32 nlink:u32 first:u32 count:u32 xattr_first:u32 xattr_count:u32
    parent:u32 mode:u16 flags:u16 attrs:u32`),
  dirent: struct('name_off:u32 child:u32 name_len:u16 reserved:u16'),
  extent: struct('file_offset:u64 device_offset:u64 length:u64 device:u32 copy_first:u32 csum_off:u32 copy_count:u16 flags:u16'),
  copy: struct('device_offset:u64 device:u32 reserved:u32'),
  compressed: struct('algorithm:u32 disk_length:u32 decoded_length:u32 decoded_offset:u32'),
  xattr: struct('name_off:u32 value_off:u32 value_len:u32 name_len:u16 reserved:u16'),
  device: struct('fd:i32 reserved:u32 size:u64'),
  // Deltas (delta-tables.ts): not part of the image, but the same contract with the addon.
  delta_header: struct(`magic:u32 version:u32 total_size:u64 n_files:u32 n_extents:u32 n_devices:u32 n_copies:u32 files_off:u64
    extents_off:u64 devices_off:u64 copies_off:u64 data_off:u64 data_size:u64`),
  delta_file: struct('index:u32 first:u32 count:u32 reserved:u32'),
} as const

export type StructName = keyof typeof LAYOUT

/** What the addon's layout() returns: {version, magic, <struct>: {size, fields: {name: {offset, size, signed}}}}. */
export interface NativeLayout {
  version: number
  magic: number
  [struct: string]: number | { size: number; fields: Record<string, { offset: number; size: number; signed?: boolean }> }
}

/** Throws unless the addon was built from the same layout as this module. */
export function checkLayout(native: NativeLayout): void {
  const problems: string[] = []
  if (native.version !== TABLES_VERSION || native.magic !== TABLES_MAGIC) problems.push(`version ${native.version}, expected ${TABLES_VERSION}`)
  for (const [name, js] of Object.entries(LAYOUT)) {
    const c = native[name]
    if (typeof c !== 'object') {
      problems.push(`${name}: missing in the addon`)
      continue
    }
    if (c.size !== js.size) problems.push(`${name}: size ${c.size} in C, ${js.size} in JS`)
    const names = new Set([...Object.keys(c.fields), ...Object.keys(js.fields)])
    for (const f of names) {
      const a = c.fields[f]
      const b = (js.fields as StructLayout['fields'])[f]
      if (!a || !b || a.offset !== b.offset || a.size !== b.size) {
        problems.push(`${name}.${f}: ${a ? `${a.size}@${a.offset}` : 'absent'} in C, ${b ? `${b.size}@${b.offset}` : 'absent'} in JS`)
      } else if (a.signed !== isSigned(b.type)) {
        // Same bytes, other numbers: an fd of -1 read as u32, a time before 1970 as u64.
        problems.push(`${name}.${f}: ${signedness(a.signed)} in C, ${signedness(isSigned(b.type))} in JS`)
      }
    }
  }
  if (problems.length) throw new Error(`native view tables layout differs from src/native-engine/tables.ts: ${problems.join('; ')}`)
}

function isSigned(type: FieldType): boolean {
  return type === 'i32' || type === 'i64'
}

function signedness(signed: boolean | undefined): string {
  return signed === undefined ? 'signedness absent' : signed ? 'signed' : 'unsigned'
}

// ------------------------------------------------------------------------------------- packing

const U32_MAX = 0xffff_ffff
const TWO32 = 2 ** 32

/** The statfs figures of FrozenView.statfs(): sizes of the image as exported, nothing free. */
export interface StatFsFigures {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number
  files: number; ffree: number; favail: number; namemax: number
}

/**
 * Merge extents that continue each other on file and device (same device); never those with checksums
 * (so never compressed ones, which always have them).
 */
export function mergeExtents(extents: readonly Extent[]): Extent[] {
  const out: Extent[] = []
  for (const e of extents) {
    const last = out[out.length - 1]
    if (last && last.csums === undefined && e.csums === undefined && last.device === e.device &&
      last.fileOffset + last.length === e.fileOffset && last.deviceOffset + last.length === e.deviceOffset) {
      out[out.length - 1] = { ...last, length: last.length + e.length }
    } else out.push(e)
  }
  return out
}

/** The header fields naming the checksum algorithm (all zero without feature data-checksums). */
export function csumHeader(c: DataChecksums | undefined): { csum_alg: number; csum_size: number; sector_size: number } {
  if (c === undefined) return { csum_alg: CSUM_ALG.none, csum_size: 0, sector_size: 0 }
  return { csum_alg: CSUM_ALG[c.algorithm], csum_size: CSUM_ALGORITHMS[c.algorithm], sector_size: c.sectorSize }
}

/**
 * An extent's copies, checksums and encoding packed: the copies appended to `copies`, the checksums
 * added to `data` (a compressed extent's `compressed` struct just before them); returns the extent's
 * fields that point at them.
 */
export function packExtentExtras(e: Extent, copies: ExtentCopy[], data: Blob): { copy_first: number; copy_count: number; csum_off: number; flags: number } {
  if (e.csums === undefined) return { copy_first: 0, copy_count: 0, csum_off: 0, flags: 0 }
  const first = copies.length
  for (const c of e.copies ?? []) copies.push(c)
  if (copies.length > U32_MAX) throw new RangeError('view tables: too many extent copies')
  const csums = Buffer.from(e.csums, 'base64')
  if (e.compression === undefined) return { copy_first: first, copy_count: e.copies?.length ?? 0, csum_off: data.add(csums), flags: EXTENT_CSUM }
  const z = Buffer.alloc(LAYOUT.compressed.size)
  new Writer(z).struct('compressed', 0, {
    algorithm: COMPRESSION_ALG[e.compression], disk_length: e.diskLength!, decoded_length: e.decodedLength!, decoded_offset: e.decodedOffset!,
  })
  const at = data.add(Buffer.concat([z, csums]))
  return { copy_first: first, copy_count: e.copies?.length ?? 0, csum_off: at + z.length, flags: EXTENT_CSUM | EXTENT_COMPRESSED }
}

/** The fields of the `compressed` struct at `at` of `buf`, as a manifest extent names them. */
export function readCompression(buf: Buffer, at: number): Pick<Extent, 'compression' | 'diskLength' | 'decodedLength' | 'decodedOffset'> {
  const F = LAYOUT.compressed.fields
  const alg = buf.readUInt32LE(at + F.algorithm.offset)
  return {
    compression: COMPRESSIONS.find((c) => COMPRESSION_ALG[c] === alg), diskLength: buf.readUInt32LE(at + F.disk_length.offset),
    decodedLength: buf.readUInt32LE(at + F.decoded_length.offset), decodedOffset: buf.readUInt32LE(at + F.decoded_offset.offset),
  }
}

/** The copies section: `copies` at `at`. */
export function writeCopies(image: Buffer, at: number, copies: readonly ExtentCopy[]): void {
  const w = new Writer(image)
  copies.forEach((c, k) => w.struct('copy', at + k * LAYOUT.copy.size, { device_offset: c.deviceOffset, device: c.device }))
}

/** Writes struct fields by name at their LAYOUT offsets; u64/i64 from safe integers (< 2^53). */
export class Writer {
  private readonly view: DataView

  constructor(buf: Buffer) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }

  struct(name: StructName, at: number, values: Record<string, number>): void {
    const fields = LAYOUT[name].fields as StructLayout['fields']
    for (const key in values) {
      const f = fields[key]
      if (f === undefined) throw new Error(`view tables: ${name} has no field ${key}`)
      const v = values[key]!
      const o = at + f.offset
      switch (f.type) {
        case 'u16': this.view.setUint16(o, v, true); break
        case 'u32': this.view.setUint32(o, v, true); break
        case 'i32': this.view.setInt32(o, v, true); break
        case 'u64':
        case 'i64': // two's complement: the high word carries the sign
          this.view.setUint32(o, ((v % TWO32) + TWO32) % TWO32, true)
          this.view.setInt32(o + 4, Math.floor(v / TWO32), true)
          break
      }
    }
  }
}

// ------------------------------------------------------------------------------------- reading

/** A struct read back: field name → value. */
type Fields = Record<string, number>

/**
 * Reads a packed image the way the C engine does (binary-search lookup, extents, xattrs). For tests
 * and debugging; the request path is in C.
 */
export class TableReader {
  private readonly view: DataView
  readonly header: Fields

  constructor(private readonly image: Buffer) {
    this.view = new DataView(image.buffer, image.byteOffset, image.byteLength)
    this.header = this.struct('header', 0)
  }

  struct(name: StructName, at: number): Fields {
    const out: Record<string, number> = {}
    for (const [key, f] of Object.entries(LAYOUT[name].fields as StructLayout['fields'])) {
      const o = at + f.offset
      out[key] = f.type === 'u16' ? this.view.getUint16(o, true)
        : f.type === 'u32' ? this.view.getUint32(o, true)
          : f.type === 'i32' ? this.view.getInt32(o, true)
            : this.view.getInt32(o + 4, true) * TWO32 + this.view.getUint32(o, true)
    }
    return out
  }

  inode(index: number): Fields {
    return this.struct('inode', this.header.inodes_off + index * LAYOUT.inode.size)
  }

  dirent(k: number): { child: number; name: Buffer } {
    const d = this.struct('dirent', this.header.dirents_off + k * LAYOUT.dirent.size)
    const at = this.header.names_off + d.name_off
    return { child: d.child, name: this.image.subarray(at, at + d.name_len) }
  }

  /** A directory's entries in table order. */
  readdir(dirIndex: number): { name: string; child: number }[] {
    const dir = this.inode(dirIndex)
    return Array.from({ length: dir.count }, (_, k) => {
      const d = this.dirent(dir.first + k)
      return { name: decodeName(d.name), child: d.child }
    })
  }

  /** Binary search by name bytes, as ops.c does; the child's index or undefined. */
  lookup(dirIndex: number, name: string): number | undefined {
    const dir = this.inode(dirIndex)
    const want = encodeName(name)
    let lo = 0
    let hi = dir.count
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const d = this.dirent(dir.first + mid)
      const c = Buffer.compare(d.name, want)
      if (c === 0) return d.child
      if (c < 0) lo = mid + 1
      else hi = mid
    }
    return undefined
  }

  /** The index reached from the root by a "/"-separated path. */
  resolve(path: string): number | undefined {
    let index: number | undefined = 0
    for (const part of path.split('/')) if (part && index !== undefined) index = this.lookup(index, part)
    return index
  }

  extents(index: number): Extent[] {
    const n = this.inode(index)
    if (n.flags & FLAG_INLINE) return []
    return Array.from({ length: n.count }, (_, k) => {
      const e = this.struct('extent', this.header.extents_off + (n.first + k) * LAYOUT.extent.size)
      const x: Extent = { fileOffset: e.file_offset, device: e.device, deviceOffset: e.device_offset, length: e.length }
      return e.flags & EXTENT_COMPRESSED ? { ...x, ...readCompression(this.image, this.header.data_off + e.csum_off - LAYOUT.compressed.size) } : x
    })
  }

  /** Bytes of the data blob: symlink target or inline content. */
  data(index: number): Buffer {
    const n = this.inode(index)
    const at = this.header.data_off + n.first
    return this.image.subarray(at, at + n.count)
  }

  xattrs(index: number): Record<string, Buffer> {
    const n = this.inode(index)
    const out: Record<string, Buffer> = {}
    for (let k = 0; k < n.xattr_count; k++) {
      const x = this.struct('xattr', this.header.xattrs_off + (n.xattr_first + k) * LAYOUT.xattr.size)
      const d = this.header.data_off
      out[decodeName(this.image.subarray(d + x.name_off, d + x.name_off + x.name_len))] = this.image.subarray(d + x.value_off, d + x.value_off + x.value_len)
    }
    return out
  }

  /** listxattr's reply: the inode's names back to back, NUL-terminated. */
  listxattr(index: number): Buffer {
    const n = this.inode(index)
    if (n.xattr_count === 0) return Buffer.alloc(0)
    const firstX = this.struct('xattr', this.header.xattrs_off + n.xattr_first * LAYOUT.xattr.size)
    const lastX = this.struct('xattr', this.header.xattrs_off + (n.xattr_first + n.xattr_count - 1) * LAYOUT.xattr.size)
    const d = this.header.data_off
    return this.image.subarray(d + firstX.name_off, d + lastX.name_off + lastX.name_len + 1)
  }
}
