// `extfs serve` attacked without the key (issue 18, "Exhaustion without the key"), on loopback: the
// attacker on 127.0.0.2, the mover on 127.0.0.1, the real serve binary. Thousands of POSTs announcing
// 64 KiB bodies are cut off unread and serve's memory stays bounded; idle connections over the
// per-address cap are closed at once and the rest by the headers timeout; thousands of refused
// requests with 15 KB URLs add a few lines to the log. Through all of it a mover is answered, its
// long polls too. Every socket is destroyed at the end.
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { startServe } from '../helpers/extfs'
import { sleep } from '../helpers/loopfs'
import { KEY, signedImage } from '../helpers/serve-image'
import { ConfigClient } from '../../src/service/client'
import { HEADERS_TIMEOUT_MS, TIMEOUT_CHECK_MS } from '../../src/service/connections'

const ATTACKER = '127.0.0.2'
const MiB = 1024 * 1024
/** Ports of this test (its range on the shared test machine). */
const PORT_WIDE = 17901
const PORT_DEFAULT = 17902

/** serve's resident memory, bytes. */
function rss(pid: number): number {
  const m = /^VmRSS:\s+([0-9]+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m![1]) * 1024
}

/** A TCP connection from the attacker's address, with when (if ever) serve closed it and what it answered. */
interface AttackSocket {
  socket: net.Socket
  closedByServe: boolean
  answer: string
}

function connectFrom(port: number, send?: string): Promise<AttackSocket> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: ATTACKER })
    const s: AttackSocket = { socket, closedByServe: false, answer: '' }
    socket.on('data', (c: Buffer) => {
      if (s.answer.length < 64) s.answer += c.toString('latin1')
    })
    socket.on('error', () => undefined)
    socket.once('close', () => (s.closedByServe = true))
    socket.once('connect', () => {
      if (send !== undefined) socket.write(send)
      resolve(s)
    })
    // Refused at connect: resolved all the same, as closed.
    socket.once('close', () => resolve(s))
  })
}

/** `n` connections from the attacker, `batch` at a time. */
async function flood(port: number, n: number, send?: string, batch = 500): Promise<AttackSocket[]> {
  const all: AttackSocket[] = []
  for (let i = 0; i < n; i += batch) all.push(...(await Promise.all(Array.from({ length: Math.min(batch, n - i) }, () => connectFrom(port, send)))))
  return all
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

/** A mover on 127.0.0.1: one plain config answer and `polls` long polls of `waitMs` held at once, all answered. */
async function moverAnswered(url: string, polls: number, waitMs: number): Promise<boolean> {
  const client = new ConfigClient(url, KEY)
  try {
    const now = await client.config()
    const held = await Promise.all(Array.from({ length: polls }, () => client.config(now.configId, waitMs)))
    return now.state === 'current' && held.every((a) => a.configId === now.configId)
  } finally {
    client.close()
  }
}

t.test('extfs serve without the key: memory, descriptors and log stay bounded; movers are answered', async (t) => {
  const { dir, manifest } = signedImage('extfs-attack-')
  t.teardown(() => require('node:fs').rmSync(dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'key')
  writeFileSync(keyFile, KEY)
  const serveArgs = (db: string, port: number, extra: string[]) => ['--key', keyFile, '--state', path.join(dir, db), '--interval', '0', '--listen', `127.0.0.1:${port}`, ...extra, manifest]
  const open: AttackSocket[][] = []
  t.teardown(() => open.forEach(destroyAll))
  // One with the per-address cap lifted, so that every attacking connection reaches the HTTP layer;
  // one with the default caps.
  const wide = await startServe(t, serveArgs('wide.db', PORT_WIDE, ['--max-connections', '8000', '--max-connections-per-client', '8000']))
  const serve = await startServe(t, serveArgs('default.db', PORT_DEFAULT, []))

  t.test('4,000 POSTs announcing 64 KiB bodies: cut off unread, memory bounded and given back', async (t) => {
    const pid = wide.child.pid!
    const before = rss(pid)
    let peak = before
    const sampler = setInterval(() => (peak = Math.max(peak, rss(pid))), 20)
    t.teardown(() => clearInterval(sampler))
    const post = `POST /images/nightly/remap HTTP/1.1\r\nHost: x\r\nContent-Length: ${64 * 1024}\r\n\r\n${'b'.repeat(16 * 1024)}`
    const first = await flood(PORT_WIDE, 2000, post)
    open.push(first)
    const mover = moverAnswered(`http://127.0.0.1:${PORT_WIDE}/nightly`, 8, 1000)
    const second = await flood(PORT_WIDE, 2000, post)
    open.push(second)
    const all = [...first, ...second]
    t.ok(await mover, 'a mover on 127.0.0.1 is answered during the flood, 8 long polls too')
    t.ok(await until(() => all.every((s) => s.closedByServe), 5000), `serve closed all ${all.length} connections (${all.filter((s) => s.closedByServe).length} closed)`)
    const refused = all.filter((s) => s.answer.startsWith('HTTP/1.1 413')).length
    t.ok(refused > 3900, `${refused} of ${all.length} answered 413`)
    destroyAll(all)
    clearInterval(sampler)
    await sleep(3000)
    const after = rss(pid)
    t.comment(`serve RSS: before ${(before / MiB).toFixed(1)} MiB, during ${(peak / MiB).toFixed(1)} MiB, after ${(after / MiB).toFixed(1)} MiB`)
    t.ok(peak - before < 100 * MiB, `RSS during the flood within 100 MiB of its start (+${((peak - before) / MiB).toFixed(1)} MiB)`)
    t.ok(after - before < 40 * MiB, `RSS after the flood within 40 MiB of its start (+${((after - before) / MiB).toFixed(1)} MiB)`)
  })

  t.test('500 idle connections from one address: those over the cap closed at once, a mover still answered', async (t) => {
    const serving = JSON.parse(serve.stderr().split('\n').find((l) => l.includes('"msg":"serving"'))!)
    t.equal(serving.maxConnectionsPerClient, 64, 'the serving line names the per-client cap')
    const idle = await flood(PORT_DEFAULT, 500)
    open.push(idle)
    await sleep(300)
    const closed = () => idle.filter((s) => s.closedByServe).length
    t.equal(closed(), 500 - 64, '436 closed at once, 64 held')
    t.ok(await moverAnswered(`http://127.0.0.1:${PORT_DEFAULT}/nightly`, 8, 500), 'a mover on 127.0.0.1 is answered, 8 long polls too')
    const waited = Date.now()
    t.ok(await until(() => closed() === 500, HEADERS_TIMEOUT_MS + 2 * TIMEOUT_CHECK_MS + 1000), 'the 64 held closed by the headers timeout')
    t.comment(`idle connections: 500 opened, 436 cut at once, 64 closed ${((Date.now() - waited) / 1000).toFixed(1)} s later`)
    destroyAll(idle)
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
