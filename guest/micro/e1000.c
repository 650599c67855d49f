/* micro guest: a driver for the Intel 82540EM ("e1000") and the programs e1000-test, e1000-irq and bench-e1000.
 *
 * Written from Intel's "PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual" (8254x SDM;
 * section numbers in the comments) and, for e1000-irq, the 82093AA I/O APIC datasheet. Register offsets and bits
 * are in e1000.h.
 *
 * The data path is polled at CPL 3 (IOPL 3, IF clear) like the virtio drivers: BAR0 and the rings are identity
 * mapped with the user bit, and configuration space goes through ports 0xCF8/0xCFC. e1000-irq runs at CPL 0:
 * interrupts through the I/O APIC to the local APIC.
 *
 * Rings: 256 legacy transmit descriptors and 256 receive descriptors, each with a static 2048-byte buffer
 * (1 MiB in all). RCTL.SECRC is set, so received frames come without their 4 FCS bytes and the descriptor length
 * is the Ethernet frame length from the destination MAC on, as the test protocol counts it. Transmit descriptors
 * ask for the FCS (IFCS) and a status write-back (RS) on every frame; a descriptor is reclaimed once the device
 * set DD.
 *
 * Network test protocol (guest/micro/README.md, shared with virtio-net and test/helpers/netpeer.py): EtherType
 * 0x88B5; after the 14-byte Ethernet header "VIRO", u32 LE seq, u32 LE frame length (no FCS), then the byte at
 * frame offset k (26 <= k < length) is (seq * 7 + k) & 0xff. */
#include "e1000.h"
#include "netproto.h"
#include "wait.h"

#define RING 256 /* descriptors per ring: 4 KiB, a multiple of 128 bytes as TDLEN/RDLEN require */
#define RING_MASK (RING - 1)
#define BUF_LEN 2048 /* RCTL.BSIZE 2048: a frame of up to 1514 bytes (LPE off) fits in one buffer */

#define IRQ_WAIT_TICKS 200 /* e1000-irq: 2 s of 100 Hz PIT watchdog ticks */
#define E1000_IRQ_VECTOR 0x51

static uintptr_t regs; /* BAR0 */
static unsigned nic_bdf;
static uint8_t mac[ETH_ALEN];

static volatile struct e1000_tx_desc txd[RING] __attribute__((aligned(4096)));
static volatile struct e1000_rx_desc rxd[RING] __attribute__((aligned(4096)));
static uint8_t tx_buf[RING][BUF_LEN] __attribute__((aligned(4096)));
static uint8_t rx_buf[RING][BUF_LEN] __attribute__((aligned(4096)));
/* Transmit: descriptors [tx_clean, tx_tdt) belong to the device, [tx_tdt, tx_tail) are filled but not yet
 * handed over, the rest are free. At most RING - 1 are in use: TDH == TDT means an empty ring (3.3.4). */
static unsigned tx_tail, tx_tdt, tx_clean;
static unsigned rx_next; /* next receive descriptor the device will fill */
static int rx_in_long_frame; /* inside a frame that did not fit one buffer (cannot happen with LPE off) */


static inline uint32_t rd(unsigned off) { return mmio_r32(regs + off); }
static inline void wr(unsigned off, uint32_t v) { mmio_w32(regs + off, v); }
/* Descriptor and buffer stores before the tail register write that hands them over. x86 keeps stores in order,
 * so this is mostly a compiler barrier. */
static inline void wmb(void) { __asm__ volatile("sfence" : : : "memory"); }
/* After seeing DD, before reading the rest of the descriptor and the buffer: x86 keeps loads in order. */
static inline void rmb(void) { __asm__ volatile("" : : : "memory"); }


/* ---- driver ---- */

static void dump_state(const char *what)
{
	con_printf("e1000: %s\n", what);
	con_printf("e1000: CTRL=0x%08x STATUS=0x%08x IMS=0x%08x TCTL=0x%08x RCTL=0x%08x\n", rd(E1000_CTRL),
		   rd(E1000_STATUS), rd(E1000_IMS), rd(E1000_TCTL), rd(E1000_RCTL));
	con_printf("e1000: TDH=%u TDT=%u (driver: oldest in flight %u, handed over up to %u, filled up to %u) RDH=%u "
		   "RDT=%u (driver: next %u)\n",
		   rd(E1000_TDH), rd(E1000_TDT), tx_clean, tx_tdt, tx_tail, rd(E1000_RDH), rd(E1000_RDT), rx_next);
}

