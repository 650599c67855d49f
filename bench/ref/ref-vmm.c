/*
 * ref-vmm: a minimal KVM VMM in C, the reference that `vireo bench exits` measures vireo against.
 *
 * It implements the same guest contract as vireo (docs/guest-abi.md): ELF PT_LOAD by physical address,
 * 64-bit entry with identity-mapped page tables, boot info at 0x8000, COM1 output, the debug-exit port and
 * the test device (PIO 0x510, MMIO 0xFEB00000). Only what a benchmark guest needs, kept deliberately plain so
 * the number it produces is the cost of KVM itself plus a tight C dispatch loop.
 *
 * Usage: ref-vmm [--mem MiB] [--ioeventfd] GUEST.elf 'CMDLINE'
 * --ioeventfd serves writes to the test device's count register (offset 4, both windows) with ioeventfds, so
 * they never exit to userspace.
 * Exit status: the guest's debug-exit code. After the run it prints one JSON line on stderr with the marker
 * timestamps the test device recorded (nanoseconds, CLOCK_MONOTONIC) and the number of accesses between them.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GDT_ADDR 0x1000
#define PML4_ADDR 0x2000
#define PDPT_ADDR 0x3000
#define PD_ADDR 0x4000
#define BOOT_INFO_ADDR 0x8000
#define CMDLINE_ADDR 0x9000
#define TESTDEV_PIO 0x510
#define TESTDEV_MMIO 0xFEB00000ull

static uint8_t *ram;
static uint64_t ram_size;
static int vm_fd;

__attribute__((noreturn)) static void die(const char *what) {
  fprintf(stderr, "ref-vmm: %s: %s\n", what, strerror(errno));
  exit(125);
}

__attribute__((noreturn)) static void fail(const char *what) {
  fprintf(stderr, "ref-vmm: %s\n", what);
  exit(125);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- test device (docs/guest-abi.md) ---- */
struct testdev {
  uint64_t scratch;
  uint64_t accesses;
};
static struct testdev dev_pio, dev_mmio;
static uint64_t marker_ns[3];
static uint64_t marker_accesses[3];

static uint64_t testdev_read(struct testdev *d, uint64_t off) {
  d->accesses++;
  if (off == 0) return d->scratch;
  if (off == 4) return d->accesses & 0xffffffffu;
  return 0;
}

static void set_irq(int line, int level) {
  struct kvm_irq_level irq = {.irq = line, .level = level};
  if (ioctl(vm_fd, KVM_IRQ_LINE, &irq) < 0) die("KVM_IRQ_LINE");
}

static void testdev_write(struct testdev *d, uint64_t off, uint64_t val) {
  d->accesses++;
  if (off == 0) d->scratch = val;
  else if (off == 8 && val >= 1 && val <= 2) {
    marker_ns[val] = now_ns();
    marker_accesses[val] = dev_pio.accesses + dev_mmio.accesses;
  } else if (off == 0xc) set_irq(5, val ? 1 : 0);
}

/* ---- a UART that only transmits: THR out, LSR always "empty", THRE interrupt gated by OUT2 ---- */
static uint8_t uart_ier, uart_lcr, uart_mcr, uart_scr, uart_thre_pending = 1, uart_irq_level;

static void uart_update_irq(void) {
  uint8_t level = (uart_mcr & 0x08) && (uart_ier & 0x02) && uart_thre_pending;
  if (level != uart_irq_level) {
    uart_irq_level = level;
    set_irq(4, level);
  }
}

static uint8_t uart_read(unsigned off) {
  switch (off) {
  case 1: return (uart_lcr & 0x80) ? 0 : uart_ier;
  case 2: {
    uint8_t iir = (uart_ier & 0x02) && uart_thre_pending ? 0x02 : 0x01;
    if (iir == 0x02) uart_thre_pending = 0;
    uart_update_irq();
    return iir | 0xc0;
  }
  case 3: return uart_lcr;
  case 4: return uart_mcr;
  case 5: return 0x60; /* THRE | TEMT */
  case 7: return uart_scr;
  default: return 0;
  }
}

static void uart_write(unsigned off, uint8_t val) {
  switch (off) {
  case 0:
    if (!(uart_lcr & 0x80)) {
      putchar(val);
      uart_thre_pending = 1;
    }
    break;
  case 1:
    if (!(uart_lcr & 0x80)) {
      if ((val & 0x02) && !(uart_ier & 0x02)) uart_thre_pending = 1;
      uart_ier = val & 0x0f;
    }
    break;
  case 3: uart_lcr = val; break;
  case 4: uart_mcr = val & 0x1f; break;
  case 7: uart_scr = val; break;
  }
  uart_update_irq();
}

