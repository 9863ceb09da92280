// Progress of `export`, `mount` and `backup` as an admin and a script see it: under a pseudo-terminal (util-linux
// `script`) a status line rewritten in place ending in a final line; with stderr a pipe, JSON lines
// that parse, counts reaching the totals in the summary; nothing on stdout but the result; nothing at
// all with --quiet. A small ext4 of a few thousand files, JSON lines every millisecond.
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { EXTFS, ensureUnmounted, extfs, release, scratchDir } from '../helpers/extfs'
import { run } from '../helpers/exec'

const env = { ...process.env, EXTFS_PROGRESS_INTERVAL_MS: '1' }
const EXPORTED = /^exported (\d+) inodes to /

/** What populate() writes: regular files, and their bytes (files of 0 to 4950 bytes, and 8 MiB). */
const FILES = 20 * 100 + 1
const EMPTY = 20
const BYTES = 20 * (50 * 99 * 100) / 2 + (8 << 20)

async function populate(root: string): Promise<void> {
  for (let d = 0; d < 20; d++) {
    await fsp.mkdir(path.join(root, `d${d}`))
    await Promise.all(Array.from({ length: 100 }, (_, f) => fsp.writeFile(path.join(root, `d${d}`, `f${f}`), 'x'.repeat(f * 50))))
  }
  await fsp.writeFile(path.join(root, 'big'), Buffer.alloc(8 << 20, 7))
}

/** `cmd` with stderr on a pseudo-terminal (stdout to `stdoutFile`): what the terminal showed. */
async function onTerminal(cmd: string[], stdoutFile: string): Promise<{ code: number | null; terminal: string }> {
  const line = [...cmd.map(quote), '>', quote(stdoutFile)].join(' ')
  const r = await run('script', ['-qec', line, '/dev/null'], { env, timeoutMs: 60_000 })
  return { code: r.code, terminal: r.stdout }
}

function quote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

function jsonLines(stderr: string): Record<string, unknown>[] {
  return stderr.trim().split('\n').map((l) => JSON.parse(l))
}

