// The systemd units, the backup job's wrapper and the cron example (systemd/), as `scripts/install
// --system` installs them (into a DESTDIR here): systemd-analyze verify finds nothing to say about any
// unit, the wrapper gives extfs backup exactly the job's arguments, and cron's flock skips a night
// while the last one still runs.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { run, runOk } from '../helpers/exec'

const repo = path.resolve(__dirname, '..', '..')
const UNITS = ['extfs-serve.service', 'extfs-backup@.service', 'extfs-backup@.timer']

/** install-files --system into a fresh root, with settings of the admin's already there. */
async function installed(t: Test): Promise<string> {
  const root = t.testdir({ etc: { extfs: { 'serve.env': 'EXTFS_SERVE_LISTEN=127.0.0.1:1\n' } } })
  await runOk(path.join(repo, 'scripts', 'lib', 'install-files'), ['--system'], { env: { ...process.env, DESTDIR: root } })
  return root
}

/**
 * systemd-analyze verify of `units` (templates as an instance), copied from `dir` with the paths they
 * name under /usr/local/bin taken from the install in `root`.
 */
async function verify(root: string, dir: string, units: string[]): Promise<{ code: number | null; stderr: string }> {
  const check = fs.mkdtempSync(path.join(root, 'check-'))
  for (const u of units) {
    fs.writeFileSync(path.join(check, u), fs.readFileSync(path.join(dir, u), 'utf8').replaceAll('/usr/local/bin/', `${root}/usr/local/bin/`))
  }
  // Documentation=man:... is checked against the pages the install generated.
  const env = { ...process.env, MANPATH: path.join(root, 'usr', 'local', 'share', 'man') }
  return run('systemd-analyze', ['verify', ...units.map((u) => u.replace('@.', '@nightly.'))], { cwd: check, env })
}

t.test('install --system: units, links, pages, completion; existing settings kept', async (t) => {
  const root = await installed(t)
  for (const u of UNITS) t.equal(fs.readFileSync(path.join(root, 'etc/systemd/system', u), 'utf8'), fs.readFileSync(path.join(repo, 'systemd', u), 'utf8'), u)
  t.equal(fs.readlinkSync(path.join(root, 'usr/local/bin/extfs')), path.join(repo, 'bin/extfs'))
  t.equal(fs.readlinkSync(path.join(root, 'usr/local/bin/extfs-backup-job')), path.join(repo, 'systemd/extfs-backup-job'))
  t.equal(fs.readFileSync(path.join(root, 'etc/extfs/serve.env'), 'utf8'), 'EXTFS_SERVE_LISTEN=127.0.0.1:1\n', 'the admin\'s serve.env kept')
  t.equal(fs.readFileSync(path.join(root, 'etc/extfs/backup/example.env'), 'utf8'), fs.readFileSync(path.join(repo, 'systemd/backup.env'), 'utf8'))
  t.ok(fs.existsSync(path.join(root, 'usr/local/share/man/man1/extfs-backup.1')))
  t.ok(fs.existsSync(path.join(root, 'usr/local/share/bash-completion/completions/extfs')))
  const r = await run(path.join(root, 'usr/local/bin/extfs'), ['--version'])
  t.same([r.code, r.stdout.trim()], [0, require('../../package.json').version], 'the linked command runs')
})

t.test('systemd-analyze verify: every unit clean; a broken one is caught', async (t) => {
  const root = await installed(t)
  const units = path.join(root, 'etc/systemd/system')
  t.match(await verify(root, units, UNITS), { code: 0, stderr: '' }, 'every unit verifies with nothing to say')
  // The check can fail: an unknown key is only a warning (exit 0), a missing binary an error.
  const broken = path.join(root, 'broken')
  fs.mkdirSync(broken)
  fs.writeFileSync(path.join(broken, 'extfs-serve.service'), fs.readFileSync(path.join(units, 'extfs-serve.service'), 'utf8').replace('ProtectSystem=strict', 'ProtectSytem=strict'))
  fs.writeFileSync(path.join(broken, 'extfs-backup@.service'), fs.readFileSync(path.join(units, 'extfs-backup@.service'), 'utf8').replace('extfs-backup-job', 'extfs-backup-jobs'))
  const r = await verify(root, broken, ['extfs-serve.service', 'extfs-backup@.service'])
  t.match(r.stderr, /Unknown key 'ProtectSytem'/, 'a misspelt key is reported')
  t.match(r, { code: 1, stderr: /extfs-backup-jobs is not executable/ }, 'a missing ExecStart binary fails')
})

/** A fake extfs that prints its arguments, one per line. */
function argvPrinter(dir: string): string {
  const p = path.join(dir, 'print-argv')
  fs.writeFileSync(p, '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n', { mode: 0o755 })
  return p
}

