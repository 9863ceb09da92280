// Validation of a manifest received from another host: pure, no I/O.
//
// The manifest decides which device bytes the view serves, so it is treated as hostile input: every
// field is checked for type, range and consistency, every list is bounded, and unknown fields are
// refused (a newer writer that adds meaning must say so with a version or feature flag). The first
// problem found throws a ManifestError with one line naming it and where it is, e.g.
//   inode 12: entry "a/b" contains "/"
// The rules are documented in docs/manifest-format.md; keep the two in step.
//
// Speed matters (a million inodes should validate in well under a few seconds), so the per-item
// checks are plain functions that return a problem or nothing; the caller builds the message only on
// failure. No closures or regular expressions per item where a cheap comparison does.
import { ManifestError, oneLine } from '../errors'
import { nameBytes, nameEncodingProblem } from './names'
import {
  COMPRESSIONS,
  CSUM_ALGORITHMS,
  type CsumAlgorithm,
  KNOWN_FEATURES,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  MANIFEST_VERSION_MAX,
  type Device,
  type Inode,
  type Manifest,
} from './types'

const KiB = 1024
const MiB = 1024 * KiB

/** Bounds on everything a manifest may hold. Sizes in bytes unless named otherwise. */
export const LIMITS = {
  /**
   * 2^24: a file server of 10,000,000 files with its directories fits (10,010,001 inodes in the scale
   * tree), and a mover's loader heap stays near 13 bytes per inode (docs/file-server-scale.md).
   */
  inodes: 16_777_216,
  /** Extents over all inodes together. */
  extents: 100_000_000,
  entriesPerDir: 10_000_000,
  devices: 1024,
  fingerprintsPerDevice: 4096,
  fingerprintBytes: 1 * MiB,
  features: 64,
  /** Other copies of one extent: btrfs RAID1C4 keeps four in all. */
  extentCopies: 3,
  /**
   * The kernel's own bounds (linux/limits.h): listxattr returns at most XATTR_LIST_MAX bytes of names
   * (each NUL-terminated), so no file has more; XATTR_NAME_MAX per name, XATTR_SIZE_MAX per value.
   */
  xattrListBytes: 64 * KiB,
  xattrNameBytes: 255,
  xattrValueBytes: 64 * KiB,
  inlineBytes: 64 * KiB,
  /** btrfs's BTRFS_MAX_COMPRESSED and BTRFS_MAX_UNCOMPRESSED: a compressed extent on disk, and decoded. */
  encodedBytes: 128 * KiB,
  decodedBytes: 128 * KiB,
  /** NAME_MAX */
  nameBytes: 255,
  /** PATH_MAX minus the NUL: the longest symlink target Linux stores. */
  symlinkBytes: 4095,
  /** Paths named in the header (config record, mountpoint, source paths, device hint). */
  pathBytes: 4096,
  sourcePaths: 100_000,
  /** Short free-form strings: host name, identity fields, fsType, createdAt. */
  shortString: 256,
} as const

const UINT32_MAX = 0xffff_ffff
const MAX_SAFE = Number.MAX_SAFE_INTEGER
const NSEC_PER_SEC = 1_000_000_000

const MANIFEST_KEYS = keySet('format', 'version', 'features', 'configId', 'createdAt', 'source',
  'frozenImage', 'configRecord', 'blockSize', 'dataChecksums', 'devices', 'root', 'inodes', 'signature')
const CHECKSUMS_KEYS = keySet('algorithm', 'sectorSize')
const COPY_KEYS = keySet('device', 'deviceOffset')
const SOURCE_KEYS = keySet('host', 'paths')
const FROZEN_KEYS = keySet('kind', 'mountpoint', 'fsType', 'fsUuid', 'mechanism', 'imageId', 'imagePath')
const SIGNATURE_KEYS = keySet('alg', 'value')
const DEVICE_KEYS = keySet('id', 'size', 'identity', 'fingerprints', 'hint')
const IDENTITY_KEYS = ['fsUuid', 'ptUuid', 'devUuid', 'wwn', 'serial'] as const
const IDENTITY_KEY_SET = keySet(...IDENTITY_KEYS)
const FINGERPRINT_KEYS = keySet('offset', 'length', 'sha256')
const INODE_KEYS = keySet('ino', 'kind', 'perm', 'uid', 'gid', 'nlink', 'size', 'blocks', 'atime',
  'mtime', 'ctime', 'rdev', 'attrs', 'xattrs', 'extents', 'inline', 'target', 'entries')
const EXTENT_KEYS = keySet('fileOffset', 'device', 'deviceOffset', 'length', 'copies', 'csums', 'compression', 'diskLength', 'decodedLength', 'decodedOffset')
const ENTRY_KEYS = keySet('name', 'ino')
const INODE_KINDS = keySet('file', 'dir', 'symlink', 'fifo', 'char', 'block', 'socket')
const FROZEN_KINDS = keySet('freeze', 'none', 'snapshot')
const SNAPSHOT_MECHANISMS = keySet('btrfs-snapshot', 'clone-set')
const IMAGE_ID = /^[0-9a-f]{32}$/
/** The namespaces Linux has xattr handlers for (btrfs.: `btrfs property`, e.g. btrfs.compression). */
const XATTR_PREFIXES = ['user.', 'trusted.', 'security.', 'system.', 'btrfs.'] as const

export const CONFIG_ID = /^[A-Za-z0-9_-]{8,128}$/
const DEVICE_ID = /^[A-Za-z0-9_.-]{1,64}$/
const SHA256_HEX = /^[0-9a-f]{64}$/
/** With the u flag a surrogate pair is one code point, so this matches only lone surrogates. */
const LONE_SURROGATE = /\p{Cs}/u

type Obj = Record<string, unknown>

/** Parse manifest JSON text and validate it. */
export function parseManifest(text: string): Manifest {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new ManifestError(`manifest is not valid JSON (truncated?): ${oneLine((err as Error).message)}`)
  }
  return validateManifest(value)
}

/** Check a parsed manifest against every rule of format version 1; returns it typed, unchanged. */
export function validateManifest(value: unknown): Manifest {
  if (!isObject(value)) bad('manifest', `must be a JSON object, got ${describe(value)}`)
  const facts = validateHeader(value)
  const inodes = checkInodeList(value.inodes, facts)
  checkTree(value.root, inodes.list, inodes.index, facts.byteNames)
  return value as unknown as Manifest
}

