// Many movers scheduled by a real Slurm (issue 17): a private single-node cluster on this machine
// (test/helpers/slurm.ts). First the cluster itself: a job array sees its index and count, runs as root
// with FUSE and loop devices, a task killed mid-way and requeued runs again to the same result, an exit
// status shows as Slurm's ExitCode, and stopping leaves no process and no state.
import t from 'tap'
import { existsSync, promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { clusterProcesses, startSlurm } from '../helpers/slurm'
import { sleep } from '../helpers/loopfs'

/** Until `file` exists (a task reached a point); throws after `ms`. */
async function untilExists(file: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear in ${ms} ms`)
    await sleep(100)
  }
}

void t.test('a private Slurm cluster runs job arrays as root, requeues a killed task, and goes away', async (t) => {
  const slurm = await startSlurm(t)
  t.comment(`cluster idle ${slurm.startMs} ms after its start`)
  const out = path.join(slurm.dir, 'out')
  await fsp.mkdir(out)

  const shown = await slurm.sbatchArray({
    array: '0-3',
    wrap: `echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $(id -u)" > ${out}/task-$SLURM_ARRAY_TASK_ID
      test -w /dev/fuse && test -w /dev/loop-control && losetup -f > ${out}/loop-$SLURM_ARRAY_TASK_ID`,
  })
  const ends = await slurm.waitJob(shown, 30_000)
  t.same([...ends.keys()].sort(), [0, 1, 2, 3], 'four tasks')
  for (const [task, end] of ends) {
    t.match(end, { state: 'COMPLETED', exitCode: 0, signal: 0 }, `task ${task} completed: ${await slurm.output(shown, task)}`)
    t.equal(await fsp.readFile(path.join(out, `task-${task}`), 'utf8').catch(() => ''), `${task} 4 0\n`, `task ${task} saw its index, the count 4, uid 0`)
    t.match(await fsp.readFile(path.join(out, `loop-${task}`), 'utf8').catch(() => ''), /^\/dev\/loop\d+\n$/, `task ${task} may use /dev/fuse and loop devices`)
  }

  // Task 1 first waits (for `go`) until it is cancelled; task 0 exits 7, as a backup of a released image does.
  const go = path.join(out, 'go')
  const killed = await slurm.sbatchArray({
    array: '0-1',
    wrap: `echo run >> ${out}/runs-$SLURM_ARRAY_TASK_ID
      if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then exit 7; fi
      [ -e ${go} ] || { touch ${out}/waiting; sleep 60; }
      echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT" > ${out}/result-$SLURM_ARRAY_TASK_ID`,
  })
  await untilExists(path.join(out, 'waiting'), 30_000)
  await slurm.cancel(`${killed}_1`)
  const cancelled = await slurm.waitJob(killed, 30_000)
  t.match(cancelled.get(0), { state: 'FAILED', exitCode: 7, signal: 0 }, 'exit 7 shows as ExitCode=7:0')
  t.match(cancelled.get(1), { state: 'CANCELLED', signal: 15 }, 'the cancelled task ended by SIGTERM')
  t.notOk(existsSync(path.join(out, 'result-1')), 'the cancelled task wrote no result')

  await fsp.writeFile(go, '')
  await slurm.requeue(`${killed}_1`)
  const again = await slurm.waitJob(killed, 30_000)
  t.match(again.get(1), { state: 'COMPLETED', exitCode: 0, restarts: 1 }, `the requeued task ran again: ${await slurm.output(killed, 1)}`)
  t.equal(await fsp.readFile(path.join(out, 'runs-1'), 'utf8'), 'run\nrun\n', 'it started twice')
  t.equal(await fsp.readFile(path.join(out, 'result-1'), 'utf8').catch(() => ''), '1 2\n', 'its second run wrote its result')
  t.match(again.get(0), { state: 'FAILED', exitCode: 7 }, 'the other task was left as it ended')

  const stopStart = Date.now()
  t.same(await slurm.stop(), [], 'stopped without leftovers to kill')
  t.comment(`stopped in ${Date.now() - stopStart} ms`)
  for (const pid of slurm.daemonPids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `daemon ${pid} is gone`)
  t.same(clusterProcesses(slurm.conf), [], 'no process of the cluster is left')
  t.notOk(existsSync(slurm.dir), 'its directory is removed')
})
