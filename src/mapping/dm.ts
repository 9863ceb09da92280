// Device-mapper tables: which range of a dm device lands where on the devices below it.
// `dmsetup table` prints one target per line, `<start> <length> <type> <args...>`, start and length in
// 512-byte sectors of the dm device (Documentation/admin-guide/device-mapper/{linear,striped,
// thin-provisioning}.rst). Parsing and range arithmetic are pure; only readDmTable runs dmsetup.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import { ExportError } from '../errors'
import { splitDev } from './blockdev'
import type { DevNum, Span } from './span'

const SECTOR = 512 // every number in a dm table counts 512-byte sectors, whatever the device's block size

/** `<start> <length> linear <dev> <offset>`: the target's sectors, in order, from `offset` on `dev`. */
export interface LinearTarget {
  type: 'linear'
  startSector: number
  lengthSectors: number
  dev: DevNum
  offsetSector: number
}

/**
 * `<start> <length> striped <#stripes> <chunk size> [<dev> <offset>]...`: chunk k of the target (chunk size
 * sectors each) is chunk floor(k / #stripes) of stripe k mod #stripes.
 */
export interface StripedTarget {
  type: 'striped'
  startSector: number
  lengthSectors: number
  chunkSectors: number
  stripes: { dev: DevNum; offsetSector: number }[]
}

/** `<start> <length> thin <pool dev> <dev id> [<external origin dev>]`: blocks allocated on demand from a pool. */
export interface ThinTarget {
  type: 'thin'
  startSector: number
  lengthSectors: number
  pool: DevNum
  /** The thin device's id inside the pool's metadata (thin_dump's `dev_id`). */
  devId: number
  /** Read-only device unprovisioned blocks are read from, instead of zeros. */
  externalOrigin?: DevNum
}

/**
 * `<start> <length> thin-pool <metadata dev> <data dev> <data block size> <low water mark> [features]`.
 * Recognised so a thin target can find its data device; a filesystem never sits on a pool itself.
 */
export interface ThinPoolTarget {
  type: 'thin-pool'
  startSector: number
  lengthSectors: number
  metadata: DevNum
  data: DevNum
  /** Size of one pool data block, in sectors (thin_dump's `data_block_size`). */
  blockSectors: number
}

export type DmTarget = LinearTarget | StripedTarget | ThinTarget | ThinPoolTarget

/** Tables name devices as `major:minor` (what `dmsetup table` prints) or as `/dev/...` paths (what people write). */
export type DevLookup = (path: string) => DevNum

/** The device number of a block device node, by stat(2). */
export function statDevNum(path: string): DevNum {
  let st: fs.Stats
  try {
    st = fs.statSync(path)
  } catch (err) {
    throw new ExportError(`device-mapper table names ${path}, which cannot be found (${(err as NodeJS.ErrnoException).code})`)
  }
  if (!st.isBlockDevice()) throw new ExportError(`device-mapper table names ${path}, which is not a block device`)
  return splitDev(st.rdev)
}

/**
 * Parse a whole table (the output of `dmsetup table` for one device). Targets must tile the device from
 * sector 0 without gaps or overlaps, as the kernel requires; anything else means we misread the table.
 * Unknown target types (crypt, raid, mirror, snapshot, cache, ...) are refused by name.
 */
export function parseDmTable(text: string, lookup: DevLookup = statDevNum): DmTarget[] {
  const targets: DmTarget[] = []
  let expectStart = 0
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (line === '') continue
    const where = `device-mapper table line ${i + 1} ("${line}")`
    const target = parseTargetLine(line, where, lookup)
    if (target.startSector !== expectStart) {
      throw new ExportError(`${where}: starts at sector ${target.startSector}, expected ${expectStart} (gap or overlap)`)
    }
    expectStart += target.lengthSectors
    targets.push(target)
  }
  if (targets.length === 0) throw new ExportError('device-mapper table is empty (is the device suspended or without a table?)')
  return targets
}

