// The serve loop in-process (src/serve/server.ts): remaps on request and on the schedule publish what the
// remapper wrote, long polls wake on it, a delta that breaks the chain is not published. The remapper is
// a fake here (the one test double: the real one is src/remap/remap.ts, tested on real relocations in
// test/e2e/remap.test.ts); it writes real delta files and records as `extfs remap` does.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import pino from 'pino'
import { ConfigServer, imageNameOf, type Remapper } from '../../src/serve/server'
import { ServeState } from '../../src/serve/state'
import { ConfigClient } from '../../src/serve/client'
import { KEY, fakeRemapper, signedImage } from '../helpers/serve-image'

async function setup(t: Test, remapper: Remapper, intervalMs = 0) {
  const { dir, manifest } = signedImage('extfs-serve-unit-')
  const state = new ServeState(path.join(dir, 'serve.db'))
  const lines: string[] = []
  const log = pino({ level: 'debug' }, { write: (l: string) => lines.push(l) })
  const server = new ConfigServer({ manifests: [manifest], key: KEY, state, log, remapper, intervalMs, leaseMs: 5000 })
  const addr = await server.listen('127.0.0.1', 0)
  const client = new ConfigClient(`http://127.0.0.1:${addr.port}/nightly`, KEY)
  t.teardown(async () => {
    client.close()
    await server.close()
    state.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir, manifest, client, lines }
}

t.test('image names', async (t) => {
  t.equal(imageNameOf('/shared/nightly.json'), 'nightly')
  t.equal(imageNameOf('/shared/db-2024.05.01'), 'db-2024.05.01')
  for (const bad of ['/shared/.json', '/shared/.hidden.json', '/shared/a b.json', `/shared/${'x'.repeat(129)}.json`]) {
    t.throws(() => imageNameOf(bad), /image name/, bad)
  }
})

t.test('POST remap publishes the remapper\'s delta; a long poll wakes on it', async (t) => {
  const remapper = fakeRemapper(['c1-aaaaaaaaaaaa'])
  const { client, manifest } = await setup(t, remapper)
  const poll = client.config('minimal-0001', 10_000)
  t.match(await client.remap(), { state: 'remapped', configId: 'c1-aaaaaaaaaaaa' })
  t.match(await poll, { configId: 'c1-aaaaaaaaaaaa', deltas: [1], leaseMs: 5000 })
  t.ok((await client.delta(1)).equals(fs.readFileSync(`${manifest}.delta-1`)))
  t.match(await client.remap(), { state: 'unchanged', configId: 'c1-aaaaaaaaaaaa' })
})

t.test('the schedule remaps every image', async (t) => {
  const remapper = fakeRemapper(['c1-bbbbbbbbbbbb', 'c2-bbbbbbbbbbbb'])
  const { client } = await setup(t, remapper, 150)
  let c = await client.config('minimal-0001', 5_000)
  if (c.configId === 'c1-bbbbbbbbbbbb') c = await client.config('c1-bbbbbbbbbbbb', 5_000)
  t.match(c, { configId: 'c2-bbbbbbbbbbbb', deltas: [1, 2] })
  t.ok(remapper.calls >= 2)
})

t.test('a delta that does not continue the chain is not published; the config ID is', async (t) => {
  const { client, lines } = await setup(t, fakeRemapper(['c1-cccccccccccc'], { brokenFrom: true }))
  await client.remap()
  t.match(await client.config(), { configId: 'c1-cccccccccccc', deltas: [] }, 'movers see a chain that does not reach the config ID and refuse')
  t.match(lines.join(''), /starts at somewhere-else, the chain is at minimal-0001","msg":"delta not published"/)
})
