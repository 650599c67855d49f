/* micro guest: virtio over PCI (modern interface only) with one split virtqueue. Section numbers refer to the
 * OASIS virtio 1.2 specification. */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "micro.h"

/* 4.1.2 PCI Device Discovery: vendor 0x1AF4, device 0x1040 + virtio device ID (modern, non-transitional). */
#define VIRTIO_PCI_VENDOR 0x1AF4
#define VIRTIO_PCI_DEVICE_MIN 0x1040
#define VIRTIO_PCI_DEVICE_MAX 0x107F
#define VIRTIO_ID_BLOCK 2

/* 2.1 Device Status Field */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* 6 Reserved Feature Bits */
#define VIRTIO_F_VERSION_1 32

/* 4.1.5.1.2 MSI-X Vector Configuration */
#define VIRTIO_MSI_NO_VECTOR 0xFFFF

/* 2.7.5 The Virtqueue Descriptor Table, 2.7.6 The Virtqueue Available Ring, 2.7.8 The Virtqueue Used Ring.
 * Everything is little endian, as x86 is. */
struct virtq_desc {
	uint64_t addr; /* guest-physical */
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2 /* device write-only (otherwise device read-only) */

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
};

struct virtq {
	uint16_t index;
	uint16_t size;
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	uintptr_t notify_addr;
	uint16_t next_avail; /* our copy of avail->idx */
	uint16_t last_used; /* used ring entries consumed so far */
	uint16_t unkicked; /* chains published since the last notification */
};

/* Barriers for the rings (2.7.13 Supplying Buffers to The Device, 2.7.14 Receiving Used Buffers). The device is
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
 * them, and sets COMMAND to memory decode + bus master + INTx disabled. Prints why and returns 1 on failure. */
int virtio_pci_probe(unsigned bdf, struct virtio_dev *d);
/* 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, read the features, write `accept` (must be offered), FEATURES_OK
 * and check that it stuck. 0 ok; on failure sets FAILED, prints and returns 1. */
int virtio_negotiate(struct virtio_dev *d, uint64_t accept);
/* 4.1.5.1.3 Virtqueue Configuration for queue `index`: size = min(offered, max_size), rings zeroed, addresses
 * written, MSI-X vector (VIRTIO_MSI_NO_VECTOR for none) set and checked, enabled. Only one queue is supported. */
int virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t max_size,
		       uint16_t msix_vector);
void virtio_driver_ok(struct virtio_dev *d); /* 3.1.1 step 8 */
void virtio_set_failed(struct virtio_dev *d);
uint8_t virtio_get_status(struct virtio_dev *d);
/* Device configuration reads with the config_generation retry loop (2.5.1 / 4.1.4.3). */
uint32_t virtio_cfg_read32(struct virtio_dev *d, unsigned off);
uint64_t virtio_cfg_read64(struct virtio_dev *d, unsigned off);

void virtq_set_desc(struct virtq *q, uint16_t i, const volatile void *buf, uint32_t len, uint16_t flags,
		    uint16_t next);
void virtq_publish(struct virtq *q, uint16_t head); /* put a chain head in the available ring and expose it */
void virtq_kick(struct virtq *q); /* notify the device unless it suppressed notifications */
/* Takes the next used element if there is one: 1 and *id / *len set, else 0. */
int virtq_pop_used(struct virtq *q, uint32_t *id, uint32_t *len);
/* Kicks, then polls until a used element arrives (1) or the wait times out (0, after printing). */
int virtq_wait_used(struct virtq *q, struct virtio_dev *d, uint32_t *id, uint32_t *len);
/* Polls *counter until it differs from old, with the same time bound: 1 if it changed. */
int virtio_wait_change(volatile uint32_t *counter, uint32_t old);

void virtio_pci_print_caps(unsigned bdf); /* for the pci program */

#endif
