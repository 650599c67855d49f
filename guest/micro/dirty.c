/* dirty: guest memory for snapshot and migration benchmarks and tests. `dirty MIB [KIB_PER_MS] [SECONDS]` fills
 * MIB MiB of RAM at 16 MiB with a pattern, then for SECONDS seconds of TSC time rewrites KIB_PER_MS KiB every
 * millisecond, page by page round robin, printing "dirty t=S rewrites=N" once a second; at the end it checks every
 * page and prints "dirty ok pages=P" (exit 0) or the first bad page (exit 1).
 *
 * Page p (4 KiB) holds generation g in all of its 512 words as (p * 0x9E3779B97F4A7C15) ^ g, and a table in front
 * of the pages holds each page's generation: a page a snapshot or migration lost an update of (its old contents
 * back, or a mix) disagrees with itself or with the table. */
#include "micro.h"
#include "wait.h"

#define AREA_START (16ull << 20)
#define PAGE_BYTES 4096ull
#define WORDS (PAGE_BYTES / 8)
#define GOLDEN 0x9E3779B97F4A7C15ull

static uint64_t *page_at(uint64_t pages, uint64_t p)
{
	uint64_t table_bytes = (pages * 4 + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1);
	return (uint64_t *)(uintptr_t)(AREA_START + table_bytes + p * PAGE_BYTES);
}

static void write_page(uint64_t *w, uint64_t p, uint32_t g)
{
	uint64_t v = (p * GOLDEN) ^ g;
	for (uint64_t i = 0; i < WORDS; i++)
		w[i] = v;
}

int prog_dirty(int argc, char **argv)
{
	uint64_t mib = 16, kib_per_ms = 0, seconds = 0;
	if (argc < 2 || !parse_u64(argv[1], &mib) || (argc > 2 && !parse_u64(argv[2], &kib_per_ms)) ||
	    (argc > 3 && !parse_u64(argv[3], &seconds)) || argc > 4 || mib < 1) {
		con_puts("usage: dirty MIB [KIB_PER_MS] [SECONDS]\n");
		return 2;
	}
	const struct boot_info *bi = (const struct boot_info *)(uintptr_t)0x8000;
	uint64_t pages = mib * 256;
	uint64_t end = (uint64_t)(uintptr_t)page_at(pages, pages);
	if (end > bi->mem_size || end > (4ull << 30)) {
		con_printf("dirty: %lu MiB at 16 MiB do not fit in %lu MiB of RAM\n", (unsigned long)mib,
			   (unsigned long)(bi->mem_size >> 20));
		return 2;
	}
	uint32_t *gen = (uint32_t *)(uintptr_t)AREA_START;
	for (uint64_t p = 0; p < pages; p++) {
		gen[p] = 0;
		write_page(page_at(pages, p), p, 0);
	}
	con_printf("dirty filled %lu MiB\n", (unsigned long)mib);
	tsc_calibrate();
	uint64_t hz = tsc_rate_hz(), per_ms = hz / 1000;
	uint64_t per_tick = (kib_per_ms + 3) / 4, next = 0, rewrites = 0;
	uint64_t t0 = rdtsc(), tick = t0, second = 1;
	while (rdtsc() - t0 < seconds * hz) {
		for (uint64_t k = 0; k < per_tick; k++) {
			uint32_t g = gen[next] + 1;
			write_page(page_at(pages, next), next, g);
			gen[next] = g;
			next = next + 1 == pages ? 0 : next + 1;
			rewrites++;
		}
		tick += per_ms;
		while (rdtsc() < tick)
			;
		if (rdtsc() - t0 >= second * hz) {
			con_printf("dirty t=%lu rewrites=%lu\n", (unsigned long)second, (unsigned long)rewrites);
			second++;
		}
	}
	for (uint64_t p = 0; p < pages; p++) {
		const uint64_t *w = page_at(pages, p);
		uint64_t want = (p * GOLDEN) ^ gen[p];
		for (uint64_t i = 0; i < WORDS; i++) {
			if (w[i] != want) {
				con_printf("dirty: page %lu word %lu is 0x%lx, want 0x%lx (generation %u)\n", (unsigned long)p,
					   (unsigned long)i, (unsigned long)w[i], (unsigned long)want, gen[p]);
				return 1;
			}
		}
	}
	con_printf("dirty ok pages=%lu rewrites=%lu\n", (unsigned long)pages, (unsigned long)rewrites);
	return 0;
}