/* ---- guest setup ---- */
static void load_elf(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat");
  uint8_t *img = malloc(st.st_size);
  if (!img || read(fd, img, st.st_size) != st.st_size) die("read guest");
  close(fd);
  Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
  if (st.st_size < (off_t)sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_machine != EM_X86_64)
    fail("not an x86-64 ELF file");
  for (int i = 0; i < eh->e_phnum; i++) {
    Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + (uint64_t)i * eh->e_phentsize);
    if (ph->p_type != PT_LOAD) continue;
    if (ph->p_paddr < 0x100000 || ph->p_paddr + ph->p_memsz > ram_size || ph->p_offset + ph->p_filesz > (uint64_t)st.st_size)
      fail("segment outside guest RAM or file");
    memcpy(ram + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
  }
  free(img);
}

static uint64_t elf_entry(const char *path) {
  int fd = open(path, O_RDONLY);
  Elf64_Ehdr eh;
  if (fd < 0 || read(fd, &eh, sizeof eh) != sizeof eh) die("read ELF header");
  close(fd);
  return eh.e_entry;
}

static void write_tables(const char *cmdline, uint32_t cpus) {
  uint64_t *gdt = (uint64_t *)(ram + GDT_ADDR);
  gdt[0] = 0;
  gdt[1] = 0x00af9a000000ffffull; /* 0x08 64-bit code, DPL0 */
  gdt[2] = 0x00cf92000000ffffull; /* 0x10 data, DPL0 */
  gdt[3] = 0x00cffa000000ffffull; /* 0x18 32-bit code, DPL3 */
  gdt[4] = 0x00cff2000000ffffull; /* 0x20 data, DPL3 */
  gdt[5] = 0x00affa000000ffffull; /* 0x28 64-bit code, DPL3 */
  uint64_t *pml4 = (uint64_t *)(ram + PML4_ADDR), *pdpt = (uint64_t *)(ram + PDPT_ADDR);
  pml4[0] = PDPT_ADDR | 7;
  for (int i = 0; i < 4; i++) {
    pdpt[i] = (PD_ADDR + i * 0x1000) | 7;
    uint64_t *pd = (uint64_t *)(ram + PD_ADDR + i * 0x1000);
    for (int j = 0; j < 512; j++) pd[j] = ((uint64_t)(i * 512 + j) << 21) | 0x87; /* P|W|U|PS */
  }
  size_t len = strlen(cmdline);
  if (len > 4095) fail("command line too long");
  memcpy(ram + CMDLINE_ADDR, cmdline, len + 1);
  uint8_t *bi = ram + BOOT_INFO_ADDR;
  *(uint32_t *)(bi + 0) = 0x4f524956;
  *(uint32_t *)(bi + 4) = 1;
  *(uint64_t *)(bi + 8) = ram_size;
  *(uint64_t *)(bi + 16) = CMDLINE_ADDR;
  *(uint32_t *)(bi + 24) = (uint32_t)len;
  *(uint32_t *)(bi + 28) = cpus;
}

static void set_seg(struct kvm_segment *s, uint16_t sel, int code) {
  memset(s, 0, sizeof *s);
  s->selector = sel;
  s->limit = 0xffffffff;
  s->present = 1;
  s->s = 1;
  s->dpl = 0;
  s->g = 1;
  if (code) {
    s->type = 0xb;
    s->l = 1;
  } else {
    s->type = 0x3;
    s->db = 1;
  }
}

