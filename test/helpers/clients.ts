// The backup programs people point at a view, each run in its normal nightly mode (docs/clients.md):
// restic, borg, GNU tar --listed-incremental and rsync keep state between nights and report what they
// found new or changed; bsdtar, cpio and cp -a make one full copy. Repositories, caches and archives
// live in the test's own scratch directory. Paths reported are relative to the view's root.
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { RunResult, runOk, runPipeline } from './exec'
import { TAR_META } from './backup-tools'

const LONG = { timeoutMs: 600_000 }

/** A client that backs up a view night after night and restores its latest backup. */
export interface NightlyClient {
  name: string
  /** Back up `view`; the paths it reported as new or changed (the first night: everything). */
  backup(view: string): Promise<string[]>
  /** Restore the latest backup into `dest` (created), exactly as the view looked that night; returns where its root is. */
  restore(dest: string): Promise<string>
  /** Files the next backup reads again by design, changed or not (borg: see there). */
  readAgain?: () => string[]
  /**
   * Entries the last backup stored anew, data or metadata, compared with the one before (restic);
   * undefined when the view's device number differed, which restic 0.14 stores in every entry.
   */
  storedAnew?: () => Promise<string[] | undefined>
}

/** A client that makes one full copy of a view. */
export interface CopyClient {
  name: string
  /** Copy `view` into `dest` (created) by way of the client's archive, if it has one. */
  copy(view: string, dest: string): Promise<void>
}

async function ok(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return runOk(cmd, args, { ...LONG, ...opts })
}

/** The counts of restic's JSON summary the matrix checks. */
interface ResticSummary {
  files_new: number
  files_changed: number
}

/**
 * restic with a local repository. Its parent snapshot is the latest one of the same host and the same
 * absolute paths: the view must be mounted at the same path every night. A file is unchanged when its
 * mtime, ctime, size and inode number are (restic 0.14; `--ignore-inode` drops the last). A directory
 * is stored anew when anything restic keeps of it or its entries differs (mtime, ctime, owner, mode,
 * inode and device number, xattrs; atime only with --with-atime).
 */
export function restic(scratch: string): NightlyClient {
  const env = {
    ...process.env,
    RESTIC_REPOSITORY: path.join(scratch, 'restic-repo'),
    RESTIC_PASSWORD: 'extfs-test',
    XDG_CACHE_HOME: path.join(scratch, 'cache'),
  }
  let initialized = false
  let view = ''
  const devices: bigint[] = []
  return {
    name: 'restic',
    async backup(v) {
      if (!initialized) await ok('restic', ['init', '--quiet'], { env })
      initialized = true
      view = v
      devices.push((await fsp.stat(v, { bigint: true })).dev)
      const r = await ok('restic', ['backup', '--json', '--verbose', v], { env })
      const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
      const summary = lines.find((l) => l.message_type === 'summary') as ResticSummary | undefined
      if (!summary) throw new Error(`restic backup printed no summary: ${r.stdout.slice(-500)}`)
      // Items ending in / are directories; the files new or modified are what the matrix checks.
      const reported = lines
        .filter((l) => l.message_type === 'verbose_status' && (l.action === 'new' || l.action === 'modified') && !l.item.endsWith('/'))
        .map((l) => path.relative(v, l.item)) // restic names items by their absolute paths
      // The summary's files_new + files_changed must agree with the items.
      if (summary.files_new + summary.files_changed !== reported.length) {
        throw new Error(`restic summary (${summary.files_new} new, ${summary.files_changed} changed) disagrees with its items: ${reported.join(', ')}`)
      }
      return reported
    },
    async storedAnew() {
      // The FUSE mount's device number is the kernel's next free one: another mount may have taken
      // last night's. restic 0.14 keeps it in every entry, so then every directory is stored anew.
      if (devices.at(-1) !== devices.at(-2)) return undefined
      // `restic diff --metadata` of the last two snapshots: +, -, M (content) or U (metadata) per path.
      const snaps = JSON.parse((await ok('restic', ['snapshots', '--json'], { env })).stdout) as { short_id: string }[]
      const [a, b] = snaps.slice(-2).map((x) => x.short_id)
      const lines = (await ok('restic', ['diff', '--metadata', a!, b!], { env })).stdout.split('\n')
      // The mount point's ancestors are in the snapshot too; their times are the mover's business.
      return lines.map((l) => /^\s*[-+MUT?]+\s+(\/.*)$/.exec(l)?.[1]).filter((p): p is string => p !== undefined && `${p}/`.startsWith(`${view}/`))
        .map((p) => path.relative(view, p) || '.')
    },
    async restore(dest) {
      await fsp.mkdir(dest, { recursive: true })
      await ok('restic', ['restore', 'latest', '--target', dest], { env })
      // restic restores the snapshot's absolute paths below the target.
      return path.join(dest, view)
    },
  }
}

/**
 * borg 1.2 with an unencrypted local repository, run in the view (`borg create repo::night .`): its
 * files cache is keyed by the absolute path, so the view must be mounted at the same path every night;
 * by default (`--files-cache ctime,size,inode`) a file is unchanged when ctime, size and inode are.
 */