/* Polls until (register & mask) == want, for at most us microseconds. 1 if it got there. */
static int poll_reg(unsigned off, uint32_t mask, uint32_t want, uint64_t us)
{
	struct bounded_wait w;
	wait_start_us(&w, us);
	for (;;) {
		if ((rd(off) & mask) == want)
			return 1;
		if (wait_expired(&w))
			return 0;
		cpu_pause();
	}
}

/* EEPROM read through EERD (5.3.1, 13.4.4): write the word address with START, poll DONE, take DATA. */
static int eeprom_read(unsigned addr, uint16_t *out)
{
	wr(E1000_EERD, (addr << EERD_ADDR_SHIFT) | EERD_START);
	if (!poll_reg(E1000_EERD, EERD_DONE, EERD_DONE, 100000)) {
		con_printf("e1000: EEPROM read of word 0x%x did not complete (EERD=0x%08x)\n", addr, rd(E1000_EERD));
		return 1;
	}
	*out = (uint16_t)(rd(E1000_EERD) >> EERD_DATA_SHIFT);
	return 0;
}

/* Transmit ring (14.5): TDBAL/TDBAH, TDLEN, TDH = TDT = 0, TIPG, then TCTL with EN, PSP and the recommended
 * collision threshold and full-duplex collision distance. */
static void tx_setup(void)
{
	for (unsigned i = 0; i < RING; i++) {
		txd[i].addr = (uintptr_t)tx_buf[i];
		txd[i].length = 0;
		txd[i].cso = 0;
		txd[i].cmd = 0;
		txd[i].status = 0;
		txd[i].css = 0;
		txd[i].special = 0;
	}
	tx_tail = tx_tdt = tx_clean = 0;
	wr(E1000_TDBAL, (uint32_t)(uintptr_t)txd);
	wr(E1000_TDBAH, (uint32_t)((uint64_t)(uintptr_t)txd >> 32));
	wr(E1000_TDLEN, sizeof(txd));
	wr(E1000_TDH, 0);
	wr(E1000_TDT, 0);
	wr(E1000_TIDV, 0);
	wr(E1000_TIPG, TIPG_IPGT | (TIPG_IPGR1 << 10) | (TIPG_IPGR2 << 20));
	wr(E1000_TCTL, TCTL_EN | TCTL_PSP | (TCTL_CT << TCTL_CT_SHIFT) | (TCTL_COLD_FD << TCTL_COLD_SHIFT));
}

/* Receive ring (14.4): every descriptor gets its buffer; RDH = 0 and RDT = RING - 1, so the device owns all but
 * one (RDH == RDT would mean it owns none); no receive delay; RCTL last: EN, broadcast accept, 2048-byte
 * buffers, strip the FCS. Unicast to our address passes the RAL0/RAH0 filter, multicast is not accepted. */
static void rx_setup(void)
{
	for (unsigned i = 0; i < RING; i++) {
		rxd[i].addr = (uintptr_t)rx_buf[i];
		rxd[i].length = 0;
		rxd[i].csum = 0;
		rxd[i].status = 0;
		rxd[i].errors = 0;
		rxd[i].special = 0;
	}
	rx_next = 0;
	rx_in_long_frame = 0;
	wr(E1000_RDBAL, (uint32_t)(uintptr_t)rxd);
	wr(E1000_RDBAH, (uint32_t)((uint64_t)(uintptr_t)rxd >> 32));
	wr(E1000_RDLEN, sizeof(rxd));
	wr(E1000_RDTR, 0);
	wr(E1000_RDH, 0);
	wmb();
	wr(E1000_RDT, RING - 1);
	wr(E1000_RCTL, RCTL_EN | RCTL_BAM | RCTL_BSIZE_2048 | RCTL_SECRC);
}

