// Structure-aware mutation of valid seeds, as fast-check arbitraries: an input is a seed from the
// corpus, a few edits of its JSON value (replace a value by a boundary or hostile one, change a
// number by one or by 2^32, delete, duplicate, move or rename, graft one part onto another), a
// layout (compact, pretty, the writers' one item per line, keys reversed, CRLF) and, sometimes,
// edits of the text or its UTF-8 bytes (insert a delimiter, cut, repeat, a lone byte of a multibyte
// character). fast-check shrinks a failure to the fewest and smallest edits that still fail.
import fc from 'fast-check'

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** One edit of a JSON value: the `node`-th node of a walk (modulo their number), operation `op`, operands `a`, `b`. */
export interface Edit {
  node: number
  op: number
  a: number
  b: number
}

/** One edit of the bytes: at `pos` (modulo the length), operation `op`, operand `a`. */
export interface ByteEdit {
  pos: number
  op: number
  a: number
}

const LONG = 'x'.repeat(300)
/** Values that sit on or past the bounds a validator checks, and shapes it does not expect. */
export const INTERESTING: readonly Json[] = [
  0, 1, -1, 2, 7, 255, 256, 511, 512, 4095, 4096, 4097, 65535, 65536, 0o7777, 0o10000, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32,
  2 ** 53 - 1, 2 ** 53, -(2 ** 53), 1e9 - 1, 1e9, 1.5, 0.1, -0.5, 1e21, 1e308, -1e308,
  '', ' ', 'a', '\u0000', 'a\u0000b', '/', '/a', '.', '..', 'a/b', '\ud800', 'a\udc00', '\u{1f600}', 'é', '\u2028', '\ufeff', '\n', '"', '\\',
  LONG, 'A', 'AA==', 'AAA=', 'A===', 'YQ==', 'YR==', 'AAAAAAAA', '////', 'ab=c',
  'file', 'dir', 'symlink', 'fifo', 'char', 'block', 'socket', 'freeze', 'snapshot', 'none', 'btrfs-snapshot', 'clone-set',
  'extfs-manifest', 'extfs-delta', 'extfs-config-record', 'hmac-sha256', 'inline-data', 'data-checksums', 'crc32c', 'xxhash64',
  'user.a', 'user.', 'system.posix_acl_access', 'trusted.x', 'btrfs.compression', 'cfg-0001-abcdef', 'current', 'released',
  'unchanged', 'remapped', '0123456789abcdef0123456789abcdef', '2024-05-01T12:00:00.000Z', 'not a date', '__proto__',
  null, true, false, [], {}, [0], [0, 0], [1, 2], [-1, 0], [0, 1e9], { a: 1 }, JSON.parse('{"__proto__":1}') as Json,
]

/** Key names to add or rename to: the fields of every format here, and a few that are nothing. */
export const KEYS: readonly string[] = [
  'x', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '',
  'format', 'version', 'features', 'configId', 'createdAt', 'source', 'frozenImage', 'configRecord', 'blockSize', 'dataChecksums',
  'devices', 'root', 'inodes', 'signature', 'ino', 'kind', 'perm', 'uid', 'gid', 'nlink', 'size', 'blocks', 'atime', 'mtime', 'ctime',
  'rdev', 'attrs', 'xattrs', 'extents', 'inline', 'target', 'entries', 'name', 'fileOffset', 'device', 'deviceOffset', 'length',
  'copies', 'csums', 'id', 'identity', 'fingerprints', 'hint', 'offset', 'sha256', 'image', 'seq', 'from', 'to', 'reason',
  'files', 'proofs', 'retired', 'state', 'updatedAt', 'deltas', 'mapping', 'leaseMs', 'heldMs', 'deltaBytes', 'manifestBytes',
  'mechanism', 'imageId', 'imagePath', 'mountpoint', 'fsType', 'fsUuid', 'algorithm', 'sectorSize', 'alg', 'value', 'host', 'paths',
]

export const editArb: fc.Arbitrary<Edit> = fc.record({ node: fc.nat(), op: fc.nat({ max: 11 }), a: fc.nat(), b: fc.nat() })
export const byteEditArb: fc.Arbitrary<ByteEdit> = fc.record({ pos: fc.nat(), op: fc.nat({ max: 5 }), a: fc.nat() })

interface Slot {
  /** The container holding the node, and where; undefined for the root. */
  parent?: Json[] | { [key: string]: Json }
  key?: string | number
  value: Json
}

function walk(root: Json): Slot[] {
  const out: Slot[] = [{ value: root }]
  for (let i = 0; i < out.length; i++) {
    const v = out[i]!.value
    if (Array.isArray(v)) v.forEach((x, k) => out.push({ parent: v, key: k, value: x }))
    else if (v !== null && typeof v === 'object') for (const k of Object.keys(v)) out.push({ parent: v, key: k, value: v[k]! })
  }
  return out
}

