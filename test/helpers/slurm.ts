// A private single-node Slurm cluster for end-to-end tests (Debian's slurm-wlm 22.05 and munge 0.5.15,
// installed by scripts/install), everything under one temporary directory and gone at teardown.
//
// Facts measured on this machine (2 cores, no systemd, root, slurm-wlm 22.05.8, munge 0.5.15); which
// lines of slurm.conf are needed was found by leaving each out:
// - munged -F with a private key (128 random bytes, 0400), --socket, --pid-file, --seed-file; it refuses
//   a socket directory without execute permission for all ("Socket is inaccessible"): hence 0755.
// - AuthInfo=socket=<private socket> is needed: without it daemons and clients look for
//   /run/munge/munge.socket.2 ("Protocol authentication error").
// - SlurmctldHost and NodeName are `hostname -s` (slurmd -N names itself), at 127.0.0.1.
// - SlurmdParameters=config_overrides is needed to declare CPUs=8 on 2 cores (4 tasks at once):
//   without it the node stays "inval" ("Low socket*core*thread count, Low CPUs").
// - ProctrackType=proctrack/linuxproc is needed: the default, cgroup, fails every step ("cgroup
//   namespace 'freezer' not mounted") and the job still shows COMPLETED without having run.
// - Not needed but kept explicit: TaskPlugin=task/none (the default here), SelectType, MpiDefault,
//   accounting and job completion none (there is no slurmdbd: per-task exit codes come from
//   `scontrol show job` while MinJobAge keeps the records), ReturnToService=2.
// - SchedulerParameters=sched_interval=1: a requeued task runs 1.1 s after requeue() instead of 2.9 s.
// - Start to an idle node (munged answering, slurmctld -D, slurmd -D): 0.35 to 1.4 s. Stop, all daemons
//   signalled (SIGTERM) at once: 0.15 to 0.35 s.
// - slurmstepd daemonizes (parent 1, its own session) and outlives slurmd with its job, so teardown
//   cancels the jobs first and then ends what remains of the cluster's processes, found by the
//   SLURM_CONF=<our slurm.conf> in their environment (never by name).
// - `scontrol requeue` holds a job for cred_expire+1 s (121 s by default) before it may run again:
//   slurmd refuses credentials made up to the second it revoked the job's ("Job credential revoked",
//   the task fails with 1). requeue() makes it eligible one second later (`StartTime=now+1`).
// - `sbatch --wait` polls slowly (seconds); waitJob polls `scontrol show job` every 200 ms instead.
// - Tasks run as root and may use /dev/fuse and loop devices; Slurm shows a task's status as
//   ExitCode=<status>:<signal> (7:0 for exit 7, 0:15 for a task ended by scancel's SIGTERM). A
//   cancelled batch shell may run its next line once its child died of the same SIGTERM: a task that
//   must not go on after a cancel execs its last command.
import { ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, promises as fsp, readdirSync, readFileSync, rmSync } from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk } from './exec'
import { cleanupAtExit, sleep } from './loopfs'

/** This test's port range (SlurmctldPort, SlurmdPort): other tests on the machine use others. */
const PORTS = { first: 17800, last: 17899 }
const POLL_MS = 200
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'PREEMPTED', 'BOOT_FAIL', 'DEADLINE'])

/** How one array task ended, as `scontrol show job` tells it. */
export interface TaskEnd {
  state: string
  /** The task's exit status (ExitCode=<status>:<signal>); 0 when a signal ended it. */
  exitCode: number
  /** The signal that ended it, 0 if none. */
  signal: number
  restarts: number
}

export interface SlurmCluster {
  /** The private directory holding key, sockets, state, spool, logs and job output. */
  dir: string
  conf: string
  /** The environment for client commands: SLURM_CONF set, no SLURM_* of an outer job. */
  env: NodeJS.ProcessEnv
  /** Pids of munged, slurmctld, slurmd. */
  daemonPids: number[]
  /** Milliseconds from the first daemon's start to an idle node. */
  startMs: number
  /**
   * Submit a job array (`array`: sbatch's --array spec) running `wrap` (a shell command line) or the
   * file `script`, with `env` added to the environment it inherits; its job id.
   */
  sbatchArray(job: { wrap?: string; script?: string; array: string; env?: Record<string, string> }): Promise<string>
  /** Wait until no task of `jobId` is pending, running or completing; how each task ended. */
  waitJob(jobId: string, timeoutMs: number): Promise<Map<number, TaskEnd>>
  /** The current records of `jobId`'s tasks (pending ranges not yet split are left out). */
  tasks(jobId: string): Promise<Map<number, TaskEnd>>
  /** What task `task` of `jobId` wrote to stdout and stderr (its latest run). */
  output(jobId: string, task: number): Promise<string>
  /** `scancel` a job or task (`<job>_<task>`): SIGTERM to its processes, SIGKILL KillWait (5 s) later. */
  cancel(target: string): Promise<void>
  /** Put a finished task (waitJob first) back in the queue, eligible a second later. */
  requeue(target: string): Promise<void>
  /** Cancel the jobs, stop the daemons by pid, end what is left of the cluster, remove `dir`. Problems met. */
  stop(): Promise<string[]>
}

