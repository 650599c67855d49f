/* micro guest: virtio-pci modern transport (virtio 1.2, 4.1) and virtqueues in the split (2.7) or packed (2.8)
 * layout, polled, with or without VIRTIO_F_RING_EVENT_IDX.
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
	tsc_calibrate();

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


int virtio_negotiate(struct virtio_dev *d, uint64_t accept)
{
	/* 3.1.1 step 1, and 4.1.4.3.2: after writing 0, wait until device_status reads 0. */
	cc_w8(d, CC_DEVICE_STATUS, 0);
	struct bounded_wait w;
	wait_start(&w);
	while (cc_r8(d, CC_DEVICE_STATUS) != 0) {
		if (wait_expired(&w)) {
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
	d->features = accept;

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

void virtio_cfg_read_bytes(struct virtio_dev *d, unsigned off, uint8_t *out, unsigned n)
{
	uint8_t gen;
	unsigned tries = 0;
	do {
		gen = cc_r8(d, CC_CONFIG_GENERATION);
		for (unsigned i = 0; i < n; i++)
			out[i] = mmio_r8(d->devcfg + off + i); /* 4.1.3.1: 8-bit fields with 8-bit accesses */
	} while (gen != cc_r8(d, CC_CONFIG_GENERATION) && ++tries < 100);
}

int virtio_pci_open(unsigned type, struct virtio_dev *d, const char *what, const char *hint)
{
	uint16_t id = (uint16_t)(VIRTIO_PCI_DEVICE_MIN + type);
	int bdf = pci_find(VIRTIO_PCI_VENDOR, id, id);
	if (bdf < 0) {
		con_printf("%s: no %s function (1af4:%04x) on PCI bus 0 (%s)\n", what, what, id, hint);
		return 1;
	}
	return virtio_pci_probe((unsigned)bdf, d);
}

/* ---- virtqueues ---- */

/* Three zeroed pages per queue. Split (2.7, alignment 16 / 2 / 4): descriptor table, available ring (6 + 2 *
 * 256 bytes with used_event), used ring (6 + 8 * 256 with avail_event). Packed (2.8.10.1, alignment 16 / 4 / 4):
 * descriptor ring (16 * 256 bytes), Driver Event Suppression, Device Event Suppression. */
static uint8_t vq_area[VIRTQ_MAX_QUEUES][3 * 4096] __attribute__((aligned(4096)));
static unsigned vq_areas_used;

int virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t max_size,
		       uint16_t msix_vector)
{
	if (vq_areas_used == VIRTQ_MAX_QUEUES) {
		con_printf("virtio: at most %u virtqueues are supported\n", VIRTQ_MAX_QUEUES);
		return 1;
	}
	int packed = (d->features >> VIRTIO_F_RING_PACKED) & 1;
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
	/* 2.7.10.1 / 4.1.4.3.1: a split ring's size is a power of 2; a packed ring's need not be (2.8.10.1). */
	if (!packed && (size & (size - 1))) {
		con_printf("virtio: queue %u size %u is not a power of 2\n", index, size);
		return 1;
	}
	cc_w16(d, CC_QUEUE_SIZE, size);

	uint8_t *area = vq_area[vq_areas_used++];
	memset(area, 0, 3 * 4096); /* split: used->flags starts at 0 (2.7.10.1); packed: "zero-initialized" (2.8.13) */
	memset(q, 0, sizeof(*q));
	q->index = index;
	q->size = size;
	q->packed = (uint8_t)packed;
	q->event_idx = (uint8_t)((d->features >> VIRTIO_F_RING_EVENT_IDX) & 1);
	q->nfree = size;
	uintptr_t desc = (uintptr_t)area, driver = desc + 4096, device = desc + 8192;
	if (packed) {
		q->pdesc = (volatile struct pvirtq_desc *)desc;
		q->driver_event = (volatile struct pvirtq_event_suppress *)driver;
		q->device_event = (volatile struct pvirtq_event_suppress *)device;
		q->avail_wrap = q->used_wrap = 1; /* 2.8.1: both ring wrap counters start at 1 */
	} else {
		q->desc = (volatile struct virtq_desc *)desc;
		q->avail = (volatile struct virtq_avail *)driver;
		q->used = (volatile struct virtq_used *)device;
		q->used_event = &q->avail->ring[size];
		q->avail_event = (volatile uint16_t *)&q->used->ring[size];
		for (uint16_t i = 0; i < size; i++) /* the free list: every descriptor, in order */
			q->link[i] = (uint16_t)(i + 1);
	}
	cc_w64(d, CC_QUEUE_DESC, desc); /* identity mapped: virtual == physical */
	cc_w64(d, CC_QUEUE_DRIVER, driver);
	cc_w64(d, CC_QUEUE_DEVICE, device);

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

const char *virtio_ring_name(const struct virtq *q)
{
	if (q->packed)
		return q->event_idx ? "packed+event-idx" : "packed";
	return q->event_idx ? "split+event-idx" : "split";
}

/* Used buffer notification suppression. Split (2.7.7): without EVENT_IDX the NO_INTERRUPT flag; with it the
 * flag is ignored and the device notifies when it writes the used ring entry at index used_event, so used_event
 * is kept half the 16-bit index space (0x8000) ahead of the next entry we expect, moved along as we consume. The
 * device is never more than a queue size (<= 256) ahead of us, so none of the entries it writes lands there.
 * (One behind our position would not do: the device decides after publishing a batch, and by then we may have
 * consumed all of it, putting "one behind" inside the batch.) Packed (2.8.10): RING_EVENT_FLAGS_DISABLE works
 * with or without EVENT_IDX. */
#define USED_EVENT_AWAY 0x8000
void virtq_disable_interrupts(struct virtq *q)
{
	q->no_interrupts = 1;
	if (q->packed) {
		q->driver_event->flags = RING_EVENT_FLAGS_DISABLE;
	} else if (q->event_idx) {
		*q->used_event = (uint16_t)(q->last_used + USED_EVENT_AWAY);
	} else {
		q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	}
}

static int add_split(struct virtq *q, const struct virtq_buf *b, unsigned n, uint16_t id)
{
	/* 2.7.13.1: take n free descriptors and chain them (the free list's order is their chain order: link[]
	 * keeps linking a chain in flight, so it can be returned in one piece). */
	uint16_t head = q->free_head, d = head;
	for (unsigned i = 0; i < n; i++) {
		volatile struct virtq_desc *e = &q->desc[d];
		e->addr = (uintptr_t)b[i].addr;
		e->len = b[i].len;
		e->flags = (uint16_t)((b[i].writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		e->next = i + 1 < n ? q->link[d] : 0;
		if (i + 1 < n)
			d = q->link[d];
	}
	q->free_head = q->link[d];
	q->head_id[head] = id;
	q->chain_len[head] = (uint16_t)n;
	/* 2.7.13.2 and 2.7.13.3: ring entry, barrier, then idx (which is free running and wraps at 65536). */
	q->avail->ring[q->next_avail & (q->size - 1)] = head;
	virtio_wmb();
	q->avail->idx = ++q->next_avail;
	q->unkicked++;
	return 0;
}

static int add_packed(struct virtq *q, const struct virtq_buf *b, unsigned n, uint16_t id)
{
	/* 2.8.21.1: each descriptor gets AVAIL = the Driver Ring Wrap Counter and USED = its inverse, as it was
	 * where that descriptor sits (the counter flips after the ring's last descriptor). The first descriptor's
	 * flags are written last, after a barrier: that store exposes the whole chain (2.8.6). The buffer ID goes
	 * in every descriptor of the chain; the spec needs it in the last. */
	uint16_t first = q->avail_pos, first_flags = 0;
	for (unsigned i = 0; i < n; i++) {
		volatile struct pvirtq_desc *e = &q->pdesc[q->avail_pos];
		uint16_t f = (uint16_t)((b[i].writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0) |
					(q->avail_wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED));
		e->addr = (uintptr_t)b[i].addr;
		e->len = b[i].len;
		e->id = id;
		if (i == 0)
			first_flags = f;
		else
			e->flags = f;
		if (++q->avail_pos == q->size) {
			q->avail_pos = 0;
			q->avail_wrap ^= 1;
		}
	}
	q->chain_len[id] = (uint16_t)n;
	virtio_wmb();
	q->pdesc[first].flags = first_flags;
	q->unkicked = (uint16_t)(q->unkicked + n);
	return 0;
}

int virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned n, uint16_t id)
{
	if (n == 0 || n > q->nfree || id >= q->size || q->id_busy[id]) {
		con_printf("virtio: queue %u: cannot add a buffer of %u elements as ID %u (%u descriptors free%s)\n",
			   q->index, n, id, q->nfree, id < q->size && q->id_busy[id] ? ", ID in flight" : "");
		return 1;
	}
	q->nfree = (uint16_t)(q->nfree - n);
	q->id_busy[id] = 1;
	q->inflight++;
	q->made_avail++;
	return q->packed ? add_packed(q, bufs, n, id) : add_split(q, bufs, n, id);
}

/* Whether the device asked to be notified about what was made available since the last decision: `new` is
 * where the next buffer will go and `count` how many went since (in avail idx units for the split ring, in
 * descriptors for the packed one). */
static int need_notify(struct virtq *q)
{
	uint16_t count = q->unkicked;
	if (!q->packed) {
		if (!q->event_idx) /* 2.7.10: without EVENT_IDX, notify unless the device set NO_NOTIFY */
			return !(q->used->flags & VIRTQ_USED_F_NO_NOTIFY);
		/* 2.7.10 with EVENT_IDX: notify if one of the entries just placed went at avail index avail_event,
		 * i.e. avail_event lies in [old, new) modulo 2^16. */
		uint16_t event = *q->avail_event, new_idx = q->next_avail, old_idx = (uint16_t)(new_idx - count);
		return (uint16_t)(event - old_idx) < (uint16_t)(new_idx - old_idx);
	}
	/* 2.8.10 / 2.8.14: the Device Event Suppression structure, read as one 32-bit word so desc and flags
	 * belong together. */
	uint32_t w = *(volatile uint32_t *)q->device_event;
	unsigned flags = (w >> 16) & 3;
	if (flags == RING_EVENT_FLAGS_DISABLE)
		return 0;
	if (flags != RING_EVENT_FLAGS_DESC || !q->event_idx || count >= q->size)
		return 1; /* ENABLE, the reserved value, or more than a lap since the last decision */
	/* RING_EVENT_FLAGS_DESC: notify if the descriptor at (off, wrap) was made available in this batch. On a
	 * line that counts descriptors across laps, positions in the current lap (wrap counter = avail_wrap) are
	 * 0 .. size-1 and those of the previous lap -size .. -1; the batch is [new - count, new). */
	int off = (int)(w & 0x7FFF), wrap = (int)((w >> 15) & 1);
	int event = wrap == q->avail_wrap ? off : off - (int)q->size;
	int new_pos = q->avail_pos, old_pos = new_pos - (int)count;
	return event >= old_pos && event < new_pos;
}

/* 2.7.13.4 / 2.8.21.2 and 4.1.5.2: the barrier orders our ring stores before the read of the device's
 * suppression state; the notification is a 16-bit write of the queue index to the queue's notify address
 * (VIRTIO_F_NOTIFICATION_DATA is not negotiated). That store is an MMIO write that exits to the VMM, or with an
 * ioeventfd wakes the VMM's data-plane thread; either way the ring stores before it are visible. */
void virtq_kick(struct virtq *q)
{
	if (!q->unkicked)
		return;
	virtio_mb();
	int notify = need_notify(q);
	q->unkicked = 0;
	if (notify)
		mmio_w16(q->notify_addr, q->index);
}

static int pop_split(struct virtq *q, uint16_t *id, uint32_t *len)
{
	/* 2.7.14: used->idx is where the device will put its next entry; entries before it are ours to read. */
	if (q->used->idx == q->last_used)
		return 0;
	virtio_rmb();
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
	uint32_t head = e->id;
	*len = e->len;
	if (head >= q->size || q->chain_len[head] == 0) {
		con_printf("virtio: queue %u: used ring entry %u names descriptor %u, which heads no chain in flight\n",
			   q->index, q->last_used, head);
		return -1;
	}
	q->last_used++;
	if (q->event_idx && q->no_interrupts)
		*q->used_event = (uint16_t)(q->last_used + USED_EVENT_AWAY);
	/* Return the chain to the free list: its descriptors are still linked in link[]. */
	uint16_t n = q->chain_len[head], tail = (uint16_t)head;
	for (uint16_t i = 1; i < n; i++)
		tail = q->link[tail];
	q->link[tail] = q->free_head;
	q->free_head = (uint16_t)head;
	q->chain_len[head] = 0;
	q->nfree = (uint16_t)(q->nfree + n);
	*id = q->head_id[head];
	return 1;
}

static int pop_packed(struct virtq *q, uint16_t *id, uint32_t *len)
{
	/* 2.8.22: the next used descriptor is at used_pos; it is used when its AVAIL and USED flags both equal the
	 * wrap counter we expect there. */
	volatile struct pvirtq_desc *e = &q->pdesc[q->used_pos];
	uint16_t flags = e->flags;
	unsigned want = q->used_wrap;
	if (!!(flags & VIRTQ_DESC_F_USED) != want || !!(flags & VIRTQ_DESC_F_AVAIL) != want)
		return 0;
	virtio_rmb();
	uint16_t bid = e->id;
	/* 2.8.4: the used descriptor's len is what the device wrote, and only meaningful if it set WRITE. */
	*len = (flags & VIRTQ_DESC_F_WRITE) ? e->len : 0;
	if (bid >= q->size || !q->id_busy[bid]) {
		con_printf("virtio: queue %u: used descriptor %u names buffer ID %u, which is not in flight\n", q->index,
			   q->used_pos, bid);
		return -1;
	}
	/* 2.8.6: one used descriptor stands for the whole chain; skip the rest of it. */
	uint16_t n = q->chain_len[bid];
	q->used_pos = (uint16_t)(q->used_pos + n);
	if (q->used_pos >= q->size) {
		q->used_pos = (uint16_t)(q->used_pos - q->size);
		q->used_wrap ^= 1;
	}
	q->nfree = (uint16_t)(q->nfree + n);
	*id = bid;
	return 1;
}

int virtq_pop_used(struct virtq *q, uint16_t *id, uint32_t *len)
{
	int r = q->packed ? pop_packed(q, id, len) : pop_split(q, id, len);
	if (r == 1) {
		q->id_busy[*id] = 0;
		q->inflight--;
		q->used_count++;
	}
	return r;
}

void virtq_print_state(struct virtq *q)
{
	con_printf("virtio: queue %u (%s, size %u): %lu buffers made available, %lu used, %u in flight, %u "
		   "descriptors free; ",
		   q->index, virtio_ring_name(q), q->size, q->made_avail, q->used_count, q->inflight, q->nfree);
	if (q->packed) {
		con_printf("next avail %u wrap %u, next used %u wrap %u (flags there 0x%x), device event 0x%x/0x%x\n",
			   q->avail_pos, q->avail_wrap, q->used_pos, q->used_wrap, q->pdesc[q->used_pos].flags,
			   q->device_event->flags, q->device_event->desc);
	} else {
		con_printf("avail idx %u, used idx %u, consumed %u, used flags 0x%x", q->next_avail, q->used->idx,
			   q->last_used, q->used->flags);
		if (q->event_idx)
			con_printf(", avail_event %u, used_event %u", *q->avail_event, *q->used_event);
		con_putc('\n');
	}
}

int virtq_wait_used(struct virtq *q, struct virtio_dev *d, uint16_t *id, uint32_t *len)
{
	virtq_kick(q);
	struct bounded_wait w;
	wait_start(&w);
	int r;
	while ((r = virtq_pop_used(q, id, len)) == 0) {
		if (wait_expired(&w)) {
			con_printf("virtio: timed out waiting for a used buffer on queue %u (device status 0x%x)\n",
				   q->index, virtio_get_status(d));
			virtq_print_state(q);
			return 0;
		}
		cpu_pause();
	}
	return r == 1;
}

int virtio_wait_change(volatile uint32_t *counter, uint32_t old)
{
	struct bounded_wait w;
	wait_start(&w);
	while (*counter == old) {
		if (wait_expired(&w))
			return 0;
		cpu_pause();
	}
	return 1;
}

/* ---- program arguments ---- */

int virtio_parse_args(int argc, char **argv, uint64_t *nums, int max_nums, uint64_t *ring_features)
{
	int n = 0;
	*ring_features = 0;
	for (int i = 1; i < argc; i++) {
		if (str_eq(argv[i], "packed")) {
			*ring_features |= 1ull << VIRTIO_F_RING_PACKED;
		} else if (str_eq(argv[i], "event-idx")) {
			*ring_features |= 1ull << VIRTIO_F_RING_EVENT_IDX;
		} else if (n < max_nums && parse_u64(argv[i], &nums[n])) {
			n++;
		} else {
			con_printf("%s: bad argument '%s'\n", argv[0], argv[i]);
			return -1;
		}
	}
	return n;
}
