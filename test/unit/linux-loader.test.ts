/** The Linux loader on the real Debian bzImage: what lands where in guest memory, decoded independently. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  ACPI_TABLES_ADDR,
  LINUX_BOOT_PARAMS_ADDR,
  LINUX_CMDLINE_ADDR,
  loadLinux,
  looksLikeBzImage,
} from "../../src/arch/x86/linux-loader.ts";
import { GDT_ADDR, PML4_ADDR } from "../../src/arch/x86/long-mode.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { platformAcpi } from "../../src/vmm/platform.ts";
import { findRealKernel, NO_REAL_KERNEL } from "../helpers/real-kernel.ts";

const kernelPath = findRealKernel();

test("loads a stock kernel, an initrd, boot_params, ACPI and the boot GDT", {
  skip: kernelPath ? false : NO_REAL_KERNEL,
}, () => {
  const kernel = readFileSync(kernelPath as string);
  assert.ok(looksLikeBzImage(kernel));
  const memSize = 256 * 1024 * 1024;
  const mem = new GuestMemory(new ArrayBuffer(memSize));
  const initrd = new Uint8Array(300_000).fill(0x5a);
  const info = loadLinux(mem, {
    kernel,
    initrd,
    cmdline: "console=ttyS0 quiet",
    memSize,
    acpi: platformAcpi(2),
  });

  // Protected-mode kernel at its load address, entry at +0x200 (boot.rst, 64-bit boot protocol).
  assert.equal(info.entry, info.kernelAddr + 0x200);
  const setupSects = kernel[0x1f1] || 4;
  const pmOffset = (setupSects + 1) * 512;
  assert.deepEqual(
    mem.slice(info.kernelAddr, 4096),
    new Uint8Array(kernel.subarray(pmOffset, pmOffset + 4096)),
  );

  // boot_params: header magic copied, loader type, command line and initrd pointers (zero-page.rst offsets).
  const bp = LINUX_BOOT_PARAMS_ADDR;
  assert.equal(mem.readU32(bp + 0x202), 0x53726448, "HdrS");
  assert.equal(mem.readU8(bp + 0x210), 0xff, "type_of_loader");
  assert.equal(mem.readU32(bp + 0x228), LINUX_CMDLINE_ADDR, "cmd_line_ptr");
  assert.equal(new TextDecoder().decode(mem.slice(LINUX_CMDLINE_ADDR, 19)), "console=ttyS0 quiet");
  assert.equal(mem.readU8(LINUX_CMDLINE_ADDR + 19), 0);
  const rdImage = mem.readU32(bp + 0x218);
  assert.equal(rdImage, info.initrd?.addr);
  assert.equal(mem.readU32(bp + 0x21c), initrd.length, "ramdisk_size");
  assert.deepEqual(mem.slice(rdImage, initrd.length), initrd);
  assert.ok(rdImage >= info.kernelAddr, "initrd above the kernel");
  assert.ok(rdImage + initrd.length <= memSize);
  assert.equal(Number(mem.readU64(bp + 0x70)), info.rsdpAddr, "acpi_rsdp_addr");

  // e820 at 0x2d0 with its count at 0x1e8: RAM from 1 MiB covers the kernel, the ACPI region is typed ACPI.
  const n = mem.readU8(bp + 0x1e8);
  assert.ok(n >= 3);
  const entries = Array.from({ length: n }, (_, i) => ({
    addr: Number(mem.readU64(bp + 0x2d0 + i * 20)),
    size: Number(mem.readU64(bp + 0x2d0 + i * 20 + 8)),
    type: mem.readU32(bp + 0x2d0 + i * 20 + 16),
  }));
  assert.ok(entries.some((e) => e.type === 1 && e.addr <= info.kernelAddr && e.addr + e.size >= memSize));
  assert.ok(entries.some((e) => e.type === 3 && e.addr === ACPI_TABLES_ADDR));

  // RSDP signature where boot_params points, and the __BOOT_CS/__BOOT_DS descriptors at 0x10/0x18.
  assert.equal(new TextDecoder().decode(mem.slice(info.rsdpAddr, 8)), "RSD PTR ");
  assert.equal(mem.readU64(GDT_ADDR + 0x10), 0x00af9a000000ffffn);
  assert.equal(mem.readU64(GDT_ADDR + 0x18), 0x00cf92000000ffffn);
  assert.notEqual(mem.readU64(PML4_ADDR) & 1n, 0n, "page tables present");
});

test("a command line longer than the kernel accepts is refused with the limit", {
  skip: kernelPath ? false : NO_REAL_KERNEL,
}, () => {
  const kernel = readFileSync(kernelPath as string);
  const memSize = 256 * 1024 * 1024;
  const mem = new GuestMemory(new ArrayBuffer(memSize));
  assert.throws(
    () => loadLinux(mem, { kernel, cmdline: "x".repeat(5000), memSize, acpi: platformAcpi(1) }),
    /this kernel accepts at most \d+/,
  );
});
