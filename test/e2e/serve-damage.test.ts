// `extfs serve` with its state damaged or lost (docs/remap.md, "serve's state: damage and loss"): the
// real binary on a fake image (test/helpers/serve-image.ts; no filesystem is needed, as nothing here
// reads a file's bytes). Garbage pages, a file truncated to 0 bytes and a lost write-ahead log are
// refused at start with one line naming the file and exit 13; damage found while serving (a busy state,
// larger than SQLite's page cache) stops serve with 13 and the same line, answering nothing more (the
// mover's long poll sees its connection end); an old copy of the state restored after
// a release, a garbage config-ID record and both at once never give "current" for the released image
// (released, or unknown and `extfs mount` refused with 7); a request captured before a restart is
// refused after it, whatever became of the nonces.
import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { extfs, ensureUnmounted, startServe, withoutProgress } from '../helpers/extfs'
import { KEY, signedImage } from '../helpers/serve-image'
import { ConfigClient } from '../../src/service/client'
import { signRequest } from '../../src/service/auth'
import { writeRecord } from '../../src/configid/record'
import { ExitCode } from '../../src/errors'

const PAGE = 4096 // SQLite's default page size, which serve keeps

/** A signed request as captured on the wire: sent once, it can be sent again byte for byte. */
function send(url: string, method: string, target: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(url)
    const req = http.request({ hostname, port, path: target, method, headers: { ...headers, 'content-length': '0' }, agent: false }, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode!, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('extfs serve: damaged or lost state', async (t) => {
  const { dir, manifest, configId } = signedImage('extfs-serve-damage-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'key')
  fs.writeFileSync(keyFile, KEY)
  const recordFile = `${manifest}.config-id`
  const db = path.join(dir, 'state', 'serve.db')
  const serveArgs = (state: string) => [manifest, '--key', keyFile, '--state', state, '--interval', '0', '--skew', '600']

  /** serve started on `state`, its answer for the image, and a client (closed at `t`'s end). */
  const serve = async (t: Test, state: string) => {
    const served = await startServe(t, serveArgs(state))
    const client = new ConfigClient(`${served.url}/nightly`, KEY)
    t.teardown(() => client.close())
    return { served, client, answer: await client.config() }
  }
  const stopped = async (t: Test, served: { stop(): Promise<{ code: number | null }> }) => t.equal((await served.stop()).code, 0, 'serve stopped cleanly')

  /** serve on `state` must refuse to start: exit 13, one line naming the file and the damage. */
  const refused = async (t: Test, state: string, what: RegExp) => {
    const r = await extfs(['serve', '--listen', '127.0.0.1:0', ...serveArgs(state)], { timeoutMs: 20_000 })
    t.equal(r.code, ExitCode.StateDamaged, `exit ${ExitCode.StateDamaged} (StateDamaged): ${r.stderr}`)
    const lines = withoutProgress(r.stderr).trim().split('\n')
    t.equal(lines.length, 1, 'one line')
    t.match(lines[0], `extfs: state database ${state} is damaged (`, 'naming the file')
    t.match(lines[0], what, 'and the damage')
    t.match(lines[0], /move it aside .* start serve again/, 'and what to do')
  }

  /** `extfs mount` from serve: must be refused with 7 and one line; never mounted. */
  const mountRefused = async (t: Test, url: string) => {
    const mp = fs.mkdtempSync(path.join(os.tmpdir(), 'damage-mnt-'))
    t.teardown(async () => {
      await ensureUnmounted(mp)
      fs.rmSync(mp, { recursive: true, force: true })
    })
    const r = await extfs(['mount', `${url}/nightly`, mp, '--key', keyFile], { timeoutMs: 30_000 })
    t.equal(r.code, ExitCode.Stale, `extfs mount refused with 7: ${r.stderr}`)
    t.match(withoutProgress(r.stderr).trim(), /^extfs: initiator .* cannot prove frozen image minimal-0001 current \(.*\): not served$/, 'one line saying why')
  }

  // The state as a clean stop leaves it; copies of it are damaged below.
  await t.test('a fresh state is created where no file is; it starts "current"', async (t) => {
    const s = await serve(t, db)
    t.equal(s.answer.state, 'current')
    await stopped(t, s.served)
    t.notOk(fs.existsSync(`${db}-wal`), 'a clean stop leaves no write-ahead log')
  })
  const pages = fs.statSync(db).size / PAGE
  const copy = (name: string) => {
    const f = path.join(dir, 'state', name)
    fs.copyFileSync(db, f)
    return f
  }

  await t.test('garbage pages: refused at start', async (t) => {
    const f = copy('garbage.db')
    t.ok(pages >= 4, `the database has ${pages} pages`)
    const fd = fs.openSync(f, 'r+')
    for (let p = 1; p < pages; p++) fs.writeSync(fd, crypto.randomBytes(PAGE), 0, PAGE, p * PAGE) // every page but the header's
    fs.closeSync(fd)
    await refused(t, f, /malformed|not a database|quick_check|page|tree/i)
  })

  await t.test('truncated to 0 bytes: refused at start, not replaced by a fresh database', async (t) => {
    const f = copy('truncated.db')
    fs.truncateSync(f, 0)
    await refused(t, f, /empty \(0 bytes\)/)
    t.equal(fs.statSync(f).size, 0, 'the file is left as it was')
  })

  await t.test('write-ahead log lost after a crash: refused; with its log, the same database starts', async (t) => {
    const f = copy('crashed.db')
    const s = await serve(t, f)
    s.served.child.kill('SIGKILL')
    await s.served.exited
    t.ok(fs.existsSync(`${f}-wal`), 'a killed serve leaves its write-ahead log')
    const lost = path.join(dir, 'state', 'wal-lost.db')
    fs.copyFileSync(f, lost) // without its -wal
    await refused(t, lost, /did not close it, and its write-ahead log .*wal-lost\.db-wal is gone/)
    const again = await serve(t, f)
    t.equal(again.answer.state, 'current', 'with its log: starts')
    await stopped(t, again.served)
  })

  // A running serve reads its state through SQLite's page cache (better-sqlite3 builds it with
  // SQLITE_DEFAULT_CACHE_SIZE=-16000: 16,000 KiB) and writes it through its write-ahead log; with the
  // exclusive lock nothing tells it the file changed. Pages it holds are never read again, so damage
  // underneath a small state goes unseen until the next start's quick_check. It finds damage while
  // running when it reads a page it does not hold: a busy state larger than the cache. Here 450,000
  // nonces of recent requests make the nonces' index (the autoindex on the nonce) ~21 MB. quick_check at
  // start reads every page, each b-tree from its right end leftwards, so a leaf near that index's right
  // end is read early and followed by more than 16 MB of others: it is no longer held. The mover's
  // random nonces go to the index's last leaf (every nonce of the fixture starts 00000000), so a request
  // whose nonce sorts into a leaf ~1% from the right end is certain to make serve read garbage.
  await t.test('damage found while serving: serve stops with 13 and one line; the mover\'s long poll ends unanswered', async (t) => {
    const f = copy('busy.db')
    const nonces = 450_000
    const nonceAt = (i: number) => `00000000${i.toString(16).padStart(24, '0')}`
    const sql = new Database(f)
    const add = sql.prepare('INSERT INTO nonces (nonce, expires_at) VALUES (?, ?)')
    const expiry = Date.now() + 300_000
    sql.transaction(() => {
      for (let i = 0; i < nonces; i++) add.run(nonceAt(2 * i), expiry)
    })()
    sql.close()
    t.ok(fs.statSync(f).size > 40e6, `a busy state of ${(fs.statSync(f).size / 1e6).toFixed(0)} MB (beyond SQLite's 16 MB page cache)`)

    const served = await startServe(t, [...serveArgs(f), '--log-level', 'debug'])
    const client = new ConfigClient(`${served.url}/nightly`, KEY)
    t.teardown(() => client.close())
    const before = await client.config()
    t.equal(before.state, 'current', 'serve started on the busy state: current')
    const poll = client.config(before.configId, 30_000).then((a) => a, (err: Error) => err)
    // The poll is held once serve logged it as authenticated (routing is synchronous from there).
    const requests = () => served.stderr().split('\n').filter((l) => l.includes('"msg":"request"')).length
    while (requests() < 2) await new Promise((r) => setTimeout(r, 20))

    const fd = fs.openSync(f, 'r+')
    const ff = Buffer.alloc(PAGE, 0xff) // page type 0xff: no b-tree page, whatever page SQLite reads
    for (let p = 1; p < fs.fstatSync(fd).size / PAGE; p++) fs.writeSync(fd, ff, 0, PAGE, p * PAGE)
    fs.closeSync(fd)

    const target = '/images/nightly/config'
    const nonce = nonceAt(2 * (nonces - nonces / 100) + 1) // new: between two of the fixture's
    const touched = await send(served.url, 'GET', target, signRequest(KEY, 'GET', target, '', Date.now(), nonce) as unknown as Record<string, string>)
      .then((r) => r, (err: Error) => err)
    const exited = await Promise.race([served.exited, new Promise<{ code: null }>((r) => setTimeout(() => r({ code: null }), 20_000))])
    t.equal(exited.code, ExitCode.StateDamaged, `serve exited ${ExitCode.StateDamaged} (StateDamaged)`)
    t.ok(touched instanceof Error, `the request that found the damage got no answer: ${touched instanceof Error ? touched.message : touched.status}`)
    const answer = await poll
    t.ok(answer instanceof Error, `the held long poll got no answer, its connection ended: ${answer instanceof Error ? answer.message : answer.state}`)
    const lines = served.stderr().trim().split('\n').filter((l) => !l.startsWith('{'))
    t.equal(lines.length, 1, `one line besides the log: ${lines.join(' | ')}`)
    t.match(lines[0], `extfs: state database ${f} is damaged (database disk image is malformed): move it aside`, 'naming the file, the damage and what to do')
    t.notMatch(served.stderr(), /"msg":"request failed"|\n\s+at /, 'no request failure logged, no stack')
  })

  // An old copy of the state, taken while the image was current.
  const old = copy('old-copy.db')
  const remap = '/images/nightly/remap'
  let captured: Record<string, string> = {}

  await t.test('a request is captured; the image is released', async (t) => {
    const s = await serve(t, db)
    captured = signRequest(KEY, 'POST', remap) as unknown as Record<string, string>
    const first = await send(s.served.url, 'POST', remap, captured)
    t.not(first.status, 401, `the captured request was accepted when sent (${first.status})`)
    const replay = await send(s.served.url, 'POST', remap, captured)
    t.equal(replay.status, 401, 'replayed to the same serve: refused')
    writeRecord(recordFile, configId, 'released')
    t.equal((await s.client.config(configId, 10_000)).state, 'released', 'serve saw the release')
    await stopped(t, s.served)
  })

  await t.test('an old copy of the state restored after the release: released, and the captured request is refused', async (t) => {
    fs.copyFileSync(old, db)
    const s = await serve(t, db)
    t.equal(s.answer.state, 'released', 'the record says released: released')
    const replay = await send(s.served.url, 'POST', remap, captured)
    t.equal(replay.status, 401, 'the replay is refused (the old copy never saw its nonce)')
    t.match(replay.body, /signed before this serve started/)
    await stopped(t, s.served)
  })

  await t.test('garbage record, state remembers the release: still released', async (t) => {
    fs.writeFileSync(recordFile, '\u0000\u0001 not a record {')
    const s = await serve(t, db)
    t.equal(s.answer.state, 'released', 'released is final')
    await stopped(t, s.served)
  })

  await t.test('old copy (which says current) and garbage record: unknown, never current; mount refused', async (t) => {
    fs.copyFileSync(old, db)
    const s = await serve(t, db)
    t.equal(s.answer.state, 'unknown', 'unknown')
    t.match(s.answer.reason, /^config-ID record .* is not valid JSON$/, 'with the reason')
    await mountRefused(t, s.served.url)
    t.equal((await send(s.served.url, 'POST', remap, captured)).status, 401, 'the captured request is refused')
    await stopped(t, s.served)
  })

  await t.test('state lost (removed) and garbage record: a fresh state, unknown, mount refused, replay refused', async (t) => {
    fs.rmSync(db)
    const s = await serve(t, db)
    t.ok(fs.existsSync(db), 'where no file is, a fresh state is created')
    t.equal(s.answer.state, 'unknown', 'unknown, not current')
    await mountRefused(t, s.served.url)
    const replay = await send(s.served.url, 'POST', remap, captured)
    t.equal(replay.status, 401, 'the captured request is refused by the fresh state')
    t.match(replay.body, /signed before this serve started/)
    await stopped(t, s.served)
  })
})
