// Authentication of `extfs serve` requests and answers (src/service/auth.ts): the MAC, clock skew, replay
// (with the real SQLite nonce store, also across a reopen), tampering with each signed part, and the
// response MAC.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  MemoryNonceStore, RequestVerifier, requestMac, responseMac, sha256Hex, signRequest, verifyResponseMac,
} from '../../src/service/auth'
import { ServeState } from '../../src/service/state'

const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
const OTHER = Buffer.from('fedcba9876543210fedcba9876543210')
const NOW = 1_800_000_000_000
const PATH = '/images/nightly/config?after=c0c0c0c0c0&wait=1000'

/** Request headers as node presents them: lower-case names. */
function headersOf(h: ReturnType<typeof signRequest>): Record<string, string> {
  return { 'x-extfs-time': h['X-Extfs-Time'], 'x-extfs-nonce': h['X-Extfs-Nonce'], 'x-extfs-auth': h['X-Extfs-Auth'] }
}

function verifier(skewMs = 60_000): RequestVerifier {
  return new RequestVerifier(KEY, new MemoryNonceStore(), skewMs)
}

t.test('the MAC is the documented HMAC over method, path, time, nonce and body hash', async (t) => {
  const nonce = '00112233445566778899aabbccddeeff'
  const h = signRequest(KEY, 'GET', PATH, '', NOW, nonce)
  const crypto = await import('node:crypto')
  const expected = crypto.createHmac('sha256', KEY)
    .update(`GET\n${PATH}\n${NOW}\n${nonce}\n${crypto.createHash('sha256').update('').digest('hex')}`).digest('hex')
  t.equal(h['X-Extfs-Auth'], expected)
  t.equal(h['X-Extfs-Time'], String(NOW))
  t.match(signRequest(KEY, 'GET', PATH)['X-Extfs-Nonce'], /^[0-9a-f]{32}$/, 'a fresh random nonce by default')
  t.not(signRequest(KEY, 'GET', PATH)['X-Extfs-Nonce'], signRequest(KEY, 'GET', PATH)['X-Extfs-Nonce'])
  t.equal(responseMac(KEY, 200, nonce, sha256Hex('x')), crypto.createHmac('sha256', KEY).update(`200\n${nonce}\n${sha256Hex('x')}`).digest('hex'))
})

t.test('a correctly signed request passes once; its replay is refused', async (t) => {
  const v = verifier()
  const h = headersOf(signRequest(KEY, 'GET', PATH, '', NOW))
  t.same(v.verify('GET', PATH, h, Buffer.alloc(0), NOW), { ok: true, nonce: h['x-extfs-nonce'] })
  const again = v.verify('GET', PATH, h, Buffer.alloc(0), NOW + 1000)
  t.equal(again.ok, false)
  t.match(again, { reason: 'replay', error: /replayed/ })
})

t.test('missing and malformed headers are refused', async (t) => {
  const v = verifier()
  const good = headersOf(signRequest(KEY, 'GET', PATH, '', NOW))
  const cases: [string, Record<string, string | string[] | undefined>, RegExp][] = [
    ['no headers', {}, /missing/],
    ['no auth', { ...good, 'x-extfs-auth': undefined }, /missing/],
    ['no time', { ...good, 'x-extfs-time': undefined }, /missing/],
    ['no nonce', { ...good, 'x-extfs-nonce': undefined }, /missing/],
    ['nonce too short', { ...good, 'x-extfs-nonce': 'abcd' }, /Nonce/],
    ['nonce upper case', { ...good, 'x-extfs-nonce': good['x-extfs-nonce'].toUpperCase() }, /Nonce/],
    ['time not a number', { ...good, 'x-extfs-time': '17e11' }, /Time/],
    ['auth not hex', { ...good, 'x-extfs-auth': 'z'.repeat(64) }, /Auth/],
    ['auth repeated', { ...good, 'x-extfs-auth': [good['x-extfs-auth'], good['x-extfs-auth']] }, /missing/],
  ]
  for (const [name, headers, why] of cases) {
    const r = v.verify('GET', PATH, headers, Buffer.alloc(0), NOW)
    t.equal(r.ok, false, name)
    t.match(r, { reason: String(why) === '/missing/' ? 'unauthenticated' : 'malformed_auth', error: why }, name)
    t.notMatch(!r.ok && r.error, /\n/, `${name}: one line`)
  }
})

