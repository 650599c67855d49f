/**
 * Self-announcement of a VM's NICs where it now runs (a live migration's destination, a restored snapshot): the
 * guest's MAC addresses have moved to another port, host or TAP, and the switches and bridges in between still
 * send their frames to the old place until they hear from the MAC. The guest does not know it moved, so vireo
 * speaks for it: a few broadcast RARP requests (RFC 903: ARP's frame format, RFC 826, with ethertype 0x8035 and
 * opcode 3 "request reverse") from each NIC's MAC, written into its TAP as if the guest had sent them. Learning
 * bridges take the source MAC; the requests ask nothing anyone must answer. This is what QEMU sends for NICs
 * whose guests cannot announce themselves (virtio's VIRTIO_NET_F_GUEST_ANNOUNCE is not offered by vireo).
 */
import { writeSync } from "node:fs";
import { TAP_VNET_HDR_SIZE } from "./tap.ts";

export const ETHERTYPE_RARP = 0x8035;
/** RFC 903: "request reverse" (3); the reply is 4. */
const RARP_REQUEST = 3;
/** Frames shorter than this are padded (Ethernet's minimum without the FCS). */
const MIN_FRAME = 60;
/** When each announcement goes, from the start (QEMU's defaults: 5 rounds, 50 ms then 100 ms more each time). */
export const ANNOUNCE_SCHEDULE_MS = [0, 50, 200, 450, 800] as const;

/** A broadcast RARP request from `mac` asking for its own address (sender and target hardware address `mac`). */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  if (mac.length !== 6) throw new RangeError(`a MAC has 6 bytes, not ${mac.length}`);
  const f = new Uint8Array(MIN_FRAME);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6); // broadcast
  f.set(mac, 6);
  v.setUint16(12, ETHERTYPE_RARP);
  // RFC 826 layout: hardware type 1 (Ethernet), protocol type IPv4, lengths 6 and 4, then the opcode.
  v.setUint16(14, 1);
  v.setUint16(16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  v.setUint16(20, RARP_REQUEST);
  f.set(mac, 22); // sender hardware address; sender protocol address 0.0.0.0
  f.set(mac, 32); // target hardware address; target protocol address 0.0.0.0
  return f;
}

export interface AnnounceTarget {
  /** The NIC's name, for the log. */
  name: string;
  mac: Uint8Array;
  /** The TAP's fd, and whether every frame written to it starts with a virtio_net_hdr (IFF_VNET_HDR). */
  fd: number;
  vnetHdr: boolean;
}

/**
 * Writes ANNOUNCE_SCHEDULE_MS.length RARP requests per NIC on that schedule; returns a function that cancels the
 * rest (the VM stopped). A write that fails (the TAP gone, a full queue) is logged once and the NIC is dropped from
 * later rounds: announcing is a courtesy, never a reason to stop the VM.
 */
export function announceNics(
  targets: readonly AnnounceTarget[],
  opts: { log(message: string): void; onFrame?(target: AnnounceTarget): void },
): () => void {
  const frames = targets.map((t) => {
    const f = rarpFrame(t.mac);
    if (!t.vnetHdr) return f;
    // A zeroed virtio_net_hdr: no checksum or segmentation to do (virtio 1.2, 5.1.6).
    const withHdr = new Uint8Array(TAP_VNET_HDR_SIZE + f.length);
    withHdr.set(f, TAP_VNET_HDR_SIZE);
    return withHdr;
  });
  const live = targets.map(() => true);
  const send = () => {
    targets.forEach((t, i) => {
      if (!live[i]) return;
      try {
        writeSync(t.fd, frames[i] as Uint8Array);
        opts.onFrame?.(t);
      } catch (e) {
        live[i] = false;
        opts.log(`${t.name}: announcing its MAC failed: ${(e as Error).message}`);
      }
    });
  };
  const timers = ANNOUNCE_SCHEDULE_MS.map((ms) => setTimeout(send, ms));
  return () => {
    for (const t of timers) clearTimeout(t);
  };
}
