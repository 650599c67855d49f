export { E1000, E1000IoPort, type E1000Options } from "./e1000.ts";
export { buildEepromImage, EEPROM_SUM, EEPROM_WORD, EEPROM_WORDS } from "./eeprom.ts";
export { M88E1011_PHY_ID, PHY_REG } from "./phy.ts";
export { E1000_BARS, E1000_IO_SIZE, E1000_MMIO_SIZE, E1000_PCI_IDS, REG, STAT } from "./regs.ts";