/* Finds the 82540EM, resets it and brings it up with both rings (the initialization of SDM section 14).
 * intx: leave PCI INTx enabled (e1000-irq); the polled programs set COMMAND.INTx Disable. verbose: print the MAC
 * and the link. 0 ok; on failure prints why and returns 1. */
static int nic_open(int intx, int verbose)
{
	int bdf = pci_find(E1000_VENDOR, E1000_DEV_82540EM, E1000_DEV_82540EM);
	if (bdf < 0) {
		con_puts("e1000: no 82540EM (8086:100e) on PCI bus 0 (run vireo with --net tap=NAME,model=e1000)\n");
		return 1;
	}
	nic_bdf = (unsigned)bdf;
	int is_io;
	uint64_t bar0 = pci_bar_base(nic_bdf, 0, &is_io);
	if (is_io || bar0 == 0) {
		con_printf("e1000: BAR0 is %s\n", is_io ? "an I/O BAR, expected the register memory" : "unassigned");
		return 1;
	}
	regs = (uintptr_t)bar0;
	/* vireo assigned the BARs and turned decoding on; the device needs Bus Master for its DMA. */
	uint16_t cmd = pci_read16(nic_bdf, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_BUS_MASTER;
	if (intx)
		cmd &= (uint16_t)~PCI_CMD_INTX_DISABLE;
	else
		cmd |= PCI_CMD_INTX_DISABLE;
	pci_write16(nic_bdf, PCI_COMMAND, cmd);
	tsc_calibrate();

	/* Global reset (13.4.1): interrupts masked first; RST clears itself. The manual asks for about 1 us before
	 * the next register access; the EEPROM is reloaded after the reset, so the part gets a few ms more. */
	wr(E1000_IMC, 0xFFFFFFFFu);
	wr(E1000_CTRL, rd(E1000_CTRL) | CTRL_RST);
	delay_us(10);
	if (!poll_reg(E1000_CTRL, CTRL_RST, 0, 1000000)) {
		con_printf("e1000: CTRL.RST did not clear (CTRL=0x%08x)\n", rd(E1000_CTRL));
		return 1;
	}
	delay_us(5000);
	wr(E1000_IMC, 0xFFFFFFFFu);
	(void)rd(E1000_ICR); /* read to clear */

	/* EEPROM: words 0x00-0x3F must sum to 0xBABA (5.6.35); the MAC is words 0-2, low byte first (5.6.1). */
	uint16_t sum = 0, w[EEPROM_MAC_WORDS];
	for (unsigned i = 0; i < EEPROM_CSUM_WORDS; i++) {
		uint16_t v;
		if (eeprom_read(i, &v))
			return 1;
		if (i < EEPROM_MAC_WORDS)
			w[i] = v;
		sum = (uint16_t)(sum + v);
	}
	if (sum != EEPROM_CSUM_SUM) {
		con_printf("e1000: EEPROM checksum: words 0x00-0x3f sum to 0x%04x, expected 0x%04x\n", sum,
			   EEPROM_CSUM_SUM);
		return 1;
	}
	for (unsigned i = 0; i < EEPROM_MAC_WORDS; i++) {
		mac[2 * i] = (uint8_t)w[i];
		mac[2 * i + 1] = (uint8_t)(w[i] >> 8);
	}
	if (verbose)
		con_printf("e1000: mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);

	/* Receive address filter (13.5.2-3): our address in entry 0 with Address Valid, the other 15 invalid; the
	 * multicast table cleared (14.4). */
	wr(E1000_RAL(0), mac[0] | (mac[1] << 8) | (mac[2] << 16) | ((uint32_t)mac[3] << 24));
	wr(E1000_RAH(0), mac[4] | (mac[5] << 8) | RAH_AV);
	for (unsigned i = 1; i < E1000_RA_ENTRIES; i++) {
		wr(E1000_RAH(i), 0);
		wr(E1000_RAL(i), 0);
	}
	for (unsigned i = 0; i < E1000_MTA_ENTRIES; i++)
		wr(E1000_MTA + 4 * i, 0);

	/* General configuration (14.3), internal copper PHY: autonegotiate speed and duplex (ASDE, no forcing), set
	 * link up; no flow control (its registers zero), no VLAN mode, no link or PHY reset held. */
	wr(E1000_FCAL, 0);
	wr(E1000_FCAH, 0);
	wr(E1000_FCT, 0);
	wr(E1000_FCTTV, 0);
	uint32_t ctrl = rd(E1000_CTRL);
	ctrl &= ~(CTRL_LRST | CTRL_ILOS | CTRL_FRCSPD | CTRL_FRCDPLX | CTRL_RFCE | CTRL_TFCE | CTRL_VME | CTRL_PHY_RST);
	wr(E1000_CTRL, ctrl | CTRL_SLU | CTRL_ASDE);
	if (!poll_reg(E1000_STATUS, STATUS_LU, STATUS_LU, WAIT_SECONDS * 1000000ull)) {
		con_printf("e1000: no link after %u s (STATUS=0x%08x)\n", WAIT_SECONDS, rd(E1000_STATUS));
		return 1;
	}
	if (verbose)
		con_puts("e1000: link up\n");

	tx_setup();
	rx_setup();
	return 0;
}

/* ---- transmit ---- */

static unsigned tx_nfree(void) { return RING - 1 - ((tx_tail - tx_clean) & RING_MASK); }

/* Takes back the descriptors the device has written back (DD). Number taken, or -1 on a transmit error. */
static int tx_reclaim(void)
{
	int n = 0;
	while (tx_clean != tx_tdt) {
		uint8_t st = txd[tx_clean].status;
		if (!(st & TXD_STAT_DD))
			break;
		if (st & (TXD_STAT_EC | TXD_STAT_LC)) {
			con_printf("e1000: transmit descriptor %u completed with status 0x%x (%s)\n", tx_clean, st,
				   st & TXD_STAT_EC ? "excess collisions" : "late collision");
			return -1;
		}
		txd[tx_clean].status = 0;
		tx_clean = (tx_clean + 1) & RING_MASK;
		n++;
	}
	return n;
}

/* Fills the next free descriptor for a frame of len bytes already in tx_buf[tx_tail]: one descriptor, end of
 * packet, FCS inserted, status reported. Not handed to the device until tx_flush. */
static void tx_queue(unsigned len)
{
	volatile struct e1000_tx_desc *d = &txd[tx_tail];
	d->addr = (uintptr_t)tx_buf[tx_tail];
	d->length = (uint16_t)len;
	d->cso = 0;
	d->cmd = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS; /* IDE clear: no transmit interrupt delay */
	d->status = 0;
	d->css = 0;
	d->special = 0;
	tx_tail = (tx_tail + 1) & RING_MASK;
}

/* Hands the filled descriptors to the device: one TDT write (3.3.4). */
static void tx_flush(void)
{
	if (tx_tdt == tx_tail)
		return;
	wmb();
	wr(E1000_TDT, tx_tail);
	tx_tdt = tx_tail;
}

/* Waits (bounded) until every filled descriptor has been handed over and written back. */
static int tx_drain(const char *what)
{
	struct bounded_wait w;
	wait_start(&w);
	tx_flush();
	while (tx_clean != tx_tdt) {
		int r = tx_reclaim();
		if (r < 0)
			return 1;
		if (r) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			con_printf("e1000: no progress for %u s waiting for %s to be sent\n", WAIT_SECONDS, what);
			dump_state("transmit stalled");
			return 1;
		} else {
			cpu_pause();
		}
	}
	return 0;
}

/* Phase 1 (and the benchmark): frames seq 0 .. count-1, broadcast. The ring is kept as full as it can be: every
 * free descriptor is filled, then all of them are handed over with one TDT write; written-back ones are
 * reclaimed as they come. Returns once the device has written back all of them. */
/* Frames handed over per TDT write at most (bench-e1000's BURST); 0: every free descriptor. */
static uint64_t tx_burst;

static int send_frames(uint64_t count, uint32_t size)
{
	uint64_t seq = 0;
	struct bounded_wait w;
	wait_start(&w);
	while (seq < count) {
		int progress = tx_reclaim();
		if (progress < 0)
			return 1;
		uint64_t burst = 0;
		while (seq < count && tx_nfree() && (tx_burst == 0 || burst < tx_burst)) {
			burst++;
			proto_build_frame(tx_buf[tx_tail], mac, (uint32_t)seq, size);
			tx_queue(size);
			seq++;
			progress = 1;
		}
		tx_flush();
		if (progress) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			con_printf("e1000: no progress for %u s sending frame %lu of %lu\n", WAIT_SECONDS, seq, count);
			dump_state("transmit stalled");
			return 1;
		} else {
			cpu_pause();
		}
	}
	return tx_drain("the frames");
}

