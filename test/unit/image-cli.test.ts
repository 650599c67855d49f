/** `vireo image build` and how `vireo run` treats a Linux kernel on this host. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import { vireo } from "../helpers/cli.ts";

const image = findGuestImage();
const noImage = image ? false : "no guest image: run ./bin/vireo image build (scripts/setup.sh does)";

test("image build with nothing new reuses the cached image and says where it is", { skip: noImage }, () => {
  const r = vireo(["image", "build"], { timeoutMs: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^up to date: Linux ${image?.kernelVersion.replace(/\./g, "\\.")}`, "m"));
  assert.ok(r.stdout.includes(image?.guestInitrd ?? "?"));
});

test("on a PVM host a stock kernel needs --force, and the refusal says why", {
  skip: noImage || (KvmSystem.isPvm() ? false : "this host's KVM is not PVM"),
}, () => {
  const r = vireo(["run", "--kernel", image?.kernel ?? "", "--initrd", image?.guestInitrd ?? ""]);
  assert.equal(r.status, 125);
  assert.match(r.stderr, /^vireo: this host's \/dev\/kvm is PVM .* pass --force to run it anyway\n$/);
});

test("--initrd with an ELF guest is refused", () => {
  const r = vireo(["run", "--guest", "micro:hello", "--initrd", "/etc/hostname"]);
  assert.equal(r.status, 125);
  assert.match(r.stderr, /--initrd goes with a Linux bzImage kernel/);
});

test("a missing initrd is named", { skip: noImage }, () => {
  const r = vireo(["run", "--kernel", image?.kernel ?? "", "--initrd", "/nonexistent/initrd.img", "--force"]);
  assert.equal(r.status, 125);
  assert.match(r.stderr, /^vireo: initrd not found: \/nonexistent\/initrd\.img\n$/);
});

test("image takes only the build subcommand", () => {
  const r = vireo(["image", "frobnicate"]);
  assert.equal(r.status, 125);
  assert.match(r.stderr, /usage: vireo image build/);
});
