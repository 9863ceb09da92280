// The JavaScript fuzz targets (fuzz/js/, docs/fuzzing.md) in the unit tests: every corpus entry (the
// seeds and the reproducers of what fuzzing found) run once, then a fixed number of inputs made from
// them. scripts/fuzz runs the same targets for a bounded time, and the C ones. EXTFS_TEST_SEED
// replays another sequence of inputs.
import '../../fuzz/js/env'
import t from 'tap'
import fc from 'fast-check'
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
