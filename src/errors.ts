/**
 * Every error vireo raises on purpose is a VireoError with a stable `code`, so the CLI can print one clear line
 * and tests can assert on the code rather than on message text.
 */
export class VireoError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A guest-physical access outside guest RAM. */
export class GuestMemoryError extends VireoError {
  readonly gpa: number;
  readonly length: number;
  constructor(gpa: number, length: number, size: number) {
    super(
      "VIREO_GUEST_MEMORY_RANGE",
      `guest-physical range 0x${gpa.toString(16)}+${length} is outside guest RAM (0x0-0x${size.toString(16)})`,
    );
    this.gpa = gpa;
    this.length = length;
  }
}

/** Invalid command-line or configuration input. */
export class ConfigError extends VireoError {
  constructor(message: string) {
    super("VIREO_CONFIG", message);
  }
}
