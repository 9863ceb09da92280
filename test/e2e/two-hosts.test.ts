// Validation across hosts, with two hosts on one machine: two network namespaces joined by a veth pair
// (test/helpers/netns.ts). The initiator's `extfs serve` runs in one, the mover in the other; traffic
// goes only between them. A real XFS (reflink) filesystem on a loop device, exported as clone sets.
//  - isolation: the mover reaches serve on the initiator's veth address only, not on its loopback;
//  - forged, replayed and tampered requests from the mover's host get 401 and no data; forged, tampered
//    and replayed *answers* (a fake initiator, a relay in front of the real one) are refused by the client;
//  - `extfs mount http://initiator/<image>` on the mover: tar of the view equals the image;
//  - the lease: serve stopped → opens served while the lease is fresh, ESTALE once it expired, served
//    again when serve is back (the same process continued, or a fresh one on the same state);
//  - serve killed, and the image released, in the middle of `extfs backup http://…`;
//  - a relocation (xfs_fsr on clones) published through serve and followed by the view: after a remap
//    asked from the mover (`POST …/remap`), and after none, by serve's own schedule (`--interval`);
//  - HTTPS: a view by `https://` with `--ca` (a throwaway CA); without it, trusting another CA, or with a
//    certificate for another address, the mount fails with one line naming the TLS problem, nothing mounted.
import t, { type Test } from 'tap'
import { ChildProcess, spawnSync } from 'node:child_process'
import { existsSync, promises as fsp, readdirSync, readFileSync, rmSync } from 'node:fs'
import * as path from 'node:path'
import { constants } from 'node:os'
import { run, runOk, RunResult } from '../helpers/exec'
import { EXTFS, ensureUnmounted, release } from '../helpers/extfs'
import { cleanupAtExit, isMounted, sleep, withLoopFs } from '../helpers/loopfs'
import { createHostPair, Host, HostPair } from '../helpers/netns'
import { populateEveryKind, seededBytes, writeInterleaved } from '../helpers/populate'
import { diffTrees, snapshotTree, Tree } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { overwrittenOldExtents } from '../helpers/moved'
import { signRequest } from '../../src/service/auth'
import { clearState, loadState, takeReport } from '../../src/mover/state'
import { processAlive } from '../../src/process'
import { ExitCode } from '../../src/errors'

const KiB = 1024
const AGENT = path.resolve(__dirname, '..', 'helpers', 'netns-agent.js')
const PORT = 7070 // the initiator's namespace is ours alone: no other listener can hold it
/** Serves over HTTPS (TLS_PORT, TLS_PORT + 1), and one remapping on its own schedule (PORT + 1..3 are the fake initiators'). */
const TLS_PORT = PORT + 10
const SCHEDULE_PORT = PORT + 20
const SCHEDULE_INTERVAL_S = 1
const LEASE_S = 2
/** Long enough after a lease of LEASE_S seconds for it to have expired, with a margin for a busy machine. */
const PAST_LEASE_MS = LEASE_S * 1000 + 1500
const NS = 1
/** Where a view by URL mirrors the initiator's answers (src/mover/remote.ts), one directory per process. */
const MIRRORS = '/run/extfs/remote'
const isSocket = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket'

// ---- helpers ------------------------------------------------------------------------------------

/** Runs the agent in a namespace; its one JSON line. */
async function agent<T = any>(host: Host | undefined, verb: string, args: object): Promise<T> {
  const argv = [AGENT, verb, JSON.stringify(args)]
  const r = host ? await host.run(process.execPath, argv, { timeoutMs: 60_000 }) : await run(process.execPath, argv, { timeoutMs: 60_000 })
  const line = r.stdout.trim().split('\n').pop()
  if (r.code !== 0 || !line) throw new Error(`agent ${verb}: exit ${r.code}: ${r.stderr.trim()}`)
  return JSON.parse(line) as T
}

interface Served {
  child: ChildProcess
  stderr: () => string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  running: () => boolean
}

/** `extfs serve` in the initiator's namespace on 0.0.0.0:port; resolves once it logged `serving`. */
async function startServe(host: Host, args: string[], teardown: (fn: () => unknown) => void, port = PORT): Promise<Served> {
  const child = host.spawn(EXTFS, ['serve', '--listen', `0.0.0.0:${port}`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const running = () => child.exitCode === null && child.signalCode === null
  teardown(async () => {
    if (running()) {
      child.kill('SIGKILL') // also when SIGSTOPped
      await exited
    }
  })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000)
    child.stderr!.on('data', (c: Buffer) => {
      err += c.toString()
      if (err.includes('"msg":"serving"')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`serve exited ${code}: ${err}`))
    })
  })
  return { child, stderr: () => err, exited, running }
}

/** The raw answer to one request sent from `host`. */
type Raw = { status: number; headers: Record<string, string>; body: string }
const headersOf = (h: object) => h as unknown as Record<string, string>

/** A 401 that gives nothing away: a one-line JSON error and nothing of the image. */
function refusedWithoutData(t: Test, r: Raw, name: string, secrets: string[]): void {
  t.equal(r.status, 401, `${name}: 401`)
  const body = JSON.parse(r.body)
  t.same(Object.keys(body), ['error'], `${name}: only an error`)
  t.equal(r.body.trimEnd().split('\n').length, 1, `${name}: one line`)
  for (const s of secrets) t.notOk(r.body.includes(s), `${name}: the answer does not contain ${s.slice(0, 12)}…`)
}

