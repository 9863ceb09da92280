// serve's answers as the client reads them (src/service/protocol.ts): what they may say, nothing else.
import t from 'tap'
import { MAX_DELTAS } from '../../src/configid/record'
import { parseConfigAnswer, parseRemapAnswer } from '../../src/service/protocol'

const config = (extra: Record<string, unknown> = {}) =>
  ({ image: 'cfg-0001-abcdef', configId: 'cfg-0003-abcdef', state: 'current', deltas: [1, 2], leaseMs: 30000, heldMs: 12, ...extra })
const remap = (extra: Record<string, unknown> = {}) =>
  ({ state: 'remapped', configId: 'cfg-0002-abcdef', seq: 1, deltaBytes: 512, manifestBytes: 4096, ...extra })

t.test('config answers', async (t) => {
  t.ok(parseConfigAnswer(config()), 'a current image two deltas on')
  t.ok(parseConfigAnswer(config({ state: 'released', deltas: [] })), 'released, no deltas')
  const refused: [string, Record<string, unknown>][] = [
    // Found by fuzzing (docs/fuzzing.md): the image went unchecked into the mover's messages.
    ['an image that is no config ID', config({ image: 'x\n2026-01-01 fake log line' })],
    ['an image that is no string', config({ image: 7 })],
    // A chain longer than a record may hold: the mover mirrors it as a record it could not read back.
    ['more deltas than a record holds', config({ deltas: Array.from({ length: MAX_DELTAS + 1 }, (_, i) => i + 1) })],
    ['deltas out of order', config({ deltas: [2, 1] })],
    ['a negative lease', config({ leaseMs: -1 })],
    ['an unknown state', config({ state: 'frozen' })],
  ]
  for (const [what, v] of refused) t.equal(parseConfigAnswer(v), undefined, what)
})

t.test('remap answers', async (t) => {
  t.ok(parseRemapAnswer(remap()), 'remapped')
  t.ok(parseRemapAnswer(remap({ state: 'released', seq: undefined, deltaBytes: undefined })), 'released')
  const refused: [string, Record<string, unknown>][] = [
    // Found by fuzzing: deltaBytes went unchecked (typed a number, it could be anything), manifestBytes could be negative.
    ['deltaBytes past 2^53', remap({ deltaBytes: 2 ** 53 })],
    ['deltaBytes a string', remap({ deltaBytes: '512' })],
    ['negative manifestBytes', remap({ manifestBytes: -1 })],
    ['a configId that is no config ID', remap({ configId: 'x' })],
    ['a seq that is no count', remap({ seq: 1.5 })],
  ]
  for (const [what, v] of refused) t.equal(parseRemapAnswer(v), undefined, what)
})