function parseTargetLine(line: string, where: string, lookup: DevLookup): DmTarget {
  const f = line.split(/\s+/)
  if (f.length < 3) throw new ExportError(`${where}: expected "<start> <length> <type> <args...>"`)
  const startSector = sectorCount(f[0], 'start', where)
  const lengthSectors = sectorCount(f[1], 'length', where)
  if (lengthSectors === 0) throw new ExportError(`${where}: length is 0`)
  const type = f[2]
  const args = f.slice(3)
  const dev = (s: string | undefined, what: string) => devRef(s, what, where, lookup)
  switch (type) {
    case 'linear':
      if (args.length !== 2) throw new ExportError(`${where}: linear takes <dev> <offset>, got ${args.length} arguments`)
      return { type, startSector, lengthSectors, dev: dev(args[0], 'device'), offsetSector: sectorCount(args[1], 'offset', where) }
    case 'striped': {
      const n = sectorCount(args[0], 'number of stripes', where)
      const chunkSectors = sectorCount(args[1], 'chunk size', where)
      if (n < 1) throw new ExportError(`${where}: striped needs at least one stripe`)
      if (chunkSectors < 1) throw new ExportError(`${where}: chunk size is 0`)
      if (args.length !== 2 + 2 * n) {
        throw new ExportError(`${where}: striped with ${n} stripes takes ${2 + 2 * n} arguments, got ${args.length}`)
      }
      // The kernel (dm-stripe.c) refuses a length that is not whole chunks on every stripe.
      if (lengthSectors % n !== 0 || (lengthSectors / n) % chunkSectors !== 0) {
        throw new ExportError(`${where}: length ${lengthSectors} is not a whole number of ${chunkSectors}-sector chunks on each of ${n} stripes`)
      }
      const stripes = []
      for (let s = 0; s < n; s++) {
        stripes.push({ dev: dev(args[2 + 2 * s], `stripe ${s} device`), offsetSector: sectorCount(args[3 + 2 * s], `stripe ${s} offset`, where) })
      }
      return { type, startSector, lengthSectors, chunkSectors, stripes }
    }
    case 'thin':
      if (args.length !== 2 && args.length !== 3) {
        throw new ExportError(`${where}: thin takes <pool dev> <dev id> [<external origin dev>], got ${args.length} arguments`)
      }
      return {
        type, startSector, lengthSectors,
        pool: dev(args[0], 'pool device'),
        devId: sectorCount(args[1], 'dev id', where),
        ...(args.length === 3 ? { externalOrigin: dev(args[2], 'external origin') } : {}),
      }
    case 'thin-pool':
      if (args.length < 4) {
        throw new ExportError(`${where}: thin-pool takes <metadata dev> <data dev> <data block size> <low water mark> [features]`)
      }
      return {
        type, startSector, lengthSectors,
        metadata: dev(args[0], 'metadata device'),
        data: dev(args[1], 'data device'),
        blockSectors: positive(sectorCount(args[2], 'data block size', where), 'data block size', where),
      }
    default:
      throw new ExportError(`${where}: device-mapper target "${type}" cannot be mapped to raw devices (only linear, striped and thin)`)
  }
}

function sectorCount(s: string | undefined, what: string, where: string): number {
  if (s === undefined || !/^\d+$/.test(s)) throw new ExportError(`${where}: ${what} "${s ?? ''}" is not a number`)
  const n = Number(s)
  if (!Number.isSafeInteger(n * SECTOR)) throw new ExportError(`${where}: ${what} ${s} is too large`)
  return n
}

function positive(n: number, what: string, where: string): number {
  if (n < 1) throw new ExportError(`${where}: ${what} is 0`)
  return n
}

function devRef(s: string | undefined, what: string, where: string, lookup: DevLookup): DevNum {
  if (s === undefined) throw new ExportError(`${where}: missing ${what}`)
  const m = /^(\d+):(\d+)$/.exec(s)
  if (m) return { major: Number(m[1]), minor: Number(m[2]) }
  if (s.startsWith('/')) return lookup(s)
  throw new ExportError(`${where}: ${what} "${s}" is neither major:minor nor a /dev path`)
}

