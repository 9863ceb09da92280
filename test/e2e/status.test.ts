// `extfs status` against real views of one exported ext4 image: a live view before and after a reader
// (the counters come from the view itself), a view whose process was killed (dead, exit 12), a view
// from serve whose initiator stopped answering (lease expired, exit 7, and back), one whose serve
// answers "unknown" (its record unreadable: unknown with serve's reason, exit 7, ESTALE, and back), and every view after
// the release (released, exit 7); the JSON and Prometheus forms of the same answers.
import t from 'tap'
import { existsSync, promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { extfs, ensureUnmounted, release, scratchDir, startServe } from '../helpers/extfs'
import { remountReadOnly, withLoopFs } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { viewState } from '../helpers/tamper'
import { resultFaults } from '../helpers/json-results'
import type { StatusReport, ViewEntry } from '../../src/cli/status'
import type { ViewStatus } from '../../src/mover/control'
import { controlSocket } from '../../src/mover/state'

const KiB = 1024
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** name → size: small files prefetch may take, a large one push-ahead may take, an empty one. */
const SIZES: Record<string, number> = { 'a': 100, 'b': 5000, 'sub/c': 70 * KiB, 'sub/d': 0, 'large': 6 * 1024 * KiB + 3 }
const TOTAL_BYTES = Object.values(SIZES).reduce((a, b) => a + b, 0)

/** `extfs status --json`: its exit code and its object, which must fit docs/json.md's schema. */
async function status(args: string[]): Promise<{ code: number; report: StatusReport; stderr: string }> {
  const r = await extfs(['status', ...args, '--json'])
  const report = JSON.parse(r.stdout) as StatusReport
  const faults = resultFaults(report)
  if (faults.length > 0) throw new Error(`extfs status --json does not fit its schema: ${faults.join('; ')}`)
  return { code: r.code ?? -1, report, stderr: r.stderr }
}

async function viewOf(mnt: string): Promise<{ code: number; view: ViewEntry }> {
  const { code, report } = await status([mnt])
  return { code, view: report.views[0] }
}

/** Polls until the view at `mnt` is in `state`; its last answer. */
async function untilState(mnt: string, state: string, ms = 10_000): Promise<{ code: number; view: ViewEntry }> {
  let last = await viewOf(mnt)
  for (const end = Date.now() + ms; last.view.state !== state && Date.now() < end; last = await viewOf(mnt)) await sleep(100)
  return last
}

t.test('extfs status', async (t) => {
  const dir = await scratchDir(t, 'extfs-status-')
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, seededBytes(91, 32).toString('hex'))
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'sub'), { recursive: true })
    let seed = 0
    for (const [name, size] of Object.entries(SIZES)) await fsp.writeFile(path.join(data, name), seededBytes(++seed, size))
    await remountReadOnly(fs)
    const manifest = path.join(dir, 'nightly.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'none', '--key', keyFile])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const configId = JSON.parse(readFileSync(manifest, 'utf8')).configId as string

    const mounted: string[] = []
    const mount = async (source: string, env?: NodeJS.ProcessEnv) => {
      const mnt = path.join(dir, `mnt-${mounted.length}`)
      await fsp.mkdir(mnt)
      mounted.push(mnt)
      t.teardown(() => ensureUnmounted(mnt))
      const r = await extfs(['mount', source, mnt, '--key', keyFile, '--log-file', path.join(dir, `view-${mounted.length}.log`)], { env })
      t.equal(r.code, 0, `mount ${source}: ${r.stderr}`)
      return mnt
    }
    const live = await mount(manifest)
    const doomed = await mount(manifest)
    const served = await startServe(t, ['--key', keyFile, '--state', path.join(dir, 'serve.db'), '--interval', '0', '--lease', '1', manifest])
    const remote = await mount(`${served.url}/nightly`)
    const reference = await mount(manifest, { ...process.env, EXTFS_ENGINE: 'fuse-native' })

    await t.test('a live view, before and after a reader', async (t) => {
      const before = await viewOf(live)
      t.equal(before.code, 0, 'exit 0: serving')
      const v = before.view as ViewStatus
      t.match(v, { schema: 'extfs.view/1', mountpoint: live, source: manifest, state: 'serving', engine: 'native', configId, position: { configId, seq: 0 } })
      t.same(v.image, { files: Object.keys(SIZES).length, bytes: TOTAL_BYTES }, 'the image\'s files and bytes')
      t.equal(v.served!.filesOpened, 0, 'nothing opened yet')
      const socket = (await fsp.stat(controlSocket(live)))
      t.ok(socket.isSocket() && (socket.mode & 0o777) === 0o600, 'the status socket is root\'s alone')
      for (const name of Object.keys(SIZES)) {
        const got = await fsp.readFile(path.join(live, name))
        t.ok(got.equals(await fsp.readFile(path.join(data, name))), `${name} reads exact`)
      }
      const after = (await viewOf(live)).view as ViewStatus
      t.equal(after.served!.filesOpened, Object.keys(SIZES).length, 'every file counted once as opened')
      t.ok(after.served!.opens >= Object.keys(SIZES).length, 'opens counted')
      const delivered = after.served!.readBytes + after.served!.pushedBytes + after.served!.prefetchedBytes
      t.ok(delivered >= TOTAL_BYTES, `bytes delivered to the kernel (${delivered}) cover the files (${TOTAL_BYTES})`)
      t.ok(after.served!.reads > 0, 'read requests counted')
      t.match(after, { refused: 0, failedReads: { requests: 0, files: 0 }, tainted: 0 })

      const text = await extfs(['status', live])
      t.equal(text.code, 0)
      t.match(text.stdout, new RegExp(`^${live}: serving\\n`), 'text: mountpoint and state first')
      t.match(text.stdout, /opened 5 of 5 files/, 'text: files opened of the image\'s')
    })

    await t.test('a view from serve, whose initiator stops answering', async (t) => {
      const ok = await viewOf(remote)
      t.equal(ok.code, 0, 'serving under a lease')
      t.match(ok.view, { state: 'serving', source: `${served.url}/nightly`, lease: { leftMs: Number } })
      served.child.kill('SIGSTOP')
      try {
        const expired = await untilState(remote, 'lease-expired')
        t.equal(expired.code, 7, 'exit 7 once the lease ran out')
        t.match(expired.view, { state: 'lease-expired', lease: { leftMs: 0 }, reason: /not answered within the lease/ })
      } finally {
        served.child.kill('SIGCONT')
      }
      const back = await untilState(remote, 'serving')
      t.equal(back.code, 0, 'serving again once the initiator answers')
    })

    await t.test('a view from serve, whose initiator answers "unknown"', async (t) => {
      // serve cannot prove the image current when its record is unreadable (docs/remap.md, "serve's
      // state: damage and loss"); the view then refuses opens, and says why, until serve says current.
      const record = path.join(dir, JSON.parse(readFileSync(manifest, 'utf8')).configRecord as string)
      const good = readFileSync(record)
      await fsp.writeFile(record, '\u0000\u0001 not a record {')
      try {
        const unknown = await untilState(remote, 'unknown')
        t.equal(unknown.code, 7, 'exit 7: the view serves nothing')
        t.match(unknown.view, { state: 'unknown', lease: { leftMs: 0 } })
        t.match(unknown.view.reason, /^initiator http:.* cannot prove frozen image .* current \(config-ID record .* is not valid JSON\): not served$/, 'with serve\'s reason')
        const open = await fsp.readFile(path.join(remote, 'a')).then(() => undefined, (err: NodeJS.ErrnoException) => err.errno)
        t.equal(open, -116, 'opens are refused: ESTALE (Node has no name for it)')
      } finally {
        await fsp.writeFile(`${record}.tmp`, good)
        await fsp.rename(`${record}.tmp`, record)
      }
      const back = await untilState(remote, 'serving')
      t.equal(back.code, 0, 'serving again once serve can prove it current')
    })

    await t.test('a view whose process was killed', async (t) => {
      const pid = viewState(doomed)!.pid
      process.kill(pid, 'SIGKILL')
      const dead = await untilState(doomed, 'dead')
      t.equal(dead.code, 12, 'exit 12: a view does not answer')
      t.match(dead.view, { mountpoint: doomed, state: 'dead', pid, reason: /extfs umount/ })
      const all = await status([])
      t.equal(all.code, 12, 'the whole host: 12 while one view is dead')
      const ours = all.report.views.filter((v) => mounted.includes(v.mountpoint))
      t.same(ours.map((v) => [v.mountpoint, v.state]).sort(), [[live, 'serving'], [doomed, 'dead'], [remote, 'serving'], [reference, 'serving']].sort(), 'every view listed, each in its state')
      t.equal(all.report.healthy, false)

      const prom = await extfs(['status', '--prometheus'])
      t.equal(prom.code, 12, '--prometheus: the same exit code')
      t.match(prom.stdout, `extfs_view_up{mountpoint="${doomed}"} 0`)
      t.match(prom.stdout, `extfs_view_up{mountpoint="${live}"} 1`)
      t.match(prom.stdout, `extfs_view_state{mountpoint="${doomed}",state="dead"} 1`)
      t.match(prom.stdout, `extfs_view_files_opened{mountpoint="${live}"} 5`)
      t.match(prom.stdout, `extfs_view_image_bytes{mountpoint="${live}"} ${TOTAL_BYTES}`)
      t.match(prom.stdout, /# TYPE extfs_view_read_bytes_total counter/)
      for (const line of prom.stdout.split('\n').filter((l) => l && !l.startsWith('#'))) {
        if (!/^[a-z_]+(\{[^}]*\})? -?[0-9.e+]+$/.test(line)) t.fail(`not a sample line: ${line}`)
      }
      await ensureUnmounted(doomed)
      mounted.splice(mounted.indexOf(doomed), 1)
      t.notOk(existsSync(controlSocket(doomed)), 'extfs umount of the dead view removed its socket too')
    })

    await t.test('after the release', async (t) => {
      const fuseNative = await viewOf(reference)
      t.match(fuseNative, { code: 0, view: { state: 'serving', engine: 'fuse-native' } }, 'the fuse-native engine answers too')
      t.notOk('served' in fuseNative.view, 'without counters it does not keep')
      await release(manifest)
      for (const mnt of [live, remote, reference]) {
        const r = await untilState(mnt, 'released')
        t.equal(r.code, 7, `${mnt}: exit 7 once released`)
        t.match(r.view, { state: 'released' })
      }
      const missing = await extfs(['status', path.join(dir, 'nowhere')])
      t.equal(missing.code, 5, 'not an extfs mount: exit 5')
      t.match(missing.stderr, /is not an extfs mount/)
    })
  })
})
