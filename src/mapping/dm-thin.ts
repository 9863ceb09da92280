// dm-thin: which pool data block holds each block of a thin device, from the pool's metadata.
// The kernel exposes no per-block mapping, so we read a metadata snapshot with `thin_dump -m`, whose XML
// (thin-provisioning-tools) looks like:
//   <superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="16384">
//     <device dev_id="1" mapped_blocks="9" transaction="0" creation_time="0" snap_time="1">
//       <range_mapping origin_begin="0" data_begin="100" length="8" time="0"/>
//       <single_mapping origin_block="20" data_block="7" time="1"/>
//     </device>
//   </superblock>
// Blocks are data_block_size sectors (512 bytes) each; origin blocks count from the start of the thin
// device, data blocks from the start of the pool's data device. A block with no mapping was never
// written (or was discarded) and reads as zeros.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { ExportError } from '../errors'
import { dmsetup, readDmTable, type ThinPoolTarget, type ThinTarget } from './dm'
import type { DevNum, Span } from './span'
import { lastAtOrBefore } from '../extents/search'

const SECTOR = 512

/** One thin device's mappings as parallel arrays sorted by origin block, for binary search. */
export interface ThinDeviceMap {
  devId: number
  /** First thin-device block of each run. */
  origin: number[]
  /** First data-device block of each run. */
  data: number[]
  /** Blocks in each run. */
  length: number[]
}

export interface ThinMetadata {
  /** Pool block size in 512-byte sectors. */
  blockSectors: number
  devices: Map<number, ThinDeviceMap>
}

/** Parse `thin_dump` XML. Shared-subtree output (`<def>`/`<ref>`) is refused: run thin_dump without it. */
export function parseThinDump(xml: string): ThinMetadata {
  let blockSectors: number | undefined
  const devices = new Map<number, ThinDeviceMap>()
  let current: { devId: number; runs: [number, number, number][] } | undefined
  const tagRe = /<(\/?)([A-Za-z_?!][\w-]*)([^>]*)>/g
  let m: RegExpExecArray | null
  let line = 1
  let last = 0
  while ((m = tagRe.exec(xml)) !== null) {
    line += countNewlines(xml, last, m.index)
    last = m.index
    const [, closing, tag, rest] = m
    const where = `thin_dump line ${line} (<${closing}${tag}>)`
    if (tag === '?xml' || tag.startsWith('!')) continue
    if (closing) {
      if (tag === 'device' && current) {
        devices.set(current.devId, buildDeviceMap(current.devId, current.runs))
        current = undefined
      }
      continue
    }
    const a = attributes(rest, where)
    switch (tag) {
      case 'superblock':
        blockSectors = attr(a, 'data_block_size', where)
        if (blockSectors < 1) throw new ExportError(`${where}: data_block_size is 0`)
        break
      case 'device': {
        if (blockSectors === undefined) throw new ExportError(`${where}: <device> before <superblock>`)
        if (current) throw new ExportError(`${where}: <device> inside <device ${current.devId}>`)
        const devId = attr(a, 'dev_id', where)
        if (devices.has(devId)) throw new ExportError(`${where}: device ${devId} appears twice`)
        current = { devId, runs: [] }
        if (rest.trimEnd().endsWith('/')) { // a device with no mappings at all
          devices.set(devId, buildDeviceMap(devId, []))
          current = undefined
        }
        break
      }
      case 'range_mapping':
        if (!current) throw new ExportError(`${where}: mapping outside a <device>`)
        current.runs.push([attr(a, 'origin_begin', where), attr(a, 'data_begin', where), attr(a, 'length', where)])
        break
      case 'single_mapping':
        if (!current) throw new ExportError(`${where}: mapping outside a <device>`)
        current.runs.push([attr(a, 'origin_block', where), attr(a, 'data_block', where), 1])
        break
      case 'def':
      case 'ref':
        throw new ExportError(`${where}: shared-subtree output is not supported; dump without sharing`)
      default:
        throw new ExportError(`${where}: unknown element`)
    }
  }
  if (current) throw new ExportError(`thin_dump: <device dev_id="${current.devId}"> is not closed (truncated output?)`)
  if (blockSectors === undefined) throw new ExportError('thin_dump: no <superblock> (is this thin_dump output?)')
  return { blockSectors, devices }
}

function countNewlines(s: string, from: number, to: number): number {
  let n = 0
  for (let i = s.indexOf('\n', from); i !== -1 && i < to; i = s.indexOf('\n', i + 1)) n++
  return n
}

function attributes(rest: string, where: string): Map<string, string> {
  const out = new Map<string, string>()
  const body = rest.replace(/\/\s*$/, '')
  const re = /\s*([\w-]+)="([^"]*)"/y
  let pos = 0
  while (pos < body.length) {
    if (/^\s*$/.test(body.slice(pos))) break
    re.lastIndex = pos
    const m = re.exec(body)
    if (!m) throw new ExportError(`${where}: malformed attributes "${body.trim()}"`)
    out.set(m[1], m[2])
    pos = re.lastIndex
  }
  return out
}

function attr(a: Map<string, string>, name: string, where: string): number {
  const v = a.get(name)
  if (v === undefined) throw new ExportError(`${where}: missing ${name}`)
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new ExportError(`${where}: ${name}="${v}" is not a number`)
  return Number(v)
}

