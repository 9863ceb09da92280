// The JavaScript fuzz targets (fuzz/js/, docs/fuzzing.md) in the unit tests: every corpus entry (the
// seeds and the reproducers of what fuzzing found) run once, then a fixed number of inputs made from
// them; and the C targets' seeds through the C checks. scripts/fuzz runs the same targets for a
// bounded time, and the C ones. EXTFS_TEST_SEED replays another sequence of inputs.
import { ROOT } from '../../fuzz/js/env'
import t from 'tap'
import fc from 'fast-check'
import fs from 'node:fs'
import path from 'node:path'
import { viewAddon } from '../../src/native-engine/addon'
import { TARGETS } from '../../fuzz/js/targets'
import { seedsOf } from '../../fuzz/js/corpus'

const SEED = Number(process.env.EXTFS_TEST_SEED ?? 20261206)
const RUNS = 300

for (const target of TARGETS) {
  t.test(target.name, async (t) => {
    const seeds = seedsOf(target)
    t.ok(seeds.length > 0, `${seeds.length} corpus entries`)
    for (const s of seeds) t.doesNotThrow(() => target.run(s.bytes), s.name)
    let runs = 0
    fc.assert(fc.property(target.arbitrary(seeds), (input) => {
      runs++
      target.run(input)
    }), { seed: SEED, numRuns: RUNS })
    t.equal(runs, RUNS, `${RUNS} inputs made from them (seed ${SEED}; EXTFS_TEST_SEED replays another)`)
  })
}

// The C targets' seeds must pass the C checks, or the planner behind them goes unfuzzed: after a
// change of the table or delta layout, write them again (docs/fuzzing.md, "How inputs are made").
t.test('the C seeds pass the C checks', async (t) => {
  const addon = viewAddon()
  const again = 'stale: node build-fuzz/js/fuzz/js/run.js c-seeds writes them again'
  const dir = (name: string) => path.join(ROOT, 'fuzz', 'corpus', name)
  for (const f of fs.readdirSync(dir('c-tables'))) {
    const input = fs.readFileSync(path.join(dir('c-tables'), f))
    t.equal(addon.checkTables(input.subarray(16)), null, `c-tables/${f}: xt_check accepts the tables`, { again })
  }
  for (const f of fs.readdirSync(dir('c-delta'))) {
    const input = fs.readFileSync(path.join(dir('c-delta'), f))
    const tablesLength = input.readUInt32LE(0)
    const tables = input.subarray(24, 24 + tablesLength)
    t.equal(addon.checkTables(tables), null, `c-delta/${f}: xt_check accepts the tables`, { again })
    t.equal(addon.checkDelta(tables, input.subarray(24 + tablesLength), input.readUInt32LE(4)), null, `c-delta/${f}: xt_check_delta accepts the delta`, { again })
  }
})
