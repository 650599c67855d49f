/* micro guest: virtio-pci modern transport (virtio 1.2, 4.1) and one split virtqueue (2.7), polled.
 * Written from the OASIS specification. Everything here is safe at CPL 3 with IOPL 3: configuration space goes
 * through ports 0xCF8/0xCFC and the BARs are identity mapped with the user bit set. */
#include "virtio.h"

/* 4.1.4 cfg_type of struct virtio_pci_cap */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG 5
/* struct virtio_pci_cap: cap_vndr, cap_next, cap_len, cfg_type, bar, id, padding[2], offset, length; the notify
 * capability appends notify_off_multiplier. */
#define VCAP_CFG_TYPE 3
#define VCAP_BAR 4
#define VCAP_OFFSET 8
#define VCAP_LENGTH 12
#define VCAP_NOTIFY_MULT 16

/* 4.1.4.3 struct virtio_pci_common_cfg */
#define CC_DEVICE_FEATURE_SELECT 0x00
#define CC_DEVICE_FEATURE 0x04
#define CC_DRIVER_FEATURE_SELECT 0x08
#define CC_DRIVER_FEATURE 0x0C
#define CC_DEVICE_STATUS 0x14
#define CC_CONFIG_GENERATION 0x15
#define CC_QUEUE_SELECT 0x16
#define CC_QUEUE_SIZE 0x18
#define CC_QUEUE_MSIX_VECTOR 0x1A
#define CC_QUEUE_ENABLE 0x1C
#define CC_QUEUE_NOTIFY_OFF 0x1E
#define CC_QUEUE_DESC 0x20
#define CC_QUEUE_DRIVER 0x28
#define CC_QUEUE_DEVICE 0x30
#define CC_MIN_LENGTH 0x38 /* through queue_device: all we use */

/* Waits are bounded by the TSC (10e9 ticks: about 3 s on a 3 GHz TSC, 10 s at 1 GHz) and, in case the TSC
 * does not move, by a count of polls. */
#define WAIT_TSC 10000000000ull
#define WAIT_SPINS 400000000u

static const char *const cap_names[] = { "type 0", "common", "notify", "isr", "device", "pci-cfg" };

static const char *cap_name(unsigned type) { return type < 6 ? cap_names[type] : "other"; }

/* 4.1.4.1: use the first capability of each type; ignore reserved cfg_type and bar values. 4.1.3.1: 8-bit
 * fields are read with 8-bit accesses, 32-bit ones with 32-bit accesses (capabilities live in configuration
 * space, and the same rule is followed there). */
struct cap_loc {
	int found;
	uint8_t bar;
	uint32_t offset, length;
};

static int locate(unsigned bdf, const struct cap_loc *l, unsigned type, uint32_t min_len, uintptr_t *out)
{
	if (!l->found) {
		con_printf("virtio: no %s capability\n", cap_name(type));
		return 1;
	}
	int is_io;
	uint64_t base = pci_bar_base(bdf, l->bar, &is_io);
	if (is_io || base == 0) {
		con_printf("virtio: %s structure in BAR %u, which is %s\n", cap_name(type), l->bar,
			   is_io ? "an I/O BAR (not supported here)" : "unassigned");
		return 1;
	}
	if (l->length < min_len) {
		con_printf("virtio: %s structure is 0x%x bytes, need 0x%x\n", cap_name(type), l->length, min_len);
		return 1;
	}
	*out = (uintptr_t)(base + l->offset);
	return 0;
}

