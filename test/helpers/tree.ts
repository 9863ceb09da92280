// Snapshot a directory tree's content and metadata, and compare two snapshots. This is the oracle
// for "a backup through the view reproduces the source", so it compares what tar/rsync can restore
// (not atime, which reading changes, nor ctime, which nobody can set).
import { createHash } from 'node:crypto'
import { createReadStream, promises as fsp } from 'node:fs'
import type { BigIntStats } from 'node:fs'
import * as path from 'node:path'
import { run } from './exec'
import { decodeName, hostPath } from '../../src/manifest/names'

export type EntryKind = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block'

export interface EntryInfo {
  kind: EntryKind
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number
  uid: number
  gid: number
  /** Not recorded for directories: their size is filesystem-specific. */
  size?: number
  sha256?: string
  symlinkTarget?: string
  /** "major:minor" for device nodes. */
  rdev?: string
  /** mtime in ns, truncated (floored) to the snapshot's precision; undefined if times are ignored. */
  mtimeNs?: bigint
  /** name -> hex value; ACLs are excluded here (see `acl`). */
  xattrs: Record<string, string>
  /** Extended ACL entries as getfacl prints them (access and default), absent when only base entries. */
  acl?: string
  /** Smallest path of the hard-link group when ≥2 names of the inode are in the tree. */
  linkGroup?: string
}

export type Tree = Map<string, EntryInfo>

export interface SnapshotOptions {
  /** Compare mtimes after truncation to this many ns (1_000_000 = ms; 1 = exact). */
  timePrecisionNs: number
  /** Record the root's own mtime (default true; a copy made into an existing dir may not set it). */
  rootTimes?: boolean
  /** Skip xattrs / ACLs (default: collect them). */
  xattrs?: boolean
  acls?: boolean
}

// ACLs are compared through getfacl; their raw xattr forms (XFS also exposes trusted.SGI_ACL_*)
// differ between filesystems for the same ACL, so they are left out of `xattrs`.
const ACL_XATTR = /^(system\.posix_acl_(access|default)|trusted\.SGI_ACL_(FILE|DEFAULT))$/

export async function snapshotTree(dir: string, opts: SnapshotOptions): Promise<Tree> {
  const root = path.resolve(dir)
  const tree: Tree = new Map()
  const inodes = new Map<bigint, string[]>()
  const precision = BigInt(opts.timePrecisionNs)

  const visit = async (rel: string): Promise<void> => {
    const full = rel === '.' ? root : path.join(root, rel)
    // Names are bytes (src/manifest/names.ts): paths go to the kernel as the bytes they stand for.
    const st = await fsp.lstat(hostPath(full), { bigint: true })
    const info: EntryInfo = {
      kind: kindOf(st),
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      xattrs: {},
    }
    if (info.kind !== 'dir') info.size = Number(st.size)
    if (info.kind === 'file') info.sha256 = await sha256File(full)
    if (info.kind === 'symlink') info.symlinkTarget = decodeName(await fsp.readlink(hostPath(full), { encoding: 'buffer' }))
    if (info.kind === 'char' || info.kind === 'block') info.rdev = devString(st.rdev)
    if (rel !== '.' || opts.rootTimes !== false) info.mtimeNs = floorTo(st.mtimeNs, precision)
    tree.set(rel, info)
    if (info.kind !== 'dir') {
      const names = inodes.get(st.ino) ?? []
      names.push(rel)
      inodes.set(st.ino, names)
    }
    if (info.kind === 'dir') {
      const names = (await fsp.readdir(hostPath(full), { encoding: 'buffer' })).map(decodeName).sort()
      for (const name of names) await visit(rel === '.' ? name : `${rel}/${name}`)
    }
  }
  await visit('.')

  // Hard links by structure: every name of an inode is labelled with the group's smallest name.
  for (const names of inodes.values()) {
    if (names.length < 2) continue
    const label = [...names].sort()[0]
    for (const n of names) tree.get(n)!.linkGroup = label
  }

  if (opts.xattrs !== false) {
    for (const [rel, attrs] of await readXattrs(root)) {
      const e = tree.get(rel)
      if (!e) continue
      for (const [k, v] of Object.entries(attrs)) if (!ACL_XATTR.test(k)) e.xattrs[k] = v
    }
  }
  if (opts.acls !== false) {
    for (const [rel, acl] of await readAcls(root)) {
      const e = tree.get(rel)
      if (e) e.acl = acl
    }
  }
  return tree
}

/**
 * One difference a caller may accept: `field` is an EntryInfo field, `xattr <name>`, or `presence` for
 * an entry only one tree has. Whoever accepts one says why next to it (a copy tool's known limit).
 */
export interface Difference {
  rel: string
  field: string
  first?: EntryInfo
  second?: EntryInfo
}

export interface DiffOptions {
  ignorePaths?: (rel: string) => boolean
  /** Differences to leave out of the result. */
  allow?: (d: Difference) => boolean
}

