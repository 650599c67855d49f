/* micro guest: the irq program (8259 PIC, test-device IRQ 5, UART THR-empty IRQ 4). */
#include "micro.h"

#define WAIT_TICKS 200 /* 2 s of 100 Hz watchdog ticks */

/* hlt until *count moves past old. The PIT watchdog wakes hlt up so a missing interrupt times out. */
static int wait_for_irq(volatile uint32_t *count, uint32_t old)
{
	uint32_t t0 = pit_ticks;
	for (unsigned i = 0; i < 100000; i++) {
		cli();
		if (*count != old || pit_ticks - t0 > WAIT_TICKS)
			break;
		sti_hlt();
	}
	sti();
	return *count != old;
}

static void report_missing(const char *what)
{
	uint16_t irr = pic_read_irr(), isr = pic_read_isr();
	con_printf("irq: %s did not arrive (PIC IRR=0x%x ISR=0x%x, watchdog ticks=%u%s)\n", what, irr, isr,
		   pit_ticks, pit_ticks ? "" : ": the PIT never ticked either");
}

int prog_irq(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	int bad = 0;
	const uint16_t devs = (1u << 2) | (1u << UART_IRQ) | (1u << TDEV_IRQ);

	cpu_init();
	cli();
	pic_init(devs | (1u << 0));
	pit_start_watchdog();
	sti();

	/* (a) test-device level interrupt; the handler lowers the line and sends EOI. */
	uint32_t n5 = irq5_count;
	outl(TDEV_PIO + TDEV_IRQLINE, 1);
	if (!wait_for_irq(&irq5_count, n5)) {
		outl(TDEV_PIO + TDEV_IRQLINE, 0);
		report_missing("IRQ 5 (test device)");
		bad = 1;
	}

	/* (b) UART THR-empty interrupt; the handler reads IIR and clears IER. */
	uint32_t n4 = irq4_count;
	outb(UART_IER, UART_IER_THRI);
	if (!wait_for_irq(&irq4_count, n4)) {
		outb(UART_IER, 0);
		report_missing("IRQ 4 (UART THR empty)");
		bad = 1;
	} else if ((uart_last_iir & 0x0F) != 0x02) {
		con_printf("irq: UART IIR read 0x%x in the IRQ 4 handler, expected THR empty (0x2)\n", uart_last_iir);
		bad = 1;
	}

	cli();
	pic_set_mask(devs);
	pit_stop();
	if (bad)
		return 1;
	con_printf("irq ok (irq5=%u irq4=%u)\n", irq5_count - n5, irq4_count - n4);
	return 0;
}
