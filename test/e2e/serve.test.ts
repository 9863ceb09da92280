// `extfs serve` end to end on loopback: the real binary as a child, a real exported manifest of an ext4
// image on a loop device, the client library the mover will use. Manifest bytes, long poll woken by a
// record change (a delta and record written by hand, as docs/remap.md lays them out), a real remap on
// request, forged / replayed / stale requests, a restart that keeps config ID and delta history, release,
// and HTTPS.
import t, { type Test } from 'tap'
import { promises as fsp, readFileSync, existsSync } from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import * as path from 'node:path'
import Database from 'better-sqlite3'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, startServe } from '../helpers/extfs'
import { remountReadOnly, withLoopFs } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { ConfigClient, ConfigServiceError } from '../../src/service/client'
import { signRequest } from '../../src/service/auth'
import { writeRecord, readRecord } from '../../src/configid/record'
import { signDelta } from '../../src/delta/sign'
import { parseDelta } from '../../src/delta/io'
import { ImageMap } from '../../src/delta/chain'
import { DELTA_FORMAT, DELTA_VERSION, type Delta } from '../../src/delta/types'
import type { Manifest } from '../../src/manifest/types'

const KiB = 1024

/** A raw GET with the given headers (no client library): status, body, headers. */
function rawGet(base: string, target: string, headers: Record<string, string>): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    // `path` as is: new URL() would resolve `..` before sending, and the signature is over what is sent.
    const { hostname, port } = new URL(base)
    const req = http.request({ hostname, port, path: target, method: 'GET', headers, agent: false }, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }))
    })
    req.on('error', reject)
    req.end()
  })
}

async function refusedWith(t: Test, p: Promise<unknown>, status: number, message: RegExp, name: string): Promise<void> {
  try {
    await p
    t.fail(`${name}: accepted`)
  } catch (err) {
    t.type(err, ConfigServiceError, name)
    t.equal((err as ConfigServiceError).status, status, `${name}: status`)
    t.match((err as Error).message, message, name)
    t.notMatch((err as Error).message, /\n/, `${name}: one line`)
  }
}

/** Delta 1 by hand: the first regular file "moved" to where it already is; signed with the key. */
function handDelta(m: Manifest, to: string, key: Buffer): Delta {
  const file = m.inodes.find((n) => n.kind === 'file' && n.extents && n.extents.length > 0)!
  return signDelta({
    format: DELTA_FORMAT, version: DELTA_VERSION, image: m.configId, seq: 1, from: m.configId, to,
    createdAt: new Date().toISOString(), reason: 'extents moved', devices: [], files: [{ ino: file.ino, extents: file.extents }],
  }, key)
}

