/**
 * The kernel's vhost ABI (include/uapi/linux/vhost.h, vhost_types.h): ioctl request numbers and the structs they
 * take, encoded here and checked against the system's header by test/unit/vhost-abi.test.ts
 * (native/vhost-abi-check.c).
 */

// asm-generic/ioctl.h: dir(2) | size(14) | type(8) | nr(8).
const IOC_WRITE = 1;
const IOC_READ = 2;
const ioc = (dir: number, nr: number, size: number) =>
  ((dir << 30) | (size << 16) | (VHOST_VIRTIO << 8) | nr) >>> 0;

/** The vhost ioctl type ("VHOST_VIRTIO"). */
const VHOST_VIRTIO = 0xaf;

export const SIZEOF = {
  vhost_vring_state: 8,
  vhost_vring_file: 8,
  vhost_vring_addr: 40,
  /** struct vhost_memory's header (nregions, padding); the regions follow. */
  vhost_memory: 8,
  vhost_memory_region: 32,
} as const;

export const VHOST = {
  GET_FEATURES: ioc(IOC_READ, 0x00, 8),
  SET_FEATURES: ioc(IOC_WRITE, 0x00, 8),
  SET_OWNER: ioc(0, 0x01, 0),
  RESET_OWNER: ioc(0, 0x02, 0),
  SET_MEM_TABLE: ioc(IOC_WRITE, 0x03, SIZEOF.vhost_memory),
  SET_VRING_NUM: ioc(IOC_WRITE, 0x10, SIZEOF.vhost_vring_state),
  SET_VRING_ADDR: ioc(IOC_WRITE, 0x11, SIZEOF.vhost_vring_addr),
  SET_VRING_BASE: ioc(IOC_WRITE, 0x12, SIZEOF.vhost_vring_state),
  GET_VRING_BASE: ioc(IOC_READ | IOC_WRITE, 0x12, SIZEOF.vhost_vring_state),
  SET_VRING_KICK: ioc(IOC_WRITE, 0x20, SIZEOF.vhost_vring_file),
  SET_VRING_CALL: ioc(IOC_WRITE, 0x21, SIZEOF.vhost_vring_file),
  NET_SET_BACKEND: ioc(IOC_WRITE, 0x30, SIZEOF.vhost_vring_file),
} as const;

/**
 * VHOST_NET_F_VIRTIO_NET_HDR (bit 27): vhost itself adds and strips the virtio-net header. vireo never acks it:
 * the TAP (IFF_VNET_HDR, 12 bytes) carries the header, as the guest writes it.
 */
export const VHOST_NET_F_VIRTIO_NET_HDR = 27;
/** VHOST_F_LOG_ALL (bit 26): dirty logging for migration; never acked. */
export const VHOST_F_LOG_ALL = 26;

/** struct vhost_vring_state { unsigned int index; unsigned int num; } */
export function vringState(index: number, num: number): Uint32Array {
  return Uint32Array.of(index, num);
}

/** struct vhost_vring_file { unsigned int index; int fd; } (fd -1: none / detach) */
export function vringFile(index: number, fd: number): Int32Array {
  return Int32Array.of(index, fd);
}

/** struct vhost_vring_addr: index, flags, then desc, used, avail and log user addresses (u64 each). */
export function vringAddr(index: number, a: { desc: bigint; used: bigint; avail: bigint }): DataView {
  const v = new DataView(new ArrayBuffer(SIZEOF.vhost_vring_addr));
  v.setUint32(0, index, true);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, a.desc, true);
  v.setBigUint64(16, a.used, true);
  v.setBigUint64(24, a.avail, true);
  v.setBigUint64(32, 0n, true);
  return v;
}

export interface VhostMemRegion {
  guestAddr: bigint;
  size: bigint;
  /** Where the region is mapped in this process (the vhost worker uses this process's address space). */
  userAddr: bigint;
}

/** struct vhost_memory { __u32 nregions; __u32 padding; struct vhost_memory_region regions[]; } */
export function memoryTable(regions: readonly VhostMemRegion[]): DataView {
  const v = new DataView(new ArrayBuffer(SIZEOF.vhost_memory + regions.length * SIZEOF.vhost_memory_region));
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const o = SIZEOF.vhost_memory + i * SIZEOF.vhost_memory_region;
    v.setBigUint64(o, r.guestAddr, true);
    v.setBigUint64(o + 8, r.size, true);
    v.setBigUint64(o + 16, r.userAddr, true);
    v.setBigUint64(o + 24, 0n, true);
  });
  return v;
}
