/* count: a counter for snapshot tests. Prints "count K" for K = 1..TOTAL, spinning SPIN loop iterations between
 * lines, then "count done", and exits 0. The counter and the loop live in registers and RAM only, so a restored
 * snapshot must go on with the next K: a restore that lost or repeated state shows as a gap or a repeat. */
#include "micro.h"

int prog_count(int argc, char **argv)
{
	uint64_t total = 20, spin = 10000000;
	if ((argc > 1 && parse_u64(argv[1], &total) != 0) || (argc > 2 && parse_u64(argv[2], &spin) != 0)) {
		con_puts("usage: count [TOTAL] [SPIN]\n");
		return 2;
	}
	for (uint64_t k = 1; k <= total; k++) {
		for (volatile uint64_t i = 0; i < spin; i++)
			;
		con_printf("count %lu\n", (unsigned long)k);
	}
	con_puts("count done\n");
	return 0;
}
