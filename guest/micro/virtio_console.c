/* micro guest: virtio-console (virtio 1.2, 5.3), port 0 only, on the virtio-pci transport in virtio.c, and the
 * virtio-console program. Polled; apart from the IDT/PIC setup in run_user, all of it runs at CPL 3 (IOPL 3). */
#include "virtio.h"

/* 5.3.2: receiveq(port0) and transmitq(port0); the control queues exist only with VIRTIO_CONSOLE_F_MULTIPORT,
 * which is not accepted (nor are SIZE and EMERG_WRITE: no feature bit of 5.3.3 is). */
#define CON_RXQ 0
#define CON_TXQ 1

#define RX_BUFS 8
#define RX_BUF_LEN 64
#define LINE_MAX 256

static struct virtio_dev con;
static struct virtq rxq, txq;
static uint8_t rx_bufs[RX_BUFS][RX_BUF_LEN] __attribute__((aligned(64)));
static char tx_buf[LINE_MAX + 64] __attribute__((aligned(64)));
static char line[LINE_MAX];
static uint64_t arg_ring;

static int con_open(void)
{
	if (virtio_pci_open(VIRTIO_ID_CONSOLE, &con, "virtio-console", "run vireo with --console virtio"))
		return 1;
	if (virtio_negotiate(&con, (1ull << VIRTIO_F_VERSION_1) | arg_ring))
		return 1;
	if (virtio_queue_setup(&con, &rxq, CON_RXQ, VIRTQ_MAX_SIZE, VIRTIO_MSI_NO_VECTOR) ||
	    virtio_queue_setup(&con, &txq, CON_TXQ, VIRTQ_MAX_SIZE, VIRTIO_MSI_NO_VECTOR)) {
		virtio_set_failed(&con);
		return 1;
	}
	virtq_disable_interrupts(&rxq);
	virtq_disable_interrupts(&txq);
	/* 5.3.5 step 4: the port's receiveq gets receive buffers (device-writable only, 5.3.6.1). */
	for (uint16_t i = 0; i < RX_BUFS && i < rxq.size; i++) {
		struct virtq_buf b = { rx_bufs[i], RX_BUF_LEN, 1 };
		if (virtq_add(&rxq, &b, 1, i)) {
			virtio_set_failed(&con);
			return 1;
		}
	}
	virtio_driver_ok(&con);
	virtq_kick(&rxq);
	return 0;
}

/* Sends n bytes of tx_buf as one device-readable buffer (5.3.6 step 1) and waits until the device used it. */
static int con_send(uint32_t n)
{
	struct virtq_buf b = { tx_buf, n, 0 };
	uint16_t id;
	uint32_t len;
	if (virtq_add(&txq, &b, 1, 0))
		return 1;
	if (!virtq_wait_used(&txq, &con, &id, &len)) {
		con_puts("virtio-console: the transmit buffer was not used\n");
		return 1;
	}
	return 0;
}

static uint32_t append(uint32_t at, const char *s)
{
	while (*s && at < sizeof(tx_buf))
		tx_buf[at++] = *s++;
	return at;
}

/* Reads until a line ends ('\n', or '\r' as a raw terminal sends for Enter); the terminator is not kept and
 * anything after it in the same buffer is dropped. Every used receive buffer goes back to the device. Gives up
 * after WAIT_SECONDS without input. Returns the line length, or -1. */
static int con_read_line(void)
{
	uint32_t n = 0;
	struct bounded_wait w;
	wait_start(&w);
	for (;;) {
		uint16_t id;
		uint32_t len;
		int r = virtq_pop_used(&rxq, &id, &len);
		if (r < 0)
			return -1;
		if (r == 0) {
			virtq_kick(&rxq);
			if (wait_expired(&w)) {
				con_printf("virtio-console: no complete line within %u s (%u bytes so far)\n",
					   WAIT_SECONDS, n);
				virtq_print_state(&rxq);
				return -1;
			}
			cpu_pause();
			continue;
		}
		wait_start(&w);
		if (len > RX_BUF_LEN) {
			con_printf("virtio-console: the device wrote %u bytes into a %u-byte buffer\n", len, RX_BUF_LEN);
			return -1;
		}
		int done = 0;
		for (uint32_t i = 0; i < len && !done; i++) {
			char c = (char)rx_bufs[id][i];
			if (c == '\n' || c == '\r') {
				done = 1;
			} else if (n == LINE_MAX) {
				con_printf("virtio-console: line longer than %u bytes\n", LINE_MAX);
				return -1;
			} else {
				line[n++] = c;
			}
		}
		struct virtq_buf b = { rx_bufs[id], RX_BUF_LEN, 1 };
		if (virtq_add(&rxq, &b, 1, id))
			return -1;
		virtq_kick(&rxq);
		if (done)
			return (int)n;
	}
}

static int console_main(void)
{
	if (con_open())
		return 1;
	if (con_send(append(0, "virtio-console: hello\n")))
		return 1;
	int n = con_read_line();
	if (n < 0)
		return 1;
	uint32_t at = append(0, "virtio-console: got ");
	for (int i = 0; i < n; i++)
		tx_buf[at++] = line[i];
	at = append(at, "\n");
	if (con_send(at))
		return 1;
	con_puts("virtio-console ok\n");
	return 0;
}

int prog_virtio_console(int argc, char **argv)
{
	if (virtio_parse_args(argc, argv, 0, 0, &arg_ring) < 0)
		return 2;
	return run_user(console_main, 0);
}
