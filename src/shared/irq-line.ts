/** An interrupt line as devices see it: a level they set. What drives it (KVM_IRQ_LINE, an irqfd, a test's
 * recorder) is the VMM's business, one layer up. */
export interface IrqLine {
  set(level: boolean): void;
}
