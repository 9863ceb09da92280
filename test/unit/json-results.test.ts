// The `--json` schemas (docs/json.md) against the test's own statement of them (test/helpers/json-results.ts):
// the docs' tables list exactly the fields, their examples fit, and the sentence printed without
// --json, built from the example, is the one the docs show. The e2e tests check real commands' output.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { fieldNames, resultFaults, SCHEMAS } from '../helpers/json-results'
import {
  exportResult, exportSentence, releaseResult, releaseSentence, remapResult, remapSentence, verifySentence, type ExportJson, type InspectJson,
  type ReleaseJson, type RemapJson, type VerifyJson,
} from '../../src/cli/results'
import { formatSummary } from '../../src/cli/inspect'
import { shardsSentence, type ShardsJson } from '../../src/cli/inspect-shards'
import type { Loose } from '../helpers/tamper'

const DOC = fs.readFileSync(path.join(__dirname, '..', '..', 'docs', 'json.md'), 'utf8')

/** The sentence (or lines) each command prints without --json, from its result. */
const SENTENCES: Record<string, (r: Loose) => string> = {
  'extfs.export/1': (r: ExportJson) => exportSentence(r),
  'extfs.remap/1': (r: RemapJson) => remapSentence(r),
  'extfs.verify/1': (r: VerifyJson) => verifySentence(r),
  'extfs.release/1': (r: ReleaseJson) => releaseSentence(r),
  'extfs.inspect/1': (r: InspectJson) => formatSummary(r),
  'extfs.shards/1': (r: ShardsJson) => shardsSentence(r),
}

/** Each `## ... : \`extfs.x/N\`` section of docs/json.md: its table's field names, its JSON example, its text. */
function docSections(): Map<string, { fields: string[]; example?: string; text?: string }> {
  const out = new Map<string, { fields: string[]; example?: string; text?: string }>()
  for (const section of DOC.split(/^## /m).slice(1)) {
    const name = /^[^\n]*`(extfs\.[a-z]+\/\d+)`\n/.exec(section)?.[1]
    if (!name) continue
    const fields = [...section.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1])
    out.set(name, { fields, example: /```json\n(.*)\n```/.exec(section)?.[1], text: /```text\n([\s\S]*?)\n```/.exec(section)?.[1] })
  }
  return out
}

t.test('docs/json.md documents every schema: all fields in its table, an example that fits, the sentence made from it', async (t) => {
  const sections = docSections()
  t.same([...sections.keys()].sort(), Object.keys(SCHEMAS).sort(), 'one section per schema')
  for (const [name, s] of sections) {
    t.same(s.fields.slice().sort(), fieldNames(SCHEMAS[name]).sort(), `${name}: the table lists exactly the schema's fields`)
    t.ok(s.example, `${name}: an example`)
    const example = JSON.parse(s.example ?? '{}')
    t.same(resultFaults(example), [], `${name}: the example fits`)
    t.equal(example.schema, name)
    // status's text says how long ago things happened: not a sentence made from the object alone.
    if (SENTENCES[name]) t.equal(SENTENCES[name](example), s.text, `${name}: the sentence without --json is the one shown`)
    else t.notOk(s.text, `${name}: no sentence to compare`)
  }
})

t.test('the checker refuses what does not fit', async (t) => {
  const example = JSON.parse(docSections().get('extfs.verify/1')!.example!)
  t.same(resultFaults(example), [])
  const { manifestConfigId: _, ...missing } = example
  t.same(resultFaults(missing), ['extfs.verify/1.manifestConfigId: missing'])
  t.same(resultFaults({ ...example, extra: 1 }), ['extfs.verify/1.extra: not in the schema'])
  t.same(resultFaults({ ...example, state: 'released' }), ['extfs.verify/1.state: "released" is not one of current'])
  t.same(resultFaults({ ...example, devices: [{ id: 'd0', path: 'sdb' }] }), ['extfs.verify/1.devices[0].path: "sdb" is not a path'])
  t.same(resultFaults({ ...example, schema: 'extfs.verify/2' }), ['schema "extfs.verify/2" is not known'])
})

t.test('results made from what the commands compute fit their schemas', async (t) => {
  const frozenImage = { kind: 'freeze' as const, mountpoint: '/srv', fsType: 'ext4', fsUuid: '8dcfc7a7-88eb-4899-8ca6-52aef14ad327' }
  const exported = exportResult({ manifest: '/s/m.json', record: '/s/m.json.config-id', configId: 'a'.repeat(32), frozenImage, inodes: 3, format: 1, mapper: 'vfs', mapped: { files: 3, bytes: 8192 } }, 12)
  t.same(resultFaults(exported), [])
  t.same(exported.frozenImage, { kind: 'freeze', mountpoint: '/srv', fsType: 'ext4' }, 'what holds the image, not the manifest\'s every field')
  t.equal(exportSentence(exported), `exported 3 inodes to /s/m.json, config ID ${'a'.repeat(32)}; /srv stays frozen until: extfs release /s/m.json`)

  const unchanged = remapResult('/s/m.json', { state: 'unchanged', configId: 'b'.repeat(32), manifestBytes: 900, mapper: 'bulk', compared: 'inodes' }, 5)
  t.same(resultFaults(unchanged), [])
  t.equal(remapSentence(unchanged), `unchanged ${'b'.repeat(32)}`)

  // After an export that died: only the journal, no record.
  const journal = releaseResult('/s/m.json', { frozenImage: { kind: 'snapshot', mountpoint: '/srv' }, fromJournal: true, removed: '/srv/.extfs-images/x' })
  t.same(resultFaults(journal), [])
  t.same(journal, { schema: 'extfs.release/1', manifest: '/s/m.json', fromJournal: true, frozenImage: { kind: 'snapshot', mountpoint: '/srv' }, removed: '/srv/.extfs-images/x' })
  t.equal(releaseSentence(journal), 'released the image of an export that did not finish; removed /srv/.extfs-images/x')
})
