// A delta packed for the native engine's applyDelta (native/view/delta.c, tables.h "A delta"): new
// extent lists for some regular files, by inode index as the tables number them, and the sizes of
// the devices the delta adds. Pure: no I/O. The C side checks every field again before using any.
//
//   delta_header | files | extents | devices | copies | data      (each section 8-aligned, little-endian)
//
// - files sorted by index, each once; their extents back to back in file order, each file's sorted
//   by fileOffset, non-overlapping, merged where they continue each other (as in the tables).
// - devices: one record per new device (its fd is given to applyDelta separately; the record's is -1).
// - copies and data: extents' other copies, checksums (feature data-checksums) and encodings
//   (compressed extents), packed as in the tables (packExtentExtras); the checksums are measured as
//   the tables' header says.
//
// Cost: 80 bytes of header, 16 per file, 40 per extent, 16 per new device, 16 per copy, and the
// checksums (4 bytes per sector of a checksummed extent).
import type { Extent, ExtentCopy } from '../manifest/types'
import { Blob } from './blob'
import { EXTENT_COMPRESSED, EXTENT_CSUM, LAYOUT, mergeExtents, packExtentExtras, readCompression, writeCopies, Writer, type NativeLayout } from './tables'

export const DELTA_MAGIC = 0x44565845 // "EXVD" as a little-endian u32
export const DELTA_VERSION = 3

export interface DeltaEntry {
  /** Inode index in the mounted tables (MappedTables.index(ino)). */
  index: number
  /** The file's complete new extent list (none: all hole). */
  extents: readonly Extent[]
}

/** Throws unless the addon applies deltas of this module's version (the structs: checkLayout). */
export function checkDeltaLayout(native: NativeLayout): void {
  if (native.deltaVersion !== DELTA_VERSION || native.deltaMagic !== DELTA_MAGIC) {
    throw new Error(`native view delta format ${String(native.deltaVersion)} differs from src/native-engine/delta-tables.ts (${DELTA_VERSION})`)
  }
}

const U32_MAX = 0xffff_ffff

function wholeBytes(what: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`delta: ${what} is ${v}, not a byte count`)
  return v
}

/**
 * Pack `files` (any order; each index once) and the sizes of the new devices. Extents must be
 * sorted and non-overlapping, with lengths > 0 (as validated deltas are); C refuses them otherwise.
 */
export function packDelta(files: readonly DeltaEntry[], newDeviceSizes: readonly number[]): Buffer {
  const sorted = [...files].sort((a, b) => a.index - b.index)
  const merged = sorted.map((f) => mergeExtents(f.extents))
  for (let k = 1; k < sorted.length; k++) {
    if (sorted[k]!.index === sorted[k - 1]!.index) throw new RangeError(`delta: inode index ${sorted[k]!.index} listed twice`)
  }
  const nExtents = merged.reduce((n, list) => n + list.length, 0)
  if (sorted.length > U32_MAX || nExtents > U32_MAX) throw new RangeError('delta: too many files or extents')

  const L = LAYOUT
  const align8 = (x: number) => Math.ceil(x / 8) * 8
  const copies: ExtentCopy[] = []
  const data = new Blob()
  const extras = merged.map((list) => list.map((e) => packExtentExtras(e, copies, data)))
  const filesOff = align8(L.delta_header.size)
  const extentsOff = align8(filesOff + sorted.length * L.delta_file.size)
  const devicesOff = align8(extentsOff + nExtents * L.extent.size)
  const copiesOff = align8(devicesOff + newDeviceSizes.length * L.device.size)
  const dataOff = align8(copiesOff + copies.length * L.copy.size)
  const total = align8(dataOff + data.size)
  const buf = Buffer.alloc(total)
  const w = new Writer(buf)
  w.struct('delta_header', 0, {
    magic: DELTA_MAGIC, version: DELTA_VERSION, total_size: total, n_files: sorted.length, n_extents: nExtents,
    n_devices: newDeviceSizes.length, n_copies: copies.length, files_off: filesOff, extents_off: extentsOff, devices_off: devicesOff,
    copies_off: copiesOff, data_off: dataOff, data_size: data.size,
  })
  let next = 0
  sorted.forEach((f, k) => {
    if (!Number.isInteger(f.index) || f.index < 0 || f.index > U32_MAX) throw new RangeError(`delta: inode index ${f.index}`)
    w.struct('delta_file', filesOff + k * L.delta_file.size, { index: f.index, first: next, count: merged[k]!.length })
    merged[k]!.forEach((e, i) => {
      for (const d of [e.device, ...(e.copies ?? []).map((c) => c.device)]) {
        if (!Number.isInteger(d) || d < 0 || d > U32_MAX) throw new RangeError(`delta: inode index ${f.index}: device ${d}`)
      }
      w.struct('extent', extentsOff + next * L.extent.size, {
        file_offset: wholeBytes('fileOffset', e.fileOffset), device_offset: wholeBytes('deviceOffset', e.deviceOffset),
        length: wholeBytes('length', e.length), device: e.device, ...extras[k]![i]!,
      })
      next++
    })
  })
  newDeviceSizes.forEach((size, j) => w.struct('device', devicesOff + j * L.device.size, { fd: -1, size: wholeBytes('device size', size) }))
  writeCopies(buf, copiesOff, copies.map((c) => ({ device: c.device, deviceOffset: wholeBytes('copy deviceOffset', c.deviceOffset) })))
  data.drainTo(buf, dataOff)
  return buf
}

