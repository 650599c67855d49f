/* micro guest: virtio-blk (virtio 1.2, 5.2) on the virtio-pci transport in virtio.c, and the programs
 * virtio-blk-rw, virtio-blk-id, virtio-msix and bench-virtio-blk. Apart from the IDT/PIC/LAPIC setup, all of it
 * runs at CPL 3 (IOPL 3): on PVM hosts CPL 0 code is emulated, CPL 3 code runs natively. */
#include "virtio.h"

/* 5.2.3 feature bits (we accept none of them; RO and FLUSH are only looked at) */
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
/* 5.2.4 struct virtio_blk_config: le64 capacity (in 512-byte sectors) at offset 0 */
#define BLK_CFG_CAPACITY 0
/* 5.2.6 request types and status values */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define BLK_ID_BYTES 20 /* 5.2.6.1: the GET_ID data is exactly 20 bytes */

#define SECTOR 512
#define REQ_MAX_BYTES (64u * 1024)
#define DATA_BYTES (4u * 1024 * 1024)
/* Request r is buffer ID r: header, data (if any) and status, up to three descriptors, so at most a third of
 * the queue size can be in flight. */
#define MAX_SLOTS (VIRTQ_MAX_SIZE / 3)

/* 5.2.6 struct virtio_blk_req, minus data and status, which get their own descriptors. */
struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static struct virtio_dev blk;
static struct virtq vq;
static uint64_t capacity;
static unsigned nslots, nbusy;
static struct blk_req_hdr hdrs[MAX_SLOTS] __attribute__((aligned(16)));
static volatile uint8_t statuses[MAX_SLOTS];
static struct {
	uint8_t busy;
	uint32_t type, len, used_len;
	uint64_t sector;
} slots[MAX_SLOTS];
static uint8_t data[DATA_BYTES] __attribute__((aligned(4096)));

static const char *type_name(uint32_t t)
{
	return t == BLK_T_IN ? "IN" : t == BLK_T_OUT ? "OUT" : t == BLK_T_FLUSH ? "FLUSH" : t == BLK_T_GET_ID ? "GET_ID" : "?";
}

static const char *status_name(uint8_t s)
{
	return s == BLK_S_OK ? "OK" : s == BLK_S_IOERR ? "IOERR" : s == BLK_S_UNSUPP ? "UNSUPP" : s == 0xFF ? "never written" : "?";
}

/* Finds the device and runs 3.1.1: features (VERSION_1, plus the ring features asked for: RING_PACKED and/or
 * RING_EVENT_IDX), queue 0, capacity, DRIVER_OK. With msix, MSI-X table entry 0 is pointed at the LAPIC of APIC
 * ID 0 with MSI_VECTOR and queue 0 is mapped to it; otherwise the queue has no vector and asks for no used
 * buffer notifications. */
static int blk_open(int msix, uint64_t ring_features)
{
	if (virtio_pci_open(VIRTIO_ID_BLOCK, &blk, "virtio-blk", "run vireo with --disk FILE"))
		return 1;
	unsigned bdf = blk.bdf;
	if (blk.devcfg_len < 8) {
		con_printf("virtio-blk: device configuration is %u bytes, capacity needs 8\n", blk.devcfg_len);
		return 1;
	}
	/* MSI-X is enabled before the vector is mapped: a device may refuse vectors while it is off. */
	if (msix && pci_msix_route(bdf, 0, LAPIC_BASE, MSI_VECTOR))
		return 1;
	if (virtio_negotiate(&blk, (1ull << VIRTIO_F_VERSION_1) | ring_features))
		return 1;
	if (virtio_queue_setup(&blk, &vq, 0, VIRTQ_MAX_SIZE, msix ? 0 : VIRTIO_MSI_NO_VECTOR)) {
		virtio_set_failed(&blk);
		return 1;
	}
	if (vq.size < 4) { /* a request takes three descriptors */
		con_printf("virtio-blk: queue size %u is too small\n", vq.size);
		virtio_set_failed(&blk);
		return 1;
	}
	nslots = vq.size / 3;
	if (nslots > MAX_SLOTS)
		nslots = MAX_SLOTS;
	if (!msix)
		virtq_disable_interrupts(&vq);
	capacity = virtio_cfg_read64(&blk, BLK_CFG_CAPACITY); /* 5.2.5 step 1 */
	virtio_driver_ok(&blk);
	return 0;
}

