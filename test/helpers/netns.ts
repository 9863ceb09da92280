// Two hosts on one machine: two network namespaces joined by a veth pair, for tests where the initiator
// (`extfs serve`) and the mover must talk over a network and nothing else. Processes enter a namespace
// with `nsenter --net=/run/netns/<name>`, which changes the network namespace only: `ip netns exec` would
// also give them a private mount namespace, and a FUSE view mounted there would be invisible to the test.
// Only namespaces made here are ever deleted (by name, from our own registry); deleting one also removes
// its end of the veth pair, and with it the pair. The first `ip netns add` on a machine also bind-mounts
// /run/netns onto itself (and may create it); that is undone once our last namespace is gone, if the
// mount was not there before we began and no one else's namespace is in it.
import { ChildProcess, spawn, spawnSync, SpawnOptions } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, rmdirSync } from 'node:fs'
import { run, runOk, RunOptions, RunResult } from './exec'
import { cleanupAtExit, isMounted } from './loopfs'

export interface Host {
  /** Namespace name, as in `ip netns list`. */
  ns: string
  /** This host's end of the veth pair. */
  dev: string
  /** Its IPv4 address on the /30. */
  ip: string
  /** `[cmd, args]` that runs cmd in this namespace (nsenter execs it: the child's pid is cmd's). */
  wrap(cmd: string, args: string[]): [string, string[]]
  run(cmd: string, args: string[], opts?: RunOptions): Promise<RunResult>
  spawn(cmd: string, args: string[], opts?: SpawnOptions): ChildProcess
}

export interface HostPair {
  initiator: Host
  mover: Host
  /** Kill what is left in the namespaces and delete them; returns the problems met (empty: all gone). */
  destroy(): Promise<string[]>
}

const PREFIX = 'extfs-test-'
let counter = 0
/** Namespaces made by this process and not yet deleted: the exit handler's list. */
const created = new Set<string>()
let handlersInstalled = false
const NETNS_DIR = '/run/netns'
/** Whether /run/netns existed, and was a mount, before this process made its first namespace. */
let before: { dir: boolean; mount: boolean } | undefined

/**
 * Creates the two hosts. `t.teardown` (when given) destroys them; so does process exit, also on a
 * signal. On any failure during setup, what was made is deleted before the error propagates.
 */
export async function createHostPair(t?: { teardown(fn: () => unknown): void }): Promise<HostPair> {
  if (!handlersInstalled) {
    handlersInstalled = true
    cleanupAtExit(destroyAllSync)
  }
  const tag = `${process.pid}-${++counter}-${randomBytes(2).toString('hex')}`
  const names = { initiator: `${PREFIX}${tag}-i`, mover: `${PREFIX}${tag}-m` }
  const made: string[] = []
  const destroy = async (): Promise<string[]> => {
    const problems: string[] = []
    for (const ns of made.splice(0)) problems.push(...emptyAndDelete(ns))
    return problems
  }
  before ??= { dir: existsSync(NETNS_DIR), mount: isMounted(NETNS_DIR) }
  try {
    for (const ns of [names.initiator, names.mover]) {
      await runOk('ip', ['netns', 'add', ns]) // fails if the name exists: then it is not ours
      made.push(ns)
      created.add(ns)
    }
    const net = await freeSubnet()
    // Interface names are per namespace, and these two are created straight inside theirs.
    const hosts = {
      initiator: makeHost(names.initiator, 'xi0', `${net.prefix}.${net.base + 1}`),
      mover: makeHost(names.mover, 'xm0', `${net.prefix}.${net.base + 2}`),
    }
    await runOk('ip', ['link', 'add', 'name', hosts.initiator.dev, 'netns', hosts.initiator.ns, 'type', 'veth',
      'peer', 'name', hosts.mover.dev, 'netns', hosts.mover.ns])
    for (const h of [hosts.initiator, hosts.mover]) {
      await runOk('ip', ['-n', h.ns, 'addr', 'add', `${h.ip}/30`, 'dev', h.dev])
      await runOk('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up'])
      await runOk('ip', ['-n', h.ns, 'link', 'set', h.dev, 'up'])
    }
    await waitLinkUp(hosts.mover)
    await waitLinkUp(hosts.initiator)
    const pair: HostPair = { ...hosts, destroy }
    t?.teardown(async () => {
      const problems = await destroy()
      if (problems.length) throw new Error(`network namespaces: ${problems.join('; ')}`)
    })
    return pair
  } catch (e) {
    await destroy()
    throw e
  }
}

