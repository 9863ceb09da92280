// `extfs serve --metrics-listen` end to end: the real binary serving a btrfs snapshot on a loop device,
// scraped over HTTP and read strictly (test/helpers/prometheus.ts) before, during and after remaps asked
// for as a mover's final remap asks (POST remap): one that finds nothing moved, one after a real
// relocation (btrfs balance) that publishes a delta, one of the released image. A mover's config answer
// counts as a lease holder until serve's --lease runs out; unauthenticated and wrongly signed requests
// count by reason. Bad --metrics-listen values and a port in use refuse to start with one line.
import t from 'tap'
import { promises as fsp, readFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import * as path from 'node:path'
import { withBtrfs } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, startServe } from '../helpers/extfs'
import { sleep } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { sample, scrape, scrapeMetrics, type Exposition } from '../helpers/prometheus'
import { ConfigClient } from '../../src/service/client'

const KiB = 1024
const MiB = 1024 * KiB
const IMAGE = { image: 'nightly' }
const LEASE_S = 2

/** A request with no authentication headers: serve answers 401. */
function unsignedGet(base: string, target: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get(new URL(target, base), { agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode!)
    }).on('error', reject)
  })
}

const remaps = (e: Exposition, result: string) => sample(e, 'extfs_serve_remaps_total', { ...IMAGE, trigger: 'request', result })
const remapCount = (e: Exposition) => sample(e, 'extfs_serve_remap_duration_seconds_count', IMAGE)
const configIdChanges = (e: Exposition) => sample(e, 'extfs_serve_config_id_changes_total', IMAGE)
const leaseHolders = (e: Exposition) => sample(e, 'extfs_serve_lease_holders', IMAGE)
const refused = (e: Exposition, reason: string) => sample(e, 'extfs_serve_refused_requests_total', { reason })

