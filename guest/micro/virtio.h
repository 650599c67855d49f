/* micro guest: virtio over PCI (modern interface only) with split (2.7) and packed (2.8) virtqueues. Section
 * numbers refer to the OASIS virtio 1.2 specification. */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "micro.h"
#include "wait.h"

/* 4.1.2 PCI Device Discovery: vendor 0x1AF4, device 0x1040 + virtio device ID (modern, non-transitional). */
#define VIRTIO_PCI_VENDOR 0x1AF4
#define VIRTIO_PCI_DEVICE_MIN 0x1040
#define VIRTIO_PCI_DEVICE_MAX 0x107F
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3

/* 2.1 Device Status Field */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* 6 Reserved Feature Bits */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_RING_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_RING_PACKED 34

/* 4.1.5.1.2 MSI-X Vector Configuration */
#define VIRTIO_MSI_NO_VECTOR 0xFFFF

/* ---- split virtqueue (2.7) ----
 * 2.7.5 The Virtqueue Descriptor Table, 2.7.6 The Virtqueue Available Ring, 2.7.8 The Virtqueue Used Ring.
 * Everything is little endian, as x86 is. */
struct virtq_desc {
	uint64_t addr; /* guest-physical */
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2 /* device write-only (otherwise device read-only) */

/* With VIRTIO_F_RING_EVENT_IDX the available ring ends with used_event (after ring[size]) and the used ring
 * with avail_event (after ring[size]); 2.7.7 and 2.7.10. */
struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];
};
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_used_elem {
	uint32_t id; /* head of the used descriptor chain */
	uint32_t len; /* bytes written into the chain's device-writable buffers */
};
struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[];
};
#define VIRTQ_USED_F_NO_NOTIFY 1

/* ---- packed virtqueue (2.8) ----
 * 2.8.13 struct pvirtq_desc, 2.8.14 struct pvirtq_event_suppress. A descriptor is available when its AVAIL
 * flag equals the driver's ring wrap counter and USED does not; used when both equal the device's. */
struct pvirtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t id; /* buffer ID */
	uint16_t flags;
};
#define VIRTQ_DESC_F_AVAIL (1u << 7)
#define VIRTQ_DESC_F_USED (1u << 15)

struct pvirtq_event_suppress {
	uint16_t desc; /* bits 0-14 desc_event_off, bit 15 desc_event_wrap */
	uint16_t flags; /* bits 0-1 desc_event_flags */
};
#define RING_EVENT_FLAGS_ENABLE 0x0
#define RING_EVENT_FLAGS_DISABLE 0x1
#define RING_EVENT_FLAGS_DESC 0x2 /* only with VIRTIO_F_RING_EVENT_IDX */

#define VIRTQ_MAX_SIZE 256

struct virtio_dev {
	unsigned bdf;
	uintptr_t common; /* struct virtio_pci_common_cfg (4.1.4.3) */
	uintptr_t notify; /* notification structure base (4.1.4.4) */
	uint32_t notify_mult; /* notify_off_multiplier */
	uint32_t notify_len;
	uintptr_t isr; /* ISR status byte (4.1.4.5) */
	uintptr_t devcfg; /* device-specific configuration (4.1.4.6) */
	uint32_t devcfg_len;
	uint64_t device_features;
	uint64_t features; /* what the driver accepted (set by virtio_negotiate) */
};

/* One element of a buffer: the device-readable elements of a buffer come before the device-writable ones (2.7.5.2,
 * 2.8.17). */
struct virtq_buf {
	const volatile void *addr;
	uint32_t len;
	int writable;
};

/* A virtqueue of either layout; which one follows the features negotiated on the device. The caller names
 * each buffer it makes available with an ID below the queue size (the packed ring's Buffer ID; for the split
 * ring the queue maps descriptor chain heads back to it), and gets the ID back when the buffer is used. */
