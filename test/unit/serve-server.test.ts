// The serve loop in-process (src/service/server.ts): remaps on request and on the schedule publish what the
// remapper wrote, long polls wake on it, a delta that breaks the chain is not published. The remapper is
// a fake here (the one test double: the real one is src/remap/remap.ts, tested on real relocations in
// test/e2e/remap.test.ts); it writes real delta files and records as `extfs remap` does.
import t from 'tap'
import fs from 'node:fs'
import { imageNameOf } from '../../src/service/protocol'
import { REMAP_COST_FACTOR } from '../../src/service/remap-schedule'
import { fakeRemapper, serveFakeImage, slowRemapper, type TimedCall } from '../helpers/serve-image'
import { damaged } from '../../src/service/state'
import { RECORD_POLL_MS } from '../../src/service/registry'
import { writeRecord } from '../../src/configid/record'

t.test('image names', async (t) => {
  t.equal(imageNameOf('/shared/nightly.json'), 'nightly')
  t.equal(imageNameOf('/shared/db-2024.05.01'), 'db-2024.05.01')
  for (const bad of ['/shared/.json', '/shared/.hidden.json', '/shared/a b.json', `/shared/${'x'.repeat(129)}.json`]) {
    t.throws(() => imageNameOf(bad), /image name/, bad)
  }
})

t.test('POST remap publishes the remapper\'s delta; a long poll wakes on it', async (t) => {
  const remapper = fakeRemapper(['c1-aaaaaaaaaaaa'])
  const { client, manifest } = await serveFakeImage(t, remapper)
  const poll = client.config('minimal-0001', 10_000)
  t.match(await client.remap(), { state: 'remapped', configId: 'c1-aaaaaaaaaaaa' })
  t.match(await poll, { configId: 'c1-aaaaaaaaaaaa', deltas: [1], leaseMs: 5000 })
  t.ok((await client.delta(1)).equals(fs.readFileSync(`${manifest}.delta-1`)))
  t.match(await client.remap(), { state: 'unchanged', configId: 'c1-aaaaaaaaaaaa' })
})

t.test('the schedule remaps every image', async (t) => {
  const remapper = fakeRemapper(['c1-bbbbbbbbbbbb', 'c2-bbbbbbbbbbbb'])
  const { client } = await serveFakeImage(t, remapper, 150)
  let c = await client.config('minimal-0001', 5_000)
  if (c.configId === 'c1-bbbbbbbbbbbb') c = await client.config('c1-bbbbbbbbbbbb', 5_000)
  t.match(c, { configId: 'c2-bbbbbbbbbbbb', deltas: [1, 2] })
  t.ok(remapper.calls >= 2)
})

