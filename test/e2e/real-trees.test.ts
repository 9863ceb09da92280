// Trees real servers hold that the export refused or served wrong: times before 1970 with a fraction
// of a second, thousands of xattrs on one XFS file, btrfs properties (btrfs.compression), exact through
// the view; directory link counts as on the initiator; a nested mount or subvolume served as an empty
// directory, as `tar --one-file-system` copies it; sizes and xattr names the manifest cannot carry
// refused with exit 8 naming the path; names that are not UTF-8 carried as bytes.
import t, { type Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { withBtrfs } from '../helpers/btrfs'
import { runOk, run } from '../helpers/exec'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { diffTrees, snapshotTree } from '../helpers/tree'
import { ExitCode } from '../../src/errors'
import { decodeName, hostPath } from '../../src/manifest/names'

/** Sets `count` user xattrs on `file`, in one setfattr process. */
async function setManyXattrs(file: string, count: number, dir: string): Promise<void> {
  const dump = [`# file: ${path.basename(file)}`, ...Array.from({ length: count }, (_, i) => `user.attr${i}="v${i}"`), ''].join('\n')
  await fsp.writeFile(path.join(dir, 'xattrs.dump'), dump)
  await runOk('setfattr', [`--restore=${path.join(dir, 'xattrs.dump')}`], { cwd: path.dirname(file) })
}

/** rel -> [kind, nlink] of every entry below `root` on its filesystem (a mount point: itself, not its content). */
async function linkCounts(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  const rootDev = (await fsp.lstat(root)).dev
  const walk = async (rel: string): Promise<void> => {
    const st = await fsp.lstat(hostPath(path.join(root, rel)))
    out.set(rel || '.', `${st.isDirectory() ? 'dir' : 'other'} nlink ${st.nlink}`)
    if (!st.isDirectory() || st.dev !== rootDev) return
    const names = (await fsp.readdir(hostPath(path.join(root, rel)), { encoding: 'buffer' })).map(decodeName).sort()
    for (const name of names) await walk(rel ? `${rel}/${name}` : name)
  }
  await walk('')
  return out
}

/** Exports `data` with freeze, mounts it, and compares the view with the source exactly. */
async function exactThroughView(t: Test, data: string, dir: string, name: string, exportArgs: string[] = []): Promise<void> {
  const manifest = path.join(dir, `${name}.json`)
  try {
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze', ...exportArgs])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const source = await snapshotTree(data, { timePrecisionNs: 1 })
    await withView(manifest, async (mnt) => {
        const view = await snapshotTree(mnt, { timePrecisionNs: 1 })
      t.same(diffTrees(source, view), [], 'the view equals the source: data, times in ns, xattrs')
      t.same([...(await linkCounts(mnt))], [...(await linkCounts(data))], 'link counts as on the initiator, directories included')
    })
  } finally {
    await release(manifest)
  }
}

t.test('XFS: times before 1970 with nanoseconds, 4,000 xattrs on one file', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'xfs' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    const old = path.join(data, 'apollo')
    await fsp.writeFile(old, 'one small step\n')
    const many = path.join(data, 'many-xattrs')
    await fsp.writeFile(many, 'xattrs\n')
    await setManyXattrs(many, 4000, dir) // their names take 54,890 bytes of listxattr's 65,536
    await runOk('touch', ['-h', '-d', '1969-07-20 20:17:40.123456789', old])
    await runOk('touch', ['-h', '-d', '1901-12-14 20:45:53.999999999', many])
    await fsp.mkdir(path.join(data, 'sub/deeper'), { recursive: true })
    await runOk('touch', ['-h', '-d', '1960-01-01 00:00:00.000000001', data])
    await exactThroughView(t, data, dir, 'xfs')
  })
})

