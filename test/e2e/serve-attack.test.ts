// `extfs serve` attacked without the key (issue 18, "Exhaustion without the key"), on loopback: the
// attacker on 127.0.0.2 (and .3 to .9 where it takes several addresses), the mover on 127.0.0.1, the
// real serve binary. Thousands of POSTs announcing 64 KiB bodies are cut off unread and serve's memory
// stays bounded; idle connections over the per-address cap, and over the total cap (which follows the
// descriptor limit), are closed at once and the rest by the headers (or TLS handshake) timeout, and
// serve never runs out of descriptors; thousands of refused requests with 15 KB URLs add a few lines
// to the log. Through every attack from one address a mover is answered, its long polls too; after
// one from many addresses that fills the total cap, a real `extfs mount` from the mover succeeds once
// serve has cut the attackers. Every socket is destroyed at the end.
import t from 'tap'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import tls from 'node:tls'
import { runOk } from '../helpers/exec'
import { ensureUnmounted, EXTFS, extfs, startServe, type Served } from '../helpers/extfs'
import { createLoopFs, destroyLoopFs, remountReadOnly, sleep } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { KEY, signedImage } from '../helpers/serve-image'
import { sample, scrapeMetrics } from '../helpers/prometheus'
import { ConfigClient } from '../../src/service/client'
import { descriptorLimit, HANDSHAKE_TIMEOUT_MS, HEADERS_TIMEOUT_MS, TIMEOUT_CHECK_MS } from '../../src/service/connections'

