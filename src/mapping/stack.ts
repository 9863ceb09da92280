// The volume chain under a filesystem, resolved down to whole raw disks. Each layer turns a range of
// its device into spans on the devices below: a partition adds its start, device-mapper follows its
// table, a loop device (with throughLoop) follows its backing file's extents onto the device that
// file's filesystem sits on. Whatever is left is a RawDisk the mover opens.
// How many loop devices to go through is a choice, not a fact: a VM image's loop device is a layer, but
// the loop device (or SAN LUN) holding the host's own filesystem is the disk the mover shares. So
// throughLoop follows the first loop device of a chain only, and deeper ones are raw disks, unless
// `loopLevels` asks for more. Everything learned about a
// device is cached: export resolves every extent of up to a million files through one DeviceStack.
import fs from 'node:fs'
import path from 'node:path'
import { ExportError } from '../errors'
import { mapDmRange, readDmTable, type DmTarget, type ThinTarget } from './dm'
import { readThinPool, thinSpans, type ThinPool } from './dm-thin'
import { mapLoopRange, readBackingExtents, readLoopInfo, type BackingExtents } from './loop'
import { devKey, type DevNum, type RawDisk, type RawSpan, type Span } from './span'

const SECTOR = 512 // sysfs "start" and "size" count 512-byte sectors, whatever the device's block size

/** Deeper than any real stack (partition on dm on loop on partition ...): deeper means we are looping. */
const MAX_DEPTH = 16

/** What one device is, as far as mapping is concerned. */
type Layer =
  | { kind: 'disk'; disk: RawDisk }
  | { kind: 'partition'; name: string; parent: DevNum; start: number; size: number }
  | { kind: 'dm'; name: string; table: DmTarget[] }
  /** A loop device we may go through; `backing` is read the first time we do. */
  | { kind: 'loop'; name: string; disk: RawDisk; backing?: BackingExtents }

export class DeviceStack {
  private readonly layers = new Map<string, Layer>()
  private readonly pools = new Map<string, ThinPool>()
  private readonly bottoms = new Map<string, RawDisk>()
  private readonly loopLevels: number

  /**
   * `throughLoop`: go through loop devices to their backing files' devices. `loopLevels`: how many loop
   * devices one chain may go through (default 1 with throughLoop, always 0 without); a loop device met
   * beyond that is a raw disk.
   */
  constructor(opts: { throughLoop: boolean; loopLevels?: number }) {
    this.loopLevels = opts.throughLoop ? (opts.loopLevels ?? 1) : 0
  }

  /**
   * The raw-disk spans holding `length` bytes at byte `offset` of device `dev`, in order, adjacent spans
   * on the same disk merged. A span with `raw` null is a hole (thin unprovisioned, loop backing hole).
   */
  resolve(dev: DevNum, offset: number, length: number): RawSpan[] {
    const out: RawSpan[] = []
    this.walk(dev, offset, length, [], 0, out)
    return mergeRawSpans(out)
  }

  /** The RawDisk that `dev` is when it is the bottom of a chain (a disk or a loop device); throws for partitions and dm. */
  disk(dev: DevNum): RawDisk {
    const layer = this.layer(dev)
    if (layer.kind !== 'disk' && layer.kind !== 'loop') throw new ExportError(`${layer.name} is a ${layer.kind}, not a raw disk`)
    return layer.disk
  }

  /** Every raw disk resolve() has landed on so far, in the order first met. */
  disks(): RawDisk[] {
    return [...this.bottoms.values()]
  }

  private walk(dev: DevNum, offset: number, length: number, chain: string[], loops: number, out: RawSpan[]): void {
    const key = devKey(dev)
    if (chain.includes(key)) throw new ExportError(`device stack loops back to ${key} (${chain.join(' -> ')} -> ${key})`)
    if (chain.length >= MAX_DEPTH) throw new ExportError(`device stack deeper than ${MAX_DEPTH} layers (${chain.join(' -> ')})`)
    const layer = this.layer(dev)
    const below = [...chain, key]
    if (layer.kind === 'disk' || (layer.kind === 'loop' && loops >= this.loopLevels)) {
      if (offset < 0 || offset + length > layer.disk.size) {
        throw new ExportError(`range ${offset}+${length} is past the end of ${layer.disk.name} (${layer.disk.size} bytes)`)
      }
      if (!this.bottoms.has(key)) this.bottoms.set(key, layer.disk)
      out.push({ raw: layer.disk, offset, length })
      return
    }
    switch (layer.kind) {
      case 'partition':
        if (offset < 0 || offset + length > layer.size) {
          throw new ExportError(`range ${offset}+${length} is past the end of partition ${layer.name} (${layer.size} bytes)`)
        }
        this.walk(layer.parent, layer.start + offset, length, below, loops, out)
        return
      case 'dm':
        return this.walkSpans(mapDmRange(layer.table, offset, length, (t, o, l) => this.thin(t, o, l)), below, loops, out)
      case 'loop':
        layer.backing ??= readBackingExtents(readLoopInfo(layer.name))
        return this.walkSpans(mapLoopRange(layer.backing, offset, length), below, loops + 1, out)
    }
  }

