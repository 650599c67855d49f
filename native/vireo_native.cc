// vireo's native layer: only the syscalls Node lacks, no policy.
//
//   ioctl(fd, request, arg)        arg: integer, bigint, or a TypedArray/DataView whose bytes are the struct
//   mmap(fd, length, offset, priv) MAP_SHARED (MAP_PRIVATE with priv) mapping as a SharedArrayBuffer, plus its
//                                  host address (bigint)
//   memfdCreate(name, flags)       memfd_create(2)
//   eventfd(initval, flags)        eventfd(2)
//   close(fd)                      close(2) for fds Node did not open (vCPU fds in worker threads)
//   addressOf(view)                host address of a TypedArray's first byte (for structs that carry pointers)
//   poll(pollfds, timeoutMs)       poll(2) over Int32Array triples [fd, events, revents]; revents written back;
//                                  returns the number ready (0 on timeout or EINTR)
//   readFd(fd, view) / writeFd(fd, view)
//                                  read(2)/write(2) returning -errno instead of throwing, so that EAGAIN on a
//                                  non-blocking TAP or eventfd costs no exception on the packet path
//   mmapReserve(length, align)     MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE zero pages, `align`-aligned, as a
//                                  SharedArrayBuffer plus its address: a range other mappings are placed over
//   mmapFixed(view, fd, offset)    MAP_SHARED|MAP_FIXED of fd at offset over exactly the bytes of `view` (a view
//                                  of an mmapReserve buffer; address and length page-aligned)
//   unixListen(path, backlog)      socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC), bind, listen
//   unixConnect(path)              a blocking, close-on-exec connected AF_UNIX stream socket
//   accept(fd)                     accept4(SOCK_NONBLOCK|SOCK_CLOEXEC): the new fd, or -errno (-EAGAIN)
//   socketpair(nonblock)           AF_UNIX SOCK_STREAM pair, close-on-exec
//   setNonBlocking(fd, on)         fcntl O_NONBLOCK
//   sendmsg(fd, view, fds?)        one sendmsg(2) with the fds as SCM_RIGHTS (at most 8): bytes sent or -errno
//   recvmsg(fd, view, maxFds)      one recvmsg(2) (MSG_CMSG_CLOEXEC): {bytes or -errno, fds, truncated}; fds
//                                  beyond maxFds (at most 8) are not installed by the kernel (MSG_CTRUNC)
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
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
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
  if (info.Length() < 3 || !ToInt(info[0], &fd) || !ToInt(info[1], &length) || !ToInt(info[2], &offset) || length <= 0 ||
      (info.Length() > 3 && !info[3].IsBoolean() && !info[3].IsUndefined())) {
    Napi::TypeError::New(env, "mmap(fd, length > 0, offset, private?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // private: MAP_PRIVATE, pages read from fd as they are first touched, writes copied on write (a lazy restore).
  bool priv = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  int flags = (priv ? MAP_PRIVATE : MAP_SHARED) | (fd < 0 ? MAP_ANONYMOUS : 0);
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

// fcntl(F_ADD_SEALS) with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: a memfd (made with MFD_ALLOW_SEALING) whose
// size nobody can change any more, so that a process it is shared with cannot truncate it under our mapping
// (touching a truncated page raises SIGBUS).
Napi::Value SealSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (info.Length() < 1 || !ToInt(info[0], &fd)) {
    Napi::TypeError::New(env, "sealSize(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (fcntl(static_cast<int>(fd), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    ErrnoError(env, errno, "fcntl(F_ADD_SEALS)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return env.Undefined();
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

// A SharedArrayBuffer over [addr, addr + length), unmapped when the last reference to it is collected.
napi_value WrapMapping(void* addr, size_t length) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      addr, length, [](void* data, size_t len, void*) { munmap(data, len); }, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, store);
  v8::Local<v8::Value> as_value = sab;
  napi_value buffer;
  memcpy(&buffer, &as_value, sizeof buffer);
  return buffer;
}

Napi::Value MmapReserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t length = 0, align = 0;
  if (info.Length() < 2 || !ToInt(info[0], &length) || !ToInt(info[1], &align) || length <= 0 || align <= 0 ||
      (align & (align - 1)) != 0 || align % sysconf(_SC_PAGESIZE) != 0) {
    Napi::TypeError::New(env, "mmapReserve(length > 0, align: a power of 2, a multiple of the page size)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  size_t len = static_cast<size_t>(length), al = static_cast<size_t>(align);
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  len = (len + page - 1) / page * page;
  uint8_t* raw = static_cast<uint8_t*>(
      mmap(nullptr, len + al, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (raw == MAP_FAILED) {
    ErrnoError(env, errno, "mmap").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uintptr_t start = (reinterpret_cast<uintptr_t>(raw) + al - 1) & ~(static_cast<uintptr_t>(al) - 1);
  uint8_t* aligned = reinterpret_cast<uint8_t*>(start);
  if (aligned > raw) munmap(raw, static_cast<size_t>(aligned - raw));
  size_t tail = static_cast<size_t>((raw + len + al) - (aligned + len));
  if (tail > 0) munmap(aligned + len, tail);
  Napi::Object result = Napi::Object::New(env);
  result.Set("buffer", Napi::Value(env, WrapMapping(aligned, static_cast<size_t>(length))));
  result.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(start)));
  return result;
}

Napi::Value MmapFixed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data = nullptr;
  size_t length = 0;
  int64_t fd = -1, offset = 0;
  if (info.Length() < 3 || !ViewBytes(info[0], &data, &length) || !ToInt(info[1], &fd) || !ToInt(info[2], &offset) ||
      fd < 0 || offset < 0) {
    Napi::TypeError::New(env, "mmapFixed(view, fd >= 0, offset >= 0)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (length == 0 || reinterpret_cast<uintptr_t>(data) % page != 0 || length % page != 0) {
    Napi::RangeError::New(env, "mmapFixed: the view's address and length must be non-zero page multiples")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* addr = mmap(data, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, static_cast<int>(fd), offset);
  if (addr == MAP_FAILED) {
    int err = errno;
    // Put the reservation's zero pages back, so the range stays mapped whatever happened.
    mmap(data, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    ErrnoError(env, err, "mmap").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return env.Undefined();
}

bool UnixAddress(Napi::Env env, const Napi::Value& v, struct sockaddr_un* addr, const char* usage) {
  std::string path = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) {
    Napi::TypeError::New(env, std::string(usage) + ": path must be 1 to 107 bytes").ThrowAsJavaScriptException();
    return false;
  }
  memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un addr;
  int64_t backlog = 1;
  if (info.Length() < 1 || !UnixAddress(env, info[0], &addr, "unixListen(path, backlog?)")) return env.Undefined();
  if (info.Length() > 1) ToInt(info[1], &backlog);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) < 0 ||
      listen(fd, static_cast<int>(backlog)) < 0) {
    int err = errno;
    close(fd);
    ErrnoError(env, err, "bind/listen").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un addr;
  if (info.Length() < 1 || !UnixAddress(env, info[0], &addr, "unixConnect(path)")) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) < 0) {
    int err = errno;
    close(fd);
    ErrnoError(env, err, "connect").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (info.Length() < 1 || !ToInt(info[0], &fd) || fd < 0) {
    Napi::TypeError::New(env, "accept(fd >= 0)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int r = accept4(static_cast<int>(fd), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool nonblock = info.Length() > 0 && info[0].ToBoolean().Value();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0, sv) < 0) {
    ErrnoError(env, errno, "socketpair").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t{0}, Napi::Number::New(env, sv[0]));
  out.Set(uint32_t{1}, Napi::Number::New(env, sv[1]));
  return out;
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  if (info.Length() < 2 || !ToInt(info[0], &fd) || fd < 0) {
    Napi::TypeError::New(env, "setNonBlocking(fd >= 0, on)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int flags = fcntl(static_cast<int>(fd), F_GETFL);
  if (flags < 0 || fcntl(static_cast<int>(fd), F_SETFL,
                         info[1].ToBoolean().Value() ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0) {
    ErrnoError(env, errno, "fcntl").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

constexpr int kMaxMsgFds = 8;

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1;
  void* data = nullptr;
  size_t length = 0;
  if (info.Length() < 2 || !ToInt(info[0], &fd) || !ViewBytes(info[1], &data, &length)) {
    Napi::TypeError::New(env, "sendmsg(fd, view, fds?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fds[kMaxMsgFds];
  size_t nfds = 0;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array a = info[2].As<Napi::Array>();
    if (a.Length() > kMaxMsgFds) {
      Napi::RangeError::New(env, "sendmsg: at most 8 fds").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (uint32_t i = 0; i < a.Length(); i++) {
      int64_t v = -1;
      if (!ToInt(a.Get(i), &v)) {
        Napi::TypeError::New(env, "sendmsg: fds must be integers").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      fds[nfds++] = static_cast<int>(v);
    }
  }
  struct iovec iov = {data, length};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMsgFds)];
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t r = sendmsg(static_cast<int>(fd), &msg, MSG_NOSIGNAL);
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r));
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd = -1, max_fds = kMaxMsgFds;
  void* data = nullptr;
  size_t length = 0;
  if (info.Length() < 2 || !ToInt(info[0], &fd) || !ViewBytes(info[1], &data, &length) ||
      (info.Length() > 2 && (!ToInt(info[2], &max_fds) || max_fds < 0 || max_fds > kMaxMsgFds))) {
    Napi::TypeError::New(env, "recvmsg(fd, view, maxFds 0..8?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  struct iovec iov = {data, length};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMsgFds)];
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max_fds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * static_cast<size_t>(max_fds));
  }
  ssize_t r = recvmsg(static_cast<int>(fd), &msg, MSG_CMSG_CLOEXEC);
  Napi::Object result = Napi::Object::New(env);
  Napi::Array fds = Napi::Array::New(env);
  uint32_t n = 0;
  if (r >= 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int v;
        memcpy(&v, CMSG_DATA(c) + i * sizeof(int), sizeof v);
        fds.Set(n++, Napi::Number::New(env, v));
      }
    }
  }
  result.Set("bytes", Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r)));
  result.Set("fds", fds);
  result.Set("truncated", Napi::Boolean::New(env, r >= 0 && (msg.msg_flags & MSG_CTRUNC) != 0));
  return result;
}

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
  exports.Set("sealSize", Napi::Function::New(env, SealSize, "sealSize"));
  exports.Set("eventfd", Napi::Function::New(env, EventFd, "eventfd"));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
  exports.Set("readFd", Napi::Function::New(env, ReadFd, "readFd"));
  exports.Set("writeFd", Napi::Function::New(env, WriteFd, "writeFd"));
  exports.Set("mmapReserve", Napi::Function::New(env, MmapReserve, "mmapReserve"));
  exports.Set("mmapFixed", Napi::Function::New(env, MmapFixed, "mmapFixed"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  exports.Set("sendmsg", Napi::Function::New(env, SendMsg, "sendmsg"));
  exports.Set("recvmsg", Napi::Function::New(env, RecvMsg, "recvmsg"));
  exports.Set("threadRegister", Napi::Function::New(env, ThreadRegister, "threadRegister"));
  exports.Set("threadKick", Napi::Function::New(env, ThreadKick, "threadKick"));
  exports.Set("threadKickAfter", Napi::Function::New(env, ThreadKickAfter, "threadKickAfter"));
  exports.Set("threadUnregister", Napi::Function::New(env, ThreadUnregister, "threadUnregister"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vireo_native, Init)
