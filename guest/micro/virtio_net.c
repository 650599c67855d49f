/* micro guest: virtio-net (virtio 1.2, 5.1) on the virtio-pci transport in virtio.c, and the programs
 * virtio-net-test and bench-virtio-net. Polled, split or packed rings, with or without EVENT_IDX. Apart from the
 * IDT/PIC setup in run_user, all of it runs at CPL 3 (IOPL 3).
 *
 * Network test protocol (shared with the e1000 driver and test/helpers/netpeer.py): EtherType 0x88B5; after the
 * 14-byte Ethernet header, "VIRO", u32 LE seq, u32 LE frame length (from the destination MAC on, no FCS), then the
 * byte at frame offset k (26 <= k < length) is (seq * 7 + k) & 0xff. */
#include "netproto.h"
#include "virtio.h"

/* 5.1.3 feature bits: only MAC is accepted (no MRG_RXBUF, no offloads, no control queue). */
#define VIRTIO_NET_F_MAC 5
/* 5.1.4 struct virtio_net_config: u8 mac[6] at offset 0 */
#define NET_CFG_MAC 0
/* 5.1.6: struct virtio_net_hdr is 12 bytes with VERSION_1 (num_buffers included) and without HASH_REPORT. On
 * transmit it is all zero: flags 0 (no CSUM), gso_type NONE, num_buffers 0 (5.1.6.2.1). */
#define NET_HDR_LEN 12
/* 5.1.2: receiveq1 and transmitq1 (no MQ, no CTRL_VQ) */
#define NET_RXQ 0
#define NET_TXQ 1

/* 5.1.6.3.1: without MRG_RXBUF and the GUEST_TSO/UFO/USO features, receive buffers of at least 1526 bytes. */
#define RX_BUF_LEN (NET_HDR_LEN + ETH_FRAME_MAX)
#define BUF_STRIDE 1536

#define MAX_REPORTS 5 /* invalid frames reported in phase 2 (the first fails the run) */

static struct virtio_dev net;
static struct virtq rxq, txq;
static uint8_t mac[ETH_ALEN];
static uint8_t rx_bufs[VIRTQ_MAX_SIZE][BUF_STRIDE] __attribute__((aligned(64)));
static uint8_t tx_bufs[VIRTQ_MAX_SIZE][BUF_STRIDE] __attribute__((aligned(64)));
static uint16_t tx_free[VIRTQ_MAX_SIZE]; /* transmit buffer IDs not in flight (a stack) */
static unsigned tx_nfree;

/* Program arguments */
static uint64_t arg_count, arg_size, arg_ring;

static void fail_state(const char *what)
{
	con_printf("virtio-net: %s (device status 0x%x)\n", what, virtio_get_status(&net));
	virtq_print_state(&rxq);
	virtq_print_state(&txq);
}

/* 3.1.1 for virtio-net: features VERSION_1 + MAC (+ the ring features asked for), receiveq and transmitq without
 * MSI-X vectors and with used buffer notifications suppressed, the MAC from the configuration space, and the
 * receive queue filled (5.1.5 step 3) before DRIVER_OK; the device is told about it after. */
static int net_open(void)
{
	if (virtio_pci_open(VIRTIO_ID_NET, &net, "virtio-net", "run vireo with --net tap=NAME"))
		return 1;
	if (net.devcfg_len < ETH_ALEN) {
		con_printf("virtio-net: device configuration is %u bytes, mac needs 6\n", net.devcfg_len);
		return 1;
	}
	if (virtio_negotiate(&net, (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_NET_F_MAC) | arg_ring))
		return 1;
	if (virtio_queue_setup(&net, &rxq, NET_RXQ, VIRTQ_MAX_SIZE, VIRTIO_MSI_NO_VECTOR) ||
	    virtio_queue_setup(&net, &txq, NET_TXQ, VIRTQ_MAX_SIZE, VIRTIO_MSI_NO_VECTOR)) {
		virtio_set_failed(&net);
		return 1;
	}
	virtq_disable_interrupts(&rxq);
	virtq_disable_interrupts(&txq);
	/* 5.1.4.2: with VIRTIO_NET_F_MAC negotiated, the driver uses mac as the NIC's address. */
	virtio_cfg_read_bytes(&net, NET_CFG_MAC, mac, ETH_ALEN);
	for (uint16_t i = 0; i < rxq.size; i++) {
		struct virtq_buf b = { rx_bufs[i], RX_BUF_LEN, 1 };
		if (virtq_add(&rxq, &b, 1, i)) {
			virtio_set_failed(&net);
			return 1;
		}
	}
	for (uint16_t i = 0; i < txq.size; i++)
		tx_free[i] = (uint16_t)(txq.size - 1 - i);
	tx_nfree = txq.size;
	virtio_driver_ok(&net);
	virtq_kick(&rxq); /* 3.1.1: no notification before DRIVER_OK */
	return 0;
}