/* ---- phase 2: receive and echo ---- */

static uint64_t expected, received, echoed, ignored;

/* Queues the echo of frame f (len bytes): dst = its src, src = our MAC, the rest unchanged. Waits (bounded) for
 * a free transmit descriptor if the ring is full. */
static int echo_frame(const uint8_t *f, uint32_t len)
{
	if (!tx_nfree()) {
		struct bounded_wait w;
		wait_start(&w);
		tx_flush();
		for (;;) {
			int r = tx_reclaim();
			if (r < 0)
				return 1;
			if (r)
				break;
			if (wait_expired(&w)) {
				con_printf("e1000: no progress for %u s waiting for a transmit descriptor to echo\n",
					   WAIT_SECONDS);
				dump_state("transmit stalled");
				return 1;
			}
			cpu_pause();
		}
	}
	proto_echo(tx_buf[tx_tail], f, len, mac);
	tx_queue(len);
	echoed++;
	return 0;
}

/* Handles the receive descriptor at rx_next, which the device has written back. 0 ok, 1 failed (printed). */
static int rx_handle(void)
{
	volatile struct e1000_rx_desc *d = &rxd[rx_next];
	uint8_t st = d->status, err = d->errors;
	uint32_t len = d->length;
	const uint8_t *f = rx_buf[rx_next];
	/* A frame spread over several descriptors (EOP on its last) is larger than 2048 bytes: not ours. */
	if (!(st & RXD_STAT_EOP)) {
		if (!rx_in_long_frame)
			ignored++;
		rx_in_long_frame = 1;
		return 0;
	}
	if (rx_in_long_frame) {
		rx_in_long_frame = 0;
		return 0;
	}
	if (!proto_is_ours(f, len)) {
		ignored++;
		return 0;
	}
	if (len > BUF_LEN) {
		con_printf("e1000: receive descriptor %u: length %u exceeds the %u-byte buffer\n", rx_next, len, BUF_LEN);
		return 1;
	}
	if (err & RXD_ERR_FRAME) {
		con_printf("e1000: invalid frame (expected seq %lu): receive errors 0x%02x\n", expected, err);
		return 1;
	}
	uint32_t bad_off;
	const char *why = proto_check_frame(f, len, (uint32_t)expected, &bad_off);
	if (*why) {
		proto_report("e1000", f, len, expected, why, bad_off);
		return 1;
	}
	received++;
	expected++;
	return echo_frame(f, len);
}