/* Handles one used element. 0 if the request succeeded. */
static int blk_complete(uint16_t id, uint32_t len)
{
	unsigned r = id;
	if (r >= nslots || !slots[r].busy) {
		con_printf("virtio-blk: the device used buffer %u, which is no request in flight\n", id);
		return 1;
	}
	slots[r].busy = 0;
	slots[r].used_len = len;
	nbusy--;
	uint8_t st = statuses[r];
	uint32_t type = slots[r].type;
	if (st == BLK_S_UNSUPP && type == BLK_T_FLUSH && !(blk.device_features & (1ull << VIRTIO_BLK_F_FLUSH))) {
		con_puts("virtio-blk: FLUSH unsupported (the device does not offer VIRTIO_BLK_F_FLUSH)\n");
		return 0;
	}
	if (st != BLK_S_OK) {
		con_printf("virtio-blk: %s request at sector %lu (%u bytes) completed with status %u (%s)\n",
			   type_name(type), slots[r].sector, slots[r].len, st, status_name(st));
		return 1;
	}
	/* 2.7.8: len counts the bytes written into the device-writable part; only those may be trusted. For IN that
	 * has to be all of the data plus the status byte. */
	uint32_t want = 1 + (type == BLK_T_IN ? slots[r].len : 0);
	if (len < want) {
		con_printf("virtio-blk: %s request at sector %lu (%u bytes): used len %u, expected at least %u\n",
			   type_name(type), slots[r].sector, slots[r].len, len, want);
		return 1;
	}
	return 0;
}

/* Completes what the device has used; with wait, first kicks and waits for at least one. Nonzero on failure. */
static int blk_reap(int wait)
{
	uint16_t id;
	uint32_t len;
	int bad = 0, r;
	if (wait) {
		if (!virtq_wait_used(&vq, &blk, &id, &len))
			return 1;
		bad |= blk_complete(id, len);
	}
	while ((r = virtq_pop_used(&vq, &id, &len)) == 1)
		bad |= blk_complete(id, len);
	return bad || r < 0;
}

/* Queues one request (5.2.6): header (device-readable), data if len > 0 (device-writable for IN and GET_ID,
 * device-readable for OUT), status byte (device-writable); the writable elements come after the readable ones. Waits for a free slot if all are in flight. It is exposed to the device here, but only notified by
 * blk_reap / blk_drain. */
static int blk_submit(uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
	while (nbusy == nslots) {
		if (blk_reap(1))
			return 1;
	}
	unsigned r = 0;
	while (slots[r].busy)
		r++;
	hdrs[r].type = type;
	hdrs[r].reserved = 0;
	hdrs[r].sector = sector;
	statuses[r] = 0xFF; /* so a status the device never wrote shows */
	slots[r].busy = 1;
	slots[r].type = type;
	slots[r].len = len;
	slots[r].sector = sector;
	nbusy++;

	struct virtq_buf b[3];
	unsigned n = 0;
	b[n++] = (struct virtq_buf){ &hdrs[r], sizeof(hdrs[r]), 0 };
	if (len)
		b[n++] = (struct virtq_buf){ buf, len, type == BLK_T_IN || type == BLK_T_GET_ID };
	b[n++] = (struct virtq_buf){ &statuses[r], 1, 1 };
	return virtq_add(&vq, b, n, (uint16_t)r);
}

/* Notifies and waits until every request in flight has completed. */
static int blk_drain(void)
{
	while (nbusy) {
		if (blk_reap(1))
			return 1;
	}
	return 0;
}

/* ---- virtio-blk-rw [KIB] [packed] [event-idx] ---- */

/* Contents of sector s: 128 little-endian words from a 32-bit LCG seeded with the sector number,
 * x0 = (s mod 2^32) XOR (s >> 32), x(i+1) = 1664525 x(i) + 1013904223, word i = x(i+1). */
static void fill_sector(uint32_t *w, uint64_t s)
{
	uint32_t x = (uint32_t)s ^ (uint32_t)(s >> 32);
	for (unsigned i = 0; i < SECTOR / 4; i++) {
		x = x * 1664525u + 1013904223u;
		w[i] = x;
	}
}

static int check_sector(const uint32_t *w, uint64_t s)
{
	uint32_t x = (uint32_t)s ^ (uint32_t)(s >> 32);
	for (unsigned i = 0; i < SECTOR / 4; i++) {
		x = x * 1664525u + 1013904223u;
		if (w[i] != x) {
			con_printf("virtio-blk: mismatch at disk byte 0x%lx (sector %lu, word %u): read 0x%08x, "
				   "expected 0x%08x\n",
				   s * SECTOR + 4 * i, s, i, w[i], x);
			return 1;
		}
	}
	return 0;
}

/* FNV-1a, 64-bit */
#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull

static uint64_t fnv1a64(uint64_t h, const uint8_t *p, uint64_t n)
{
	while (n--) {
		h ^= *p++;
		h *= FNV64_PRIME;
	}
	return h;
}

static uint64_t rw_kib, ring_features;

