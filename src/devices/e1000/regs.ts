/**
 * Register offsets, bit fields and descriptor layouts of the Intel 82540EM, from the "PCI/PCI-X Family of Gigabit
 * Ethernet Controllers Software Developer's Manual" (8254x SDM, rev. 4.0): §13 register descriptions (Table 13-2
 * register summary), §3.2 receive descriptors, §3.3 transmit descriptors, §5 EEPROM, §8 PHY (M88E1011-compatible
 * register set of the integrated PHY).
 */

/** PCI identity of the emulated part: an Intel PRO/1000 MT Desktop Adapter (82540EM). */
export const E1000_PCI_IDS = {
  vendorId: 0x8086,
  deviceId: 0x100e,
  subsystemVendorId: 0x8086,
  subsystemId: 0x001e,
  /** Any value works for the Linux driver: it keys 82540 behaviour off the device ID alone. */
  revisionId: 0x03,
  /** Network controller, Ethernet (PCI code and ID assignment, class 02h sub-class 00h). */
  classCode: 0x020000,
  /** INTA# */
  interruptPin: 1 as const,
} as const;

/** BAR layout: BAR0 the memory-mapped registers (128 KiB, SDM §4.1), BAR1 the IOADDR/IODATA window. */
export const E1000_BARS = {
  mmio: { index: 0, kind: "mmio32" as const, size: 0x20000 },
  io: { index: 1, kind: "io" as const, size: 0x40 },
} as const;

/** Size of the register space (BAR0). */
export const E1000_MMIO_SIZE = 0x20000;
/** Size of the I/O BAR: IOADDR at 0, IODATA at 4, the rest reserved. */
export const E1000_IO_SIZE = 0x40;

// Register offsets (SDM Table 13-2).
export const REG = {
  CTRL: 0x0000,
  STATUS: 0x0008,
  EECD: 0x0010,
  EERD: 0x0014,
  CTRL_EXT: 0x0018,
  FLA: 0x001c,
  MDIC: 0x0020,
  FCAL: 0x0028,
  FCAH: 0x002c,
  FCT: 0x0030,
  VET: 0x0038,
  ICR: 0x00c0,
  ITR: 0x00c4,
  ICS: 0x00c8,
  IMS: 0x00d0,
  IMC: 0x00d8,
  RCTL: 0x0100,
  FCTTV: 0x0170,
  TXCW: 0x0178,
  RXCW: 0x0180,
  TCTL: 0x0400,
  TIPG: 0x0410,
  AIT: 0x0458,
  LEDCTL: 0x0e00,
  PBA: 0x1000,
  FCRTL: 0x2160,
  FCRTH: 0x2168,
  RDFH: 0x2410,
  RDFT: 0x2418,
  RDFHS: 0x2420,
  RDFTS: 0x2428,
  RDFPC: 0x2430,
  RDBAL: 0x2800,
  RDBAH: 0x2804,
  RDLEN: 0x2808,
  RDH: 0x2810,
  RDT: 0x2818,
  RDTR: 0x2820,
  RXDCTL: 0x2828,
  RADV: 0x282c,
  RSRPD: 0x2c00,
  TXDMAC: 0x3000,
  TDFH: 0x3410,
  TDFT: 0x3418,
  TDFHS: 0x3420,
  TDFTS: 0x3428,
  TDFPC: 0x3430,
  TDBAL: 0x3800,
  TDBAH: 0x3804,
  TDLEN: 0x3808,
  TDH: 0x3810,
  TDT: 0x3818,
  TIDV: 0x3820,
  TXDCTL: 0x3828,
  TADV: 0x382c,
  TSPMT: 0x3830,
  RXCSUM: 0x5000,
  MTA: 0x5200, // 128 entries
  RAL0: 0x5400, // RAL/RAH pairs, 16 entries, 8 bytes apart
  RAH0: 0x5404,
  VFTA: 0x5600, // 128 entries
  WUC: 0x5800,
  WUFC: 0x5808,
  WUS: 0x5810,
  MANC: 0x5820,
  IPAV: 0x5838,
  IP4AT: 0x5840,
  IP6AT: 0x5880,
  WUPL: 0x5900,
  WUPM: 0x5a00,
  FFLT: 0x5f00,
  FFMT: 0x9000,
  FFVT: 0x9800,
} as const;