/* Phase 2: until count valid frames have arrived, in order, each echoed as it comes: every receive descriptor
 * the device has written back is handled, the echoes are handed over with one TDT write and the descriptors
 * given back with one RDT write. RDT stays one behind the next descriptor to look at (see rx_setup). */
static int echo_frames(uint64_t count)
{
	struct bounded_wait w;
	wait_start(&w);
	while (received < count) {
		int progress = tx_reclaim();
		if (progress < 0)
			return 1;
		unsigned taken = 0;
		while (received < count && (rxd[rx_next].status & RXD_STAT_DD)) {
			rmb();
			int bad = rx_handle();
			rxd[rx_next].status = 0;
			rx_next = (rx_next + 1) & RING_MASK;
			taken++;
			if (bad) {
				(void)tx_drain("the echoes before the invalid frame");
				return 1;
			}
		}
		if (taken) {
			tx_flush();
			wmb();
			wr(E1000_RDT, (rx_next - 1) & RING_MASK);
			progress = 1;
		}
		if (progress) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			con_printf("e1000: no progress for %u s receiving: %lu of %lu frames, expecting seq %lu, %lu ignored\n",
				   WAIT_SECONDS, received, count, expected, ignored);
			dump_state("receive stalled");
			return 1;
		} else {
			cpu_pause();
		}
	}
	/* The echoes must leave before the program ends (the VMM stops with the guest). */
	return tx_drain("the echoes");
}

