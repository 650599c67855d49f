/* micro guest: hello, exit42, pio, mmio and triple-fault. */
#include "micro.h"

int prog_hello(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	con_puts("Hello from the guest\n");
	return 0;
}

int prog_exit42(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return 42;
}

static int expect(const char *what, uint64_t got, uint64_t want)
{
	if (got == want)
		return 0;
	con_printf("%s: got 0x%lx, want 0x%lx\n", what, got, want);
	return 1;
}

/* Accesses the counter must have seen between its two reads (a read of the counter itself may or may
 * not count, so only a lower bound is checked). */
static int expect_count(const char *what, uint32_t before, uint32_t after, uint32_t accesses)
{
	uint32_t delta = after - before;
	if (delta >= accesses && delta <= accesses + 2)
		return 0;
	con_printf("%s: access counter went from %u to %u (+%u), expected +%u\n", what, before, after, delta,
		   accesses);
	return 1;
}

/* Narrow writes are only checked by reading back the same width: whether an 8- or 16-bit write merges
 * into or replaces the 32-bit register is not part of the contract. */
int pio_check(void)
{
	const uint16_t s = TDEV_PIO + TDEV_SCRATCH;
	int bad = 0;
	uint32_t c0 = inl(TDEV_PIO + TDEV_COUNT);
	outl(s, 0x12345678);
	bad |= expect("pio: 32-bit readback", inl(s), 0x12345678);
	bad |= expect("pio: 16-bit read of a 32-bit value", inw(s), 0x5678);
	bad |= expect("pio: 8-bit read of a 32-bit value", inb(s), 0x78);
	outw(s, 0xBEEF);
	bad |= expect("pio: 16-bit readback", inw(s), 0xBEEF);
	outb(s, 0x5A);
	bad |= expect("pio: 8-bit readback", inb(s), 0x5A);
	outl(s, 0xA5A5F00D);
	bad |= expect("pio: second 32-bit readback", inl(s), 0xA5A5F00D);
	uint32_t c1 = inl(TDEV_PIO + TDEV_COUNT);
	bad |= expect_count("pio", c0, c1, 10);
	uint32_t c2 = inl(TDEV_PIO + TDEV_COUNT);
	if (c2 < c1) {
		con_printf("pio: access counter went backwards: %u then %u\n", c1, c2);
		bad = 1;
	}
	return bad;
}

int mmio_check(void)
{
	const uintptr_t s = TDEV_MMIO + TDEV_SCRATCH;
	int bad = 0;
	uint32_t c0 = mmio_r32(TDEV_MMIO + TDEV_COUNT);
	mmio_w64(s, 0x1122334455667788ull);
	bad |= expect("mmio: 64-bit readback", mmio_r64(s), 0x1122334455667788ull);
	bad |= expect("mmio: 32-bit read of a 64-bit value", mmio_r32(s), 0x55667788);
	bad |= expect("mmio: 16-bit read of a 64-bit value", mmio_r16(s), 0x7788);
	bad |= expect("mmio: 8-bit read of a 64-bit value", mmio_r8(s), 0x88);
	mmio_w32(s, 0xCAFEBABE);
	bad |= expect("mmio: 32-bit readback", mmio_r32(s), 0xCAFEBABE);
	mmio_w16(s, 0xBEEF);
	bad |= expect("mmio: 16-bit readback", mmio_r16(s), 0xBEEF);
	mmio_w8(s, 0x5A);
	bad |= expect("mmio: 8-bit readback", mmio_r8(s), 0x5A);
	mmio_w64(s, 0x0123456789ABCDEFull);
	bad |= expect("mmio: second 64-bit readback", mmio_r64(s), 0x0123456789ABCDEFull);
	uint32_t c1 = mmio_r32(TDEV_MMIO + TDEV_COUNT);
	bad |= expect_count("mmio", c0, c1, 14);
	return bad;
}

int prog_pio(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (pio_check())
		return 1;
	con_puts("pio ok\n");
	return 0;
}

int prog_mmio(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (mmio_check())
		return 1;
	con_puts("mmio ok\n");
	return 0;
}

int prog_triple_fault(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	/* #UD's vector lies beyond a zero-limit IDT: #GP, which does not fit either: #DF, likewise: shutdown.
	 * ud2 rather than int3: PVM's CPL 0 instruction emulator cannot execute int3 (KVM reports an
	 * emulation failure instead of a shutdown), while a #UD is delivered like any exception. */
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) empty = { 0, 0 };
	__asm__ volatile("cli\n\tlidt %0\n\tud2" : : "m"(empty) : "memory");
	con_puts("triple-fault: still running after ud2 with an empty IDT\n");
	return 1;
}
