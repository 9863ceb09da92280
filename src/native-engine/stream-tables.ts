// Packing the native engine's tables while the manifest streams (src/manifest/stream.ts): each inode
// is written into fixed-size records as it arrives and then dropped, so a manifest never exists as
// objects. The layout is tables.ts's (see there); this file only builds it in another order:
//
// 1. While streaming, in file order: inode records (parent and the directory entries' children left
//    for later), each directory's entries sorted by name bytes, each file's merged extents, xattrs,
//    the names and data blobs; beside them the inode numbers (8 bytes each), kinds (1 byte) and the
//    inode number each entry names (8 bytes per entry).
// 2. After the stream: duplicates, root and tree (src/manifest/tree.ts), which also numbers the inodes
//    breadth-first from the root; the inode records are permuted into that order in place, parents
//    and entry children filled in.
// 3. One image is allocated and the record chunks are copied into it, each released as it is copied.
//
// Records live in chunks of 32 MiB (see CHUNK_BYTES), so growing never copies.
// Per file with one extent and a name of n bytes, while loading: 112 (inode) + 12 + n + 1 (entry and
// name) + 40 (extent) + 8 + 1 (ino, kind) + 8 (entry's ino), and ~20 bytes of walk arrays after it.
import { bytesOnDevice, type DataChecksums, type ExtentCopy, type Inode, type Manifest } from '../manifest/types'
import type { InodeSink } from '../manifest/stream'
import type { HeaderFacts } from '../manifest/validate'
import { walkTree, type CompactTree } from '../manifest/tree'
import { bad } from '../manifest/validate'
import { collectGarbage } from './memory'
import { Blob, CHUNK_BYTES } from './blob'
import { decodeName, encodeName } from '../manifest/names'
import {
  attachStaged, csumHeader, FLAG_INLINE, LAYOUT, mergeExtents, packExtentExtras, PathTable, TABLES_MAGIC, TABLES_VERSION, writeCopies,
  type PackedTables, type StatFsFigures,
} from './tables'
import type { FileSizes } from '../delta/validate'

const U32_MAX = 0xffff_ffff
const TWO32 = 2 ** 32

const TYPE_BITS: Record<Inode['kind'], number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, fifo: 0o010000, char: 0o020000, block: 0o060000, socket: 0o140000,
}
const KIND_NAMES = ['file', 'dir', 'symlink', 'fifo', 'char', 'block', 'socket'] as const
const KIND_CODE = new Map<string, number>(KIND_NAMES.map((k, i) => [k, i]))
const DIR = 1

const I = fieldOffsets('inode')
const D = fieldOffsets('dirent')
const E = fieldOffsets('extent')
const X = fieldOffsets('xattr')
const H = fieldOffsets('header')

function fieldOffsets<S extends keyof typeof LAYOUT>(name: S): Record<keyof (typeof LAYOUT)[S]['fields'], number> {
  const out: Record<string, number> = {}
  for (const [k, f] of Object.entries(LAYOUT[name].fields)) out[k] = (f as { offset: number }).offset
  return out as Record<keyof (typeof LAYOUT)[S]['fields'], number>
}

/** Little-endian 64-bit write of a safe integer (two's complement for negative times). */
function setU64(dv: DataView, o: number, v: number): void {
  dv.setUint32(o, ((v % TWO32) + TWO32) % TWO32, true)
  dv.setInt32(o + 4, Math.floor(v / TWO32), true)
}

function getU64(dv: DataView, o: number): number {
  return dv.getUint32(o, true) + dv.getUint32(o + 4, true) * TWO32
}

/** Fixed-size records in chunks; record k lives in chunk k / per at byte (k % per) * size. */
class Records {
  readonly per: number
  chunks: (Buffer | undefined)[] = []
  views: DataView[] = []
  length = 0

  constructor(readonly size: number) {
    this.per = Math.max(1, Math.floor(CHUNK_BYTES / size))
  }

  /** Appends a zeroed record; returns its number. */
  push(): number {
    if (this.length === this.chunks.length * this.per) {
      const b = Buffer.alloc(this.per * this.size)
      this.chunks.push(b)
      this.views.push(new DataView(b.buffer, b.byteOffset, b.byteLength))
    }
    return this.length++
  }

