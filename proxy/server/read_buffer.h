#pragma once
// Every read on a worker lands in one thread-local buffer: a read callback consumes (or copies)
// its bytes before returning, so idle connections cost no read memory at all.
#include <uv.h>

namespace sluice {

constexpr size_t kReadBufferSize = 64 * 1024;

inline void workerReadAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  thread_local char storage[kReadBufferSize];
  *buf = uv_buf_init(storage, sizeof(storage));
}

}  // namespace sluice