const ATTACKER = '127.0.0.2'
/** Attackers on eight addresses: each under its per-address cap, together over a total cap. */
const ATTACKERS = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`)
const MiB = 1024 * 1024
/** Ports of this test (its ranges on the shared test machine). */
const PORT_WIDE = 17901
const PORT_DEFAULT = 17902
const PORT_TOTAL = 17910
const PORT_NOFILE = 17911
const PORT_TLS = 17912
/** The descriptor limit (RLIMIT_NOFILE) of the serve whose total cap follows it: half of it. */
const NOFILE = 512
/** Long enough for a connection to be cut by a timeout of `ms` (the headers timeout is checked every TIMEOUT_CHECK_MS). */
const cutWithin = (ms: number) => ms + 2 * TIMEOUT_CHECK_MS + 1000

/** serve's JS heap in use, bytes, from its --metrics-listen (prom-client's default metrics). */
async function heapUsed(metricsUrl: string): Promise<number> {
  return sample(await scrapeMetrics(metricsUrl), 'nodejs_heap_size_used_bytes')
}

/** serve's resident memory, bytes. */
function rss(pid: number): number {
  const m = /^VmRSS:\s+([0-9]+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m![1]) * 1024
}

/** How many descriptors `pid` has open. */
function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}

/** The largest value of `sample()` seen every 20 ms until stop(). */
function peakOf(sample: () => number): { peak: () => number; stop: () => void } {
  let peak = sample()
  const timer = setInterval(() => (peak = Math.max(peak, sample())), 20)
  return { peak: () => Math.max(peak, sample()), stop: () => clearInterval(timer) }
}

/** The fields of serve's `serving` log line. */
function servingLine(served: Served): Record<string, unknown> {
  return JSON.parse(served.stderr().split('\n').find((l) => l.includes('"msg":"serving"'))!)
}

/** A connection from an attacker's address, with whether (and when) serve closed it and what it answered. */
interface AttackSocket {
  socket: net.Socket
  closedByServe: boolean
  closedAt?: number
  answer: string
}

function watched(socket: net.Socket): AttackSocket {
  const s: AttackSocket = { socket, closedByServe: false, answer: '' }
  socket.on('data', (c: Buffer) => {
    if (s.answer.length < 64) s.answer += c.toString('latin1')
  })
  socket.on('error', () => undefined)
  socket.once('close', () => {
    s.closedByServe = true
    s.closedAt = Date.now()
  })
  return s
}

function connectFrom(port: number, from: string, send?: string): Promise<AttackSocket> {
  return new Promise((resolve) => {
    const s = watched(net.connect({ port, host: '127.0.0.1', localAddress: from }))
    s.socket.once('connect', () => {
      if (send !== undefined) s.socket.write(send)
      resolve(s)
    })
    // Refused at connect: resolved all the same, as closed.
    s.socket.once('close', () => resolve(s))
  })
}

/** `n` connections from `from` (default the attacker), `batch` at a time, each sending `send` (default nothing). */
async function flood(port: number, n: number, opts: { send?: string; from?: string; batch?: number } = {}): Promise<AttackSocket[]> {
  const batch = opts.batch ?? 500
  const all: AttackSocket[] = []
  for (let i = 0; i < n; i += batch) all.push(...(await Promise.all(Array.from({ length: Math.min(batch, n - i) }, () => connectFrom(port, opts.from ?? ATTACKER, opts.send)))))
  return all
}

/** A TLS client from `from` that completes its handshake, then sends a request's headers a line a second, never ending them. */
function slowHeaders(port: number, from: string): Promise<AttackSocket> {
  return new Promise((resolve, reject) => {
    const s = watched(tls.connect({ socket: net.connect({ port, host: '127.0.0.1', localAddress: from }), rejectUnauthorized: false }))
    let drip: NodeJS.Timeout | undefined
    s.socket.once('close', () => clearInterval(drip))
    s.socket.once('secureConnect', () => {
      s.socket.write('GET /images HTTP/1.1\r\nHost: 127.0.0.1\r\n')
      drip = setInterval(() => s.socket.write(`X-Slow: ${Date.now()}\r\n`), 1000)
      resolve(s)
    })
    s.socket.once('close', () => reject(new Error('closed before its TLS handshake was done')))
  })
}

function closed(sockets: AttackSocket[]): number {
  return sockets.filter((s) => s.closedByServe).length
}

function destroyAll(sockets: AttackSocket[]): void {
  for (const s of sockets) s.socket.destroy()
}

/** Waits until `cond` holds or `ms` passed; whether it held. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await sleep(50)
  return cond()
}

/**
 * A mover on 127.0.0.1 with a fresh client (so fresh connections): one plain config answer and `polls`
 * long polls of `waitMs` held at once, all answered. `ca`: the certificate it trusts over https.
 */
async function moverAnswered(url: string, polls: number, waitMs: number, ca?: Buffer): Promise<boolean> {
  const client = new ConfigClient(url, KEY, { ca })
  try {
    const now = await client.config()
    const held = await Promise.all(Array.from({ length: polls }, () => client.config(now.configId, waitMs)))
    return now.state === 'current' && held.every((a) => a.configId === now.configId)
  } catch {
    return false
  } finally {
    client.close()
  }
}

/** An ext4 image on a loop device with one file, exported with the key to `dir`/real/nightly.json, for a real `extfs mount`. */
async function realImage(t: { teardown(fn: () => unknown): void }, dir: string, keyFile: string): Promise<{ manifest: string; bytes: Buffer }> {
  const fs = await createLoopFs({ fs: 'ext4' })
  t.teardown(() => destroyLoopFs(fs))
  const data = path.join(fs.mountpoint, 'data')
  const bytes = seededBytes(18, 256 * 1024)
  mkdirSync(data)
  writeFileSync(path.join(data, 'file'), bytes)
  await remountReadOnly(fs)
  mkdirSync(path.join(dir, 'real'))
  const manifest = path.join(dir, 'real', 'nightly.json')
  await runOk(EXTFS, ['export', data, '--output', manifest, '--frozen-image', 'none', '--key', keyFile])
  return { manifest, bytes }
}

t.test('extfs serve without the key: memory, descriptors and log stay bounded; movers are answered', async (t) => {
  const { dir, manifest } = signedImage('extfs-attack-')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'key')
  writeFileSync(keyFile, KEY)
  const cert = path.join(dir, 'cert.pem')
  const certKey = path.join(dir, 'cert.key')
  const [real] = await Promise.all([
    realImage(t, dir, keyFile),
    runOk('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', certKey, '-out', cert]),
  ])
  const ca = readFileSync(cert)
  const serveArgs = (db: string, port: number, extra: string[], image = manifest) => ['--key', keyFile, '--state', path.join(dir, db), '--interval', '0', '--listen', `127.0.0.1:${port}`, ...extra, image]
  const open: AttackSocket[][] = []
  t.teardown(() => open.forEach(destroyAll))
  const [wide, serve, capped, limited] = await Promise.all([
    // The per-address cap lifted, so that every attacking connection reaches the HTTP layer.
    startServe(t, serveArgs('wide.db', PORT_WIDE, ['--max-connections', '8000', '--max-connections-per-client', '8000', '--metrics-listen', '127.0.0.1:0'])),
    startServe(t, serveArgs('default.db', PORT_DEFAULT, [])),
    startServe(t, serveArgs('total.db', PORT_TOTAL, ['--max-connections', '100'])),
    // The default caps under a low descriptor limit, serving an image a real mount can read.
    startServe(t, serveArgs('nofile.db', PORT_NOFILE, [], real.manifest), { nofile: NOFILE }),
    startServe(t, serveArgs('tls.db', PORT_TLS, ['--cert', cert, '--tls-key', certKey])),
  ])

  t.test('4,000 POSTs announcing 64 KiB bodies: cut off unread, memory bounded and given back', async (t) => {
    const pid = wide.child.pid!
    const before = rss(pid)
    const heapBefore = await heapUsed(wide.metricsUrl!)
    const memory = peakOf(() => rss(pid))
    t.teardown(memory.stop)
    const post = `POST /images/nightly/remap HTTP/1.1\r\nHost: x\r\nContent-Length: ${64 * 1024}\r\n\r\n${'b'.repeat(16 * 1024)}`
    const first = await flood(PORT_WIDE, 2000, { send: post })
    open.push(first)
    const mover = moverAnswered(`http://127.0.0.1:${PORT_WIDE}/nightly`, 8, 1000)
    const second = await flood(PORT_WIDE, 2000, { send: post })
    open.push(second)
    const all = [...first, ...second]
    t.ok(await mover, 'a mover on 127.0.0.1 is answered during the flood, 8 long polls too')
    t.ok(await until(() => closed(all) === all.length, 5000), `serve closed all ${all.length} connections (${closed(all)} closed)`)
    const refused = all.filter((s) => s.answer.startsWith('HTTP/1.1 413')).length
    t.ok(refused > 3900, `${refused} of ${all.length} answered 413`)
    destroyAll(all)
    memory.stop()
    const peak = memory.peak()
    // Once the burst ended (a second without connections), serve collects and trims (src/service/reclaim.ts).
    const given = () => wide.stderr().split('\n').find((l) => l.includes('"msg":"a burst of connections ended: memory given back"'))
    t.ok(await until(() => given() !== undefined, 5000), `serve says it gave the burst's memory back: ${given()}`)
    const after = rss(pid)
    const heapAfter = await heapUsed(wide.metricsUrl!)
    t.comment(`serve RSS: before ${(before / MiB).toFixed(1)} MiB, during ${(peak / MiB).toFixed(1)} MiB, after ${(after / MiB).toFixed(1)} MiB; JS heap in use ${(heapBefore / MiB).toFixed(1)} → ${(heapAfter / MiB).toFixed(1)} MiB`)
    t.ok(peak - before < 100 * MiB, `RSS during the flood within 100 MiB of its start (+${((peak - before) / MiB).toFixed(1)} MiB)`)
    t.ok(heapAfter - heapBefore < 4 * MiB, `the JS heap in use back within 4 MiB of its start (${((heapAfter - heapBefore) / MiB).toFixed(1)} MiB): nothing of the connections is kept`)
    t.ok(after - before < 40 * MiB, `RSS after the flood within 40 MiB of its start (+${((after - before) / MiB).toFixed(1)} MiB)`)
  })

  t.test('idle connections from three addresses, each under its cap: those over --max-connections 100 closed at once; a mover answered once they close', async (t) => {
    t.match(servingLine(capped), { maxConnections: 100, maxConnectionsPerClient: 64 }, 'the serving line names the caps')
    const pid = capped.child.pid!
    const fdsBefore = openFds(pid)
    const idle = (await Promise.all(ATTACKERS.slice(0, 3).map((from) => flood(PORT_TOTAL, 50, { from })))).flat()
    open.push(idle)
    await until(() => closed(idle) >= 50, 2000)
    await sleep(300)
    t.equal(closed(idle), 50, '150 opened: 50 closed at once, 100 held')
    const fds = openFds(pid) - fdsBefore
    t.ok(fds <= 100, `serve holds ${fds} descriptors more than before, at most one per held connection`)
    destroyAll(idle)
    await sleep(200)
    t.ok(await moverAnswered(`http://127.0.0.1:${PORT_TOTAL}/nightly`, 8, 200), 'once they closed, a mover on 127.0.0.1 is answered at once, 8 long polls too')
  })

  // What only a timeout ends, on three serves at once: the waits overlap.
  t.test('connections that only a timeout ends, on three serves at once', { jobs: 3 }, async (t) => {
    t.test('500 idle connections from one address: those over the cap closed at once, a mover still answered', async (t) => {
      t.equal(servingLine(serve).maxConnectionsPerClient, 64, 'the serving line names the per-client cap')
      const idle = await flood(PORT_DEFAULT, 500)
      open.push(idle)
      await until(() => closed(idle) >= 436, 2000)
      await sleep(300)
      t.equal(closed(idle), 500 - 64, '436 closed at once, 64 held')
      t.ok(await moverAnswered(`http://127.0.0.1:${PORT_DEFAULT}/nightly`, 8, 500), 'a mover on 127.0.0.1 is answered, 8 long polls too')
      const waited = Date.now()
      t.ok(await until(() => closed(idle) === 500, cutWithin(HEADERS_TIMEOUT_MS)), 'the 64 held closed by the headers timeout')
      t.comment(`idle connections: 500 opened, 436 cut at once, 64 closed ${((Date.now() - waited) / 1000).toFixed(1)} s later`)
      destroyAll(idle)
    })

    t.test('TLS: idle connections that never start a handshake, and a client that sends its headers slowly, are cut; a mover over TLS is answered throughout', async (t) => {
      const url = `https://127.0.0.1:${PORT_TLS}/nightly`
      const slow = await slowHeaders(PORT_TLS, ATTACKERS[1]!)
      const slowOpened = Date.now()
      open.push([slow])
      const idle = await flood(PORT_TLS, 100)
      open.push(idle)
      const opened = Date.now()
      await until(() => closed(idle) >= 36, 2000)
      await sleep(300)
      t.equal(closed(idle), 100 - 64, '100 opened: 36 closed at once, 64 held')
      const moverAsked: boolean[] = []
      const done = until(() => closed(idle) === 100 && slow.closedByServe, cutWithin(Math.max(HANDSHAKE_TIMEOUT_MS, HEADERS_TIMEOUT_MS)))
      let waiting = true
      void done.then(() => (waiting = false))
      while (waiting) {
        moverAsked.push(await moverAnswered(url, 2, 200, ca))
        await sleep(1000)
      }
      await done
      const after = (at: number | undefined, from: number) => (at === undefined ? 'never' : `${((at - from) / 1000).toFixed(1)} s after connecting`)
      const lastIdle = idle.every((s) => s.closedAt !== undefined) ? Math.max(...idle.map((s) => s.closedAt!)) : undefined
      t.comment(`TLS: the 64 idle closed ${after(lastIdle, opened)}; the slow sender ${after(slow.closedAt, slowOpened)}, answered ${JSON.stringify(slow.answer.split('\r\n')[0])}`)
      t.ok(lastIdle !== undefined && lastIdle - opened < cutWithin(HANDSHAKE_TIMEOUT_MS), 'the 64 held closed by the handshake timeout')
      const slowFor = (slow.closedAt ?? Infinity) - slowOpened
      t.ok(slowFor >= HEADERS_TIMEOUT_MS - 1000 && slowFor < cutWithin(HEADERS_TIMEOUT_MS), 'the slow sender held until the headers timeout, and closed by it')
      t.ok(moverAsked.length >= 5 && moverAsked.every(Boolean), `a mover over TLS answered each of ${moverAsked.length} times it asked, once a second`)
    })

    t.test(`${ATTACKERS.length} x 400 idle connections from ${ATTACKERS.length} addresses, serve's descriptors limited to ${NOFILE}: it never runs out; a real mount succeeds once serve cut them`, async (t) => {
      const pid = limited.child.pid!
      t.equal(descriptorLimit(`/proc/${pid}/limits`), NOFILE, `serve runs with ${NOFILE} descriptors`)
      t.match(servingLine(limited), { maxConnections: NOFILE / 2, maxConnectionsPerClient: 64 }, 'its total cap is half its descriptor limit')
      const fds = peakOf(() => openFds(pid))
      t.teardown(fds.stop)
      const idle = (await Promise.all(ATTACKERS.map((from) => flood(PORT_NOFILE, 400, { from, batch: 100 })))).flat()
      open.push(idle)
      const floodEnded = Date.now()
      await sleep(500)
      const held = idle.length - closed(idle)
      t.ok(held > 0 && held <= NOFILE / 2, `${idle.length} opened: ${held} held, at most the total cap`)
      const mnt = path.join(dir, 'mnt')
      mkdirSync(mnt)
      t.teardown(() => ensureUnmounted(mnt))
      const mount = () => extfs(['mount', `http://127.0.0.1:${PORT_NOFILE}/nightly`, mnt, '--key', keyFile, '--log-file', path.join(dir, 'view.log')])
      const during = await mount()
      t.comment(`extfs mount while ${held} are held: exit ${during.code} ${during.stderr.trim().split('\n').pop()}`)
      await ensureUnmounted(mnt)
      t.ok(await until(() => closed(idle) === idle.length, cutWithin(HEADERS_TIMEOUT_MS)), 'the held closed by the headers timeout')
      fds.stop()
      t.ok(fds.peak() < NOFILE, `serve's open descriptors peaked at ${fds.peak()}, under its limit of ${NOFILE}`)
      const r = await mount()
      t.equal(r.code, 0, `extfs mount from 127.0.0.1 succeeds ${((Date.now() - floodEnded) / 1000).toFixed(1)} s after the flood: ${r.stderr}`)
      if (r.code === 0) t.ok(readFileSync(path.join(mnt, 'file')).equals(real.bytes), 'and reads the file')
      await ensureUnmounted(mnt)
    })
  })

  t.test('5,000 refused requests with 15 KB URLs: a few lines of log', async (t) => {
    const logBefore = serve.stderr().length
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32, localAddress: ATTACKER })
    t.teardown(() => agent.destroy())
    const target = `/images/nightly/config?x=${'a'.repeat(15_000)}`
    let answered = 0
    const one = () => new Promise<void>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: PORT_DEFAULT, path: target, agent }, (res) => {
        if (res.statusCode === 401) answered++
        res.resume()
        res.on('end', resolve)
      }).on('error', reject)
    })
    const N = 5000
    for (let i = 0; i < N; i += 250) await Promise.all(Array.from({ length: 250 }, one))
    t.equal(answered, N, 'every one refused 401')
    const grown = serve.stderr().length - logBefore
    t.comment(`log: ${N} refused requests with ${target.length}-byte URLs added ${grown} bytes`)
    t.ok(grown < 4096, `the log grew by ${grown} bytes, under 4 KiB`)
    const line = serve.stderr().slice(logBefore).split('\n').find((l) => l.includes('"reason":"unauthenticated"'))
    t.ok(line && line.length < 1024 && line.includes(`…(${target.length} chars)`), `one short line, its sample URL cut: ${line?.slice(0, 300)}`)
    agent.destroy()
    // Stopping logs what the period still counted: every refusal is in a count.
    await serve.stop()
    const counts = serve.stderr().slice(logBefore).split('\n').filter((l) => l.includes('"reason":"unauthenticated"')).map((l) => JSON.parse(l).count as number)
    t.equal(counts.reduce((a, b) => a + b, 0), N, `the counts of ${counts.length} lines add up to ${N}`)
  })
})