int virtio_pci_probe(unsigned bdf, struct virtio_dev *d)
{
	struct cap_loc loc[VIRTIO_PCI_CAP_PCI_CFG + 1];
	memset(loc, 0, sizeof(loc));
	memset(d, 0, sizeof(*d));
	d->bdf = bdf;

	unsigned cap = 0;
	for (unsigned n = 0; n < 48; n++) {
		cap = pci_cap_next(bdf, cap);
		if (cap < 0x40)
			break;
		if (pci_read8(bdf, cap) != PCI_CAP_ID_VNDR)
			continue;
		uint8_t type = pci_read8(bdf, cap + VCAP_CFG_TYPE), bar = pci_read8(bdf, cap + VCAP_BAR);
		if (type < VIRTIO_PCI_CAP_COMMON_CFG || type > VIRTIO_PCI_CAP_PCI_CFG || bar > 5 || loc[type].found)
			continue;
		loc[type].found = 1;
		loc[type].bar = bar;
		loc[type].offset = pci_read32(bdf, cap + VCAP_OFFSET);
		loc[type].length = pci_read32(bdf, cap + VCAP_LENGTH);
		if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
			d->notify_mult = pci_read32(bdf, cap + VCAP_NOTIFY_MULT);
	}
	/* 4.1.4.4: the notify region is at least 2 bytes; 4.1.4.5: the ISR at least 1. */
	if (locate(bdf, &loc[VIRTIO_PCI_CAP_COMMON_CFG], VIRTIO_PCI_CAP_COMMON_CFG, CC_MIN_LENGTH, &d->common) ||
	    locate(bdf, &loc[VIRTIO_PCI_CAP_NOTIFY_CFG], VIRTIO_PCI_CAP_NOTIFY_CFG, 2, &d->notify) ||
	    locate(bdf, &loc[VIRTIO_PCI_CAP_ISR_CFG], VIRTIO_PCI_CAP_ISR_CFG, 1, &d->isr))
		return 1;
	d->notify_len = loc[VIRTIO_PCI_CAP_NOTIFY_CFG].length;
	/* The device-specific structure is optional in general (4.1.4.6); the device driver checks its length. */
	if (loc[VIRTIO_PCI_CAP_DEVICE_CFG].found &&
	    locate(bdf, &loc[VIRTIO_PCI_CAP_DEVICE_CFG], VIRTIO_PCI_CAP_DEVICE_CFG, 0, &d->devcfg))
		return 1;
	d->devcfg_len = d->devcfg ? loc[VIRTIO_PCI_CAP_DEVICE_CFG].length : 0;

	/* The BARs are assigned and decoding (vireo acts as firmware); the device needs Bus Master to reach the rings
	 * and buffers (and to send MSI-X messages). INTx stays off: the polled programs want no interrupt at all,
	 * and the MSI-X one does not use INTx. */
	uint16_t cmd = pci_read16(bdf, PCI_COMMAND);
	pci_write16(bdf, PCI_COMMAND, (uint16_t)(cmd | PCI_CMD_MEM | PCI_CMD_BUS_MASTER | PCI_CMD_INTX_DISABLE));
	return 0;
}

void virtio_pci_print_caps(unsigned bdf)
{
	unsigned cap = 0;
	for (unsigned n = 0; n < 48; n++) {
		cap = pci_cap_next(bdf, cap);
		if (cap < 0x40)
			break;
		if (pci_read8(bdf, cap) != PCI_CAP_ID_VNDR)
			continue;
		uint8_t type = pci_read8(bdf, cap + VCAP_CFG_TYPE);
		con_printf("  virtio-cap %s bar %u offset 0x%x length 0x%x", cap_name(type),
			   pci_read8(bdf, cap + VCAP_BAR), pci_read32(bdf, cap + VCAP_OFFSET),
			   pci_read32(bdf, cap + VCAP_LENGTH));
		if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
			con_printf(" multiplier %u", pci_read32(bdf, cap + VCAP_NOTIFY_MULT));
		con_putc('\n');
	}
}

/* ---- common configuration ---- */

static uint8_t cc_r8(struct virtio_dev *d, unsigned off) { return mmio_r8(d->common + off); }
static uint16_t cc_r16(struct virtio_dev *d, unsigned off) { return mmio_r16(d->common + off); }
static uint32_t cc_r32(struct virtio_dev *d, unsigned off) { return mmio_r32(d->common + off); }
static void cc_w8(struct virtio_dev *d, unsigned off, uint8_t v) { mmio_w8(d->common + off, v); }
static void cc_w16(struct virtio_dev *d, unsigned off, uint16_t v) { mmio_w16(d->common + off, v); }
static void cc_w32(struct virtio_dev *d, unsigned off, uint32_t v) { mmio_w32(d->common + off, v); }
/* 4.1.3.1: a 64-bit field is written as two 32-bit halves, low then high. */
static void cc_w64(struct virtio_dev *d, unsigned off, uint64_t v)
{
	cc_w32(d, off, (uint32_t)v);
	cc_w32(d, off + 4, (uint32_t)(v >> 32));
}

uint8_t virtio_get_status(struct virtio_dev *d) { return cc_r8(d, CC_DEVICE_STATUS); }

void virtio_set_failed(struct virtio_dev *d)
{
	cc_w8(d, CC_DEVICE_STATUS, (uint8_t)(cc_r8(d, CC_DEVICE_STATUS) | VIRTIO_STATUS_FAILED));
}

static int timed_out(uint64_t t0, uint32_t *spins) { return ++*spins > WAIT_SPINS || rdtsc() - t0 > WAIT_TSC; }