t.test('extfs-backup-job: the job\'s settings become extfs backup\'s argv, words split, nothing globbed', async (t) => {
  const dir = t.testdir({ 'job.env': [
    'EXTFS_SOURCE=http://initiator:7070/nightly',
    'EXTFS_COMMAND="tar --xattrs -cpf /backup/nightly.tar *"',
    'EXTFS_MOUNTPOINT=/mnt/extfs/nightly',
    'EXTFS_KEY=/etc/extfs/key',
    'EXTFS_OPTIONS="--lease 60 --ca /etc/extfs/ca.pem"',
    '',
  ].join('\n'), 'a-file-a-glob-would-find': '' })
  const job = path.join(repo, 'systemd/extfs-backup-job')
  const env = { PATH: process.env.PATH, EXTFS_BIN: argvPrinter(dir) }
  const expected = ['backup', 'http://initiator:7070/nightly', '--mountpoint', '/mnt/extfs/nightly', '--key', '/etc/extfs/key',
    '--lease', '60', '--ca', '/etc/extfs/ca.pem', '--', 'tar', '--xattrs', '-cpf', '/backup/nightly.tar', '*']
  const fromFile = await runOk(job, [path.join(dir, 'job.env')], { env, cwd: dir })
  t.same(fromFile.stdout.split('\n').slice(0, -1), expected, 'from cron: the file named')
  // As systemd runs it: the settings in the environment (EnvironmentFile=, which drops the quotes), no argument.
  const settings = Object.fromEntries(fs.readFileSync(path.join(dir, 'job.env'), 'utf8').split('\n').filter(Boolean)
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1).replace(/^"(.*)"$/, '$1')]))
  const fromUnit = await runOk(job, [], { env: { ...env, ...settings }, cwd: dir })
  t.same(fromUnit.stdout.split('\n').slice(0, -1), expected, 'from the unit: the environment')
  const minimal = await runOk(job, [], { env: { ...env, EXTFS_SOURCE: '/shared/my manifest.json', EXTFS_COMMAND: 'restic backup .' } })
  t.same(minimal.stdout.split('\n').slice(0, -1), ['backup', '/shared/my manifest.json', '--', 'restic', 'backup', '.'], 'a source with a space stays one argument; no empty ones')
  const example = await runOk(job, [path.join(repo, 'systemd/backup.env')], { env })
  t.same(example.stdout.split('\n').slice(0, -1), ['backup', '/shared/nightly.json', '--', 'tar', '--xattrs', '--acls', '-cpf', '/backup/nightly.tar', '.'], 'the example job')
  const missing = await run(job, [], { env: { ...env, EXTFS_SOURCE: '/x.json' } })
  t.match(missing, { code: 2, stderr: /EXTFS_COMMAND is not set/ }, 'a job without a command is refused')
  // The real extfs gets them: backup's own --help through EXTFS_OPTIONS.
  const real = await run(job, [], { env: { PATH: process.env.PATH, EXTFS_BIN: path.join(repo, 'bin/extfs'), EXTFS_SOURCE: '/x.json', EXTFS_OPTIONS: '--help', EXTFS_COMMAND: 'true' } })
  t.match(real, { code: 0, stdout: /^Usage: extfs backup \[options\] <manifest> <command\.\.\.>/ }, 'the real extfs backup parses them')
})

t.test('cron example: flock skips a night while the last one runs (exit 75)', async (t) => {
  const dir = t.testdir({ 'nightly.env': 'EXTFS_SOURCE=/x.json\nEXTFS_COMMAND=true\n' })
  const slow = path.join(dir, 'slow-extfs')
  fs.writeFileSync(slow, `#!/bin/sh\ntouch ${dir}/started\nsleep 2\n`, { mode: 0o755 })
  const line = fs.readFileSync(path.join(repo, 'systemd/extfs-backup.cron'), 'utf8').split('\n').find((l) => /^[0-9]/.test(l))!
  const command = line.split(/\s+/).slice(6).join(' ')
    .replace('/run/lock/extfs-backup-nightly.lock', path.join(dir, 'lock'))
    .replace('/usr/local/bin/extfs-backup-job', path.join(repo, 'systemd/extfs-backup-job'))
    .replace('/etc/extfs/backup/nightly.env', path.join(dir, 'nightly.env'))
  const env = { PATH: '/usr/bin:/bin', EXTFS_BIN: slow }
  const first = run('/bin/sh', ['-c', command], { env })
  while (!fs.existsSync(path.join(dir, 'started'))) await new Promise((r) => setTimeout(r, 20))
  const second = await run('/bin/sh', ['-c', command], { env })
  t.match(second, { code: 0, stdout: 'extfs backup nightly: exit 75\n' }, 'the second night is skipped, and says so')
  t.match(await first, { code: 0, stdout: '' }, 'the first ran to its end')
})