  view(k: number): DataView {
    return this.views[Math.floor(k / this.per)]!
  }

  at(k: number): number {
    return (k % this.per) * this.size
  }

  bytes(k: number): Buffer {
    const c = this.chunks[Math.floor(k / this.per)]!
    const o = this.at(k)
    return c.subarray(o, o + this.size)
  }

  /** Copies every record to `image` at `off` and lets go of the chunks. */
  drainTo(image: Buffer, off: number): void {
    let left = this.length * this.size
    for (let c = 0; c < this.chunks.length && left > 0; c++) {
      const chunk = this.chunks[c]!
      const n = Math.min(left, chunk.length)
      chunk.copy(image, off, 0, n)
      off += n
      left -= n
      this.chunks[c] = undefined
      this.views[c] = undefined as unknown as DataView
      collectGarbage() // the chunk's 32 MiB go back before the image's next pages are written
    }
    this.chunks = []
    this.views = []
  }
}

/** A growable typed array of numbers (doubling; these are small beside the records). */
class GrowF64 {
  a = new Float64Array(1024)
  length = 0
  push(v: number): void {
    if (this.length === this.a.length) {
      const b = new Float64Array(this.a.length * 2)
      b.set(this.a)
      this.a = b
    }
    this.a[this.length++] = v
  }
}

class GrowU8 {
  a = new Uint8Array(1024)
  length = 0
  push(v: number): void {
    if (this.length === this.a.length) {
      const b = new Uint8Array(this.a.length * 2)
      b.set(this.a)
      this.a = b
    }
    this.a[this.length++] = v
  }
}

const NUL = Buffer.alloc(1)

/** Tables packed from a stream, waiting for the device fds (known once the devices are proven). */
export interface StagedTables {
  /** The image with the devices section still empty. */
  image: Buffer
  paths: PathTable
  counts: PackedTables['counts']
  statfs: StatFsFigures
  /** Per device: the end (bytes) of the furthest extent on it. */
  deviceEnds: number[]
  devicesOff: number
  deviceSizes: number[]
}

/** Fill in the device fds (indexed like manifest.devices): the image is then ready for the addon. */
export function withDeviceFds(staged: StagedTables, fds: readonly number[]): PackedTables {
  if (fds.length !== staged.deviceSizes.length) throw new RangeError(`view tables: ${fds.length} device fds for ${staged.deviceSizes.length} devices`)
  const dv = new DataView(staged.image.buffer, staged.image.byteOffset, staged.image.byteLength)
  const F = fieldOffsets('device')
  fds.forEach((fd, k) => {
    const at = staged.devicesOff + k * LAYOUT.device.size
    dv.setInt32(at + F.fd, fd, true)
    setU64(dv, at + F.size, staged.deviceSizes[k]!)
  })
  return { image: staged.image, paths: staged.paths, counts: staged.counts }
}

/**
 * Sizes of the regular files, read off the packed inode records by ino (through the path table's
 * index): what checking a delta before mounting needs, without a second read of the manifest. Valid
 * until the engine mounts and frees the staged image; then the engine answers (NativeEngine.fileSize).
 */
export function fileSizesOf(staged: StagedTables): FileSizes {
  const dv = new DataView(staged.image.buffer, staged.image.byteOffset, staged.image.byteLength)
  const inodesOff = getU64(dv, H.inodes_off)
  return {
    get: (ino) => {
      const k = staged.paths.index(ino)
      if (k < 0) return undefined
      const o = inodesOff + k * LAYOUT.inode.size
      return (dv.getUint16(o + I.mode, true) & 0o170000) === TYPE_BITS.file ? getU64(dv, o + I.size) : undefined
    },
  }
}