/* ---- e1000-test [N] [SIZE] and bench-e1000 [N] [SIZE] ---- */

static uint64_t arg_count, arg_size;

static int parse_args(int argc, char **argv, uint64_t def_count, uint64_t def_size)
{
	arg_count = def_count;
	arg_size = def_size;
	if (argc > 3) {
		con_printf("usage: %s [N] [SIZE]\n", argv[0]);
		return 2;
	}
	if (argc > 1 && (!parse_u64(argv[1], &arg_count) || arg_count > 0xFFFFFFFFull)) {
		con_printf("%s: bad frame count '%s' (0 to 4294967295)\n", argv[0], argv[1]);
		return 2;
	}
	if (argc > 2 && (!parse_u64(argv[2], &arg_size) || arg_size < ETH_FRAME_MIN || arg_size > ETH_FRAME_MAX)) {
		con_printf("%s: bad frame size '%s' (%u to %u bytes, without FCS)\n", argv[0], argv[2], ETH_FRAME_MIN,
			   ETH_FRAME_MAX);
		return 2;
	}
	return 0;
}

static int test_main(void) /* CPL 3 */
{
	if (nic_open(0, 1))
		return 1;
	if (send_frames(arg_count, (uint32_t)arg_size))
		return 1;
	con_printf("e1000: sent %lu frames\n", arg_count);
	int bad = echo_frames(arg_count);
	con_printf("e1000: received %lu frames, echoed %lu, ignored %lu\n", received, echoed, ignored);
	if (bad) {
		con_puts("e1000-test failed\n");
		return 1;
	}
	con_puts("e1000-test ok\n");
	return 0;
}

int prog_e1000_test(int argc, char **argv)
{
	int r = parse_args(argc, argv, 10000, 1000);
	return r ? r : run_user(test_main, 0);
}

static int bench_main(void) /* CPL 3, IF clear */
{
	if (nic_open(0, 0))
		return 1;
	outl(TDEV_PIO + TDEV_MARKER, 1);
	if (send_frames(arg_count, (uint32_t)arg_size))
		return 1;
	outl(TDEV_PIO + TDEV_MARKER, 2);
	vm_exit(0);
}

/* bench-e1000 [N] [SIZE] [BURST] */
int prog_bench_e1000(int argc, char **argv)
{
	tx_burst = 0;
	if (argc > 3 && !parse_u64(argv[3], &tx_burst)) {
		con_printf("%s: bad burst '%s' (frames per TDT write, 0 for all free descriptors)\n", argv[0], argv[3]);
		return 2;
	}
	int r = parse_args(argc > 3 ? 3 : argc, argv, 10000, ETH_FRAME_MAX);
	return r ? r : run_user(bench_main, 0);
}

/* ---- e1000-irq: INTA# through the I/O APIC to the local APIC, at CPL 0 ---- */

/* Entry stub for E1000_IRQ_VECTOR: the caller-saved registers around a C call. An external interrupt pushes no
 * error code; in 64-bit mode the CPU aligns RSP to 16 before its 5-quadword frame, and 9 pushes more leave RSP
 * 16-byte aligned at the call. Installed into the IDT that cpu_init loaded (found with sidt). */
void e1000_irq_handler(void);
extern const char e1000_irq_entry[];
__asm__(".text\n"
	".p2align 4\n"
	".globl e1000_irq_entry\n"
	"e1000_irq_entry:\n\t"
	"push %rax\n\tpush %rcx\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n\t"
	"push %r8\n\tpush %r9\n\tpush %r10\n\tpush %r11\n\t"
	"cld\n\t"
	"call e1000_irq_handler\n\t"
	"pop %r11\n\tpop %r10\n\tpop %r9\n\tpop %r8\n\t"
	"pop %rdi\n\tpop %rsi\n\tpop %rdx\n\tpop %rcx\n\tpop %rax\n\t"
	"iretq\n");

static volatile uint32_t irq_count, irq_causes, irq_txdw, irq_lsc, irq_empty;