/* Takes back every transmit buffer the device has used. Number taken, or -1 if the device misbehaved. */
static int tx_reclaim(void)
{
	uint16_t id;
	uint32_t len;
	int r, n = 0;
	while ((r = virtq_pop_used(&txq, &id, &len)) == 1) {
		tx_free[tx_nfree++] = id;
		n++;
	}
	return r < 0 ? -1 : n;
}

/* Makes frame f (size bytes, without the virtio_net_hdr) available on the transmit queue from buffer id. */
static int tx_submit(uint16_t id, uint32_t size)
{
	uint8_t *b = tx_bufs[id];
	memset(b, 0, NET_HDR_LEN);
	struct virtq_buf e = { b, NET_HDR_LEN + size, 0 }; /* 5.1.6.2: header and packet in one descriptor */
	return virtq_add(&txq, &e, 1, id);
}

/* Frames made available per notification at most (bench-virtio-net's BURST); 0: as many as the ring takes. */
static uint64_t tx_burst;

/* Phase 1 (and the benchmark): frames seq 0 .. count-1, broadcast, the ring kept as full as free buffers allow
 * (or tx_burst frames per notification), used ones reclaimed as they come; returns once the device has used all
 * of them. */
static int send_frames(uint64_t count, uint32_t size)
{
	uint64_t seq = 0;
	struct bounded_wait w;
	wait_start(&w);
	while (seq < count || txq.inflight) {
		int progress = tx_reclaim();
		if (progress < 0)
			return 1;
		uint64_t burst = 0;
		while (seq < count && tx_nfree && txq.nfree && (tx_burst == 0 || burst < tx_burst)) {
			burst++;
			uint16_t id = tx_free[--tx_nfree];
			proto_build_frame(tx_bufs[id] + NET_HDR_LEN, mac, (uint32_t)seq, size);
			if (tx_submit(id, size))
				return 1;
			seq++;
			progress = 1;
		}
		virtq_kick(&txq);
		if (progress) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			con_printf("virtio-net: no progress for %u s sending frame %lu of %lu (%u in flight)\n",
				   WAIT_SECONDS, seq, count, txq.inflight);
			fail_state("transmit stalled");
			return 1;
		} else {
			cpu_pause();
		}
	}
	return 0;
}

/* ---- phase 2: receive and echo ---- */

static uint64_t expected, received, echoed, ignored;
static unsigned reports;

/* Handles one received buffer. 0 ok, 1 if the frame was invalid (reported), -1 on a fatal error. */
static int handle_rx(uint16_t id, uint32_t len, int echo)
{
	if (len < NET_HDR_LEN || len > RX_BUF_LEN) {
		con_printf("virtio-net: the device wrote %u bytes into a %u-byte receive buffer\n", len, RX_BUF_LEN);
		return -1;
	}
	const uint8_t *f = rx_bufs[id] + NET_HDR_LEN;
	uint32_t flen = len - NET_HDR_LEN;
	if (!proto_is_ours(f, flen)) {
		ignored++;
		return 0;
	}
	uint32_t off;
	const char *why = proto_check_frame(f, flen, (uint32_t)expected, &off);
	if (*why) {
		uint32_t seq = flen >= PROTO_BODY ? get_le32(f + PROTO_SEQ) : 0;
		if (reports++ < MAX_REPORTS)
			proto_report("virtio-net", f, flen, expected, why, off);
		/* Judge the frames after it on their own: expect the one after the seq it claims, if it has one. */
		expected = flen >= PROTO_BODY ? (uint64_t)seq + 1 : expected + 1;
		return 1;
	}
	received++;
	expected++;
	if (!echo)
		return 0;
	/* Echo at once: dst = its src, src = our MAC, the rest unchanged. Waits (bounded) for a free buffer. */
	struct bounded_wait w;
	wait_start(&w);
	while (!tx_nfree || !txq.nfree) {
		virtq_kick(&txq);
		int r = tx_reclaim();
		if (r < 0)
			return -1;
		if (!r && wait_expired(&w)) {
			fail_state("no transmit buffer came back within the time limit");
			return -1;
		}
		cpu_pause();
	}
	uint16_t t = tx_free[--tx_nfree];
	proto_echo(tx_bufs[t] + NET_HDR_LEN, f, flen, mac);
	if (tx_submit(t, flen))
		return -1;
	echoed++;
	return 0;
}

/* Gives a receive buffer back to the device. */
static int rx_repost(uint16_t id)
{
	struct virtq_buf b = { rx_bufs[id], RX_BUF_LEN, 1 };
	return virtq_add(&rxq, &b, 1, id);
}

