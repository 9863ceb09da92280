// LEB128 varints and zigzag, as docs/manifest-v2.md defines them: shortest form only, magnitudes up to
// 2^53 - 1 (exact as JS numbers). Written by hand: no npm package reads them from a refilling
// window with these bounds, and they are a dozen lines.
const MAX = Number.MAX_SAFE_INTEGER

/** Appends the varint of 0 <= v <= 2^53 - 1 to `out` at `at`; returns the new position. */
export function putVarint(out: Buffer, at: number, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varint out of range: ${v}`)
  while (v >= 0x80) {
    out[at++] = (v % 0x80) | 0x80
    v = Math.floor(v / 0x80)
  }
  out[at++] = v
  return at
}

/** The zigzag form of a signed value; its form must stay at most 2^53 - 1 (a magnitude below 2^52). */
export function zigzag(v: number): number {
  const u = v >= 0 ? v * 2 : -v * 2 - 1
  if (!Number.isSafeInteger(u)) throw new RangeError(`difference out of range: ${v}`)
  return u
}

/** zigzag's inverse. */
export function unzigzag(u: number): number {
  return u % 2 === 0 ? u / 2 : -(u + 1) / 2
}

/** Bytes of a varint (for sizing a buffer). */
export const VARINT_MAX_BYTES = 10

/**
 * Reads a varint at `at` of `b`; returns [value, next position], or undefined when it runs past `end`.
 * Throws RangeError on a non-shortest form or a value over `max` (at most 2^53 - 1).
 */
export function getVarint(b: Buffer, at: number, end: number, max = MAX): [number, number] | undefined {
  let value = 0
  let scale = 1
  for (let i = 0; i < 10; i++) {
    if (at >= end) return undefined
    const byte = b[at++]!
    value += (byte & 0x7f) * scale
    if ((byte & 0x80) === 0) {
      if (byte === 0 && i > 0) throw new RangeError('varint not in its shortest form')
      if (value > max) throw new RangeError(`value ${value} over ${max}`)
      return [value, at]
    }
    scale *= 0x80
    if (value > max) throw new RangeError(`varint over ${max}`)
  }
  throw new RangeError('varint longer than 10 bytes')
}