struct virtq {
	uint16_t index;
	uint16_t size;
	uint8_t packed; /* VIRTIO_F_RING_PACKED negotiated */
	uint8_t event_idx; /* VIRTIO_F_RING_EVENT_IDX negotiated */
	uint8_t no_interrupts; /* virtq_disable_interrupts was called: used buffer notifications are suppressed */
	uintptr_t notify_addr;
	uint16_t nfree; /* descriptors not in flight */
	uint16_t unkicked; /* since the last notification decision: chains (split) or descriptors (packed) */
	uint32_t inflight; /* buffers made available and not yet used */
	uint64_t made_avail, used_count; /* buffers, for the state report */
	/* split */
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	volatile uint16_t *used_event; /* avail->ring[size] */
	volatile uint16_t *avail_event; /* after used->ring[size] */
	uint16_t next_avail; /* our copy of avail->idx */
	uint16_t last_used; /* used ring entries consumed so far */
	uint16_t free_head; /* first free descriptor; link[] chains the free ones and each chain in flight */
	/* packed */
	volatile struct pvirtq_desc *pdesc;
	volatile struct pvirtq_event_suppress *driver_event; /* Driver Area: written by us, read by the device */
	volatile struct pvirtq_event_suppress *device_event; /* Device Area: written by the device */
	uint16_t avail_pos, used_pos; /* next descriptor to make available / to look at for a used one */
	uint8_t avail_wrap, used_wrap; /* Driver Ring Wrap Counter, and the wrap counter expected at used_pos */
	/* split: indexed by descriptor (link) or chain head (head_id, chain_len); packed: chain_len by buffer ID */
	uint16_t link[VIRTQ_MAX_SIZE];
	uint16_t head_id[VIRTQ_MAX_SIZE];
	uint16_t chain_len[VIRTQ_MAX_SIZE];
	uint8_t id_busy[VIRTQ_MAX_SIZE];
};

/* Barriers for the rings (2.7.13 / 2.8.21 Supplying Buffers to The Device, 2.7.14 / 2.8.22 Receiving Used
 * Buffers). The packed ring needs the same three: before the first descriptor's flags (which expose the buffer),
 * between that store and reading the Device Event Suppression structure, and after seeing a used flag. The device is
 * another CPU (a VMM thread) reading and writing our write-back RAM. x86 is TSO: stores become visible in program
 * order and loads are not reordered with older loads; the only reordering is a later load passing an earlier
 * store (which sits in the store buffer). Each barrier also has a "memory" clobber, so gcc keeps the order too. */

/* Before publishing avail->idx (2.7.13.3.1: "a suitable memory barrier before the idx update"): the descriptors
 * and the ring entry must be visible first. TSO already keeps ordinary stores in order, so for this guest the
 * compiler barrier does the work; sfence additionally orders weakly-ordered stores (non-temporal or to WC
 * memory), which we never make but which would otherwise slip past. */
static inline void virtio_wmb(void) { __asm__ volatile("sfence" : : : "memory"); }
/* Between the avail->idx store and the read of used->flags (2.7.13.4.1: "a suitable memory barrier before
 * reading flags"): store-then-load is the one order TSO does not keep, so this needs mfence. */
static inline void virtio_mb(void) { __asm__ volatile("mfence" : : : "memory"); }
/* After seeing used->idx advance, before reading the entry and the buffers the device wrote: loads stay in order
 * on x86, so only the compiler must be stopped. */
static inline void virtio_rmb(void) { __asm__ volatile("" : : : "memory"); }

/* Finds the virtio structures through the vendor-specific capabilities (4.1.4) of the function at bdf, checks
 * them, and sets COMMAND to memory decode + bus master + INTx disabled. Prints why and returns 1 on failure.
 * The first call also calibrates the TSC (virtio_wait_start). */
int virtio_pci_probe(unsigned bdf, struct virtio_dev *d);
/* Finds the first modern virtio function of this device type (0x1040 + type) and probes it; prints `what` and
 * `hint` if there is none. */