/* Reads ICR, which acknowledges the device and lowers INTA# (13.4.17: read to clear), and only then sends the
 * local APIC EOI: for a level-triggered entry the EOI reaches the I/O APIC, which delivers again if the line is
 * still asserted. An interrupt that finds ICR 0 is not ours (INTx lines may be shared) and is only counted. */
void e1000_irq_handler(void)
{
	uint32_t icr = rd(E1000_ICR);
	irq_count++;
	irq_causes |= icr;
	if (icr & ICR_TXDW)
		irq_txdw++;
	if (icr & ICR_LSC)
		irq_lsc++;
	if (!icr)
		irq_empty++;
	mmio_w32(LAPIC_BASE + LAPIC_EOI, 0);
}

static int idt_install(unsigned vec, uintptr_t handler)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr;
	__asm__ volatile("sidt %0" : "=m"(idtr));
	if (idtr.limit < 16 * vec + 15) {
		con_printf("e1000-irq: the IDT (limit 0x%x) has no entry for vector 0x%x\n", idtr.limit, vec);
		return 1;
	}
	volatile uint32_t *g = (volatile uint32_t *)(uintptr_t)(idtr.base + 16 * vec);
	g[0] = (uint32_t)(SEL_KCODE << 16) | (uint16_t)handler;
	g[1] = (uint32_t)(handler & 0xFFFF0000u) | 0x8E00; /* present, DPL 0, 64-bit interrupt gate, IST 0 */
	g[2] = (uint32_t)((uint64_t)handler >> 32);
	g[3] = 0;
	return 0;
}

static uint32_t ioapic_read(unsigned reg)
{
	mmio_w32(IOAPIC_BASE + IOAPIC_IOREGSEL, reg);
	return mmio_r32(IOAPIC_BASE + IOAPIC_IOWIN);
}

static void ioapic_write(unsigned reg, uint32_t v)
{
	mmio_w32(IOAPIC_BASE + IOAPIC_IOREGSEL, reg);
	mmio_w32(IOAPIC_BASE + IOAPIC_IOWIN, v);
}

/* hlt until one of `causes` has been seen by the handler; the PIT watchdog (IRQ 0 through the 8259) wakes hlt up,
 * so a missing interrupt gives up after IRQ_WAIT_TICKS. */
static int wait_cause(uint32_t causes)
{
	uint32_t t0 = pit_ticks;
	for (unsigned i = 0; i < 100000; i++) {
		cli();
		if ((irq_causes & causes) || pit_ticks - t0 > IRQ_WAIT_TICKS)
			break;
		sti_hlt();
	}
	sti();
	return (irq_causes & causes) != 0;
}

static void report_missing(const char *what, unsigned gsi)
{
	uint32_t lo = ioapic_read(IOAPIC_REG_REDTBL(gsi)), hi = ioapic_read(IOAPIC_REG_REDTBL(gsi) + 1);
	unsigned v = E1000_IRQ_VECTOR, word = 0x10 * (v / 32);
	uint32_t bit = 1u << (v % 32);
	con_printf("e1000-irq: %s did not arrive within 2 s (interrupts %u, causes seen 0x%x, ICR=0x%x IMS=0x%x "
		   "PCI STATUS=0x%x; I/O APIC pin %u entry 0x%08x:%08x%s; LAPIC IRR %u ISR %u; watchdog ticks %u)\n",
		   what, irq_count, irq_causes, rd(E1000_ICR), rd(E1000_IMS), pci_read16(nic_bdf, PCI_STATUS), gsi, hi,
		   lo, lo & IOAPIC_RTE_REMOTE_IRR ? " remote IRR" : "",
		   (mmio_r32(LAPIC_BASE + LAPIC_IRR0 + word) & bit) != 0,
		   (mmio_r32(LAPIC_BASE + LAPIC_ISR0 + word) & bit) != 0, pit_ticks);
}