/** A packed delta read back (for tests and debugging); crc32c checksums of `sectorSize`-byte sectors. */
export function unpackDelta(buf: Buffer, sectorSize = 4096): { files: DeltaEntry[]; deviceSizes: number[] } {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const u64 = (o: number) => dv.getUint32(o + 4, true) * 2 ** 32 + dv.getUint32(o, true)
  const F = (name: keyof typeof LAYOUT, field: string) => (LAYOUT[name].fields as Record<string, { offset: number }>)[field]!.offset
  const h = {
    files: u64(F('delta_header', 'files_off')), extents: u64(F('delta_header', 'extents_off')), devices: u64(F('delta_header', 'devices_off')),
    copies: u64(F('delta_header', 'copies_off')), data: u64(F('delta_header', 'data_off')),
  }
  const csumBytes = (e: number, length: number, sectorSize: number) =>
    buf.subarray(h.data + dv.getUint32(e + F('extent', 'csum_off'), true)).subarray(0, (length / sectorSize) * 4)
  const nFiles = dv.getUint32(F('delta_header', 'n_files'), true)
  const nDevices = dv.getUint32(F('delta_header', 'n_devices'), true)
  const files: DeltaEntry[] = []
  for (let k = 0; k < nFiles; k++) {
    const at = h.files + k * LAYOUT.delta_file.size
    const first = dv.getUint32(at + F('delta_file', 'first'), true)
    const count = dv.getUint32(at + F('delta_file', 'count'), true)
    const extents: Extent[] = []
    for (let i = first; i < first + count; i++) {
      const e = h.extents + i * LAYOUT.extent.size
      const x: Extent = {
        fileOffset: u64(e + F('extent', 'file_offset')), device: dv.getUint32(e + F('extent', 'device'), true),
        deviceOffset: u64(e + F('extent', 'device_offset')), length: u64(e + F('extent', 'length')),
      }
      if (dv.getUint16(e + F('extent', 'flags'), true) & EXTENT_CSUM) {
        const first = dv.getUint32(e + F('extent', 'copy_first'), true)
        const count = dv.getUint16(e + F('extent', 'copy_count'), true)
        const copies = Array.from({ length: count }, (_, c) => {
          const at = h.copies + (first + c) * LAYOUT.copy.size
          return { device: dv.getUint32(at + F('copy', 'device'), true), deviceOffset: u64(at + F('copy', 'device_offset')) }
        })
        if (count > 0) x.copies = copies
        const csumOff = dv.getUint32(e + F('extent', 'csum_off'), true)
        if (dv.getUint16(e + F('extent', 'flags'), true) & EXTENT_COMPRESSED) Object.assign(x, readCompression(buf, h.data + csumOff - LAYOUT.compressed.size))
        x.csums = csumBytes(e, x.diskLength ?? x.length, sectorSize).toString('base64')
      }
      extents.push(x)
    }
    files.push({ index: dv.getUint32(at + F('delta_file', 'index'), true), extents })
  }
  const deviceSizes = Array.from({ length: nDevices }, (_, j) => u64(h.devices + j * LAYOUT.device.size + F('device', 'size')))
  return { files, deviceSizes }
}