t.test('export and mount progress: JSON lines on a pipe, a status line on a terminal, none when quiet', async (t) => {
  const dir = await scratchDir(t, 'progress-')
  const view = path.join(dir, 'view')
  await fsp.mkdir(view)
  t.teardown(() => ensureUnmounted(view))
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    await populate(fs.mountpoint)

    // stderr a pipe: JSON lines; the walker over the whole filesystem: totals from statfs.
    const m1 = path.join(dir, 'm1.json')
    const e1 = await extfs(['export', fs.mountpoint, '--output', m1, '--mapper', 'vfs'], { env })
    t.equal(e1.code, 0, e1.stderr)
    t.match(e1.stdout, EXPORTED, 'stdout: the result line only')
    t.equal(e1.stdout.split('\n').length, 2)
    const inodes = Number(EXPORTED.exec(e1.stdout)![1])
    const lines = jsonLines(e1.stderr)
    const map = lines.filter((l) => l.phase === 'map')
    t.ok(map.length > 2, `status lines while mapping (${map.length})`)
    const total = map[0]!.files_total as number
    t.ok(total >= inodes && total < inodes + 16, `files_total ${total}: statfs's used inodes, the exported ${inodes} and a few reserved`)
    t.ok(map.every((l, i) => i === 0 || (l.files_done as number) >= (map[i - 1]!.files_done as number)), 'counts only grow')
    t.same(lines.map((l) => l.phase).filter((p, i, a) => p !== a[i - 1]), ['image', 'map', 'write', undefined], 'phases in order, then the summary')
    t.match(lines.at(-1), { message_type: 'summary', command: 'export', files_done: inodes })
    t.ok((lines.at(-1)!.bytes_done as number) > 8 << 20, 'bytes: the allocated bytes mapped')

    // mount in the background, stderr a pipe: the child's load progress shown by the parent.
    const mo = await extfs(['mount', m1, view, '--log-file', path.join(dir, 'log')], { env })
    t.equal(mo.code, 0, mo.stderr)
    t.equal(mo.stdout, '', 'mount prints nothing on stdout')
    const load = jsonLines(mo.stderr)
    t.match(load.filter((l) => l.message_type === 'status').at(-1), { phase: 'load', files_done: inodes, files_total: inodes })
    t.match(load.at(-1), { message_type: 'summary', command: 'mount', files_done: inodes })
    await ensureUnmounted(view)
    await release(m1)

    // stderr a terminal: the bulk mapper's phases on one line, then the final line.
    const m2 = path.join(dir, 'm2.json')
    const out2 = path.join(dir, 'stdout2')
    const e2 = await onTerminal([EXTFS, 'export', fs.mountpoint, '--output', m2, '--mapper', 'bulk'], out2)
    t.equal(e2.code, 0, e2.terminal)
    const inodes2 = Number(EXPORTED.exec(await fsp.readFile(out2, 'utf8'))![1])
    t.notMatch(e2.terminal, /message_type/, 'no JSON on a terminal')
    t.match(e2.terminal, /\rexport: image\x1b\[K/)
    t.match(e2.terminal, new RegExp(`\\rexport: ${inodes2.toLocaleString('en-US')} files {2}[0-9.]+ MiB {2}in 0:\\d\\d\\x1b\\[K\\r?\\n$`), 'the final line')

    // mount on a terminal, in the foreground's way too: --json gives JSON lines even there.
    const mt = await onTerminal([EXTFS, 'mount', m2, view, '--log-file', path.join(dir, 'log')], path.join(dir, 'stdout3'))
    t.equal(mt.code, 0, mt.terminal)
    t.match(mt.terminal, new RegExp(`\\rmount: ${inodes2.toLocaleString('en-US')} files .*\\x1b\\[K\\r?\\n$`))
    await ensureUnmounted(view)
    const mj = await onTerminal([EXTFS, 'mount', m2, view, '--json', '--log-file', path.join(dir, 'log')], path.join(dir, 'stdout4'))
    t.equal(mj.code, 0, mj.terminal)
    t.match(jsonLines(mj.terminal.replace(/\r/g, '')).at(-1), { message_type: 'summary', files_done: inodes2 })
    t.equal(await fsp.readFile(path.join(dir, 'stdout4'), 'utf8'), '')
    await ensureUnmounted(view)
    await release(m2)

    // --quiet: nothing on stderr, the result on stdout.
    const m3 = path.join(dir, 'm3.json')
    const e3 = await extfs(['export', fs.mountpoint, '--output', m3, '--quiet'], { env })
    t.equal(e3.code, 0, e3.stderr)
    t.equal(e3.stderr, '')
    t.match(e3.stdout, EXPORTED)

    // backup, stderr a pipe: the view's load, then what tar read of the image's files, asked of the view.
    const tarFile = path.join(dir, 'out.tar')
    const b1 = await extfs(['backup', m3, '--', 'tar', '-cf', tarFile, '.'], { env: { ...env, EXTFS_PROGRESS_INTERVAL_MS: '50' } })
    t.equal(b1.code, 0, b1.stderr)
    t.equal(b1.stdout, '', 'backup prints nothing of its own on stdout')
    const bl = jsonLines(b1.stderr)
    t.same(bl.map((l) => l.phase).filter((p, i, a) => p !== a[i - 1]), ['load', 'read', undefined], 'phases: load, read, then the summary')
    const read = bl.filter((l) => l.phase === 'read')
    t.match(read[0], { files_total: FILES, bytes_total: BYTES }, 'totals: the image\'s regular files and their bytes')
    // GNU tar does not open an empty file: it has nothing to read.
    t.match(bl.at(-1), { message_type: 'summary', command: 'backup', files_done: FILES - EMPTY, bytes_done: BYTES }, 'tar opened every file with data and read every byte')
    const bq = await extfs(['backup', m3, '--quiet', '--', 'tar', '-cf', tarFile, '.'], { env })
    t.equal(bq.code, 0, bq.stderr)
    t.equal(bq.stderr, '', 'backup --quiet: nothing on stderr')

    // backup on a terminal: its status line, ending in the final line.
    const bt = await onTerminal([EXTFS, 'backup', m3, '--', 'tar', '-cf', tarFile, '.'], path.join(dir, 'stdout5'))
    t.equal(bt.code, 0, bt.terminal)
    t.match(bt.terminal, new RegExp(`\\rbackup: ${(FILES - EMPTY).toLocaleString('en-US')} files  12\\.7 MiB .*\\x1b\\[K\\r?\\n$`), 'the final line')
    await release(m3)
  })
})
