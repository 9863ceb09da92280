// The slice of fuse-native's (untyped) API the adapter uses.
declare module 'fuse-native' {
  class Fuse {
    constructor(mnt: string, ops: Record<string, (...args: any[]) => void>, opts?: Record<string, unknown>)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    ops: Record<string, (...args: any[]) => void>
    /** The mountpoint, resolved. */
    readonly mnt: string
    /** The native session's state, allocated at mount. */
    _thread: Buffer
    _fuseOptions(): string
    /** Unmounts and lets go of the session (nanoresource's close calls it once). */
    _close(cb: (err: Error | null) => void): void
  }
  export = Fuse
}