/* One pass of OUT or IN requests (up to REQ_MAX_BYTES each) over disk bytes [0, total), through the buffer one
 * DATA_BYTES window at a time: all of a window's requests are queued, then notified together and drained. OUT
 * fills the window with the pattern first; IN poisons it first and checks it (and adds it to *fnv) after. */
static int rw_pass(uint32_t type, uint64_t total, uint64_t *fnv)
{
	for (uint64_t off = 0; off < total; off += DATA_BYTES) {
		uint64_t n = total - off < DATA_BYTES ? total - off : DATA_BYTES;
		uint64_t s0 = off / SECTOR;
		if (type == BLK_T_OUT) {
			for (uint64_t i = 0; i < n / SECTOR; i++)
				fill_sector((uint32_t *)(data + i * SECTOR), s0 + i);
		} else {
			memset(data, 0xA5, n); /* so a read that moved no data cannot pass the check */
		}
		for (uint64_t c = 0; c < n; c += REQ_MAX_BYTES) {
			uint32_t len = n - c < REQ_MAX_BYTES ? (uint32_t)(n - c) : REQ_MAX_BYTES;
			if (blk_submit(type, s0 + c / SECTOR, data + c, len))
				return 1;
		}
		if (blk_drain())
			return 1;
		if (type == BLK_T_IN) {
			for (uint64_t i = 0; i < n / SECTOR; i++) {
				if (check_sector((const uint32_t *)(data + i * SECTOR), s0 + i))
					return 1;
			}
			*fnv = fnv1a64(*fnv, data, n);
		}
	}
	return 0;
}

static int rw_main(void)
{
	if (blk_open(0, ring_features))
		return 1;
	con_printf("virtio-blk: capacity %lu sectors\n", capacity);
	if (blk.device_features & (1ull << VIRTIO_BLK_F_RO)) {
		con_puts("virtio-blk: the device is read-only (it offers VIRTIO_BLK_F_RO)\n");
		return 1;
	}
	uint64_t total = rw_kib * 1024;
	if (total / SECTOR > capacity) { /* 5.2.6.1: no request may go beyond capacity */
		con_printf("virtio-blk: %lu KiB do not fit in %lu sectors\n", rw_kib, capacity);
		return 1;
	}
	uint64_t fnv = FNV64_OFFSET;
	if (rw_pass(BLK_T_OUT, total, &fnv) || rw_pass(BLK_T_IN, total, &fnv))
		return 1;
	/* 5.2.6.1: FLUSH has sector 0 and no data. */
	if (blk_submit(BLK_T_FLUSH, 0, 0, 0) || blk_drain())
		return 1;
	con_printf("virtio-blk: wrote %lu KiB, read back %lu KiB, fnv1a64=%016lx\n", rw_kib, rw_kib, fnv);
	con_puts("virtio-blk-rw ok\n");
	return 0;
}

int prog_virtio_blk_rw(int argc, char **argv)
{
	rw_kib = 4096;
	int n = virtio_parse_args(argc, argv, &rw_kib, 1, &ring_features);
	if (n < 0)
		return 2;
	if (n == 1 && (rw_kib == 0 || rw_kib > (1ull << 32))) {
		con_printf("%s: bad size '%lu' (KiB, 1 to 4294967296)\n", argv[0], rw_kib);
		return 2;
	}
	return run_user(rw_main, 0);
}

/* ---- virtio-blk-id ---- */

static int id_main(void)
{
	if (blk_open(0, 0))
		return 1;
	memset(data, 0, BLK_ID_BYTES);
	if (blk_submit(BLK_T_GET_ID, 0, data, BLK_ID_BYTES) || blk_drain())
		return 1;
	/* 5.2.6: NUL-padded ASCII, no terminator if all 20 bytes are used; trust only what len says was written. */
	uint32_t n = slots[0].used_len - 1;
	con_puts("virtio-blk: id \"");
	for (uint32_t i = 0; i < n && i < BLK_ID_BYTES && data[i]; i++)
		con_putc(data[i] >= 0x20 && data[i] < 0x7F ? (char)data[i] : '?');
	con_puts("\"\nvirtio-blk-id ok\n");
	return 0;
}

int prog_virtio_blk_id(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return run_user(id_main, 0);
}

/* ---- virtio-msix: one read completed by an MSI-X interrupt ---- */

static int msix_main(void)
{
	if (blk_open(1, 0))
		return 1;
	uint32_t before = msi_count;
	if (blk_submit(BLK_T_IN, 0, data, 4096))
		return 1;
	virtq_kick(&vq);
	if (!virtio_wait_change(&msi_count, before)) {
		con_printf("virtio-msix: no interrupt on vector 0x%x (device status 0x%x)\n", MSI_VECTOR,
			   virtio_get_status(&blk));
		virtq_print_state(&vq);
		return 1;
	}
	if (blk_reap(0))
		return 1;
	if (nbusy) {
		con_puts("virtio-msix: the interrupt came but the request is not in the used ring\n");
		return 1;
	}
	con_printf("virtio-msix ok (vector 0x%x)\n", MSI_VECTOR);
	return 0;
}

