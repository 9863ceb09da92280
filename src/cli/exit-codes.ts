// Exit codes are part of the CLI's interface: scripts test for them. Documented in docs/cli.md.
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
  /** Root privileges are needed. */
  Permission = 9,
  /**
   * `extfs serve` could not be asked (unreachable, timed out, TLS refused) or its answer could not be
   * believed (authentication): worth retrying, unlike Stale, which is the initiator's own answer.
   */
  Service = 10,
}
