// serve's metrics (src/service/prometheus.ts) as Prometheus reads them: every metric's name, type and
// labels, zero series for every image from the start, the lease holders running out with the lease, and
// the remap schedule's remaps counted apart from those asked for. The text is read strictly
// (test/helpers/prometheus.ts). The end-to-end scrape of the real serve is test/e2e/serve-metrics.
import t from 'tap'
import { PromMetrics, REMAP_BUCKETS_S } from '../../src/service/prometheus'
import { REFUSAL_REASONS, REMAP_RESULTS, REMAP_TRIGGERS } from '../../src/service/metrics'
import { parseExposition, sample, type Exposition } from '../helpers/prometheus'
import { fakeRemapper, serveFakeImage } from '../helpers/serve-image'
import type { Remapper } from '../../src/service/remap-worker'

const read = async (m: PromMetrics): Promise<Exposition> => parseExposition(await m.registry.metrics())

t.test('names, types, labels; every series of an image starts at zero', async (t) => {
  const m = new PromMetrics()
  m.image('nightly')
  const e = await read(m)
  const types = {
    extfs_serve_config_id_changes_total: 'counter', extfs_serve_deltas_published_total: 'counter', extfs_serve_chain_deltas: 'gauge',
    extfs_serve_image_released: 'gauge', extfs_serve_config_answers_total: 'counter', extfs_serve_lease_holders: 'gauge',
    extfs_serve_remaps_total: 'counter', extfs_serve_remap_duration_seconds: 'histogram', extfs_serve_refused_requests_total: 'counter',
  }
  for (const [name, type] of Object.entries(types)) t.equal(e.types.get(name), type, name)
  t.same([...e.types.keys()].filter((n) => n.startsWith('extfs_')).sort(), Object.keys(types).sort(), 'no other extfs_ metric')
  t.equal(e.types.get('process_cpu_seconds_total'), 'counter', 'the process\'s default metrics')
  t.ok(e.types.has('nodejs_eventloop_lag_seconds'))

  const image = { image: 'nightly' }
  for (const name of ['extfs_serve_config_id_changes_total', 'extfs_serve_deltas_published_total', 'extfs_serve_config_answers_total', 'extfs_serve_lease_holders']) {
    t.equal(sample(e, name, image), 0, name)
  }
  for (const trigger of REMAP_TRIGGERS) for (const result of REMAP_RESULTS) t.equal(sample(e, 'extfs_serve_remaps_total', { ...image, trigger, result }), 0)
  for (const reason of REFUSAL_REASONS) t.equal(sample(e, 'extfs_serve_refused_requests_total', { reason }), 0, reason)
  t.equal(sample(e, 'extfs_serve_remap_duration_seconds_count', image), 0)
  for (const le of [...REMAP_BUCKETS_S.map(String), '+Inf']) t.equal(sample(e, 'extfs_serve_remap_duration_seconds_bucket', { ...image, le }), 0, `bucket ${le}`)
  t.throws(() => sample(e, 'extfs_serve_remaps_total', image), /no sample/, 'a look-up with a label missing fails')
})

