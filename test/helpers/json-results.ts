// The shapes of the `--json` results (docs/json.md), written out by hand as the test's own statement of
// the interface, and a checker: each result must have exactly these fields, of these types, and nothing
// else. The e2e tests check what the commands print with it, the unit test the docs' examples and tables.
import type { Test } from 'tap'
import { CONFIG_ID } from '../../src/manifest/validate'
import type { RunResult } from './exec'
import type { Loose } from './tamper'

/** A field's type: a named kind, a list of the values allowed, an object (a key ending in `?` is optional), or an array of one. */
export type Shape = Kind | readonly (string | number)[] | { [key: string]: Shape } | { arrayOf: Shape }
type Kind = 'string' | 'path' | 'configId' | 'count' | 'boolean' | 'counts' | 'strings' | 'viewEntry'

const KINDS: Record<Kind, (v: unknown) => boolean> = {
  string: (v) => typeof v === 'string',
  path: (v) => typeof v === 'string' && v.startsWith('/'),
  configId: (v) => typeof v === 'string' && CONFIG_ID.test(v),
  count: (v) => Number.isSafeInteger(v) && (v as number) >= 0,
  boolean: (v) => typeof v === 'boolean',
  /** An object of names to counts (inodes by kind). */
  counts: (v) => isObject(v) && Object.values(v).every((n) => Number.isSafeInteger(n) && (n as number) >= 0),
  /** An object of names to strings (a device's identity). */
  strings: (v) => isObject(v) && Object.values(v).every((s) => typeof s === 'string'),
  /** One of `extfs status`'s views: a view's own answer, or what status says of a view that gave none. */
  viewEntry: (v) => faults(v, isObject(v) && 'schema' in v ? SCHEMAS['extfs.view/1'] : SILENT_VIEW, 'view').length === 0,
}

const SILENT_VIEW: Shape = { mountpoint: 'path', state: ['dead', 'not-answering'], reason: 'string', 'pid?': 'count' }

const FROZEN_KINDS = ['freeze', 'snapshot', 'none'] as const
const MECHANISMS = ['btrfs-snapshot', 'clone-set'] as const