t.test('btrfs: a btrfs.compression property is carried and served', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withBtrfs({ devices: 1, data: 'single', metadata: 'single' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await runOk('btrfs', ['property', 'set', data, 'compression', 'zstd'])
    // Incompressible, so it is stored raw: compressed extents are another matter.
    await fsp.writeFile(path.join(data, 'inherits'), Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7919) % 251)))
    await runOk('sync', ['-f', data])
    const got = await run('getfattr', ['--absolute-names', '-n', 'btrfs.compression', path.join(data, 'inherits')])
    t.match(got.stdout, /zstd/, 'the new file carries btrfs.compression')
    await fsp.mkdir(path.join(data, 'sub/deeper'), { recursive: true }) // btrfs directories keep nlink 1
    await exactThroughView(t, data, dir, 'btrfs')
  })
})

t.test('what manifest format 1 cannot carry is refused with exit 8 naming the path', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'xfs' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    const huge = path.join(data, 'huge')
    await runOk('truncate', ['-s', '1E', huge])
    await runOk('truncate', ['-s', String(2 ** 53 + 2), huge]) // not even a power of two
    const manifest = path.join(dir, 'huge.json')
    const r = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(r.code, ExitCode.Export, 'exit 8')
    t.match(r.stderr, `${huge}: size 9007199254740994 is over 2^53`, 'naming the file and its size')
    await fsp.rm(huge)

    // XFS stores more xattrs than listxattr can list (E2BIG): no tool can copy them all.
    const tooMany = path.join(data, 'too-many-xattrs')
    await fsp.writeFile(tooMany, 'x\n')
    await setManyXattrs(tooMany, 5000, dir)
    const r1 = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(r1.code, ExitCode.Export, 'exit 8')
    t.match(r1.stderr, `${tooMany}: cannot list extended attributes`, 'naming the file')
    await fsp.rm(tooMany)

    await release(manifest)
  })
})

/**
 * Names as old shares hold them, made with Python (Node passes names as UTF-8): Latin-1, Shift-JIS,
 * arbitrary bytes, a newline, a symlink target and an xattr name that are not UTF-8.
 */
const BYTE_NAMES = String.raw`
import os, sys
os.chdir(sys.argv[1])
os.mkdir(b'\x83f\x81[\x83^')                                  # Shift-JIS "データ"
open(b'\x83f\x81[\x83^/caf\xe9.txt', 'w').write('latin-1\n')  # Latin-1 "café.txt"
open(b'\xff\xfe\x80raw', 'w').write('bytes\n')
open(b'two\nlines', 'w').write('newline\n')
open('café-utf8', 'w').write('utf-8\n')                       # both spellings of café side by side
os.symlink(b'caf\xe9.txt', b'\x83f\x81[\x83^/link')
os.setxattr(b'\xff\xfe\x80raw', b'user.caf\xe9', b'latin-1 name')
os.link(b'\xff\xfe\x80raw', b'hard\xa0link')
`

t.test('names that are not UTF-8 are carried as bytes and served exactly', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await runOk('python3', ['-c', BYTE_NAMES, data])
    // The walker's v1 JSON, whose escapes are checked below (the bulk mapper's bytes: ext4-bulk.test).
    await exactThroughView(t, data, dir, 'byte-names', ['--mapper', 'vfs'])
    const manifest = path.join(dir, 'byte-names.json')
    const text = await fsp.readFile(manifest, 'utf8')
    t.match(text, /"features":\[[^\]]*"byte-names"/, 'the manifest declares feature byte-names')
    t.match(text, String.raw`"caf\udce9.txt"`, 'a Latin-1 byte is an escape in the JSON')

    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    await fsp.mkdir(path.join(dir, 'never'))
    const old = await extfs(['mount', manifest, path.join(dir, 'never')], { env: { ...process.env, EXTFS_ENGINE: 'fuse-native' } })
    t.equal(old.code, ExitCode.Usage, 'the fuse-native engine refuses, it cannot look such names up')
    t.match(old.stderr, /names that are not UTF-8 \(feature "byte-names"\)/)
    await release(manifest)
  })
})

t.test('XFS clone set with names that are not UTF-8: exact, and remap finds every file', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'xfs' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await runOk('python3', ['-c', BYTE_NAMES, data])
    const manifest = path.join(dir, 'clones.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const source = await snapshotTree(data, { timePrecisionNs: 1 })
      await withView(manifest, async (mnt) => {
        t.same(diffTrees(source, await snapshotTree(mnt, { timePrecisionNs: 1 })), [], 'the view equals the source')
      })
      const remap = await extfs(['remap', manifest])
      t.equal(remap.code, 0, `remap walks byte names: ${remap.stderr}`)
    } finally {
      await release(manifest)
    }
  })
})

