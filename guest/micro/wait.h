/* micro guest: bounded waits. Every polled wait in the drivers gives up after about WAIT_SECONDS of TSC time
 * without progress; the TSC rate is measured once against the 8254 PIT (channel 2, gated through port 0x61, no
 * interrupt). If the TSC does not move, a count of polls bounds the wait instead. */
#ifndef WAIT_H
#define WAIT_H

#include "micro.h"

#define WAIT_SECONDS 10

struct bounded_wait {
	uint64_t t0, spins, limit;
};

/* Measures the TSC rate (once; later calls return at once). Waits started before it assume 3 GHz. */
void tsc_calibrate(void);
/* The measured rate (0 before calibration). */
uint64_t tsc_rate_hz(void);
/* Starts (or restarts, on progress) a wait of WAIT_SECONDS, or of `us` microseconds. */
void wait_start(struct bounded_wait *w);
void wait_start_us(struct bounded_wait *w, uint64_t us);
/* Whether the wait's time is up (counts one poll). */
int wait_expired(struct bounded_wait *w);
/* Spins for `us` microseconds. */
void delay_us(uint64_t us);

#endif
