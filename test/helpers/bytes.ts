/** Little-endian access values as a guest puts them on the bus (BusDevice data arrays), and back. */
export function le(value: number, size: number): Uint8Array {
  const d = new Uint8Array(size);
  for (let i = 0; i < size; i++) d[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
  return d;
}

export function num(d: Uint8Array): number {
  let v = 0;
  for (let i = d.length - 1; i >= 0; i--) v = v * 256 + (d[i] as number);
  return v;
}