/** Maps a range of a thin target (bytes from the target's start) to spans; supplied by whoever can read pool metadata. */
export type ThinMapper = (target: ThinTarget, offset: number, length: number) => Span[]

/**
 * The spans on the devices below that hold `length` bytes at byte `offset` of the dm device, in order.
 * Worked example, striped over 2 devices with 128-sector (64 KiB) chunks, `0 1024 striped 2 128 8:16 0
 * 8:32 2048`: byte 100 KiB of the dm device is in chunk 1 (64..128 KiB), stripe 1, that stripe's chunk 0,
 * 36 KiB in: 8:32 at 2048*512 + 36 KiB.
 */
export function mapDmRange(table: DmTarget[], offset: number, length: number, thin?: ThinMapper): Span[] {
  const end = offset + length
  const size = (table[table.length - 1].startSector + table[table.length - 1].lengthSectors) * SECTOR
  if (offset < 0 || length < 0 || end > size) {
    throw new ExportError(`range ${offset}+${length} is outside the device-mapper device (${size} bytes)`)
  }
  const out: Span[] = []
  // Targets are few (one, usually); a linear scan is cheaper than anything cleverer.
  for (const t of table) {
    const tStart = t.startSector * SECTOR
    const tEnd = tStart + t.lengthSectors * SECTOR
    if (tEnd <= offset || tStart >= end) continue
    const from = Math.max(offset, tStart) - tStart
    const to = Math.min(end, tEnd) - tStart
    out.push(...mapTargetRange(t, from, to - from, thin))
  }
  return out
}

/** `offset` and `length` in bytes from the target's start. */
function mapTargetRange(t: DmTarget, offset: number, length: number, thin?: ThinMapper): Span[] {
  switch (t.type) {
    case 'linear':
      return [{ dev: t.dev, offset: t.offsetSector * SECTOR + offset, length }]
    case 'striped':
      return mapStriped(t, offset, length)
    case 'thin':
      if (!thin) throw new ExportError(`thin device ${t.devId} of pool ${t.pool.major}:${t.pool.minor} needs the pool's metadata to be mapped`)
      return thin(t, offset, length)
    case 'thin-pool':
      throw new ExportError(`a thin-pool device is not a filesystem's device; map the thin volumes instead`)
  }
}

function mapStriped(t: StripedTarget, offset: number, length: number): Span[] {
  const chunk = t.chunkSectors * SECTOR
  const n = t.stripes.length
  const out: Span[] = []
  let pos = offset
  const end = offset + length
  while (pos < end) {
    const k = Math.floor(pos / chunk) // chunk number within the target
    const within = pos - k * chunk
    const stripe = t.stripes[k % n]
    const take = Math.min(chunk - within, end - pos)
    out.push({ dev: stripe.dev, offset: stripe.offsetSector * SECTOR + Math.floor(k / n) * chunk + within, length: take })
    pos += take
  }
  return out
}

/** Where the kernel keeps a dm device's tables; absent on kernels without device-mapper. */
export const DM_CONTROL = '/dev/mapper/control'

/** The live table of dm device `dev`, from `dmsetup table` (which prints devices as major:minor). */
export function readDmTable(dev: DevNum): DmTarget[] {
  return parseDmTable(dmsetup(['table', '--major', String(dev.major), '--minor', String(dev.minor)]))
}

/** Run dmsetup, turning its failure into an ExportError that says what was asked. */
export function dmsetup(args: string[]): string {
  try {
    return execFileSync('dmsetup', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string }
    if (e.code === 'ENOENT') throw new ExportError('dmsetup not found: install lvm2 / dmsetup to map device-mapper devices')
    throw new ExportError(`dmsetup ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`)
  }
}
