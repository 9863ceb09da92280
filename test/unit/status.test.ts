// `extfs status` without views: the view answer's check, the exit code's precedence, the text and
// Prometheus forms of one report (test/e2e/status.test.ts asks real views).
import t from 'tap'
import { parseStatus, VIEW_STATUS_SCHEMA, type ViewStatus } from '../../src/mover/control'
import { formatStatus, statusExitCode, STATUS_SCHEMA, type StatusReport, type ViewEntry } from '../../src/cli/status'
import { statusMetrics } from '../../src/cli/status-metrics'
import { judge } from '../../src/mover/view-status'
import { ExitCode } from '../../src/errors'

const view = (over: Partial<ViewStatus> = {}): ViewStatus => ({
  schema: VIEW_STATUS_SCHEMA, pid: 42, mountpoint: '/mnt/a', source: '/shared/n.json', engine: 'native', startedAt: new Date(Date.now() - 90_000).toISOString(),
  configId: 'a'.repeat(32), position: { configId: 'b'.repeat(32), seq: 2 }, state: 'serving', refused: 0, failedReads: { requests: 0, files: 0 }, tainted: 0,
  image: { files: 10, bytes: 5 * 2 ** 20 }, served: { opens: 4, filesOpened: 3, reads: 7, readBytes: 2 ** 20, pushedBytes: 0, prefetchedFiles: 2, prefetchedBytes: 8192 },
  prefetch: { window: 2 ** 25, pending: 0 }, ...over,
})
const report = (views: ViewEntry[]): StatusReport => ({ schema: STATUS_SCHEMA, healthy: views.every((v) => v.state === 'serving'), views })

t.test('a view\'s answer is checked before it is believed', async (t) => {
  const v = view()
  t.same(parseStatus(JSON.stringify(v)), v)
  t.throws(() => parseStatus('{"schema":"extfs.view/2"}'), /not an extfs.view\/1 answer/, 'another schema')
  t.throws(() => parseStatus('null'), /not an/)
  t.throws(() => parseStatus(JSON.stringify(view({ refused: -1 }))), /not counts/, 'a negative count')
  t.throws(() => parseStatus(JSON.stringify({ ...view(), served: { ...view().served, opens: 'many' } })), /not counts/, 'a count that is not a number')
  t.throws(() => parseStatus(JSON.stringify({ ...view(), mountpoint: 7 })), /fields missing/)
  t.throws(() => parseStatus('{"schema":'), SyntaxError, 'cut short')
})

t.test('the exit code is the worst view\'s: 12 over 7 over 0', async (t) => {
  const dead: ViewEntry = { mountpoint: '/mnt/d', state: 'dead', reason: 'gone' }
  t.equal(statusExitCode(report([])), ExitCode.Ok, 'no views: 0')
  t.equal(statusExitCode(report([view()])), ExitCode.Ok)
  for (const state of ['released', 'not-current', 'unknown', 'lease-expired'] as const) t.equal(statusExitCode(report([view(), view({ state })])), ExitCode.Stale, state)
  t.equal(statusExitCode(report([view({ state: 'released' }), dead])), ExitCode.ViewDown, 'dead wins')
  t.equal(statusExitCode(report([{ mountpoint: '/mnt/q', state: 'not-answering', reason: 'slow' }])), ExitCode.ViewDown)
})

t.test('a view\'s state: released first, then a record it cannot follow, then serve\'s "unknown", then a lapsed lease', async (t) => {
  const lease = { released: false, leftMs: 0, lastAnswerMsAgo: 300 }
  const unknown = 'initiator http://i:7070/n cannot prove frozen image c0 current (config-ID record /x is not valid JSON): not served'
  t.same(judge({}, { ...lease, leftMs: 900 }), { state: 'serving' })
  t.same(judge({}, { ...lease, unknown }), { state: 'unknown', reason: unknown }, 'serve said unknown: its reason, not a lapsed lease')
  t.match(judge({}, lease), { state: 'lease-expired', reason: /not answered within the lease/ })
  t.match(judge({ refused: 'chain broken' }, { ...lease, unknown }), { state: 'not-current', reason: 'chain broken' })
  t.match(judge({}, { ...lease, unknown, released: true }), { state: 'released' })
  t.same(judge({}), { state: 'serving' }, 'not from serve: no lease')
})

t.test('text: one block per view, names as printable text', async (t) => {
  t.equal(formatStatus(report([])), 'no extfs views on this host')
  const text = formatStatus(report([view({ mountpoint: '/mnt/x\ny', state: 'released', reason: 'the initiator released the frozen image' }), { mountpoint: '/mnt/d', state: 'dead', reason: 'gone' }]))
  t.match(text, /^\/mnt\/x\\x0ay: released: the initiator released the frozen image\n/, 'a newline in a name cannot start a line')
  t.match(text, /config ID b{32} \(2 delta\(s\) after a{32}\)/)
  t.match(text, /opened 3 of 10 files \(4 opens\), read 1\.0 MiB in 7 requests of 5\.0 MiB/)
  t.match(text, /\n\/mnt\/d: dead: gone$/)
})

t.test('Prometheus: every view, a state per line, counters as counters', async (t) => {
  const text = await statusMetrics(report([view(), { mountpoint: '/mnt/d', state: 'dead', reason: 'gone' }]))
  t.match(text, 'extfs_views 2')
  t.match(text, 'extfs_view_up{mountpoint="/mnt/a"} 1')
  t.match(text, 'extfs_view_up{mountpoint="/mnt/d"} 0')
  t.match(text, 'extfs_view_state{mountpoint="/mnt/d",state="dead"} 1')
  t.match(text, 'extfs_view_state{mountpoint="/mnt/d",state="serving"} 0')
  t.match(text, 'extfs_view_state{mountpoint="/mnt/a",state="unknown"} 0', 'every state has its line')
  t.match(text, 'extfs_view_read_bytes_total{mountpoint="/mnt/a"} 1048576')
  t.match(text, 'extfs_view_chain_position{mountpoint="/mnt/a"} 2')
  t.match(text, '# TYPE extfs_view_opens_total counter')
  t.notMatch(text, 'extfs_view_opens_total{mountpoint="/mnt/d"}', 'a dead view has no counters')
  const quoted = await statusMetrics(report([view({ mountpoint: '/mnt/"q"\\' })]))
  t.match(quoted, 'extfs_view_up{mountpoint="/mnt/\\"q\\"\\\\"} 1', 'label values escaped')
})