/** The InodeSink that packs. Use: streamManifestFile(path, builder, ...), then builder.build(). */
export class TablesBuilder implements InodeSink {
  private readonly inodes = new Records(LAYOUT.inode.size)
  private readonly dirents = new Records(LAYOUT.dirent.size)
  private readonly extents = new Records(LAYOUT.extent.size)
  private readonly xattrs = new Records(LAYOUT.xattr.size)
  private readonly names = new Blob()
  private readonly data = new Blob()
  private readonly inos = new GrowF64()
  private readonly kinds = new GrowU8()
  private readonly direntIno = new GrowF64()
  private blocks512 = 0
  private blockSize = 0
  private deviceSizes: number[] = []
  private deviceEnds: number[] = []
  private readonly copies: ExtentCopy[] = []
  private csums = csumHeader(undefined)
  private walked?: { paths: PathTable }

  begin(header: Record<string, unknown>, facts: HeaderFacts): void {
    this.blockSize = header.blockSize as number
    this.deviceSizes = facts.deviceSizes
    this.deviceEnds = facts.deviceSizes.map(() => 0)
    this.csums = csumHeader(header.dataChecksums as DataChecksums | undefined)
  }

  inode(n: Inode, i: number): void {
    const k = this.inodes.push()
    if (k !== i) throw new Error(`view tables: inode ${i} arrived as record ${k}`)
    const dv = this.inodes.view(k)
    const o = this.inodes.at(k)
    this.inos.push(n.ino)
    this.kinds.push(KIND_CODE.get(n.kind)!)
    this.blocks512 += n.blocks
    let first = 0
    let count = 0
    let flags = 0
    if (n.kind === 'dir') {
      const entries = sortedEntries(n.entries ?? [])
      first = this.dirents.length
      count = entries.length
      for (const e of entries) {
        const d = this.dirents.push()
        const ddv = this.dirents.view(d)
        const dat = this.dirents.at(d)
        const off = this.names.add(e.name)
        this.names.add(NUL)
        ddv.setUint32(dat + D.name_off, off, true)
        ddv.setUint16(dat + D.name_len, e.name.length, true)
        this.direntIno.push(e.ino)
      }
      if (this.dirents.length > U32_MAX) throw new RangeError('view tables: too many directory entries')
    } else if (n.kind === 'symlink') {
      const target = encodeName(n.target ?? '')
      first = this.data.add(Buffer.concat([target, NUL]), `L${n.target}`)
      count = target.length
    } else if (n.kind === 'file' && n.inline !== undefined) {
      const content = Buffer.from(n.inline, 'base64')
      first = this.data.add(content, `I${n.inline}`)
      count = content.length
      flags = FLAG_INLINE
    } else if (n.kind === 'file' && n.extents !== undefined) {
      for (const e of n.extents) {
        const end = e.deviceOffset + bytesOnDevice(e)
        if (end > this.deviceEnds[e.device]!) this.deviceEnds[e.device] = end
      }
      const merged = mergeExtents(n.extents)
      first = this.extents.length
      count = merged.length
      for (const e of merged) {
        const x = this.extents.push()
        const xdv = this.extents.view(x)
        const xat = this.extents.at(x)
        setU64(xdv, xat + E.file_offset, e.fileOffset)
        setU64(xdv, xat + E.device_offset, e.deviceOffset)
        setU64(xdv, xat + E.length, e.length)
        xdv.setUint32(xat + E.device, e.device, true)
        const extra = packExtentExtras(e, this.copies, this.data)
        xdv.setUint32(xat + E.copy_first, extra.copy_first, true)
        xdv.setUint32(xat + E.csum_off, extra.csum_off, true)
        xdv.setUint16(xat + E.copy_count, extra.copy_count, true)
        xdv.setUint16(xat + E.flags, extra.flags, true)
      }
      if (this.extents.length > U32_MAX) throw new RangeError('view tables: too many extents')
    }
    let xFirst = 0
    let xCount = 0
    if (n.xattrs !== undefined) {
      const attrNames = Object.keys(n.xattrs)
      if (attrNames.length > 0) {
        const encoded = attrNames.map((a) => encodeName(a))
        let at = this.data.add(Buffer.concat(encoded.flatMap((b) => [b, NUL])), `N${attrNames.join('\0')}`)
        xFirst = this.xattrs.length
        xCount = attrNames.length
        for (let a = 0; a < attrNames.length; a++) {
          const b64 = n.xattrs[attrNames[a]!]!
          const value = Buffer.from(b64, 'base64')
          const r = this.xattrs.push()
          const rdv = this.xattrs.view(r)
          const rat = this.xattrs.at(r)
          rdv.setUint32(rat + X.name_off, at, true)
          rdv.setUint16(rat + X.name_len, encoded[a]!.length, true)
          rdv.setUint32(rat + X.value_off, this.data.add(value, `V${b64}`), true)
          rdv.setUint32(rat + X.value_len, value.length, true)
          at += encoded[a]!.length + 1
        }
        if (this.xattrs.length > U32_MAX) throw new RangeError('view tables: too many xattrs')
      }
    }
    setU64(dv, o + I.ino, n.ino)
    setU64(dv, o + I.size, n.size)
    setU64(dv, o + I.blocks, n.blocks)
    setU64(dv, o + I.rdev, n.rdev ?? 0)
    setU64(dv, o + I.atime_sec, n.atime[0])
    setU64(dv, o + I.mtime_sec, n.mtime[0])
    setU64(dv, o + I.ctime_sec, n.ctime[0])
    dv.setUint32(o + I.atime_nsec, n.atime[1], true)
    dv.setUint32(o + I.mtime_nsec, n.mtime[1], true)
    dv.setUint32(o + I.ctime_nsec, n.ctime[1], true)
    dv.setUint32(o + I.uid, n.uid, true)
    dv.setUint32(o + I.gid, n.gid, true)
    dv.setUint32(o + I.nlink, n.nlink, true)
    dv.setUint32(o + I.first, first, true)
    dv.setUint32(o + I.count, count, true)
    dv.setUint32(o + I.xattr_first, xFirst, true)
    dv.setUint32(o + I.xattr_count, xCount, true)
    dv.setUint16(o + I.mode, TYPE_BITS[n.kind] | n.perm, true)
    dv.setUint16(o + I.flags, flags, true)
    dv.setUint32(o + I.attrs, n.attrs ?? 0, true)
  }

