// The two engines that serve a view (src/view/engine.ts), as the end-to-end scenarios run them: the
// extfs processes a test starts inherit the selection from its environment.

export interface Engine {
  name: 'native' | 'fuse-native'
  /**
   * What the view's times are exact to, in ns: the native engine serves the manifest's nanoseconds;
   * fuse-native hands libfuse2 milliseconds (src/fuse-native-engine/adapter.ts truncates).
   */
  timePrecisionNs: number
}

export const NATIVE_ENGINE: Engine = { name: 'native', timePrecisionNs: 1 }
export const FUSE_NATIVE_ENGINE: Engine = { name: 'fuse-native', timePrecisionNs: 1_000_000 }

/** Every extfs this test process starts from now on serves with `engine` (bin/extfs reads EXTFS_ENGINE). */
export function useEngine(engine: Engine): void {
  if (engine.name === 'native') delete process.env.EXTFS_ENGINE
  else process.env.EXTFS_ENGINE = engine.name
}