/** Human-readable differences from a to b; empty when the trees match. */
export function diffTrees(a: Tree, b: Tree, opts: DiffOptions = {}): string[] {
  const out: string[] = []
  const allowed = (d: Difference) => opts.allow?.(d) === true
  const paths = [...new Set([...a.keys(), ...b.keys()])].sort()
  for (const p of paths) {
    if (opts.ignorePaths?.(p)) continue
    const x = a.get(p)
    const y = b.get(p)
    if (!x || !y) {
      if (!allowed({ rel: p, field: 'presence', first: x, second: y })) out.push(`${p}: only in ${x ? 'first' : 'second'} tree (${(x ?? y)!.kind})`)
      continue
    }
    const fields: Array<keyof EntryInfo> = ['kind', 'mode', 'uid', 'gid', 'size', 'sha256', 'symlinkTarget', 'rdev', 'mtimeNs', 'acl', 'linkGroup']
    for (const f of fields) {
      if (x[f] !== y[f] && !allowed({ rel: p, field: f, first: x, second: y })) out.push(`${p}: ${f} ${show(f, x[f])} != ${show(f, y[f])}`)
    }
    for (const name of [...new Set([...Object.keys(x.xattrs), ...Object.keys(y.xattrs)])].sort()) {
      const xv = x.xattrs[name]
      const yv = y.xattrs[name]
      if (xv !== yv && !allowed({ rel: p, field: `xattr ${name}`, first: x, second: y })) {
        out.push(`${p}: xattr ${name} ${xv === undefined ? '(absent)' : `0x${xv}`} != ${yv === undefined ? '(absent)' : `0x${yv}`}`)
      }
    }
  }
  return out
}

function show(field: keyof EntryInfo, v: unknown): string {
  if (v === undefined) return '(absent)'
  if (field === 'mode') return (v as number).toString(8).padStart(4, '0')
  if (field === 'mtimeNs') return `${v}ns`
  return JSON.stringify(v)
}

function kindOf(st: BigIntStats): EntryKind {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'socket'
  if (st.isCharacterDevice()) return 'char'
  return 'block'
}

/** Floor (not round) so that both sides agree whenever they agree up to the precision. */
function floorTo(ns: bigint, precision: bigint): bigint {
  const r = ns % precision
  return r < 0n ? ns - r - precision : ns - r
}

/** Linux dev_t encoding (glibc gnu_dev_major/minor). */
function devString(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)
  return `${major}:${minor}`
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(hostPath(file))) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** getfattr/getfacl print names with octal escapes (\012, \134, \351); decode to bytes, then to a name. */
function unescapeName(s: string): string {
  const bytes: number[] = []
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8))
      i += 3
    } else bytes.push(...Buffer.from(s[i], 'utf8'))
  }
  return decodeName(Buffer.from(bytes))
}

function relName(root: string, printed: string): string {
  const rel = path.relative(root, unescapeName(printed))
  return rel === '' ? '.' : rel
}

/** Split getfattr/getfacl output into "# file: <name>" blocks. */
function blocks(text: string): Array<{ file: string; lines: string[] }> {
  const out: Array<{ file: string; lines: string[] }> = []
  for (const chunk of text.split(/\n\n+/)) {
    const lines = chunk.split('\n').filter((l) => l !== '')
    const head = lines.shift()
    if (head?.startsWith('# file: ')) out.push({ file: head.slice('# file: '.length), lines })
  }
  return out
}

/** All xattrs of every entry in one getfattr run (-h: symlinks' own, -P: don't follow links). */
async function readXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const r = await run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], { timeoutMs: 600_000 })
  // Exit status 1 with output is normal when some entry cannot be read; anything else is a failure.
  if (r.code !== 0 && r.stdout === '') throw new Error(`getfattr ${root}: ${r.stderr.trim()}`)
  const out = new Map<string, Record<string, string>>()
  for (const b of blocks(r.stdout)) {
    const attrs: Record<string, string> = {}
    for (const line of b.lines) {
      const eq = line.indexOf('=')
      const name = unescapeName(eq < 0 ? line : line.slice(0, eq))
      const value = eq < 0 ? '' : line.slice(eq + 1)
      // -e hex prints 0x...; an empty value prints as "0x" or (older getfattr) as no "=" at all.
      attrs[name] = value.startsWith('0x') ? value.slice(2) : Buffer.from(value.replace(/^"|"$/g, '')).toString('hex')
    }
    out.set(relName(root, b.file), attrs)
  }
  return out
}

/** Extended ACLs (-s skips entries with only base entries, which `mode` already covers). */
async function readAcls(root: string): Promise<Map<string, string>> {
  const r = await run('getfacl', ['-R', '-P', '-s', '-n', '-p', root], { timeoutMs: 600_000 })
  if (r.code !== 0 && r.stdout === '') throw new Error(`getfacl ${root}: ${r.stderr.trim()}`)
  const out = new Map<string, string>()
  for (const b of blocks(r.stdout)) {
    // Drop "# owner/# group/# flags" comments: owner and mode bits are compared on their own.
    out.set(relName(root, b.file), b.lines.filter((l) => !l.startsWith('#')).join('\n'))
  }
  return out
}
