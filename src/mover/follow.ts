// The mover following the initiator's config-ID chain (docs/remap.md). When the record changes, the
// deltas after the view's current config ID are read and checked (chain, validation, signature), their
// new devices found and proven, and then all of them are applied to the engine in one step. Anything
// wrong leaves the view on its old map and opens refused, with the reason.
import { bytesOnDevice, type DataChecksums, type Device, type Extent } from '../manifest/types'
import type { DeltaFile } from '../delta/types'
import type { DeltaContext } from '../delta/validate'
import { readDeltaChain } from '../delta/io'
import { fileStamp, readRecord, type ConfigCheck } from '../configid/record'
import { resolveDevice } from '../device/resolve'
import { RawDevice } from '../device/reader'

/** What the engine must offer to follow: replace some files' extents and add devices, atomically. */
export interface DeltaTarget {
  applyDelta(files: DeltaFile[], newDevices: RawDevice[]): void
}

export type Verdict = { ok: true } | { ok: false; reason: string }

export interface FollowOptions {
  /** The manifest's configId (c0) and its devices. */
  image: string
  devices: readonly Device[]
  /** The manifest's data checksums: deltas must repeat them (src/delta/validate.ts). */
  dataChecksums?: DataChecksums
  /** ino → size of every regular file of the image; asked for when a delta arrives. */
  fileSizes: () => DeltaContext['fileSizes']
  recordFile: string
  key?: Buffer
  /** --device overrides, by device id: they apply to devices a delta brings too. */
  deviceOverrides: Map<string, string>
  /** Called with every device opened for a delta, so the caller closes them after unmount. */
  adopt: (d: RawDevice) => void
  /** One line per followed delta. */
  note: (msg: string) => void
}

/**
 * The view's config check when it can follow deltas: `check()` answers every open whose record changed,
 * on the serving process's JS thread (the waiting open is refused after 5 s).
 */
export class ChainFollower implements ConfigCheck {
  private configId: string
  private seq = 0
  /** The current map's devices (newest fingerprints) and those retired. */
  private devices: readonly Device[]
  private retired: ReadonlySet<number> = new Set()
  private target?: DeltaTarget
  /** poll(): the record's identity when last judged there, and whether it said released. */
  private polledStamp = ''
  private releasedSeen = false

  constructor(private readonly opts: FollowOptions) {
    this.configId = opts.image
    this.devices = [...opts.devices]
  }

  get file(): string {
    return this.opts.recordFile
  }

  /** The engine deltas are applied to; until attached, a changed config ID is refused. */
  attach(target: DeltaTarget): void {
    this.target = target
  }

  check(): Verdict {
    return this.judge()
  }

  /** The config ID the view serves under now. */
  get current(): string {
    return this.configId
  }

  /** How many deltas of the chain the view has applied (0: the manifest's map). */
  get applied(): number {
    return this.seq
  }

  /**
   * Look at the record now, when its identity changed since the last look (one stat(2) otherwise):
   * a new delta is followed at once instead of at the next open, and a release is seen while no file
   * is being opened. Returns whether the image was released (the view then refuses reads too), and
   * the reason of a refusal the first time it is seen.
   */
  poll(): { released: boolean; refused?: string } {
    const stamp = fileStamp(this.opts.recordFile) // '': unreadable now; the next open's judge() says why
    if (stamp === '' || stamp === this.polledStamp) return { released: this.releasedSeen }
    this.polledStamp = stamp
    const v = this.judge()
    return { released: this.releasedSeen, refused: v.ok ? undefined : v.reason }
  }

  /** Judge the record: serve, follow it to its config ID, or refuse. Never throws. */
  judge(): Verdict {
    try {
      const record = readRecord(this.opts.recordFile)
      this.releasedSeen = record.state === 'released'
      if (record.state === 'released') return { ok: false, reason: `frozen image ${record.configId} was released` }
      if (record.configId === this.configId) return { ok: true }
      this.follow(record.deltas ?? [], record.configId)
      return { ok: true }
    } catch (err) {
      return { ok: false, reason: (err as Error).message }
    }
  }

  /** Read, check and apply deltas seq+1.. of `chain`, which must end at `target`. All or nothing. */
  private follow(chain: string[], target: string): void {
    if (!this.target) throw new Error(`config ID changed from ${this.configId} to ${target} and this engine cannot follow it`)
    if (chain.length <= this.seq) throw new Error(`config ID changed from ${this.configId} to ${target} without a delta leading there`)
    const before: DeltaContext = {
      image: this.opts.image, seq: this.seq + 1, from: this.configId, devices: this.devices, fileSizes: this.opts.fileSizes(), retired: this.retired,
      dataChecksums: this.opts.dataChecksums,
    }
    const { deltas, ctx } = readDeltaChain(this.opts.recordFile, chain.slice(this.seq), before, this.opts.key)
    if (ctx.from !== target) throw new Error(`the delta chain ends at ${ctx.from}, but the record names ${target}`)
    const files = new Map<number, DeltaFile>()
    for (const d of deltas) for (const f of d.files) files.set(f.ino, f) // a later delta's list replaces an earlier one's
    const opened = this.prove(ctx, [...files.values()])
    try {
      this.target.applyDelta([...files.values()], opened)
    } catch (err) {
      for (const d of opened) d.close()
      throw err
    }
    for (const d of opened) this.opts.adopt(d)
    this.opts.note(`followed the config ID from ${this.configId} to ${ctx.from}: ${files.size} files moved, ${opened.length} new devices`)
    this.devices = ctx.devices
    this.retired = ctx.retired
    this.configId = ctx.from
    this.seq = ctx.seq - 1
  }

  /**
   * Find and prove each device new since the view's map (with its newest fingerprints: a later delta
   * of the chain may have proved it again) before anything of the chain is used. One the chain has
   * already retired is not looked for.
   */
  private prove(after: DeltaContext, files: DeltaFile[]): RawDevice[] {
    const opened: RawDevice[] = []
    try {
      for (let index = this.devices.length; index < after.devices.length; index++) {
        const device = after.devices[index]!
        if (after.retired.has(index)) {
          opened.push(RawDevice.retired(device.id))
          continue
        }
        let end = 0
        for (const f of files) for (const e of f.extents ?? []) end = Math.max(end, endOn(e, index))
        opened.push(resolveDevice(device, this.opts.deviceOverrides.get(device.id), end))
      }
      return opened
    } catch (err) {
      for (const d of opened) d.close()
      throw err
    }
  }
}

/** Where extent `e`'s bytes end on device `index` (its own or a copy's place), 0 when it has none there. */
function endOn(e: Extent, index: number): number {
  let end = e.device === index ? e.deviceOffset + bytesOnDevice(e) : 0
  for (const c of e.copies ?? []) if (c.device === index) end = Math.max(end, c.deviceOffset + bytesOnDevice(e))
  return end
}