/** What the inode checks need from a validated header. */
export interface HeaderFacts {
  /** Each device's size in bytes, indexed like `devices`. */
  deviceSizes: number[]
  inlineAllowed: boolean
  /** Feature byte-names: names may carry bytes that are not UTF-8 (src/manifest/names.ts). */
  byteNames: boolean
  /** Feature data-checksums: what an extent's csums must measure up to; undefined: extents have none. */
  checksums?: CsumFacts
  /** Feature compressed-extents: extents may be compressed. */
  compressedAllowed: boolean
}

/** Bytes per checksum and per checksummed sector, from the header's `dataChecksums`. */
export interface CsumFacts {
  csumSize: number
  sectorSize: number
}

/**
 * Every top-level check but the inodes and the tree: shared by validateManifest and the streaming
 * loader (src/manifest/stream.ts), which passes the top-level fields without `inodes` (and without
 * `root` or `signature` when they come after the inodes in the file: see checkLateField).
 */
export function validateHeader(value: Obj, version = MANIFEST_VERSION): HeaderFacts {
  // Format, version and features first: a newer manifest must get the "upgrade" message, not a
  // complaint about some field this build does not know.
  checkFormatAndVersion(value, version)
  const features = checkFeatures(value.features)
  checkKnownKeys(value, MANIFEST_KEYS, 'manifest')
  checkHeader(value)
  const deviceSizes = checkDevices(value.devices)
  const checksums = checkDataChecksums(value.dataChecksums, features.has('data-checksums'))
  return {
    deviceSizes, inlineAllowed: features.has('inline-data'), checksums,
    byteNames: features.has('byte-names'), compressedAllowed: features.has('compressed-extents'),
  }
}

/** `dataChecksums`: present exactly when feature data-checksums is; a known algorithm and sector size. */
function checkDataChecksums(c: unknown, declared: boolean): CsumFacts | undefined {
  if (c === undefined) {
    if (declared) bad('manifest', 'declares feature "data-checksums" but has no dataChecksums')
    return undefined
  }
  if (!declared) bad('manifest', 'has dataChecksums but does not declare feature "data-checksums"')
  return checkChecksumsShape(c, 'dataChecksums')
}

/**
 * A `dataChecksums` object (the manifest's, or a delta's, which repeats it): a known algorithm and
 * sector size. `at` names it in messages: "dataChecksums", or "delta 2: dataChecksums".
 */
export function checkChecksumsShape(c: unknown, at: string): CsumFacts {
  if (!isObject(c)) bad(at, `must be an object {algorithm, sectorSize}, got ${describe(c)}`)
  checkKnownKeys(c, CHECKSUMS_KEYS, at)
  if (typeof c.algorithm !== 'string' || !Object.hasOwn(CSUM_ALGORITHMS, c.algorithm)) {
    bad(at, `algorithm must be one of ${Object.keys(CSUM_ALGORITHMS).join(', ')}; got ${describe(c.algorithm)}`)
  }
  const ss = c.sectorSize
  if (!isInt(ss, 512, 65536) || (ss & (ss - 1)) !== 0) bad(at, `sectorSize must be a power of two from 512 to 65536, got ${describe(ss)}`)
  return { csumSize: CSUM_ALGORITHMS[c.algorithm as CsumAlgorithm], sectorSize: ss }
}

/** A top-level field the streaming loader met after the inodes: the checks validateHeader makes of it. */
export function checkLateField(key: string, value: unknown): void {
  if (!MANIFEST_KEYS.has(key)) bad('manifest', `unknown field ${quote(key)}`)
  if (key === 'signature') checkSignatureShape(value)
  else if (key === 'root') checkRoot(value)
  // The streaming loader reads a manifest that declares the feature whole when this comes late.
  else if (key === 'dataChecksums') bad('manifest', 'has dataChecksums but does not declare feature "data-checksums"')
  else throw new Error(`checkLateField: ${key} is not checked late`)
}

/** The root field's own shape; that it names a directory is checked with the tree. */
export function checkRoot(root: unknown): asserts root is number {
  if (!isInt(root, 1, MAX_SAFE)) bad('manifest', `root must be a positive integer, got ${describe(root)}`)
}

// ---------------------------------------------------------------------------------------------
// Header

/** `version` is what the file's layout is (JSON: 1; binary: 2, docs/manifest-v2.md). */
function checkFormatAndVersion(m: Obj, version: number): void {
  if (m.format !== MANIFEST_FORMAT) {
    bad('manifest', `format is ${describe(m.format)}, expected "${MANIFEST_FORMAT}": not an extfs manifest`)
  }
  const v = m.version
  if (!isInt(v, 0, MAX_SAFE)) bad('manifest', `version must be a non-negative integer, got ${describe(v)}`)
  if (v === version) return
  if (v === 2 && version === 1) throw new ManifestError('manifest version 2 is binary (docs/manifest-v2.md), not JSON')
  const hint = v > MANIFEST_VERSION_MAX ? '; upgrade extfs' : ''
  throw new ManifestError(`unknown manifest version ${v}: this extfs reads versions 1 and ${MANIFEST_VERSION_MAX}${hint}`)
}

function checkFeatures(value: unknown): Set<string> {
  if (!Array.isArray(value)) bad('manifest', `features must be an array of strings, got ${describe(value)}`)
  if (value.length > LIMITS.features) bad('manifest', `${value.length} features, over the limit of ${LIMITS.features}`)
  const known: readonly string[] = KNOWN_FEATURES
  const seen = new Set<string>()
  for (const f of value) {
    if (typeof f !== 'string') bad('manifest', `features must be strings, got ${describe(f)}`)
    if (!known.includes(f)) {
      throw new ManifestError(`manifest uses feature ${quote(f)} that this extfs does not know ` +
        `(it knows: ${known.join(', ') || 'none'}); upgrade extfs`)
    }
    if (seen.has(f)) bad('manifest', `feature ${quote(f)} is listed twice`)
    seen.add(f)
  }
  return seen
}