/** An own property, even for "__proto__", as JSON.parse makes it. */
function setKey(o: { [key: string]: Json }, k: string, v: Json): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true })
}

function clone(v: Json): Json {
  return JSON.parse(JSON.stringify(v)) as Json
}

function put(s: Slot, v: Json, root: { value: Json }): void {
  if (s.parent === undefined) root.value = v
  else if (Array.isArray(s.parent)) s.parent[s.key as number] = v
  else setKey(s.parent, s.key as string, v)
}

function tweakNumber(n: number, a: number): number {
  const deltas = [1, -1, 2 ** 32, -(2 ** 32), n, -2 * n, 4096, -4096, 0.5, 2 ** 53 - n]
  return n + deltas[a % deltas.length]!
}

function tweakString(s: string, a: number, b: number): string {
  const chars = ['\u0000', '/', '.', 'é', '\u{1f600}', '\ud800', '=', 'A', ' ', '-', 'Z', '"', '\\', '\n']
  const at = s.length === 0 ? 0 : b % (s.length + 1)
  switch (a % 5) {
    case 0: return s.slice(0, at) + chars[b % chars.length]! + s.slice(at)
    case 1: return s.slice(0, at) + s.slice(at + 1)
    case 2: return s.slice(0, at)
    case 3: return s + s
    default: return s.toUpperCase() === s ? s.toLowerCase() : s.toUpperCase()
  }
}

/** `edits` applied in order to a copy of `value`. */
export function applyEdits(value: Json, edits: readonly Edit[]): Json {
  const root = { value: clone(value) }
  for (const e of edits) {
    const slots = walk(root.value)
    const s = slots[e.node % slots.length]!
    const v = s.value
    const other = slots[e.a % slots.length]!.value
    switch (e.op) {
      case 0: case 1: // the commonest: a boundary or hostile value
        put(s, clone(INTERESTING[e.a % INTERESTING.length]!), root)
        break
      case 2: // off by one, by 2^32, negated ...; strings edited
        if (typeof v === 'number') put(s, tweakNumber(v, e.a), root)
        else if (typeof v === 'string') put(s, tweakString(v, e.a, e.b), root)
        else put(s, clone(INTERESTING[e.b % INTERESTING.length]!), root)
        break
      case 3: // delete
        if (Array.isArray(s.parent)) s.parent.splice(s.key as number, 1)
        else if (s.parent !== undefined) delete s.parent[s.key as string]
        break
      case 4: // duplicate: an array element twice, an object member under another name
        if (Array.isArray(s.parent)) s.parent.splice(s.key as number, 0, clone(v))
        else if (s.parent !== undefined) setKey(s.parent, KEYS[e.a % KEYS.length]!, clone(v))
        break
      case 5: // move: array elements swapped; an object member renamed
        if (Array.isArray(s.parent)) {
          const j = e.a % s.parent.length
          const t = s.parent[j]!
          s.parent[j] = v
          s.parent[s.key as number] = t
        } else if (s.parent !== undefined) {
          delete s.parent[s.key as string]
          setKey(s.parent, KEYS[e.a % KEYS.length]!, v)
        }
        break
      case 6: // graft another node of the same value here (an extent into another file, an inode into entries ...)
        put(s, clone(other), root)
        break
      case 7: // add a member or an element
        if (Array.isArray(v)) v.splice(e.b % (v.length + 1), 0, clone(v.length > 0 && e.a % 2 === 0 ? v[e.b % v.length]! : INTERESTING[e.a % INTERESTING.length]!))
        else if (v !== null && typeof v === 'object') setKey(v, KEYS[e.a % KEYS.length]!, clone(INTERESTING[e.b % INTERESTING.length]!))
        else put(s, clone(INTERESTING[e.b % INTERESTING.length]!), root)
        break
      case 8: // the same value, another type
        put(s, typeof v === 'number' ? String(v) : typeof v === 'string' && v !== '' && !Number.isNaN(Number(v)) ? Number(v) : Array.isArray(v) ? { ...v } as Json : v === null ? 0 : [v], root)
        break
      case 9: // a number next to the one of another node (equal, one past), for the checks that compare two fields
        if (typeof other === 'number') put(s, other + (e.b % 3) - 1, root)
        break
      case 10: // an array emptied, truncated or many times longer
        if (Array.isArray(v)) {
          if (e.a % 3 === 0) v.length = 0
          else if (e.a % 3 === 1) v.length = Math.floor(v.length / 2)
          else if (v.length > 0 && v.length < 64) for (let k = 0; k < 1 + (e.b % 8); k++) v.push(clone(v[k % v.length]!))
        }
        break
      default: // nested: the value wrapped, or a container replaced by one of its members
        if (v !== null && typeof v === 'object') {
          const inner = Array.isArray(v) ? v[e.a % Math.max(1, v.length)] : Object.values(v)[e.a % Math.max(1, Object.keys(v).length)]
          if (inner !== undefined) put(s, inner, root)
        } else put(s, e.a % 2 === 0 ? [v] : { [KEYS[e.b % KEYS.length]!]: v }, root)
    }
  }
  return root.value
}

