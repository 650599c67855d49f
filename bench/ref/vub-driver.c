/*
 * vub-driver: a small vhost-user-blk front-end for `vireo bench vhost-user-blk` (bench/vhost-user-blk.ts), the
 * same driver for every back-end so that a ratio compares back-ends, not drivers.
 *
 * Written from QEMU's docs/interop/vhost-user.rst and virtio 1.2 (2.7 split virtqueues, 5.2 block device):
 * "guest memory" is one memfd region shared with SET_MEM_TABLE; one split virtqueue of --queue-size entries;
 * a kick eventfd and a call eventfd; VIRTIO_RING_F_EVENT_IDX when the back-end offers it (and not
 * --no-event-idx). Each row keeps --depth requests of 4 KiB in flight at seeded random 4 KiB-aligned offsets,
 * all reads or all writes, for a warm-up and then a measured window; latency is submit (the request is in the
 * available ring) to used (the driver sees it in the used ring). A write's data encodes its block and a
 * sequence number; a sample of reads of blocks this run wrote is checked against the last write's data.
 *
 * The driver sleeps in poll(2) on the call eventfd when nothing has completed (it does not spin, so it leaves
 * the CPU to the back-end on a small machine) and reports its own CPU time per request
 * (/proc/thread-self/schedstat), so a reader can tell whether the driver limited a row.
 *
 * Usage: vub-driver --socket PATH --size BYTES [--rows write:1,write:32,read:1,read:32] [--seconds S]
 *                   [--warmup S] [--seed N] [--queue-size N] [--verify-every N] [--no-event-idx]
 *                   [--backend-pid PID]   (the back-end's CPU per request, all threads, from /proc/PID/stat)
 * Output: one JSON object per line on stdout: {"event":"negotiated",...}, then one {"event":"row",...} per row.
 * Exit status: 0, or 1 with a message on stderr (protocol refusal, I/O error status, timeout).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* vhost-user requests (vhost-user.rst, "Front-end message types"). */
enum {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  SET_MEM_TABLE = 5,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  SET_VRING_ENABLE = 18,
};
#define VU_VERSION 0x1u
#define VU_REPLY 0x4u
#define VU_NEED_REPLY 0x8u
#define PROTOCOL_F_REPLY_ACK 3
#define F_PROTOCOL_FEATURES 30
#define F_VERSION_1 32
#define F_EVENT_IDX 29
#define BLK_F_FLUSH 9

/* Split ring (virtio 1.2, 2.7). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_USED_F_NO_NOTIFY 1
struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct used_elem {
  uint32_t id;
  uint32_t len;
};

/* virtio-blk (5.2.6). */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLOCK 4096u

/* Layout of the one memory region (guest-physical addresses from 0). */
#define DESC_AT 0x0000u
#define AVAIL_AT 0x2000u
#define USED_AT 0x4000u
#define SLOTS_AT 0x10000u
#define SLOT_SIZE 0x2000u /* header at +0, status at +64, data at +0x1000 */

