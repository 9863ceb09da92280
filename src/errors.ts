// Typed errors. Each carries the exit code the CLI ends with (see src/cli/exit-codes.ts)
// or, inside the view, the errno the FUSE adapter answers with.
import { ExitCode } from './cli/exit-codes'

/** An error meant for the user: one line, no stack trace, a documented exit code. */
export class ExtfsError extends Error {
  constructor(readonly exitCode: ExitCode, message: string) {
    super(message)
    this.name = 'ExtfsError'
  }
}

export class ManifestError extends ExtfsError {
  constructor(message: string) { super(ExitCode.BadManifest, message) }
}

export class DeviceError extends ExtfsError {
  constructor(message: string) { super(ExitCode.Device, message) }
}

export class MountpointError extends ExtfsError {
  constructor(message: string) { super(ExitCode.Mountpoint, message) }
}

export class ExportError extends ExtfsError {
  constructor(message: string) { super(ExitCode.Export, message) }
}

export class StaleError extends ExtfsError {
  constructor(message: string) { super(ExitCode.Stale, message) }
}

/** A failed view operation; `errno` is the positive Linux errno the adapter returns negated. */
export class ViewError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message)
    this.name = 'ViewError'
  }
}
