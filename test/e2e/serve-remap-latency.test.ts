// A remap never makes serve late: while the first remap of a large image runs (every file mapped again),
// lease answers keep coming, because the remap runs in serve's remap thread (src/service/remap-worker.ts).
// The same probe against a remap on serve's own thread, as it ran before, sees answers held back for
// about the whole remap: the probe can tell the two apart. The bound is relative to the remap's length
// (a tenth of it, and never under 100 ms), not a fixed figure: on a loaded host (a CI run with fuzzers
// beside it) a lone answer took 132 ms while the remap took 2.2 s, which is noise, not the bug.
import t from 'tap'
import { promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import pino from 'pino'
import { withLoopFs, sleep } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, startServe } from '../helpers/extfs'
import { ConfigClient } from '../../src/service/client'
import { ConfigServer } from '../../src/service/server'
import { ServeState } from '../../src/service/state'
import { remapImage } from '../../src/remap/remap'

/** Files in the image: enough that a first remap takes seconds here. */
const FILES = 40_000
const LATE_MS = 100
/** An answer held back longer than this share of the remap means serve's thread ran the remap. */
const HELD_SHARE = 0.1

/** How long each config answer took while `remap` ran, and how long the remap took, ms. */
async function probeDuringRemap(client: ConfigClient): Promise<{ remapMs: number; answersMs: number[] }> {
  const started = performance.now()
  let done = false
  const remap = client.remap(600_000).finally(() => { done = true })
  const answersMs: number[] = []
  while (!done) {
    const asked = performance.now()
    await client.config()
    answersMs.push(performance.now() - asked)
    await sleep(10)
  }
  await remap
  return { remapMs: performance.now() - started, answersMs }
}

/** keptBytes of serve's last 'remap' log line. */
function keptBytesLogged(stderr: string): number {
  const lines = stderr.split('\n').filter((l) => l.includes('"msg":"remap"'))
  return JSON.parse(lines.at(-1) ?? '{}').keptBytes
}

async function writeSmallFiles(dir: string): Promise<void> {
  const perDir = 1000
  for (let d = 0; d < FILES / perDir; d++) {
    const sub = path.join(dir, `d${d}`)
    await fsp.mkdir(sub)
    await Promise.all(Array.from({ length: perDir }, (_, i) => fsp.writeFile(path.join(sub, `f${i}`), `file ${d}/${i}\n`.repeat(8))))
  }
}

t.test(`lease answers are not held back while a ${FILES}-file image is remapped`, async (t) => {
  const dir = await scratchDir(t, 'extfs-remap-latency-')
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, 'a3'.repeat(32))
  const key = readFileSync(keyFile)
  await withLoopFs({ fs: 'ext4', sizeMiB: 512, mkfsArgs: ['-N', String(FILES + 10_000)] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await writeSmallFiles(data)
    await runOk('sync', ['-f', data])
    const manifest = path.join(dir, 'big.json')
    try {
      // --mapper vfs: the image serve remaps file by file through the VFS, the long remap this probe
      // needs (and the cache it keeps); a bulk-mapped image remaps in a fraction of a second and keeps
      // no map of its files (src/remap/bulk.ts).
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze', '--mapper', 'vfs', '--key', keyFile], { timeoutMs: 300_000 })
      t.equal(exp.code, 0, `export: ${exp.stderr}`)

      const served = await startServe(t, ['--key', keyFile, '--state', path.join(dir, 'serve.db'), '--interval', '0', manifest])
      const client = new ConfigClient(`${served.url}/big`, key)
      const worker = await probeDuringRemap(client)
      client.close()
      const slowest = Math.max(...worker.answersMs)
      const late = Math.max(LATE_MS, HELD_SHARE * worker.remapMs)
      t.ok(worker.remapMs >= 10 * LATE_MS, `the remap took ${Math.round(worker.remapMs)} ms: long enough to hold answers back if it ran on serve's thread`)
      t.ok(worker.answersMs.length >= 5, `${worker.answersMs.length} answers during the remap`)
      t.ok(slowest < late, `slowest answer during the remap: ${slowest.toFixed(1)} ms (bound ${late.toFixed(0)} ms)`)
      t.equal((await served.stop()).code, 0, 'serve stopped cleanly')
      const kept = keptBytesLogged(served.stderr())
      t.ok(kept > FILES * 100 && kept <= 512 * 2 ** 20, `serve kept ${kept} bytes for the next remap, within the default --remap-cache`)

      // A bound smaller than the image's cache: nothing is kept, and the remap is as exact as ever.
      const small = await startServe(t, ['--key', keyFile, '--state', path.join(dir, 'small.db'), '--interval', '0', '--remap-cache', '1', manifest])
      const smallClient = new ConfigClient(`${small.url}/big`, key)
      t.match(await smallClient.remap(600_000), { state: 'unchanged', seq: 0 }, 'remap with --remap-cache 1')
      smallClient.close()
      t.equal((await small.stop()).code, 0, 'serve stopped cleanly')
      t.equal(keptBytesLogged(small.stderr()), 0, 'an image\'s cache over --remap-cache is not kept')

      // The control: the same remap on serve's own thread holds the answers back.
      const state = new ServeState(path.join(dir, 'control.db'))
      const server = new ConfigServer({ manifests: [manifest], key, state, log: pino({ level: 'silent' }), intervalMs: 0, remapper: { remap: remapImage } })
      try {
        const addr = await server.listen('127.0.0.1', 0)
        const inThread = new ConfigClient(`http://127.0.0.1:${addr.port}/big`, key)
        const control = await probeDuringRemap(inThread)
        inThread.close()
        const held = Math.max(...control.answersMs)
        t.ok(held > Math.max(LATE_MS, HELD_SHARE * control.remapMs), `on serve's own thread an answer waited ${Math.round(held)} ms (remap ${Math.round(control.remapMs)} ms): the bound tells the two apart`)
      } finally {
        await server.close()
        state.close()
      }
    } finally {
      await release(manifest)
    }
  })
})