int prog_virtio_msix(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	cpu_init(); /* the IDT gate for MSI_VECTOR */
	lapic_enable();
	return run_user(msix_main, 1);
}

/* ---- bench-virtio-blk [N] [packed] [event-idx]: N 4 KiB reads, one at a time, between markers 1 and 2 ---- */

static uint64_t bench_reads;

static int bench_main(void)
{
	if (blk_open(0, ring_features))
		return 1;
	uint64_t blocks = capacity / 8;
	if (blocks == 0) {
		con_printf("bench-virtio-blk: capacity %lu sectors is less than 4 KiB\n", capacity);
		return 1;
	}
	outl(TDEV_PIO + TDEV_MARKER, 1);
	for (uint64_t i = 0; i < bench_reads; i++) {
		if (blk_submit(BLK_T_IN, (i % blocks) * 8, data, 4096) || blk_reap(1))
			return 1;
	}
	outl(TDEV_PIO + TDEV_MARKER, 2);
	vm_exit(0);
}

int prog_bench_virtio_blk(int argc, char **argv)
{
	bench_reads = 1000;
	if (virtio_parse_args(argc, argv, &bench_reads, 1, &ring_features) < 0)
		return 2;
	return run_user(bench_main, 0);
}

/* ---- virtio-blk-hammer [MIB]: a hostile driver that never lets the device rest ----
 * One read request whose data is MIB (default 64, at most 254) descriptors of 1 MiB, all naming the same MiB of
 * guest memory (the specification allows it), is made available in every slot of the avail ring, over and
 * over: each time the device uses a slot, the slot is refilled and the device notified. It prints one line when
 * the hammering starts and never ends by itself: vireo must stop it (Ctrl-A x, --timeout, a signal) while the
 * device is busy. Needs a disk of at least MIB MiB (a sparse file is enough). */

static uint32_t hammer_mib = 64;

static int hammer_main(void)
{
	if (blk_open(0, 0))
		return 1;
	if (vq.packed || vq.size < hammer_mib + 2) {
		con_printf("virtio-blk-hammer: needs a split ring of at least %u entries (have %u)\n", hammer_mib + 2,
			   vq.size);
		return 1;
	}
	if (capacity < (uint64_t)hammer_mib * 2048) {
		con_printf("virtio-blk-hammer: the disk has %lu sectors, %u MiB are needed\n", capacity, hammer_mib);
		return 1;
	}
	static struct virtq_buf b[256];
	unsigned n = 0;
	hdrs[0] = (struct blk_req_hdr){ BLK_T_IN, 0, 0 };
	b[n++] = (struct virtq_buf){ &hdrs[0], sizeof(hdrs[0]), 0 };
	for (uint32_t i = 0; i < hammer_mib; i++)
		b[n++] = (struct virtq_buf){ data, 1u << 20, 1 };
	b[n++] = (struct virtq_buf){ &statuses[0], 1, 1 };
	if (virtq_add(&vq, b, n, 0))
		return 1;
	/* The chain's head is the avail entry virtq_add just wrote; every other slot gets the same head. */
	uint16_t head = vq.avail->ring[(uint16_t)(vq.next_avail - 1) & (vq.size - 1)];
	con_printf("virtio-blk-hammer: hammering with %u x 1 MiB reads in every one of %u slots\n", hammer_mib, vq.size);
	for (;;) {
		/* 2.7.13: fill the free slots (the device has used everything before used->idx), then publish idx. */
		while ((uint16_t)(vq.next_avail - vq.used->idx) < vq.size) {
			vq.avail->ring[vq.next_avail & (vq.size - 1)] = head;
			vq.next_avail++;
		}
		virtio_wmb();
		vq.avail->idx = vq.next_avail;
		virtio_mb();
		mmio_w16(vq.notify_addr, vq.index);
		uint16_t seen = vq.used->idx;
		for (uint32_t spin = 0; spin < 100000 && vq.used->idx == seen; spin++)
			cpu_pause();
	}
}

int prog_virtio_blk_hammer(int argc, char **argv)
{
	if (argc > 2) {
		con_puts("virtio-blk-hammer: at most one argument (MiB per request)\n");
		return 2;
	}
	if (argc == 2) {
		uint64_t v;
		if (!parse_u64(argv[1], &v) || v < 1 || v > 254) {
			con_printf("virtio-blk-hammer: '%s' is not a number of MiB in 1..254\n", argv[1]);
			return 2;
		}
		hammer_mib = (uint32_t)v;
	}
	return run_user(hammer_main, 0);
}
