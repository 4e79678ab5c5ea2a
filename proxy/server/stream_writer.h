#pragma once
// Writing to a libuv stream without a heap copy in the common case: try_write first, queue only
// what the kernel did not take. Callers coalesce one event's output into one buffer and flush
// once, so a small proxied response is one syscall.
#include <uv.h>

#include <string>

namespace sluice {

struct WriteReq {
  uv_write_t req;
  std::string data;
};

// Writes `data` (consumed: left empty). `owner` becomes req.data for `cb`; `cb` must delete the
// WriteReq*. Returns 0 or a libuv error.
inline int writeStream(uv_stream_t* stream, std::string* data, void* owner, uv_write_cb cb) {
  if (data->empty()) return 0;
  size_t off = 0;
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t b = uv_buf_init(data->data(), static_cast<unsigned>(data->size()));
    int n = uv_try_write(stream, &b, 1);
    if (n > 0) off = static_cast<size_t>(n);
    else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      data->clear();
      return n;
    }
  }
  if (off == data->size()) {
    data->clear();
    return 0;
  }
  auto* w = new WriteReq;
  if (off == 0) {
    w->data.swap(*data);
  } else {
    w->data.assign(data->data() + off, data->size() - off);
    data->clear();
  }
  w->req.data = owner;
  uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, stream, &b, 1, cb);
  if (rc != 0) delete w;
  return rc;
}

}  // namespace sluice