t.test('tampering with any signed part is refused', async (t) => {
  const body = Buffer.from('{}')
  const h = headersOf(signRequest(KEY, 'POST', '/images/nightly/remap', body, NOW))
  const tampered: [string, () => ReturnType<RequestVerifier['verify']>][] = [
    ['method', () => verifier().verify('GET', '/images/nightly/remap', h, body, NOW)],
    ['path', () => verifier().verify('POST', '/images/other/remap', h, body, NOW)],
    ['query', () => verifier().verify('POST', '/images/nightly/remap?x=1', h, body, NOW)],
    ['body', () => verifier().verify('POST', '/images/nightly/remap', h, Buffer.from('{ }'), NOW)],
    ['time', () => verifier().verify('POST', '/images/nightly/remap', { ...h, 'x-extfs-time': String(NOW + 1) }, body, NOW)],
    ['nonce', () => verifier().verify('POST', '/images/nightly/remap', { ...h, 'x-extfs-nonce': 'f'.repeat(32) }, body, NOW)],
    ['mac', () => verifier().verify('POST', '/images/nightly/remap', { ...h, 'x-extfs-auth': '0'.repeat(64) }, body, NOW)],
    ['key', () => new RequestVerifier(OTHER, new MemoryNonceStore()).verify('POST', '/images/nightly/remap', h, body, NOW)],
  ]
  for (const [part, check] of tampered) {
    const r = check()
    t.equal(r.ok, false, part)
    t.match(r, { reason: 'bad_signature', error: /signature does not match/ }, part)
  }
  t.equal(verifier().verify('POST', '/images/nightly/remap', h, body, NOW).ok, true, 'the untampered request passes')
})

t.test('clock skew beyond the window is refused, inside it accepted', async (t) => {
  for (const [offset, ok] of [[-60_000, true], [60_000, true], [-60_001, false], [60_001, false], [-3_600_000, false]] as const) {
    const h = headersOf(signRequest(KEY, 'GET', PATH, '', NOW + offset))
    const r = verifier().verify('GET', PATH, h, Buffer.alloc(0), NOW)
    t.equal(r.ok, ok, `request ${offset} ms off`)
    if (!ok) t.match(r, { reason: 'skew', error: /off this host's clock/ })
  }
  const h = headersOf(signRequest(KEY, 'GET', PATH, '', NOW - 5_000))
  t.equal(verifier(2_000).verify('GET', PATH, h, Buffer.alloc(0), NOW).ok, false, 'a configured narrower window')
})

t.test('a forged request does not burn the nonce of a real one', async (t) => {
  const v = verifier()
  const real = headersOf(signRequest(KEY, 'GET', PATH, '', NOW))
  const forged = { ...real, 'x-extfs-auth': requestMac(OTHER, 'GET', PATH, String(NOW), real['x-extfs-nonce'], sha256Hex('')) }
  t.equal(v.verify('GET', PATH, forged, Buffer.alloc(0), NOW).ok, false)
  t.equal(v.verify('GET', PATH, real, Buffer.alloc(0), NOW).ok, true)
})

t.test('the SQLite nonce store refuses replays, also after a reopen, and forgets expired nonces', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-serve-auth-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const db = path.join(dir, 'serve.db')
  let state = new ServeState(db)
  const h = headersOf(signRequest(KEY, 'GET', PATH, '', NOW))
  t.equal(new RequestVerifier(KEY, state).verify('GET', PATH, h, Buffer.alloc(0), NOW).ok, true)
  t.equal(new RequestVerifier(KEY, state).verify('GET', PATH, h, Buffer.alloc(0), NOW).ok, false, 'replay')
  state.close()
  state = new ServeState(db)
  t.teardown(() => state.close())
  t.equal(new RequestVerifier(KEY, state).verify('GET', PATH, h, Buffer.alloc(0), NOW + 30_000).ok, false, 'replay after a restart')
  t.equal(state.claim('a'.repeat(32), NOW + 10, NOW), true)
  t.equal(state.claim('a'.repeat(32), NOW + 10, NOW + 5), false)
  t.equal(state.claim('a'.repeat(32), NOW + 200_000, NOW + 100_000), true, 'expired: usable again (unreachable through the time check anyway)')
  t.throws(() => new ServeState(db), /in use/, 'a second serve on the same database is refused')
})

t.test('response MAC: bound to status, request nonce and body', async (t) => {
  const nonce = '00112233445566778899aabbccddeeff'
  const body = Buffer.from('{"configId":"abc"}\n')
  const mac = responseMac(KEY, 200, nonce, sha256Hex(body))
  t.equal(verifyResponseMac(KEY, 200, nonce, body, mac), true)
  t.equal(verifyResponseMac(KEY, 404, nonce, body, mac), false, 'other status')
  t.equal(verifyResponseMac(KEY, 200, 'f'.repeat(32), body, mac), false, 'answer to another request (replayed answer)')
  t.equal(verifyResponseMac(KEY, 200, nonce, Buffer.from('{"configId":"abd"}\n'), mac), false, 'other body')
  t.equal(verifyResponseMac(OTHER, 200, nonce, body, mac), false, 'other key')
  t.equal(verifyResponseMac(KEY, 200, nonce, body, undefined), false, 'no MAC')
  t.equal(verifyResponseMac(KEY, 200, nonce, body, 'nothex'), false, 'malformed MAC')
  t.equal(verifyResponseMac(KEY, 200, nonce, body, [mac, mac]), false, 'repeated header')
})
