// `extfs inspect`: what a manifest holds, for people (text) and scripts (--json).
import type { Manifest } from '../manifest/types'
import { printable } from '../manifest/names'

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
  /** Paths of the files holding a POSIX ACL larger than the kernel passes through FUSE (with 4 KiB pages). */
  largeAcls: string[]
}

/**
 * The buffer the kernel reads a FUSE filesystem's POSIX ACLs into: one page, 4 KiB on the movers we
 * know (the view itself asks the kernel: src/native-engine/native-engine.ts). docs/design.md, "Current limits".
 */
const KERNEL_ACL_BUFFER = 4096
const ACL_NAMES = ['system.posix_acl_access', 'system.posix_acl_default']

/** Paths (one name each, from the root, sorted) of the inodes holding an ACL no FUSE reader can have. */
function largeAclPaths(m: Manifest): string[] {
  const large = new Set(m.inodes.filter((i) => ACL_NAMES.some((name) => {
    const b64 = i.xattrs?.[name]
    return b64 !== undefined && Buffer.byteLength(b64, 'base64') > KERNEL_ACL_BUFFER
  })).map((i) => i.ino))
  if (large.size === 0) return []
  const byIno = new Map(m.inodes.map((i) => [i.ino, i]))
  const found: string[] = []
  const seen = new Set<number>()
  const walk = [{ ino: m.root, path: '/' }]
  for (let next = walk.pop(); next !== undefined; next = walk.pop()) {
    if (seen.has(next.ino)) continue
    seen.add(next.ino)
    if (large.has(next.ino)) found.push(next.path)
    const prefix = next.path === '/' ? '' : next.path
    for (const e of byIno.get(next.ino)?.entries ?? []) walk.push({ ino: e.ino, path: `${prefix}/${e.name}` })
  }
  return found.sort()
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
    largeAcls: largeAclPaths(m),
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
  if (s.largeAcls.length > 0) {
    lines.push(`large ACLs    ${s.largeAcls.length} file(s) hold POSIX ACLs over ${KERNEL_ACL_BUFFER} bytes, which no FUSE reader can have: ${printable(s.largeAcls.join(', '))}`)
  }
  return lines.join('\n')
}
