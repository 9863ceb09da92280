// Delta signatures: the manifest's rule (src/manifest/sign.ts) — HMAC-SHA256 with the shared key over
// the canonical JSON of the delta without its `signature` field — reusing its code.
import { ManifestError } from '../errors'
import { CanonicalHmac, checkSignature } from '../manifest/sign'
import type { Delta } from './types'

function hmacHex(d: Delta, key: Buffer): string {
  const { signature: _ignored, ...body } = d
  const h = new CanonicalHmac(key)
  h.value(body)
  return h.digestHex()
}

/** A copy of `d` signed with `key` (an existing signature is replaced). */
export function signDelta(d: Delta, key: Buffer): Delta {
  const { signature: _ignored, ...body } = d
  return { ...body, signature: { alg: 'hmac-sha256', value: hmacHex(d, key) } }
}

/** Throws ManifestError unless `d` carries a valid signature made with `key`. `name` is for messages. */
export function verifyDeltaSignature(d: Delta, key: Buffer, name: string): void {
  try {
    checkSignature(d.signature, () => hmacHex(d, key))
  } catch (err) {
    // checkSignature speaks of "manifest"; say which file it is.
    if (err instanceof ManifestError) err.message = err.message.replace(/^manifest/, name)
    throw err
  }
}
