/* count: a counter for snapshot tests. Prints "count K" for K = 1..TOTAL, one line every MS milliseconds of TSC
 * time, then "count done", and exits 0. The counter and the loop live in registers and RAM only, so a restored
 * snapshot must go on with the next K: a restore that lost or repeated state shows as a gap or a repeat (and a
 * TSC restored wrong as a long stall). */
#include "micro.h"
#include "wait.h"

int prog_count(int argc, char **argv)
{
	uint64_t total = 20, ms = 100;
	if ((argc > 1 && !parse_u64(argv[1], &total)) || (argc > 2 && !parse_u64(argv[2], &ms))) {
		con_puts("usage: count [TOTAL] [MS]\n");
		return 2;
	}
	tsc_calibrate();
	for (uint64_t k = 1; k <= total; k++) {
		delay_us(ms * 1000);
		con_printf("count %lu\n", (unsigned long)k);
	}
	con_puts("count done\n");
	return 0;
}
