/* micro guest: the echo program. Interrupt-driven UART receive: every byte the host sends comes back, until an
 * EOT (0x04). Exercises the host-input path (terminal or pipe -> UART RX FIFO -> IRQ 4) end to end. */
#include "micro.h"

#define EOT 0x04

int prog_echo(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	uint32_t bytes = 0;

	cpu_init();
	cli();
	pic_init((1u << 2) | (1u << UART_IRQ));
	outb(UART_IER, UART_IER_RDI);
	for (;;) {
		cli();
		if (uart_rx_head == uart_rx_tail) {
			outb(UART_IER, UART_IER_RDI); /* the handler may have turned it off when the ring was full */
			sti_hlt();
			continue;
		}
		sti();
		uint8_t c = uart_rx_ring[uart_rx_tail++ % UART_RX_RING];
		if (c == EOT)
			break;
		con_putc((char)c);
		bytes++;
	}
	outb(UART_IER, 0);
	con_printf("echo done (%u bytes)\n", bytes);
	return 0;
}
