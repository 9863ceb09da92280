// Exit codes and typed errors. Each error carries the exit code the CLI ends with or, inside the view,
// the errno the FUSE adapter answers with. They live here, below every layer that raises them.

/** Exit codes are part of the CLI's interface: scripts test for them. Documented in docs/cli.md. */
export enum ExitCode {
  Ok = 0,
  /** Unexpected internal failure (a bug): logged with detail. */
  Internal = 1,
  /** Bad command line. */
  Usage = 2,
  /** The manifest is malformed, truncated, oversized, of an unknown version, unsigned or altered. */
  BadManifest = 3,
  /** A device is missing, wrong (identity or fingerprint mismatch) or too small. */
  Device = 4,
  /** The mountpoint is missing, not a directory, not empty or already a mount. */
  Mountpoint = 5,
  /** FUSE is unavailable (no /dev/fuse, no fusermount). */
  NoFuse = 6,
  /** The config ID is not current: the frozen image was released or its layout changed. */
  Stale = 7,
  /** Export could not stabilize or map the data. */
  Export = 8,
  /** Root privileges are needed, or the system refused a permission no check foresaw (EACCES, EPERM). */
  Permission = 9,
  /**
   * `extfs serve` could not be asked (unreachable, timed out, TLS refused) or its answer could not be
   * believed (authentication): worth retrying, unlike Stale, which is the initiator's own answer.
   */
  Service = 10,
  /**
   * `extfs backup`: the command asked for metadata the view holds but cannot pass through the kernel
   * (POSIX ACLs larger than one page): the backup lacks it, and running it again will not help.
   */
  UnservedMetadata = 11,
  /**
   * `extfs status`: a view on this host does not answer: its process is gone (every access to the
   * mountpoint fails with ENOTCONN until `extfs umount`) or it did not answer within the timeout.
   */
  ViewDown = 12,
  /**
   * `extfs serve`: its state database is damaged (garbage pages, truncated, unreadable, its
   * write-ahead log lost): serve refuses to start on it, or stops, rather than answer from it.
   */
  StateDamaged = 13,
  /**
   * stdout's reader stopped reading (`extfs inspect … | head`): extfs ends quietly, with the status a
   * C tool killed by SIGPIPE gives (128 + 13).
   */
  ReaderGone = 141,
}

/** An error meant for the user: one line, no stack trace, a documented exit code. */
export class ExtfsError extends Error {
  constructor(readonly exitCode: ExitCode, message: string) {
    super(message)
    this.name = 'ExtfsError'
  }
}

/**
 * `text` (a message quoting input, such as JSON.parse's, which shows the text around a syntax error)
 * with control characters written as \uXXXX: a message about hostile input stays one line and
 * cannot move the cursor of the terminal it is printed on.
 */
export function oneLine(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

export class ManifestError extends ExtfsError {
  /** `where` is what the problem is in ("inode 12", "manifest", ...), `what` the problem, when known. */
  constructor(message: string, readonly at?: { where: string; what: string }) { super(ExitCode.BadManifest, message) }
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