// Statistics registers (SDM §13.7), all read-to-clear.
export const STAT = {
  CRCERRS: 0x4000,
  ALGNERRC: 0x4004,
  SYMERRS: 0x4008,
  RXERRC: 0x400c,
  MPC: 0x4010,
  SCC: 0x4014,
  ECOL: 0x4018,
  MCC: 0x401c,
  LATECOL: 0x4020,
  COLC: 0x4028,
  DC: 0x4030,
  TNCRS: 0x4034,
  SEC: 0x4038,
  CEXTERR: 0x403c,
  RLEC: 0x4040,
  XONRXC: 0x4048,
  XONTXC: 0x404c,
  XOFFRXC: 0x4050,
  XOFFTXC: 0x4054,
  FCRUC: 0x4058,
  PRC64: 0x405c,
  PRC127: 0x4060,
  PRC255: 0x4064,
  PRC511: 0x4068,
  PRC1023: 0x406c,
  PRC1522: 0x4070,
  GPRC: 0x4074,
  BPRC: 0x4078,
  MPRC: 0x407c,
  GPTC: 0x4080,
  GORCL: 0x4088,
  GORCH: 0x408c,
  GOTCL: 0x4090,
  GOTCH: 0x4094,
  RNBC: 0x40a0,
  RUC: 0x40a4,
  RFC: 0x40a8,
  ROC: 0x40ac,
  RJC: 0x40b0,
  MGTPRC: 0x40b4,
  MGTPDC: 0x40b8,
  MGTPTC: 0x40bc,
  TORL: 0x40c0,
  TORH: 0x40c4,
  TOTL: 0x40c8,
  TOTH: 0x40cc,
  TPR: 0x40d0,
  TPT: 0x40d4,
  PTC64: 0x40d8,
  PTC127: 0x40dc,
  PTC255: 0x40e0,
  PTC511: 0x40e4,
  PTC1023: 0x40e8,
  PTC1522: 0x40ec,
  MPTC: 0x40f0,
  BPTC: 0x40f4,
  TSCTC: 0x40f8,
  TSCTFC: 0x40fc,
} as const;
export const STATS_FIRST = 0x4000;
export const STATS_LAST = 0x40fc;
/** Low halves of the 64-bit counters; the high half is at +4 and reading it clears the pair (SDM §13.7.31). */
export const STATS_64BIT_LOW: readonly number[] = [STAT.GORCL, STAT.GOTCL, STAT.TORL, STAT.TOTL];

// CTRL (SDM §13.4.1)
export const CTRL_FD = 1 << 0;
export const CTRL_ASDE = 1 << 5;
export const CTRL_SLU = 1 << 6;
export const CTRL_RST = 1 << 26;
export const CTRL_VME = 1 << 30;
export const CTRL_PHY_RST = 1 << 31;

// STATUS (SDM §13.4.2)
export const STATUS_FD = 1 << 0;
export const STATUS_LU = 1 << 1;
export const STATUS_SPEED_1000 = 2 << 6;

// EECD (SDM §13.4.3)
export const EECD_SK = 1 << 0;
export const EECD_CS = 1 << 1;
export const EECD_DI = 1 << 2;
export const EECD_DO = 1 << 3;
export const EECD_FWE_MASK = 3 << 4;
export const EECD_FWE_DISABLED = 1 << 4;
export const EECD_REQ = 1 << 6;
export const EECD_GNT = 1 << 7;
export const EECD_PRES = 1 << 8;
/** 82540: 0 = 64-word (6 address bits) Microwire EEPROM, 1 = 256 words. */
export const EECD_SIZE = 1 << 9;

// EERD (SDM §13.4.4, 8254x layout: DONE is bit 4, ADDR 15:8)
export const EERD_START = 1 << 0;
export const EERD_DONE = 1 << 4;
export const EERD_ADDR_SHIFT = 8;
export const EERD_DATA_SHIFT = 16;

// MDIC (SDM §13.4.6)
export const MDIC_DATA_MASK = 0xffff;
export const MDIC_REG_SHIFT = 16;
export const MDIC_PHY_SHIFT = 21;
export const MDIC_OP_WRITE = 1 << 26;
export const MDIC_OP_READ = 2 << 26;
export const MDIC_OP_MASK = 3 << 26;
export const MDIC_READY = 1 << 28;
export const MDIC_INT_EN = 1 << 29;
export const MDIC_ERROR = 1 << 30;
/** The integrated PHY answers at MDIO address 1. */
export const PHY_ADDRESS = 1;

