// An image `extfs serve` can serve without a filesystem behind it: the minimal v1 fixture signed with a
// test key, its record, and a remapper that writes real delta files and records as `extfs remap`
// does without relocating anything (the real remap is tested on real relocations in e2e/remap).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { readRecord, writeRecord } from '../../src/configid/record'
import { signManifest } from '../../src/manifest/sign'
import type { Remapper } from '../../src/serve/server'
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

export /** Writes delta seq+1 (from the record's config ID to `nextId`) and the record, as remap does. */
function fakeRemapper(nextIds: string[], opts: { brokenFrom?: boolean } = {}): Remapper & { calls: number } {
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
