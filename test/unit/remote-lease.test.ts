// The mover's side of `extfs serve` in-process (src/mover/remote.ts) against the real server: the
// mirror (manifest, record, delta files), the lease the long poll keeps fresh, the synchronous renewal
// once it ran out (refused when the initiator is gone, served again when it is back), release. The
// engine is replaced by a recorder of setLease calls and the chain follower by a counting check: both
// are tested on real views elsewhere (test/e2e/two-hosts.test.ts, engine-delta.test.ts).
import t, { type Test } from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { ConfigServer } from '../../src/service/server'
import { ServeState } from '../../src/service/state'
import { ConfigClient } from '../../src/service/client'
import { readRecord, writeRecord, type Verdict } from '../../src/configid/record'
import { RemoteImage } from '../../src/mover/remote'
import { KEY, fakeRemapper, signedImage } from '../helpers/serve-image'
const LEASE_MS = 600
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function setup(t: Test) {
  const { dir, manifest } = signedImage('extfs-remote-unit-')
  const log = pino({ level: 'debug' }, { write: (l: string) => lines.push(l) })
  const lines: string[] = []
  const state = new ServeState(path.join(dir, 'serve.db'))
  let server: ConfigServer | undefined
  const start = async (port: number) => {
    server = new ConfigServer({ manifests: [manifest], key: KEY, state, log, remapper: fakeRemapper(['c1-aaaaaaaaaaaa']), intervalMs: 0, leaseMs: LEASE_MS })
    return (await server.listen('127.0.0.1', port)).port
  }
  const stop = async () => {
    await server?.close()
    server = undefined
  }
  const port = await start(0)
  const url = `http://127.0.0.1:${port}/nightly`
  const leases: number[] = []
  const changes: number[] = []
  const remote = await RemoteImage.open({ url, key: KEY, log })
  t.teardown(async () => {
    remote.close()
    await stop()
    state.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  remote.attach({ setLease: (ms) => leases.push(ms) }, () => changes.push(Date.now()))
  let innerCalls = 0
  let innerVerdict: Verdict = { ok: true }
  const check = remote.guard({ file: remote.recordFile, check: () => (innerCalls++, innerVerdict) })
  return {
    manifest, url, port, remote, leases, changes, check, lines, start, stop,
    client: new ConfigClient(url, KEY),
    inner: { calls: () => innerCalls, set: (v: Verdict) => (innerVerdict = v) },
  }
}

t.test('the mirror, and a lease the long poll keeps fresh', async (t) => {
  const s = await setup(t)
  t.teardown(() => s.client.close())
  t.ok(fs.readFileSync(s.remote.manifestPath).equals(fs.readFileSync(s.manifest)), 'the manifest is mirrored byte for byte')
  t.match(readRecord(s.remote.recordFile), { configId: 'minimal-0001', state: 'current' }, 'the record is mirrored')
  t.ok(s.leases[0]! > 0 && s.leases[0]! <= LEASE_MS, `the engine got the lease at attach: ${s.leases[0]} ms`)

  const before = s.inner.calls()
  const v = s.check.check()
  t.notOk(v instanceof Promise, 'a fresh lease is answered at once, without the network')
  t.same(v, { ok: true })
  t.equal(s.inner.calls(), before + 1, 'by the chain follower on the mirror')

  await sleep(4 * LEASE_MS)
  t.ok(s.remote.leaseLeft() > 0, `still fresh after four leases: the long poll renewed it (${Math.round(s.remote.leaseLeft())} ms left)`)
  t.ok(s.leases.length >= 4, `the engine's lease was renewed ${s.leases.length} times`)

  await s.client.remap()
  for (let i = 0; i < 50 && s.changes.length === 0; i++) await sleep(50)
  t.equal(s.changes.length, 1, 'a remap on the initiator reaches the mover as a change')
  t.match(readRecord(s.remote.recordFile), { configId: 'c1-aaaaaaaaaaaa', state: 'current', deltas: ['delta-1'] }, 'the mirrored record names the mirrored delta')
  t.ok(fs.readFileSync(path.join(path.dirname(s.remote.recordFile), 'delta-1')).equals(fs.readFileSync(`${s.manifest}.delta-1`)), 'delta-1 mirrored byte for byte')
})

t.test('initiator gone: served until the lease runs out, then refused; served again when it is back', async (t) => {
  const s = await setup(t)
  t.teardown(() => s.client.close())
  await s.stop()
  t.notOk(s.check.check() instanceof Promise, 'right after the initiator went, the lease still holds')
  await sleep(LEASE_MS + 200)
  t.equal(s.remote.leaseLeft(), 0, 'the lease ran out: nothing renewed it')

  const v = s.check.check()
  t.ok(v instanceof Promise, 'an expired lease asks the initiator')
  const refused = await v
  t.equal(refused.ok, false, 'and refuses when it does not answer')
  t.match(refused.ok ? '' : refused.reason, new RegExp(`initiator ${s.url} not reachable .*; the lease expired \\d+ ms ago`), 'naming the initiator and the lease')
  const t0 = performance.now()
  const again = await s.check.check()
  t.ok(performance.now() - t0 < 200 && !again.ok, 'a second open right after is refused at once (no 3 s wait per open)')
  t.match(s.lines.join(''), /initiator unreachable/, 'the outage is logged')

  await s.start(s.port)
  await sleep(1100) // past the held failure
  const back = await s.check.check()
  t.same(back, { ok: true }, 'the initiator answers again: the open is served')
  t.ok(s.remote.leaseLeft() > 0, 'on a renewed lease')
})

t.test('release: the lease ends for good and opens are judged from the mirrored record', async (t) => {
  const s = await setup(t)
  t.teardown(() => s.client.close())
  const rec = readRecord(`${s.manifest}.config-id`)
  writeRecord(`${s.manifest}.config-id`, rec.configId, 'released')
  for (let i = 0; i < 100 && s.leases.at(-1) !== 0; i++) await sleep(50)
  t.equal(s.leases.at(-1), 0, 'the engine\'s lease is set to 0: every open and read asks')
  t.match(readRecord(s.remote.recordFile), { state: 'released' }, 'the mirrored record says released')
  s.inner.set({ ok: false, reason: 'frozen image minimal-0001 was released' })
  const v = s.check.check()
  t.notOk(v instanceof Promise, 'released is final: judged without the network')
  t.match(v, { ok: false, reason: /released/ })
})

t.test('a released image cannot be mounted', async (t) => {
  const s = await setup(t)
  t.teardown(() => s.client.close())
  writeRecord(`${s.manifest}.config-id`, 'minimal-0001', 'released')
  for (let i = 0; i < 100 && s.leases.at(-1) !== 0; i++) await sleep(50)
  const before = fs.readdirSync('/run/extfs/remote').length
  await t.rejects(RemoteImage.open({ url: s.url, key: KEY, log: pino({ level: 'silent' }) }), /was released/)
  t.equal(fs.readdirSync('/run/extfs/remote').length, before, 'and leaves no mirror behind')
})

t.test('an "unknown" answer (record unreadable): the lease ends at once, opens are refused with the reason until the record proves the image current again', async (t) => {
  const s = await setup(t)
  t.teardown(() => s.client.close())
  const recordFile = `${s.manifest}.config-id`
  const good = fs.readFileSync(recordFile)
  fs.writeFileSync(recordFile, 'garbage, not a record')
  for (let i = 0; i < 100 && s.leases.at(-1) !== 0; i++) await sleep(50)
  t.equal(s.leases.at(-1), 0, 'the engine\'s lease is set to 0 by the long poll\'s unknown answer')
  t.match(await s.client.config(), { state: 'unknown', reason: /config-ID record .* is not valid JSON$/ }, 'serve answers unknown, saying why')
  const calls = s.inner.calls()
  const v = await s.check.check()
  t.match(v, { ok: false, reason: /cannot prove frozen image minimal-0001 current \(config-ID record .* is not valid JSON/ }, 'an open is refused with the reason')
  t.equal(s.inner.calls(), calls, 'without consulting the mirrored record')
  t.equal(s.remote.leaseLeft(), 0, 'and the unknown answer renewed no lease')
  t.match(readRecord(s.remote.recordFile), { state: 'current' }, 'the mirror is left as it was (an unknown answer is not mirrored)')
  await t.rejects(RemoteImage.open({ url: s.url, key: KEY, log: pino({ level: 'silent' }) }), /cannot prove frozen image .* current/, 'a new mount is refused')
  fs.writeFileSync(recordFile, good)
  for (let i = 0; i < 100 && !(s.leases.at(-1)! > 0); i++) await sleep(50)
  await sleep(1_100) // past the hold of the last failed renewal
  t.same(await s.check.check(), { ok: true }, 'the record readable again: opens are served')
  t.ok(s.remote.leaseLeft() > 0, 'on a renewed lease')
})
