/**
 * A device's saved state, as snapshots carry it (src/vmm/snapshot/state-file.ts writes it to a file; docs/snapshot.md
 * describes both). Each device model saves and restores its own: `saveState(): DeviceState` and
 * `restoreState(s: DeviceState)`. The data is JSON-compatible values plus byte arrays (raw copies of the parts of a
 * device's SharedArrayBuffer state that are plain data), under a `kind` naming the device model and a `version` the
 * model bumps whenever the meaning or layout of its data changes.
 *
 * Restoring does not trust the data: a state file can be corrupted, hand-made or come from a hostile source, so
 * every value is checked as a hostile guest's register write would be (ranges, indices, addresses), through the
 * readers below, which throw DeviceStateError naming the device and the field.
 */
import { VireoError } from "../errors.ts";

/** What a device's saved data may contain: JSON values, plus byte arrays for raw state. */
export type StateValue = null | boolean | number | string | Uint8Array | StateValue[] | StateObject;
export interface StateObject {
  [key: string]: StateValue;
}

export interface DeviceState {
  /** The device model ("uart16550", "virtio-pci", "e1000", ...): a state is restored only into its own kind. */
  kind: string;
  /** The model's state format version: a state of another version is refused. */
  version: number;
  data: StateObject;
}

/** A saved device state that cannot be restored (wrong kind or version, a field missing or out of range). */
export class DeviceStateError extends VireoError {
  constructor(message: string, code = "VIREO_DEVICE_STATE") {
    super(code, message);
  }
}

/** A device cannot be saved now (e.g. a request is half done); the caller should finish the work and retry. */
export class DeviceBusyError extends VireoError {
  constructor(message: string) {
    super("VIREO_DEVICE_BUSY", message);
  }
}

/**
 * Typed, checked access to a saved state's data, for `restoreState`. Every reader throws DeviceStateError with the
 * device's name and the field's path.
 */
export class StateReader {
  constructor(
    readonly device: string,
    private readonly obj: StateObject,
    private readonly path = "",
  ) {}

  /** Checks kind and version and returns a reader over the data. */
  static open(device: string, s: DeviceState, kind: string, version: number): StateReader {
    if (s === null || typeof s !== "object" || s.data === null || typeof s.data !== "object") {
      throw new DeviceStateError(`${device}: saved state is not an object`);
    }
    if (s.kind !== kind) {
      throw new DeviceStateError(`${device}: saved state is of kind "${s.kind}", this device is "${kind}"`);
    }
    if (s.version !== version) {
      throw new DeviceStateError(
        `${device}: saved state has version ${s.version}, this vireo reads ${kind} state version ${version}`,
        "VIREO_DEVICE_STATE_VERSION",
      );
    }
    return new StateReader(device, s.data);
  }

  fail(key: string, what: string): never {
    throw new DeviceStateError(`${this.device}: saved state field ${this.path}${key} ${what}`);
  }

  private get(key: string): StateValue {
    if (!Object.hasOwn(this.obj, key)) this.fail(key, "is missing");
    return this.obj[key] as StateValue;
  }

  /** Whether the field is present and null. */
  isNull(key: string): boolean {
    return this.get(key) === null;
  }

  /** An integer in [min, max]. */
  int(key: string, min: number, max: number): number {
    const v = this.get(key);
    if (typeof v !== "number" || !Number.isSafeInteger(v))
      this.fail(key, `is ${describe(v)}, not an integer`);
    if (v < min || v > max) this.fail(key, `is ${v}, outside ${min}..${max}`);
    return v;
  }

  /** A finite number, or null (a saved NaN: "none"). */
  numberOrNull(key: string): number | null {
    const v = this.get(key);
    if (v === null) return null;
    if (typeof v !== "number" || !Number.isFinite(v))
      this.fail(key, `is ${describe(v)}, not a number or null`);
    return v;
  }

  bool(key: string): boolean {
    const v = this.get(key);
    if (typeof v !== "boolean") this.fail(key, `is ${describe(v)}, not a boolean`);
    return v;
  }

  string(key: string): string {
    const v = this.get(key);
    if (typeof v !== "string") this.fail(key, `is ${describe(v)}, not a string`);
    return v;
  }

  /** A byte array of exactly `length` bytes. */
  bytes(key: string, length: number): Uint8Array {
    const v = this.get(key);
    if (!(v instanceof Uint8Array)) this.fail(key, `is ${describe(v)}, not bytes`);
    if (v.length !== length) this.fail(key, `has ${v.length} bytes, ${length} expected`);
    return v;
  }

