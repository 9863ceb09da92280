// An image `extfs serve` can serve without a filesystem behind it: the minimal v1 fixture signed with a
// test key, its record, and a remapper that writes real delta files and records as `extfs remap`
// does without relocating anything (the real remap is tested on real relocations in e2e/remap).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { readRecord, writeRecord } from '../../src/configid/record'
import { signManifest } from '../../src/manifest/sign'
import { ConfigServer } from '../../src/service/server'
import type { Remapper } from '../../src/service/remap-worker'
import type { ServeMetrics } from '../../src/service/metrics'
import { ServeState } from '../../src/service/state'
import { ConfigClient } from '../../src/service/client'
import type { RemapResult } from '../../src/remap/remap'

export const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
const FIXTURE = path.join(__dirname, '..', 'fixtures', 'manifest-v1-minimal.json')

/** A fresh directory with `nightly.json` (signed with KEY) and its current record. */
export function signedImage(prefix: string): { dir: string; manifest: string; configId: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const manifest = path.join(dir, 'nightly.json')
  const m = JSON.parse(fs.readFileSync(FIXTURE, 'utf8'))
  m.configRecord = 'nightly.json.config-id'
  fs.writeFileSync(manifest, JSON.stringify(signManifest(m, KEY)))
  writeRecord(`${manifest}.config-id`, m.configId, 'current')
  return { dir, manifest, configId: m.configId }
}

/**
 * A ConfigServer in this process on 127.0.0.1 serving a fresh signedImage (`nightly`), or two images
 * (`weekly` too, a copy sharing its record), with `remapper`; a client for `nightly`. Its log lines are
 * kept in `lines`; its metrics go to `opts.metrics` when given. Everything goes at `t`'s teardown.
 */
export async function serveFakeImage(t: { teardown(fn: () => unknown): void }, remapper: Remapper, intervalMs = 0, opts: { twoImages?: boolean; metrics?: ServeMetrics } = {}) {
  const { dir, manifest } = signedImage('extfs-serve-unit-')
  const manifests = [manifest]
  if (opts.twoImages) {
    manifests.push(path.join(dir, 'weekly.json'))
    fs.copyFileSync(manifest, manifests[1]!)
  }
  const state = new ServeState(path.join(dir, 'serve.db'))
  const lines: string[] = []
  const log = pino({ level: 'debug' }, { write: (l: string) => lines.push(l) })
  const server = new ConfigServer({ manifests, key: KEY, state, log, remapper, intervalMs, leaseMs: 5000, metrics: opts.metrics })
  const addr = await server.listen('127.0.0.1', 0)
  const url = `http://127.0.0.1:${addr.port}/nightly`
  const client = new ConfigClient(url, KEY)
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    client.close()
    await server.close()
    state.close()
  }
  t.teardown(async () => {
    await close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir, manifest, url, client, lines, close, state }
}

/** Writes delta seq+1 (from the record's config ID to `nextId`) and the record, as remap does. */
export function fakeRemapper(nextIds: string[], opts: { brokenFrom?: boolean } = {}): Remapper & { calls: number } {
  const r = {
    calls: 0,
    remap(manifestPath: string): RemapResult {
      r.calls++
      const recordFile = `${manifestPath}.config-id`
      const rec = readRecord(recordFile)
      const to = nextIds.shift()
      if (to === undefined) return { state: 'unchanged', configId: rec.configId, manifestBytes: 1 }
      const seq = (rec.deltas?.length ?? 0) + 1
      const delta = { format: 'extfs-delta', version: 1, image: 'minimal-0001', seq, from: opts.brokenFrom ? 'somewhere-else' : rec.configId, to, devices: [], files: [] }
      const name = `${path.basename(manifestPath)}.delta-${seq}`
      fs.writeFileSync(path.join(path.dirname(manifestPath), name), JSON.stringify(delta))
      writeRecord(recordFile, to, 'current', { deltas: [...(rec.deltas ?? []), name] })
      return { state: 'remapped', configId: to, deltaBytes: 10, manifestBytes: 1 }
    },
  }
  return r
}

/** One call of slowRemapper: which manifest, when it started and how long it ran (performance.now() ms). */
export interface TimedCall {
  manifest: string
  start: number
  ms: number
}

/**
 * Takes `ms` of CPU per call (a busy loop: a real remap blocks serve's thread the same way) and finds
 * nothing moved.
 */
export function slowRemapper(ms: number): Remapper & { calls: TimedCall[] } {
  const r = {
    calls: [] as TimedCall[],
    remap(manifestPath: string): RemapResult {
      const start = performance.now()
      while (performance.now() - start < ms) { /* busy */ }
      r.calls.push({ manifest: path.basename(manifestPath), start, ms: performance.now() - start })
      return { state: 'unchanged', configId: 'minimal-0001', manifestBytes: 1 }
    },
  }
  return r
}
