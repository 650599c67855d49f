export { type BlockBackend, BlockIoError, checkRange } from "./backend.ts";
export { FileBlockBackend, type FileBlockBackendOptions } from "./file.ts";
export { MemoryBlockBackend, type MemoryBlockBackendOptions } from "./memory.ts";