static int sock = -1;
static uint8_t *mem;
static size_t mem_size;
static unsigned qsize = 128;
static int kickfd, callfd;
static int event_idx;
static uint64_t acked_protocol;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("vub-driver: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* This thread's CPU time (ns), the first field of /proc/thread-self/schedstat. */
static uint64_t thread_cpu_ns(void) {
  char b[128];
  int fd = open("/proc/thread-self/schedstat", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  if (n <= 0) return 0;
  b[n] = 0;
  return strtoull(b, NULL, 10);
}

/* The back-end's CPU time, all its threads (utime + stime of /proc/PID/stat, in ns), or 0 without --backend-pid. */
static int backend_pid;
static uint64_t backend_cpu_ns(void) {
  if (backend_pid <= 0) return 0;
  char path[64], b[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", backend_pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  if (n <= 0) return 0;
  b[n] = 0;
  char *p = strrchr(b, ')'); /* the command may hold spaces; fields after it are fixed */
  if (!p) return 0;
  unsigned long long ut = 0, stt = 0;
  /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2) return 0;
  return (ut + stt) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* ---- control messages ---- */

static void send_msg(uint32_t req, uint32_t flags, const void *payload, uint32_t size, const int *fds, int nfds) {
  uint8_t buf[12 + 256];
  uint32_t hdr[3] = {req, VU_VERSION | flags, size};
  memcpy(buf, hdr, 12);
  if (size > 256) die("payload too large");
  if (size) memcpy(buf + 12, payload, size);
  struct iovec iov = {buf, 12 + size};
  union {
    char b[CMSG_SPACE(8 * sizeof(int))];
    struct cmsghdr align;
  } c;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&c, 0, sizeof c);
    m.msg_control = c.b;
    m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
  if (n != (ssize_t)(12 + size)) die("sendmsg of request %u: %s", req, n < 0 ? strerror(errno) : "short");
}

static void read_exact(void *p, size_t len) {
  size_t have = 0;
  while (have < len) {
    struct pollfd pfd = {sock, POLLIN, 0};
    if (poll(&pfd, 1, 20000) <= 0) die("no reply from the back-end in 20 s");
    ssize_t n = read(sock, (uint8_t *)p + have, len - have);
    if (n <= 0) die("the back-end closed the connection");
    have += (size_t)n;
  }
}

/* A reply to `req` with a payload of at most `cap` bytes; returns its size. */
static uint32_t recv_reply(uint32_t req, void *payload, uint32_t cap) {
  uint32_t hdr[3];
  read_exact(hdr, 12);
  if (hdr[0] != req || !(hdr[1] & VU_REPLY)) die("reply to request %u is for %u (flags %#x)", req, hdr[0], hdr[1]);
  if (hdr[2] > cap) die("reply to request %u has %u bytes, at most %u expected", req, hdr[2], cap);
  read_exact(payload, hdr[2]);
  return hdr[2];
}

static uint64_t get_u64(uint32_t req) {
  uint64_t v = 0;
  send_msg(req, 0, NULL, 0, NULL, 0);
  if (recv_reply(req, &v, 8) != 8) die("short u64 reply to %u", req);
  return v;
}

/* A request without a reply of its own; with REPLY_ACK, waits for the ack and fails on a refusal. */
static void request(uint32_t req, const void *payload, uint32_t size, const int *fds, int nfds) {
  int ack = (acked_protocol >> PROTOCOL_F_REPLY_ACK) & 1;
  send_msg(req, ack ? VU_NEED_REPLY : 0, payload, size, fds, nfds);
  if (ack) {
    uint64_t r = 1;
    if (recv_reply(req, &r, 8) != 8 || r != 0) die("request %u refused (%" PRIu64 ")", req, r);
  }
}

static void state(uint32_t req, uint32_t index, uint32_t num) {
  uint32_t p[2] = {index, num};
  request(req, p, 8, NULL, 0);
}

/* ---- the ring ---- */

static struct desc *descs;
static volatile uint16_t *avail; /* flags, idx, ring[qsize], used_event */
static volatile uint16_t *usedh; /* flags, idx */
static volatile struct used_elem *used_ring;
static volatile uint16_t *avail_event;
static uint16_t avail_idx, last_used;

#define GPA(off) ((uint64_t)(off))
static inline uint8_t *slot_ptr(unsigned s) { return mem + SLOTS_AT + (size_t)s * SLOT_SIZE; }

/* virtio 1.2, 2.7.10: vring_need_event. */
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
  return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

static uint64_t kicks;
static void kick_if_needed(uint16_t old) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the avail idx is visible before we read the device's wishes */
  int kick = event_idx ? need_event(*avail_event, avail_idx, old) : !(usedh[0] & VRING_USED_F_NO_NOTIFY);
  if (kick) {
    uint64_t one = 1;
    if (write(kickfd, &one, 8) != 8) die("kick: %s", strerror(errno));
    kicks++;
  }
}

/* ---- requests ---- */

static uint64_t nblocks;
static uint32_t *written_seq; /* per block: the sequence number of the last completed write, 0 if none */
static uint8_t *busy;         /* per block: a request on it is in flight */
static uint32_t seq_counter;
static uint64_t rng;

static inline uint64_t next_rand(void) { /* xorshift64* */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 2685821657736338717ull;
}

static inline void fill_block(uint64_t *w, uint64_t block, uint32_t seq) {
  uint64_t x = (block << 32) ^ seq ^ 0x9e3779b97f4a7c15ull;
  for (unsigned i = 0; i < BLOCK / 8; i++) {
    x += 0x9e3779b97f4a7c15ull;
    w[i] = x ^ (x >> 29);
  }
}

struct slot {
  uint64_t block;
  uint64_t t0;
  uint32_t seq;
  int write;
};
static struct slot *slots;

static void prepare(unsigned s, int write) {
  struct slot *sl = &slots[s];
  uint64_t b;
  do b = next_rand() % nblocks;
  while (busy[b]); /* two writes of one block in flight would leave the file ambiguous */
  busy[b] = 1;
  sl->block = b;
  sl->write = write;
  uint8_t *p = slot_ptr(s);
  uint32_t hdr[4] = {write ? BLK_T_OUT : BLK_T_IN, 0, (uint32_t)(b * (BLOCK / 512)),
                     (uint32_t)((b * (BLOCK / 512)) >> 32)};
  memcpy(p, hdr, 16);
  p[64] = 0xff;
  if (write) {
    sl->seq = ++seq_counter;
    fill_block((uint64_t *)(p + 0x1000), b, sl->seq);
  }
  struct desc *d = &descs[3 * s + 1];
  d->flags = VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE);
}