  /** Duplicates, root and tree; then the records in breadth-first order with parents and children set. */
  finish(root: number): void {
    const n = this.inodes.length
    const inos = this.inos.a.subarray(0, n)
    const indexOf = inoIndex(inos)
    const kinds = this.kinds.a
    const inodes = this.inodes
    const tree: CompactTree = {
      count: n,
      ino: (i) => inos[i]!,
      kind: (i) => KIND_NAMES[kinds[i]!]!,
      isDir: (i) => kinds[i] === DIR,
      indexOf,
      entryFirst: (i) => inodes.view(i).getUint32(inodes.at(i) + I.first, true),
      entryCount: (i) => inodes.view(i).getUint32(inodes.at(i) + I.count, true),
      entryIno: (k) => this.direntIno.a[k]!,
      entryName: (k) => {
        const dv = this.dirents.view(k)
        const at = this.dirents.at(k)
        return decodeName(this.names.read(dv.getUint32(at + D.name_off, true), dv.getUint16(at + D.name_len, true)))
      },
    }
    const walk = walkTree(tree, root, this.dirents.length)

    for (let k = 0; k < this.dirents.length; k++) this.dirents.view(k).setUint32(this.dirents.at(k) + D.child, walk.entryChild[k]!, true)
    for (let p = 0; p < n; p++) inodes.view(p).setUint32(inodes.at(p) + I.parent, walk.parent[walk.newIndex[p]!]!, true)
    permute(inodes, walk.newIndex)

    // For log lines: index → ino and path (tables.ts PathTable), without keeping the image.
    const nameOffs = new Uint32Array(n)
    const nameLens = new Uint16Array(n)
    for (let k = 1; k < n; k++) {
      const d = walk.nameEntry[k]!
      const dv = this.dirents.view(d)
      const at = this.dirents.at(d)
      nameOffs[k] = dv.getUint32(at + D.name_off, true)
      nameLens[k] = dv.getUint16(at + D.name_len, true)
    }
    const inosByIndex = new Float64Array(n)
    for (let k = 0; k < n; k++) inosByIndex[k] = inos[walk.order[k]!]!
    const names = this.names.size > 0 ? this.names.read(0, this.names.size) : Buffer.alloc(0)
    this.walked = { paths: new PathTable(inosByIndex, Int32Array.from(walk.parent), nameOffs, nameLens, names) }
    this.inos.a = new Float64Array(0)
    this.direntIno.a = new Float64Array(0)
  }

