/* micro guest: PCI configuration access (mechanism #1), BARs, capabilities, MSI-X, and the pci program.
 *
 * Configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): a dword write to 0xCF8 of
 * 0x80000000 | bus << 16 | device << 11 | function << 8 | (register & 0xFC) selects a dword of configuration
 * space; 0xCFC..0xCFF then read or write its bytes. Only bus 0 is scanned (vireo has no bridges). */
#include "micro.h"
#include "virtio.h"

#define PCI_ADDR_PORT 0xCF8
#define PCI_DATA_PORT 0xCFC

static void pci_select(unsigned bdf, unsigned off)
{
	outl(PCI_ADDR_PORT, 0x80000000u | (bdf << 8) | (off & 0xFC));
}

uint32_t pci_read32(unsigned bdf, unsigned off)
{
	pci_select(bdf, off);
	return inl(PCI_DATA_PORT);
}

uint16_t pci_read16(unsigned bdf, unsigned off)
{
	pci_select(bdf, off);
	return inw(PCI_DATA_PORT + (off & 2));
}

uint8_t pci_read8(unsigned bdf, unsigned off)
{
	pci_select(bdf, off);
	return inb(PCI_DATA_PORT + (off & 3));
}

void pci_write32(unsigned bdf, unsigned off, uint32_t v)
{
	pci_select(bdf, off);
	outl(PCI_DATA_PORT, v);
}

void pci_write16(unsigned bdf, unsigned off, uint16_t v)
{
	pci_select(bdf, off);
	outw(PCI_DATA_PORT + (off & 2), v);
}

/* A function is present when its vendor ID reads as neither all ones (no device answered) nor 0. */
static int pci_present(unsigned bdf)
{
	uint16_t v = pci_read16(bdf, PCI_VENDOR);
	return v != 0xFFFF && v != 0;
}

/* The capability list (PCI 3.0, 6.7): STATUS bit 4 says there is one; 0x34 points at the first entry; each
 * entry is [id][next]. Pointers are dword aligned (the low two bits are reserved). Callers bound the walk. */
