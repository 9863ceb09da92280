// `extfs inspect`: what a manifest holds, for people (text) and scripts (--json).
import type { Manifest } from '../manifest/types'

export interface Summary {
  configId: string
  frozenImage: Manifest['frozenImage']
  createdAt: string
  host: string
  signed: boolean
  inodes: Record<string, number>
  bytes: number
  extents: number
  extentBytes: number
  inlineFiles: number
  devices: { id: string; size: number; hint?: string; identity: Manifest['devices'][number]['identity']; fingerprints: number }[]
}

export function summarize(m: Manifest): Summary {
  const inodes: Record<string, number> = {}
  let bytes = 0
  let extents = 0
  let extentBytes = 0
  let inlineFiles = 0
  for (const i of m.inodes) {
    inodes[i.kind] = (inodes[i.kind] ?? 0) + 1
    if (i.kind !== 'file') continue
    bytes += i.size
    for (const e of i.extents ?? []) {
      extents++
      extentBytes += e.length
    }
    if (i.inline !== undefined) inlineFiles++
  }
  return {
    configId: m.configId, frozenImage: m.frozenImage, createdAt: m.createdAt, host: m.source.host, signed: !!m.signature,
    inodes, bytes, extents, extentBytes, inlineFiles,
    devices: m.devices.map((d) => ({ id: d.id, size: d.size, hint: d.hint, identity: d.identity, fingerprints: d.fingerprints.length })),
  }
}

export function formatSummary(s: Summary): string {
  const kinds = Object.entries(s.inodes).map(([k, n]) => `${n} ${k}`).join(', ')
  const lines = [
    `config ID     ${s.configId}`,
    `frozen image  ${s.frozenImage.kind}${s.frozenImage.mechanism ? ` (${s.frozenImage.mechanism} at ${s.frozenImage.imagePath})` : ''} of ${s.frozenImage.mountpoint} (${s.frozenImage.fsType}) on ${s.host} at ${s.createdAt}`,
    `signed        ${s.signed ? 'yes (hmac-sha256)' : 'no'}`,
    `inodes        ${kinds}`,
    `files         ${s.bytes} bytes; ${s.extents} extents holding ${s.extentBytes} bytes; ${s.inlineFiles} inline`,
  ]
  for (const d of s.devices) {
    const ids = Object.entries(d.identity).map(([k, v]) => `${k}=${v}`).join(' ') || 'no stable identifiers'
    lines.push(`device ${d.id.padEnd(6)} ${d.size} bytes, ${ids}, ${d.fingerprints} fingerprints${d.hint ? `, was ${d.hint}` : ''}`)
  }
  return lines.join('\n')
}