static int irq_run(void)
{
	if (nic_open(1, 0))
		return 1;
	/* INTA# goes to the I/O APIC input vireo's firmware step wrote into the interrupt line register (16 + slot
	 * % 4, as the DSDT's _PRT says). */
	uint8_t pin = pci_read8(nic_bdf, PCI_INTERRUPT_PIN), gsi = pci_read8(nic_bdf, PCI_INTERRUPT_LINE);
	unsigned pins = ((ioapic_read(IOAPIC_REG_VER) >> 16) & 0xFF) + 1;
	if (pin != 1 || gsi == 0xFF || gsi >= pins) {
		con_printf("e1000-irq: interrupt pin %u, line %u: expected INTA# routed to one of the %u I/O APIC inputs\n",
			   pin, gsi, pins);
		return 1;
	}
	if (idt_install(E1000_IRQ_VECTOR, (uintptr_t)e1000_irq_entry))
		return 1;
	/* Redirection entry: fixed delivery, physical destination = this CPU's APIC ID, level-triggered and active
	 * low as PCI INTx is (KVM's I/O APIC takes the line level vireo sets as "asserted" whatever the polarity bit
	 * says). Masked while the destination is written. */
	uint32_t apic_id = mmio_r32(LAPIC_BASE + LAPIC_ID) >> 24;
	uint32_t rte = E1000_IRQ_VECTOR | IOAPIC_RTE_POLARITY_LOW | IOAPIC_RTE_LEVEL;
	ioapic_write(IOAPIC_REG_REDTBL(gsi), rte | IOAPIC_RTE_MASKED);
	ioapic_write(IOAPIC_REG_REDTBL(gsi) + 1, apic_id << IOAPIC_RTE_DEST_SHIFT);
	ioapic_write(IOAPIC_REG_REDTBL(gsi), rte);

	(void)rd(E1000_ICR);
	wr(E1000_IMS, ICR_TXDW | ICR_LSC | ICR_RXT0);
	pit_start_watchdog();
	sti();

	int bad = 0;
	/* (a) one frame, RS set and IDE clear (no transmit interrupt delay): its write-back raises TXDW. */
	irq_causes = 0;
	proto_build_frame(tx_buf[tx_tail], mac, 0, ETH_FRAME_MIN);
	unsigned slot = tx_tail;
	tx_queue(ETH_FRAME_MIN);
	tx_flush();
	if (!wait_cause(ICR_TXDW)) {
		report_missing("the TXDW interrupt", gsi);
		bad = 1;
	} else if (!(txd[slot].status & TXD_STAT_DD)) {
		con_printf("e1000-irq: TXDW arrived but descriptor %u has no DD (status 0x%x)\n", slot, txd[slot].status);
		bad = 1;
	} else {
		uint32_t icr = rd(E1000_ICR);
		if (icr) {
			con_printf("e1000-irq: ICR reads 0x%x after the handler read it, expected 0\n", icr);
			bad = 1;
		}
	}

	/* (b) a software-raised cause: ICS = LSC sets ICR.LSC as if the link had changed. */
	if (!bad) {
		irq_causes = 0;
		wr(E1000_ICS, ICR_LSC);
		if (!wait_cause(ICR_LSC)) {
			report_missing("the LSC interrupt raised through ICS", gsi);
			bad = 1;
		} else {
			uint32_t icr = rd(E1000_ICR);
			if (icr) {
				con_printf("e1000-irq: ICR reads 0x%x after the LSC handler, expected 0\n", icr);
				bad = 1;
			}
		}
	}

	cli();
	wr(E1000_IMC, 0xFFFFFFFFu);
	(void)rd(E1000_ICR);
	ioapic_write(IOAPIC_REG_REDTBL(gsi), rte | IOAPIC_RTE_MASKED);
	pit_stop();
	if (bad)
		return 1;
	if (irq_empty) /* not an error: INTx may be shared, and PVM hosts deliver each level interrupt twice (README) */
		con_printf("e1000-irq: %u interrupts found ICR 0 (not ours)\n", irq_empty);
	con_printf("e1000-irq ok (txdw=%u lsc=%u)\n", irq_txdw, irq_lsc);
	return 0;
}

int prog_e1000_irq(int argc, char **argv)
{
	if (argc > 1) {
		con_printf("usage: %s\n", argv[0]);
		return 2;
	}
	cpu_init();
	cli();
	pic_init(1u << 0); /* only the PIT watchdog on the 8259 */
	lapic_enable();
	int r = irq_run();
	cli();
	pic_set_mask(0);
	return r;
}
