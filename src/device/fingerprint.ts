// Fingerprints prove on the mover that a device holds the frozen image: hashes of blocks sampled from
// inside the frozen extents, taken at export and compared before anything is served.
import { createHash } from 'node:crypto'
import type { Extent, Fingerprint } from '../manifest/types'
import type { RawDevice } from './reader'

const SAMPLE = 4096
const MAX_SAMPLES = 16

/**
 * Choose up to 16 sample ranges spread evenly over a device's extents (in manifest order, so the choice
 * is deterministic): in each chosen extent the 4096-aligned block nearest its middle, or the whole
 * extent when it holds no aligned block.
 */
export function chooseSamples(extents: Extent[]): { offset: number; length: number }[] {
  const step = Math.max(1, Math.floor(extents.length / MAX_SAMPLES))
  const out = []
  for (let i = 0; i < extents.length && out.length < MAX_SAMPLES; i += step) {
    const e = extents[i]
    const end = e.deviceOffset + e.length
    const mid = Math.floor((e.deviceOffset + end) / 2 / SAMPLE) * SAMPLE
    const start = Math.max(Math.ceil(e.deviceOffset / SAMPLE) * SAMPLE, Math.min(mid, end - SAMPLE))
    if (start + SAMPLE <= end && start >= e.deviceOffset) out.push({ offset: start, length: SAMPLE })
    else out.push({ offset: e.deviceOffset, length: Math.min(e.length, SAMPLE) })
  }
  return out
}

export function hashRange(device: RawDevice, offset: number, length: number): string {
  const buf = Buffer.alloc(length)
  device.readExact(buf, 0, length, offset)
  return createHash('sha256').update(buf).digest('hex')
}

export function takeFingerprints(device: RawDevice, extents: Extent[]): Fingerprint[] {
  return chooseSamples(extents).map((s) => ({ ...s, sha256: hashRange(device, s.offset, s.length) }))
}

/** The first fingerprint that does not match, or undefined when all do. */
export function firstMismatch(device: RawDevice, fingerprints: Fingerprint[]): Fingerprint | undefined {
  return fingerprints.find((f) => f.offset + f.length > device.size || hashRange(device, f.offset, f.length) !== f.sha256)
}
