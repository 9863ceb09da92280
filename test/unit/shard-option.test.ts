// --shard and --shards (src/cli/shard.ts): what `auto` takes from Slurm's and Kubernetes' environment,
// and every refusal, each one line with the usage exit code. The CLI's own exit and stderr are checked
// for a few of them in test/e2e/shard.test.ts.
import t from 'tap'
import { ExitCode, ExtfsError } from '../../src/errors'
import { parseShardArg, resolveShard, type ShardArg } from '../../src/cli/shard'

/** resolveShard of the raw option values, as commander would hand them over. */
function resolve(shard: string | undefined, shards: string | undefined, env: Record<string, string> = {}) {
  const o: { shard?: ShardArg; shards?: number } = {}
  if (shard !== undefined) o.shard = parseShardArg(shard)
  if (shards !== undefined) o.shards = Number(shards)
  return resolveShard(o, env)
}

function refusal(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (err instanceof ExtfsError && err.exitCode === ExitCode.Usage && !err.message.includes('\n')) return err.message
    throw err
  }
  return 'accepted'
}

const slurm = (id: string, count: string, extra: Record<string, string> = {}) => ({ SLURM_ARRAY_TASK_ID: id, SLURM_ARRAY_TASK_COUNT: count, ...extra })

t.test('accepted: i/n, Slurm job arrays, Kubernetes Indexed Jobs', async (t) => {
  t.equal(resolve(undefined, undefined), undefined, 'no --shard: the whole image')
  t.same(resolve('3/8', undefined), { index: 3, count: 8 })
  t.same(resolve('0/1', '1'), { index: 0, count: 1 }, '--shards agreeing with i/n')
  t.same(resolve('65535/65536', undefined), { index: 65535, count: 65536 })
  t.same(resolve('auto', undefined, slurm('5', '8')), { index: 5, count: 8 })
  t.same(resolve('auto', '8', slurm('7', '8', { SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_MAX: '7' })), { index: 7, count: 8 })
  t.same(resolve('auto', '8', { JOB_COMPLETION_INDEX: '0' }), { index: 0, count: 8 })
  t.same(resolve('3/8', undefined, slurm('5', '8')), { index: 3, count: 8 }, 'i/n given: the environment is not read')
})

t.test('refused, one line each', async (t) => {
  const cases: [string, () => unknown, RegExp][] = [
    ['no scheduler', () => resolve('auto', undefined), /needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT \(a Slurm job array\) or JOB_COMPLETION_INDEX with --shards <n>/],
    ['--shards with no scheduler', () => resolve('auto', '4'), /needs SLURM_ARRAY_TASK_ID/],
    ['Slurm without a count', () => resolve('auto', undefined, { SLURM_ARRAY_TASK_ID: '0' }), /SLURM_ARRAY_TASK_COUNT is not/],
    ['--shards against Slurm', () => resolve('auto', '5', slurm('0', '4')), /--shards 5 disagrees with SLURM_ARRAY_TASK_COUNT=4/],
    ['an array from 1', () => resolve('auto', undefined, slurm('1', '4', { SLURM_ARRAY_TASK_MIN: '1', SLURM_ARRAY_TASK_MAX: '4' })), /must be 0-3 \(sbatch --array=0-3\), not 1-4/],
    ['an array with steps', () => resolve('auto', undefined, slurm('2', '4', { SLURM_ARRAY_TASK_MAX: '6' })), /must be 0-3.*not 0-6/],
    ['a task id past the count', () => resolve('auto', undefined, slurm('4', '4')), /SLURM_ARRAY_TASK_ID: shard index 4 is not below the count 4/],
    ['a task id not a number', () => resolve('auto', undefined, slurm('1e3', '4')), /SLURM_ARRAY_TASK_ID must be a whole number, got "1e3"/],
    ['a task id too long', () => resolve('auto', undefined, slurm('1234567890', '4')), /must be a whole number/],
    ['a count of 0', () => resolve('auto', undefined, slurm('0', '0')), /SLURM_ARRAY_TASK_COUNT takes a number of shards from 1 to 65536, got 0/],
    ['a count over the most', () => resolve('auto', undefined, slurm('0', '65537')), /from 1 to 65536/],
    ['Kubernetes without --shards', () => resolve('auto', undefined, { JOB_COMPLETION_INDEX: '0' }), /with JOB_COMPLETION_INDEX needs --shards <n>/],
    ['Kubernetes past the count', () => resolve('auto', '4', { JOB_COMPLETION_INDEX: '4' }), /JOB_COMPLETION_INDEX: shard index 4 is not below the count 4/],
    ['Kubernetes, an empty index', () => resolve('auto', '4', { JOB_COMPLETION_INDEX: '' }), /JOB_COMPLETION_INDEX must be a whole number, got ""/],
    ['both schedulers', () => resolve('auto', undefined, { ...slurm('0', '1'), JOB_COMPLETION_INDEX: '0' }), /both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set/],
    ['i/n past the count', () => resolve('4/4', undefined), /--shard 4\/4: shard index 4 is not below the count 4/],
    ['i/0', () => resolve('0/0', undefined), /--shard takes a number of shards from 1 to 65536, got 0/],
    ['i/n over the most', () => resolve('0/65537', undefined), /from 1 to 65536/],
    ['a negative index', () => resolve('-1/4', undefined), /--shard takes <index>\/<count> \(from 0: 3\/8 is the fourth of eight\) or auto, got -1\/4/],
    ['spaces', () => resolve(' 1/4', undefined), /--shard takes <index>\/<count>/],
    ['a bare number', () => resolve('4', undefined), /--shard takes <index>\/<count>/],
    ['--shards alone', () => resolve(undefined, '4'), /--shards goes with --shard auto/],
    ['--shards against i/n', () => resolve('1/4', '3'), /--shards 3 disagrees with --shard 1\/4/],
  ]
  for (const [what, fn, message] of cases) t.match(refusal(fn), message, what)
})

t.test('the fuse-native engine refuses --shard', async (t) => {
  const before = process.env.EXTFS_ENGINE
  process.env.EXTFS_ENGINE = 'fuse-native'
  t.teardown(() => (before === undefined ? delete process.env.EXTFS_ENGINE : (process.env.EXTFS_ENGINE = before)))
  t.match(refusal(() => resolve('0/2', undefined)), /--shard needs the native engine \(unset EXTFS_ENGINE\)/)
  t.equal(resolve(undefined, undefined), undefined, 'without --shard it serves the whole image as ever')
})
