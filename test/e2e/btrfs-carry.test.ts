// btrfs data on no raw block: inline extents (small files kept in the metadata tree) are carried in
// the manifest (up to --carry-max, at most 64 KiB, the mover's limit); one over the limit is refused
// with its name. Compressed files, small or large, are no longer carried: they are mapped to their
// compressed extents (test/e2e/btrfs-compressed.test.ts decodes them through the view).
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withBtrfs } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { seededBytes } from '../helpers/populate'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'
import { readJson } from '../helpers/tamper'

/** Compressible but not trivial: zstd packs it well, and every 4 KiB differs. */
function compressible(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i += 64) out.write(`line ${seed} ${i} of a compressible file\n`.padEnd(64, '.'), i)
  return out
}

/** Whatever extfs keeps at the top of the filesystem for its images. */
async function leftovers(top: string): Promise<string[]> {
  const dir = path.join(top, '.extfs-images')
  return (await fsp.readdir(dir).catch(() => [])) as string[]
}

t.test('inline btrfs files are carried, refused over --carry-max; compressed files are mapped, small or large', async (t) => {
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', mountOptions: 'compress-force=zstd,max_inline=2048' }, async (fs) => {
    const source = path.join(fs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', source])
    const files: Record<string, Buffer> = {
      'inline.txt': Buffer.from('small enough to live inline in the btrfs metadata\n'),
      'small-compressed': compressible(40 * 1024, 1),
      'big-compressed': compressible(1024 * 1024, 2),
      'plain-random': seededBytes(5, 3 * 1024 * 1024), // zstd gives up on random data: plain extents
    }
    for (const [name, data] of Object.entries(files)) await fsp.writeFile(path.join(source, name), data)
    await runOk('sync', [])

    const refusedManifest = path.join(scratch, 'refused.json')
    const lowered = await extfs(['export', source, '--mapper', 'vfs', '--output', refusedManifest, '--frozen-image', 'snapshot', '--carry-max', '16'])
    t.not(lowered.code, 0, '--carry-max 16 refuses the inline file')
    t.match(lowered.stderr, new RegExp(`${source}/inline.txt: `), `the refusal names the file by its own path: ${lowered.stderr.trim()}`)
    t.match(lowered.stderr, /--carry-max/, 'and the option that would carry it')
    t.equal(withoutProgress(lowered.stderr).trim().split('\n').length, 1, 'one line')
    t.same(await leftovers(fs.mountpoint), [], 'the refused export left no snapshot behind')

    const manifest = path.join(scratch, 'nightly.json')
    const exp = await extfs(['export', source, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    try {
      const m = await readJson(manifest)
      const byName = new Map<string, number>()
      for (const inode of m.inodes) for (const e of inode.entries ?? []) byName.set(e.name, e.ino)
      const inodeOf = (name: string) => m.inodes.find((i: { ino: number }) => i.ino === byName.get(name))
      t.ok(inodeOf('inline.txt').inline, 'the inline file is carried')
      for (const name of ['small-compressed', 'big-compressed']) {
        t.notOk(inodeOf(name).inline, `${name} is not carried`)
        t.ok(inodeOf(name).extents?.every((e: { compression?: string }) => e.compression === 'zstd'), `${name} is mapped to zstd extents`)
      }
      t.ok(inodeOf('plain-random').extents?.length > 0, 'the incompressible file is mapped to extents')
      await withView(manifest, async (view) => {
        for (const [name, data] of Object.entries(files)) {
          t.ok((await fsp.readFile(path.join(view, name))).equals(data), `${name} reads back exactly`)
        }
      })
    } finally {
      await release(manifest)
    }
    t.same(await leftovers(fs.mountpoint), [], 'release removed the snapshot')
  })
})
