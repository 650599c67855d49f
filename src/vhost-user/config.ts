/**
 * The device configuration space over vhost-user (QEMU docs/interop/vhost-user.rst, VHOST_USER_GET_CONFIG and
 * VHOST_USER_SET_CONFIG, with VHOST_USER_PROTOCOL_F_CONFIG), read and written through the same device model a
 * transport uses.
 *
 * GET_CONFIG: "vhost-user back-end's payload size MUST match the front-end's request, vhost-user back-end uses
 * zero length of payload to indicate an error". A read must lie within the 256 bytes a message may carry; bytes
 * past the device's own configuration read as zero (a front-end built against a newer struct, e.g. QEMU's
 * virtio_blk_config with the secure-erase fields, asks for more than vireo's device has).
 *
 * SET_CONFIG: "back-ends MUST NOT accept SET_CONFIG for read-only configuration space fields unless the live
 * migration bit is set". A write must lie within the device's configuration; flags 0 goes to the model's
 * writeConfig (a model without one has no writable field: refused); flags 1 (live migration) is accepted only
 * when it leaves the space as it is (a destination whose device differs from the source's is refused).
 */
import type { VirtioDevice, VirtioDeviceModel } from "../devices/virtio/device.ts";
import { MAX_CONFIG_SIZE, VhostUserRequestError } from "./protocol.ts";

/** SET_CONFIG / GET_CONFIG flags. */
export const CONFIG_FLAG_WRITABLE = 0;
export const CONFIG_FLAG_MIGRATION = 1;

export interface ConfigBody {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

function header(offset: number, size: number, flags: number): Uint8Array {
  const p = new Uint8Array(12 + size);
  const v = new DataView(p.buffer);
  v.setUint32(0, offset >>> 0, true);
  v.setUint32(4, size >>> 0, true);
  v.setUint32(8, flags >>> 0, true);
  return p;
}

/**
 * The GET_CONFIG reply payload: the request's offset, size and flags with `size` bytes read, or an empty payload
 * (the spec's error) with the reason.
 */
export function configReply(
  b: ConfigBody,
  read: (offset: number, data: Uint8Array) => void,
): { payload: Uint8Array; error: string | null } {
  let error: string | null = null;
  if (b.flags !== CONFIG_FLAG_WRITABLE && b.flags !== CONFIG_FLAG_MIGRATION) error = `flags ${b.flags}`;
  else if (b.size === 0) error = "size 0";
  else if (b.offset > MAX_CONFIG_SIZE - b.size)
    error = `offset ${b.offset} + size ${b.size} is past ${MAX_CONFIG_SIZE} bytes`;
  if (error !== null) return { payload: new Uint8Array(0), error };
  const p = header(b.offset, b.size, b.flags);
  const data = p.subarray(12);
  // The device reads zeroes past its configuration (VirtioDevice.readConfig clamps and fills).
  read(b.offset, data);
  return { payload: p, error: null };
}

/** Applies a SET_CONFIG, or throws VhostUserRequestError (NACK or close). */
export function setConfig(b: ConfigBody, probe: VirtioDeviceModel, device: VirtioDevice | null): void {
  const size = probe.configSize;
  if (b.size === 0 || b.offset > size || b.size > size - b.offset) {
    throw new VhostUserRequestError(
      `SET_CONFIG: offset ${b.offset} + size ${b.size} is outside the ${size}-byte configuration space`,
    );
  }
  if (b.flags === CONFIG_FLAG_MIGRATION) {
    const now = new Uint8Array(b.size);
    if (device) device.readConfig(b.offset, now);
    else readModelConfig(probe, b.offset, now);
    if (!now.every((x, i) => x === b.data[i])) {
      throw new VhostUserRequestError(
        `SET_CONFIG (migration): bytes ${b.offset}-${b.offset + b.size - 1} differ from this device's`,
      );
    }
    return;
  }
  if (b.flags !== CONFIG_FLAG_WRITABLE) throw new VhostUserRequestError(`SET_CONFIG: flags ${b.flags}`);
  if (probe.writeConfig === undefined) {
    throw new VhostUserRequestError(`SET_CONFIG: the ${probe.name} configuration space is read-only`);
  }
  if (device === null) throw new VhostUserRequestError("SET_CONFIG before SET_MEM_TABLE");
  device.writeConfig(b.offset, b.data);
}

/** Reads a model's configuration without a device (before SET_MEM_TABLE), clamped as VirtioDevice clamps. */
export function readModelConfig(model: VirtioDeviceModel, offset: number, data: Uint8Array): void {
  data.fill(0);
  if (offset < 0 || offset >= model.configSize) return;
  model.readConfig(offset, data.subarray(0, Math.min(data.length, model.configSize - offset)));
}
