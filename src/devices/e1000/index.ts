export {
  E1000,
  E1000_ERROR_KINDS,
  type E1000ErrorKind,
  E1000IoPort,
  type E1000Options,
  E1000StateError,
  type E1000StateOptions,
  monotonicMs,
} from "./e1000.ts";
export { buildEepromImage, EEPROM_SUM, EEPROM_WORD, EEPROM_WORDS } from "./eeprom.ts";
export { E1000Pci, type E1000PciOptions, type E1000PciState } from "./pci.ts";
export { M88E1011_PHY_ID, PHY_REG } from "./phy.ts";
export { E1000_BARS, E1000_IO_SIZE, E1000_MMIO_SIZE, E1000_PCI_IDS, REG, STAT } from "./regs.ts";