/** libuv has no name for ESTALE: node reports it as "Unknown system error -116". */
function errorName(e: NodeJS.ErrnoException): string {
  return e.errno === -constants.errno.ESTALE ? 'ESTALE' : e.code ?? String(e)
}

async function readOutcome(file: string, expected?: Buffer): Promise<string> {
  try {
    const b = await fsp.readFile(file)
    return expected && !b.equals(expected) ? 'wrong bytes' : 'ok'
  } catch (e) {
    return errorName(e as NodeJS.ErrnoException)
  }
}

/** Log lines (pino JSON), parsed; unparsable lines kept as {raw}. */
function parseLog(text: string): Array<Record<string, any>> {
  return text.split('\n').filter(Boolean).map((l) => {
    try {
      return JSON.parse(l)
    } catch {
      return { raw: l }
    }
  })
}

/** A view's log file, parsed. */
async function logLines(file: string): Promise<Array<Record<string, any>>> {
  return parseLog(await fsp.readFile(file, 'utf8').catch(() => ''))
}

/** A read retried for up to 10 s (a refusal may stand for a moment): 'ok', or the last outcome. */
async function retryRead(file: string, expected: Buffer): Promise<string> {
  let outcome = ''
  for (let i = 0; i < 10 && outcome !== 'ok'; i++) {
    if (i) await sleep(1000)
    outcome = await readOutcome(file, expected)
  }
  return outcome
}

/** The view's log line refusing opens whose reason matches, if any. */
async function refusal(logFile: string, reason: (r: string) => boolean): Promise<Record<string, any> | undefined> {
  return (await logLines(logFile)).find((l) => /refused/.test(l.msg) && typeof l.reason === 'string' && reason(l.reason))
}

async function waitFor(what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

interface TlsFiles {
  /** The CA that signed both server certificates, and one that signed nothing (the wrong one to trust). */
  ca: string
  otherCa: string
  /** Certificate and key for `ip` (subjectAltName IP: the client checks the address it connected to against it). */
  server: { cert: string; key: string }
  /** The same CA's certificate for another address: sound, but not for the host that presents it. */
  otherAddress: { cert: string; key: string }
}

/** A throwaway PKI in `dir` (EC P-256, valid for a day). */
async function makeTlsFiles(dir: string, ip: string, otherIp: string): Promise<TlsFiles> {
  const f = (name: string) => path.join(dir, name)
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  const selfSignedCa = (name: string, cn: string) =>
    runOk('openssl', ['req', '-x509', ...newKey, '-days', '1', '-subj', `/CN=${cn}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.pem`)])
  const signedByCa = async (name: string, addr: string, serial: number) => {
    await runOk('openssl', ['req', '-new', ...newKey, '-subj', `/CN=${addr}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)])
    await fsp.writeFile(f(`${name}.ext`), `subjectAltName=IP:${addr}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
    await runOk('openssl', ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', String(serial), '-days', '1',
      '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`)])
    return { cert: f(`${name}.pem`), key: f(`${name}.key`) }
  }
  await fsp.mkdir(dir, { recursive: true })
  await selfSignedCa('ca', 'extfs test CA')
  await selfSignedCa('other-ca', 'another test CA')
  return { ca: f('ca.pem'), otherCa: f('other-ca.pem'), server: await signedByCa('server', ip, 2), otherAddress: await signedByCa('other-address', otherIp, 3) }
}

/** Mirror directories (`<pid>-*`) whose process is gone: what a view that failed to start must not leave. */
function orphanMirrors(): string[] {
  const names = existsSync(MIRRORS) ? readdirSync(MIRRORS) : []
  return names.filter((n) => /^\d+-/.test(n) && !processAlive(Number(n.split('-')[0])))
}

/** Mountpoints in /proc/self/mountinfo under `dir`. */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === dir || m.startsWith(`${dir}/`)))
}

/**
 * The command `extfs backup` runs on the view: holds one file open, reads one, says it is ready and
 * waits for the test's go; then reads the held file and every file of the view, noting each outcome.
 * It shrugs off what it could not read and exits 0, as a careless shell loop would: `extfs backup`
 * itself must notice that the view refused opens and reads.
 */
const READER = `#!/bin/sh
F="$1"
exec 3< keep/held
cat first/one >/dev/null || exit 90
touch "$F/ready"
while [ ! -e "$F/go" ]; do sleep 0.1; done
if cat <&3 >/dev/null 2>"$F/held.err"; then echo ok >"$F/held"; else echo failed >"$F/held"; fi
find . -type f | sort | while read -r f; do
  if cat "$f" >/dev/null 2>>"$F/files.err"; then echo "ok $f"; else echo "failed $f"; fi
done >"$F/files"
exit 0
`

const RELOC_FILES = ['r0', 'r1', 'r2', 'r3']
const RELOC_SIZE = 1024 * KiB

/**
 * Last resort at exit (a crash, a signal): every view under `scratch` unmounted (`extfs umount`, lazily
 * if busy), its process (ours: it serves our mountpoint) stopped, its /run/extfs state and mirror
 * removed; then `scratch` itself.
 */
