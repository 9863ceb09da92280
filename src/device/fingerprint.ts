// Fingerprints prove on the mover that a device holds the frozen image: hashes of blocks sampled from
// inside the frozen extents, taken at export and compared before anything is served.
import { createHash } from 'node:crypto'
import { CSUM_ALG, linux } from '../linux'
import { bytesOnDevice, CSUM_ALGORITHMS, type DataChecksums, type Extent, type Fingerprint } from '../manifest/types'
import type { RawDevice } from './reader'

const SAMPLE = 4096
const MAX_SAMPLES = 16

/**
 * Choose up to 16 sample ranges spread evenly over a device's extents (in manifest order, so the choice
 * is deterministic): in each chosen extent the 4096-aligned block nearest its middle, or the whole
 * extent when it holds no aligned block.
 */
export function chooseSamples(extents: Extent[]): { offset: number; length: number }[] {
  return pickSamples(extents).map(({ offset, length }) => ({ offset, length }))
}

function pickSamples(extents: Extent[]): { offset: number; length: number; extent: Extent }[] {
  const step = Math.max(1, Math.floor(extents.length / MAX_SAMPLES))
  const out = []
  for (let i = 0; i < extents.length && out.length < MAX_SAMPLES; i += step) {
    const e = extents[i]
    const end = e.deviceOffset + bytesOnDevice(e) // a compressed extent's encoded stream
    const mid = Math.floor((e.deviceOffset + end) / 2 / SAMPLE) * SAMPLE
    const start = Math.max(Math.ceil(e.deviceOffset / SAMPLE) * SAMPLE, Math.min(mid, end - SAMPLE))
    if (start + SAMPLE <= end && start >= e.deviceOffset) out.push({ offset: start, length: SAMPLE, extent: e })
    else out.push({ offset: e.deviceOffset, length: Math.min(end - e.deviceOffset, SAMPLE), extent: e })
  }
  return out
}

/**
 * An even spread of a device's extents, kept while they stream past without holding them all: every
 * `step`-th extent, `step` doubling whenever more than twice the samples are kept. What remap samples
 * a device's proof from when it never holds the image's whole map (src/remap/join.ts).
 */
export class SampleSpread {
  private kept: Extent[] = []
  private step = 1
  private seen = 0

  add(e: Extent): void {
    if (this.seen++ % this.step !== 0) return
    this.kept.push(e)
    if (this.kept.length > 2 * MAX_SAMPLES) {
      this.kept = this.kept.filter((_, i) => i % 2 === 0)
      this.step *= 2
    }
  }

  /** The extents kept, in the order they came: chooseSamples/takeFingerprints pick among them. */
  extents(): Extent[] {
    return this.kept
  }
}

export function hashRange(device: RawDevice, offset: number, length: number): string {
  const buf = Buffer.alloc(length)
  device.readExact(buf, 0, length, offset)
  return createHash('sha256').update(buf).digest('hex')
}

/**
 * The extents whose bytes lie on device `device`: those on it, and the copies on it of the others
 * (as extents at the copy's place, with the same csums). A mirror proves its device as well as the
 * copy the view reads first: a device may hold only mirrors.
 */
export function extentsOnDevice(extents: Iterable<Extent>, device: number): Extent[] {
  const out: Extent[] = []
  for (const e of extents) {
    if (e.device === device) out.push(e)
    for (const c of e.copies ?? []) if (c.device === device) out.push({ ...e, device, deviceOffset: c.deviceOffset, copies: undefined })
  }
  return out
}

/**
 * Fingerprints of `device` over `extents`. With `checksums`, a sample inside an extent with csums is
 * taken only when the sectors around it verify: a stale or damaged copy must not prove the device
 * (the view serves such sectors from another copy, or not at all).
 */
export function takeFingerprints(device: RawDevice, extents: Extent[], checksums?: DataChecksums): Fingerprint[] {
  return pickSamples(extents)
    .filter((s) => checksums === undefined || s.extent.csums === undefined || sectorsVerify(device, s, checksums))
    .map(({ offset, length }) => ({ offset, length, sha256: hashRange(device, offset, length) }))
}

/** The whole sectors of `s.extent` around the sample verify against its csums. */
function sectorsVerify(device: RawDevice, s: { offset: number; length: number; extent: Extent }, c: DataChecksums): boolean {
  const e = s.extent
  const ss = c.sectorSize
  const from = Math.floor((s.offset - e.deviceOffset) / ss) * ss
  const to = Math.ceil((s.offset + s.length - e.deviceOffset) / ss) * ss
  const bytes = Buffer.alloc(to - from)
  device.readExact(bytes, 0, bytes.length, e.deviceOffset + from)
  const per = CSUM_ALGORITHMS[c.algorithm]
  const csums = Buffer.from(e.csums!, 'base64').subarray((from / ss) * per, (to / ss) * per)
  return linux.csumVerify(CSUM_ALG[c.algorithm], bytes, csums, ss) < 0
}

/** The first fingerprint that does not match, or undefined when all do. */
export function firstMismatch(device: RawDevice, fingerprints: Fingerprint[]): Fingerprint | undefined {
  return fingerprints.find((f) => f.offset + f.length > device.size || hashRange(device, f.offset, f.length) !== f.sha256)
}
