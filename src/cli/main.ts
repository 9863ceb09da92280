// The command line. Parses, calls one layer, and turns typed errors into one line on stderr and a
// documented exit code (ExitCode in src/errors.ts). No logic of its own.
import fs from 'node:fs'
import path from 'node:path'
import { Command, CommanderError, Option } from 'commander'
import { ExitCode, ExtfsError, StaleError } from '../errors'
import { takeUnfinishedLine } from '../stderr-line'
import { printable } from '../manifest/names'
import { readKeyFile } from '../manifest/sign'
import { createLogger } from '../log'
import { requireRoot } from '../mover/checks'
import { DEFAULT_CARRY_MAX, exportImage } from '../export/export'
import { DEFAULT_LOG_FILE } from '../mover/daemon'
import { DEFAULT_REMAP_CACHE_BYTES } from '../service/remap-worker'
import { DEFAULT_STATE_PATH } from '../service/state'
import { DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT } from '../service/connections'
import { caOption, deviceOption, JSON_PROGRESS, jsonOption, keyOption, leaseOption, logLevelOption, parseCarryMax, prefetchWindowOption, parseConnections, parseMiB, parseSeconds, quietOption } from './options'
import { exportResult, exportSentence, inspectResult, printResult, releaseResult, releaseSentence, remapResult, remapSentence, verifyResult, verifySentence } from './results'
import { progressMode, startProgress } from './progress'
import { parseShardCount, shardOption, shardsOption } from './shard'

// The other commands' modules are loaded when they run (`await import`), not all at start: an export
// would otherwise load serve's, the view's and remap's code too, CPU the owner pays every night
// (docs/file-server-scale.md).

function key(opts: { key?: string }): Buffer | undefined {
  return opts.key ? readKeyFile(opts.key) : undefined
}