static inline void publish(unsigned s) {
  avail[2 + (avail_idx % qsize)] = (uint16_t)(3 * s);
  avail_idx++;
  __atomic_store_n(&avail[1], avail_idx, __ATOMIC_RELEASE);
}

/* ---- one row ---- */

struct row_stats {
  uint64_t done, verified, mismatches, errors;
  uint32_t *lat; /* ns, per completed request in the window */
  size_t nlat, cap;
};

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(const uint32_t *v, size_t n, double p) {
  if (n == 0) return 0;
  size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
  return v[i] / 1000.0;
}

static void run_row(int write, unsigned depth, double warmup, double seconds, unsigned verify_every) {
  if (3 * depth > qsize) die("depth %u needs %u descriptors; the ring has %u", depth, 3 * depth, qsize);
  struct row_stats st = {0};
  st.cap = 1 << 16;
  st.lat = malloc(st.cap * sizeof *st.lat);
  uint64_t start = now_ns();
  uint64_t measure_at = start + (uint64_t)(warmup * 1e9);
  uint64_t end_at = measure_at + (uint64_t)(seconds * 1e9);
  int measuring = warmup <= 0;
  uint64_t cpu0 = thread_cpu_ns(), bcpu0 = backend_cpu_ns(), kicks0 = kicks, window_t0 = start, sleeps = 0;
  unsigned inflight = 0;
  uint64_t reads = 0;
  uint16_t old = avail_idx;
  for (unsigned s = 0; s < depth; s++) {
    prepare(s, write);
    slots[s].t0 = now_ns();
    publish(s);
    inflight++;
  }
  kick_if_needed(old);
  int stopping = 0;
  while (inflight > 0) {
    uint16_t uidx = __atomic_load_n(&usedh[1], __ATOMIC_ACQUIRE);
    if (uidx == last_used) {
      if (event_idx) {
        avail[2 + qsize] = last_used; /* used_event: tell me about the next one */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&usedh[1], __ATOMIC_ACQUIRE) != last_used) continue;
      }
      struct pollfd pfd = {callfd, POLLIN, 0};
      int r = poll(&pfd, 1, 10000);
      if (r == 0) die("no completion in 10 s (%u in flight)", inflight);
      if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
      uint64_t v;
      if (read(callfd, &v, 8) < 0 && errno != EAGAIN) die("call eventfd: %s", strerror(errno));
      sleeps++;
      continue;
    }
    uint64_t t = now_ns();
    if (!measuring && t >= measure_at) {
      measuring = 1;
      window_t0 = t;
      cpu0 = thread_cpu_ns();
      bcpu0 = backend_cpu_ns();
      kicks0 = kicks;
      sleeps = 0;
    }
    if (measuring && t >= end_at) stopping = 1;
    old = avail_idx;
    while (last_used != uidx) {
      struct used_elem e = used_ring[last_used % qsize];
      last_used++;
      if (e.id % 3 != 0 || e.id / 3 >= depth) die("used id %u is not a request head", e.id);
      unsigned s = e.id / 3;
      struct slot *sl = &slots[s];
      uint8_t *p = slot_ptr(s);
      uint8_t status = p[64];
      inflight--;
      busy[sl->block] = 0;
      if (status != 0) {
        st.errors++;
        die("request on block %" PRIu64 " completed with status %u", sl->block, status);
      }
      if (sl->write) {
        written_seq[sl->block] = sl->seq;
      } else if (verify_every && (reads++ % verify_every) == 0 && written_seq[sl->block] != 0) {
        uint64_t want[BLOCK / 8];
        fill_block(want, sl->block, written_seq[sl->block]);
        st.verified++;
        if (memcmp(want, p + 0x1000, BLOCK) != 0) st.mismatches++;
      }
      if (measuring) {
        st.done++;
        if (st.nlat == st.cap) {
          st.cap *= 2;
          st.lat = realloc(st.lat, st.cap * sizeof *st.lat);
          if (!st.lat) die("out of memory");
        }
        uint64_t l = t - sl->t0;
        st.lat[st.nlat++] = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
      }
      if (!stopping) {
        prepare(s, write);
        sl->t0 = now_ns();
        publish(s);
        inflight++;
      }
    }
    if (avail_idx != old) kick_if_needed(old);
  }
  uint64_t t1 = now_ns();
  uint64_t cpu = thread_cpu_ns() - cpu0;
  uint64_t bcpu = backend_pid > 0 ? backend_cpu_ns() - bcpu0 : 0;
  double window = (double)(t1 - window_t0) / 1e9;
  qsort(st.lat, st.nlat, sizeof *st.lat, cmp_u32);
  double sum = 0;
  for (size_t i = 0; i < st.nlat; i++) sum += st.lat[i];
  printf("{\"event\":\"row\",\"rw\":\"%s\",\"depth\":%u,\"requests\":%" PRIu64 ",\"seconds\":%.4f,\"iops\":%.1f,"
         "\"meanUs\":%.2f,\"p50Us\":%.2f,\"p90Us\":%.2f,\"p99Us\":%.2f,\"p999Us\":%.2f,\"maxUs\":%.2f,"
         "\"driverCpuNsPerRequest\":%.0f,\"driverCpuShare\":%.3f,\"kicksPerRequest\":%.3f,"
         "\"waitsPerRequest\":%.3f,\"backendCpuNsPerRequest\":%.0f,\"backendCpuShare\":%.3f,\"verified\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"errors\":%" PRIu64 "}\n",
         write ? "write" : "read", depth, st.done, window, st.done / window, st.nlat ? sum / st.nlat / 1000 : 0,
         pct(st.lat, st.nlat, 50), pct(st.lat, st.nlat, 90), pct(st.lat, st.nlat, 99), pct(st.lat, st.nlat, 99.9),
         st.nlat ? st.lat[st.nlat - 1] / 1000.0 : 0, st.done ? (double)cpu / st.done : 0,
         window > 0 ? cpu / 1e9 / window : 0, st.done ? (double)(kicks - kicks0) / st.done : 0,
         st.done ? (double)sleeps / st.done : 0, st.done ? (double)bcpu / st.done : 0,
         window > 0 ? bcpu / 1e9 / window : 0, st.verified, st.mismatches, st.errors);
  fflush(stdout);
  free(st.lat);
}

