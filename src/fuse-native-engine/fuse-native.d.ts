// The slice of fuse-native's (untyped) API the adapter uses.
declare module 'fuse-native' {
  type Cb = (...args: any[]) => void
  class Fuse {
    constructor(mnt: string, ops: Record<string, (...args: any[]) => void>, opts?: Record<string, unknown>)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    ops: Record<string, (...args: any[]) => void>
    _fuseOptions(): string
    static unmount(mnt: string, cb: Cb): void
  }
  export = Fuse
}
