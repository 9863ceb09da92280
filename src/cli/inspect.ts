// `extfs inspect`: what a manifest of either version holds, for people (text) and scripts (--json).
import type { Inode, Manifest } from '../manifest/types'
import { printable } from '../manifest/names'
import { streamOrReadManifest, type InodeSink } from '../manifest/stream'
import { ManifestError } from '../errors'
import { TreeSink } from '../manifest/tree'
import { checkBodyV2 } from '../native-engine/mapped-tables'

export interface Summary {
  configId: string
  /** Manifest format version: 1 JSON, 2 binary. */
  format: number
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

function holdsLargeAcl(n: Inode): boolean {
  return ACL_NAMES.some((name) => {
    const b64 = n.xattrs?.[name]
    return b64 !== undefined && Buffer.byteLength(b64, 'base64') > KERNEL_ACL_BUFFER
  })
}

/** Counts as the inodes stream by; remembers only directories and files with large ACLs. */
class Tally implements InodeSink {
  readonly inodes: Record<string, number> = {}
  bytes = 0
  extents = 0
  extentBytes = 0
  inlineFiles = 0
  readonly dirs = new Set<number>()
  readonly largeAcl = new Set<number>()

  begin(): void {}
  finish(): void {}

  inode(n: Inode): void {
    this.inodes[n.kind] = (this.inodes[n.kind] ?? 0) + 1
    if (n.kind === 'dir') this.dirs.add(n.ino)
    if (holdsLargeAcl(n)) this.largeAcl.add(n.ino)
    if (n.kind !== 'file') return
    this.bytes += n.size
    for (const e of n.extents ?? []) {
      this.extents++
      this.extentBytes += e.length
    }
    if (n.inline !== undefined) this.inlineFiles++
  }
}

/**
 * Paths (one name each, from the root, sorted) of `wanted` inodes: a second pass over the manifest
 * that keeps the names of directories and of the wanted files only, never every entry.
 */
function pathsOf(wanted: Set<number>, dirs: Set<number>, root: number, pass: (sink: InodeSink) => void): string[] {
  const named = new Map<number, { parent: number; name: string }>()
  pass({
    begin() {}, finish() {},
    inode(n: Inode) {
      for (const e of n.entries ?? []) if ((dirs.has(e.ino) || wanted.has(e.ino)) && !named.has(e.ino)) named.set(e.ino, { parent: n.ino, name: e.name })
    },
  })
  const pathOf = (ino: number): string => {
    const parts: string[] = []
    for (let at = ino; at !== root; at = named.get(at)!.parent) parts.push(named.get(at)!.name)
    return '/' + parts.reverse().join('/')
  }
  return [...wanted].filter((ino) => ino === root || named.has(ino)).map(pathOf).sort()
}

/**
 * The summary of the manifest in `file` (either version), checked and its signature verified with
 * `key`, streamed: the summary itself holds what is proportional to its directories. The tree is
 * checked as a mount checks it, so that inspect refuses what mount refuses: version 2 by the C loader
 * (a few bytes per inode, as the mover), version 1 by the walk its mount uses (src/manifest/tree.ts,
 * about 50 bytes per small file).
 */
export function summarizeFile(file: string, key?: Buffer): Summary {
  let tally = new Tally()
  let check: TreeSink | undefined
  const both: InodeSink = {
    begin: (header) => {
      if (header.version !== 2) check = new TreeSink()
    },
    inode: (n) => { check?.inode(n); tally.inode(n) },
    finish: (root) => check?.finish(root),
  }
  const { header, whole } = streamOrReadManifest(file, both, key)
  if (header.version === 2) checkBodyV2(file) // after the stream, which verified the signature first
  const pass = whole
    ? (sink: InodeSink) => whole.inodes.forEach((n, i) => sink.inode(n, i))
    : (sink: InodeSink) => streamOrReadManifest(file, sink, key)
  if (whole) {
    tally = new Tally() // what the stream saw before it gave up is not counted
    pass(tally)
  }
  const largeAcls = tally.largeAcl.size === 0 ? [] : pathsOf(tally.largeAcl, tally.dirs, header.root, pass)
  return {
    configId: header.configId, format: header.version, frozenImage: header.frozenImage, createdAt: header.createdAt, host: header.source.host,
    signed: !!header.signature, inodes: tally.inodes, bytes: tally.bytes, extents: tally.extents, extentBytes: tally.extentBytes,
    inlineFiles: tally.inlineFiles,
    devices: header.devices.map((d) => ({ id: d.id, size: d.size, hint: d.hint, identity: d.identity, fingerprints: d.fingerprints.length })),
    largeAcls,
  }
}

/**
 * `inspect --inodes`: the header as one line of JSON, then each inode as one, in the version 1 form
 * whatever the file's version, checked and streamed (a v1 file that cannot stream is read whole).
 */
export function printInodes(file: string, key: Buffer | undefined, out: (line: string) => void): void {
  const lines: string[] = []
  const flush = () => {
    if (lines.length > 0) out(lines.splice(0).join('\n'))
  }
  let headerSeen = false
  const sink: InodeSink = {
    begin(header) {
      const { signature: _s, ...rest } = header
      out(JSON.stringify({ header: rest }))
      headerSeen = true
    },
    inode(n) {
      lines.push(JSON.stringify(n))
      if (lines.length >= 1024) flush()
    },
    finish() {},
  }
  const { whole } = streamOrReadManifest(file, sink, key)
  if (whole) {
    // The JSON layout could not stream. Almost always before the first line; after it, what went out
    // cannot be taken back: say so rather than print the header twice.
    if (headerSeen) throw new ManifestError(`manifest ${file}: its JSON layout stops streaming after its inodes began (a top-level field twice?); inspect --inodes cannot print it`)
    const { inodes, signature: _s, ...header } = whole
    out(JSON.stringify({ header }))
    for (const n of inodes) lines.push(JSON.stringify(n))
  }
  flush()
}

export function formatSummary(s: Summary): string {
  const kinds = Object.entries(s.inodes).map(([k, n]) => `${n} ${k}`).join(', ')
  const lines = [
    `config ID     ${s.configId}`,
    `format        version ${s.format} (${s.format === 1 ? 'JSON' : 'binary'})`,
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