static const char *arg_value(int *i, int argc, char **argv) {
  if (*i + 1 >= argc) die("%s needs a value", argv[*i]);
  return argv[++*i];
}

int main(int argc, char **argv) {
  const char *path = NULL, *rows = "write:1,write:32,read:1,read:32";
  double seconds = 5, warmup = 1;
  uint64_t size = 0;
  unsigned verify_every = 8;
  int no_event_idx = 0;
  rng = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--socket")) path = arg_value(&i, argc, argv);
    else if (!strcmp(a, "--size")) size = strtoull(arg_value(&i, argc, argv), NULL, 10);
    else if (!strcmp(a, "--rows")) rows = arg_value(&i, argc, argv);
    else if (!strcmp(a, "--seconds")) seconds = atof(arg_value(&i, argc, argv));
    else if (!strcmp(a, "--warmup")) warmup = atof(arg_value(&i, argc, argv));
    else if (!strcmp(a, "--seed")) rng = strtoull(arg_value(&i, argc, argv), NULL, 10) * 2 + 1;
    else if (!strcmp(a, "--queue-size")) qsize = (unsigned)atoi(arg_value(&i, argc, argv));
    else if (!strcmp(a, "--verify-every")) verify_every = (unsigned)atoi(arg_value(&i, argc, argv));
    else if (!strcmp(a, "--no-event-idx")) no_event_idx = 1;
    else if (!strcmp(a, "--backend-pid")) backend_pid = atoi(arg_value(&i, argc, argv));
    else die("unknown argument %s (see the comment at the top of bench/ref/vub-driver.c)", a);
  }
  if (!path || size < BLOCK) die("--socket PATH and --size BYTES (at least 4096) are required");
  if (qsize < 4 || qsize > 1024 || (qsize & (qsize - 1))) die("--queue-size must be a power of 2 from 4 to 1024");
  nblocks = size / BLOCK;
  written_seq = calloc(nblocks, sizeof *written_seq);
  busy = calloc(nblocks, 1);
  slots = calloc(qsize, sizeof *slots);
  if (!written_seq || !busy || !slots) die("out of memory");

  /* Guest memory: a memfd, mapped shared, handed over with SET_MEM_TABLE. */
  mem_size = SLOTS_AT + (size_t)(qsize / 3 + 1) * SLOT_SIZE;
  mem_size = (mem_size + 0x1fffff) & ~(size_t)0x1fffff;
  int memfd = memfd_create("vub-driver-guest", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, (off_t)mem_size) != 0) die("memfd: %s", strerror(errno));
  mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) die("mmap: %s", strerror(errno));
  memset(mem, 0, mem_size);
  descs = (struct desc *)(mem + DESC_AT);
  avail = (volatile uint16_t *)(mem + AVAIL_AT);
  usedh = (volatile uint16_t *)(mem + USED_AT);
  used_ring = (volatile struct used_elem *)(mem + USED_AT + 4);
  avail_event = (volatile uint16_t *)(mem + USED_AT + 4 + 8 * qsize);
  if (AVAIL_AT + 6 + 2 * qsize > USED_AT || USED_AT + 6 + 8 * qsize > SLOTS_AT) die("ring layout overflow");
  /* Fixed chains: slot s owns descriptors 3s (header), 3s+1 (data), 3s+2 (status). */
  for (unsigned s = 0; s < qsize / 3; s++) {
    uint64_t base = SLOTS_AT + (uint64_t)s * SLOT_SIZE;
    descs[3 * s] = (struct desc){GPA(base), 16, VRING_DESC_F_NEXT, (uint16_t)(3 * s + 1)};
    descs[3 * s + 1] = (struct desc){GPA(base + 0x1000), BLOCK, VRING_DESC_F_NEXT, (uint16_t)(3 * s + 2)};
    descs[3 * s + 2] = (struct desc){GPA(base + 64), 1, VRING_DESC_F_WRITE, 0};
  }
  kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

  sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) die("socket path too long");
  strcpy(sa.sun_path, path);
  if (connect(sock, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect %s: %s", path, strerror(errno));

  send_msg(SET_OWNER, 0, NULL, 0, NULL, 0);
  uint64_t features = get_u64(GET_FEATURES);
  if (!(features & (1ull << F_VERSION_1))) die("the back-end does not offer VIRTIO_F_VERSION_1");
  uint64_t want = (1ull << F_VERSION_1) | (features & (1ull << BLK_F_FLUSH));
  if (features & (1ull << F_PROTOCOL_FEATURES)) {
    want |= 1ull << F_PROTOCOL_FEATURES;
    uint64_t proto = get_u64(GET_PROTOCOL_FEATURES);
    uint64_t p = proto & (1ull << PROTOCOL_F_REPLY_ACK);
    send_msg(SET_PROTOCOL_FEATURES, 0, &p, 8, NULL, 0);
    acked_protocol = p;
  }
  event_idx = !no_event_idx && (features & (1ull << F_EVENT_IDX));
  if (event_idx) want |= 1ull << F_EVENT_IDX;
  request(SET_FEATURES, &want, 8, NULL, 0);
  struct {
    uint32_t n, pad;
    uint64_t gpa, size, uaddr, offset;
  } table = {1, 0, 0, mem_size, (uint64_t)(uintptr_t)mem, 0};
  request(SET_MEM_TABLE, &table, sizeof table, &memfd, 1);
  state(SET_VRING_NUM, 0, qsize);
  state(SET_VRING_BASE, 0, 0);
  struct {
    uint32_t index, flags;
    uint64_t desc, used, avail, log;
  } addr = {0, 0, (uint64_t)(uintptr_t)(mem + DESC_AT), (uint64_t)(uintptr_t)(mem + USED_AT),
            (uint64_t)(uintptr_t)(mem + AVAIL_AT), 0};
  request(SET_VRING_ADDR, &addr, sizeof addr, NULL, 0);
  uint64_t q0 = 0;
  request(SET_VRING_KICK, &q0, 8, &kickfd, 1);
  request(SET_VRING_CALL, &q0, 8, &callfd, 1);
  if (features & (1ull << F_PROTOCOL_FEATURES)) state(SET_VRING_ENABLE, 0, 1);
  printf("{\"event\":\"negotiated\",\"offered\":\"%#" PRIx64 "\",\"acked\":\"%#" PRIx64
         "\",\"eventIdx\":%s,\"replyAck\":%s,\"queueSize\":%u,\"blocks\":%" PRIu64 "}\n",
         features, want, event_idx ? "true" : "false", acked_protocol ? "true" : "false", qsize, nblocks);
  fflush(stdout);

  for (const char *r = rows; *r;) {
    int write;
    if (!strncmp(r, "write:", 6)) write = 1, r += 6;
    else if (!strncmp(r, "read:", 5)) write = 0, r += 5;
    else die("--rows: expected read:N or write:N at '%s'", r);
    char *end;
    unsigned long depth = strtoul(r, &end, 10);
    if (end == r || depth < 1) die("--rows: bad depth at '%s'", r);
    if (depth > nblocks / 2) die("--rows: depth %lu is more than half the file's %" PRIu64 " blocks", depth, nblocks);
    run_row(write, (unsigned)depth, warmup, seconds, verify_every);
    r = *end == ',' ? end + 1 : end;
  }

  /* Stop the ring (GET_VRING_BASE), then hang up. */
  uint32_t st[2] = {0, 0};
  send_msg(GET_VRING_BASE, 0, st, 8, NULL, 0);
  recv_reply(GET_VRING_BASE, st, 8);
  close(sock);
  return 0;
}
