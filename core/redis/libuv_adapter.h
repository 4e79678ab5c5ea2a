#pragma once
// hiredis <-> libuv glue, used instead of <hiredis/adapters/libuv.h> from hiredis 0.14.1 because
// that one drops poll errors: libuv reports POLLERR (a refused connect, a reset) as status < 0
// with no events, the adapter returns without telling hiredis, libuv has stopped the poll, and
// the connection hangs until some timeout. Here an error is handed to hiredis as the events we
// were waiting for, so its read/write path sees the socket error at once (the fix hiredis 1.0
// made). Otherwise the same: one uv_poll_t per context, freed in its close callback.
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include <cstdlib>
#include <string>

namespace sluice::redis::detail {

struct LibuvEvents {
  redisAsyncContext* context;
  uv_poll_t handle;
  int events;
};

inline void libuvPoll(uv_poll_t* handle, int status, int events) {
  auto* p = static_cast<LibuvEvents*>(handle->data);
  int ev = status != 0 ? p->events : events;
  if (p->context != nullptr && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
  // hiredis may have freed the context in the read (cleanup clears p->context).
  if (p->context != nullptr && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
}

inline void libuvUpdate(LibuvEvents* p) {
  if (p->events) {
    uv_poll_start(&p->handle, p->events, libuvPoll);
  } else {
    uv_poll_stop(&p->handle);
  }
}

inline void libuvAddRead(void* privdata) {
  auto* p = static_cast<LibuvEvents*>(privdata);
  p->events |= UV_READABLE;
  libuvUpdate(p);
}
inline void libuvDelRead(void* privdata) {
  auto* p = static_cast<LibuvEvents*>(privdata);
  p->events &= ~UV_READABLE;
  libuvUpdate(p);
}
inline void libuvAddWrite(void* privdata) {
  auto* p = static_cast<LibuvEvents*>(privdata);
  p->events |= UV_WRITABLE;
  libuvUpdate(p);
}
inline void libuvDelWrite(void* privdata) {
  auto* p = static_cast<LibuvEvents*>(privdata);
  p->events &= ~UV_WRITABLE;
  libuvUpdate(p);
}
inline void libuvCleanup(void* privdata) {
  auto* p = static_cast<LibuvEvents*>(privdata);
  p->context = nullptr;  // the context is going away; a poll event still queued must not use it
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) { free(h->data); });
}

inline int libuvAttach(redisAsyncContext* ac, uv_loop_t* loop) {
  if (ac->ev.data != nullptr) return REDIS_ERR;
  auto* p = static_cast<LibuvEvents*>(calloc(1, sizeof(LibuvEvents)));
  if (p == nullptr) return REDIS_ERR;
  if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
    free(p);
    return REDIS_ERR;
  }
  ac->ev.addRead = libuvAddRead;
  ac->ev.delRead = libuvDelRead;
  ac->ev.addWrite = libuvAddWrite;
  ac->ev.delWrite = libuvDelWrite;
  ac->ev.cleanup = libuvCleanup;
  ac->ev.data = p;
  p->handle.data = p;
  p->context = ac;
  return REDIS_OK;
}

// AUTH [username] password as the first command of a new connection (nothing is sent when there
// is no password). Secrets are passed as binary-safe arguments, never formatted into a string.
inline void sendAuth(redisAsyncContext* ac, const std::string& username, const std::string& password,
                     redisCallbackFn* callback) {
  if (password.empty()) return;
  const char* argv[3] = {"AUTH", nullptr, nullptr};
  size_t lens[3] = {4, 0, 0};
  int argc = 1;
  if (!username.empty()) {
    argv[argc] = username.data();
    lens[argc++] = username.size();
  }
  argv[argc] = password.data();
  lens[argc++] = password.size();
  redisAsyncCommandArgv(ac, callback, nullptr, argc, argv, lens);
}

}  // namespace sluice::redis::detail
