// What `extfs serve` spends on whoever connects, in its parts (the attack itself: e2e/serve-attack):
// the connection caps against the descriptor limit, the rejection log's counter-and-sample rule, the
// bounded sample, and a signed request that announces a body refused before it is read.
import t from 'tap'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { signRequest } from '../../src/service/auth'
import { connectionCaps, descriptorLimit } from '../../src/service/connections'
import { MAX_SAMPLE_BYTES, RefusalLog, shown } from '../../src/service/refusal-log'
import { KEY, fakeRemapper, serveFakeImage } from '../helpers/serve-image'

t.test('connection caps: the total at most half the descriptor limit, per client at most the total', async (t) => {
  t.same(connectionCaps(4096, 64, 20_000), { total: 4096, perClient: 64 })
  t.same(connectionCaps(4096, 64, 1024), { total: 512, perClient: 64 }, 'ulimit -n 1024')
  t.same(connectionCaps(4096, 64, 100), { total: 50, perClient: 50 })
  t.same(connectionCaps(4096, 64, undefined), { total: 4096, perClient: 64 }, 'limit unknown')
  const limits = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-limits-')), 'limits')
  t.teardown(() => fs.rmSync(path.dirname(limits), { recursive: true }))
  fs.writeFileSync(limits, 'Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n')
  t.equal(descriptorLimit(limits), 1024, 'the soft limit, from /proc/<pid>/limits')
  t.equal(descriptorLimit(`${limits}.none`), undefined)
  t.ok(descriptorLimit()! > 0, 'this process has one')
})

t.test('a sample: cut to MAX_SAMPLE_BYTES, control characters escaped', async (t) => {
  t.equal(shown('/images/a/config?after=x'), '/images/a/config?after=x')
  t.equal(shown('a\nb\u0000c\\d\u0085'), 'a\\x0ab\\x00c\\\\d\\x85')
  const long = shown(`/x?${'a'.repeat(15_000)}`)
  t.equal(long, `/x?${'a'.repeat(MAX_SAMPLE_BYTES - 3)}…(15003 chars)`)
  t.ok(Buffer.byteLength(shown('\u0001'.repeat(1000))) < MAX_SAMPLE_BYTES + 20, 'escaping does not lengthen it past the cut')
})

t.test('refusals: one line at once, then one per period with its count and a sample', async (t) => {
  const lines: Record<string, unknown>[] = []
  const log = new RefusalLog(pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) }), 100)
  t.teardown(() => log.close())
  for (let i = 0; i < 1000; i++) log.refused('unauthenticated', { remote: '127.0.0.2', url: `/u${i}` })
  log.refused('skew', { url: '/s' })
  t.match(lines, [{ reason: 'unauthenticated', count: 1, url: '/u0' }, { reason: 'skew', count: 1 }], 'the first of each reason at once')
  await new Promise((r) => setTimeout(r, 150))
  t.match(lines.slice(2), [{ reason: 'unauthenticated', count: 999, url: '/u1', msg: 'refused' }], 'the rest in one line at the end of the period')
  await new Promise((r) => setTimeout(r, 250))
  t.equal(lines.length, 3, 'quiet periods write nothing')
  log.refused('unauthenticated', { url: '/again' })
  t.match(lines[3], { reason: 'unauthenticated', count: 1, url: '/again' }, 'after a quiet period: at once again')
})

t.test('a signed request announcing a body is refused 413 unread and its connection closed', async (t) => {
  const { url, lines } = await serveFakeImage(t, fakeRemapper([]))
  const target = '/images/nightly/remap'
  const u = new URL(url)
  for (const extra of [{ 'content-length': '65536' }, { 'transfer-encoding': 'chunked' }]) {
    const got = await new Promise<{ status: number; closed: boolean }>((resolve, reject) => {
      const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: target, agent: false, headers: { ...signRequest(KEY, 'POST', target), ...extra } }, (res) => {
        res.resume()
        res.on('end', () => req.socket!.once('close', () => resolve({ status: res.statusCode!, closed: true })))
      })
      req.on('error', reject)
      req.write('x'.repeat(100)) // the body's start; the rest never comes
    })
    t.same(got, { status: 413, closed: true }, `${Object.keys(extra)[0]}: 413, connection closed`)
  }
  t.ok(lines.some((l) => l.includes('"reason":"too_large"')), 'logged as too_large')
})
