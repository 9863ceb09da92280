// The progress reporter's pure logic with an injected clock and stream: throttling, the clock read
// only every few calls, the moving-window rate and ETA, fields absent when unknown, the line cut to
// the terminal's width, the final line and summary always written, nothing when quiet.
import t from 'tap'
import { PassThrough } from 'node:stream'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { bytesOf, clock, fit, progressMode, startProgress, type ProgressMode } from '../../src/cli/progress'

/** A stream that records what is written, with a terminal width. */
function capture(columns?: number): { stream: NodeJS.WritableStream; text: () => string } {
  const s = new PassThrough() as PassThrough & { columns?: number }
  if (columns !== undefined) s.columns = columns
  let text = ''
  s.on('data', (c: Buffer) => (text += c.toString()))
  return { stream: s, text: () => (s.read(), text) }
}

function run(mode: ProgressMode, opts: { intervalMs?: number; columns?: number; total?: { files: number; bytes: number } } = {}) {
  let now = 0
  const out = capture(opts.columns)
  let clockReads = 0
  const p = startProgress({ command: 'export', phase: 'map', mode, total: opts.total, stream: out.stream, intervalMs: opts.intervalMs, now: () => (clockReads++, now) })
  return { p, out, tick: (ms: number) => (now += ms), reads: () => clockReads }
}

t.test('mode: quiet wins, then --json, then whether stderr is a terminal', async (t) => {
  const tty = { isTTY: true } as NodeJS.WriteStream
  const pipe = { isTTY: false } as unknown as NodeJS.WriteStream
  t.equal(progressMode({ quiet: true, json: true }, tty), 'quiet')
  t.equal(progressMode({ json: true }, tty), 'json')
  t.equal(progressMode({}, tty), 'line')
  t.equal(progressMode({}, pipe), 'json')
})

t.test('json: one status line per interval, rate and ETA from the window, then the summary', async (t) => {
  const { p, out, tick } = run('json', { total: { files: 1000, bytes: 1000 * 4096 } })
  for (let i = 1; i <= 1000; i++) {
    tick(10) // 100 files a second: 10 s in all
    p.update({ files: i, bytes: i * 4096 })
  }
  p.finish({ files: 1000, bytes: 1000 * 4096 })
  const lines = out.text().trim().split('\n').map((l) => JSON.parse(l))
  const status = lines.filter((l) => l.message_type === 'status')
  t.ok(status.length >= 4 && status.length <= 6, `about one a second once 5 s have passed (${status.length})`)
  t.ok(status[0].seconds_elapsed >= 5, 'nothing in the first 5 intervals')
  const mid = status[2]
  t.match(mid, { command: 'export', phase: 'map', files_total: 1000, bytes_total: 4096000 })
  t.ok(Math.abs(mid.bytes_per_second - 409600) < 1000, `rate ${mid.bytes_per_second}`)
  t.ok(Math.abs(mid.seconds_remaining - (1 - mid.percent_done) * 10) <= 1, `ETA ${mid.seconds_remaining} at ${mid.percent_done}`)
  t.same(lines.at(-1), { message_type: 'summary', command: 'export', files_done: 1000, bytes_done: 4096000, seconds_elapsed: 10, bytes_per_second: 409600 })
})

t.test('the rate follows the last seconds, not the average since the start', async (t) => {
  const { p, out, tick } = run('json')
  let files = 0
  for (let i = 0; i < 200; i++) p.update({ files: (files += 1000), bytes: 0 }, undefined), tick(100) // 20 s at 10,000 files/s
  for (let i = 0; i < 200; i++) p.update({ files: (files += 10), bytes: 0 }), tick(100) // 20 s at 100 files/s
  const last = out.text().trim().split('\n').map((l) => JSON.parse(l)).at(-1)
  t.ok(last.files_per_second > 90 && last.files_per_second < 110, `files/s ${last.files_per_second} (the average since the start is ~5,000)`)
})

t.test('unknown totals: no total, percentage or ETA fields (absent, not null or 0)', async (t) => {
  const { p, out, tick } = run('json')
  for (let i = 1; i <= 50; i++) tick(100), p.update({ files: i, bytes: i })
  const line = JSON.parse(out.text().trim().split('\n').at(-1)!)
  for (const k of ['files_total', 'bytes_total', 'percent_done', 'seconds_remaining']) t.notOk(k in line, k)
  t.ok('bytes_per_second' in line)
})