  /** The image (devices section empty: see withDeviceFds), after finish(). The builder is spent. */
  build(): StagedTables {
    if (!this.walked) throw new Error('view tables: build() before finish()')
    const L = LAYOUT
    const nInodes = this.inodes.length
    const nDirents = this.dirents.length
    const nExtents = this.extents.length
    const nXattrs = this.xattrs.length
    const nDevices = this.deviceSizes.length
    const align8 = (x: number) => Math.ceil(x / 8) * 8
    const inodesOff = align8(L.header.size)
    const direntsOff = align8(inodesOff + nInodes * L.inode.size)
    const extentsOff = align8(direntsOff + nDirents * L.dirent.size)
    const xattrsOff = align8(extentsOff + nExtents * L.extent.size)
    const copiesOff = align8(xattrsOff + nXattrs * L.xattr.size)
    const devicesOff = align8(copiesOff + this.copies.length * L.copy.size)
    const namesOff = align8(devicesOff + nDevices * L.device.size)
    const dataOff = align8(namesOff + this.names.size)
    const total = align8(dataOff + this.data.size)
    // Not zeroed: every byte is written below (padding explicitly), so pages become resident only as
    // the staging chunks are copied in and released.
    const image = Buffer.allocUnsafe(total)
    image.fill(0, 0, inodesOff)
    image.fill(0, inodesOff + nInodes * L.inode.size, direntsOff)
    image.fill(0, direntsOff + nDirents * L.dirent.size, extentsOff)
    image.fill(0, extentsOff + nExtents * L.extent.size, xattrsOff)
    image.fill(0, xattrsOff + nXattrs * L.xattr.size, namesOff) // and the devices section, filled by withDeviceFds
    writeCopies(image, copiesOff, this.copies)
    image.fill(0, namesOff + this.names.size, dataOff)
    image.fill(0, dataOff + this.data.size, total)
    const counts = { inodes: nInodes, dirents: nDirents, extents: nExtents, xattrs: nXattrs, names: this.names.size, data: this.data.size }
    const bsize = this.blockSize
    const statfs: StatFsFigures = {
      bsize, frsize: bsize, blocks: Math.ceil((this.blocks512 * 512) / bsize), bfree: 0, bavail: 0, files: nInodes, ffree: 0, favail: 0, namemax: 255,
    }
    const h = new DataView(image.buffer, image.byteOffset, image.byteLength)
    const H = fieldOffsets('header')
    const header: Record<string, number> = {
      magic: TABLES_MAGIC, version: TABLES_VERSION, total_size: total, n_inodes: nInodes, n_dirents: nDirents,
      n_extents: nExtents, n_xattrs: nXattrs, n_devices: nDevices, block_size: bsize,
      inodes_off: inodesOff, dirents_off: direntsOff, extents_off: extentsOff, xattrs_off: xattrsOff, devices_off: devicesOff,
      names_off: namesOff, names_size: this.names.size, data_off: dataOff, data_size: this.data.size,
      sf_bsize: statfs.bsize, sf_frsize: statfs.frsize, sf_blocks: statfs.blocks, sf_bfree: 0, sf_bavail: 0,
      sf_files: statfs.files, sf_ffree: 0, sf_favail: 0, sf_namemax: statfs.namemax,
      n_copies: this.copies.length, copies_off: copiesOff, ...this.csums,
    }
    for (const [k, f] of Object.entries(L.header.fields)) {
      const v = header[k]!
      if (f.type === 'u32') h.setUint32(H[k as keyof typeof H], v, true)
      else setU64(h, H[k as keyof typeof H], v)
    }
    this.inodes.drainTo(image, inodesOff)
    this.dirents.drainTo(image, direntsOff)
    this.extents.drainTo(image, extentsOff)
    this.xattrs.drainTo(image, xattrsOff)
    this.names.drainTo(image, namesOff)
    this.data.drainTo(image, dataOff)
    collectGarbage()
    return { image, paths: this.walked.paths, counts, statfs, deviceEnds: this.deviceEnds, devicesOff, deviceSizes: this.deviceSizes }
  }
}