int virtio_negotiate(struct virtio_dev *d, uint64_t accept)
{
	/* 3.1.1 step 1, and 4.1.4.3.2: after writing 0, wait until device_status reads 0. */
	cc_w8(d, CC_DEVICE_STATUS, 0);
	uint64_t t0 = rdtsc();
	uint32_t spins = 0;
	while (cc_r8(d, CC_DEVICE_STATUS) != 0) {
		if (timed_out(t0, &spins)) {
			con_printf("virtio: device status still 0x%x after reset\n", cc_r8(d, CC_DEVICE_STATUS));
			return 1;
		}
		cpu_pause();
	}
	/* Steps 2 and 3: we noticed the device, and we know how to drive it. */
	uint8_t status = VIRTIO_STATUS_ACKNOWLEDGE;
	cc_w8(d, CC_DEVICE_STATUS, status);
	status |= VIRTIO_STATUS_DRIVER;
	cc_w8(d, CC_DEVICE_STATUS, status);

	/* Step 4: read the device features (two 32-bit windows) and write the subset we accept. */
	cc_w32(d, CC_DEVICE_FEATURE_SELECT, 0);
	uint64_t lo = cc_r32(d, CC_DEVICE_FEATURE);
	cc_w32(d, CC_DEVICE_FEATURE_SELECT, 1);
	uint64_t hi = cc_r32(d, CC_DEVICE_FEATURE);
	d->device_features = (hi << 32) | lo;
	if (accept & ~d->device_features) {
		con_printf("virtio: device offers features 0x%lx, lacking 0x%lx that we need\n", d->device_features,
			   accept & ~d->device_features);
		virtio_set_failed(d);
		return 1;
	}
	cc_w32(d, CC_DRIVER_FEATURE_SELECT, 0);
	cc_w32(d, CC_DRIVER_FEATURE, (uint32_t)accept);
	cc_w32(d, CC_DRIVER_FEATURE_SELECT, 1);
	cc_w32(d, CC_DRIVER_FEATURE, (uint32_t)(accept >> 32));

	/* Steps 5 and 6: FEATURES_OK, then read it back: if the device cleared it, it rejects our subset. */
	status |= VIRTIO_STATUS_FEATURES_OK;
	cc_w8(d, CC_DEVICE_STATUS, status);
	uint8_t got = cc_r8(d, CC_DEVICE_STATUS);
	if (!(got & VIRTIO_STATUS_FEATURES_OK)) {
		con_printf("virtio: device did not keep FEATURES_OK (status 0x%x, features 0x%lx)\n", got, accept);
		virtio_set_failed(d);
		return 1;
	}
	return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	cc_w8(d, CC_DEVICE_STATUS, (uint8_t)(cc_r8(d, CC_DEVICE_STATUS) | VIRTIO_STATUS_DRIVER_OK));
}

/* Device configuration space (2.5): a read of more than 32 bits is only consistent if config_generation is the
 * same before and after (2.5.1 driver requirements). */
uint32_t virtio_cfg_read32(struct virtio_dev *d, unsigned off) { return mmio_r32(d->devcfg + off); }

uint64_t virtio_cfg_read64(struct virtio_dev *d, unsigned off)
{
	uint8_t gen;
	uint32_t lo, hi;
	unsigned tries = 0;
	do {
		gen = cc_r8(d, CC_CONFIG_GENERATION);
		lo = mmio_r32(d->devcfg + off);
		hi = mmio_r32(d->devcfg + off + 4);
	} while (gen != cc_r8(d, CC_CONFIG_GENERATION) && ++tries < 100);
	return ((uint64_t)hi << 32) | lo;
}

/* ---- the split virtqueue ---- */

/* 2.7: alignment 16 for the descriptor table, 2 for the available ring, 4 for the used ring. One page each
 * (page aligned) is more than enough for 256 entries: 16 * 256 = 4096, 6 + 2 * 256 and 6 + 8 * 256 bytes. */
static uint8_t vq_area[3 * 4096] __attribute__((aligned(4096)));
static int vq_area_used;

int virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t max_size,
		       uint16_t msix_vector)
{
	if (vq_area_used) {
		con_puts("virtio: only one virtqueue is supported\n");
		return 1;
	}
	/* 4.1.5.1.3: select the queue, read its size (0: no such queue), optionally make it smaller. */
	cc_w16(d, CC_QUEUE_SELECT, index);
	uint16_t size = cc_r16(d, CC_QUEUE_SIZE);
	if (size == 0) {
		con_printf("virtio: queue %u does not exist (queue_size 0)\n", index);
		return 1;
	}
	if (max_size > VIRTQ_MAX_SIZE)
		max_size = VIRTQ_MAX_SIZE;
	if (size > max_size)
		size = max_size;
	if (size & (size - 1)) { /* 4.1.4.3.1: a split ring's size is a power of 2 */
		con_printf("virtio: queue %u size %u is not a power of 2\n", index, size);
		return 1;
	}
	cc_w16(d, CC_QUEUE_SIZE, size);

	/* Allocate and zero the three parts (2.7.10.1: used->flags starts at 0 too). */
	memset(vq_area, 0, sizeof(vq_area));
	vq_area_used = 1;
	q->index = index;
	q->size = size;
	q->desc = (volatile struct virtq_desc *)(vq_area);
	q->avail = (volatile struct virtq_avail *)(vq_area + 4096);
	q->used = (volatile struct virtq_used *)(vq_area + 8192);
	q->next_avail = q->last_used = q->unkicked = 0;
	cc_w64(d, CC_QUEUE_DESC, (uintptr_t)q->desc); /* identity mapped: virtual == physical */
	cc_w64(d, CC_QUEUE_DRIVER, (uintptr_t)q->avail);
	cc_w64(d, CC_QUEUE_DEVICE, (uintptr_t)q->used);

	/* 4.1.5.1.2: after mapping a vector, read it back: NO_VECTOR means the device refused. */
	cc_w16(d, CC_QUEUE_MSIX_VECTOR, msix_vector);
	uint16_t got = cc_r16(d, CC_QUEUE_MSIX_VECTOR);
	if (got != msix_vector) {
		con_printf("virtio: queue %u MSI-X vector reads 0x%x after writing 0x%x\n", index, got, msix_vector);
		return 1;
	}

	/* 4.1.4.4: the queue's notify address is cap.offset + queue_notify_off * notify_off_multiplier. */
	uint32_t noff = (uint32_t)cc_r16(d, CC_QUEUE_NOTIFY_OFF) * d->notify_mult;
	if (noff + 2 > d->notify_len) {
		con_printf("virtio: queue %u notify offset 0x%x is outside the 0x%x-byte notify region\n", index, noff,
			   d->notify_len);
		return 1;
	}
	q->notify_addr = d->notify + noff;

	/* 4.1.4.3.2: everything else is configured before queue_enable. */
	cc_w16(d, CC_QUEUE_ENABLE, 1);
	return 0;
}

void virtq_set_desc(struct virtq *q, uint16_t i, const volatile void *buf, uint32_t len, uint16_t flags,
		    uint16_t next)
{
	volatile struct virtq_desc *d = &q->desc[i];
	d->addr = (uintptr_t)buf;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* 2.7.13.2 and 2.7.13.3: ring entry, barrier, then idx (which is free running and wraps at 65536). */
void virtq_publish(struct virtq *q, uint16_t head)
{
	q->avail->ring[q->next_avail & (q->size - 1)] = head;
	virtio_wmb();
	q->avail->idx = ++q->next_avail;
	q->unkicked++;
}

/* 2.7.13.4 and 4.1.5.2: without VIRTIO_F_EVENT_IDX, notify unless the device set VIRTQ_USED_F_NO_NOTIFY; the
 * notification is a 16-bit write of the queue index to the queue's notify address. The store to the notify
 * address is an MMIO write that exits to the VMM; a VM exit drains the store buffer, so the ring updates are
 * visible to the VMM by the time it handles it. */
void virtq_kick(struct virtq *q)
{
	if (!q->unkicked)
		return;
	q->unkicked = 0;
	virtio_mb();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		mmio_w16(q->notify_addr, q->index);
}

/* 2.7.14: used->idx is where the device will put its next entry; entries before it are ours to read. */
int virtq_pop_used(struct virtq *q, uint32_t *id, uint32_t *len)
{
	if (q->used->idx == q->last_used)
		return 0;
	virtio_rmb();
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
	*id = e->id;
	*len = e->len;
	q->last_used++;
	return 1;
}

int virtq_wait_used(struct virtq *q, struct virtio_dev *d, uint32_t *id, uint32_t *len)
{
	virtq_kick(q);
	uint64_t t0 = rdtsc();
	uint32_t spins = 0;
	while (!virtq_pop_used(q, id, len)) {
		if (timed_out(t0, &spins)) {
			con_printf("virtio: timed out waiting for a used buffer on queue %u (avail idx %u, used idx %u, "
				   "consumed %u, device status 0x%x)\n",
				   q->index, q->next_avail, q->used->idx, q->last_used, virtio_get_status(d));
			return 0;
		}
		cpu_pause();
	}
	return 1;
}

int virtio_wait_change(volatile uint32_t *counter, uint32_t old)
{
	uint64_t t0 = rdtsc();
	uint32_t spins = 0;
	while (*counter == old) {
		if (timed_out(t0, &spins))
			return 0;
		cpu_pause();
	}
	return 1;
}