export function buildProgram(): Command {
  const program = new Command('extfs')
    .description('Indirect backup: export a frozen image as an extent manifest; mount it read-only on a mover host')
    .version(require('../../package.json').version)
    .exitOverride()
    .configureOutput({ outputError: (msg, write) => write(msg.replace(/^error: /, 'extfs: ')) })

  program.command('export')
    .description('hold a frozen image of the paths (freeze, snapshot), map every file to raw-device extents, write the manifest')
    .argument('<path...>', 'files or directory trees on one mounted local filesystem')
    .requiredOption('--output <manifest>', 'where to write the manifest (not on the frozen filesystem)')
    .addOption(new Option('--frozen-image <kind>', 'how the image is held still: freeze the fs, a snapshot (btrfs) or clone set (reflink), or none').choices(['freeze', 'snapshot', 'none']).default('freeze'))
    .option('--assume-stable', 'with --frozen-image none on a read-write mount: you guarantee nothing writes')
    .option('--pre-freeze <command>', 'run with /bin/sh -c before the image is taken; failing aborts the export')
    .option('--post-thaw <command>', 'run with /bin/sh -c right after the image is taken, or taking it failed')
    .option('--carry-max <bytes>', 'carry inline files up to this size in the manifest', parseCarryMax, DEFAULT_CARRY_MAX)
    .option('--through-loop', 'map files on a loop device through its backing file to the disk underneath')
    .addOption(new Option('--mapper <mapper>', 'bulk: read a frozen ext4\'s metadata from its device, a frozen XFS\'s with bulkstat and its reverse map, or a btrfs snapshot\'s from its tree (manifest format 2); vfs: walk the tree; auto: bulk where it applies').choices(['auto', 'bulk', 'vfs']).default('auto'))
    .addOption(new Option('--format <version>', 'manifest format version (default: 1 from the VFS walker, 2 from the bulk mapper)').choices(['1', '2']))
    .option('--record <file>', 'where to publish the config-ID record (default: <manifest>.config-id)')
    .addOption(keyOption())
    .addOption(quietOption())
    .addOption(jsonOption('the result as one line of JSON on stdout (docs/json.md), progress as JSON lines on stderr'))
    .addOption(logLevelOption())
    .action((paths: string[], o) => {
      requireRoot('export')
      const log = createLogger({ level: o.logLevel })
      const started = Date.now()
      // Mapping is paced by files (one FIEMAP or inode record for 4 KiB or 4 GiB), so are its percentage and ETA.
      const progress = startProgress({ command: 'export', mode: progressMode(o), pace: 'files' })
      const m = exportImage({
        paths, output: o.output, frozenImage: o.frozenImage, assumeStable: !!o.assumeStable, record: o.record, key: key(o),
        preFreeze: o.preFreeze, postThaw: o.postThaw, carryMax: o.carryMax, throughLoop: !!o.throughLoop, warn: (msg) => log.warn(msg),
        mapper: o.mapper, format: o.format === undefined ? undefined : (Number(o.format) as 1 | 2), progress,
      })
      progress.finish(m.mapped)
      log.debug({ output: m.manifest, configId: m.configId, inodes: m.inodes, mapper: m.mapper, format: m.format, ...m.bulk }, 'exported')
      printResult(o.json, exportResult(m, Date.now() - started), exportSentence)
    })

  program.command('mount')
    .description('serve a manifest read-only through FUSE; returns once the view serves')
    .argument('<manifest>', 'a manifest file, or http(s)://initiator:port/<image> of extfs serve').argument('<mountpoint>')
    .addOption(deviceOption())
    .addOption(keyOption())
    .addOption(caOption())
    .addOption(leaseOption())
    .addOption(prefetchWindowOption())
    .option('--foreground', 'stay attached; unmount on SIGINT/SIGTERM')
    .option('--allow-other', 'let users other than root read the view (permissions still apply)')
    .option('--log-file <file>', `log here (background default: ${DEFAULT_LOG_FILE})`)
    .addOption(quietOption())
    .addOption(jsonOption(JSON_PROGRESS))
    .addOption(logLevelOption())
    .addOption(shardOption())
    .addOption(shardsOption())
    .addOption(new Option('--report', 'leave a report of files read under a superseded map (for extfs backup)').hideHelp())
    .action(async (manifest: string, mountpoint: string, o) => (await import('./mount')).mountCommand(manifest, mountpoint, o))

  program.command('umount')
    .description('unmount a view, also one whose process died')
    .argument('<mountpoint>')
    .action(async (mountpoint: string) => (await import('../mover/umount')).unmountView(mountpoint))

  program.command('status')
    .description('every view on this host (or the one at <mountpoint>) as it reports itself: source, config ID, lease, what it served; exit 0 when all serve, 7 when one serves nothing (released, not current, unknown to serve, lease run out), 12 when one does not answer')
    .argument('[mountpoint]')
    .addOption(jsonOption().conflicts('prometheus'))
    .option('--prometheus', 'Prometheus text format, for node_exporter\'s textfile collector')
    .action(async (mountpoint: string | undefined, o) => {
      const { formatStatus, gatherStatus, statusExitCode } = await import('./status')
      const r = await gatherStatus(mountpoint)
      const text = o.prometheus ? await (await import('./status-metrics')).statusMetrics(r) : o.json ? JSON.stringify(r) + '\n' : formatStatus(r) + '\n'
      process.stdout.write(text)
      process.exitCode = statusExitCode(r)
    })

  program.command('inspect')
    .description('files, bytes, extents, devices, frozen image and config ID of a manifest')
    .argument('<manifest>')
    .addOption(jsonOption().conflicts('inodes'))
    .option('--inodes', 'every inode as a line of JSON (the version 1 form), after a line with the header; either version, streamed')
    .addOption(new Option('--shards <n>', 'the plan of an n-way split instead (docs/shards.md): files, bytes and inodes per shard').argParser(parseShardCount).conflicts('inodes'))
    .addOption(keyOption())
    .action(async (manifest: string, o) => {
      if (o.shards !== undefined) {
        const { shardsResult, shardsSentence } = await import('./inspect-shards')
        return printResult(o.json, shardsResult(path.resolve(manifest), o.shards, key(o)), shardsSentence)
      }
      const { formatSummary, printInodes, summarizeFile } = await import('./inspect')
      if (o.inodes) return printInodes(manifest, key(o), (line) => process.stdout.write(line + '\n'))
      printResult(o.json, inspectResult(path.resolve(manifest), summarizeFile(manifest, key(o))), formatSummary)
    })

  program.command('verify')
    .description('pre-flight on the mover: devices resolve, fingerprints match, config ID current')
    .argument('<manifest>')
    .addOption(deviceOption())
    .addOption(keyOption())
    .addOption(jsonOption())
    .action(async (manifest: string, o) => {
      requireRoot('verify')
      const { loadImage } = await import('../mover/load')
      const image = loadImage(manifest, { key: key(o), deviceOverrides: o.device })
      for (const d of image.devices) d.close()
      printResult(o.json, verifyResult(path.resolve(manifest), image), verifySentence)
    })

  program.command('release')
    .description('end the frozen image (thaw, or remove the snapshot or clones) and mark its config ID released; also after an export that died')
    .argument('<manifest>')
    .addOption(keyOption())
    .option('--grace <seconds>', 'wait this long between publishing "released" and ending the image (give extfs serve\'s --lease)', parseSeconds('--grace', 0), 0)
    .addOption(jsonOption())
    .action(async (manifest: string, o) => {
      requireRoot('release')
      const { releaseFromJournal, releaseImage } = await import('../frozen/release')
      const { readManifestHeader } = await import('../manifest/stream')
      const file = path.resolve(manifest)
      if (!fs.existsSync(file)) {
        // Export died before writing the manifest: its journal lists what it had begun to create.
        const r = releaseFromJournal(file)
        if (!r) throw new ExtfsError(ExitCode.BadManifest, `${manifest}: no manifest, and no journal of an unfinished export (${manifest}.frozen-image): nothing to release`)
        printResult(o.json, releaseResult(file, r), releaseSentence)
        return
      }
      const m = readManifestHeader(manifest, key(o))
      printResult(o.json, releaseResult(file, releaseImage(file, m, Math.round(o.grace * 1000))), releaseSentence)
    })

  program.command('remap')
    .description('map the frozen image again; publish a delta of the files whose extents moved and a new config ID')
    .argument('<manifest>')
    .addOption(keyOption())
    .addOption(jsonOption())
    .addOption(logLevelOption())
    .action(async (manifest: string, o) => {
      requireRoot('remap')
      const log = createLogger({ level: o.logLevel })
      const { remapImage } = await import('../remap/remap')
      const started = Date.now()
      const r = remapImage(manifest, { key: key(o), warn: (msg) => log.warn(msg) })
      if (r.state === 'released') throw new StaleError(`frozen image ${r.configId} was released: nothing to remap`)
      log.info({ mapper: r.mapper, compared: r.compared, state: r.state }, 'remap: image mapped again')
      printResult(o.json, remapResult(path.resolve(manifest), r, Date.now() - started), remapSentence)
    })

  program.command('serve')
    .description('answer manifests, config IDs and deltas over HTTP(S) for movers, authenticated with the shared key; re-map the images on a schedule')
    .argument('<manifest...>', 'manifests to serve; each is named by its base name without .json')
    .requiredOption('--listen <host:port>', 'address to listen on, e.g. 0.0.0.0:7070 ([::]:7070 for IPv6)')
    .requiredOption('--key <file>', 'shared HMAC key file: every request and answer is authenticated with it (required)')
    .option('--state <db>', 'SQLite database of images, config IDs and delta history', DEFAULT_STATE_PATH)
    .option('--interval <seconds>', 're-map every image this often; 0: only on request', parseSeconds('--interval', 0), 60)
    .option('--lease <seconds>', 'how long a mover may serve opens after asking', parseSeconds('--lease', 0.001), 30)
    .option('--skew <seconds>', 'clock difference allowed in a request\'s timestamp', parseSeconds('--skew', 1), 60)
    .option('--remap-cache <MiB>', 'memory kept between remaps for all images together (what a remap read: manifests\' maps, path tables)', parseMiB('--remap-cache'), DEFAULT_REMAP_CACHE_BYTES / 2 ** 20)
    .option('--cert <file>', 'TLS certificate (PEM); with --tls-key, serve HTTPS')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics, plain HTTP without a key: give loopback or a management network (default: none)')
    .option('--max-connections <n>', `connections held at once, at most half the descriptor limit (default ${DEFAULT_MAX_CONNECTIONS})`, parseConnections('--max-connections'))
    .option('--max-connections-per-client <n>', `connections held at once from one client address: a mover holds one per view (default ${DEFAULT_MAX_CONNECTIONS_PER_CLIENT})`, parseConnections('--max-connections-per-client'))
    .addOption(logLevelOption())
    .action(async (manifests: string[], o) => (await import('../service/run')).runServe(manifests, o))

  program.command('backup')
    .description('mount on a private mountpoint (or --mountpoint), run the command there, unmount, exit with its status')
    .argument('<manifest>', 'a manifest file, or http(s)://initiator:port/<image> of extfs serve').argument('<command...>')
    .addOption(deviceOption())
    .addOption(keyOption())
    .addOption(caOption())
    .addOption(leaseOption())
    .addOption(prefetchWindowOption())
    .option('--mountpoint <dir>', 'mount on this empty directory (kept) instead of a new private one: the same path every night, as restic and borg need')
    .addOption(shardOption())
    .addOption(shardsOption())
    .option('--log-file <file>', `view log (default: ${DEFAULT_LOG_FILE})`)
    .addOption(quietOption())
    .addOption(jsonOption(JSON_PROGRESS))
    .addOption(logLevelOption())
    .action(async (manifest: string, command: string[], o) => {
      process.exitCode = await (await import('./mount')).backupCommand(manifest, command, o)
    })

  return program
}