export interface SlurmOptions {
  /** CPUs the node declares (default 8, more than this machine has: config_overrides). */
  cpus?: number
}

/** Start a private cluster; stopped at `t`'s teardown (also when the test fails) and at process exit. */
export async function startSlurm(t: { teardown(fn: () => unknown): void }, opts: SlurmOptions = {}): Promise<SlurmCluster> {
  const dir = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-slurm-')))
  const daemons: ChildProcess[] = []
  const conf = path.join(dir, 'slurm.conf')
  const env = clientEnv(conf)
  let stopped: Promise<string[]> | undefined
  const stop = () => (stopped ??= stopCluster(dir, conf, env, daemons))
  t.teardown(async () => {
    const problems = await stop()
    if (problems.length) throw new Error(`slurm cleanup: ${problems.join('; ')}`)
  })
  cleanupAtExit(() => killClusterSync(conf, daemons, dir))

  const started = Date.now()
  const munge = await startMunge(dir, env, daemons)
  const [ctldPort, slurmdPort] = await freePorts(2)
  await fsp.writeFile(conf, slurmConf({ dir, host: shortHostname(), munge, ctldPort, slurmdPort, cpus: opts.cpus ?? 8 }))
  daemons.push(daemon('slurmctld', ['-D', '-f', conf], dir, env))
  daemons.push(daemon('slurmd', ['-D', '-N', shortHostname(), '-f', conf], dir, env))
  await waitIdle(dir, env, daemons)
  const startMs = Date.now() - started

  const scontrolJobs = async (jobId: string) => parseJobs((await runOk('scontrol', ['-o', 'show', 'job', jobId], { env })).stdout)
  return {
    dir, conf, env, startMs,
    daemonPids: daemons.map((d) => d.pid!),
    async sbatchArray(job) {
      if ((job.wrap === undefined) === (job.script === undefined)) throw new Error('sbatchArray: give wrap or script')
      const args = ['--parsable', `--array=${job.array}`, '--output', path.join(dir, 'job-%A_%a.out'), ...(job.wrap !== undefined ? ['--wrap', job.wrap] : [job.script!])]
      const r = await runOk('sbatch', args, { env: { ...env, ...job.env }, cwd: dir })
      return r.stdout.trim().split(';')[0]
    },
    async waitJob(jobId, timeoutMs) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const records = await scontrolJobs(jobId)
        if (records.length > 0 && records.every((r) => TERMINAL.has(r.end.state) && r.task !== undefined)) return new Map(records.map((r) => [r.task!, r.end]))
        if (Date.now() > deadline) throw new Error(`job ${jobId} not done after ${timeoutMs} ms: ${records.map((r) => `${r.taskSpec}=${r.end.state}`).join(' ')}`)
        await sleep(POLL_MS)
      }
    },
    async tasks(jobId) {
      return new Map((await scontrolJobs(jobId)).filter((r) => r.task !== undefined).map((r) => [r.task!, r.end]))
    },
    output: (jobId, task) => fsp.readFile(path.join(dir, `job-${jobId}_${task}.out`), 'utf8').catch(() => '(no output)'),
    async cancel(target) {
      await runOk('scancel', [target], { env })
    },
    async requeue(target) {
      await runOk('scontrol', ['requeue', target], { env })
      // Not `now`: slurmd refuses a credential made in the second it revoked the job's ("Job credential
      // revoked", the task then fails with 1), the reason for requeue's hold of cred_expire+1 s.
      await runOk('scontrol', ['update', `JobId=${target}`, 'StartTime=now+1'], { env })
    },
    stop,
  }
}

