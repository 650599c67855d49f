// vireo's native layer: only the syscalls Node lacks, no policy.
//
//   ioctl(fd, request, arg)        arg: integer, bigint, or a TypedArray/DataView whose bytes are the struct
//   mmap(fd, length, offset)       MAP_SHARED mapping as a SharedArrayBuffer, plus its host address (bigint)
//   memfdCreate(name, flags)       memfd_create(2)
//   eventfd(initval, flags)        eventfd(2)
//   close(fd)                      close(2) for fds Node did not open (vCPU fds in worker threads)
//   addressOf(view)                host address of a TypedArray's first byte (for structs that carry pointers)
//   poll(pollfds, timeoutMs)       poll(2) over Int32Array triples [fd, events, revents]; revents written back;
//                                  returns the number ready (0 on timeout or EINTR)
//   readFd(fd, view) / writeFd(fd, view)
//                                  read(2)/write(2) returning -errno instead of throwing, so that EAGAIN on a
//                                  non-blocking TAP or eventfd costs no exception on the packet path
//   threadRegister(immediateExit?) / threadKick(id) / threadKickAfter(id, usec) / threadUnregister(id)
//                                  a vCPU thread registers itself (with a view of its kvm_run.immediate_exit
//                                  byte); any thread can then interrupt its KVM_RUN with a real-time signal,
//                                  at once or from a one-shot timer (usec 0 disarms). The handler sets
//                                  immediate_exit, so a kick that lands just before KVM_RUN is not lost: KVM_RUN
//                                  returns EINTR either way.
//
// Every failure throws an Error carrying errno, code (e.g. "EINVAL") and syscall (e.g. "ioctl KVM_RUN" when
// the caller names the request).
#include <napi.h>
#include <v8.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>