t.test('line: rewritten in place at most every interval, cut to the width, ended by the final line', async (t) => {
  const { p, out, tick } = run('line', { columns: 40, total: { files: 2_000_000, bytes: 95 * 2 ** 30 } })
  for (let i = 1; i <= 1000; i++) tick(1), p.update({ files: i * 412, bytes: i * 40 * 2 ** 20 }) // 1 s
  p.finish({ files: 412_000, bytes: 1000 * 40 * 2 ** 20 })
  const writes = out.text().split('\r').filter(Boolean)
  t.ok(writes.length >= 9 && writes.length <= 12, `about 10 a second (${writes.length})`)
  for (const w of writes) t.ok(w.replace('\x1b[K', '').replace('\n', '').length <= 39, `fits: ${JSON.stringify(w)}`)
  t.notOk(writes.slice(0, -1).some((w) => w.includes('\n')), 'only the final line ends the line')
  t.equal(writes.at(-1), 'export: 412,000 files  39.1 GiB  in 0:0\x1b[K\n', 'the final line, cut too')
})

t.test('line without a width limit: counts of the totals, rate and ETA', async (t) => {
  const { p, out, tick } = run('line', { total: { files: 1_000_000, bytes: 95 * 2 ** 30 } })
  for (let i = 1; i <= 100; i++) tick(100), p.update({ files: i * 4120, bytes: i * 0.382 * 2 ** 30 }) // 10 s
  const last = out.text().split('\r').at(-1)!
  t.match(last, /^export: map 412,000\/1,000,000 files {2}38\.2\/95\.0 GiB {2}40\.2% {2}3\.8 GiB\/s {2}ETA 0:15\x1b\[K$/)
})

t.test('work that ends within 5 intervals says nothing in JSON (and on a terminal its final line); quiet writes nothing', async (t) => {
  const json = run('json')
  json.p.setPhase('image')
  json.tick(4900)
  json.p.update({ files: 10, bytes: 10 })
  json.p.finish({ files: 10, bytes: 10 })
  t.equal(json.out.text(), '', 'no status, no summary: stderr stays as the command leaves it')
  const line = run('line')
  line.p.finish({ files: 0, bytes: 0 })
  t.match(line.out.text(), /^\rexport: 0 files  0 B  in 0:00\x1b\[K\n$/)
  const quiet = run('quiet')
  quiet.p.update({ files: 1, bytes: 1 })
  quiet.p.setPhase('x')
  quiet.p.finish({ files: 1, bytes: 1 })
  t.equal(quiet.out.text(), '')
})

t.test('a phase (once past the first intervals) is written at once, its counts and rate start afresh', async (t) => {
  const { p, out, tick } = run('json')
  for (let i = 1; i <= 60; i++) tick(100), p.update({ files: i * 100, bytes: 0 })
  p.setPhase('write', { files: 3000, bytes: 0 })
  const last = JSON.parse(out.text().trim().split('\n').at(-1)!)
  t.match(last, { phase: 'write', files_done: 0, files_total: 3000, percent_done: 0 })
  t.notOk('files_per_second' in last, 'no rate over no time')
})

t.test('the clock is read once per many calls when calls come fast', async (t) => {
  const { p, reads } = run('json')
  for (let i = 0; i < 100_000; i++) p.update({ files: i, bytes: 0 }) // the clock stands still: calls are "fast"
  t.ok(reads() < 100, `${reads()} clock reads for 100,000 calls`)
})

t.test('formatting', async (t) => {
  t.equal(bytesOf(0), '0 B')
  t.equal(bytesOf(1536), '1.5 KiB')
  t.equal(bytesOf(38.2 * 2 ** 30, 95 * 2 ** 30), '38.2/95.0 GiB')
  t.equal(clock(47), '0:47')
  t.equal(clock(3725), '1:02:05')
  t.equal(fit('abcdef', 4), 'abc')
  t.equal(fit('abcdef', undefined), 'abcdef')
})

t.test('a log line on stderr first clears the status line left unfinished there, not glued to its end', async (t) => {
  // A child process: stderr is the process's own, as the CLI's logger and progress share it.
  const dist = path.resolve(__dirname, '..', '..', 'dist')
  const script = `
    const { startProgress } = require(${JSON.stringify(path.join(dist, 'cli', 'progress.js'))})
    const { createLogger } = require(${JSON.stringify(path.join(dist, 'log.js'))})
    const log = createLogger({})
    const p = startProgress({ command: 'export', phase: 'map', mode: 'line', stream: process.stderr, intervalMs: 1 })
    p.setPhase('map')
    log.warn('first')
    log.warn('second')
    p.setPhase('write')
    p.finish({ files: 1, bytes: 1 })
    log.warn('third')`
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'latin1' })
  t.equal(r.status, 0, r.stderr)
  const lines = r.stderr.split('\n')
  t.match(lines[0], /^\r.*map.*\x1b\[K\r\x1b\[K\{.*"msg":"first"/, 'the status line, cleared, then the first log line')
  t.match(lines[1], /^\{.*"msg":"second"/, 'a second log line: nothing more to clear')
  t.match(lines[2], /write/, 'the status line drawn again')
  t.match(lines[3], /^\{.*"msg":"third"/, 'after the final line, a log line as it is')
})
