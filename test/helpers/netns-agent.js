// What a test does *from inside* a network namespace, where the test process itself cannot go: run as
//   nsenter --net=/run/netns/<ns> node netns-agent.js <verb> <json-args>
// Verbs print one JSON line on stdout:
//   connect {host, port, timeoutMs}              -> {connected, code?}          a TCP connection attempt
//   request {url, method?, headers}              -> {status, headers, body}     one raw HTTP request, the
//                                                   path sent exactly as given (no client library)
//   client  {baseUrl, keyFile, calls: [{call, args?}]} -> [{ok, value?} | {ok:false, name, message, status?}]
//                                                   calls of one ConfigClient (the mover's, from dist/)
//   fake    {host, port, mode, upstream?, keyFile?} -> {listening: url}, then serves until killed:
//       mode "forge":   answers 200 with a plausible config, MAC'd with a key of its own
//       mode "tamper":  relays to upstream (the real serve) and changes one byte of the answer's body
//       mode "replay":  relays the first request, then answers every later one with that first answer
// Plain JS (no TypeScript loader under nsenter): the client is dist/service/client.js, built by tsc.
'use strict'
const fs = require('node:fs')
const http = require('node:http')
const net = require('node:net')
const path = require('node:path')
const crypto = require('node:crypto')

const DIST = path.resolve(__dirname, '..', '..', 'dist')
const [verb, rawArgs] = process.argv.slice(2)
const args = JSON.parse(rawArgs || '{}')
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')

function connect({ host, port, timeoutMs = 3000 }) {
  const sock = net.connect({ host, port })
  const timer = setTimeout(() => {
    sock.destroy()
    out({ connected: false, code: 'TIMEOUT' })
  }, timeoutMs)
  sock.once('connect', () => {
    clearTimeout(timer)
    sock.destroy()
    out({ connected: true })
  })
  sock.once('error', (err) => {
    clearTimeout(timer)
    out({ connected: false, code: err.code || err.message })
  })
}

function request({ url, method = 'GET', headers = {} }) {
  const u = new URL(url)
  // The path as given: new URL() would normalise it, and the signature is over what is sent.
  const target = url.slice(u.origin.length)
  const req = http.request({ hostname: u.hostname, port: u.port, path: target, method, headers, agent: false }, (res) => {
    let body = ''
    res.on('data', (c) => (body += c))
    res.on('end', () => out({ status: res.statusCode, headers: res.headers, body }))
  })
  req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')))
  req.on('error', (err) => out({ status: -1, error: err.code || err.message }))
  req.end()
}

async function client({ baseUrl, keyFile, calls, timeoutMs }) {
  const { ConfigClient } = require(path.join(DIST, 'service', 'client.js'))
  const { readKeyFile } = require(path.join(DIST, 'manifest', 'sign.js'))
  const c = new ConfigClient(baseUrl, readKeyFile(keyFile), timeoutMs ? { timeoutMs } : {})
  const results = []
  for (const { call, args: callArgs = [] } of calls) {
    try {
      const v = await c[call](...callArgs)
      results.push({ ok: true, value: Buffer.isBuffer(v) ? { bytes: v.length, sha256: crypto.createHash('sha256').update(v).digest('hex') } : v })
    } catch (err) {
      results.push({ ok: false, name: err.name, message: err.message, status: err.status })
    }
  }
  c.close()
  out(results)
}

/** Relays one request to upstream; resolves with the answer (status, headers, body). */
function relay(upstream, req, body) {
  const u = new URL(upstream)
  return new Promise((resolve, reject) => {
    const headers = { ...req.headers, host: u.host }
    const r = http.request({ hostname: u.hostname, port: u.port, path: req.url, method: req.method, headers, agent: false }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
    })
    r.on('error', reject)
    r.end(body)
  })
}

function fake({ host, port, mode, upstream }) {
  const ownKey = crypto.randomBytes(32)
  let first
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', async () => {
      try {
        let a
        if (mode === 'forge') {
          const body = Buffer.from(JSON.stringify({ image: 'c0'.padEnd(32, '0'), configId: 'c9'.padEnd(32, '9'), state: 'current', deltas: [], leaseMs: 3_600_000, heldMs: 0 }))
          const nonce = String(req.headers['x-extfs-nonce'] || '')
          const mac = crypto.createHmac('sha256', ownKey).update(`200\n${nonce}\n${crypto.createHash('sha256').update(body).digest('hex')}`).digest('hex')
          a = { status: 200, headers: { 'content-type': 'application/json', 'x-extfs-auth': mac }, body }
        } else if (mode === 'tamper') {
          a = await relay(upstream, req, Buffer.concat(chunks))
          const body = Buffer.from(a.body)
          body[Math.floor(body.length / 2)] ^= 0x01
          a = { ...a, body }
        } else if (mode === 'replay') {
          a = first ?? (first = await relay(upstream, req, Buffer.concat(chunks)))
        } else throw new Error(`unknown mode ${mode}`)
        const headers = { ...a.headers }
        delete headers['content-length']
        delete headers['transfer-encoding']
        delete headers.connection
        delete headers['keep-alive']
        res.writeHead(a.status, { ...headers, 'content-length': a.body.length })
        res.end(a.body)
      } catch (err) {
        res.writeHead(502)
        res.end(String(err))
      }
    })
  })
  server.listen(port, host, () => out({ listening: `http://${host}:${server.address().port}` }))
  process.on('SIGTERM', () => server.close(() => process.exit(0)))
}

const verbs = { connect, request, client, fake }
if (!verbs[verb]) {
  process.stderr.write(`netns-agent: unknown verb ${verb}\n`)
  process.exit(2)
}
verbs[verb](args)