unsigned pci_cap_next(unsigned bdf, unsigned prev)
{
	if (prev == 0) {
		if (!(pci_read16(bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
			return 0;
		return pci_read8(bdf, PCI_CAP_PTR) & 0xFC;
	}
	return pci_read8(bdf, prev + 1) & 0xFC;
}

unsigned pci_find_cap(unsigned bdf, uint8_t id)
{
	unsigned cap = 0;
	for (unsigned n = 0; n < 48; n++) { /* at most 48 capabilities fit in 0x40..0xFF */
		cap = pci_cap_next(bdf, cap);
		if (cap < 0x40)
			return 0;
		if (pci_read8(bdf, cap) == id)
			return cap;
	}
	return 0;
}

/* BAR layout (PCI 3.0, 6.2.5.1): bit 0 = I/O; for memory, bits 2:1 = type (0 = 32-bit, 2 = 64-bit, the next BAR
 * holds the upper half) and bit 3 = prefetchable. */
#define BAR_IO 0x1u
#define BAR_TYPE_64 0x4u
#define BAR_PREFETCH 0x8u

uint64_t pci_bar_base(unsigned bdf, unsigned bar, int *is_io)
{
	uint32_t lo = pci_read32(bdf, PCI_BAR0 + 4 * bar);
	if (lo & BAR_IO) {
		*is_io = 1;
		return lo & ~0x3u;
	}
	*is_io = 0;
	uint64_t base = lo & ~0xFu;
	if ((lo & 0x6) == BAR_TYPE_64 && bar < 5)
		base |= (uint64_t)pci_read32(bdf, PCI_BAR0 + 4 * (bar + 1)) << 32;
	return base;
}

int pci_find(uint16_t vendor, uint16_t dev_lo, uint16_t dev_hi)
{
	for (unsigned dev = 0; dev < 32; dev++) {
		unsigned nfn = 1;
		for (unsigned fn = 0; fn < nfn; fn++) {
			unsigned bdf = PCI_BDF(0, dev, fn);
			if (!pci_present(bdf))
				continue;
			if (fn == 0 && (pci_read8(bdf, PCI_HEADER_TYPE) & 0x80))
				nfn = 8; /* multi-function device */
			uint32_t id = pci_read32(bdf, PCI_VENDOR);
			uint16_t d = (uint16_t)(id >> 16);
			if ((id & 0xFFFF) == vendor && d >= dev_lo && d <= dev_hi)
				return (int)bdf;
		}
	}
	return -1;
}

/* ---- MSI-X (PCI 3.0, 6.8.2) ----
 * Capability: +2 Message Control (bits 10:0 table size - 1, bit 14 function mask, bit 15 enable), +4 table
 * offset | BIR (BAR in bits 2:0, offset the rest), +8 the same for the PBA. A table entry is 16 bytes: message
 * address low, high, message data, vector control (bit 0 = masked), accessed as dwords. */
#define MSIX_CTRL 2
#define MSIX_TABLE 4
#define MSIX_PBA 8
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_FMASK 0x4000

int pci_msix_route(unsigned bdf, unsigned entry, uint64_t addr, uint32_t data)
{
	unsigned cap = pci_find_cap(bdf, PCI_CAP_ID_MSIX);
	if (!cap) {
		con_puts("msix: the function has no MSI-X capability\n");
		return 1;
	}
	uint16_t ctrl = pci_read16(bdf, cap + MSIX_CTRL);
	unsigned size = (ctrl & 0x7FFu) + 1;
	if (entry >= size) {
		con_printf("msix: entry %u outside the table (%u entries)\n", entry, size);
		return 1;
	}
	uint32_t tbl = pci_read32(bdf, cap + MSIX_TABLE);
	int is_io;
	uint64_t base = pci_bar_base(bdf, tbl & 7, &is_io);
	if (is_io || base == 0) {
		con_printf("msix: table BAR %u is %s\n", tbl & 7, is_io ? "an I/O BAR" : "unassigned");
		return 1;
	}
	uintptr_t e = (uintptr_t)(base + (tbl & ~7u) + 16 * entry);
	/* Enable with the whole function masked while the entry is written, so no half-written message fires. */
	pci_write16(bdf, cap + MSIX_CTRL, (uint16_t)(ctrl | MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK));
	mmio_w32(e + 0, (uint32_t)addr);
	mmio_w32(e + 4, (uint32_t)(addr >> 32));
	mmio_w32(e + 8, data);
	mmio_w32(e + 12, 0); /* vector control: unmasked */
	pci_write16(bdf, cap + MSIX_CTRL, (uint16_t)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK));
	return 0;
}

/* ---- the pci program ---- */

/* BAR sizing (PCI 3.0, 6.2.5.1): write all ones, read back: the bits that stay 0 are the size. Decode is turned
 * off in COMMAND meanwhile so the BAR never answers at the all-ones address; every register is restored. */
static void print_bars(unsigned bdf, unsigned nbars)
{
	uint16_t cmd = pci_read16(bdf, PCI_COMMAND);
	pci_write16(bdf, PCI_COMMAND, (uint16_t)(cmd & ~(PCI_CMD_IO | PCI_CMD_MEM)));
	for (unsigned bar = 0; bar < nbars; bar++) {
		unsigned off = PCI_BAR0 + 4 * bar;
		uint32_t lo = pci_read32(bdf, off);
		int is64 = !(lo & BAR_IO) && (lo & 0x6) == BAR_TYPE_64 && bar + 1 < nbars;
		uint32_t hi = is64 ? pci_read32(bdf, off + 4) : 0;
		pci_write32(bdf, off, 0xFFFFFFFFu);
		uint32_t mlo = pci_read32(bdf, off);
		uint32_t mhi = 0xFFFFFFFFu;
		if (is64) {
			pci_write32(bdf, off + 4, 0xFFFFFFFFu);
			mhi = pci_read32(bdf, off + 4);
			pci_write32(bdf, off + 4, hi);
		}
		pci_write32(bdf, off, lo);

		if (lo & BAR_IO) {
			uint32_t mask = mlo & ~0x3u;
			if (mask && !(mask & 0xFFFF0000u))
				mask |= 0xFFFF0000u; /* a 16-bit I/O decoder leaves the upper half 0 */
			if (mask)
				con_printf("  BAR%u io 0x%x size 0x%x\n", bar, lo & ~0x3u, ~mask + 1);
		} else {
			uint64_t mask = ((uint64_t)mhi << 32) | (mlo & ~0xFu);
			if (mlo & ~0xFu)
				con_printf("  BAR%u %s 0x%lx size 0x%lx%s\n", bar, is64 ? "mem64" : "mem32",
					   ((uint64_t)hi << 32) | (lo & ~0xFu), ~mask + 1,
					   (lo & BAR_PREFETCH) ? " prefetchable" : "");
		}
		if (is64)
			bar++;
	}
	pci_write16(bdf, PCI_COMMAND, cmd);
}

static void print_msix(unsigned bdf, unsigned cap)
{
	uint16_t ctrl = pci_read16(bdf, cap + MSIX_CTRL);
	uint32_t tbl = pci_read32(bdf, cap + MSIX_TABLE), pba = pci_read32(bdf, cap + MSIX_PBA);
	con_printf("  msix table-size %u table bar %u offset 0x%x pba bar %u offset 0x%x\n", (ctrl & 0x7FFu) + 1,
		   tbl & 7, tbl & ~7u, pba & 7, pba & ~7u);
}

static int pci_main(void)
{
	unsigned count = 0;
	for (unsigned dev = 0; dev < 32; dev++) {
		unsigned nfn = 1;
		for (unsigned fn = 0; fn < nfn; fn++) {
			unsigned bdf = PCI_BDF(0, dev, fn);
			if (!pci_present(bdf))
				continue;
			uint8_t htype = pci_read8(bdf, PCI_HEADER_TYPE);
			if (fn == 0 && (htype & 0x80))
				nfn = 8;
			uint32_t id = pci_read32(bdf, PCI_VENDOR);
			uint32_t cls = pci_read32(bdf, PCI_CLASS_REV) >> 8;
			con_printf("%02x:%02x.%x %04x:%04x class %06x\n", 0u, dev, fn, id & 0xFFFF, id >> 16, cls);
			count++;
			/* Header type 0 has six BARs, type 1 (PCI-to-PCI bridge) two, type 2 none we read. */
			unsigned ht = htype & 0x7F;
			print_bars(bdf, ht == 0 ? 6 : ht == 1 ? 2 : 0);
			unsigned msix = pci_find_cap(bdf, PCI_CAP_ID_MSIX);
			if (msix)
				print_msix(bdf, msix);
			uint16_t d = (uint16_t)(id >> 16);
			if ((id & 0xFFFF) == VIRTIO_PCI_VENDOR && d >= VIRTIO_PCI_DEVICE_MIN && d <= VIRTIO_PCI_DEVICE_MAX)
				virtio_pci_print_caps(bdf);
		}
	}
	con_printf("pci: %u functions\n", count);
	return 0;
}

int prog_pci(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return run_user(pci_main, 0);
}
