// The config-ID record: the reader (readRecord, parseRecord) and the per-open check (ConfigWatch),
// which must never let opens through on a record the reader refuses.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { ConfigWatch, parseRecord, readRecord, writeRecord } from '../../src/configid/record'

const ID = 'cfg-0001-abcdef'
const record = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ format: 'extfs-config-record', version: 1, configId: ID, state: 'current', updatedAt: '2024-05-01T12:00:00.000Z', ...extra })

t.test('a current record of the config ID serves opens; the reader reads it back', async (t) => {
  const file = path.join(t.testdir({}), 'record.json')
  writeRecord(file, ID, 'current', { deltas: ['d-1.json'] })
  t.same(new ConfigWatch(file, ID).check(), { ok: true })
  t.same(readRecord(file).deltas, ['d-1.json'])
  t.match(new ConfigWatch(file, 'cfg-0002-abcdef').check(), { ok: false, reason: `config ID changed from cfg-0002-abcdef to ${ID}` })
  writeRecord(file, ID, 'released')
  t.match(new ConfigWatch(file, ID).check(), { ok: false, reason: `frozen image ${ID} was released` })
})

t.test('what the reader refuses refuses opens, with its message', async (t) => {
  const dir = t.testdir({})
  // Found by fuzzing (docs/fuzzing.md): the per-open check looked at format, configId and state only,
  // so opens went on under a record of another version, with unknown fields or a malformed chain.
  const cases: [string, string, RegExp][] = [
    ['another version', record({ version: 2 }), /unknown version 2: this extfs reads version 1; upgrade extfs/],
    ['no version', record({ version: undefined }), /unknown version undefined/],
    ['an unknown field', record({ lease: 1 }), /unknown field "lease"/],
    ['a delta that is no file name', record({ deltas: ['a/b'] }), /deltas: "a\/b" is not a file name/],
    ['a malformed mapping', record({ mapping: { throughLoop: 1 } }), /mapping must be/],
    ['no updatedAt', record({ updatedAt: 7 }), /updatedAt must be a string/],
    ['not JSON', '{"format":', /is not valid JSON/],
  ]
  for (const [what, text, message] of cases) {
    const file = path.join(dir, 'record.json')
    fs.writeFileSync(file, text)
    t.throws(() => parseRecord(text, file), { exitCode: 3, message }, `${what}: the reader refuses`)
    const verdict = new ConfigWatch(file, ID).check()
    t.equal(verdict.ok, false, `${what}: no opens`)
    t.match(!verdict.ok && verdict.reason, message, `${what}: says why`)
  }
})