t.test('a delta that does not continue the chain is not published; the config ID is', async (t) => {
  const { client, lines } = await serveFakeImage(t, fakeRemapper(['c1-cccccccccccc'], { brokenFrom: true }))
  await client.remap()
  t.match(await client.config(), { configId: 'c1-cccccccccccc', deltas: [] }, 'movers see a chain that does not reach the config ID and refuse')
  t.match(lines.join(''), /starts at somewhere-else, the chain is at minimal-0001","msg":"delta not published"/)
})

/** Resolves once `calls` holds `n` calls (of `manifest`, when given); fails after `timeoutMs`. */
async function callsMade(calls: TimedCall[], n: number, timeoutMs: number, manifest?: string): Promise<TimedCall[]> {
  const until = Date.now() + timeoutMs
  const mine = () => calls.filter((c) => manifest === undefined || c.manifest === manifest)
  while (mine().length < n && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
  return mine()
}

/** Milliseconds between the starts of consecutive calls. */
const gaps = (calls: TimedCall[]) => calls.slice(1).map((c, i) => c.start - calls[i]!.start)

/** The remap log lines, parsed. */
const remapLines = (lines: string[]) => lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'remap')

t.test('the schedule keeps --interval as the least period when remaps are quick', async (t) => {
  const remapper = slowRemapper(0)
  await serveFakeImage(t, remapper, 200)
  const calls = await callsMade(remapper.calls, 3, 10_000)
  t.equal(calls.length, 3, 'three scheduled remaps')
  // Node's timers never fire early by more than their 1 ms rounding.
  for (const gap of gaps(calls)) t.ok(gap >= 199, `${Math.round(gap)} ms between scheduled remaps, not less than --interval 200 ms`)
})

t.test(`a long remap pushes the next scheduled one to ${REMAP_COST_FACTOR} times its duration; POST remap is not held back`, async (t) => {
  const remapper = slowRemapper(30)
  const { client, lines } = await serveFakeImage(t, remapper, 100)
  const [first] = await callsMade(remapper.calls, 1, 10_000)
  t.ok(first, 'the first scheduled remap came')
  const asked = performance.now()
  t.match(await client.remap(), { state: 'unchanged', configId: 'minimal-0001', seq: 0 }, 'POST remap answered, with the config ID\'s place in the chain')
  const calls = await callsMade(remapper.calls, 3, 15_000)
  t.equal(calls.length, 3, 'the remap asked for and the next scheduled one came')
  const [, byPost, scheduled] = calls as [TimedCall, TimedCall, TimedCall]
  t.ok(byPost.start - asked < 1000, `POST remap ran at once (${Math.round(byPost.start - asked)} ms), not at the schedule's next due time`)
  const gap = scheduled.start - byPost.start
  t.ok(gap >= REMAP_COST_FACTOR * byPost.ms,
    `the next scheduled remap came ${Math.round(gap)} ms after the last remap, at least ${REMAP_COST_FACTOR} x its ${byPost.ms.toFixed(1)} ms (${(100 * byPost.ms / gap).toFixed(1)}% of the time busy; every --interval of 100 ms it would be ${(byPost.ms).toFixed(0)}%)`)
  const logged = remapLines(lines)
  t.equal(logged.length, 3, 'each remap is logged')
  for (const l of logged) {
    // nextDue is counted from the remap's start, ms is rounded: 2 x ms of slack.
    const ahead = Date.parse(l.nextDue) - l.time
    t.ok(ahead >= (REMAP_COST_FACTOR - 2) * l.ms, `logged with its duration (${l.ms} ms) and when the schedule remaps next (${ahead} ms later)`)
  }
})

t.test('with several images, scheduled remaps together stay within the same share of one core', async (t) => {
  const remapper = slowRemapper(20)
  await serveFakeImage(t, remapper, 100, { twoImages: true })
  const nightly = await callsMade(remapper.calls, 2, 15_000, 'nightly.json')
  const weekly = await callsMade(remapper.calls, 2, 15_000, 'weekly.json')
  for (const [name, calls] of [['nightly', nightly], ['weekly', weekly]] as const) {
    t.equal(calls.length, 2, `${name}: two scheduled remaps`)
    const least = REMAP_COST_FACTOR * 2 * calls[0]!.ms
    t.ok(gaps(calls)[0]! >= least, `${name}: ${Math.round(gaps(calls)[0]!)} ms apart, at least ${REMAP_COST_FACTOR} x 2 images x ${calls[0]!.ms.toFixed(1)} ms`)
  }
})

t.test('a damaged state met by the record watch or poll (timers) is left to stop serve: no uncaught throw', async (t) => {
  const { manifest, state } = await serveFakeImage(t, fakeRemapper([]))
  // The state as it is once SQLite found it damaged (state.ts: every call then throws the one line).
  Object.assign(state, { damage: damaged(state.file, 'database disk image is malformed') })
  const uncaught: Error[] = []
  const onUncaught = (err: Error) => uncaught.push(err)
  process.prependListener('uncaughtException', onUncaught)
  t.teardown(() => process.removeListener('uncaughtException', onUncaught))
  writeRecord(`${manifest}.config-id`, 'c1-dddddddddddd', 'current')
  await new Promise((r) => setTimeout(r, RECORD_POLL_MS + 500)) // the watch's sync, then the poll's
  t.same(uncaught.map((e) => e.message), [], 'nothing thrown from the timers')
})
