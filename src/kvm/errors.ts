import { VireoError } from "../errors.ts";
import { isErrno, native } from "../native.ts";

/** A KVM ioctl failed; carries the ioctl's name and errno. */
export class KvmIoctlError extends VireoError {
  readonly errno: number;
  readonly errnoCode: string;
  readonly ioctl: string;
  constructor(ioctl: string, errno: number, errnoCode: string, detail: string) {
    super("VIREO_KVM_IOCTL", `${ioctl} failed: ${detail}`);
    this.ioctl = ioctl;
    this.errno = errno;
    this.errnoCode = errnoCode;
  }
}

/** /dev/kvm is missing, not accessible, or too old. */
export class KvmUnavailableError extends VireoError {
  constructor(code: "VIREO_KVM_MISSING" | "VIREO_KVM_PERMISSION" | "VIREO_KVM_UNSUPPORTED", message: string) {
    super(code, message);
  }
}

/** ioctl(2) through the native layer, with KVM errors turned into KvmIoctlError. */
export function kvmIoctl(
  fd: number,
  request: number,
  arg: number | bigint | ArrayBufferView | undefined,
  name: string,
): number {
  try {
    return native().ioctl(fd, request, arg, name);
  } catch (e) {
    if (isErrno(e)) throw new KvmIoctlError(name, e.errno, e.code, e.message.replace(/^ioctl \S+: /, ""));
    throw e;
  }
}