/**
 * A directory's entries sorted by the bytes of their names, names encoded. Byte order is code point
 * order, which JavaScript's string order (UTF-16 code units) agrees with below U+D800: names without
 * such characters (nor escaped bytes, U+DC80..: src/manifest/names.ts) sort as strings, the rest (rare)
 * as bytes.
 */
function sortedEntries(list: readonly { name: string; ino: number }[]): { name: Buffer; ino: number }[] {
  let simple = true
  for (const e of list) {
    if (HIGH_UNITS.test(e.name)) {
      simple = false
      break
    }
  }
  if (simple) {
    const sorted = [...list].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    return sorted.map((e) => ({ name: encodeName(e.name), ino: e.ino }))
  }
  const entries = list.map((e) => ({ name: encodeName(e.name), ino: e.ino }))
  return entries.sort((a, b) => Buffer.compare(a.name, b.name))
}

const HIGH_UNITS = /[\ud800-\uffff]/

/**
 * ino → position, refusing an ino listed twice (the first repeat in list order, as validate.ts does).
 * Strictly increasing numbers (the writer's usual order) need no index: binary search; dense numbers
 * a flat table; sparse ones a Map.
 */
function inoIndex(inos: Float64Array): (ino: number) => number {
  const n = inos.length
  let sorted = true
  let max = 0
  for (let i = 0; i < n; i++) {
    const v = inos[i]!
    if (i > 0 && v <= inos[i - 1]!) sorted = false
    if (v > max) max = v
  }
  if (sorted) {
    return (ino) => {
      let lo = 0
      let hi = n
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        const v = inos[mid]!
        if (v === ino) return mid
        if (v < ino) lo = mid + 1
        else hi = mid
      }
      return -1
    }
  }
  if (max <= 4 * n + 1024) {
    const table = new Int32Array(max + 1)
    for (let i = 0; i < n; i++) {
      const ino = inos[i]!
      if (table[ino] !== 0) bad(`inode ${ino}`, 'is listed twice')
      table[ino] = i + 1
    }
    return (ino) => (Number.isInteger(ino) && ino >= 0 && ino < table.length ? table[ino]! - 1 : -1)
  }
  const map = new Map<number, number>()
  for (let i = 0; i < n; i++) {
    const ino = inos[i]!
    if (map.has(ino)) bad(`inode ${ino}`, 'is listed twice')
    map.set(ino, i)
  }
  return (ino) => map.get(ino) ?? -1
}

/** Moves record p to newIndex[p] for every p, in place: each cycle of the permutation with one spare record. */
function permute(r: Records, newIndex: Int32Array): void {
  const n = r.length
  const done = new Uint8Array(n)
  let carry = Buffer.alloc(r.size)
  let spare = Buffer.alloc(r.size)
  for (let s = 0; s < n; s++) {
    if (done[s] || newIndex[s] === s) continue
    r.bytes(s).copy(carry)
    let pos = s
    do {
      const to = newIndex[pos]!
      const slot = r.bytes(to)
      slot.copy(spare)
      carry.copy(slot)
      const t = carry
      carry = spare
      spare = t
      done[to] = 1
      pos = to
    } while (pos !== s)
  }
}

/**
 * A Manifest for the mover made of a streamed header: everything but `inodes`, which were packed
 * into `tables`. Serving never reads `inodes`; reading it (tests, debugging) calls `readWhole` once,
 * which reads, validates (and verifies) the file whole, bounded by V8's string limit.
 */
export function streamedManifest(header: Omit<Manifest, 'inodes'>, tables: StagedTables, readWhole: () => Inode[]): Manifest {
  let inodes: Inode[] | undefined
  Object.defineProperty(header, 'inodes', {
    enumerable: true,
    get: () => (inodes ??= readWhole()),
  })
  const m = header as Manifest
  attachStaged(m, tables)
  return m
}
