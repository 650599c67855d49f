/* micro guest: user (CPL 3 round trip) and the bench-pio / bench-mmio exit benchmarks. */
#include "micro.h"

#define USER_RFLAGS (RFLAGS_FIXED | RFLAGS_IOPL3 | RFLAGS_IF)
#define BENCH_RFLAGS (RFLAGS_FIXED | RFLAGS_IOPL3) /* IF clear: nothing may perturb the timed loop */
#define USER_IRQ_SPINS 20000000u

/* Runs at CPL 3. The return value comes back from enter_user via int $0x80. */
static int user_main(void)
{
	int bad = 0;
	if (current_cpl() != 3) {
		con_printf("user: running at CPL %u, not 3\n", current_cpl());
		return 1;
	}
	con_puts("hello from CPL 3\n");
	bad |= pio_check();

	uint32_t old = irq5_count;
	outl(TDEV_PIO + TDEV_IRQLINE, 1);
	for (unsigned i = 0; i < USER_IRQ_SPINS && irq5_count == old; i++)
		cpu_pause();
	if (irq5_count == old) {
		outl(TDEV_PIO + TDEV_IRQLINE, 0);
		con_puts("user: IRQ 5 did not arrive while at CPL 3\n");
		bad = 1;
	} else if ((irq5_last_cs & 3) != 3) {
		con_printf("user: IRQ 5 interrupted CS=0x%lx, expected CPL 3\n", irq5_last_cs);
		bad = 1;
	}
	return bad;
}

int prog_user(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	cpu_init();
	cli();
	pic_init((1u << 2) | (1u << TDEV_IRQ));
	uint64_t r = enter_user(user_main, ustack_top, USER_RFLAGS);
	if (current_cpl() != 0) {
		con_puts("user: int $0x80 did not return to CPL 0\n");
		return 1;
	}
	if (r != 0) {
		con_puts("user: CPL 3 checks failed\n");
		return 1;
	}
	con_puts("user ok\n");
	return 0;
}

int run_user(int (*fn)(void), int interrupts)
{
	cpu_init();
	cli();
	pic_init(0); /* every 8259 line masked */
	return (int)enter_user(fn, ustack_top, RFLAGS_FIXED | RFLAGS_IOPL3 | (interrupts ? RFLAGS_IF : 0));
}

/* ---- bench-pio N / bench-mmio N ---- */

static uint64_t bench_iters;
static int bench_use_mmio;

static int bench_main(void) /* CPL 3, IOPL 3 */
{
	uint64_t n = bench_iters;
	if (bench_use_mmio) {
		mmio_w32(TDEV_MMIO + TDEV_MARKER, 1);
		if (n)
			__asm__ volatile("1:\n\t"
					 "movl %%eax, (%%rdx)\n\t"
					 "dec %%rcx\n\t"
					 "jnz 1b"
					 : "+c"(n)
					 : "a"(0u), "d"(TDEV_MMIO + TDEV_COUNT)
					 : "memory");
		mmio_w32(TDEV_MMIO + TDEV_MARKER, 2);
	} else {
		outl(TDEV_PIO + TDEV_MARKER, 1);
		if (n)
			__asm__ volatile("1:\n\t"
					 "outl %%eax, %%dx\n\t"
					 "dec %%rcx\n\t"
					 "jnz 1b"
					 : "+c"(n)
					 : "a"(0u), "d"((uint16_t)(TDEV_PIO + TDEV_COUNT))
					 : "memory");
		outl(TDEV_PIO + TDEV_MARKER, 2);
	}
	vm_exit(0);
}

static int bench(int argc, char **argv, int use_mmio)
{
	uint64_t n = 100000;
	if (argc > 1 && !parse_u64(argv[1], &n)) {
		con_printf("%s: bad iteration count '%s'\n", argv[0], argv[1]);
		return 2;
	}
	bench_iters = n;
	bench_use_mmio = use_mmio;
	cpu_init();
	enter_user(bench_main, ustack_top, BENCH_RFLAGS);
	con_printf("%s: returned from CPL 3 unexpectedly\n", argv[0]);
	return 1;
}

int prog_bench_pio(int argc, char **argv) { return bench(argc, argv, 0); }
int prog_bench_mmio(int argc, char **argv) { return bench(argc, argv, 1); }