function checkHeader(m: Obj): void {
  if (typeof m.configId !== 'string' || !CONFIG_ID.test(m.configId)) {
    bad('manifest', `configId ${describe(m.configId)} is invalid: expected 8 to 128 characters of A-Z a-z 0-9 _ -`)
  }
  checkRecordPath(m.configRecord)
  checkShortString(m.createdAt, 'manifest', 'createdAt')
  if (Number.isNaN(Date.parse(m.createdAt as string))) {
    bad('manifest', `createdAt ${describe(m.createdAt)} is not a date`)
  }
  checkSource(m.source)
  checkFrozenImage(m.frozenImage)
  const bs = m.blockSize
  if (!isInt(bs, 512, 65536) || (bs & (bs - 1)) !== 0) {
    bad('manifest', `blockSize must be a power of two from 512 to 65536, got ${describe(bs)}`)
  }
  if (m.signature !== undefined) checkSignatureShape(m.signature)
}

function checkSource(s: unknown): void {
  if (!isObject(s)) bad('manifest', `source must be an object {host, paths}, got ${describe(s)}`)
  checkKnownKeys(s, SOURCE_KEYS, 'source')
  checkShortString(s.host, 'source', 'host')
  if (!Array.isArray(s.paths)) bad('source', `paths must be an array of strings, got ${describe(s.paths)}`)
  if (s.paths.length > LIMITS.sourcePaths) {
    bad('source', `${s.paths.length} paths, over the limit of ${LIMITS.sourcePaths}`)
  }
  for (let i = 0; i < s.paths.length; i++) {
    const problem = pathProblem(s.paths[i])
    if (problem !== undefined) bad('source', `paths[${i}] ${problem}`)
  }
}

function checkFrozenImage(f: unknown): void {
  if (!isObject(f)) bad('manifest', `frozenImage must be an object, got ${describe(f)}`)
  checkKnownKeys(f, FROZEN_KEYS, 'frozenImage')
  if (typeof f.kind !== 'string' || !FROZEN_KINDS.has(f.kind)) {
    bad('frozenImage', `kind must be "freeze", "none" or "snapshot", got ${describe(f.kind)}`)
  }
  checkAbsolutePath(f.mountpoint, 'frozenImage', 'mountpoint')
  checkShortString(f.fsType, 'frozenImage', 'fsType')
  if (f.fsUuid !== undefined) checkShortString(f.fsUuid, 'frozenImage', 'fsUuid')
  if (f.kind !== 'snapshot') {
    // Only a snapshot has an image of its own for `release` to remove.
    for (const k of ['mechanism', 'imageId', 'imagePath']) {
      if (f[k] !== undefined) bad('frozenImage', `${k} is only allowed with kind "snapshot"`)
    }
    return
  }
  if (typeof f.mechanism !== 'string' || !SNAPSHOT_MECHANISMS.has(f.mechanism)) {
    bad('frozenImage', `mechanism must be "btrfs-snapshot" or "clone-set", got ${describe(f.mechanism)}`)
  }
  if (typeof f.imageId !== 'string' || !IMAGE_ID.test(f.imageId)) bad('frozenImage', `imageId must be 32 lowercase hex digits, got ${describe(f.imageId)}`)
  checkAbsolutePath(f.imagePath, 'frozenImage', 'imagePath')
}

