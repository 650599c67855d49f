/**
 * MSI delivery through irqfds (KVM API: KVM_SET_GSI_ROUTING, KVM_IRQFD), for data-plane threads: each MSI
 * message a device sends is given a GSI whose routing entry is that message, and an eventfd bound to the GSI; the
 * interrupt is then a write to the eventfd, which KVM turns into the MSI in the kernel — the path a kernel vhost
 * worker or a vhost-user backend uses, since neither can issue KVM ioctls on the VM.
 *
 * KVM's routing table is one table per VM that KVM_SET_GSI_ROUTING replaces whole, so every thread that changes
 * an entry goes through one MsiRouteTable in shared memory: under its lock it updates the entry and installs the
 * full table (the PC irqchip routes plus every MSI route in use).
 *
 * A device's GSIs are its own (an IrqfdMsiSink on its data-plane thread is their only user), so the sink keeps
 * its message-to-GSI cache locally. Messages change only when the driver reprograms MSI-X entries; then the least
 * recently assigned GSI of the pool takes the new message.
 */

import type { MsiSink } from "../devices/pci/msix.ts";
import { VireoError } from "../errors.ts";
import { Vm } from "../kvm/vm.ts";
import type { Counter, MetricsSink } from "../metrics/registry.ts";
import { signalEventFd } from "../native.ts";
import { SharedLock } from "../shared/shared-lock.ts";

/** GSIs 0-23 are the IOAPIC's; MSI routes start after them. */
export const FIRST_MSI_GSI = 24;

// Int32 words: [lock, count], then per route [gsi, valid, addressLo, addressHi, data].
const W_LOCK = 0;
const W_COUNT = 1;
const HEADER_WORDS = 2;
const ROUTE_WORDS = 5;

export class MsiRouteError extends VireoError {}

export class MsiRouteTable {
  private readonly words: Int32Array;
  private readonly lock: SharedLock;
  private readonly capacity: number;

  static createState(capacity: number): SharedArrayBuffer {
    const state = new SharedArrayBuffer((HEADER_WORDS + capacity * ROUTE_WORDS) * 4);
    SharedLock.init(state, W_LOCK * 4);
    return state;
  }

  constructor(
    state: SharedArrayBuffer,
    private readonly vm: Vm,
  ) {
    this.words = new Int32Array(state);
    this.lock = new SharedLock(state, W_LOCK * 4);
    this.capacity = (this.words.length - HEADER_WORDS) / ROUTE_WORDS;
  }

  /** Points `gsi` at the MSI (addressHi:addressLo, data) and installs the whole table in KVM. */
  set(gsi: number, addressLo: number, addressHi: number, data: number): void {
    this.lock.lock();
    try {
      const w = this.words;
      const count = w[W_COUNT] as number;
      let slot = -1;
      for (let i = 0; i < count; i++) if (w[HEADER_WORDS + i * ROUTE_WORDS] === gsi) slot = i;
      if (slot < 0) {
        if (count >= this.capacity)
          throw new MsiRouteError("VIREO_MSI_ROUTES_FULL", `no room for MSI route ${gsi}`);
        slot = count;
        w[W_COUNT] = count + 1;
      }
      const b = HEADER_WORDS + slot * ROUTE_WORDS;
      w[b] = gsi;
      w[b + 1] = 1;
      w[b + 2] = addressLo | 0;
      w[b + 3] = addressHi | 0;
      w[b + 4] = data | 0;
      const msi = [];
      for (let i = 0; i < (w[W_COUNT] as number); i++) {
        const o = HEADER_WORDS + i * ROUTE_WORDS;
        if (w[o + 1] !== 1) continue;
        msi.push({
          gsi: w[o] as number,
          addressLo: (w[o + 2] as number) >>> 0,
          addressHi: (w[o + 3] as number) >>> 0,
          data: (w[o + 4] as number) >>> 0,
        });
      }
      this.vm.setGsiRouting(Vm.pcIrqchipRoutes(), msi);
    } finally {
      this.lock.unlock();
    }
  }
}

/** One GSI with its irqfd (registered with KVM_IRQFD by whoever created the pool). */
export interface IrqfdGsi {
  gsi: number;
  fd: number;
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

/** An MsiSink that sends every message through an irqfd of its own GSI pool. */
export class IrqfdMsiSink implements MsiSink {
  private readonly byMessage = new Map<string, number>();
  private readonly messageOf: Array<string | undefined>;
  private next = 0;
  private readonly cSignals: Counter;
  private readonly cReroutes: Counter;

  constructor(
    private readonly table: MsiRouteTable,
    private readonly pool: readonly IrqfdGsi[],
    metrics?: MetricsSink,
    name = "msi",
  ) {
    if (pool.length === 0) throw new MsiRouteError("VIREO_MSI_POOL", `${name}: an irqfd MSI sink needs GSIs`);
    this.messageOf = new Array(pool.length);
    this.cSignals = metrics?.counter(`irqfd.${name}.signals`) ?? NO_COUNTER;
    this.cReroutes = metrics?.counter(`irqfd.${name}.routes_set`) ?? NO_COUNTER;
  }

  signal(addressLo: number, addressHi: number, data: number): void {
    const key = `${addressLo >>> 0}:${addressHi >>> 0}:${data >>> 0}`;
    let i = this.byMessage.get(key);
    if (i === undefined) {
      i = this.next;
      this.next = (this.next + 1) % this.pool.length;
      const old = this.messageOf[i];
      if (old !== undefined) this.byMessage.delete(old);
      const g = this.pool[i] as IrqfdGsi;
      this.table.set(g.gsi, addressLo, addressHi, data);
      this.byMessage.set(key, i);
      this.messageOf[i] = key;
      this.cReroutes.add();
    }
    signalEventFd((this.pool[i] as IrqfdGsi).fd);
    this.cSignals.add();
  }
}