function forgetViewsSync(scratch: string): void {
  const views = mountsUnder(scratch).reverse().map((m) => ({ m, pid: loadState(m)?.pid }))
  for (const { m } of views) {
    spawnSync(EXTFS, ['umount', m], { stdio: 'ignore', timeout: 20_000 })
    if (isMounted(m)) spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 15_000 })
  }
  for (const { m, pid } of views) {
    if (pid === undefined) continue
    if (processAlive(pid)) process.kill(pid, 'SIGTERM')
    for (let i = 0; i < 20 && processAlive(pid); i++) spawnSync('sleep', ['0.1'])
    if (processAlive(pid)) process.kill(pid, 'SIGKILL')
    clearState(m, pid)
    takeReport(m, pid)
    for (const d of existsSync(MIRRORS) ? readdirSync(MIRRORS, { withFileTypes: true }) : []) {
      if (d.isDirectory() && d.name.startsWith(`${pid}-`)) rmSync(path.join(MIRRORS, d.name), { recursive: true, force: true })
    }
  }
  if (mountsUnder(scratch).length === 0) rmSync(scratch, { recursive: true, force: true })
}

// ---- the test -----------------------------------------------------------------------------------

t.test('two hosts: serve in one network namespace, the mover in another', async (t) => {
  const scratch = await fsp.realpath(await fsp.mkdtemp('/tmp/extfs-two-hosts-'))
  // Last resort on a crash: nothing may stay mounted under our scratch directory (views, backups' views).
  cleanupAtExit(() => forgetViewsSync(scratch), { first: true })
  const keyFile = path.join(scratch, 'key')
  await fsp.writeFile(keyFile, seededBytes(4242, 32).toString('hex'))
  const key = readFileSync(keyFile)
  const otherKey = Buffer.from(seededBytes(4343, 32).toString('hex'))
  const stateDb = path.join(scratch, 'serve.db')
  const tmp = path.join(scratch, 'tmp') // TMPDIR of extfs backup: its private mountpoints land here
  await fsp.mkdir(tmp)
  const views: string[] = []
  const manifests: string[] = []
  let hosts: HostPair | undefined
  const teardowns: Array<() => unknown> = []

  try {
    hosts = await createHostPair()
    const { initiator, mover } = hosts
    t.not(initiator.ip, mover.ip)
    t.match(initiator.ip, /^10\.\d+\.\d+\.\d+$/)
    const base = `http://${initiator.ip}:${PORT}`

    await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
      try {
        // ---- the image: every kind of file, plus files of our own for the lease and backup checks
        const data = path.join(fs.mountpoint, 'data')
        await fsp.mkdir(data)
        await populateEveryKind(data)
        const own = new Map<string, Buffer>()
        const put = async (rel: string, bytes: Buffer) => {
          await fsp.mkdir(path.dirname(path.join(data, rel)), { recursive: true })
          await fsp.writeFile(path.join(data, rel), bytes)
          own.set(rel, bytes)
        }
        await put('keep/held', seededBytes(1, 64 * KiB))
        await put('first/one', seededBytes(2, 32 * KiB))
        for (let i = 0; i < 8; i++) await put(`lease/l${i}`, seededBytes(10 + i, 24 * KiB + i))
        // Held open across the lease's end and read only then: larger than prefetch takes (1 MiB), so
        // no page of it can be cached ahead of that read (the small files beside it may be).
        await put('lease/held', seededBytes(20, 2 * 1024 * KiB + 3))
        await runOk('sync', ['-f', data])

        /** Exports `dir` as a clone set; `at`: the (sub)test the export's assertion belongs to. */
        const exportAs = async (name: string, dir = data, at: Test = t) => {
          const manifest = path.join(scratch, `${name}.json`)
          manifests.push(manifest)
          const exp = await initiator.run(EXTFS, ['export', dir, '--output', manifest, '--frozen-image', 'snapshot', '--key', keyFile])
          at.equal(exp.code, 0, `export ${name}: ${exp.stderr.trim()}`)
          return manifest
        }
        const nightly = await exportAs('nightly')
        // Nothing writes between the clone set and this snapshot: it is the image.
        const image = await snapshotTree(data, { timePrecisionNs: NS })
        const weekly = await exportAs('weekly')
        const c0 = JSON.parse(readFileSync(nightly, 'utf8')).configId as string

        /**
         * Fragmented files in a tree of their own (`<name>-data`), exported as image `name`: only this
         * image's clones share their blocks, so once xfs_fsr moved the clones, the owner's in-place
         * writes land on the image's old blocks.
         */
        const fragmentedImage = async (at: Test, name: string, seed: number) => {
          const dir = path.join(fs.mountpoint, `${name}-data`)
          await fsp.mkdir(dir)
          // 64 KiB at a time in turn, each write synced: every file ends up in many extents.
          await writeInterleaved(RELOC_FILES.map((n, i) => ({ file: path.join(dir, n), seed: seed + i })), RELOC_SIZE / (64 * KiB), 64 * KiB)
          const contents = new Map(await Promise.all(RELOC_FILES.map(async (n) => [n, await fsp.readFile(path.join(dir, n))] as [string, Buffer])))
          const manifest = await exportAs(name, dir, at)
          return { dir, manifest, contents, c0: JSON.parse(readFileSync(manifest, 'utf8')).configId as string, tree: await snapshotTree(dir, { timePrecisionNs: NS }) }
        }
        type FragmentedImage = Awaited<ReturnType<typeof fragmentedImage>>

        /**
         * The blocks of the image move under it: xfs_fsr defragments three of its four clones (each must
         * really move), then the owner overwrites its own files in place, so the blocks the clones left
         * now hold other bytes and a view still reading them would serve wrong ones.
         */
        const relocate = async (t: Test, img: FragmentedImage) => {
          const names = RELOC_FILES.map((n) => path.join(img.dir, n))
          const imagePath = JSON.parse(readFileSync(img.manifest, 'utf8')).frozenImage.imagePath as string
          // The image's clones are named by the original's inode number (src/frozen/clone-set.ts).
          const clones = await Promise.all(names.slice(0, 3).map(async (f) => path.join(imagePath, String((await fsp.stat(f)).ino))))
          for (const c of clones) {
            const before = (await runOk('filefrag', [c])).stdout
            await runOk(...initiator.wrap('xfs_fsr', ['-v', c]))
            const after = (await runOk('filefrag', [c])).stdout
            t.not(after, before, `xfs_fsr moved ${path.basename(c)}: ${before.trim().replace(/.*: /, '')} -> ${after.trim().replace(/.*: /, '')}`)
          }
          for (const [i, f] of names.entries()) {
            const fh = await fsp.open(f, 'r+')
            await fh.write(seededBytes(900 + i, RELOC_SIZE), 0, RELOC_SIZE, 0)
            await fh.sync()
            await fh.close()
          }
          t.ok((await overwrittenOldExtents(img.manifest, img.contents)) > 0, 'the image\'s old locations now hold other bytes (reading them would be wrong)')
        }

        const reloc = await fragmentedImage(t, 'reloc', 70)
        const serveArgs = ['--key', keyFile, '--state', stateDb, '--interval', '0', '--lease', String(LEASE_S), nightly, weekly, reloc.manifest]
        let served = await startServe(initiator, serveArgs, (fn) => teardowns.push(fn))

        await t.test('isolation: the mover reaches serve on the initiator\'s veth address only', async (t) => {
          t.same(await agent(initiator, 'connect', { host: '127.0.0.1', port: PORT }), { connected: true }, 'on the initiator, serve answers on 127.0.0.1')
          const loop = await agent(mover, 'connect', { host: '127.0.0.1', port: PORT })
          t.equal(loop.connected, false, `from the mover, 127.0.0.1:${PORT} is not the initiator's (${loop.code})`)
          t.same(await agent(mover, 'connect', { host: initiator.ip, port: PORT }), { connected: true }, `from the mover, ${initiator.ip}:${PORT} is`)
          // The machine's own namespace may route 10/8 somewhere (a default gateway can even accept the
          // connection): what matters is that no answer of serve's comes back there.
          const [outside] = await agent(undefined, 'client', { baseUrl: `${base}/nightly`, keyFile, calls: [{ call: 'images' }], timeoutMs: 3000 })
          t.equal(outside.ok, false, `from the machine's own namespace, serve at ${base} does not answer: ${outside.message}`)
          const hostAddrs = (await runOk('ip', ['-4', '-o', 'addr'])).stdout
          t.notOk(hostAddrs.includes(initiator.ip) || hostAddrs.includes(mover.ip), 'neither address is on the machine\'s own interfaces')
          t.ok((await runOk('ip', ['netns', 'list'])).stdout.includes(initiator.ns), `${initiator.ns} is listed`)
        })

        await t.test('forged, replayed and tampered requests from the mover get 401 and no data', async (t) => {
          const secrets = [c0, 'nightly', 'weekly']
          const target = '/images/nightly/config'
          const wrongKey = await agent<Raw>(mover, 'request', { url: `${base}${target}`, headers: headersOf(signRequest(otherKey, 'GET', target)) })
          refusedWithoutData(t, wrongKey, 'signed with another key', secrets)
          t.match(JSON.parse(wrongKey.body).error, /signature does not match/)

          const listTarget = '/images'
          const listWrong = await agent<Raw>(mover, 'request', { url: `${base}${listTarget}`, headers: headersOf(signRequest(otherKey, 'GET', listTarget)) })
          refusedWithoutData(t, listWrong, 'image list, another key', secrets)

          const signed = headersOf(signRequest(key, 'GET', target))
          const original = await agent<Raw>(mover, 'request', { url: `${base}${target}`, headers: signed })
          t.equal(original.status, 200, 'the signed request itself is answered')
          t.equal(JSON.parse(original.body).image, c0, 'with the image\'s config')
          const replay = await agent<Raw>(mover, 'request', { url: `${base}${target}`, headers: signed })
          refusedWithoutData(t, replay, 'the same signed headers again', secrets)
          t.same(JSON.parse(replay.body), { error: 'nonce already used: replayed request' })

          const manifestTarget = '/images/nightly/manifest'
          const otherPath = await agent<Raw>(mover, 'request', { url: `${base}${manifestTarget}`, headers: headersOf(signRequest(key, 'GET', target)) })
          refusedWithoutData(t, otherPath, 'signed for config, sent to manifest', secrets)
          const weeklyPath = await agent<Raw>(mover, 'request', { url: `${base}/images/weekly/manifest`, headers: headersOf(signRequest(key, 'GET', manifestTarget)) })
          refusedWithoutData(t, weeklyPath, 'signed for one image, sent for another', secrets)
          const query = `${target}?after=${c0}&wait=1000`
          const otherQuery = await agent<Raw>(mover, 'request', { url: `${base}${target}?after=${c0}&wait=59000`, headers: headersOf(signRequest(key, 'GET', query)) })
          refusedWithoutData(t, otherQuery, 'query changed after signing', secrets)
          const post = await agent<Raw>(mover, 'request', { url: `${base}/images/nightly/remap`, method: 'POST', headers: headersOf(signRequest(key, 'GET', '/images/nightly/remap')) })
          refusedWithoutData(t, post, 'method changed after signing', secrets)

          // A forger who saw a nonce go by cannot burn it: a request with a bad MAC does not record it.
          const genuine = headersOf(signRequest(key, 'GET', target))
          const burnt = await agent<Raw>(mover, 'request', { url: `${base}${target}`, headers: { ...genuine, 'X-Extfs-Auth': 'f'.repeat(64) } })
          refusedWithoutData(t, burnt, 'a real nonce with a forged MAC', secrets)
          const after = await agent<Raw>(mover, 'request', { url: `${base}${target}`, headers: genuine })
          t.equal(after.status, 200, 'the real request with that nonce still goes through')

          const bare = await agent<Raw>(mover, 'request', { url: `${base}${manifestTarget}`, headers: {} })
          refusedWithoutData(t, bare, 'no authentication at all', secrets)
          t.match(served.stderr(), /"msg":"refused"/, 'serve logged the refusals')
        })

        await t.test('forged, tampered and replayed answers are refused by the mover\'s client', async (t) => {
          const calls = (baseUrl: string, list: Array<{ call: string; args?: unknown[] }>) =>
            agent<Array<{ ok: boolean; name?: string; message?: string; value?: any }>>(mover, 'client', { baseUrl, keyFile, calls: list })
          const real = await calls(`${base}/nightly`, [{ call: 'config' }, { call: 'manifest' }])
          t.match(real, [{ ok: true, value: { image: c0, configId: c0, state: 'current' } }, { ok: true }], 'the real initiator, from the mover: believed')
          t.equal(real[1].value.bytes, readFileSync(nightly).length, 'manifest bytes as on the initiator')

          const fakes: ChildProcess[] = []
          const startFake = async (port: number, mode: string) => {
            const child = initiator.spawn(process.execPath, [AGENT, 'fake', JSON.stringify({ host: initiator.ip, port, mode, upstream: `http://127.0.0.1:${PORT}` })], { stdio: ['ignore', 'pipe', 'inherit'] })
            fakes.push(child)
            const line = await new Promise<string>((resolve, reject) => {
              let out = ''
              child.stdout!.on('data', (c: Buffer) => {
                out += c
                if (out.includes('\n')) resolve(out.split('\n')[0])
              })
              child.once('exit', (code) => reject(new Error(`fake ${mode} exited ${code}`)))
            })
            return JSON.parse(line).listening as string
          }
          try {
            const forger = await startFake(PORT + 1, 'forge')
            const forged = await calls(`${forger}/nightly`, [{ call: 'config' }])
            t.match(forged, [{ ok: false, name: 'ConfigServiceError', message: /answer not authenticated/ }], 'a fake initiator with its own key: ConfigServiceError')
            t.notMatch(forged[0].message!, /\n/, 'one line')

            const tamperer = await startFake(PORT + 2, 'tamper')
            const tampered = await calls(`${tamperer}/nightly`, [{ call: 'manifest' }, { call: 'config' }])
            t.match(tampered, [
              { ok: false, name: 'ConfigServiceError', message: /answer not authenticated/ },
              { ok: false, name: 'ConfigServiceError', message: /answer not authenticated/ },
            ], 'the real answers with one byte changed on the way: refused')

            const replayer = await startFake(PORT + 3, 'replay')
            const replayed = await calls(`${replayer}/nightly`, [{ call: 'config' }, { call: 'config' }, { call: 'manifest' }])
            t.match(replayed[0], { ok: true, value: { configId: c0 } }, 'the first answer, relayed untouched, is believed')
            t.match(replayed[1], { ok: false, name: 'ConfigServiceError', message: /answer not authenticated/ }, 'the same answer replayed into the next request: refused')
            t.match(replayed[2], { ok: false, name: 'ConfigServiceError', message: /answer not authenticated/ }, 'and into a request for something else')
          } finally {
            for (const f of fakes) {
              if (f.exitCode === null && f.signalCode === null) {
                f.kill('SIGKILL')
                await new Promise((r) => f.once('exit', r))
              }
            }
          }
        })

        // ---- the mover's view by URL
        /** `extfs mount <from>/<name>` on the mover, on a fresh mountpoint (cleaned up at the end, also when the mount failed). */
        const tryMount = async (name: string, extra: string[] = [], from = base) => {
          const dir = await fsp.mkdtemp(path.join(scratch, `view-${name}-`))
          const mnt = path.join(dir, 'mnt')
          const log = path.join(dir, 'view.log')
          await fsp.mkdir(mnt)
          views.push(mnt)
          const result = await mover.run(EXTFS, ['mount', `${from}/${name}`, mnt, '--key', keyFile, '--log-file', log, ...extra])
          return { mnt, log, result }
        }
        const mountView = async (name: string, extra: string[] = [], from = base) => {
          const { mnt, log, result: r } = await tryMount(name, extra, from)
          if (r.code !== 0) throw new Error(`extfs mount ${from}/${name} failed (${r.code}): ${r.stderr.trim()}`)
          return { mnt, log }
        }

        // The lease first: the files it reads must not be in the page cache yet (the view lets the
        // kernel keep pages across opens), or a read would never reach the view.
        let nightlyView: { mnt: string; log: string } | undefined
        await t.test('mount http://initiator/nightly on the mover', async (t) => {
          nightlyView = await mountView('nightly')
          t.ok(isMounted(nightlyView.mnt), 'mounted, visible to this test (the mover shares the mount namespace, not the network one)')
          const r = await initiator.run('sh', ['-c', `grep -c ' ${nightlyView.mnt} ' /proc/self/mountinfo`])
          t.equal(r.stdout.trim(), '1', 'and to a process in the initiator\'s namespace')
        })

        await t.test('the lease: serve stopped, opens served while it is fresh, ESTALE once expired, served again after', async (t) => {
          if (!nightlyView) return t.fail('no view to test the lease on')
          const { mnt, log } = nightlyView
          const file = (i: number) => path.join(mnt, `lease/l${i}`)
          const bytes = (i: number) => own.get(`lease/l${i}`)!
          t.equal(await readOutcome(file(0), bytes(0)), 'ok', 'served while serve runs')
          const held = await fsp.open(path.join(mnt, 'lease/held'), 'r') // opened now, read only after the lease expired

          served.child.kill('SIGSTOP')
          try {
            const within = await readOutcome(file(2), bytes(2))
            t.equal(within, 'ok', 'right after serve stopped answering, the lease is fresh: served')
            await sleep(PAST_LEASE_MS)
            t.equal(await readOutcome(file(3), bytes(3)), 'ESTALE', 'after the lease expired: open fails with ESTALE')
            const readHeld = await held.read(Buffer.alloc(4096), 0, 4096, 0).then(() => 'ok', errorName)
            t.equal(readHeld, 'ESTALE', 'a read on a file opened before: ESTALE too')
            const why = await refusal(log, (r) => r.includes(base) && /not reachable.*lease expired/.test(r))
            t.ok(why, `the view's log says why opens are refused: ${why?.reason ?? JSON.stringify((await logLines(log)).slice(-3))}`)
          } finally {
            served.child.kill('SIGCONT')
            await held.close()
          }
          // The same serve continued: the next open asks it again and is served.
          t.equal(await retryRead(file(3), bytes(3)), 'ok', 'serve continued (SIGCONT): opens are served again')

          // Killed and started afresh on the same port and state.
          served.child.kill('SIGKILL')
          await served.exited
          await sleep(PAST_LEASE_MS)
          t.equal(await readOutcome(file(4), bytes(4)), 'ESTALE', 'serve killed, lease expired: ESTALE (connection refused)')
          served = await startServe(initiator, serveArgs, (fn) => teardowns.push(fn))
          // A failed renewal stands for a second (so a dead initiator does not cost every open 3 s).
          t.equal(await retryRead(file(4), bytes(4)), 'ok', 'a fresh serve on the same port and state: served again')
          t.match(await agent(mover, 'client', { baseUrl: `${base}/nightly`, keyFile, calls: [{ call: 'config' }] }), [{ ok: true, value: { configId: c0, state: 'current' } }],
            'the fresh serve answers with the same config ID from its state')
        })

        await t.test('tar of the view by URL equals the image (after the outages above)', async (t) => {
          if (!nightlyView) return t.fail('no view')
          const out = path.join(scratch, 'tar-nightly')
          await tarRoundTrip(nightlyView.mnt, out)
          t.same(diffTrees(image, await snapshotTree(out, { timePrecisionNs: NS }), { ignorePaths: isSocket(image) }), [], 'tar of the view equals the image')
        })

        const backupRun = async (name: string, flags: string): Promise<{ done: Promise<RunResult>; log: string }> => {
          await fsp.mkdir(flags, { recursive: true })
          const script = path.join(scratch, 'reader.sh')
          await fsp.writeFile(script, READER)
          const log = path.join(flags, 'view.log')
          const [cmd, args] = mover.wrap(EXTFS, ['backup', `${base}/${name}`, '--key', keyFile, '--log-file', log, '--', 'sh', script, flags])
          const done = run(cmd, args, { timeoutMs: 120_000, env: { ...process.env, TMPDIR: tmp } })
          await waitFor(`the backup command of ${name} to start reading`, async () => existsSync(path.join(flags, 'ready')) || (await Promise.race([done.then(() => true), sleep(0).then(() => false)])), 60_000)
          if (!existsSync(path.join(flags, 'ready'))) throw new Error(`backup ended before it read: ${JSON.stringify(await done)}`)
          return { done, log }
        }
        const checkBackupFailed = async (t: Test, r: RunResult, flags: string, cause: RegExp) => {
          t.equal(r.code, 7, `extfs backup exits 7 (stale) although its command exited 0 (${r.code}, ${r.timedOut ? 'timed out' : 'in time'})`)
          const extfsLines = r.stderr.split('\n').filter((l) => l.startsWith('extfs: '))
          t.match(extfsLines, [/^extfs: the view refused or failed \d+ request\(s\) while the command ran, first: .*incomplete/], `one line says so: ${JSON.stringify(extfsLines)}`)
          t.match(extfsLines[0] ?? '', cause, 'and names the cause')
          t.equal(await fsp.readFile(path.join(flags, 'held'), 'utf8').then((s) => s.trim(), () => 'missing'), 'failed', 'a read on the file held open since before: refused')
          const files = (await fsp.readFile(path.join(flags, 'files'), 'utf8').catch(() => '')).trim().split('\n').filter(Boolean)
          const regular = [...image.values()].filter((e) => e.kind === 'file').length
          t.equal(files.length, regular, `every regular file of the image was tried (${files.length})`)
          t.same(files.filter((l) => l.startsWith('ok ')), [], 'no open after it was served')
          t.match(await fsp.readFile(path.join(flags, 'files.err'), 'utf8').catch(() => ''), /Stale file handle/, 'the command saw ESTALE')
          t.same(mountsUnder(tmp), [], 'nothing left mounted')
          t.same(await fsp.readdir(tmp), [], 'and no mountpoint left behind')
        }

        await t.test('the image released in the middle of extfs backup', async (t) => {
          const flags = path.join(scratch, 'flags-release')
          const b = await backupRun('weekly', flags)
          const rel = await initiator.run(EXTFS, ['release', weekly, '--key', keyFile])
          t.equal(rel.code, 0, `release on the initiator: ${rel.stderr.trim()}`)
          // Serve notices (fs.watch) and answers the long poll; at the latest the lease runs out and the next
          // open asks, and is told 'released'.
          await waitFor('serve to report weekly released', async () => {
            const [c] = await agent(mover, 'client', { baseUrl: `${base}/weekly`, keyFile, calls: [{ call: 'config' }] })
            return c.ok && c.value.state === 'released'
          })
          await sleep(PAST_LEASE_MS)
          await fsp.writeFile(path.join(flags, 'go'), '')
          const r = await b.done
          await checkBackupFailed(t, r, flags, /first: (open|read) refused: frozen image \S+ was released/)
          const why = await refusal(b.log, (r) => /released/.test(r))
          t.ok(why, `the view's log says the image was released: ${why?.reason ?? JSON.stringify((await logLines(b.log)).slice(-3))}`)
        })

        await t.test('serve killed in the middle of extfs backup', async (t) => {
          const flags = path.join(scratch, 'flags-kill')
          const b = await backupRun('nightly', flags)
          served.child.kill('SIGKILL')
          await served.exited
          await sleep(PAST_LEASE_MS)
          await fsp.writeFile(path.join(flags, 'go'), '')
          const r = await b.done
          await checkBackupFailed(t, r, flags, /first: (open|read) refused: initiator http:\S+ not reachable .*the lease expired/)
          const why = await refusal(b.log, (r) => r.includes(base) && /not reachable.*lease expired/.test(r))
          t.ok(why, `the view's log names the initiator as unreachable and the lease as expired: ${why?.reason ?? JSON.stringify((await logLines(b.log)).slice(-3))}`)
          served = await startServe(initiator, serveArgs, (fn) => teardowns.push(fn))
        })

        await t.test('relocation through serve: xfs_fsr moves clones under the view, a remap asked from the mover, the view follows', async (t) => {
          const v = await mountView('reloc')
          t.ok((await fsp.readFile(path.join(v.mnt, RELOC_FILES[0]))).equals(reloc.contents.get(RELOC_FILES[0])!), `${RELOC_FILES[0]} reads right before the move`)
          await relocate(t, reloc)

          const [remap] = await agent(mover, 'client', { baseUrl: `${base}/reloc`, keyFile, calls: [{ call: 'remap' }] })
          t.match(remap, { ok: true, value: { state: 'remapped' } }, `the mover asked the initiator to remap: ${JSON.stringify(remap.value ?? remap.message)}`)
          await waitFor('the view to follow the new config ID', async () => (await logLines(v.log)).some((l) => /followed the config ID/.test(l.msg)), 30_000)
          t.pass('the view logged that it followed the config ID')

          const out = path.join(scratch, 'tar-reloc')
          await tarRoundTrip(v.mnt, out)
          t.same(diffTrees(reloc.tree, await snapshotTree(out, { timePrecisionNs: NS })), [], 'tar of the view after the move equals the image')
        })

        await t.test('HTTPS: serve with --cert/--tls-key, the mover mounts https://… with --ca; an untrusted or misaddressed certificate mounts nothing', async (t) => {
          const tls = await makeTlsFiles(path.join(scratch, 'tls'), initiator.ip, mover.ip)
          const startTlsServe = async (port: number, pair: { cert: string; key: string }, db: string) => {
            const tlsServe = await startServe(initiator, ['--key', keyFile, '--state', path.join(scratch, db), '--interval', '0', '--lease', String(LEASE_S),
              '--cert', pair.cert, '--tls-key', pair.key, nightly], (fn) => teardowns.push(fn), port)
            t.match(parseLog(tlsServe.stderr()).find((l) => l.msg === 'serving')?.url, /^https:/, `serve on port ${port} listens with TLS`)
            return `https://${initiator.ip}:${port}`
          }
          const httpsBase = await startTlsServe(TLS_PORT, tls.server, 'tls.db')
          const misaddressed = await startTlsServe(TLS_PORT + 1, tls.otherAddress, 'tls-other-address.db')

          const refusals: Array<{ what: string; from: string; extra: string[]; problem: string }> = [
            { what: 'no --ca', from: httpsBase, extra: [], problem: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
            { what: '--ca of a CA that did not sign the certificate', from: httpsBase, extra: ['--ca', tls.otherCa], problem: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
            { what: 'our CA, but a certificate for another address', from: misaddressed, extra: ['--ca', tls.ca], problem: 'ERR_TLS_CERT_ALTNAME_INVALID' },
          ]
          for (const { what, from, extra, problem } of refusals) {
            const orphansBefore = orphanMirrors()
            const { mnt, result: r } = await tryMount('nightly', extra, from)
            t.equal(r.code, ExitCode.Service, `${what}: mount fails with exit ${ExitCode.Service} (the service could not be asked)`)
            t.match(r.stderr, /^[^\n]+\n$/, `${what}: one line on stderr: ${JSON.stringify(r.stderr)}`)
            t.ok(r.stderr.startsWith(`extfs: ${from}/`) && r.stderr.includes(`: ${problem}`), `${what}: it names the initiator and the TLS problem, ${problem}`)
            t.notOk(isMounted(mnt), `${what}: nothing mounted`)
            t.same(await fsp.readdir(mnt), [], `${what}: the mountpoint is left as it was`)
            t.equal(loadState(mnt), undefined, `${what}: no view state left`)
            t.same(orphanMirrors().filter((n) => !orphansBefore.includes(n)), [], `${what}: no mirror left in ${MIRRORS}`)
          }

          const v = await mountView('nightly', ['--ca', tls.ca], httpsBase)
          t.ok(isMounted(v.mnt), `mounted ${httpsBase}/nightly trusting our CA`)
          const out = path.join(scratch, 'tar-https')
          await tarRoundTrip(v.mnt, out)
          t.same(diffTrees(image, await snapshotTree(out, { timePrecisionNs: NS }), { ignorePaths: isSocket(image) }), [], 'tar of the view over HTTPS equals the image')
        })

        await t.test('relocation published by serve\'s own schedule (--interval): no remap asked, the view follows', async (t) => {
          const sched = await fragmentedImage(t, 'sched', 80)
          const scheduler = await startServe(initiator, ['--key', keyFile, '--state', path.join(scratch, 'sched.db'), '--interval', String(SCHEDULE_INTERVAL_S),
            '--lease', String(LEASE_S), sched.manifest], (fn) => teardowns.push(fn), SCHEDULE_PORT)
          const schedBase = `http://${initiator.ip}:${SCHEDULE_PORT}`
          const v = await mountView('sched', [], schedBase)
          t.ok((await fsp.readFile(path.join(v.mnt, RELOC_FILES[0]))).equals(sched.contents.get(RELOC_FILES[0])!), `${RELOC_FILES[0]} reads right before the move`)
          await relocate(t, sched)
          const moved = Date.now()

          // Nobody asks for a remap: serve's schedule must notice. A remap that ended after the move may
          // have begun before it; remaps run one after the other, so the second to end after the move
          // began after it: by then serve has published all the move did.
          const remaps = () => parseLog(scheduler.stderr()).filter((l) => l.msg === 'remap' && l.image === 'sched')
          await waitFor('two scheduled remaps after the move', () => remaps().filter((l) => l.time > moved).length >= 2, 120_000)
          const published = remaps()
          const remapped = published.filter((l) => l.state === 'remapped')
          t.ok(remapped.length > 0, `serve's schedule remapped the image: ${JSON.stringify(remapped.map((l) => l.configId))}`)
          const latest = published.at(-1)?.configId as string | undefined
          t.ok(latest !== undefined && latest !== sched.c0, `the config ID moved on from the manifest's: ${sched.c0} -> ${latest}`)
          t.match(await agent(mover, 'client', { baseUrl: `${schedBase}/sched`, keyFile, calls: [{ call: 'config' }] }),
            [{ ok: true, value: { image: sched.c0, configId: latest, state: 'current', deltas: remapped.map((_, i) => i + 1) } }], 'serve answers the mover with it, one delta per remap that moved something')
          await waitFor(`the view to follow to ${latest}`, async () => (await logLines(v.log)).some((l) => typeof l.msg === 'string' && l.msg.includes(` to ${latest}:`)), 30_000)
          t.pass('the view logged that it followed the config ID to the latest')

          const out = path.join(scratch, 'tar-sched')
          await tarRoundTrip(v.mnt, out)
          t.same(diffTrees(sched.tree, await snapshotTree(out, { timePrecisionNs: NS })), [], 'tar of the view after the move equals the image')
        })
      } finally {
        // Within the filesystem's lifetime: views first, then serve, then the images (clone sets).
        for (const m of views.splice(0)) await ensureUnmounted(m)
        for (const fn of teardowns.splice(0)) await fn()
        for (const m of manifests.splice(0)) await release(m)
      }
      t.same(await fsp.readdir(path.join(fs.mountpoint, '.extfs-images')).catch(() => []), [], 'no clone set left on the initiator')
    })
  } finally {
    for (const m of views) await ensureUnmounted(m)
    for (const fn of teardowns) await fn()
    for (const m of mountsUnder(scratch).reverse()) await run('umount', ['-l', m])
    if (hosts) {
      const problems = await hosts.destroy()
      t.same(problems, [], 'network namespaces deleted, nothing left in them')
    }
    await fsp.rm(scratch, { recursive: true, force: true })
  }
})
