// Shards (docs/shards.md) through the kernel: an ext4 on a loop device with every kind of file (hard
// links across directories, a sparse file, xattrs, ACLs, devices, an empty directory), exported; four
// `extfs backup --shard` runs each tar their shard (two of them through --shard auto, as Slurm and a
// Kubernetes Indexed Job give it), and the union of the four archives equals the source. A shard view
// mounted alone hides what is not its own; a release ends it as it ends a whole view, and fails the
// tasks still to come with 7. Every refusal of --shard is one line and exit 2.
import t from 'tap'
import { promises as fsp, statfsSync } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { populateEveryKind } from '../helpers/populate'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { jsonResult } from '../helpers/json-results'
import { NS, isSocket } from '../helpers/native-mount'

const COUNT = 4
const TAR = ['tar', '--xattrs', '--xattrs-include=*', '--acls', '--numeric-owner']
const ESTALE = -116

/** The environment without any scheduler's variables, plus `extra`. */
function envWith(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith('SLURM_') || k === 'JOB_COMPLETION_INDEX') delete env[k]
  return { ...env, ...extra }
}

/** Names in a tar archive that are not directories (hard links' second names included), sorted. */
async function nonDirs(archive: string): Promise<string[]> {
  const r = await runOk('tar', ['--quoting-style=literal', '-tvf', archive])
  return r.stdout.split('\n').filter((l) => l && !l.startsWith('d')).map((l) => l.slice(l.indexOf(' ./') + 1).replace(/ (->|link to) .*$/, '')).sort()
}

/** What statfs of a view of the tree at `root` counts: its inodes (each once, the root too) and their st_blocks. */
async function usageOf(root: string): Promise<{ inodes: number; blocks512: bigint }> {
  const blocks = new Map<bigint, bigint>()
  const walk = async (p: Buffer): Promise<void> => {
    const st = await fsp.lstat(p, { bigint: true })
    blocks.set(st.ino, st.blocks)
    if (st.isDirectory()) for (const name of await fsp.readdir(p, { encoding: 'buffer' })) await walk(Buffer.concat([p, Buffer.from('/'), name]))
  }
  await walk(Buffer.from(root))
  return { inodes: blocks.size, blocks512: [...blocks.values()].reduce((a, b) => a + b, 0n) }
}

