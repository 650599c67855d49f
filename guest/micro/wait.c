/* micro guest: bounded waits (wait.h). */
#include "wait.h"

#define PIT_HZ 1193182u
#define PIT_CH2 0x42
#define PIT_MODE 0x43
#define PORT_B 0x61 /* bit 0: timer 2 gate, bit 1: speaker data (kept off) */
#define CAL_PIT_TICKS 23864u /* 20 ms */
#define FALLBACK_TSC_HZ 3000000000ull
#define POLLS_PER_US 100 /* the bound if the TSC does not move: polls (each at least a pause) per microsecond */

static uint64_t tsc_hz;
static int tsc_stuck;

static uint16_t pit2_count(void)
{
	outb(PIT_MODE, 0x80); /* latch timer 2 */
	uint8_t lo = inb(PIT_CH2);
	return (uint16_t)(lo | (inb(PIT_CH2) << 8));
}

/* Timer 2 in mode 0 counts down from 0xFFFF at 1.193182 MHz while its gate (port 0x61 bit 0) is high; its output
 * only goes to the speaker and port 0x61 bit 5. The TSC ticks over 20 ms of PIT counts give the rate; the I/O
 * exits around each read cost microseconds, so the estimate is good to a few per cent. */
void tsc_calibrate(void)
{
	if (tsc_hz || tsc_stuck)
		return;
	uint8_t portb = inb(PORT_B);
	outb(PORT_B, (uint8_t)(portb & ~0x03u)); /* gate low while programming */
	outb(PIT_MODE, 0xB0);                     /* timer 2, low then high byte, mode 0, binary */
	outb(PIT_CH2, 0xFF);
	outb(PIT_CH2, 0xFF);
	outb(PORT_B, (uint8_t)((portb & ~0x02u) | 0x01u));
	uint16_t c0 = pit2_count(), c = c0;
	uint64_t t0 = rdtsc(), t1 = t0;
	for (unsigned i = 0; i < 2000000 && (uint16_t)(c0 - c) < CAL_PIT_TICKS; i++) {
		c = pit2_count();
		t1 = rdtsc();
	}
	outb(PORT_B, portb);
	uint16_t ticks = (uint16_t)(c0 - c);
	if (t1 == t0) {
		tsc_stuck = 1;
		con_puts("micro: the TSC does not move; waits are bounded by a count of polls\n");
		return;
	}
	tsc_hz = ticks >= CAL_PIT_TICKS ? (t1 - t0) * PIT_HZ / ticks : 0;
	if (tsc_hz < 100000000ull || tsc_hz > 20000000000ull) {
		con_printf("micro: TSC calibration failed (%u PIT ticks in %lu TSC ticks); assuming %lu Hz\n", ticks,
			   t1 - t0, (uint64_t)FALLBACK_TSC_HZ);
		tsc_hz = FALLBACK_TSC_HZ;
	}
}

uint64_t tsc_rate_hz(void) { return tsc_hz; }

void wait_start_us(struct bounded_wait *w, uint64_t us)
{
	w->t0 = rdtsc();
	w->spins = 0;
	uint64_t hz = tsc_hz ? tsc_hz : FALLBACK_TSC_HZ;
	w->limit = tsc_stuck ? us * POLLS_PER_US : hz / 1000000 * us;
}

void wait_start(struct bounded_wait *w) { wait_start_us(w, WAIT_SECONDS * 1000000ull); }

int wait_expired(struct bounded_wait *w)
{
	if (tsc_stuck)
		return ++w->spins > w->limit;
	return rdtsc() - w->t0 > w->limit;
}

void delay_us(uint64_t us)
{
	struct bounded_wait w;
	wait_start_us(&w, us);
	while (!wait_expired(&w))
		cpu_pause();
}