namespace {

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall) {
  const char* name = strerrorname_np(err);
  Napi::Error e = Napi::Error::New(env, syscall + ": " + strerror(err) + " (" + (name ? name : "E?") + ")");
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

bool ToInt(const Napi::Value& v, int64_t* out) {
  if (v.IsNumber()) {
    *out = v.As<Napi::Number>().Int64Value();
    return true;
  }
  if (v.IsBigInt()) {
    bool lossless = true;
    *out = static_cast<int64_t>(v.As<Napi::BigInt>().Uint64Value(&lossless));
    return lossless;
  }
  return false;
}

// The byte range behind a TypedArray or DataView (works for views of a SharedArrayBuffer too).
bool ViewBytes(const Napi::Value& v, void** data, size_t* length) {
  // The C API's own info calls: they give the data pointer for views of a SharedArrayBuffer, where
  // Napi::TypedArray::ArrayBuffer().Data() fails (napi_get_arraybuffer_info refuses a SharedArrayBuffer).
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t count = 0;
    void* base = nullptr;
    if (napi_get_typedarray_info(v.Env(), v, &type, &count, &base, nullptr, nullptr) != napi_ok) return false;
    *data = base;
    *length = v.As<Napi::TypedArray>().ByteLength();
    return true;
  }
  if (v.IsDataView()) {
    size_t bytes = 0;
    void* base = nullptr;
    if (napi_get_dataview_info(v.Env(), v, &bytes, &base, nullptr, nullptr) != napi_ok) return false;
    *data = base;
    *length = bytes;
    return true;
  }
  return false;
}

Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = 0, request = 0;
  if (info.Length() < 2 || !ToInt(info[0], &fd) || !ToInt(info[1], &request)) {
    Napi::TypeError::New(env, "ioctl(fd, request, arg?, name?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string name = info.Length() > 3 && info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "";
  unsigned long arg = 0;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    void* data = nullptr;
    size_t length = 0;
    int64_t value = 0;
    if (ViewBytes(info[2], &data, &length)) {
      arg = reinterpret_cast<unsigned long>(data);
    } else if (ToInt(info[2], &value)) {
      arg = static_cast<unsigned long>(value);
    } else {
      Napi::TypeError::New(env, "ioctl arg must be an integer, a bigint or a TypedArray").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  int r = ioctl(static_cast<int>(fd), static_cast<unsigned long>(request), arg);
  if (r < 0) {
    ErrnoError(env, errno, name.empty() ? "ioctl" : "ioctl " + name).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, r);
}

struct Mapping {
  void* addr;
  size_t length;
};

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, length = 0, offset = 0;
  if (info.Length() < 3 || !ToInt(info[0], &fd) || !ToInt(info[1], &length) || !ToInt(info[2], &offset) || length <= 0) {
    Napi::TypeError::New(env, "mmap(fd, length > 0, offset)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int flags = MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0);
  void* addr = mmap(nullptr, static_cast<size_t>(length), PROT_READ | PROT_WRITE, flags, static_cast<int>(fd), offset);
  if (addr == MAP_FAILED) {
    ErrnoError(env, errno, "mmap").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Wrap the mapping as a SharedArrayBuffer so worker threads share it; the mapping is released when the last
  // SharedArrayBuffer referring to it (in any thread) is collected.
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      addr, static_cast<size_t>(length), [](void* data, size_t len, void*) { munmap(data, len); }, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, store);
  // N-API has no SharedArrayBuffer constructor over external memory; a napi_value is a v8::Local in Node.
  static_assert(sizeof(v8::Local<v8::Value>) == sizeof(napi_value), "napi_value is not a v8::Local");
  v8::Local<v8::Value> as_value = sab;
  napi_value buffer;
  memcpy(&buffer, &as_value, sizeof buffer);
  Napi::Object result = Napi::Object::New(env);
  result.Set("buffer", Napi::Value(env, buffer));
  result.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(addr))));
  return result;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "memfdCreate(name, flags?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t flags = 0;
  if (info.Length() > 1) ToInt(info[1], &flags);
  int fd = memfd_create(info[0].As<Napi::String>().Utf8Value().c_str(), static_cast<unsigned>(flags));
  if (fd < 0) {
    ErrnoError(env, errno, "memfd_create").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value EventFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t init = 0, flags = 0;
  if (info.Length() > 0) ToInt(info[0], &init);
  if (info.Length() > 1) ToInt(info[1], &flags);
  int fd = eventfd(static_cast<unsigned>(init), static_cast<int>(flags));
  if (fd < 0) {
    ErrnoError(env, errno, "eventfd").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data = nullptr;
  size_t length = 0;
  if (info.Length() < 1 || !ViewBytes(info[0], &data, &length)) {
    Napi::TypeError::New(env, "addressOf(typedArray)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data)));
}

// close(2) for fds Node did not open itself (a worker thread closing a vCPU fd through fs would warn).
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (info.Length() < 1 || !ToInt(info[0], &fd) || fd < 0) {
    Napi::TypeError::New(env, "close(fd >= 0)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (close(static_cast<int>(fd)) < 0 && errno != EINTR) {
    ErrnoError(env, errno, "close").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t timeout = -1;
  if (info.Length() < 2 || !info[0].IsTypedArray() || !ToInt(info[1], &timeout)) {
    Napi::TypeError::New(env, "poll(Int32Array [fd, events, revents]*, timeoutMs)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_int32_array || ta.ElementLength() % 3 != 0 || ta.ElementLength() / 3 > 64) {
    Napi::TypeError::New(env, "poll: pollfds must be an Int32Array of up to 64 [fd, events, revents] triples")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int32_t* t = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  size_t n = ta.ElementLength() / 3;
  struct pollfd fds[64];
  for (size_t i = 0; i < n; i++) {
    fds[i].fd = t[3 * i];
    fds[i].events = static_cast<short>(t[3 * i + 1]);
    fds[i].revents = 0;
  }
  int r = poll(fds, n, static_cast<int>(timeout < -1 ? -1 : timeout));
  if (r < 0 && errno != EINTR) {
    ErrnoError(env, errno, "poll").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < n; i++) t[3 * i + 2] = r > 0 ? fds[i].revents : 0;
  return Napi::Number::New(env, r < 0 ? 0 : r);
}

Napi::Value ReadWriteFd(const Napi::CallbackInfo& info, bool write_it) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  void* data = nullptr;
  size_t length = 0;
  if (info.Length() < 2 || !ToInt(info[0], &fd) || !ViewBytes(info[1], &data, &length)) {
    Napi::TypeError::New(env, write_it ? "writeFd(fd, view)" : "readFd(fd, view)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t r = write_it ? write(static_cast<int>(fd), data, length) : read(static_cast<int>(fd), data, length);
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r));
}

Napi::Value ReadFd(const Napi::CallbackInfo& info) { return ReadWriteFd(info, false); }
Napi::Value WriteFd(const Napi::CallbackInfo& info) { return ReadWriteFd(info, true); }

// ---- vCPU thread kicks ----
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

constexpr int kMaxThreads = 1024;

struct KickTarget {
  pthread_t thread;
  pid_t tid;
  std::atomic<bool> ready{false};
  std::atomic<volatile uint8_t*> immediate_exit{nullptr};
  std::atomic<bool> has_timer{false};
  timer_t timer;
};

KickTarget g_targets[kMaxThreads];
std::atomic<int> g_thread_count{0};
std::atomic<bool> g_handler_installed{false};

// Async-signal-safe: finds the interrupted thread's entry and sets its immediate_exit byte.
void KickHandler(int) {
  pthread_t self = pthread_self();
  int n = g_thread_count.load();
  if (n > kMaxThreads) n = kMaxThreads;
  for (int i = 0; i < n; i++) {
    KickTarget& t = g_targets[i];
    if (t.ready.load() && pthread_equal(t.thread, self)) {
      volatile uint8_t* p = t.immediate_exit.load();
      if (p != nullptr) *p = 1;
      return;
    }
  }
}

int KickSignal() { return SIGRTMIN + 2; }

KickTarget* TargetArg(const Napi::CallbackInfo& info, const char* what) {
  int64_t id = -1;
  if (info.Length() < 1 || !ToInt(info[0], &id) || id < 0 || id >= g_thread_count.load() || id >= kMaxThreads ||
      !g_targets[id].ready.load()) {
    Napi::RangeError::New(info.Env(), std::string(what) + ": unknown thread id").ThrowAsJavaScriptException();
    return nullptr;
  }
  return &g_targets[id];
}

Napi::Value ThreadRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* ie = nullptr;
  size_t ie_len = 0;
  if (info.Length() >= 1 && !info[0].IsUndefined() && (!ViewBytes(info[0], &ie, &ie_len) || ie_len < 1)) {
    Napi::TypeError::New(env, "threadRegister(immediateExit?: a 1-byte view)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!g_handler_installed.exchange(true)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = KickHandler;  // no SA_RESTART: a blocking KVM_RUN must return EINTR
    sigemptyset(&sa.sa_mask);
    if (sigaction(KickSignal(), &sa, nullptr) < 0) {
      ErrnoError(env, errno, "sigaction").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, KickSignal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  int id = g_thread_count.fetch_add(1);
  if (id >= kMaxThreads) {
    ErrnoError(env, EMFILE, "threadRegister").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  KickTarget& t = g_targets[id];
  t.thread = pthread_self();
  t.tid = static_cast<pid_t>(syscall(SYS_gettid));
  t.immediate_exit.store(static_cast<volatile uint8_t*>(ie));
  t.ready.store(true);
  return Napi::Number::New(env, id);
}

Napi::Value ThreadKick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KickTarget* t = TargetArg(info, "threadKick");
  if (t == nullptr) return env.Undefined();
  int err = pthread_kill(t->thread, KickSignal());
  if (err != 0 && err != ESRCH) {
    ErrnoError(env, err, "pthread_kill").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, err == 0);
}

// Arms (or with usec 0 disarms) the thread's one-shot kick timer; a later call replaces the earlier deadline.
Napi::Value ThreadKickAfter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KickTarget* t = TargetArg(info, "threadKickAfter");
  if (t == nullptr) return env.Undefined();
  int64_t usec = -1;
  if (info.Length() < 2 || !ToInt(info[1], &usec) || usec < 0) {
    Napi::TypeError::New(env, "threadKickAfter(id, usec >= 0)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!t->has_timer.load()) {
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = KickSignal();
    sev.sigev_notify_thread_id = t->tid;
    if (timer_create(CLOCK_MONOTONIC, &sev, &t->timer) < 0) {
      ErrnoError(env, errno, "timer_create").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    t->has_timer.store(true);
  }
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = static_cast<time_t>(usec / 1000000);
  its.it_value.tv_nsec = static_cast<long>((usec % 1000000) * 1000);
  if (timer_settime(t->timer, 0, &its, nullptr) < 0) {
    ErrnoError(env, errno, "timer_settime").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return env.Undefined();
}

// Before the thread's kvm_run is unmapped: the handler stops writing to it and the timer is deleted.
Napi::Value ThreadUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KickTarget* t = TargetArg(info, "threadUnregister");
  if (t == nullptr) return env.Undefined();
  t->immediate_exit.store(nullptr);
  if (t->has_timer.exchange(false)) timer_delete(t->timer);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("ioctl", Napi::Function::New(env, Ioctl, "ioctl"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("eventfd", Napi::Function::New(env, EventFd, "eventfd"));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
  exports.Set("readFd", Napi::Function::New(env, ReadFd, "readFd"));
  exports.Set("writeFd", Napi::Function::New(env, WriteFd, "writeFd"));
  exports.Set("threadRegister", Napi::Function::New(env, ThreadRegister, "threadRegister"));
  exports.Set("threadKick", Napi::Function::New(env, ThreadKick, "threadKick"));
  exports.Set("threadKickAfter", Napi::Function::New(env, ThreadKickAfter, "threadKickAfter"));
  exports.Set("threadUnregister", Napi::Function::New(env, ThreadUnregister, "threadUnregister"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vireo_native, Init)
