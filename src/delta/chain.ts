// The current map of an image: the manifest, then deltas 1..k applied in order (docs/remap.md).
// Only what a delta can change is kept: where each regular file's bytes lie (with their copies and
// checksums, feature data-checksums), and the device list (which devices there are, the newest
// fingerprints proving each, which are retired).
import type { DataChecksums, Device, Extent, Inode, Manifest, ManifestHeader } from '../manifest/types'
import type { Delta } from './types'
import type { DeltaContext } from './validate'
import { ManifestError } from '../errors'

/** Where one regular file's bytes are: extents on the devices (none: all hole), or carried content. */
export interface FileLocation {
  size: number
  extents?: Extent[]
  inline?: string
}

export class ImageMap {
  private constructor(
    /** c0, the manifest's configId. */
    readonly image: string,
    /** The config ID of this map: c0, or the last applied delta's `to`. */
    public configId: string,
    /** How many deltas are applied. */
    public seq: number,
    /** Manifest devices, then each delta's new devices: extents' `device` indexes this list. */
    readonly devices: Device[],
    /** Every regular file of the image by ino. */
    readonly files: Map<number, FileLocation>,
    /** Devices no extent uses any more (delta `retired`). */
    public retired: ReadonlySet<number> = new Set(),
    /** The manifest's data checksums: every delta repeats them, its extents carry copies and csums. */
    readonly dataChecksums?: DataChecksums,
  ) {}

  static ofManifest(m: Manifest): ImageMap {
    const files = new Map<number, FileLocation>()
    for (const n of m.inodes) if (n.kind === 'file') files.set(n.ino, locationOf(n))
    return new ImageMap(m.configId, m.configId, 0, [...m.devices], files, new Set(), m.dataChecksums)
  }

  /**
   * A partial map: the manifest's devices and none of its files; the caller adds the files the delta
   * chain names (with their manifest locations) before applying it, and reads every other file from the
   * manifest itself (a bulk remap, src/remap/bulk.ts). Checks that need every file (apply's retired
   * check) then cover only the files it holds; the caller checks the others as it reads them.
   */
  static partial(m: ManifestHeader): ImageMap {
    return new ImageMap(m.configId, m.configId, 0, [...m.devices], new Map(), new Set(), m.dataChecksums)
  }

  /** What validateDelta needs to check the next delta against this map. */
  context(): DeltaContext {
    const fileSizes = new Map<number, number>()
    for (const [ino, f] of this.files) fileSizes.set(ino, f.size)
    return {
      image: this.image, seq: this.seq + 1, from: this.configId, devices: this.devices, fileSizes, retired: this.retired, dataChecksums: this.dataChecksums,
    }
  }

  /**
   * Apply a delta validated against context(): devices as devicesAfter() says, named files replaced
   * whole. Unlike a mover, the map has every file, so it checks what a delta's `retired` claims.
   */
  apply(d: Delta): void {
    if (d.retired) this.checkRetired(d)
    const devices = devicesAfter(this.devices, d)
    this.devices.splice(0, this.devices.length, ...devices)
    this.retired = retiredAfter(this.retired, d)
    for (const f of d.files) {
      const size = this.files.get(f.ino)!.size
      this.files.set(f.ino, f.inline !== undefined ? { size, inline: f.inline } : { size, extents: f.extents ?? [] })
    }
    this.configId = d.to
    this.seq = d.seq
  }

  /** No file may keep an extent on a device `d` retires. */
  private checkRetired(d: Delta): void {
    const retired = new Set(d.retired)
    const replaced = new Map(d.files.map((f) => [f.ino, f]))
    for (const [ino, f] of this.files) {
      const used = (replaced.get(ino) ?? f).extents?.flatMap(devicesOfExtent).find((x) => retired.has(x))
      if (used !== undefined) throw new ManifestError(`delta ${d.seq}: retires device ${used}, but inode ${ino} still has an extent (or a copy of one) on it`)
    }
  }
}

/** Where a regular file of a manifest has its bytes. */
export function locationOf(n: Inode): FileLocation {
  return n.inline !== undefined ? { size: n.size, inline: n.inline } : { size: n.size, extents: n.extents ?? [] }
}

/** The devices an extent's bytes are on: its own, then its copies'. */
export function devicesOfExtent(e: Extent): number[] {
  return e.copies === undefined ? [e.device] : [e.device, ...e.copies.map((c) => c.device)]
}

/** The device list after delta `d`: its new devices appended; devices it proves carry its fingerprints. */
export function devicesAfter(devices: readonly Device[], d: Delta): Device[] {
  const out = [...devices, ...d.devices]
  for (const p of d.proofs ?? []) out[p.device] = { ...out[p.device]!, fingerprints: p.fingerprints }
  return out
}

export function retiredAfter(retired: ReadonlySet<number>, d: Delta): ReadonlySet<number> {
  return d.retired ? new Set([...retired, ...d.retired]) : retired
}

/** The context to check the delta after `d` with, `d` having been checked with `ctx`. */
export function contextAfter(ctx: DeltaContext, d: Delta): DeltaContext {
  return { ...ctx, seq: d.seq + 1, from: d.to, devices: devicesAfter(ctx.devices, d), retired: retiredAfter(ctx.retired, d) }
}