export function borg(scratch: string): NightlyClient {
  const repo = path.join(scratch, 'borg-repo')
  const env = {
    ...process.env,
    BORG_BASE_DIR: path.join(scratch, 'borg-base'),
    BORG_PASSPHRASE: '',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
  }
  let night = 0
  let newest: string[] = []
  return {
    name: 'borg',
    async backup(view) {
      if (night === 0) await ok('borg', ['init', '--encryption', 'none', repo], { env })
      night++
      const r = await ok('borg', ['create', '--list', '--filter=AME', '--numeric-ids', `${repo}::night-${night}`, '.'], { env, cwd: view })
      newest = await newestCtime(view)
      // --list goes to stderr: "A path" (added), "M path" (modified), "E path" (read error).
      return r.stderr.split('\n').filter((l) => /^[AME] /.test(l)).map((l) => path.normalize(l.slice(2)))
    },
    async restore(dest) {
      await fsp.mkdir(dest, { recursive: true })
      await ok('borg', ['extract', '--numeric-ids', '--sparse', `${repo}::night-${night}`], { env, cwd: dest })
      return dest
    },
    // borg does not keep the files with the newest ctime of a run in its files cache (a file changed
    // again within the same timestamp tick would look unchanged: borg's cache.py, "newest cmtime"),
    // so the next run reads them again and lists them as added.
    readAgain: () => newest,
  }
}

/** The regular files below `root` whose ctime is the newest of all regular files there. */
async function newestCtime(root: string): Promise<string[]> {
  let best = -1n
  let names: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const d of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${d.name}` : d.name
      if (d.isDirectory()) await walk(child)
      if (!d.isFile()) continue
      const ctime = (await fsp.lstat(path.join(root, child), { bigint: true })).ctimeNs
      if (ctime > best) [best, names] = [ctime, []]
      if (ctime === best) names.push(child)
    }
  }
  await walk('')
  return names
}

/**
 * GNU tar, a level 0 the first night and a level 1 against it each night after (a copy of the level 0
 * snapshot file). tar remembers each directory's device and inode number; the view's device number is
 * the FUSE mount's, which another mount may get the next night, so `--no-check-device`.
 */
export function gnuTar(scratch: string): NightlyClient {
  const dir = path.join(scratch, 'gnu-tar')
  const level0 = path.join(dir, 'level0.snar')
  const archives: string[] = []
  return {
    name: 'GNU tar',
    async backup(view) {
      await fsp.mkdir(dir, { recursive: true })
      const n = archives.length
      const snar = n === 0 ? level0 : path.join(dir, `level1-${n}.snar`)
      if (n > 0) await fsp.copyFile(level0, snar)
      const archive = path.join(dir, `night-${n}.tar`)
      await ok('tar', [...TAR_META, '--no-check-device', `--listed-incremental=${snar}`, '-C', view, '-cpf', archive, '.'])
      archives.push(archive)
      // A level 1 lists every directory (with its dumpdir); anything else in it is a member tar dumped.
      const members = (await ok('tar', ['-tf', archive])).stdout.split('\n').filter((l) => l !== '' && !l.endsWith('/'))
      return members.map((m) => path.normalize(m))
    },
    async restore(dest) {
      await fsp.mkdir(dest, { recursive: true })
      // The level 0, then the latest level 1; --listed-incremental also deletes what the level 1 lacks.
      for (const archive of new Set([archives[0]!, archives[archives.length - 1]!])) {
        await ok('tar', [...TAR_META, '--listed-incremental=/dev/null', '-C', dest, '-xpf', archive])
      }
      return dest
    },
  }
}

/**
 * rsync -aHAX into the same copy every night: its quick check compares size and mtime only, so an
 * unchanged tree transfers nothing. `--itemize-changes` names every entry it touched.
 */
export function rsync(scratch: string): NightlyClient {
  const dest = path.join(scratch, 'rsync-copy')
  return {
    name: 'rsync -aHAX',
    async backup(view) {
      const r = await ok('rsync', ['-aHAX', '--numeric-ids', '--sparse', '--delete', '--itemize-changes', `${view}/`, `${dest}/`])
      // "<flags> <path>": 11 flag characters; directories end in /, and count as items too.
      return r.stdout.split('\n').filter((l) => l !== '').map((l) => path.normalize(l.slice(12)))
    },
    async restore() {
      return dest
    },
  }
}

export const bsdtar: CopyClient = {
  name: 'bsdtar',
  async copy(view, dest) {
    await fsp.mkdir(dest, { recursive: true })
    // pax: nanosecond times, xattrs and ACLs in extended headers (libarchive's restricted pax rounds).
    const meta = ['--xattrs', '--acls', '--numeric-owner']
    await runPipeline(
      [
        ['bsdtar', ['--format', 'pax', ...meta, '-C', view, '-cf', '-', '.']],
        ['bsdtar', [...meta, '-C', dest, '-xpf', '-']],
      ],
      LONG,
    )
  },
}

export const cpio: CopyClient = {
  name: 'cpio',
  async copy(view, dest) {
    await fsp.mkdir(dest, { recursive: true })
    const archive = `${dest}.cpio`
    // -depth: a directory after its content, so extracting it last keeps its mtime (-m).
    await runPipeline(
      [
        ['find', ['.', '-depth', '-print0']],
        ['cpio', ['--create', '--null', '--format=newc', '--quiet', `--file=${archive}`]],
      ],
      { ...LONG, cwd: view },
    )
    await ok('cpio', ['--extract', '--make-directories', '--preserve-modification-time', '--no-absolute-filenames', '--sparse', '--quiet', `--file=${archive}`], { cwd: dest })
    await fsp.rm(archive)
  },
}

export const cpA: CopyClient = {
  name: 'cp -a',
  async copy(view, dest) {
    await fsp.mkdir(dest, { recursive: true })
    await ok('cp', ['-a', `${view}/.`, `${dest}/`])
  },
}
