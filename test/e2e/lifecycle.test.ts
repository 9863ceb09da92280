// The life of a view with the native engine (test/helpers/scenarios/lifecycle.ts); the fuse-native
// engine lives it too (fuse-native-engine.test.ts).
import t from 'tap'
import { lifecycleOfOneImage } from '../helpers/scenarios/lifecycle'
import { NATIVE_ENGINE } from '../helpers/engines'

void lifecycleOfOneImage(t, NATIVE_ENGINE)
