/* micro guest: Intel 82540EM ("e1000") registers and descriptors, from Intel's "PCI/PCI-X Family of Gigabit
 * Ethernet Controllers Software Developer's Manual" (8254x SDM): section 13 (registers, Table 13-2 for the
 * offsets), 3.2.3 (receive descriptor), 3.3.3 (legacy transmit descriptor), 5 (EEPROM). Only what e1000.c uses. */
#ifndef E1000_H
#define E1000_H

#include "micro.h"

#define E1000_VENDOR 0x8086
#define E1000_DEV_82540EM 0x100E

/* PCI configuration header (type 0) */
#define PCI_INTERRUPT_LINE 0x3C
#define PCI_INTERRUPT_PIN 0x3D

/* ---- BAR0 register offsets ---- */
#define E1000_CTRL 0x0000
#define E1000_STATUS 0x0008
#define E1000_EERD 0x0014
#define E1000_FCAL 0x0028
#define E1000_FCAH 0x002C
#define E1000_FCT 0x0030
#define E1000_ICR 0x00C0
#define E1000_ICS 0x00C8
#define E1000_IMS 0x00D0
#define E1000_IMC 0x00D8
#define E1000_RCTL 0x0100
#define E1000_FCTTV 0x0170
#define E1000_TCTL 0x0400
#define E1000_TIPG 0x0410
#define E1000_RDBAL 0x2800
#define E1000_RDBAH 0x2804
#define E1000_RDLEN 0x2808
#define E1000_RDH 0x2810
#define E1000_RDT 0x2818
#define E1000_RDTR 0x2820
#define E1000_TDBAL 0x3800
#define E1000_TDBAH 0x3804
#define E1000_TDLEN 0x3808
#define E1000_TDH 0x3810
#define E1000_TDT 0x3818
#define E1000_TIDV 0x3820
#define E1000_MTA 0x5200 /* 128 dwords */
#define E1000_MTA_ENTRIES 128
#define E1000_RAL(n) (0x5400 + 8 * (n)) /* 16 receive address pairs */
#define E1000_RAH(n) (0x5404 + 8 * (n))
#define E1000_RA_ENTRIES 16

/* CTRL (13.4.1) */
#define CTRL_FD (1u << 0)
#define CTRL_LRST (1u << 3)
#define CTRL_ASDE (1u << 5)
#define CTRL_SLU (1u << 6)
#define CTRL_ILOS (1u << 7)
#define CTRL_FRCSPD (1u << 11)
#define CTRL_FRCDPLX (1u << 12)
#define CTRL_RST (1u << 26)
#define CTRL_RFCE (1u << 27)
#define CTRL_TFCE (1u << 28)
#define CTRL_VME (1u << 30)
#define CTRL_PHY_RST (1u << 31)

/* STATUS (13.4.2) */
#define STATUS_FD (1u << 0)
#define STATUS_LU (1u << 1)

/* EERD (13.4.4), the 8254x layout: START bit 0, DONE bit 4, ADDR 15:8, DATA 31:16 */
#define EERD_START (1u << 0)
#define EERD_DONE (1u << 4)
#define EERD_ADDR_SHIFT 8
#define EERD_DATA_SHIFT 16

/* EEPROM map (5.6): words 0-2 the Ethernet address (byte 0 in the low byte of word 0), words 0x00-0x3F sum to
 * 0xBABA (word 0x3F is the checksum) */
#define EEPROM_MAC_WORDS 3
#define EEPROM_CSUM_WORDS 0x40
#define EEPROM_CSUM_SUM 0xBABA

/* Interrupt causes: ICR, ICS, IMS and IMC share the layout (13.4.17-21) */
#define ICR_TXDW (1u << 0) /* a transmit descriptor was written back (RS) */
#define ICR_TXQE (1u << 1)
#define ICR_LSC (1u << 2) /* link status change */
#define ICR_RXSEQ (1u << 3)
#define ICR_RXDMT0 (1u << 4)
#define ICR_RXO (1u << 6)
#define ICR_RXT0 (1u << 7) /* receiver timer: a frame was stored */