function ended(d: ChildProcess): boolean {
  return d.pid === undefined || d.exitCode !== null || d.signalCode !== null
}

function shortHostname(): string {
  return os.hostname().split('.')[0]
}

/** The environment of every Slurm command and daemon: ours, with SLURM_CONF, without an outer job's SLURM_*. */
function clientEnv(conf: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SLURM_')) env[k] = v
  return { ...env, SLURM_CONF: conf }
}

/** A daemon in the foreground as our child, its stdout and stderr in <dir>/log/<name>.out (its log file is <name>.log). */
function daemon(name: string, args: string[], dir: string, env: NodeJS.ProcessEnv): ChildProcess {
  const log = openSync(path.join(dir, 'log', `${name}.out`), 'a')
  try {
    const child = spawn(name, args, { cwd: dir, env, stdio: ['ignore', log, log] })
    child.on('error', () => {}) // a missing binary: no pid, which ended() reports
    return child
  } finally {
    closeSync(log)
  }
}

/** munged with a private key and socket; resolves with the socket once it answers. */
async function startMunge(dir: string, env: NodeJS.ProcessEnv, daemons: ChildProcess[]): Promise<string> {
  // munged wants the socket's directories searchable by all, and the key the daemon's alone.
  await fsp.chmod(dir, 0o755)
  for (const sub of ['munge', 'log', 'state', 'spool']) await fsp.mkdir(path.join(dir, sub), { mode: 0o700 })
  await fsp.mkdir(path.join(dir, 'run'), { mode: 0o755 })
  const key = path.join(dir, 'munge', 'munge.key')
  await fsp.writeFile(key, randomBytes(128), { mode: 0o400 })
  const socket = path.join(dir, 'run', 'munge.socket')
  daemons.push(daemon('munged', ['-F', `--socket=${socket}`, `--key-file=${key}`, `--pid-file=${path.join(dir, 'run', 'munged.pid')}`,
    `--seed-file=${path.join(dir, 'run', 'munged.seed')}`, `--log-file=${path.join(dir, 'log', 'munged.log')}`], dir, env))
  for (let i = 0; i < 100; i++) {
    if ((await run('munge', ['-n', '-S', socket], { env, timeoutMs: 5_000 })).code === 0) return socket
    if (ended(daemons[0])) break
    await sleep(50)
  }
  throw new Error(`munged did not answer on ${socket}: ${await logTails(dir)}`)
}

function slurmConf(c: { dir: string; host: string; munge: string; ctldPort: number; slurmdPort: number; cpus: number }): string {
  const at = (...p: string[]) => path.join(c.dir, ...p)
  return `# A private single-node cluster of one test (test/helpers/slurm.ts).
ClusterName=extfstest
SlurmctldHost=${c.host}(127.0.0.1)
SlurmctldPort=${c.ctldPort}
SlurmdPort=${c.slurmdPort}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${c.munge}
StateSaveLocation=${at('state')}
SlurmdSpoolDir=${at('spool')}
SlurmctldPidFile=${at('run', 'slurmctld.pid')}
SlurmdPidFile=${at('run', 'slurmd.pid')}
SlurmctldLogFile=${at('log', 'slurmctld.log')}
SlurmdLogFile=${at('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
# Keep finished jobs' records (their ExitCode) for 5 minutes; SIGKILL 5 s after a cancel's SIGTERM.
MinJobAge=300
KillWait=5
NodeName=${c.host} NodeAddr=127.0.0.1 CPUs=${c.cpus} State=UNKNOWN
PartitionName=debug Nodes=${c.host} Default=YES MaxTime=INFINITE State=UP
`
}

/** `n` consecutive ports of our range that nothing listens on now. */
async function freePorts(n: number): Promise<number[]> {
  for (let p = PORTS.first; p + n - 1 <= PORTS.last; p += n) {
    const ports = Array.from({ length: n }, (_, i) => p + i)
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return ports
  }
  throw new Error(`no ${n} free ports in ${PORTS.first}-${PORTS.last}`)
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)))
  })
}