export function checkSignatureShape(s: unknown): void {
  if (!isObject(s)) bad('manifest', `signature must be an object {alg, value}, got ${describe(s)}`)
  checkKnownKeys(s, SIGNATURE_KEYS, 'signature')
  if (s.alg !== 'hmac-sha256') bad('signature', `alg must be "hmac-sha256", got ${describe(s.alg)}`)
  if (typeof s.value !== 'string' || !SHA256_HEX.test(s.value)) {
    bad('signature', `value must be 64 lowercase hex digits, got ${describe(s.value)}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Devices

/** Returns each device's size in bytes, indexed like `devices` (extents refer to devices by index). */
function checkDevices(value: unknown): number[] {
  if (!Array.isArray(value)) bad('manifest', `devices must be an array, got ${describe(value)}`)
  if (value.length > LIMITS.devices) bad('manifest', `${value.length} devices, over the limit of ${LIMITS.devices}`)
  const ids = new Set<string>()
  const sizes: number[] = []
  for (let i = 0; i < value.length; i++) {
    const d = checkDevice(value[i], i)
    if (ids.has(d.id)) bad(`devices[${i}]`, `id ${quote(d.id)} is used by another device too`)
    ids.add(d.id)
    sizes.push(d.size)
  }
  return sizes
}

export function checkDevice(d: unknown, i: number): Device {
  const where = `devices[${i}]`
  if (!isObject(d)) bad(where, `must be an object, got ${describe(d)}`)
  checkKnownKeys(d, DEVICE_KEYS, where)
  if (typeof d.id !== 'string' || !DEVICE_ID.test(d.id)) {
    bad(where, `id ${describe(d.id)} is invalid: expected 1 to 64 characters of A-Z a-z 0-9 _ . -`)
  }
  if (!isInt(d.size, 1, MAX_SAFE)) bad(where, `size must be a positive integer (bytes), got ${describe(d.size)}`)
  if (!isObject(d.identity)) bad(where, `identity must be an object, got ${describe(d.identity)}`)
  checkKnownKeys(d.identity, IDENTITY_KEY_SET, `${where}.identity`)
  for (const k of IDENTITY_KEYS) {
    if (d.identity[k] !== undefined) checkShortString(d.identity[k], `${where}.identity`, k)
  }
  if (d.hint !== undefined) {
    const problem = pathProblem(d.hint)
    if (problem !== undefined) bad(where, `hint ${problem}`)
  }
  checkFingerprints(d.fingerprints, d.size, where)
  return d as unknown as Device
}

export function checkFingerprints(list: unknown, deviceSize: number, where: string): void {
  if (!Array.isArray(list)) bad(where, `fingerprints must be an array, got ${describe(list)}`)
  if (list.length > LIMITS.fingerprintsPerDevice) {
    bad(where, `${list.length} fingerprints, over the limit of ${LIMITS.fingerprintsPerDevice}`)
  }
  for (let j = 0; j < list.length; j++) {
    const f: unknown = list[j]
    const at = `${where}.fingerprints[${j}]`
    if (!isObject(f)) bad(at, `must be an object, got ${describe(f)}`)
    checkKnownKeys(f, FINGERPRINT_KEYS, at)
    if (!isInt(f.offset, 0, MAX_SAFE)) bad(at, `offset must be a non-negative integer, got ${describe(f.offset)}`)
    if (!isInt(f.length, 1, LIMITS.fingerprintBytes)) {
      bad(at, `length must be an integer from 1 to ${LIMITS.fingerprintBytes}, got ${describe(f.length)}`)
    }
    if (f.offset + f.length > deviceSize) {
      bad(at, `bytes ${f.offset}..${f.offset + f.length} run past device end (${deviceSize} bytes)`)
    }
    if (typeof f.sha256 !== 'string' || !SHA256_HEX.test(f.sha256)) {
      bad(at, `sha256 must be 64 lowercase hex digits, got ${describe(f.sha256)}`)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Inodes: each one on its own (fields, extents, xattrs). How they link up is walkInodeTree's job.

interface InodeTable {
  list: Inode[]
  index: InoIndex
}

/** Running totals across inodes, for the manifest-wide bounds. */
export interface Totals {
  extents: number
}

function checkInodeList(value: unknown, facts: HeaderFacts): InodeTable {
  if (!Array.isArray(value)) bad('manifest', `inodes must be an array, got ${describe(value)}`)
  if (value.length > LIMITS.inodes) bad('manifest', `${value.length} inodes, over the limit of ${LIMITS.inodes}`)
  const totals: Totals = { extents: 0 }
  let maxIno = 0
  for (let i = 0; i < value.length; i++) {
    const node = checkInode(value[i], i, facts, totals)
    if (node.ino > maxIno) maxIno = node.ino
  }
  const list = value as Inode[]
  return { list, index: indexInodes(list, maxIno) }
}

/**
 * ino → position in the inode list, or -1. Inode numbers are usually dense (renumbered, or a
 * filesystem's own), and then a flat table is several times faster and lighter than a Map; sparse
 * numbers (a hostile manifest may use anything up to 2^53) fall back to a Map.
 */
interface InoIndex {
  /** table[ino] = position + 1; 0 = no such inode. */
  table: Int32Array | undefined
  map: Map<number, number> | undefined
}

function indexInodes(list: Inode[], maxIno: number): InoIndex {
  const dense = maxIno <= 4 * list.length + 1024
  const index: InoIndex = dense
    ? { table: new Int32Array(maxIno + 1), map: undefined }
    : { table: undefined, map: new Map<number, number>() }
  for (let i = 0; i < list.length; i++) {
    const ino = list[i]!.ino
    if (lookupIno(index, ino) !== -1) bad(`inode ${ino}`, 'is listed twice')
    if (index.table !== undefined) index.table[ino] = i + 1
    else index.map!.set(ino, i)
  }
  return index
}

function lookupIno(index: InoIndex, ino: number): number {
  if (index.table !== undefined) return ino < index.table.length ? index.table[ino]! - 1 : -1
  return index.map!.get(ino) ?? -1
}

/** One inode on its own (`i` is its position in the list, for messages). Its entries are checkEntries' job. */
export function checkInode(n: unknown, i: number, facts: HeaderFacts, totals: Totals): Inode {
  if (!isObject(n)) bad(`inodes[${i}]`, `must be an object, got ${describe(n)}`)
  const ino = n.ino
  if (!isInt(ino, 1, MAX_SAFE)) bad(`inodes[${i}]`, `ino must be a positive integer, got ${describe(ino)}`)
  const unknown = unknownKey(n, INODE_KEYS)
  if (unknown !== undefined) bad(`inode ${ino}`, `unknown field ${quote(unknown)}`)
  const kind = n.kind
  if (typeof kind !== 'string' || !INODE_KINDS.has(kind)) {
    bad(`inode ${ino}`, `kind must be one of file, dir, symlink, fifo, char, block, socket; got ${describe(kind)}`)
  }
  checkAttributes(n, ino)
  checkKindFields(n, ino, kind)
  if (n.xattrs !== undefined) checkXattrs(n.xattrs, ino, facts.byteNames)
  if (n.extents !== undefined) totals.extents += checkExtents(n.extents, ino, n.size as number, facts.deviceSizes, facts.checksums, facts.compressedAllowed)
  if (totals.extents > LIMITS.extents) bad('manifest', `more than ${LIMITS.extents} extents in all`)
  if (n.inline !== undefined) checkInline(n, ino, facts.inlineAllowed)
  if (n.target !== undefined) checkTarget(n.target, ino, facts.byteNames)
  return n as unknown as Inode
}

/** The stat(2) fields every inode has. */
function checkAttributes(n: Obj, ino: number): void {
  if (!isInt(n.perm, 0, 0o7777)) bad(`inode ${ino}`, `perm must be an integer from 0 to 0o7777, got ${describe(n.perm)}`)
  if (!isInt(n.uid, 0, UINT32_MAX)) bad(`inode ${ino}`, `uid must be an integer from 0 to ${UINT32_MAX}, got ${describe(n.uid)}`)
  if (!isInt(n.gid, 0, UINT32_MAX)) bad(`inode ${ino}`, `gid must be an integer from 0 to ${UINT32_MAX}, got ${describe(n.gid)}`)
  if (!isInt(n.nlink, 1, UINT32_MAX)) bad(`inode ${ino}`, `nlink must be an integer from 1 to ${UINT32_MAX}, got ${describe(n.nlink)}`)
  if (!isInt(n.size, 0, MAX_SAFE)) bad(`inode ${ino}`, `size must be a non-negative integer, got ${describe(n.size)}`)
  if (!isInt(n.blocks, 0, MAX_SAFE)) bad(`inode ${ino}`, `blocks must be a non-negative integer, got ${describe(n.blocks)}`)
  checkTime(n.atime, ino, 'atime')
  checkTime(n.mtime, ino, 'mtime')
  checkTime(n.ctime, ino, 'ctime')
}

function checkTime(t: unknown, ino: number, field: string): void {
  if (!Array.isArray(t) || t.length !== 2 || !isInt(t[0], -MAX_SAFE, MAX_SAFE) || !isInt(t[1], 0, NSEC_PER_SEC - 1)) {
    bad(`inode ${ino}`, `${field} must be [seconds, nanoseconds] with 0 <= nanoseconds < 1e9, got ${describe(t)}`)
  }
}

/** Which optional fields each kind may (or must) carry. */
function checkKindFields(n: Obj, ino: number, kind: string): void {
  const isFile = kind === 'file'
  if (n.extents !== undefined && !isFile) bad(`inode ${ino}`, `a ${kind} cannot have extents (only regular files do)`)
  if (n.inline !== undefined && !isFile) bad(`inode ${ino}`, `a ${kind} cannot have inline data (only regular files do)`)
  if (n.entries !== undefined && kind !== 'dir') bad(`inode ${ino}`, `a ${kind} cannot have entries (only directories do)`)
  if (n.target !== undefined && kind !== 'symlink') bad(`inode ${ino}`, `a ${kind} cannot have a target (only symlinks do)`)
  if (n.rdev !== undefined && kind !== 'char' && kind !== 'block') {
    bad(`inode ${ino}`, `a ${kind} cannot have rdev (only char and block devices do)`)
  }
  if (n.rdev !== undefined && !isInt(n.rdev, 0, MAX_SAFE)) {
    bad(`inode ${ino}`, `rdev must be a non-negative integer, got ${describe(n.rdev)}`)
  }
  if (n.attrs !== undefined && !isFile && kind !== 'dir') bad(`inode ${ino}`, `a ${kind} cannot have attrs (only regular files and directories do)`)
  if (n.attrs !== undefined && !isInt(n.attrs, 1, UINT32_MAX)) bad(`inode ${ino}`, `attrs must be an integer from 1 to ${UINT32_MAX}, got ${describe(n.attrs)}`)
  if (kind === 'dir' && !Array.isArray(n.entries)) bad(`inode ${ino}`, `a dir needs an entries array, got ${describe(n.entries)}`)
  if (kind === 'symlink' && n.target === undefined) bad(`inode ${ino}`, 'a symlink needs a target')
  if (isFile && n.inline !== undefined && n.extents !== undefined) {
    bad(`inode ${ino}`, 'has both inline data and extents')
  }
}

function checkTarget(target: unknown, ino: number, byteNames: boolean): void {
  if (typeof target !== 'string' || target.length === 0) {
    bad(`inode ${ino}`, `symlink target must be a non-empty string, got ${describe(target)}`)
  }
  if (target.indexOf('\0') !== -1) bad(`inode ${ino}`, `symlink target ${quote(target)} contains NUL`)
  const problem = encodingProblem(target, byteNames)
  if (problem !== undefined) bad(`inode ${ino}`, `symlink target ${quote(target)} ${problem}`)
  const bytes = nameBytes(target)
  if (bytes > LIMITS.symlinkBytes) {
    bad(`inode ${ino}`, `symlink target is ${bytes} bytes, over the limit of ${LIMITS.symlinkBytes}`)
  }
}

export function checkInline(n: Obj, ino: number, inlineAllowed: boolean): void {
  if (!inlineAllowed) bad(`inode ${ino}`, 'has inline data but the manifest does not declare feature "inline-data"')
  const bytes = base64Length(n.inline, LIMITS.inlineBytes)
  if (bytes === TOO_LONG) bad(`inode ${ino}`, `inline data is over the limit of ${LIMITS.inlineBytes} bytes`)
  if (bytes < 0) bad(`inode ${ino}`, 'inline data is not valid base64')
  if (bytes !== n.size) bad(`inode ${ino}`, `inline data is ${bytes} bytes but size is ${n.size as number}`)
}

function checkXattrs(x: unknown, ino: number, byteNames: boolean): void {
  if (!isObject(x)) bad(`inode ${ino}`, `xattrs must be an object {name: base64 value}, got ${describe(x)}`)
  let listBytes = 0
  for (const name in x) {
    const problem = xattrNameProblem(name, byteNames)
    if (problem !== undefined) bad(`inode ${ino}`, `xattr name ${quote(name)} ${problem}`)
    listBytes += nameBytes(name) + 1
    if (listBytes > LIMITS.xattrListBytes) bad(`inode ${ino}`, `xattr names take over ${LIMITS.xattrListBytes} bytes, more than listxattr can return`)
    const bytes = base64Length(x[name], LIMITS.xattrValueBytes)
    if (bytes === TOO_LONG) bad(`inode ${ino}`, `xattr ${quote(name)} value is over the limit of ${LIMITS.xattrValueBytes} bytes`)
    if (bytes < 0) bad(`inode ${ino}`, `xattr ${quote(name)} value is not valid base64`)
  }
}

function xattrNameProblem(name: string, byteNames: boolean): string | undefined {
  const problem = encodingProblem(name, byteNames)
  if (problem !== undefined) return problem
  const bytes = nameBytes(name)
  if (bytes === 0) return 'is empty'
  if (bytes > LIMITS.xattrNameBytes) return `is ${bytes} bytes, over the limit of ${LIMITS.xattrNameBytes}`
  if (name.indexOf('\0') !== -1) return 'contains NUL'
  for (const prefix of XATTR_PREFIXES) {
    if (name.startsWith(prefix)) return name.length > prefix.length ? undefined : 'has nothing after its namespace'
  }
  return `must start with ${XATTR_PREFIXES.join(', ')}`
}

/**
 * Checks one file's extents; returns how many there are. Extents must lie inside their device, start
 * inside the file, and be sorted by fileOffset without overlapping. Only the last may run past EOF.
 * Compressed extents only when `compressedAllowed` (feature compressed-extents; a delta: always).
 */
export function checkExtents(list: unknown, ino: number, size: number, deviceSizes: number[], checksums?: CsumFacts, compressedAllowed = false): number {
  if (!Array.isArray(list)) bad(`inode ${ino}`, `extents must be an array, got ${describe(list)}`)
  if (list.length > LIMITS.extents) bad(`inode ${ino}`, `${list.length} extents, over the limit of ${LIMITS.extents}`)
  let prevStart = -1
  let prevEnd = 0
  for (let i = 0; i < list.length; i++) {
    const e: unknown = list[i]
    if (!isObject(e)) bad(`inode ${ino}`, `extents[${i}] must be an object, got ${describe(e)}`)
    const unknown = unknownKey(e, EXTENT_KEYS)
    if (unknown !== undefined) bad(`inode ${ino}`, `extents[${i}] has unknown field ${quote(unknown)}`)
    const { fileOffset, device, deviceOffset, length } = e
    if (!isInt(length, 1, MAX_SAFE)) bad(`inode ${ino}`, `extents[${i}].length must be a positive integer, got ${describe(length)}`)
    if (!isInt(fileOffset, 0, MAX_SAFE - length)) {
      bad(`inode ${ino}`, `extents[${i}].fileOffset must be a non-negative integer, got ${describe(fileOffset)}`)
    }
    if (fileOffset >= size) bad(`inode ${ino}`, `extents[${i}] starts at ${fileOffset}, at or past the file size ${size}`)
    if (!isInt(device, 0, deviceSizes.length - 1)) {
      bad(`inode ${ino}`, `extents[${i}].device ${describe(device)} does not exist (the manifest lists ${deviceSizes.length} devices)`)
    }
    if (!isInt(deviceOffset, 0, MAX_SAFE)) {
      bad(`inode ${ino}`, `extents[${i}].deviceOffset must be a non-negative integer, got ${describe(deviceOffset)}`)
    }
    const compressed = e.compression !== undefined || e.diskLength !== undefined || e.decodedLength !== undefined || e.decodedOffset !== undefined
    if (compressed) checkCompression(e, `inode ${ino}`, `extents[${i}]`, compressedAllowed)
    // What the extent takes on its device: a compressed one's encoded stream.
    const span = compressed ? e.diskLength as number : length
    const deviceSize = deviceSizes[device]!
    if (deviceOffset + span > deviceSize) {
      bad(`inode ${ino}`, `extents[${i}] past device end: bytes ${deviceOffset}..${deviceOffset + span} ` +
        `of device ${device}, which is ${deviceSize} bytes`)
    }
    if (e.copies !== undefined || e.csums !== undefined || compressed) checkCopiesAndCsums(e, `inode ${ino}`, `extents[${i}]`, span, deviceSizes, checksums)
    if (fileOffset < prevStart) {
      bad(`inode ${ino}`, `extents unsorted: extents[${i}] starts at ${fileOffset}, before extents[${i - 1}] at ${prevStart}`)
    }
    if (fileOffset < prevEnd) {
      bad(`inode ${ino}`, `extents overlapping: extents[${i - 1}] ends at ${prevEnd}, extents[${i}] starts at ${fileOffset}`)
    }
    prevStart = fileOffset
    prevEnd = fileOffset + length
  }
  return list.length
}

/**
 * A compressed extent's `compression`, `diskLength`, `decodedLength` and `decodedOffset`: all four, a
 * known algorithm, btrfs's bounds, and the file's bytes inside the decoded ones. `e` has passed the
 * extent checks of its length.
 */
function checkCompression(e: Obj, where: string, at: string, allowed: boolean): void {
  if (!allowed) bad(where, `${at} is compressed but the manifest does not declare feature "compressed-extents"`)
  if (typeof e.compression !== 'string' || !(COMPRESSIONS as readonly string[]).includes(e.compression)) {
    bad(where, `${at}.compression must be one of ${COMPRESSIONS.join(', ')}, got ${describe(e.compression)}`)
  }
  if (!isInt(e.diskLength, 1, LIMITS.encodedBytes)) bad(where, `${at}.diskLength must be an integer from 1 to ${LIMITS.encodedBytes}, got ${describe(e.diskLength)}`)
  if (!isInt(e.decodedLength, 1, LIMITS.decodedBytes)) bad(where, `${at}.decodedLength must be an integer from 1 to ${LIMITS.decodedBytes}, got ${describe(e.decodedLength)}`)
  if (!isInt(e.decodedOffset, 0, e.decodedLength - 1)) bad(where, `${at}.decodedOffset must be an integer from 0 to decodedLength - 1, got ${describe(e.decodedOffset)}`)
  const length = e.length as number
  if (e.decodedOffset + length > e.decodedLength) {
    bad(where, `${at}: its ${length} bytes from decodedOffset ${e.decodedOffset} run past decodedLength ${e.decodedLength}`)
  }
  if (e.csums === undefined) bad(where, `${at} is compressed but has no csums: what is decoded must be what btrfs checksummed`)
}

/**
 * An extent's `csums` (one checksum per sector of its `span` bytes on the device, which must be whole
 * sectors) and `copies` (other copies of those bytes, each inside its device; only with csums, which
 * choose between them). `e` has passed the extent checks.
 */
function checkCopiesAndCsums(e: Obj, where: string, at: string, span: number, deviceSizes: number[], checksums: CsumFacts | undefined): void {
  if (checksums === undefined) bad(where, `${at} has copies or csums but the manifest does not declare feature "data-checksums"`)
  if (e.csums === undefined) bad(where, `${at} has copies but no csums to choose between them`)
  if (span % checksums.sectorSize !== 0) bad(where, `${at} has csums but its ${e.diskLength === undefined ? 'length' : 'diskLength'} ${span} is not whole sectors of ${checksums.sectorSize} bytes`)
  const want = (span / checksums.sectorSize) * checksums.csumSize
  const got = base64Length(e.csums, want)
  if (got !== want) bad(where, `${at}.csums must be strict base64 of ${want} bytes (one checksum per sector), got ${got < 0 ? 'something else' : `${got} bytes`}`)
  if (e.copies === undefined) return
  const copies = e.copies
  if (!Array.isArray(copies) || copies.length < 1 || copies.length > LIMITS.extentCopies) {
    bad(where, `${at}.copies must be an array of 1 to ${LIMITS.extentCopies} copies, got ${describe(copies)}`)
  }
  copies.forEach((c: unknown, k) => {
    if (!isObject(c)) bad(where, `${at}.copies[${k}] must be an object {device, deviceOffset}, got ${describe(c)}`)
    checkKnownKeys(c, COPY_KEYS, `${where}: ${at}.copies[${k}]`)
    if (!isInt(c.device, 0, deviceSizes.length - 1)) {
      bad(where, `${at}.copies[${k}].device ${describe(c.device)} does not exist (the manifest lists ${deviceSizes.length} devices)`)
    }
    if (!isInt(c.deviceOffset, 0, MAX_SAFE)) bad(where, `${at}.copies[${k}].deviceOffset must be a non-negative integer, got ${describe(c.deviceOffset)}`)
    if (c.deviceOffset + span > deviceSizes[c.device]!) {
      bad(where, `${at}.copies[${k}] past device end: bytes ${c.deviceOffset}..${c.deviceOffset + span} of device ${c.device}, which is ${deviceSizes[c.device]} bytes`)
    }
  })
}

// ---------------------------------------------------------------------------------------------
// The tree: walk from the root, checking each directory's entries. Every directory must be reached
// exactly once (one parent, no cycles) and every inode at least once (no orphans); files may be
// reached many times (hard links).

/** The tree rules over inodes each checked on their own already (checkInode, checkEntries): a reader that collects them. */
export function checkInodeTree(root: unknown, inodes: Inode[], byteNames: boolean): void {
  const maxIno = inodes.reduce((m, n) => Math.max(m, n.ino), 0)
  checkTree(root, inodes, indexInodes(inodes, maxIno), byteNames)
}

/**
 * A whole manifest's tree: each directory's entries on their own first, in list order (as a streamed
 * manifest's are checked while it streams), then the walk every reader shares.
 */
function checkTree(root: unknown, inodes: Inode[], index: InoIndex, byteNames: boolean): void {
  checkRoot(root)
  for (const n of inodes) if (n.kind === 'dir') checkEntries(n.entries as unknown[], n.ino, byteNames)
  walkInodeTree({
    count: inodes.length,
    ino: (i) => inodes[i]!.ino,
    kind: (i) => inodes[i]!.kind,
    indexOf: (ino) => lookupIno(index, ino),
    entryCount: (i) => inodes[i]!.entries?.length ?? 0,
    entryIno: (i, k) => inodes[i]!.entries![k]!.ino,
    entryName: (i, k) => inodes[i]!.entries![k]!.name,
  }, root)
}

/**
 * The inodes of a manifest as the tree walk sees them, by position: whole manifests (objects) and
 * streamed ones (compact arrays, src/manifest/tree.ts) alike. Entries are checked on their own already.
 */
export interface InodeTree {
  readonly count: number
  ino(i: number): number
  kind(i: number): string
  /** Position of inode `ino`, or -1. */
  indexOf(ino: number): number
  entryCount(dir: number): number
  entryIno(dir: number, k: number): number
  entryName(dir: number, k: number): string
}

/**
 * The one walk of the inode tree (every reader of either version in TypeScript; the view's C loader
 * checks the same rules, native/view/load2_dirs.c): iterative and breadth-first from the root, each
 * inode reached once, each reached directory's entries in their order. `entry` sees every entry with
 * the position of the inode it names (-1: none) and whether that inode was reached before; returning
 * true stops the walk. Returns which inodes (by position) were reached. The checks are walkInodeTree's; a reader
 * of a tree that may be broken (paths.ts, for messages) walks with its own `entry`.
 */
export function breadthFirst(tree: InodeTree, rootPos: number, entry: (dir: number, k: number, child: number, seen: boolean) => boolean | void): Uint8Array {
  /** Positions in the order reached: each inode once. */
  const queue = new Uint32Array(tree.count)
  const reached = new Uint8Array(tree.count)
  queue[0] = rootPos
  reached[rootPos] = 1
  let count = 1
  for (let next = 0; next < count; next++) {
    const dir = queue[next]!
    if (tree.kind(dir) !== 'dir') continue
    const entries = tree.entryCount(dir)
    for (let k = 0; k < entries; k++) {
      const child = tree.indexOf(tree.entryIno(dir, k))
      const seen = child !== -1 && reached[child] === 1
      if (entry(dir, k, child, seen) === true) return reached
      if (child === -1 || seen) continue
      reached[child] = 1
      queue[count++] = child
    }
  }
  return reached
}

/**
 * The tree's rules over the walk: every directory reached exactly once (one parent, no cycles, no
 * entry back to the root), every entry naming an inode, every inode reached (no orphans); files may be
 * reached many times (hard links). Throws ManifestError on the first problem.
 */
export function walkInodeTree(tree: InodeTree, root: number): void {
  const rootPos = tree.indexOf(root)
  if (rootPos === -1) bad('manifest', `root inode ${root} is missing from the inode list`)
  if (tree.kind(rootPos) !== 'dir') bad('manifest', `root inode ${root} is a ${tree.kind(rootPos)}, not a dir`)
  /** Position of each directory's parent; -1 until reached (and for the root). */
  const parentOf = new Int32Array(tree.count).fill(-1)
  const reached = breadthFirst(tree, rootPos, (dir, k, child, seen) => {
    if (child === -1) bad(`inode ${tree.ino(dir)}`, `entry ${quote(tree.entryName(dir, k))} points at inode ${tree.entryIno(dir, k)}, which does not exist`)
    if (tree.kind(child) !== 'dir') return
    if (child === rootPos) bad(`inode ${tree.ino(dir)}`, `entry ${quote(tree.entryName(dir, k))} points back at the root directory (a cycle)`)
    if (seen) rejectSecondParent(tree, parentOf, child, dir, tree.entryName(dir, k))
    parentOf[child] = dir
  })
  const orphan = reached.indexOf(0)
  if (orphan !== -1) bad(`inode ${tree.ino(orphan)}`, 'is not reachable from the root (an orphan)')
}

function checkEntryCount(entries: unknown[], dirIno: number): void {
  if (entries.length > LIMITS.entriesPerDir) {
    bad(`inode ${dirIno}`, `${entries.length} entries, over the limit of ${LIMITS.entriesPerDir}`)
  }
}

/**
 * A directory's entries on their own (count, fields, names, no name twice). The streaming readers
 * check them as the directory streams by, checkTree before its walk; where they point (existing
 * inodes, a tree) is walkInodeTree's job.
 */
export function checkEntries(entries: unknown[], dirIno: number, byteNames: boolean): void {
  checkEntryCount(entries, dirIno)
  const names = entries.length > 1 ? new Set<string>() : undefined
  for (let i = 0; i < entries.length; i++) checkEntry(entries[i], dirIno, i, names, byteNames)
}

function checkEntry(e: unknown, dirIno: number, i: number, names: Set<string> | undefined, byteNames: boolean): { name: string; ino: number } {
  if (!isObject(e)) bad(`inode ${dirIno}`, `entries[${i}] must be an object {name, ino}, got ${describe(e)}`)
  const unknown = unknownKey(e, ENTRY_KEYS)
  if (unknown !== undefined) bad(`inode ${dirIno}`, `entries[${i}] has unknown field ${quote(unknown)}`)
  const name = e.name
  if (typeof name !== 'string') bad(`inode ${dirIno}`, `entries[${i}].name must be a string, got ${describe(name)}`)
  const problem = entryNameProblem(name, byteNames)
  if (problem !== undefined) bad(`inode ${dirIno}`, `entry ${quote(name)} ${problem}`)
  if (names !== undefined) {
    if (names.has(name)) bad(`inode ${dirIno}`, `entry ${quote(name)} appears twice`)
    names.add(name)
  }
  if (!isInt(e.ino, 1, MAX_SAFE)) bad(`inode ${dirIno}`, `entry ${quote(name)} has ino ${describe(e.ino)}, not a positive integer`)
  return e as { name: string; ino: number }
}

function entryNameProblem(name: string, byteNames: boolean): string | undefined {
  if (name.length === 0) return 'is empty'
  if (name === '.' || name === '..') return 'is reserved'
  if (name.indexOf('/') !== -1) return 'contains "/"'
  if (name.indexOf('\0') !== -1) return 'contains NUL'
  const problem = encodingProblem(name, byteNames)
  if (problem !== undefined) return problem
  // A UTF-16 code unit is at most 3 UTF-8 bytes (an escaped byte is one): short names need no byte count.
  if (name.length * 3 > LIMITS.nameBytes) {
    const bytes = nameBytes(name)
    if (bytes > LIMITS.nameBytes) return `is ${bytes} bytes, over the limit of ${LIMITS.nameBytes}`
  }
  return undefined
}

/**
 * A lone surrogate is a byte that is not UTF-8 (src/manifest/names.ts), allowed with feature byte-names
 * in its one canonical form; without the feature, a reader that predates it would serve it as U+FFFD.
 */
function encodingProblem(name: string, byteNames: boolean): string | undefined {
  if (!LONE_SURROGATE.test(name)) return undefined
  const problem = nameEncodingProblem(name)
  if (problem !== undefined) return problem
  return byteNames ? undefined : 'holds bytes that are not UTF-8 but the manifest does not declare feature "byte-names"'
}

/** A directory reached a second time: say whether it is its own ancestor (a cycle) or has two parents. */
function rejectSecondParent(tree: InodeTree, parentOf: Int32Array, child: number, from: number, name: string): never {
  const childIno = tree.ino(child)
  for (let up = from; up !== -1; up = parentOf[up]!) {
    if (up === child) bad(`inode ${tree.ino(from)}`, `entry ${quote(name)} points at directory ${childIno}, its own ancestor (a cycle)`)
  }
  const first = tree.ino(parentOf[child]!)
  if (parentOf[child] === from) bad(`inode ${first}`, `directory ${childIno} has two parents: it is entered twice here, the second time as ${quote(name)}`)
  bad(`inode ${childIno}`, `directory has two parents: inode ${first} and inode ${tree.ino(from)} (entry ${quote(name)})`)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Throws the one-line ManifestError `<where>: <what>`. */
export function bad(where: string, what: string): never {
  throw new ManifestError(`${where}: ${what}`, { where, what })
}

function keySet(...keys: string[]): ReadonlySet<string> {
  return new Set(keys)
}

export function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

export function isInt(v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
}

function unknownKey(o: Obj, known: ReadonlySet<string>): string | undefined {
  for (const k in o) if (!known.has(k)) return k
  return undefined
}

function checkKnownKeys(o: Obj, known: ReadonlySet<string>, where: string): void {
  const k = unknownKey(o, known)
  if (k !== undefined) bad(where, `unknown field ${quote(k)}`)
}

function checkShortString(v: unknown, where: string, field: string): asserts v is string {
  if (typeof v !== 'string' || v.length === 0 || v.length > LIMITS.shortString || v.indexOf('\0') !== -1) {
    bad(where, `${field} must be a string of 1 to ${LIMITS.shortString} characters without NUL, got ${describe(v)}`)
  }
}

function pathProblem(v: unknown): string | undefined {
  if (typeof v !== 'string' || v.length === 0) return `must be a non-empty string, got ${describe(v)}`
  if (v.indexOf('\0') !== -1) return `${quote(v)} contains NUL`
  if (utf8Length(v) > LIMITS.pathBytes) return `is over the limit of ${LIMITS.pathBytes} bytes`
  return undefined
}

/** The record is absolute, or a plain file name beside the manifest (shared storage may sit at other paths on the mover). */
function checkRecordPath(v: unknown): void {
  const problem = pathProblem(v)
  if (problem !== undefined) bad('manifest', `configRecord ${problem}`)
  const p = v as string
  if (!p.startsWith('/') && (p.includes('/') || p === '.' || p === '..')) {
    bad('manifest', `configRecord ${quote(p)} must be an absolute path or a file name beside the manifest`)
  }
}

function checkAbsolutePath(v: unknown, where: string, field: string): void {
  const problem = pathProblem(v)
  if (problem !== undefined) bad(where, `${field} ${problem}`)
  if (!(v as string).startsWith('/')) bad(where, `${field} ${quote(v as string)} is not an absolute path`)
}

function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8')
}

const TOO_LONG = -2

/**
 * Decoded length of strict base64 (standard alphabet, padded, canonical); -1 when `v` is not that,
 * TOO_LONG when it would decode to more than `max` bytes (checked before decoding anything).
 */
function base64Length(v: unknown, max: number): number {
  if (typeof v !== 'string' || v.length % 4 !== 0) return -1
  if (v.length > Math.ceil(max / 3) * 4) return TOO_LONG
  // Node's decoder skips junk; a round trip that gives back the same text proves the input was clean.
  const bytes = Buffer.from(v, 'base64')
  if (bytes.toString('base64') !== v) return -1
  return bytes.length > max ? TOO_LONG : bytes.length
}

/** A value for an error message: JSON, cut short. */
export function describe(v: unknown): string {
  if (v === undefined) return 'nothing'
  if (typeof v === 'string') return quote(v)
  let s: string
  try {
    s = JSON.stringify(v) ?? typeof v
  } catch {
    // Nested too deep for JSON.stringify (String() would recurse as deep): name the shape only.
    s = Array.isArray(v) ? 'a deeply nested array' : 'a deeply nested object'
  }
  return s.length > 80 ? `${s.slice(0, 80)}...` : s
}

/**
 * A string for an error message: JSON-quoted (so NUL and newlines show as escapes), a byte that is not
 * UTF-8 as \xNN (src/manifest/names.ts), cut short.
 */
export function quote(s: string): string {
  const json = s.length > 80 ? `${JSON.stringify(s.slice(0, 80))}...` : JSON.stringify(s)
  return json.replace(/(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])/g, '$1\\x$2') // not after an escaped backslash
}