function buildDeviceMap(devId: number, runs: [number, number, number][]): ThinDeviceMap {
  runs.sort((x, y) => x[0] - y[0])
  const map: ThinDeviceMap = { devId, origin: [], data: [], length: [] }
  for (const [o, d, n] of runs) {
    if (n < 1) throw new ExportError(`thin_dump: device ${devId} has an empty mapping at block ${o}`)
    const k = map.origin.length - 1
    if (k >= 0 && map.origin[k] + map.length[k] > o) {
      throw new ExportError(`thin_dump: device ${devId} maps block ${o} twice`)
    }
    // thin_dump splits runs at leaf boundaries; joining them keeps spans long and lookups short.
    if (k >= 0 && map.origin[k] + map.length[k] === o && map.data[k] + map.length[k] === d) {
      map.length[k] += n
    } else {
      map.origin.push(o)
      map.data.push(d)
      map.length.push(n)
    }
  }
  return map
}

/** Index of the last run starting at or before `block`, or -1. */
function runAtOrBefore(map: ThinDeviceMap, block: number): number {
  return lastAtOrBefore(map.origin.length, (i) => map.origin[i]!, block)
}

/** Unprovisioned blocks of a thin device with an external origin read from that device, up to its size. */
export interface ExternalOrigin {
  dev: DevNum
  /** Bytes. */
  size: number
}

/**
 * Spans on the pool's data device `dataDev` holding `length` bytes at byte `offset` of thin device
 * `devId`. Unmapped blocks are holes (dev null), or the external origin's same bytes when there is one.
 * Worked example, 64 KiB blocks, run origin 0 → data 100 length 8: byte 70000 of the thin device is in
 * block 1, 4464 bytes in: data device byte 101 * 65536 + 4464.
 */
export function mapThinRange(
  meta: ThinMetadata, devId: number, dataDev: DevNum, offset: number, length: number, origin?: ExternalOrigin,
): Span[] {
  const map = meta.devices.get(devId)
  if (!map) throw new ExportError(`thin device ${devId} is not in the pool's metadata (was the metadata snapshot taken before it was created?)`)
  const bs = meta.blockSectors * SECTOR
  const out: Span[] = []
  const end = offset + length
  let pos = offset
  // k: the first run that ends after pos (runs are sorted and disjoint, so only k can contain pos).
  let k = runAtOrBefore(map, Math.floor(pos / bs))
  if (k < 0 || (map.origin[k] + map.length[k]) * bs <= pos) k++
  while (pos < end) {
    if (k < map.origin.length && map.origin[k] * bs <= pos) {
      const runEnd = (map.origin[k] + map.length[k]) * bs
      const take = Math.min(runEnd, end) - pos
      out.push({ dev: dataDev, offset: map.data[k] * bs + (pos - map.origin[k] * bs), length: take })
      pos += take
      k++
    } else {
      const holeEnd = Math.min(k < map.origin.length ? map.origin[k] * bs : Infinity, end)
      out.push(...unprovisioned(pos, holeEnd - pos, origin))
      pos = holeEnd
    }
  }
  return out
}

function unprovisioned(offset: number, length: number, origin?: ExternalOrigin): Span[] {
  if (!origin || offset >= origin.size) return [{ dev: null, offset: 0, length }]
  const inOrigin = Math.min(length, origin.size - offset)
  const out: Span[] = [{ dev: origin.dev, offset, length: inOrigin }]
  if (inOrigin < length) out.push({ dev: null, offset: 0, length: length - inOrigin })
  return out
}

// --- live: a metadata snapshot of a running pool ---------------------------------------------------

/** A pool's data device, block size and mappings, as of the metadata snapshot we took. */
export interface ThinPool {
  data: DevNum
  meta: ThinMetadata
}

/**
 * Read a live pool's mappings: reserve a metadata snapshot (so the pool can keep changing while we read),
 * dump it with `thin_dump -m`, release it. The mappings are those of the moment of the snapshot; a thin
 * device that is written afterwards (the origin, not a frozen thin snapshot) may move away from them.
 */
export function readThinPool(pool: DevNum): ThinPool {
  const table = readDmTable(pool)
  const target = table.find((t): t is ThinPoolTarget => t.type === 'thin-pool')
  if (!target || table.length !== 1) throw new ExportError(`${pool.major}:${pool.minor} is not a thin pool (table: ${table.map((t) => t.type).join(', ')})`)
  const name = fs.readFileSync(`/sys/dev/block/${pool.major}:${pool.minor}/dm/name`, 'utf8').trim()
  const metadataNode = `/dev/${path.basename(fs.realpathSync(`/sys/dev/block/${target.metadata.major}:${target.metadata.minor}`))}`
  dmsetup(['message', name, '0', 'reserve_metadata_snap'])
  let xml: string
  try {
    xml = thinDump(['-m', metadataNode])
  } finally {
    dmsetup(['message', name, '0', 'release_metadata_snap'])
  }
  const meta = parseThinDump(xml)
  if (meta.blockSectors !== target.blockSectors) {
    throw new ExportError(`thin pool ${name}: metadata says ${meta.blockSectors}-sector blocks, the table ${target.blockSectors}`)
  }
  return { data: target.data, meta }
}

function thinDump(args: string[]): string {
  try {
    return execFileSync('thin_dump', args, { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string }
    if (e.code === 'ENOENT') throw new ExportError('thin_dump not found: install thin-provisioning-tools to map dm-thin devices')
    throw new ExportError(`thin_dump ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`)
  }
}

/** A ThinMapper (see dm.ts) for one live thin target, given its pool and optional external origin. */
export function thinSpans(pool: ThinPool, target: ThinTarget, offset: number, length: number, origin?: ExternalOrigin): Span[] {
  return mapThinRange(pool.meta, target.devId, pool.data, offset, length, origin)
}