t.test('a nested mount and a nested btrfs subvolume are empty directories in the view', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withBtrfs({ devices: 1, data: 'single', metadata: 'single' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'a'), 'a\n')
    await runOk('btrfs', ['subvolume', 'create', path.join(data, 'nested-subvolume')])
    await fsp.writeFile(path.join(data, 'nested-subvolume', 'hidden'), 'not in the image\n')
    const mnt = path.join(data, 'nested-mount')
    await fsp.mkdir(mnt)
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0750', 'extfs-test', mnt])
    const manifest = path.join(dir, 'nested.json')
    try {
      await fsp.writeFile(path.join(mnt, 'hidden'), 'not in the image\n')
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      t.match(exp.stderr, /nested-mount: on another filesystem .*served as an empty directory/, 'export says so')
      await withView(manifest, async (view) => {
        for (const name of ['nested-subvolume', 'nested-mount']) {
          const [src, got] = [await fsp.lstat(path.join(data, name)), await fsp.lstat(path.join(view, name))]
          t.ok(got.isDirectory(), `${name} is a directory`)
          t.same(await fsp.readdir(path.join(view, name)), [], `${name} is empty`)
          t.same([got.mode, got.uid, got.gid, got.mtimeMs], [src.mode, src.uid, src.gid, src.mtimeMs], `${name} has the metadata stat shows on the source`)
          t.not(got.ino, (await fsp.lstat(view)).ino, `${name} has an inode number of its own`)
        }
        t.equal(await fsp.readFile(path.join(view, 'a'), 'utf8'), 'a\n', 'the rest is served')
      })
    } finally {
      await release(manifest)
      await runOk('umount', [mnt])
    }
  })
})

t.test('ext4: chattr flags (immutable, append-only, nodump) are served as lsattr shows them on the source', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'nodump-dir'), { recursive: true })
    const flagged = { immutable: '+i', 'append-only': '+a', nodump: '+d', plain: '' }
    for (const name of Object.keys(flagged)) await fsp.writeFile(path.join(data, name), `${name}\n`)
    const manifest = path.join(dir, 'flags.json')
    try {
      for (const [name, flag] of Object.entries(flagged)) if (flag) await runOk('chattr', [flag, path.join(data, name)])
      await runOk('chattr', ['+d', path.join(data, 'nodump-dir')])
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const lsattr = async (root: string) => (await runOk('lsattr', ['-d', ...[...Object.keys(flagged), 'nodump-dir'].map((n) => path.join(root, n))])).stdout.replaceAll(root, '<root>')
      const source = await lsattr(data)
      t.match(source, /^----i.* <root>\/immutable$/m, 'the source has the flags')
      await withView(manifest, async (view) => {
        t.equal(await lsattr(view), source, 'lsattr of the view equals lsattr of the source')
        const set = await run('chattr', ['-i', path.join(view, 'immutable')])
        t.not(set.code, 0, 'setting flags through the view is refused')
      })
    } finally {
      await release(manifest)
      for (const [name, flag] of Object.entries(flagged)) if (flag) await run('chattr', [flag.replace('+', '-'), path.join(data, name)])
    }
  })
})

t.test('XFS clone set: a file\'s chattr flags are the original\'s, not its clone\'s', async (t) => {
  const dir = await scratchDir(t, 'extfs-real-trees-')
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'nodump'), 'nodump\n')
    await runOk('chattr', ['+d', path.join(data, 'nodump')])
    const manifest = path.join(dir, 'clones.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const lsattr = async (root: string) => (await runOk('lsattr', ['-d', path.join(root, 'nodump')])).stdout.replaceAll(root, '<root>')
      await withView(manifest, async (view) => t.equal(await lsattr(view), await lsattr(data), 'lsattr of the view equals the source'))
    } finally {
      await release(manifest)
    }
  })
})