// Interrupt causes: ICR/ICS/IMS/IMC share the layout (SDM §13.4.17-21).
export const ICR_TXDW = 1 << 0;
export const ICR_TXQE = 1 << 1;
export const ICR_LSC = 1 << 2;
export const ICR_RXSEQ = 1 << 3;
export const ICR_RXDMT0 = 1 << 4;
export const ICR_RXO = 1 << 6;
export const ICR_RXT0 = 1 << 7;
export const ICR_MDAC = 1 << 9;
export const ICR_RXCFG = 1 << 10;
export const ICR_PHYINT = 1 << 12;
export const ICR_GPI_SDP6 = 1 << 13;
export const ICR_GPI_SDP7 = 1 << 14;
export const ICR_TXD_LOW = 1 << 15;
export const ICR_SRPD = 1 << 16;
/** Bits that name a cause; bits above 16 are reserved on the 8254x. */
export const ICR_VALID = 0x1ffff;

// RCTL (SDM §13.4.22)
export const RCTL_EN = 1 << 1;
export const RCTL_SBP = 1 << 2;
export const RCTL_UPE = 1 << 3;
export const RCTL_MPE = 1 << 4;
export const RCTL_LPE = 1 << 5;
export const RCTL_LBM_MASK = 3 << 6;
export const RCTL_RDMTS_SHIFT = 8;
export const RCTL_MO_SHIFT = 12;
export const RCTL_BAM = 1 << 15;
export const RCTL_BSIZE_SHIFT = 16;
export const RCTL_VFE = 1 << 18;
export const RCTL_BSEX = 1 << 25;
export const RCTL_SECRC = 1 << 26;

// RDTR (SDM §13.4.30)
export const RDTR_FPD = 1 << 31;

// TCTL (SDM §13.4.33)
export const TCTL_EN = 1 << 1;
export const TCTL_PSP = 1 << 3;

// RXCSUM (SDM §13.6.1)
export const RXCSUM_PCSS_MASK = 0xff;
export const RXCSUM_IPOFL = 1 << 8;
export const RXCSUM_TUOFL = 1 << 9;

// RAH (SDM §13.5.3)
export const RAH_AV = 1 << 31;
export const RAH_WRITABLE = 0x8003ffff; // AV, AS[17:16], RAH[15:0]
export const RA_ENTRIES = 16;
export const MTA_ENTRIES = 128;
export const VFTA_ENTRIES = 128;

// Descriptors are 16 bytes; rings are sized in multiples of 128 bytes (SDM §3.2.6, §3.3.4).
export const DESC_SIZE = 16;
export const RING_LEN_ALIGN = 128;

// Legacy transmit descriptor command byte (SDM §3.3.3.1) and the DCMD of data descriptors (§3.3.7.1).
export const TXD_CMD_EOP = 1 << 0;
export const TXD_CMD_IFCS = 1 << 1;
export const TXD_CMD_IC = 1 << 2; // legacy: insert checksum
export const TXD_CMD_TSE = 1 << 2; // extended data descriptor: TCP segmentation
export const TXD_CMD_RS = 1 << 3;
export const TXD_CMD_RPS = 1 << 4;
export const TXD_CMD_DEXT = 1 << 5;
export const TXD_CMD_VLE = 1 << 6;
export const TXD_CMD_IDE = 1 << 7;
// TUCMD of context descriptors (SDM §3.3.6.1)
export const TUCMD_TCP = 1 << 0;
export const TUCMD_IP = 1 << 1;
export const TUCMD_TSE = 1 << 2;
// Descriptor types with DEXT set (SDM §3.3.5)
export const TXD_DTYP_CONTEXT = 0;
export const TXD_DTYP_DATA = 1;
// Transmit status (SDM §3.3.3.2)
export const TXD_STAT_DD = 1 << 0;
// POPTS of data descriptors (SDM §3.3.7.3)
export const TXD_POPTS_IXSM = 1 << 0;
export const TXD_POPTS_TXSM = 1 << 1;

// Receive descriptor status and errors (SDM §3.2.3.1-2)
export const RXD_STAT_DD = 1 << 0;
export const RXD_STAT_EOP = 1 << 1;
export const RXD_STAT_IXSM = 1 << 2;
export const RXD_STAT_VP = 1 << 3;
export const RXD_STAT_TCPCS = 1 << 5;
export const RXD_STAT_IPCS = 1 << 6;
export const RXD_STAT_PIF = 1 << 7;
export const RXD_ERR_TCPE = 1 << 5;
export const RXD_ERR_IPE = 1 << 6;