/**
 * A permission the system refused where no layer expected it (root without CAP_DAC_READ_SEARCH, in a
 * unit that drops it or a container, meets a file only its owner may read): not a bug but the
 * Permission exit code, in one line naming the call and the path.
 */
function isDenied(err: unknown): err is NodeJS.ErrnoException {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code === 'EACCES' || code === 'EPERM'
}

function denied(err: NodeJS.ErrnoException): ExtfsError {
  const what = [err.syscall, err.path].filter(Boolean).join(' ')
  return new ExtfsError(ExitCode.Permission, `${what || err.message}: ${err.code}, permission denied: extfs needs root with its capabilities ` +
    '(CAP_DAC_READ_SEARCH and CAP_DAC_OVERRIDE to read every file of an image, CAP_SYS_ADMIN to freeze and mount)')
}

/** stdout's reader went away (`extfs inspect … | head`): end now, quietly, as a C tool ends on SIGPIPE. */
function onStdoutError(err: NodeJS.ErrnoException): void {
  if (err.code !== 'EPIPE') throw err
  process.exit(ExitCode.ReaderGone)
}

export async function main(argv: string[]): Promise<void> {
  process.stdout.on('error', onStdoutError)
  try {
    await buildProgram().parseAsync(argv)
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage
      return
    }
    // A status line of progress (src/cli/progress.ts) may stand unfinished on a terminal: cleared first.
    const clear = takeUnfinishedLine()
    if (!(err instanceof ExtfsError) && isDenied(err)) err = denied(err)
    if (err instanceof ExtfsError) {
      process.stderr.write(`${clear}extfs: ${printable(err.message)}\n`)
      process.exitCode = err.exitCode
      return
    }
    process.stderr.write(`${clear}extfs: internal error: ${printable((err as Error)?.message ?? String(err))}\n`)
    if (process.env.EXTFS_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`)
    process.exitCode = ExitCode.Internal
  }
}