/** Ways to write a JSON value as text. Every reader must read them alike. */
export const LAYOUTS = 6

/** `value` as text in layout `layout`. `lists`: the arrays written one element per line (the writers' layout). */
export function layout(value: Json, layoutNo: number, lists: readonly string[] = ['devices', 'inodes', 'files', 'proofs']): string {
  switch (layoutNo % LAYOUTS) {
    case 0: return JSON.stringify(value)
    case 1: return JSON.stringify(value, null, 2)
    case 2: { // the writers': one top-level field per line, the long lists one element per line
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return JSON.stringify(value)
      const fields = Object.entries(value).map(([k, v]) =>
        lists.includes(k) && Array.isArray(v) && v.length > 0
          ? `${JSON.stringify(k)}:[\n${v.map((x) => JSON.stringify(x)).join(',\n')}\n]`
          : `${JSON.stringify(k)}:${JSON.stringify(v)}`)
      return `{\n${fields.join(',\n')}\n}\n`
    }
    case 3: return JSON.stringify(reverseKeys(value))
    case 4: return JSON.stringify(value, null, '\t').replace(/\n/g, '\r\n')
    default: return layout(value, 2, lists).replace(/\n/g, ' \n\t ')
  }
}

function reverseKeys(v: Json): Json {
  if (Array.isArray(v)) return v.map(reverseKeys)
  if (v !== null && typeof v === 'object') {
    const out: { [key: string]: Json } = {}
    for (const k of Object.keys(v).reverse()) setKey(out, k, reverseKeys(v[k]!))
    return out
  }
  return v
}

const INSERTS = ['"', '\\', ',', ':', '{', '}', '[', ']', '\n', ' ', '0', '-', 'e', 'null', '\u2028', '\ufeff', '"__proto__":1,', ',"x":1', '//']
const BYTES = [0xff, 0xc3, 0xe2, 0x82, 0xf0, 0x9f, 0x00, 0xed, 0xa0, 0x80]

/** `edits` applied in order to a copy of `bytes`. */
export function applyByteEdits(bytes: Buffer, edits: readonly ByteEdit[]): Buffer {
  let b = Buffer.from(bytes)
  for (const e of edits) {
    const at = b.length === 0 ? 0 : e.pos % (b.length + 1)
    switch (e.op) {
      case 0: b = Buffer.concat([b.subarray(0, at), Buffer.from(INSERTS[e.a % INSERTS.length]!), b.subarray(at)]); break
      case 1: b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + (e.a % 8))]); break
      case 2: b = b.subarray(0, at); break // truncated
      case 3: b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + 1 + (e.a % 64)), b.subarray(at)]); break // repeated
      case 4: b = Buffer.concat([b.subarray(0, at), Buffer.from([BYTES[e.a % BYTES.length]!]), b.subarray(at)]); break // not UTF-8, or half of it
      default: if (at < b.length) b[at] = e.a % 256
    }
  }
  return b
}

/** A seed of the corpus: its bytes and, when they are JSON, its value. */
export interface Seed {
  name: string
  bytes: Buffer
  value?: Json
}

export function seedOf(name: string, bytes: Buffer): Seed {
  try {
    return { name, bytes, value: JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as Json }
  } catch {
    return { name, bytes }
  }
}

/**
 * Inputs made from `seeds`: a seed as it is (sometimes), or its value edited, passed through `finish`
 * (given a number to choose by: to sign it, say), laid out and, one time in five, its bytes edited.
 * `lists`: the arrays the writers' layout puts one element per line.
 */
export function mutatedSeeds(seeds: readonly Seed[], lists?: readonly string[], finish?: (v: Json, n: number) => Json): fc.Arbitrary<Buffer> {
  if (seeds.length === 0) throw new Error('no seeds')
  return fc.record({
    seed: fc.nat({ max: seeds.length - 1 }),
    edits: fc.array(editArb, { maxLength: 6 }),
    layout: fc.nat({ max: LAYOUTS - 1 }),
    finish: fc.nat(),
    bytes: fc.oneof({ weight: 4, arbitrary: fc.constant([] as ByteEdit[]) }, { weight: 1, arbitrary: fc.array(byteEditArb, { minLength: 1, maxLength: 3 }) }),
  }).map(({ seed, edits, layout: l, finish: n, bytes }) => {
    const s = seeds[seed]!
    let base = s.bytes
    if (s.value !== undefined && (edits.length > 0 || l !== 0 || finish)) {
      const v = applyEdits(s.value, edits)
      base = Buffer.from(layout(finish ? finish(v, n) : v, l, lists))
    }
    return applyByteEdits(base, bytes)
  })
}