/* Phase 2: until `count` valid frames arrived, in order, each echoed as it comes. The first invalid frame fails
 * the phase: it is reported, and so are (up to MAX_REPORTS in all) invalid frames among those already received,
 * without waiting for more and without echoing anything else. 0 ok, 1 failed. */
static int echo_frames(uint64_t count)
{
	int failed = 0;
	struct bounded_wait w;
	wait_start(&w);
	while (received < count && !failed) {
		int progress = tx_reclaim();
		if (progress < 0)
			return 1;
		uint16_t id;
		uint32_t len;
		int r = 0;
		while (received < count && (r = virtq_pop_used(&rxq, &id, &len)) == 1) {
			progress = 1;
			int h = handle_rx(id, len, !failed);
			if (h < 0)
				return 1;
			failed |= h;
			if (rx_repost(id))
				return 1;
		}
		if (r < 0)
			return 1;
		virtq_kick(&txq);
		virtq_kick(&rxq);
		if (progress) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			con_printf("virtio-net: no progress for %u s receiving: %lu of %lu frames, expecting seq %lu, %lu "
				   "ignored\n",
				   WAIT_SECONDS, received, count, expected, ignored);
			fail_state("receive stalled");
			return 1;
		} else {
			cpu_pause();
		}
	}
	if (failed) {
		uint16_t id;
		uint32_t len;
		while (reports < MAX_REPORTS && virtq_pop_used(&rxq, &id, &len) == 1) {
			if (handle_rx(id, len, 0) < 0)
				break;
		}
	}
	/* The echoes must leave before the program ends (the VMM stops with the guest). */
	wait_start(&w);
	while (txq.inflight) {
		virtq_kick(&txq);
		int r = tx_reclaim();
		if (r < 0)
			return 1;
		if (r) {
			wait_start(&w);
		} else if (wait_expired(&w)) {
			fail_state("echoes not sent within the time limit");
			return 1;
		}
		cpu_pause();
	}
	return failed;
}

static int net_test_main(void)
{
	if (net_open())
		return 1;
	con_printf("virtio-net: mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	if (send_frames(arg_count, (uint32_t)arg_size))
		return 1;
	con_printf("virtio-net: sent %lu frames\n", arg_count);
	int bad = echo_frames(arg_count);
	con_printf("virtio-net: received %lu frames, echoed %lu, ignored %lu\n", received, echoed, ignored);
	if (bad) {
		con_puts("virtio-net-test failed\n");
		return 1;
	}
	con_puts("virtio-net-test ok\n");
	return 0;
}

/* [N] [SIZE] [packed] [event-idx]; 2 on bad arguments. */
static int parse(int argc, char **argv, uint64_t def_count, uint64_t def_size)
{
	uint64_t nums[2] = { def_count, def_size };
	if (virtio_parse_args(argc, argv, nums, 2, &arg_ring) < 0)
		return 2;
	if (nums[0] > 0xFFFFFFFFull) {
		con_printf("%s: bad frame count %lu (at most 4294967295)\n", argv[0], nums[0]);
		return 2;
	}
	if (nums[1] < ETH_FRAME_MIN || nums[1] > ETH_FRAME_MAX) {
		con_printf("%s: bad frame size %lu (%u to %u bytes)\n", argv[0], nums[1], ETH_FRAME_MIN, ETH_FRAME_MAX);
		return 2;
	}
	arg_count = nums[0];
	arg_size = nums[1];
	return 0;
}

int prog_virtio_net_test(int argc, char **argv)
{
	int r = parse(argc, argv, 10000, 1000);
	return r ? r : run_user(net_test_main, 0);
}

/* ---- bench-virtio-net [N] [SIZE] [BURST] [packed] [event-idx] ---- */

static int net_bench_main(void)
{
	if (net_open())
		return 1;
	outl(TDEV_PIO + TDEV_MARKER, 1);
	if (send_frames(arg_count, (uint32_t)arg_size))
		return 1;
	outl(TDEV_PIO + TDEV_MARKER, 2);
	vm_exit(0);
}

int prog_bench_virtio_net(int argc, char **argv)
{
	uint64_t nums[3] = { 10000, ETH_FRAME_MAX, 0 };
	if (virtio_parse_args(argc, argv, nums, 3, &arg_ring) < 0)
		return 2;
	if (nums[0] > 0xFFFFFFFFull || nums[1] < ETH_FRAME_MIN || nums[1] > ETH_FRAME_MAX) {
		con_printf("%s: bad frame count %lu or size %lu (%u to %u bytes)\n", argv[0], nums[0], nums[1],
			   ETH_FRAME_MIN, ETH_FRAME_MAX);
		return 2;
	}
	arg_count = nums[0];
	arg_size = nums[1];
	tx_burst = nums[2];
	return run_user(net_bench_main, 0);
}
