/* micro guest: shared declarations. See docs/guest-abi.md for the contract with the VMM. */
#ifndef MICRO_H
#define MICRO_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- boot info (docs/guest-abi.md) ---- */
#define BOOT_INFO_MAGIC 0x4f524956u /* "VIRO" */

struct boot_info {
	uint32_t magic;
	uint32_t version;
	uint64_t mem_size;
	uint64_t cmdline_addr;
	uint32_t cmdline_len;
	uint32_t cpus;
};

/* ---- devices ---- */
#define COM1 0x3F8
#define UART_THR (COM1 + 0)
#define UART_IER (COM1 + 1)
#define UART_IIR (COM1 + 2) /* read */
#define UART_FCR (COM1 + 2) /* write */
#define UART_LCR (COM1 + 3)
#define UART_MCR (COM1 + 4)
#define UART_LSR (COM1 + 5)
#define UART_LSR_THRE 0x20
#define UART_IER_THRI 0x02
#define UART_IER_RDI 0x01
#define UART_LSR_DR 0x01
#define UART_RBR (COM1 + 0)
#define UART_IRQ 4

#define DEBUG_EXIT_PORT 0x501

#define TDEV_PIO 0x510
#define TDEV_MMIO 0xFEB00000UL
#define TDEV_SCRATCH 0x0
#define TDEV_COUNT 0x4
#define TDEV_MARKER 0x8
#define TDEV_IRQLINE 0xC
#define TDEV_IRQ 5

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIC_EOI 0x20
#define IRQ_VECTOR_BASE 0x20

/* ---- segment selectors (our GDT keeps the layout vireo sets up) ---- */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x20
#define SEL_UCODE 0x28
#define SEL_TSS 0x30

#define RFLAGS_IF (1u << 9)
#define RFLAGS_IOPL3 (3u << 12)
#define RFLAGS_FIXED 0x2u

/* ---- port and MMIO access ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void mmio_w8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_w16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_w32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_w64(uintptr_t a, uint64_t v) { *(volatile uint64_t *)a = v; }
static inline uint8_t mmio_r8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_r16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_r32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_r64(uintptr_t a) { return *(volatile uint64_t *)a; }

static inline void cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void sti(void) { __asm__ volatile("sti" : : : "memory"); }
/* sti's one-instruction interrupt shadow makes "sti; hlt" race free. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" : : : "memory"); }
static inline void cpu_pause(void) { __asm__ volatile("pause" : : : "memory"); }
static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}
static inline unsigned current_cpl(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

/* ---- console.c ---- */
void uart_init(void);
void con_putc(char c);
void con_puts(const char *s);
void con_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void vm_exit(unsigned code);

/* ---- lib.c ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
int str_eq(const char *a, const char *b);
int parse_u64(const char *s, uint64_t *out);

/* ---- cpu.c ---- */
struct isr_frame {
	uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss; /* pushed by the CPU */
};

void cpu_init(void);           /* GDT + TSS + IDT, once */
void pic_init(uint16_t unmask); /* remap to 0x20..0x2F; bit n of unmask = IRQ n enabled */
void pic_set_mask(uint16_t unmask);
uint16_t pic_read_irr(void);
uint16_t pic_read_isr(void);
void pit_start_watchdog(void); /* PIT channel 0 periodic, 100 Hz on IRQ 0 */
void pit_stop(void);
void isr_dispatch(struct isr_frame *f);

extern volatile uint32_t pit_ticks;
extern volatile uint32_t irq4_count, irq5_count, irq_other_count;
extern volatile uint8_t uart_last_iir;
/* Received bytes, filled by the IRQ 4 handler while IER.RDI is on (echo program). */
#define UART_RX_RING 256
extern volatile uint8_t uart_rx_ring[UART_RX_RING];
extern volatile uint32_t uart_rx_head, uart_rx_tail;
extern volatile uint64_t irq5_last_cs;
extern volatile uint32_t user_int80_via_ud;

/* Local APIC (xAPIC MMIO, handled in the kernel under KVM). MSI_VECTOR gets an IDT gate whose handler counts in
 * msi_count and EOIs the LAPIC; LAPIC_SPURIOUS_VECTOR gets one that does nothing (no EOI for spurious). */