int main(int argc, char **argv) {
  uint64_t mem_mib = 64;
  int argi = 1, use_ioeventfd = 0;
  for (;;) {
    if (argi + 1 < argc && !strcmp(argv[argi], "--mem")) {
      mem_mib = strtoull(argv[argi + 1], NULL, 10);
      argi += 2;
    } else if (argi < argc && !strcmp(argv[argi], "--ioeventfd")) {
      use_ioeventfd = 1;
      argi++;
    } else {
      break;
    }
  }
  if (argc - argi != 2) {
    fprintf(stderr, "usage: ref-vmm [--mem MiB] [--ioeventfd] GUEST.elf 'CMDLINE'\n");
    return 125;
  }
  setvbuf(stdout, NULL, _IONBF, 0);
  ram_size = mem_mib << 20;

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm_fd < 0) die("KVM_CREATE_VM");
  if (ioctl(vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
  if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  if (ioctl(vm_fd, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");

  ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) die("mmap guest RAM");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram};
  if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

  if (use_ioeventfd) {
    struct kvm_ioeventfd pio = {.addr = TESTDEV_PIO + 4, .len = 4, .fd = eventfd(0, EFD_CLOEXEC), .flags = KVM_IOEVENTFD_FLAG_PIO};
    struct kvm_ioeventfd mmio = {.addr = TESTDEV_MMIO + 4, .len = 4, .fd = eventfd(0, EFD_CLOEXEC)};
    if (pio.fd < 0 || mmio.fd < 0) die("eventfd");
    if (ioctl(vm_fd, KVM_IOEVENTFD, &pio) < 0 || ioctl(vm_fd, KVM_IOEVENTFD, &mmio) < 0) die("KVM_IOEVENTFD");
  }

  load_elf(argv[argi]);
  write_tables(argv[argi + 1], 1);

  int vcpu = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  struct {
    struct kvm_cpuid2 c;
    struct kvm_cpuid_entry2 e[256];
  } cpuid = {.c.nent = 256};
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
  if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  set_seg(&sregs.cs, 0x08, 1);
  set_seg(&sregs.ds, 0x10, 0);
  sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
  sregs.gdt.base = GDT_ADDR;
  sregs.gdt.limit = 8 * 8 - 1;
  sregs.idt.base = 0;
  sregs.idt.limit = 0;
  sregs.cr3 = PML4_ADDR;
  sregs.cr4 = 1u << 5;                        /* PAE */
  sregs.cr0 = 0x80000001u | (1u << 16) | 0x10; /* PG | PE | WP | ET */
  sregs.efer = (1u << 8) | (1u << 10);         /* LME | LMA */
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs = {0};
  regs.rip = elf_entry(argv[argi]);
  regs.rflags = 2;
  regs.rsp = ram_size & ~15ull;
  regs.rdi = BOOT_INFO_ADDR;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  int exit_code = -1;
  while (exit_code < 0) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR) continue;
      die("KVM_RUN");
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint8_t *data = (uint8_t *)run + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
        uint16_t port = run->io.port;
        uint64_t v = 0;
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          memcpy(&v, data, run->io.size);
          if (port >= 0x3f8 && port < 0x400) uart_write(port - 0x3f8, (uint8_t)v);
          else if (port == 0x501) exit_code = (int)(v & 0xff);
          else if (port >= TESTDEV_PIO && port < TESTDEV_PIO + 16) testdev_write(&dev_pio, port - TESTDEV_PIO, v);
        } else {
          if (port >= 0x3f8 && port < 0x400) v = uart_read(port - 0x3f8);
          else if (port >= TESTDEV_PIO && port < TESTDEV_PIO + 16) v = testdev_read(&dev_pio, port - TESTDEV_PIO);
          else v = ~0ull;
          memcpy(data, &v, run->io.size);
        }
      }
      break;
    }
    case KVM_EXIT_MMIO: {
      uint64_t a = run->mmio.phys_addr, v = 0;
      if (a >= TESTDEV_MMIO && a < TESTDEV_MMIO + 0x1000) {
        if (run->mmio.is_write) {
          memcpy(&v, run->mmio.data, run->mmio.len);
          testdev_write(&dev_mmio, a - TESTDEV_MMIO, v);
        } else {
          v = testdev_read(&dev_mmio, a - TESTDEV_MMIO);
          memcpy(run->mmio.data, &v, run->mmio.len);
        }
      } else if (!run->mmio.is_write) {
        memset(run->mmio.data, 0xff, run->mmio.len);
      }
      break;
    }
    case KVM_EXIT_HLT: fail("guest halted with interrupts off");
    case KVM_EXIT_SHUTDOWN: fail("guest triple-faulted (shutdown)");
    case KVM_EXIT_FAIL_ENTRY:
      fprintf(stderr, "ref-vmm: entry failed, reason 0x%llx\n",
              (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
      return 125;
    case KVM_EXIT_INTERNAL_ERROR:
      fprintf(stderr, "ref-vmm: KVM internal error, suberror %u\n", run->internal.suberror);
      return 125;
    default: fprintf(stderr, "ref-vmm: unhandled exit reason %u\n", run->exit_reason); return 125;
    }
  }
  if (marker_ns[1] && marker_ns[2])
    fprintf(stderr, "{\"markerNs\":%llu,\"accesses\":%llu}\n", (unsigned long long)(marker_ns[2] - marker_ns[1]),
            (unsigned long long)(marker_accesses[2] - marker_accesses[1] - 1));
  return exit_code;
}
