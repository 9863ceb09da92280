// The current map of an image: the manifest, then deltas 1..k applied in order (docs/remap.md).
// Only what a delta can change is kept: where each regular file's bytes lie, and the device list.
import type { Device, Extent, Manifest } from '../manifest/types'
import type { Delta } from './types'
import type { DeltaContext } from './validate'

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
  ) {}

  static ofManifest(m: Manifest): ImageMap {
    const files = new Map<number, FileLocation>()
    for (const n of m.inodes) {
      if (n.kind !== 'file') continue
      files.set(n.ino, { size: n.size, extents: n.inline === undefined ? n.extents ?? [] : undefined, inline: n.inline })
    }
    return new ImageMap(m.configId, m.configId, 0, [...m.devices], files)
  }

  /** What validateDelta needs to check the next delta against this map. */
  context(): DeltaContext {
    const fileSizes = new Map<number, number>()
    for (const [ino, f] of this.files) fileSizes.set(ino, f.size)
    return { image: this.image, seq: this.seq + 1, from: this.configId, devices: this.devices, fileSizes }
  }

  /** Apply a delta validated against context(): new devices appended, named files replaced whole. */
  apply(d: Delta): void {
    this.devices.push(...d.devices)
    for (const f of d.files) {
      const size = this.files.get(f.ino)!.size
      this.files.set(f.ino, f.inline !== undefined ? { size, inline: f.inline } : { size, extents: f.extents ?? [] })
    }
    this.configId = d.to
    this.seq = d.seq
  }
}