t.test('four shards of one image: disjoint, their union the image; a shard view alone; release; refusals', async (t) => {
  const state = await scratchDir(t, 'shard-')
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'empty-dir/nested-empty'), { recursive: true })
    for (let i = 0; i < 40; i++) await fsp.writeFile(path.join(data, `small-${i}`), `${i}\n`.repeat(i * 37))
    await populateEveryKind(data)
    const manifest = path.join(state, 'nightly.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    try {
      const source = await snapshotTree(data, { timePrecisionNs: NS })

      const plan = jsonResult(t, await extfs(['inspect', manifest, '--shards', String(COUNT), '--json']), 'extfs.shards/1', 'inspect --shards')
      t.equal(plan.count, COUNT)
      t.equal(plan.shards.length, COUNT)
      t.ok(plan.shards.every((s: { files: number }) => s.files > 0), 'every shard has files')
      const text = await extfs(['inspect', manifest, '--shards', String(COUNT)])
      t.match(text.stdout, /^4 shard\(s\) of \d+ files, \d+ bytes; config ID [0-9a-f]{32}\nshard 0 .*\n.*\n.*\nshard 3 .*\nlargest {7}shard \d, \d+ bytes/, 'inspect --shards for people')

      await t.test('each shard backed up alone; two through --shard auto; the union equals the source', async (t) => {
        const archive = (i: number) => path.join(state, `shard-${i}.tar`)
        const backup = (i: number, shard: string[], env: NodeJS.ProcessEnv) =>
          extfs(['backup', manifest, ...shard, '--quiet', '--log-file', path.join(state, 'view.log'), '--', ...TAR, '-cpf', archive(i), '.'], { env })
        const runs = [
          await backup(0, ['--shard', `0/${COUNT}`], envWith()),
          await backup(1, ['--shard', 'auto'], envWith({ SLURM_ARRAY_TASK_ID: '1', SLURM_ARRAY_TASK_COUNT: String(COUNT), SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_MAX: '3' })),
          await backup(2, ['--shard', 'auto', '--shards', String(COUNT)], envWith({ JOB_COMPLETION_INDEX: '2' })),
          await backup(3, ['--shard', `3/${COUNT}`], envWith()),
        ]
        runs.forEach((r, i) => t.equal(r.code, 0, `backup of shard ${i}: ${r.stderr}`))
        const lists = await Promise.all([0, 1, 2, 3].map((i) => nonDirs(archive(i))))
        const all = lists.flat()
        t.equal(new Set(all).size, all.length, 'no name in two shards')
        const want = [...source].filter(([rel, e]) => e.kind !== 'dir' && e.kind !== 'socket').map(([rel]) => `./${rel}`).sort()
        t.same([...all].sort(), want, 'every name in one shard')
        for (const group of [['links/a/one', 'links/b/two', 'links/b/c/three'], ['links/pair-1', 'links/pair-2']]) {
          t.equal(lists.filter((l) => group.some((n) => l.includes(`./${n}`))).length, 1, `the hard-link group ${group[0]} in one shard, all its names`)
        }
        t.equal(lists.filter((l) => l.length > 0).length, COUNT, 'no shard empty')

        // A task re-run by the scheduler makes the same shard.
        const again = await extfs(['backup', manifest, '--shard', 'auto', '--quiet', '--', ...TAR, '-cpf', path.join(state, 'again.tar'), '.'],
          { env: envWith({ SLURM_ARRAY_TASK_ID: '1', SLURM_ARRAY_TASK_COUNT: String(COUNT) }) })
        t.equal(again.code, 0, again.stderr)
        t.same(await nonDirs(path.join(state, 'again.tar')), lists[1], 'shard 1 again: the same files')

        const out = path.join(state, 'union')
        await fsp.mkdir(out)
        for (let i = 0; i < COUNT; i++) await runOk(TAR[0], [...TAR.slice(1), '-C', out, '-xpf', archive(i)])
        t.same(diffTrees(source, await snapshotTree(out, { timePrecisionNs: NS }), { ignorePaths: isSocket(source) }), [],
          'the four archives extracted together equal the source: data, modes, owners, ns times, xattrs, ACLs, links (tar skips sockets)')
      })

      await t.test('a shard view shows its own inodes and the directories leading to them, nothing else', async (t) => {
        const shard = 1
        await withView(manifest, async (v) => {
          const seen = await snapshotTree(v, { timePrecisionNs: NS })
          const files = [...seen.values()].filter((e) => e.kind === 'file')
          const inodes = new Set([...seen].filter(([, e]) => e.kind === 'file').map(([rel, e]) => e.linkGroup ?? rel))
          t.equal(inodes.size, plan.shards[shard].files, `as many files as the plan says (${files.length} names)`)
          for (const [rel, e] of seen) t.same(e, source.get(rel), `${rel}: as in the source`)
          const hidden = [...source.keys()].find((rel) => source.get(rel)!.kind === 'file' && !seen.has(rel))!
          await t.rejects(fsp.stat(path.join(v, hidden)), { code: 'ENOENT' }, `${hidden}, of another shard: ENOENT`)
          const dir = path.dirname(hidden)
          if (seen.has(dir)) t.notOk((await fsp.readdir(path.join(v, dir))).includes(path.basename(hidden)), 'and not listed')
          const status = JSON.parse((await extfs(['status', v, '--json'])).stdout)
          t.same(status.views[0].image, { files: plan.shards[shard].files, bytes: plan.shards[shard].bytes }, 'extfs status speaks of the shard')
          t.same(status.views[0].shard, { index: shard, count: COUNT }, 'and names it')
          const usage = await usageOf(v)
          const sf = statfsSync(v)
          t.match(sf, { files: usage.inodes, blocks: Number((usage.blocks512 * 512n + BigInt(sf.bsize) - 1n) / BigInt(sf.bsize)) },
            `statfs counts the shard's ${usage.inodes} inodes and their blocks, not the image's`)

          // A release while the shard view serves: opens are refused as on a whole view.
          const some = [...seen].find(([, e]) => e.kind === 'file')![0]
          await release(manifest)
          let errno = 0
          for (const end = Date.now() + 5000; errno !== ESTALE && Date.now() < end;) {
            errno = await fsp.readFile(path.join(v, some)).then(() => 0, (err: NodeJS.ErrnoException) => err.errno ?? 0)
          }
          t.equal(errno, ESTALE, 'after release: ESTALE on open')
        }, ['--shard', `${shard}/${COUNT}`])
        const late = await extfs(['backup', manifest, '--shard', `2/${COUNT}`, '--quiet', '--', 'true'], { env: envWith() })
        t.equal(late.code, 7, `a task after the release exits 7: ${late.stderr}`)
      })
    } finally {
      await release(manifest)
    }

    await t.test('refusals: one line, exit 2 (every case: test/unit/shard-option.test.ts)', async (t) => {
      const cases: [string, string[], Record<string, string>, RegExp][] = [
        ['no scheduler', ['--shard', 'auto'], {}, /needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT .* or JOB_COMPLETION_INDEX with --shards/],
        ['--shards against Slurm', ['--shard', 'auto', '--shards', '5'], { SLURM_ARRAY_TASK_ID: '0', SLURM_ARRAY_TASK_COUNT: '4' }, /--shards 5 disagrees with SLURM_ARRAY_TASK_COUNT=4/],
        ['the fuse-native engine', ['--shard', '0/2'], { EXTFS_ENGINE: 'fuse-native' }, /needs the native engine/],
      ]
      for (const [what, args, env, message] of cases) {
        const r = await extfs(['backup', manifest, ...args, '--', 'true'], { env: envWith(env) })
        t.equal(r.code, 2, `${what}: exit 2`)
        t.match(r.stderr, new RegExp(`^extfs: .*${message.source}.*\\n$`), `${what}: one line`)
      }
      const m = await extfs(['mount', manifest, path.join(state, 'mnt'), '--shard', 'auto'], { env: envWith() })
      t.equal(m.code, 2, `mount --shard auto with no scheduler: ${m.stderr}`)
    })
  })
})