function makeHost(ns: string, dev: string, ip: string): Host {
  const wrap = (cmd: string, args: string[]): [string, string[]] => ['nsenter', [`--net=/run/netns/${ns}`, cmd, ...args]]
  return {
    ns, dev, ip, wrap,
    run: (cmd, args, opts) => run(...wrap(cmd, args), opts),
    spawn: (cmd, args, opts = {}) => spawn(...wrap(cmd, args), opts),
  }
}

/** A /30 in 10/8 (`prefix` "10.a.b", `base` its first last octet) no address of this host or its namespaces is in. */
async function freeSubnet(): Promise<{ prefix: string; base: number }> {
  const used = await usedIpv4()
  // Derived from the pid (concurrent runs differ), then random; 2^22 /30s in 10/8.
  for (let attempt = 0; attempt < 64; attempt++) {
    const n = attempt === 0 ? (process.pid * 64 + counter) % (1 << 22) : randomBytes(3).readUIntBE(0, 3) % (1 << 22)
    const a = (n >> 14) & 0xff
    const b = (n >> 6) & 0xff
    const base = (n & 0x3f) * 4
    const prefix = `10.${a}.${b}`
    if (![0, 1, 2, 3].some((k) => used.has(`${prefix}.${base + k}`))) return { prefix, base }
  }
  throw new Error('no free 10.x.y.z/30 found')
}

/** Every IPv4 address on this host's namespace and on every named namespace (read only). */
async function usedIpv4(): Promise<Set<string>> {
  const used = new Set<string>()
  const collect = (r: RunResult) => {
    for (const m of r.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\//g)) used.add(m[1])
  }
  collect(await run('ip', ['-4', '-o', 'addr']))
  const names = existsSync('/run/netns') ? readdirSync('/run/netns') : []
  for (const ns of names) collect(await run('ip', ['-n', ns, '-4', '-o', 'addr'], { timeoutMs: 10_000 }))
  return used
}

async function waitLinkUp(h: Host): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await run('ip', ['-n', h.ns, '-o', 'link', 'show', 'dev', h.dev])
    if (/state UP/.test(r.stdout)) return
    await new Promise((res) => setTimeout(res, 50))
  }
  throw new Error(`${h.dev} in ${h.ns} did not come up`)
}

/** Pids inside a namespace (`ip netns pids`); every one is ours, since the namespace is. */
function pidsIn(ns: string): number[] {
  const out = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 10_000 }).stdout ?? ''
  return out.split(/\s+/).filter(Boolean).map(Number)
}

function signal(pids: number[], sig: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, sig)
    } catch {
      // gone meanwhile
    }
  }
}

/**
 * Processes still inside a namespace would keep it (and the veth) alive: SIGTERM first (a view's
 * process then unmounts and removes its state), SIGKILL what is left after 3 s. Synchronous, so the
 * exit handler can use it too.
 */
function emptyAndDelete(ns: string): string[] {
  const problems: string[] = []
  let pids = pidsIn(ns)
  if (pids.length > 0) {
    problems.push(`pids ${pids.join(' ')} were still in ${ns}`)
    signal(pids, 'SIGCONT') // a stopped process cannot act on SIGTERM
    signal(pids, 'SIGTERM')
    for (let i = 0; i < 30 && (pids = pidsIn(ns)).length > 0; i++) spawnSync('sleep', ['0.1'])
    signal(pids, 'SIGKILL')
  }
  const r = spawnSync('ip', ['netns', 'del', ns], { encoding: 'utf8', timeout: 10_000 })
  if (r.status !== 0) problems.push(`ip netns del ${ns}: ${(r.stderr ?? '').trim() || r.error?.message}`)
  else created.delete(ns)
  if (created.size === 0) problems.push(...undoNetnsMount())
  return problems
}

/** Undo what `ip netns add` did to /run/netns, when it was us and nobody else uses it now. */
function undoNetnsMount(): string[] {
  if (!before || before.mount || !existsSync(NETNS_DIR) || readdirSync(NETNS_DIR).length > 0) return []
  // `ip` may have stacked the bind mount (it re-mounts to make it shared): take off every layer.
  for (let i = 0; i < 4 && isMounted(NETNS_DIR); i++) spawnSync('umount', [NETNS_DIR], { timeout: 10_000 })
  if (isMounted(NETNS_DIR)) return [`${NETNS_DIR} is still mounted`]
  if (!before.dir) rmdirSync(NETNS_DIR)
  return []
}

function destroyAllSync(): void {
  for (const ns of [...created]) emptyAndDelete(ns)
}