async function waitIdle(dir: string, env: NodeJS.ProcessEnv, daemons: ChildProcess[]): Promise<void> {
  let node = ''
  for (let i = 0; i < 150; i++) {
    const dead = daemons.find(ended)
    if (dead) throw new Error(`${dead.spawnfile} ${dead.pid === undefined ? 'did not start' : `exited (${dead.exitCode ?? dead.signalCode})`}: ${await logTails(dir)}`)
    // The node's state and the reason for it, e.g. "inval Low socket*core*thread count, Low CPUs".
    const r = await run('sinfo', ['-h', '-N', '-o', '%T %E'], { env, timeoutMs: 10_000 })
    node = r.stdout.trim() || r.stderr.trim()
    if (r.code === 0 && node === 'idle none') return
    await sleep(100)
  }
  throw new Error(`the node did not become idle in 15 s (${node}): ${await logTails(dir)}`)
}

async function logTails(dir: string): Promise<string> {
  const logs = await fsp.readdir(path.join(dir, 'log')).catch(() => [] as string[])
  const tails = await Promise.all(logs.map(async (f) => `${f}: ${(await fsp.readFile(path.join(dir, 'log', f), 'utf8')).trim().split('\n').slice(-5).join(' | ')}`))
  return tails.join('\n')
}

interface JobRecord {
  /** ArrayTaskId when it is one task; undefined for a pending range ("2-3", "1,3%2"). */
  task?: number
  taskSpec: string
  end: TaskEnd
}

/** `scontrol -o show job`: one record a line of key=value fields. */
export function parseJobs(text: string): JobRecord[] {
  return text.split('\n').filter((l) => l.startsWith('JobId=')).map((line) => {
    const field = (k: string) => new RegExp(`(?:^| )${k}=(\\S*)`).exec(line)?.[1] ?? ''
    const [status, signal] = field('ExitCode').split(':').map(Number)
    const taskSpec = field('ArrayTaskId')
    return {
      task: /^\d+$/.test(taskSpec) ? Number(taskSpec) : undefined,
      taskSpec,
      end: { state: field('JobState'), exitCode: status, signal, restarts: Number(field('Restarts')) },
    }
  })
}

/** Pids of the processes started for the cluster at `conf`: SLURM_CONF=<conf> in their environment. */
export function clusterProcesses(conf: string): number[] {
  const mark = Buffer.from(`SLURM_CONF=${conf}\0`)
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      if (readFileSync(`/proc/${name}/environ`).includes(mark)) pids.push(Number(name))
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return pids
}

async function stopCluster(dir: string, conf: string, env: NodeJS.ProcessEnv, daemons: ChildProcess[]): Promise<string[]> {
  const problems: string[] = []
  // Jobs first: slurmstepd and the tasks outlive slurmd. Ask the controller while it runs.
  if (daemons.length === 3 && !daemons.some(ended)) {
    await run('scancel', ['--user=root'], { env, timeoutMs: 10_000 })
    for (let i = 0; i < 50 && (await run('squeue', ['-h'], { env, timeoutMs: 5_000 })).stdout.trim() !== ''; i++) await sleep(POLL_MS)
  }
  await Promise.all(daemons.map((d) => endChild(d, problems)))
  // Then whatever of the cluster is left (a slurmstepd finishing, a task that ignored SIGTERM).
  for (let i = 0; i < 25 && clusterProcesses(conf).length; i++) await sleep(POLL_MS)
  const left = clusterProcesses(conf)
  for (const pid of left) {
    problems.push(`killed leftover process ${pid} (${readComm(pid)})`)
    killQuietly(pid, 'SIGKILL')
  }
  await fsp.rm(dir, { recursive: true, force: true }).catch((e) => problems.push(`rm ${dir}: ${e}`))
  return problems
}

/** SIGTERM, up to 5 s, then SIGKILL. */
async function endChild(child: ChildProcess, problems: string[]): Promise<void> {
  if (ended(child)) return
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGTERM')
  let timer: NodeJS.Timeout | undefined
  const late = new Promise((r) => (timer = setTimeout(r, 5_000, 'timeout')))
  const first = await Promise.race([exited, late])
  clearTimeout(timer) // else it holds the test process 5 s
  if (first === 'timeout') {
    problems.push(`${child.spawnfile} ${child.pid} ignored SIGTERM for 5 s; killed`)
    child.kill('SIGKILL')
    await exited
  }
}

function killClusterSync(conf: string, daemons: ChildProcess[], dir: string): void {
  for (const d of daemons) if (!ended(d)) d.kill('SIGKILL')
  for (const pid of clusterProcesses(conf)) killQuietly(pid, 'SIGKILL')
  try {
    rmSync(dir, { recursive: true, force: true })
  } catch {
    // best effort at exit
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

function readComm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return 'gone'
  }
}
