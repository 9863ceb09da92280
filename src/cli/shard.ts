// `--shard <i>/<n>|auto` and `--shards <n>` of `extfs mount` and `extfs backup`: which part of the image
// a mover serves (docs/shards.md). Indexes count from 0, as Slurm array task ids and Kubernetes'
// JOB_COMPLETION_INDEX do. `auto` takes them from the scheduler's environment; every refusal is one
// line and the usage exit code, so that a misconfigured array fails every task at once, loudly.
import { Option } from 'commander'
import { ExitCode, ExtfsError } from '../errors'
import type { Shard } from '../view/engine'
import { fuseNativeSelected, shardName } from '../view/engine'

/** The most shards a plan has (XT_SHARDS_MAX, native/view/engine.h). */
export const SHARDS_MAX = 65536

/** What --shard says before the environment is read. */
export type ShardArg = Shard | 'auto'

function usage(message: string): ExtfsError {
  return new ExtfsError(ExitCode.Usage, message)
}

/** A count of shards: digits only, 1 to SHARDS_MAX. */
function parseCount(what: string, value: string): number {
  const n = Number(value)
  if (!/^[0-9]{1,5}$/.test(value) || n < 1 || n > SHARDS_MAX) throw usage(`${what} takes a number of shards from 1 to ${SHARDS_MAX}, got ${value}`)
  return n
}

/** An index from the environment: digits only, bounded before it becomes a number. */
function parseIndex(what: string, value: string): number {
  if (!/^[0-9]{1,9}$/.test(value)) throw usage(`${what} must be a whole number, got ${JSON.stringify(value)}`)
  return Number(value)
}

function shardOf(index: number, count: number, source: string): Shard {
  if (index >= count) throw usage(`${source}: shard index ${index} is not below the count ${count} (indexes count from 0)`)
  return { index, count }
}

export function parseShardArg(value: string): ShardArg {
  if (value === 'auto') return 'auto'
  const m = /^([0-9]{1,5})\/([0-9]{1,5})$/.exec(value)
  if (!m) throw usage(`--shard takes <index>/<count> (from 0: 3/8 is the fourth of eight) or auto, got ${value}`)
  return shardOf(Number(m[1]), parseCount('--shard', m[2]), `--shard ${value}`)
}

export const shardOption = () => new Option('--shard <i/n|auto>', 'serve shard i of n alone (i from 0); auto: from SLURM_ARRAY_TASK_ID/COUNT, or JOB_COMPLETION_INDEX with --shards (docs/shards.md)')
  .argParser(parseShardArg)
export const parseShardCount = (value: string): number => parseCount('--shards', value)
export const shardsOption = () => new Option('--shards <n>', 'with --shard auto: the number of shards (required with JOB_COMPLETION_INDEX; must equal SLURM_ARRAY_TASK_COUNT)')
  .argParser(parseShardCount)

/**
 * The shard to serve, or undefined for the whole image: --shard resolved against `env` (auto) and
 * --shards. Refuses what the scheduler's environment and the options do not say consistently.
 */
export function resolveShard(o: { shard?: ShardArg; shards?: number }, env: NodeJS.ProcessEnv = process.env): Shard | undefined {
  if (o.shard === undefined) {
    if (o.shards !== undefined) throw usage('--shards goes with --shard auto')
    return undefined
  }
  if (fuseNativeSelected()) throw usage('--shard needs the native engine (unset EXTFS_ENGINE)')
  if (o.shard !== 'auto') {
    if (o.shards !== undefined && o.shards !== o.shard.count) throw usage(`--shards ${o.shards} disagrees with --shard ${shardName(o.shard)}`)
    return o.shard
  }
  const slurm = env.SLURM_ARRAY_TASK_ID !== undefined
  const k8s = env.JOB_COMPLETION_INDEX !== undefined
  if (slurm && k8s) throw usage('--shard auto: both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set; give --shard <i>/<n>')
  if (slurm) return slurmShard(env, o.shards)
  if (k8s) {
    if (o.shards === undefined) throw usage('--shard auto with JOB_COMPLETION_INDEX needs --shards <n> (the Job\'s completions)')
    return shardOf(parseIndex('JOB_COMPLETION_INDEX', env.JOB_COMPLETION_INDEX!), o.shards, 'JOB_COMPLETION_INDEX')
  }
  throw usage('--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a Slurm job array) or JOB_COMPLETION_INDEX with --shards <n> (a Kubernetes Indexed Job)')
}

/**
 * A Slurm job array's task: its id is the index only when the ids are 0 .. count-1 (--array=0-7), so
 * SLURM_ARRAY_TASK_MIN and _MAX, when set, must say so; --array=1-8 or 0-14:2 are refused.
 */
function slurmShard(env: NodeJS.ProcessEnv, shards: number | undefined): Shard {
  const id = parseIndex('SLURM_ARRAY_TASK_ID', env.SLURM_ARRAY_TASK_ID!)
  if (env.SLURM_ARRAY_TASK_COUNT === undefined) throw usage('--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not')
  const count = parseCount('SLURM_ARRAY_TASK_COUNT', env.SLURM_ARRAY_TASK_COUNT)
  if (shards !== undefined && shards !== count) throw usage(`--shards ${shards} disagrees with SLURM_ARRAY_TASK_COUNT=${count}`)
  const min = env.SLURM_ARRAY_TASK_MIN === undefined ? 0 : parseIndex('SLURM_ARRAY_TASK_MIN', env.SLURM_ARRAY_TASK_MIN)
  const max = env.SLURM_ARRAY_TASK_MAX === undefined ? count - 1 : parseIndex('SLURM_ARRAY_TASK_MAX', env.SLURM_ARRAY_TASK_MAX)
  if (min !== 0 || max !== count - 1) {
    throw usage(`--shard auto: the array's task ids must be 0-${count - 1} (sbatch --array=0-${count - 1}), not ${min}-${max} with ${count} task(s)`)
  }
  return shardOf(id, count, 'SLURM_ARRAY_TASK_ID')
}

/** `--shard i/n` as a child process is given it. */
export function shardArgs(shard: Shard | undefined): string[] {
  return shard ? ['--shard', shardName(shard)] : []
}