t.test('extfs serve on loopback', async (top) => {
  const t = top // `top` where a subtest's teardown would end a serve too early
  const dir = await scratchDir(t, 'extfs-serve-')
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, seededBytes(77, 32).toString('hex'))
  const key = readFileSync(keyFile)
  const db = path.join(dir, 'state', 'serve.db')

  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'sub'), { recursive: true })
    for (let i = 0; i < 4; i++) await fsp.writeFile(path.join(data, i % 2 ? 'sub' : '', `f-${i}`), seededBytes(300 + i, 40 * KiB * (i + 1)))
    await remountReadOnly(fs)
    const manifest = path.join(dir, 'nightly.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'none', '--key', keyFile])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const m = JSON.parse(readFileSync(manifest, 'utf8')) as Manifest
    const recordFile = path.resolve(dir, m.configRecord)
    const c0 = m.configId

    const refusedStart = await extfs(['serve', '--listen', '127.0.0.1:0', '--state', db, manifest])
    t.equal(refusedStart.code, 2, 'no key: serve refuses to start')
    t.match(refusedStart.stderr, /--key/)

    let served = await startServe(t, ['--key', keyFile, '--state', db, '--interval', '0', '--lease', '7', manifest])
    let client = new ConfigClient(`${served.url}/nightly`, key)
    t.teardown(() => client.close())

    await t.test('images, manifest bytes, first config', async (t) => {
      t.same(await client.images(), ['nightly'])
      t.ok((await client.manifest()).equals(readFileSync(manifest)), 'manifest bytes equal the file')
      const before = Date.now()
      const c = await client.config()
      t.match(c, { image: c0, configId: c0, state: 'current', deltas: [], leaseMs: 7000 })
      t.ok(c.leaseUntil >= before + 7000 && c.leaseUntil <= Date.now() + 7000, 'lease counted from when the request was sent')
      const same = await client.config(c0, 300)
      t.equal(same.configId, c0, 'long poll with nothing changed answers after its wait')
    })

    const c1 = 'c1'.padEnd(32, '1')
    await t.test('a long poll wakes when the record changes; the delta is served as written', async (t) => {
      const started = Date.now()
      const poll = client.config(c0, 20_000)
      await new Promise((r) => setTimeout(r, 300))
      // docs/remap.md: the delta file first (atomically), then the record (atomically).
      const deltaFile = `${manifest}.delta-1`
      await fsp.writeFile(`${deltaFile}.tmp`, JSON.stringify(handDelta(m, c1, key), null, 1) + '\n')
      await fsp.rename(`${deltaFile}.tmp`, deltaFile)
      writeRecord(recordFile, c1, 'current', { deltas: [path.basename(deltaFile)], mapping: readRecord(recordFile).mapping })
      const c = await poll
      const took = Date.now() - started
      t.match(c, { configId: c1, state: 'current', deltas: [1] })
      t.ok(took < 5_000, `woke ${took} ms after asking (the change came at ~300 ms)`)
      const bytes = await client.delta(1)
      t.ok(bytes.equals(readFileSync(deltaFile)), 'delta bytes equal the file')
      const d = parseDelta(bytes.toString('utf8'), ImageMap.ofManifest(m).context(), 'served delta 1', key)
      t.equal(d.to, c1, 'the served delta passes the mover\'s checks')
      await refusedWith(t, client.delta(2), 404, /no delta 2/, 'a delta that does not exist')
    })

    await t.test('POST remap runs the real remap on the image: nothing moved', async (t) => {
      const r = await client.remap()
      t.match(r, { state: 'unchanged', configId: c1 })
      t.notOk(existsSync(`${manifest}.delta-2`))
    })

    await t.test('forged, replayed, stale and malformed requests are refused with 401', async (t) => {
      const forger = new ConfigClient(`${served.url}/nightly`, Buffer.from('another key, 32 bytes long......'))
      t.teardown(() => forger.close())
      await refusedWith(t, forger.config(), 401, /not authenticated.*401 request signature does not match/, 'wrong key')
      await refusedWith(t, forger.manifest(), 401, /401/, 'wrong key, manifest')

      const target = '/images/nightly/config'
      const h = signRequest(key, 'GET', target) as unknown as Record<string, string>
      const first = await rawGet(served.url, target, h)
      t.equal(first.status, 200, 'the original')
      t.match(first.headers['x-extfs-auth'], /^[0-9a-f]{64}$/, 'answer carries a MAC')
      const replay = await rawGet(served.url, target, h)
      t.equal(replay.status, 401, 'the replay')
      t.same(JSON.parse(replay.body), { error: 'nonce already used: replayed request' })
      t.equal(replay.body.trimEnd().split('\n').length, 1, 'one-line JSON error')

      const stale = await rawGet(served.url, target, signRequest(key, 'GET', target, '', Date.now() - 120_000) as unknown as Record<string, string>)
      t.equal(stale.status, 401, 'timestamp 2 minutes old')
      t.match(JSON.parse(stale.body).error, /off this host's clock/)
      const future = await rawGet(served.url, target, signRequest(key, 'GET', target, '', Date.now() + 120_000) as unknown as Record<string, string>)
      t.equal(future.status, 401, 'timestamp 2 minutes ahead')

      const bare = await rawGet(served.url, target, {})
      t.equal(bare.status, 401, 'no auth headers')
      t.notOk(bare.headers['x-extfs-auth'], 'nothing to bind a MAC to')
      const otherPath = await rawGet(served.url, '/images/nightly/manifest', signRequest(key, 'GET', target) as unknown as Record<string, string>)
      t.equal(otherPath.status, 401, 'signed for another path')

      for (const trick of ['/images/../etc/passwd', '/images/..%2f..%2fetc%2fpasswd/manifest', '/images/nightly%00/manifest', '/images/.nightly/manifest']) {
        const r = await rawGet(served.url, trick, signRequest(key, 'GET', trick) as unknown as Record<string, string>)
        t.equal(r.status, 400, `path trick ${trick}`)
      }
      const unknown = await rawGet(served.url, '/images/other/config', signRequest(key, 'GET', '/images/other/config') as unknown as Record<string, string>)
      t.equal(unknown.status, 404, 'an image not served')
      t.match(served.stderr(), /"msg":"refused"/, 'refusals are logged')
    })

    await t.test('a restarted serve answers for the image with the same config ID and delta history', async (t) => {
      const stopped = await served.stop()
      t.same(stopped, { code: 0, signal: null }, 'SIGTERM: clean exit')
      t.match(served.stderr(), /"msg":"stopped"/)
      const sql = new Database(db, { readonly: true })
      t.match(sql.prepare('SELECT name, c0, config_id, state FROM images').all(), [{ name: 'nightly', c0, config_id: c1, state: 'current' }])
      t.match(sql.prepare('SELECT seq, from_id, to_id FROM deltas').all(), [{ seq: 1, from_id: c0, to_id: c1 }])
      sql.close()

      client.close()
      served = await startServe(top, ['--key', keyFile, '--state', db, '--interval', '0', manifest])
      client = new ConfigClient(`${served.url}/nightly`, key)
      t.match(await client.config(), { image: c0, configId: c1, state: 'current', deltas: [1], leaseMs: 30_000 })
      t.ok((await client.delta(1)).equals(readFileSync(`${manifest}.delta-1`)))
      t.notMatch(served.stderr(), /"msg":"config changed"/, 'nothing to catch up on: the state was kept')
    })

    await t.test('release is reported to a waiting long poll', async (t) => {
      const poll = client.config(c1, 20_000)
      await new Promise((r) => setTimeout(r, 200))
      await release(manifest)
      const c = await poll
      t.match(c, { configId: c1, state: 'released', deltas: [1] })
      t.match(await client.config(c1, 5_000), { state: 'released' }, 'answered at once from then on')
      t.match(await client.remap(), { state: 'released' }, 'a released image is not remapped')
    })

    await t.test('HTTPS with --cert/--tls-key', async (t) => {
      const cert = path.join(dir, 'cert.pem')
      const certKey = path.join(dir, 'cert.key')
      await runOk('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', certKey, '-out', cert])
      const tls = await startServe(t, ['--key', keyFile, '--state', path.join(dir, 'tls.db'), '--interval', '0', '--cert', cert, '--tls-key', certKey, manifest])
      t.match(tls.url, /^https:/)
      const trusting = new ConfigClient(`${tls.url}/nightly`, key, { ca: readFileSync(cert) })
      t.teardown(() => trusting.close())
      t.match(await trusting.config(), { configId: c1, state: 'released' })
      const untrusting = new ConfigClient(`${tls.url}/nightly`, key)
      t.teardown(() => untrusting.close())
      await refusedWith(t, untrusting.config(), undefined as unknown as number, /SELF_SIGNED|certificate/i, 'an unknown certificate')
      const plain = await new Promise<number>((resolve) => {
        const req = https.get(new URL('/images', tls.url), { rejectUnauthorized: false, agent: false }, (res) => { res.resume(); resolve(res.statusCode!) })
        req.on('error', () => resolve(-1))
      })
      t.equal(plain, 401, 'over TLS, still no key no data')
      t.same(await tls.stop(), { code: 0, signal: null })
    })

    await t.test('stop', async (t) => {
      t.same(await served.stop(), { code: 0, signal: null })
    })
  })
})
