/* micro guest: GDT, TSS, IDT, 8259 PIC, 8254 PIT and the interrupt dispatcher. */
#include "micro.h"

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
	/* I/O permission bitmap: all ports allowed (zero bits), then the 0xFF terminator byte. Real CPUs
	 * only consult it when CPL > IOPL; it matters under emulators that drop IOPL for CPL 3 (see
	 * README.md). */
	uint8_t iomap[65536 / 8 + 1];
} __attribute__((packed));

struct idt_gate {
	uint16_t offset_lo;
	uint16_t selector;
	uint8_t ist;
	uint8_t type_attr;
	uint16_t offset_mid;
	uint32_t offset_hi;
	uint32_t reserved;
} __attribute__((packed));

struct desc_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

/* Same layout as the GDT vireo provides; accessed bits preset so the CPU need not write them. */
static uint64_t gdt[8] __attribute__((aligned(16))) = {
	0,
	0x00AF9B000000FFFFull, /* 0x08 64-bit code, DPL 0 */
	0x00CF93000000FFFFull, /* 0x10 data, DPL 0 */
	0x00CFFB000000FFFFull, /* 0x18 32-bit code, DPL 3 (unused) */
	0x00CFF3000000FFFFull, /* 0x20 data, DPL 3 */
	0x00AFFB000000FFFFull, /* 0x28 64-bit code, DPL 3 */
	0, 0,                  /* 0x30 TSS descriptor (16 bytes), filled in by cpu_init */
};

static struct tss64 tss __attribute__((aligned(16)));
static struct idt_gate idt[256] __attribute__((aligned(16))); /* zero = not present */
static int cpu_ready;

volatile uint32_t pit_ticks;
volatile uint32_t irq4_count, irq5_count, irq_other_count;
volatile uint8_t uart_last_iir;
volatile uint8_t uart_rx_ring[UART_RX_RING];
volatile uint32_t uart_rx_head, uart_rx_tail;
volatile uint64_t irq5_last_cs;
volatile uint32_t user_int80_via_ud;
volatile uint32_t msi_count;

static void set_gate(unsigned vec, uint64_t handler, uint8_t type_attr)
{
	struct idt_gate *g = &idt[vec];
	g->offset_lo = (uint16_t)handler;
	g->selector = SEL_KCODE;
	g->ist = 0;
	g->type_attr = type_attr;
	g->offset_mid = (uint16_t)(handler >> 16);
	g->offset_hi = (uint32_t)(handler >> 32);
	g->reserved = 0;
}

void cpu_init(void)
{
	if (cpu_ready)
		return;

	tss.rsp[0] = (uintptr_t)istack_top;
	tss.iomap_base = offsetof(struct tss64, iomap);
	tss.iomap[sizeof(tss.iomap) - 1] = 0xFF;
	uint64_t base = (uintptr_t)&tss, limit = sizeof(tss) - 1;
	gdt[6] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89ull << 40) /* present, 64-bit TSS */
		 | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
	gdt[7] = base >> 32;

	for (unsigned v = 0; v < 48; v++)
		set_gate(v, isr_table[v], 0x8E); /* present, DPL 0, interrupt gate */
	set_gate(0x80, (uintptr_t)isr_user_return, 0xEE); /* DPL 3: reachable by int $0x80 at CPL 3 */
	set_gate(MSI_VECTOR, isr_extra_table[0], 0x8E);
	set_gate(LAPIC_SPURIOUS_VECTOR, isr_extra_table[1], 0x8E);

	struct desc_ptr gdtr = { sizeof(gdt) - 1, (uintptr_t)gdt };
	struct desc_ptr idtr = { sizeof(idt) - 1, (uintptr_t)idt };
	__asm__ volatile("lgdt %[gdtr]\n\t"
			 "mov %[ds], %%ds\n\t"
			 "mov %[ds], %%es\n\t"
			 "mov %[ds], %%ss\n\t"
			 "mov %[ds], %%fs\n\t"
			 "mov %[ds], %%gs\n\t"
			 "pushq %[cs]\n\t"
			 "lea 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\n\t"
			 "ltr %[tr]\n\t"
			 "lidt %[idtr]"
			 :
			 : [gdtr] "m"(gdtr), [idtr] "m"(idtr), [ds] "r"((uint16_t)SEL_KDATA), [cs] "i"(SEL_KCODE),
			   [tr] "r"((uint16_t)SEL_TSS)
			 : "rax", "memory");
	cpu_ready = 1;
}

/* ---- 8259 PIC pair ---- */

void pic_set_mask(uint16_t unmask)
{
	outb(PIC1_DATA, (uint8_t)~unmask);
	outb(PIC2_DATA, (uint8_t)(~unmask >> 8));
}

/* Call with interrupts disabled: ICW1 resets the mask until OCW1 is written. */
void pic_init(uint16_t unmask)
{
	outb(PIC1_CMD, 0x11); /* ICW1: init, cascade, edge, ICW4 follows */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, IRQ_VECTOR_BASE);     /* ICW2: vectors 0x20..0x27 */
	outb(PIC2_DATA, IRQ_VECTOR_BASE + 8); /* vectors 0x28..0x2F */
	outb(PIC1_DATA, 0x04); /* ICW3: slave on IRQ 2 */
	outb(PIC2_DATA, 0x02); /* ICW3: slave identity 2 */
	outb(PIC1_DATA, 0x01); /* ICW4: 8086 mode, normal EOI */
	outb(PIC2_DATA, 0x01);
	pic_set_mask(unmask);
}

