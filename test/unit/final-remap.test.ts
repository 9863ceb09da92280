// The handshake at the end of `extfs backup` of a served image (src/mover/final-remap.ts), in-process:
// a real ConfigServer with the fake remapper of the other serve tests, and the view's state file under
// /run/extfs written by the test as a view writes it (src/mover/state.ts). The whole path, with a real
// view and real relocations, is test/e2e/backup-final-remap.test.ts.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { finalRemap, type FinalRemapOptions } from '../../src/mover/final-remap'
import { clearState, saveState, type ChainPosition } from '../../src/mover/state'
import { writeRecord } from '../../src/configid/record'
import type { Remapper } from '../../src/service/remap-worker'
import { KEY, fakeRemapper, serveFakeImage } from '../helpers/serve-image'

const C0 = 'minimal-0001'
const C1 = 'c1-dddddddddddd'
const C2 = 'c2-dddddddddddd'

/** A served image and a pretend view of it on a mountpoint of its own: where the view is, as the test says. */
async function setup(t: Test, remapper: Remapper) {
  const served = await serveFakeImage(t, remapper)
  // Nothing is mounted there: the state file is keyed by the path alone.
  const mountpoint = path.join(os.tmpdir(), `extfs-final-remap-unit-${process.pid}-${Math.random().toString(36).slice(2)}`, 'mnt')
  let writer = process.pid
  const viewAt = (position: ChainPosition, pid = process.pid) => {
    writer = pid
    saveState({ pid, mountpoint, manifest: served.url, position })
  }
  t.teardown(() => clearState(mountpoint, writer))
  viewAt({ configId: C0, seq: 0 })
  const run = (o: Partial<FinalRemapOptions> = {}) => finalRemap({ remote: { url: served.url }, key: KEY, mountpoint, viewPid: process.pid, catchUpMs: 2000, ...o })
  return { ...served, mountpoint, viewAt, run }
}

t.test('waits until the view has applied what the remap published', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  const started = performance.now()
  const later = setTimeout(() => s.viewAt({ configId: C1, seq: 1 }), 400)
  t.teardown(() => clearTimeout(later))
  t.equal(await s.run(), undefined, 'checked: the view reached the remap\'s config ID')
  const waited = performance.now() - started
  t.ok(waited >= 400, `and only once it had (${Math.round(waited)} ms)`)
})

t.test('nothing moved: the view is there already', async (t) => {
  const s = await setup(t, fakeRemapper([]))
  t.equal(await s.run(), undefined)
})

t.test('a later config ID than the remap\'s counts', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  s.viewAt({ configId: C2, seq: 2 })
  t.equal(await s.run(), undefined)
})

t.test('a view that does not get there: a reason, after the bounded wait', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  const started = performance.now()
  t.match(await s.run({ catchUpMs: 500 }), /^the view did not reach config ID c1-d+ \(delta 1, the final remap's\) within 0\.5 s; it serves minimal-0001 \(delta 0\)$/)
  t.ok(performance.now() - started >= 500, 'after the wait')
})

t.test('the same place in another chain is not the remap\'s config ID', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  s.viewAt({ configId: 'elsewhere-0001', seq: 1 })
  t.match(await s.run({ catchUpMs: 300 }), /did not reach config ID c1-d+ .*it serves elsewhere-0001 \(delta 1\)/)
})

t.test('a state file of another process does not count', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  s.viewAt({ configId: C1, seq: 1 }, process.pid + 1_000_000)
  t.match(await s.run({ catchUpMs: 300 }), /did not reach config ID c1-d+ .*it has not said where it is/)
})

t.test('the view process gone: a reason at once', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  const dead = spawnSync('true').pid!
  t.match(await s.run({ viewPid: dead, catchUpMs: 60_000 }), new RegExp(`^the view process ${dead} is gone$`))
})

t.test('the remap failed at serve (500): its reason', async (t) => {
  const failing: Remapper = { remap: () => { throw new Error('cannot lock the image') } }
  const s = await setup(t, failing)
  t.match(await s.run(), /^the final remap failed \(http:\/\/127\.0\.0\.1:\d+\/images\/nightly\/remap: 500 remap failed: cannot lock the image\)$/)
})

t.test('serve unreachable: the connection error', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  await s.close()
  t.match(await s.run(), /^the final remap failed \(http:\/\/127\.0\.0\.1:\d+\/images\/nightly\/remap: ECONNREFUSED\)$/)
})

t.test('released: a reason, no wait', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  writeRecord(`${s.manifest}.config-id`, C0, 'released')
  t.match(await s.run(), /^frozen image minimal-0001 at http:\S+ was released before the final remap$/)
})

t.test('a chain serve cannot publish: no place to wait for', async (t) => {
  const s = await setup(t, fakeRemapper([C1], { brokenFrom: true }))
  t.match(await s.run(), /^the final remap published config ID c1-d+, but serve's delta chain does not reach it$/)
})

t.test('interrupted while waiting: says so', async (t) => {
  const s = await setup(t, fakeRemapper([C1]))
  const stop = new AbortController()
  setTimeout(() => stop.abort(new Error('interrupted by SIGINT')), 200)
  const started = performance.now()
  t.equal(await s.run({ signal: stop.signal, catchUpMs: 60_000 }), 'interrupted by SIGINT')
  t.ok(performance.now() - started < 5000, 'at once, not after the wait')
})

t.test('nothing left in /run/extfs', async (t) => {
  const mine = fs.readdirSync('/run/extfs').filter((n) => n.endsWith('.json'))
    .filter((n) => fs.readFileSync(path.join('/run/extfs', n), 'utf8').includes('extfs-final-remap-unit-'))
  t.same(mine, [], 'every pretend view\'s state file was removed')
})
