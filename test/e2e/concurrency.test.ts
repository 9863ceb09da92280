// Eight readers at once through one view for a while: two tar streams, two dd streams, two rsyncs and
// two random-pread workers, every byte checked against the frozen source; the page cache is dropped
// every 2 s so reads keep going to the devices. No errors, and the view
// process's resident memory stays flat. EXTFS_SOAK_SECONDS sets the length (default 90 s).
import t from 'tap'
import { promises as fsp, readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { run } from '../helpers/exec'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { viewState } from '../helpers/tamper'

const SECONDS = Number(process.env.EXTFS_SOAK_SECONDS ?? 90)
const MiB = 1024 * 1024

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) : 0
}

t.test(`8 concurrent readers for ${SECONDS} s`, async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'ext4', sizeMiB: 512 }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    const big: string[] = []
    await fsp.mkdir(path.join(data, 'small'), { recursive: true })
    for (let i = 0; i < 4; i++) {
      big.push(`big${i}`)
      await fsp.writeFile(path.join(data, `big${i}`), seededBytes(100 + i, 24 * MiB + i * 4097))
    }
    for (let i = 0; i < 1500; i++) await fsp.writeFile(path.join(data, 'small', `f${i}`), seededBytes(i, (i * 37) % 9000))
    const manifest = path.join(state, 'm.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const source = await snapshotTree(data, { timePrecisionNs: 1_000_000, xattrs: false, acls: false })
      const bigSha = new Map(big.map((b) => [b, sha(readFileSync(path.join(data, b)))]))

      await withView(manifest, async (view) => {
        const pid = viewState(view)!.pid
        const deadline = Date.now() + SECONDS * 1000
        const errors: string[] = []
        const rounds: Record<string, number> = {}
        const loop = async (name: string, once: () => Promise<string | undefined>) => {
          rounds[name] = 0
          while (Date.now() < deadline && errors.length === 0) {
            const err = await once()
            if (err) errors.push(`${name}: ${err}`)
            rounds[name]++
          }
        }
        let tarSha: string | undefined
        const tarOnce = async () => {
          const r = await run('sh', ['-c', `tar -C '${view}' -cf - . | sha256sum`])
          if (r.code !== 0) return `exit ${r.code}: ${r.stderr}`
          tarSha ??= r.stdout
          return r.stdout === tarSha ? undefined : 'tar stream differs from the first one'
        }
        const ddOnce = (i: number) => async () => {
          const file = big[(rounds[`dd${i}`] + i) % big.length]
          const r = await run('sh', ['-c', `dd if='${path.join(view, file)}' bs=1M status=none | sha256sum`])
          return r.code !== 0 ? `exit ${r.code}` : r.stdout.startsWith(bigSha.get(file)!) ? undefined : `${file} differs`
        }
        const rsyncOnce = (i: number) => async () => {
          const dest = path.join(state, `rsync${i}`)
          await fsp.rm(dest, { recursive: true, force: true })
          const r = await run('rsync', ['-aH', `${view}/`, `${dest}/`])
          if (r.code !== 0) return `exit ${r.code}: ${r.stderr}`
          const diff = diffTrees(source, await snapshotTree(dest, { timePrecisionNs: 1_000_000, xattrs: false, acls: false }))
          return diff.length ? diff.slice(0, 3).join('; ') : undefined
        }
        const preadOnce = async () => {
          // 200 random reads of random lengths at random offsets, compared with the source.
          for (let k = 0; k < 200; k++) {
            const file = big[Math.floor(Math.random() * big.length)]
            const size = (await fsp.stat(path.join(data, file))).size
            const offset = Math.floor(Math.random() * (size + 8192))
            const length = 1 + Math.floor(Math.random() * 300_000)
            const [a, b] = await Promise.all([readAt(path.join(view, file), offset, length), readAt(path.join(data, file), offset, length)])
            if (!a.equals(b)) return `${file} at ${offset}+${length} differs`
          }
          return undefined
        }
        const rss: number[] = [rssKiB(pid)]
        // Every sample also drops the page cache, so the readers keep reaching the devices, not just the cache.
        const sampler = setInterval(() => {
          rss.push(rssKiB(pid))
          void fsp.writeFile('/proc/sys/vm/drop_caches', '3')
        }, 2000)
        try {
          await Promise.all([loop('tar0', tarOnce), loop('tar1', tarOnce), loop('dd0', ddOnce(0)), loop('dd1', ddOnce(1)),
            loop('rsync0', rsyncOnce(0)), loop('rsync1', rsyncOnce(1)), loop('pread0', preadOnce), loop('pread1', preadOnce)])
        } finally {
          clearInterval(sampler)
        }
        t.same(errors, [], `no errors (rounds: ${JSON.stringify(rounds)})`)
        t.ok(Object.values(rounds).every((n) => n > 0), 'every reader completed rounds')
        // Flat: after the first third (caches and pools warmed), RSS grows by at most 32 MiB.
        const warm = rss[Math.floor(rss.length / 3)]
        const peak = Math.max(...rss.slice(Math.floor(rss.length / 3)))
        t.ok(peak - warm <= 32 * 1024, `view RSS flat: ${Math.round(warm / 1024)} MiB after warm-up, peak ${Math.round(peak / 1024)} MiB`)
      })
    } finally {
      await release(manifest)
    }
  })
})

async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fsp.open(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fh.read(buf, 0, length, offset)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}
