/* micro guest: 16550 UART console (polled), printf subset, debug-exit. */
#include "micro.h"

void uart_init(void)
{
	outb(UART_IER, 0x00);   /* no interrupts */
	outb(UART_LCR, 0x80);   /* DLAB */
	outb(COM1 + 0, 0x01);   /* divisor 1 = 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(UART_LCR, 0x03);   /* 8N1, DLAB off */
	outb(UART_FCR, 0xC7);   /* FIFO on, clear both, 14-byte trigger */
	outb(UART_MCR, 0x0B);   /* DTR, RTS, OUT2 (gates the IRQ line on PCs) */
}

void con_putc(char c)
{
	/* Bounded so a broken LSR cannot hang us; the character is written regardless. */
	for (unsigned i = 0; i < 100000 && !(inb(UART_LSR) & UART_LSR_THRE); i++)
		cpu_pause();
	outb(UART_THR, (uint8_t)c);
}

void con_puts(const char *s)
{
	while (*s)
		con_putc(*s++);
}

/* Digits of v, padded on the left with pad up to width characters. */
static void put_u64(uint64_t v, unsigned base, unsigned width, char pad)
{
	char buf[24];
	unsigned i = 0;
	do {
		unsigned d = (unsigned)(v % base);
		buf[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	for (; width > i && width < 64; width--)
		con_putc(pad);
	while (i)
		con_putc(buf[--i]);
}

/* Supports %s %c %d %u %x %p %% with an optional field width for the numbers ("%4x", "%016lx": a leading 0
 * pads with zeros) and an optional 'l' length modifier. */
void con_printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			con_putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		unsigned width = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		int lng = 0;
		while (*fmt == 'l') {
			lng = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			con_puts(s ? s : "(null)");
			break;
		}
		case 'c':
			con_putc((char)va_arg(ap, int));
			break;
		case 'd': {
			int64_t v = lng ? va_arg(ap, long) : va_arg(ap, int);
			if (v < 0) {
				con_putc('-');
				put_u64(-(uint64_t)v, 10, width ? width - 1 : 0, pad);
			} else {
				put_u64((uint64_t)v, 10, width, pad);
			}
			break;
		}
		case 'u':
			put_u64(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 10, width, pad);
			break;
		case 'x':
			put_u64(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 16, width, pad);
			break;
		case 'p':
			con_puts("0x");
			put_u64((uintptr_t)va_arg(ap, void *), 16, width, pad);
			break;
		case '%':
			con_putc('%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			con_putc('%');
			con_putc(*fmt);
			break;
		}
	}
	va_end(ap);
}

/* Ends the run: vireo exits with code & 0xff. Works at CPL 0 and at CPL 3 with IOPL 3. */
void vm_exit(unsigned code)
{
	outb(DEBUG_EXIT_PORT, (uint8_t)code);
	if (current_cpl() == 0) {
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	for (;;)
		cpu_pause();
}
