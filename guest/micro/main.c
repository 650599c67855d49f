/* micro guest: boot info, command line, program table. */
#include "micro.h"

#define MAX_ARGS 16
#define CMDLINE_MAX 4096

static int prog_tour(int argc, char **argv);

static const struct program {
	const char *name;
	int (*run)(int argc, char **argv);
} programs[] = {
	{ "hello", prog_hello },
	{ "exit42", prog_exit42 },
	{ "pio", prog_pio },
	{ "mmio", prog_mmio },
	{ "irq", prog_irq },
	{ "user", prog_user },
	{ "bench-pio", prog_bench_pio },
	{ "bench-mmio", prog_bench_mmio },
	{ "triple-fault", prog_triple_fault },
	{ "echo", prog_echo },
	{ "tour", prog_tour },
	{ "pci", prog_pci },
	{ "virtio-blk-rw", prog_virtio_blk_rw },
	{ "virtio-blk-id", prog_virtio_blk_id },
	{ "virtio-msix", prog_virtio_msix },
	{ "bench-virtio-blk", prog_bench_virtio_blk },
	{ "virtio-blk-hammer", prog_virtio_blk_hammer },
	{ "virtio-net-test", prog_virtio_net_test },
	{ "bench-virtio-net", prog_bench_virtio_net },
	{ "virtio-console", prog_virtio_console },
	{ "e1000-test", prog_e1000_test },
	{ "e1000-irq", prog_e1000_irq },
	{ "bench-e1000", prog_bench_e1000 },
	{ "count", prog_count },
	{ "dirty", prog_dirty },
};

static int prog_tour(int argc, char **argv)
{
	static int (*const steps[])(int, char **) = { prog_hello, prog_pio, prog_mmio, prog_irq, prog_user };
	for (unsigned i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (steps[i](argc, argv) != 0) {
			con_puts("tour failed\n");
			return 1;
		}
	}
	con_puts("tour ok\n");
	return 0;
}

static char cmdline[CMDLINE_MAX];

/* Copies the command line and splits it at spaces and tabs. */
static int split_cmdline(const struct boot_info *bi, char **argv)
{
	const char *src = (const char *)(uintptr_t)bi->cmdline_addr;
	uint32_t len = bi->cmdline_len;
	if (len >= CMDLINE_MAX)
		len = CMDLINE_MAX - 1;
	int argc = 0;
	char *d = cmdline;
	for (uint32_t i = 0; i < len && src[i]; i++) {
		char c = src[i];
		if (c == ' ' || c == '\t' || c == '\n') {
			*d++ = '\0';
			continue;
		}
		if ((d == cmdline || d[-1] == '\0') && argc < MAX_ARGS)
			argv[argc++] = d;
		*d++ = c;
	}
	*d = '\0';
	argv[argc] = 0;
	return argc;
}

void kmain(const struct boot_info *bi);

void kmain(const struct boot_info *bi)
{
	uart_init();
	if (bi->magic != BOOT_INFO_MAGIC) {
		con_printf("bad boot info magic 0x%x at %p\n", bi->magic, (const void *)bi);
		vm_exit(4);
	}

	char *argv[MAX_ARGS + 1];
	int argc = split_cmdline(bi, argv);
	if (argc == 0) {
		con_puts("no program name on the command line\n");
		vm_exit(2);
	}
	for (unsigned i = 0; i < sizeof(programs) / sizeof(programs[0]); i++) {
		if (str_eq(argv[0], programs[i].name))
			vm_exit((unsigned)programs[i].run(argc, argv));
	}
	con_printf("unknown program: %s\n", argv[0]);
	vm_exit(2);
}