#define LAPIC_BASE 0xFEE00000UL
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define MSI_VECTOR 0x50
#define LAPIC_SPURIOUS_VECTOR 0xFF
extern volatile uint32_t msi_count;
void lapic_enable(void); /* CPL 0: global enable in IA32_APIC_BASE if clear, software enable in the SVR */
/* Runs fn at CPL 3 with IOPL 3 (IF as asked) after cpu_init and with every 8259 line masked; returns fn's value. */
int run_user(int (*fn)(void), int interrupts);

/* ---- start.S ---- */
extern char istack_top[], ustack_top[];
/* Enter CPL 3 at fn (user stack ustack, given RFLAGS). Returns the value fn returns (or passes in RDI to int
 * 0x80) once the user code executes int $0x80. */
uint64_t enter_user(int (*fn)(void), void *ustack, uint64_t rflags);
extern const uint64_t isr_table[48];
extern const uint64_t isr_extra_table[2]; /* stubs for MSI_VECTOR and LAPIC_SPURIOUS_VECTOR */
void isr_user_return(void);
__attribute__((noreturn)) void resume_kernel(uint64_t value);

/* ---- programs ---- */
int prog_hello(int argc, char **argv);
int prog_exit42(int argc, char **argv);
int prog_pio(int argc, char **argv);
int prog_mmio(int argc, char **argv);
int prog_irq(int argc, char **argv);
int prog_user(int argc, char **argv);
int prog_bench_pio(int argc, char **argv);
int prog_bench_mmio(int argc, char **argv);
int prog_triple_fault(int argc, char **argv);
int prog_echo(int argc, char **argv);
int prog_pci(int argc, char **argv);
int prog_virtio_blk_rw(int argc, char **argv);
int prog_virtio_blk_id(int argc, char **argv);
int prog_virtio_msix(int argc, char **argv);
int prog_bench_virtio_blk(int argc, char **argv);
int prog_virtio_blk_hammer(int argc, char **argv);
int prog_virtio_net_test(int argc, char **argv);
int prog_bench_virtio_net(int argc, char **argv);
int prog_virtio_console(int argc, char **argv);
int prog_e1000_test(int argc, char **argv);
int prog_e1000_irq(int argc, char **argv);
int prog_bench_e1000(int argc, char **argv);
int prog_count(int argc, char **argv);
int prog_dirty(int argc, char **argv);

/* ---- pci.c: configuration mechanism #1 on bus 0 (ports 0xCF8 address, 0xCFC data) ---- */
#define PCI_BDF(bus, dev, fn) (((unsigned)(bus) << 8) | ((unsigned)(dev) << 3) | (unsigned)(fn))
#define PCI_VENDOR 0x00
#define PCI_DEVICE 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_CLASS_REV 0x08
#define PCI_HEADER_TYPE 0x0E
#define PCI_BAR0 0x10
#define PCI_CAP_PTR 0x34
#define PCI_CMD_IO 0x0001
#define PCI_CMD_MEM 0x0002
#define PCI_CMD_BUS_MASTER 0x0004
#define PCI_CMD_INTX_DISABLE 0x0400
#define PCI_STATUS_CAP_LIST 0x0010
#define PCI_CAP_ID_VNDR 0x09
#define PCI_CAP_ID_MSIX 0x11

uint32_t pci_read32(unsigned bdf, unsigned off);
uint16_t pci_read16(unsigned bdf, unsigned off);
uint8_t pci_read8(unsigned bdf, unsigned off);
void pci_write32(unsigned bdf, unsigned off, uint32_t v);
void pci_write16(unsigned bdf, unsigned off, uint16_t v);
/* Next capability after the one at prev (0: the first); 0 at the end of the list. */
unsigned pci_cap_next(unsigned bdf, unsigned prev);
unsigned pci_find_cap(unsigned bdf, uint8_t id);
/* Base address BAR n decodes (both halves of a 64-bit pair); *is_io set for I/O BARs. 0 if unassigned. */
uint64_t pci_bar_base(unsigned bdf, unsigned bar, int *is_io);
/* First function on bus 0 with this vendor and a device ID in [dev_lo, dev_hi]; -1 if none. */
int pci_find(uint16_t vendor, uint16_t dev_lo, uint16_t dev_hi);
/* MSI-X: enables it on the function and points table entry `entry` at (addr, data), unmasked. 0 ok. */
int pci_msix_route(unsigned bdf, unsigned entry, uint64_t addr, uint32_t data);

int pio_check(void);  /* 0 ok, 1 mismatch (already printed); safe at CPL 3 with IOPL 3 */
int mmio_check(void);

#endif