int virtio_pci_open(unsigned type, struct virtio_dev *d, const char *what, const char *hint);
/* 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, read the features, write `accept` (must be offered), FEATURES_OK
 * and check that it stuck. 0 ok; on failure sets FAILED, prints and returns 1. */
int virtio_negotiate(struct virtio_dev *d, uint64_t accept);
/* 4.1.5.1.3 Virtqueue Configuration for queue `index`, in the layout the negotiated features select: size =
 * min(offered, max_size, VIRTQ_MAX_SIZE) (a power of 2 for the split ring), areas zeroed, addresses written,
 * MSI-X vector (VIRTIO_MSI_NO_VECTOR for none) set and checked, enabled. At most VIRTQ_MAX_QUEUES queues. */
#define VIRTQ_MAX_QUEUES 4
int virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t max_size,
		       uint16_t msix_vector);
void virtio_driver_ok(struct virtio_dev *d); /* 3.1.1 step 8 */
void virtio_set_failed(struct virtio_dev *d);
uint8_t virtio_get_status(struct virtio_dev *d);
/* Device configuration reads with the config_generation retry loop (2.5.1 / 4.1.4.3). */
uint32_t virtio_cfg_read32(struct virtio_dev *d, unsigned off);
uint64_t virtio_cfg_read64(struct virtio_dev *d, unsigned off);
void virtio_cfg_read_bytes(struct virtio_dev *d, unsigned off, uint8_t *out, unsigned n);

/* Polled use: asks the device for no used buffer notifications (split: VIRTQ_AVAIL_F_NO_INTERRUPT, or with
 * EVENT_IDX a used_event kept just behind the used index; packed: RING_EVENT_FLAGS_DISABLE). */
void virtq_disable_interrupts(struct virtq *q);
/* Makes one buffer of n elements available under `id` (< q->size, not in flight). It is exposed at once (avail
 * idx, or the first descriptor's flags) but only notified by virtq_kick. 1 if there are not enough free
 * descriptors or the ID is bad or busy (a driver bug: printed). */
int virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned n, uint16_t id);
/* Notifies the device of what was added since the last call, unless it suppressed notifications (flags, or
 * avail_event / the Device Event Suppression offset with EVENT_IDX). */
void virtq_kick(struct virtq *q);
/* Takes the next used buffer if there is one: 1 with *id and *len (bytes the device wrote) set, 0 if none,
 * -1 if the device named an ID that is not in flight (printed). */
int virtq_pop_used(struct virtq *q, uint16_t *id, uint32_t *len);
/* Kicks, then polls until a used buffer arrives (1) or the wait times out or the device misbehaves (0, after
 * printing). */
int virtq_wait_used(struct virtq *q, struct virtio_dev *d, uint16_t *id, uint32_t *len);
/* Prints the queue's ring state on one line (for timeouts). */
void virtq_print_state(struct virtq *q);
/* Polls *counter until it differs from old, with the same time bound: 1 if it changed. */
int virtio_wait_change(volatile uint32_t *counter, uint32_t old);

/* Bounded waits: wait.h (wait_start / wait_expired, WAIT_SECONDS). */

/* Program arguments shared by the virtio programs: up to max_nums decimal numbers (in order) and the words
 * "packed" (VIRTIO_F_RING_PACKED) and "event-idx" (VIRTIO_F_RING_EVENT_IDX), in any order. Returns the number
 * of numbers found, or -1 after printing what was wrong. *ring_features gets the feature bits asked for. */
int virtio_parse_args(int argc, char **argv, uint64_t *nums, int max_nums, uint64_t *ring_features);
const char *virtio_ring_name(const struct virtq *q); /* "split" or "packed", plus "+event-idx" */

void virtio_pci_print_caps(unsigned bdf); /* for the pci program */

#endif