t.test('events move their series', async (t) => {
  const m = new PromMetrics()
  m.image('nightly')
  m.image('weekly')
  m.published('nightly', { configIdChanged: true, deltas: 2, added: 2, released: false })
  m.published('nightly', { configIdChanged: false, deltas: 2, added: 0, released: true })
  m.remapped('nightly', 'request', 'remapped', 0.02)
  m.remapped('nightly', 'schedule', 'failed', 42)
  m.refused('replay')
  m.refused('replay')
  m.configAnswered('weekly', '10.0.0.1', 60_000)
  m.configAnswered('weekly', '10.0.0.1', 60_000)
  m.configAnswered('weekly', '10.0.0.2', 40)
  m.configAnswered('weekly', '10.0.0.3', undefined)
  m.configAnswered('weekly', undefined, 60_000)
  let e = await read(m)
  const nightly = { image: 'nightly' }
  t.equal(sample(e, 'extfs_serve_config_id_changes_total', nightly), 1)
  t.equal(sample(e, 'extfs_serve_deltas_published_total', nightly), 2)
  t.equal(sample(e, 'extfs_serve_chain_deltas', nightly), 2)
  t.equal(sample(e, 'extfs_serve_image_released', nightly), 1)
  t.equal(sample(e, 'extfs_serve_image_released', { image: 'weekly' }), 0, 'the other image\'s published state: only its own')
  t.equal(sample(e, 'extfs_serve_remaps_total', { ...nightly, trigger: 'request', result: 'remapped' }), 1)
  t.equal(sample(e, 'extfs_serve_remaps_total', { ...nightly, trigger: 'schedule', result: 'failed' }), 1)
  t.equal(sample(e, 'extfs_serve_remap_duration_seconds_count', nightly), 2)
  t.equal(sample(e, 'extfs_serve_remap_duration_seconds_bucket', { ...nightly, le: '0.025' }), 1, 'a 20 ms remap in the 25 ms bucket')
  t.equal(sample(e, 'extfs_serve_remap_duration_seconds_bucket', { ...nightly, le: '60' }), 2)
  t.equal(sample(e, 'extfs_serve_remap_duration_seconds_sum', nightly), 42.02)
  t.equal(sample(e, 'extfs_serve_refused_requests_total', { reason: 'replay' }), 2)
  t.equal(sample(e, 'extfs_serve_config_answers_total', { image: 'weekly' }), 5)
  t.equal(sample(e, 'extfs_serve_lease_holders', { image: 'weekly' }), 2, 'two addresses hold a lease; a released answer grants none')
  await new Promise((r) => setTimeout(r, 80))
  e = await read(m)
  t.equal(sample(e, 'extfs_serve_lease_holders', { image: 'weekly' }), 1, 'a lease of 40 ms ran out')
})

t.test('serve counts scheduled remaps, remaps asked for and failed ones apart', async (t) => {
  const m = new PromMetrics()
  const remapper = fakeRemapper(['c1-dddddddddddd'])
  const { client } = await serveFakeImage(t, remapper, 100, { metrics: m })
  const c = await client.config('minimal-0001', 5_000)
  t.equal(c.configId, 'c1-dddddddddddd', 'the schedule remapped')
  await client.remap()
  const e = await read(m)
  const image = { image: 'nightly' }
  t.equal(sample(e, 'extfs_serve_remaps_total', { ...image, trigger: 'schedule', result: 'remapped' }), 1)
  t.equal(sample(e, 'extfs_serve_remaps_total', { ...image, trigger: 'request', result: 'unchanged' }), 1)
  t.equal(sample(e, 'extfs_serve_config_id_changes_total', image), 1)
  t.equal(sample(e, 'extfs_serve_deltas_published_total', image), 1)
  t.equal(sample(e, 'extfs_serve_chain_deltas', image), 1)
  t.equal(sample(e, 'extfs_serve_lease_holders', image), 1, 'this process, from 127.0.0.1')

  const failing: Remapper = { remap: () => { throw new Error('no such device') } }
  const f = new PromMetrics()
  const other = await serveFakeImage(t, failing, 0, { metrics: f })
  await t.rejects(other.client.remap(), /500 remap failed: no such device/)
  const fe = await read(f)
  t.equal(sample(fe, 'extfs_serve_remaps_total', { ...image, trigger: 'request', result: 'failed' }), 1)
  t.equal(sample(fe, 'extfs_serve_refused_requests_total', { reason: 'remap_failed' }), 1)
  t.equal(sample(fe, 'extfs_serve_remap_duration_seconds_count', image), 1)
})

t.test('the exposition reader is strict', async (t) => {
  t.throws(() => parseExposition('extfs_x 1\n'), /no TYPE/)
  t.throws(() => parseExposition('# TYPE a counter\na{b=c} 1\n'), /bad labels/)
  t.throws(() => parseExposition('# TYPE a counter\na 1'), /newline/)
  t.throws(() => parseExposition('# TYPE a counter\na one\n'), /not a sample/)
  t.throws(() => parseExposition('# TYPE h histogram\nh_total 1\n'), /no TYPE/)
  t.same(sample(parseExposition('# TYPE h histogram\nh_bucket{le="+Inf",x="a\\"b"} 3\n'), 'h_bucket', { x: 'a"b', le: '+Inf' }), 3)
})