uint16_t pic_read_irr(void)
{
	outb(PIC1_CMD, 0x0A); /* OCW3: read IRR */
	outb(PIC2_CMD, 0x0A);
	return (uint16_t)(inb(PIC1_CMD) | (inb(PIC2_CMD) << 8));
}

uint16_t pic_read_isr(void)
{
	outb(PIC1_CMD, 0x0B); /* OCW3: read ISR */
	outb(PIC2_CMD, 0x0B);
	return (uint16_t)(inb(PIC1_CMD) | (inb(PIC2_CMD) << 8));
}

static void pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2_CMD, PIC_EOI);
	outb(PIC1_CMD, PIC_EOI);
}

/* ---- 8254 PIT channel 0: a watchdog tick so hlt-based waits can time out ---- */

void pit_start_watchdog(void)
{
	const uint16_t divisor = 11932; /* 1193182 Hz / 11932 = 100 Hz */
	outb(0x43, 0x34);               /* channel 0, lo/hi byte, mode 2 (rate generator), binary */
	outb(0x40, (uint8_t)divisor);
	outb(0x40, (uint8_t)(divisor >> 8));
}

void pit_stop(void)
{
	outb(0x43, 0x30); /* channel 0, lo/hi byte, mode 0 (one-shot): a count of 1 ends the periodic timer */
	outb(0x40, 1);
	outb(0x40, 0);
}

/* ---- local APIC ---- */

#define MSR_APIC_BASE 0x1B
#define APIC_BASE_ENABLE (1u << 11)
#define LAPIC_SVR_ENABLE 0x100

void lapic_enable(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_APIC_BASE));
	if (!(lo & APIC_BASE_ENABLE))
		__asm__ volatile("wrmsr" : : "a"(lo | APIC_BASE_ENABLE), "d"(hi), "c"(MSR_APIC_BASE));
	mmio_w32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
}

/* ---- dispatcher, called from isr_common in start.S ---- */

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "?15",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?22", "?23", "?24", "?25", "?26", "?27", "#HV", "#VC", "#SX", "?31",
};

static void irq_dispatch(unsigned irq, struct isr_frame *f)
{
	switch (irq) {
	case 0:
		pit_ticks++;
		break;
	case UART_IRQ: {
		uint8_t iir = inb(UART_IIR); /* reading IIR acknowledges the THR-empty interrupt */
		uart_last_iir = iir;
		irq4_count++;
		if ((iir & 0x0F) == 0x04 || (iir & 0x0F) == 0x0C) {
			/* Received data (or character timeout): drain the FIFO into the ring while there is room;
			 * what does not fit stays in the UART, which holds the line until the ring drains. */
			while ((inb(UART_LSR) & UART_LSR_DR) && uart_rx_head - uart_rx_tail < UART_RX_RING)
				uart_rx_ring[uart_rx_head++ % UART_RX_RING] = inb(UART_RBR);
			if (uart_rx_head - uart_rx_tail >= UART_RX_RING)
				outb(UART_IER, 0); /* full: the echo loop re-enables it once it has consumed */
		} else {
			outb(UART_IER, 0);
		}
		break;
	}
	case TDEV_IRQ:
		outl(TDEV_PIO + TDEV_IRQLINE, 0); /* lower the level we raised */
		irq5_last_cs = f->cs;
		irq5_count++;
		break;
	case 7:
	case 15:
		/* Spurious if not in service: no EOI for the PIC that did not raise it. */
		if (!(pic_read_isr() & (1u << irq))) {
			if (irq == 15)
				outb(PIC1_CMD, PIC_EOI);
			return;
		}
		irq_other_count++;
		break;
	default:
		irq_other_count++;
		break;
	}
	pic_eoi(irq);
}

void isr_dispatch(struct isr_frame *f)
{
	uint64_t v = f->vector;
	if (v == 6 && (f->cs & 3) == 3 && ((const uint8_t *)f->rip)[0] == 0xCD &&
	    ((const uint8_t *)f->rip)[1] == 0x80) {
		/* "int $0x80" at CPL 3 raised #UD instead of going through its DPL 3 gate: some emulated
		 * environments (PVM) cannot deliver software interrupts. Treat it as the gate would. */
		user_int80_via_ud++;
		resume_kernel(f->rdi);
	}
	if (v < 32) {
		uint64_t cr2 = 0;
		if (v == 14)
			__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		con_printf("exception %lu (%s) at RIP=0x%lx error=0x%lx CPL=%lu RSP=0x%lx RFLAGS=0x%lx", v, exc_names[v],
			   f->rip, f->error, f->cs & 3, f->rsp, f->rflags);
		if (v == 14)
			con_printf(" CR2=0x%lx", cr2);
		con_putc('\n');
		vm_exit(3);
	}
	if (v >= IRQ_VECTOR_BASE && v < IRQ_VECTOR_BASE + 16) {
		irq_dispatch((unsigned)(v - IRQ_VECTOR_BASE), f);
		return;
	}
	if (v == MSI_VECTOR) {
		msi_count++;
		mmio_w32(LAPIC_BASE + LAPIC_EOI, 0);
		return;
	}
	if (v == LAPIC_SPURIOUS_VECTOR)
		return; /* a spurious LAPIC interrupt takes no EOI */
	con_printf("unexpected interrupt vector 0x%lx at RIP=0x%lx CPL=%lu\n", v, f->rip, f->cs & 3);
	vm_exit(3);
}