export const SCHEMAS: Record<string, { [key: string]: Shape }> = {
  'extfs.export/1': {
    schema: ['extfs.export/1'], manifest: 'path', record: 'path', configId: 'configId', format: [1, 2], mapper: ['bulk', 'vfs'],
    inodes: 'count', frozenImage: { kind: FROZEN_KINDS, mountpoint: 'path', fsType: 'string', 'mechanism?': MECHANISMS, 'imagePath?': 'path' },
    durationMs: 'count',
  },
  'extfs.remap/1': {
    schema: ['extfs.remap/1'], manifest: 'path', state: ['unchanged', 'remapped'], configId: 'configId', mapper: ['bulk', 'vfs'],
    'compared?': ['bytes', 'inodes'], manifestBytes: 'count', durationMs: 'count',
    'from?': 'configId', 'to?': 'configId', 'delta?': 'path', 'seq?': 'count', 'files?': 'count', 'newDevices?': 'count',
    'retiredDevices?': 'count', 'deltaBytes?': 'count',
  },
  'extfs.verify/1': {
    schema: ['extfs.verify/1'], manifest: 'path', configId: 'configId', manifestConfigId: 'configId', state: ['current'],
    devices: { arrayOf: { id: 'string', path: 'path' } },
  },
  'extfs.release/1': {
    schema: ['extfs.release/1'], manifest: 'path', 'configId?': 'configId', 'manifestConfigId?': 'configId', fromJournal: 'boolean',
    frozenImage: { kind: FROZEN_KINDS, mountpoint: 'path' }, 'thawed?': 'boolean', 'removed?': 'path',
  },
  'extfs.inspect/1': {
    schema: ['extfs.inspect/1'], manifest: 'path', configId: 'configId', format: [1, 2],
    frozenImage: {
      kind: FROZEN_KINDS, mountpoint: 'path', fsType: 'string', 'fsUuid?': 'string', 'mechanism?': MECHANISMS, 'imageId?': 'string', 'imagePath?': 'path',
    },
    createdAt: 'string', host: 'string', signed: 'boolean', inodes: 'counts', bytes: 'count', extents: 'count', extentBytes: 'count',
    inlineFiles: 'count', devices: { arrayOf: { id: 'string', size: 'count', 'hint?': 'string', identity: 'strings', fingerprints: 'count' } },
    largeAcls: { arrayOf: 'path' },
  },
  'extfs.shards/1': {
    schema: ['extfs.shards/1'], manifest: 'path', configId: 'configId', count: 'count', files: 'count', bytes: 'count', meanBytes: 'count',
    largest: 'count', balanced: 'boolean', shards: { arrayOf: { shard: 'count', files: 'count', bytes: 'count', inodes: 'count', largestFile: 'count' } },
  },
  'extfs.status/1': { schema: ['extfs.status/1'], healthy: 'boolean', views: { arrayOf: 'viewEntry' } },
  'extfs.view/1': {
    schema: ['extfs.view/1'], pid: 'count', mountpoint: 'path', source: 'string', engine: ['native', 'fuse-native'], startedAt: 'string',
    configId: 'configId', position: { configId: 'configId', seq: 'count' }, 'shard?': { index: 'count', count: 'count' }, state: ['serving', 'released', 'not-current', 'unknown', 'lease-expired'],
    'reason?': 'string', 'lease?': { leftMs: 'count', 'lastAnswerMsAgo?': 'count', 'unreachableMs?': 'count' },
    'image?': { files: 'count', bytes: 'count' },
    'served?': { opens: 'count', filesOpened: 'count', reads: 'count', readBytes: 'count', pushedBytes: 'count', prefetchedFiles: 'count', prefetchedBytes: 'count' },
    refused: 'count', failedReads: { requests: 'count', files: 'count' }, tainted: 'count', 'prefetch?': { window: 'count', pending: 'count' },
  },
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** What is wrong with `value` at `at` for `shape`: one line per fault, none when it fits. */
function faults(value: unknown, shape: Shape, at: string): string[] {
  if (typeof shape === 'string') return KINDS[shape](value) ? [] : [`${at}: ${JSON.stringify(value)} is not a ${shape}`]
  if (Array.isArray(shape)) return shape.includes(value as string | number) ? [] : [`${at}: ${JSON.stringify(value)} is not one of ${shape.join(', ')}`]
  if ('arrayOf' in shape) {
    if (!Array.isArray(value)) return [`${at}: not an array`]
    return value.flatMap((v, i) => faults(v, shape.arrayOf as Shape, `${at}[${i}]`))
  }
  if (!isObject(value)) return [`${at}: not an object`]
  const out: string[] = []
  const keys = new Set<string>()
  for (const [spec, inner] of Object.entries(shape)) {
    const key = spec.replace(/\?$/, '')
    keys.add(key)
    if (value[key] === undefined) {
      if (!spec.endsWith('?')) out.push(`${at}.${key}: missing`)
    } else {
      out.push(...faults(value[key], inner, `${at}.${key}`))
    }
  }
  for (const key of Object.keys(value)) if (!keys.has(key)) out.push(`${at}.${key}: not in the schema`)
  return out
}

/** What is wrong with a result object for its own `schema`. */
export function resultFaults(value: unknown): string[] {
  const name = isObject(value) ? value.schema : undefined
  if (typeof name !== 'string' || !SCHEMAS[name]) return [`schema ${JSON.stringify(name)} is not known`]
  return faults(value, SCHEMAS[name], name)
}

/** Every field's name as docs/json.md's tables write it: `frozenImage.kind`, `devices[].id`. */
export function fieldNames(shape: Shape, prefix = ''): string[] {
  if (typeof shape === 'string' || Array.isArray(shape)) return []
  if ('arrayOf' in shape) return fieldNames(shape.arrayOf as Shape, `${prefix}[]`)
  return Object.entries(shape).flatMap(([spec, inner]) => {
    const name = `${prefix}${prefix ? '.' : ''}${spec.replace(/\?$/, '')}`
    return [name, ...fieldNames(inner, name)]
  })
}

/**
 * A command's `--json` result: it exited 0, printed nothing on stdout but one line of JSON ending in a
 * newline, and the object fits `schema`. Asserted on `t`; returns the object.
 */
export function jsonResult(t: Test, r: RunResult, schema: string, what: string): Loose {
  t.equal(r.code, 0, `${what} --json: ${r.stderr}`)
  t.match(r.stdout, /^[^\n]+\n$/, `${what} --json: stdout is one line`)
  let value: unknown
  try {
    value = JSON.parse(r.stdout)
  } catch (err) {
    t.fail(`${what} --json: stdout is not JSON (${(err as Error).message}): ${r.stdout}`)
    return {}
  }
  t.same(resultFaults(value), [], `${what} --json fits ${schema}`)
  t.equal((value as Loose).schema, schema)
  return value
}