  private walkSpans(spans: Span[], chain: string[], loops: number, out: RawSpan[]): void {
    for (const s of spans) {
      if (s.dev === null) out.push({ raw: null, offset: 0, length: s.length })
      else this.walk(s.dev, s.offset, s.length, chain, loops, out)
    }
  }

  private thin(target: ThinTarget, offset: number, length: number): Span[] {
    const key = devKey(target.pool)
    let pool = this.pools.get(key)
    if (!pool) {
      pool = readThinPool(target.pool)
      this.pools.set(key, pool)
    }
    const origin = target.externalOrigin && { dev: target.externalOrigin, size: sysSize(sysDirOf(target.externalOrigin)) }
    return thinSpans(pool, target, offset, length, origin)
  }

  private layer(dev: DevNum): Layer {
    const key = devKey(dev)
    let layer = this.layers.get(key)
    if (!layer) {
      layer = this.classify(dev)
      this.layers.set(key, layer)
    }
    return layer
  }

  private classify(dev: DevNum): Layer {
    const dir = sysDirOf(dev)
    const name = path.basename(dir)
    if (fs.existsSync(path.join(dir, 'partition'))) {
      return { kind: 'partition', name, parent: parentDevOf(dir), start: sysSectors(path.join(dir, 'start')), size: sysSize(dir) }
    }
    if (fs.existsSync(path.join(dir, 'dm'))) return { kind: 'dm', name, table: readDmTable(dev) }
    const node = `/dev/${name}`
    if (!fs.existsSync(node)) throw new ExportError(`no device node ${node} for ${name} (${devKey(dev)})`)
    const disk = { name, path: node, major: dev.major, minor: dev.minor, size: sysSize(dir) }
    if (this.loopLevels > 0 && fs.existsSync(path.join(dir, 'loop', 'backing_file'))) return { kind: 'loop', name, disk }
    return { kind: 'disk', disk }
  }
}

/**
 * Join spans that continue each other: the same disk and the next byte, or two holes. A file's extents
 * come back from the layers in pieces (stripe chunks, backing-file extents) that are often contiguous.
 */
export function mergeRawSpans(spans: RawSpan[]): RawSpan[] {
  const out: RawSpan[] = []
  for (const s of spans) {
    if (s.length === 0) continue
    const last = out[out.length - 1]
    if (last && last.raw === null && s.raw === null) {
      last.length += s.length
    } else if (last && last.raw && s.raw && devKey(last.raw) === devKey(s.raw) && last.offset + last.length === s.offset) {
      last.length += s.length
    } else {
      out.push({ ...s })
    }
  }
  return out
}

// --- sysfs: /sys/dev/block/MAJ:MIN is the authority (no udev here) --------------------------------

function sysDirOf(dev: DevNum): string {
  try {
    return fs.realpathSync(`/sys/dev/block/${devKey(dev)}`)
  } catch {
    // btrfs and other multi-device filesystems report an anonymous st_dev (major 0) that is no block device.
    throw new ExportError(`device ${devKey(dev)} is not a block device (is the filesystem network, virtual, or btrfs?)`)
  }
}

function sysSectors(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim()) * SECTOR
}

function sysSize(dir: string): number {
  return sysSectors(path.join(dir, 'size'))
}

/** A partition's sysfs directory sits inside its disk's, whose `dev` file holds "MAJ:MIN". */
function parentDevOf(partitionDir: string): DevNum {
  const [major, minor] = fs.readFileSync(path.join(path.dirname(partitionDir), 'dev'), 'utf8').trim().split(':').map(Number)
  return { major, minor }
}