t.test('extfs serve --metrics-listen', async (t) => {
  const dir = await scratchDir(t, 'extfs-metrics-')
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, seededBytes(91, 32).toString('hex'))
  const key = readFileSync(keyFile)
  const db = path.join(dir, 'serve.db')
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', data])
    for (let i = 0; i < 3; i++) await fsp.writeFile(path.join(data, `f-${i}`), seededBytes(900 + i, MiB + i * 4097))
    await runOk('sync', ['-f', data])
    const manifest = path.join(dir, 'nightly.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--mapper', 'vfs', '--key', keyFile])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const serveArgs = ['serve', '--listen', '127.0.0.1:0', '--key', keyFile, '--state', db, '--log-level', 'error']

      for (const bad of ['9464', '127.0.0.1:65536', 'localhost:']) {
        const r = await extfs([...serveArgs, '--metrics-listen', bad, manifest])
        t.equal(r.code, 2, `--metrics-listen ${bad}: usage exit code`)
        t.equal(r.stderr, `extfs: --metrics-listen takes <host>:<port>, got ${bad}\n`, `--metrics-listen ${bad}: one line`)
      }
      const holder = net.createServer()
      await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve))
      const taken = (holder.address() as net.AddressInfo).port
      const inUse = await extfs([...serveArgs, '--metrics-listen', `127.0.0.1:${taken}`, manifest])
      await new Promise((resolve) => holder.close(resolve))
      t.equal(inUse.code, 2, 'metrics port in use: usage exit code')
      t.equal(inUse.stderr, `extfs: cannot listen on 127.0.0.1:${taken} (--metrics-listen): EADDRINUSE\n`, 'metrics port in use: one line')

      const served = await startServe(t, ['--key', keyFile, '--state', db, '--interval', '0', '--lease', String(LEASE_S), '--metrics-listen', '127.0.0.1:0', manifest])
      const url = served.metricsUrl!
      t.match(url, /^http:\/\/127\.0\.0\.1:[0-9]+\/metrics$/, 'the serving line names the metrics address')
      t.equal((await scrape(url.replace(/metrics$/, 'images'))).status, 404, 'nothing but /metrics there')
      t.equal((await scrape(url, 'POST')).status, 405, 'nothing but GET')
      const text = (await scrape(url)).body
      t.notOk(text.includes(dir) || text.includes(fs.mountpoint), 'no paths in the metrics')

      const before = await scrapeMetrics(url)
      t.equal(remaps(before, 'unchanged') + remaps(before, 'remapped') + remapCount(before), 0, 'before: no remaps')
      t.equal(configIdChanges(before), 0, 'before: no config ID change')
      t.equal(leaseHolders(before), 0, 'before: no mover')
      t.equal(refused(before, 'unauthenticated'), 0)

      const mover = new ConfigClient(`${served.url}/nightly`, key)
      t.teardown(() => mover.close())
      const answered = performance.now()
      await mover.config()
      const holding = await scrapeMetrics(url)
      t.equal(leaseHolders(holding), 1, 'a mover answered a config holds a lease')
      t.equal(sample(holding, 'extfs_serve_config_answers_total', IMAGE), 1)

      t.equal(await unsignedGet(served.url, '/images/nightly/config'), 401, 'a request without a signature is refused')
      const forger = new ConfigClient(`${served.url}/nightly`, Buffer.from('another key, 32 bytes long......'))
      await t.rejects(forger.config(), /401/, 'a request signed with another key is refused')
      forger.close()
      const refusals = await scrapeMetrics(url)
      t.equal(refused(refusals, 'unauthenticated'), 1, 'the unsigned request counted as unauthenticated')
      t.equal(refused(refusals, 'bad_signature'), 1, 'the forged one as bad_signature')
      t.equal(leaseHolders(refusals), 1, 'refused requests hold no lease')

      t.match(await mover.remap(), { state: 'unchanged' })
      const unchanged = await scrapeMetrics(url)
      t.equal(remaps(unchanged, 'unchanged'), 1, 'a remap that found nothing moved')
      t.equal(remapCount(unchanged), 1, 'its duration observed')
      t.equal(configIdChanges(unchanged), 0, 'the config ID did not change')

      await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', fs.mountpoint], { timeoutMs: 120_000 })
      const remap = mover.remap(120_000)
      // Asked for while the remap runs in serve's remap thread; a remap of three files may be over
      // before the scrape is answered, so either side of it is right, as long as it is one side.
      const during = await scrapeMetrics(url)
      t.match(await remap, { state: 'remapped' })
      const done = remaps(during, 'remapped')
      t.ok(done === 0 || done === 1, `during: ${done} remapped`)
      t.equal(configIdChanges(during), done, 'during: the config ID changed exactly when the remap was counted')
      const after = await scrapeMetrics(url)
      t.equal(remaps(after, 'remapped'), 1, 'after: the remap after the balance counted as remapped')
      t.equal(remapCount(after), 2, 'after: its duration observed')
      t.equal(configIdChanges(after), 1, 'after: the config ID changed once')
      t.equal(sample(after, 'extfs_serve_deltas_published_total', IMAGE), 1, 'after: one delta published')
      t.equal(sample(after, 'extfs_serve_chain_deltas', IMAGE), 1, 'after: the chain has one delta')
      t.equal(remaps(after, 'failed') + sample(after, 'extfs_serve_remaps_total', { ...IMAGE, trigger: 'schedule', result: 'remapped' }), 0, 'none failed, none scheduled (--interval 0)')

      const untilExpired = LEASE_S * 1000 - (performance.now() - answered)
      if (untilExpired > 0) await sleep(untilExpired + 200)
      t.equal(leaseHolders(await scrapeMetrics(url)), 0, `the mover's lease ran out after --lease ${LEASE_S}`)

      await release(manifest)
      t.match(await mover.remap(), { state: 'released' })
      const released = await scrapeMetrics(url)
      t.equal(remaps(released, 'released'), 1, 'a remap of the released image')
      t.equal(sample(released, 'extfs_serve_image_released', IMAGE), 1, 'the image shows as released')
      await mover.config()
      t.equal(leaseHolders(await scrapeMetrics(url)), 0, 'a released answer grants no lease')

      t.same(await served.stop(), { code: 0, signal: null }, 'serve stops cleanly with its metrics endpoint')
    } finally {
      await release(manifest)
    }
  })
})