/* RCTL (13.4.22) */
#define RCTL_EN (1u << 1)
#define RCTL_SBP (1u << 2)
#define RCTL_UPE (1u << 3)
#define RCTL_MPE (1u << 4)
#define RCTL_LPE (1u << 5)
#define RCTL_BAM (1u << 15)
#define RCTL_BSIZE_2048 (0u << 16) /* with BSEX 0 */
#define RCTL_BSEX (1u << 25)
#define RCTL_SECRC (1u << 26)

/* TCTL (13.4.33) */
#define TCTL_EN (1u << 1)
#define TCTL_PSP (1u << 3)
#define TCTL_CT_SHIFT 4
#define TCTL_COLD_SHIFT 12
#define TCTL_CT 0x0F /* recommended collision threshold */
#define TCTL_COLD_FD 0x40 /* collision distance, full duplex: 64 byte times */

/* TIPG (13.4.34): IPGT 9:0, IPGR1 19:10, IPGR2 29:20; the manual's values for 10/100/1000BASE-T on the 82540 */
#define TIPG_IPGT 10
#define TIPG_IPGR1 8
#define TIPG_IPGR2 6

#define RAH_AV (1u << 31)

/* Legacy transmit descriptor (3.3.3) */
struct e1000_tx_desc {
	uint64_t addr;
	uint16_t length;
	uint8_t cso;
	uint8_t cmd;
	uint8_t status; /* STA in 3:0, reserved 7:4 */
	uint8_t css;
	uint16_t special;
};
#define TXD_CMD_EOP (1u << 0)
#define TXD_CMD_IFCS (1u << 1)
#define TXD_CMD_RS (1u << 3)
#define TXD_CMD_DEXT (1u << 5)
#define TXD_CMD_IDE (1u << 7)
#define TXD_STAT_DD (1u << 0)
#define TXD_STAT_EC (1u << 1) /* excess collisions */
#define TXD_STAT_LC (1u << 2) /* late collision */

/* Receive descriptor (3.2.3) */
struct e1000_rx_desc {
	uint64_t addr;
	uint16_t length;
	uint16_t csum;
	uint8_t status;
	uint8_t errors;
	uint16_t special;
};
#define RXD_STAT_DD (1u << 0)
#define RXD_STAT_EOP (1u << 1)
#define RXD_ERR_CE (1u << 0)  /* CRC or alignment error */
#define RXD_ERR_SE (1u << 1)  /* symbol error */
#define RXD_ERR_SEQ (1u << 2) /* sequence error */
#define RXD_ERR_CXE (1u << 4) /* carrier extension error */
#define RXD_ERR_RXE (1u << 7) /* RX data error */
#define RXD_ERR_FRAME (RXD_ERR_CE | RXD_ERR_SE | RXD_ERR_SEQ | RXD_ERR_CXE | RXD_ERR_RXE)

_Static_assert(sizeof(struct e1000_tx_desc) == 16, "legacy transmit descriptor is 16 bytes");
_Static_assert(sizeof(struct e1000_rx_desc) == 16, "receive descriptor is 16 bytes");

/* ---- I/O APIC (82093AA datasheet): indirect registers through IOREGSEL / IOWIN ---- */
#define IOAPIC_BASE 0xFEC00000UL
#define IOAPIC_IOREGSEL 0x00
#define IOAPIC_IOWIN 0x10
#define IOAPIC_REG_VER 0x01 /* bits 23:16: maximum redirection entry */
#define IOAPIC_REG_REDTBL(pin) (0x10 + 2 * (pin)) /* low dword; the high dword (destination) follows */
#define IOAPIC_RTE_POLARITY_LOW (1u << 13)
#define IOAPIC_RTE_REMOTE_IRR (1u << 14)
#define IOAPIC_RTE_LEVEL (1u << 15)
#define IOAPIC_RTE_MASKED (1u << 16)
#define IOAPIC_RTE_DEST_SHIFT 24 /* in the high dword: physical destination APIC ID */

#define LAPIC_ID 0x20
#define LAPIC_ISR0 0x100
#define LAPIC_IRR0 0x200

#endif
