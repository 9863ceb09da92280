// Bad input end to end with the native engine (test/helpers/scenarios/bad-input.ts); the fuse-native
// engine gets the same corpus (fuse-native-engine.test.ts).
import t from 'tap'
import { badInputCorpus } from '../helpers/scenarios/bad-input'
import { NATIVE_ENGINE } from '../helpers/engines'

void badInputCorpus(t, NATIVE_ENGINE)