  /** A nested object. */
  object(key: string): StateReader {
    const v = this.get(key);
    if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
      this.fail(key, `is ${describe(v)}, not an object`);
    }
    return new StateReader(this.device, v, `${this.path}${key}.`);
  }

  /** An array of exactly `length` objects. */
  objects(key: string, length: number): StateReader[] {
    const v = this.get(key);
    if (!Array.isArray(v)) this.fail(key, `is ${describe(v)}, not an array`);
    if (v.length !== length) this.fail(key, `has ${v.length} entries, ${length} expected`);
    return v.map((e, i) => {
      if (e === null || typeof e !== "object" || Array.isArray(e) || e instanceof Uint8Array) {
        this.fail(`${key}[${i}]`, `is ${describe(e)}, not an object`);
      }
      return new StateReader(this.device, e, `${this.path}${key}[${i}].`);
    });
  }

  /** A nested device state (kind, version, data), as a composite device saves its parts. */
  state(key: string): DeviceState {
    const r = this.object(key);
    const data = r.get("data");
    if (data === null || typeof data !== "object" || Array.isArray(data) || data instanceof Uint8Array) {
      r.fail("data", `is ${describe(data)}, not an object`);
    }
    return { kind: r.string("kind"), version: r.int("version", 0, 0xffff), data: data as StateObject };
  }
}

function describe(v: StateValue | undefined): string {
  if (v === undefined) return "undefined";
  if (v === null) return "null";
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === "object") return "an object";
  return String(v);
}

/** A device state as a value inside another's data (a composite device saves its parts so); StateReader.state reads it. */
export function nested(s: DeviceState): StateObject {
  return { kind: s.kind, version: s.version, data: s.data };
}

/** A copy of `length` bytes of `state` at `offset` (state buffers are shared: the copy is the snapshot's own). */
export function copyBytes(state: ArrayBufferLike, offset: number, length: number): Uint8Array {
  return new Uint8Array(state, offset, length).slice();
}

/** A deadline on a clock that does not survive the process (monotonic): saved as milliseconds from now. */
export function relativeTime(t: number, now: number): number | null {
  return Number.isFinite(t) ? t - now : null;
}

/**
 * One field of a device's shared state, by byte offset: a little-endian integer checked against [min, max] on
 * restore, a Float64 (NaN saved as null), or raw bytes. Devices describe their layout once as a table of these.
 */
export type StateField =
  | { name: string; at: number; type: "u8" | "u16" | "u32" | "i32"; min?: number; max?: number }
  | { name: string; at: number; type: "f64" }
  | { name: string; at: number; type: "bytes"; length: number };

const INT_RANGE = {
  u8: [0, 0xff],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  i32: [-0x8000_0000, 0x7fff_ffff],
};

/** Reads every field of `table` from `view` into a state object (lock held by the caller). */
export function saveFields(view: DataView, table: readonly StateField[]): StateObject {
  const out: StateObject = {};
  for (const f of table) {
    switch (f.type) {
      case "u8":
        out[f.name] = view.getUint8(f.at);
        break;
      case "u16":
        out[f.name] = view.getUint16(f.at, true);
        break;
      case "u32":
        out[f.name] = view.getUint32(f.at, true);
        break;
      case "i32":
        out[f.name] = view.getInt32(f.at, true);
        break;
      case "f64": {
        const v = view.getFloat64(f.at, true);
        out[f.name] = Number.isFinite(v) ? v : null;
        break;
      }
      case "bytes":
        out[f.name] = copyBytes(view.buffer, view.byteOffset + f.at, f.length);
        break;
    }
  }
  return out;
}

/**
 * Checks every field of `table` in `r` (all of them, before anything is written), then returns a function that
 * writes them into `view`. Split so that a device can check everything, its own cross-field rules too, and only
 * then touch its state: a refused state leaves the device as it was.
 */
export function checkFields(r: StateReader, table: readonly StateField[]): (view: DataView) => void {
  const writes: Array<(view: DataView) => void> = [];
  for (const f of table) {
    switch (f.type) {
      case "u8":
      case "u16":
      case "u32":
      case "i32": {
        const [lo, hi] = INT_RANGE[f.type];
        const v = r.int(
          f.name,
          Math.max(lo as number, f.min ?? (lo as number)),
          Math.min(hi as number, f.max ?? (hi as number)),
        );
        const at = f.at;
        if (f.type === "u8") writes.push((view) => view.setUint8(at, v));
        else if (f.type === "u16") writes.push((view) => view.setUint16(at, v, true));
        else if (f.type === "u32") writes.push((view) => view.setUint32(at, v, true));
        else writes.push((view) => view.setInt32(at, v, true));
        break;
      }
      case "f64": {
        const v = r.numberOrNull(f.name);
        const at = f.at;
        writes.push((view) => view.setFloat64(at, v ?? Number.NaN, true));
        break;
      }
      case "bytes": {
        const b = r.bytes(f.name, f.length);
        const at = f.at;
        writes.push((view) => new Uint8Array(view.buffer, view.byteOffset + at, b.length).set(b));
        break;
      }
    }
  }
  return (view) => {
    for (const w of writes) w(view);
  };
}
