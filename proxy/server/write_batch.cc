#include "proxy/server/write_batch.h"

#include <algorithm>

namespace sluice {
namespace {
thread_local WriteBatch* tBatch = nullptr;
}  // namespace

WriteBatch::WriteBatch(uv_loop_t* loop) : loop_(loop) {
  uv_check_init(loop_, &check_);
  uv_prepare_init(loop_, &prepare_);
  check_.data = this;
  prepare_.data = this;
  uv_check_start(&check_, onCheck);
  uv_prepare_start(&prepare_, onPrepare);
  // Neither keeps the loop alive: a drained worker's loop ends with its last connection.
  uv_unref(reinterpret_cast<uv_handle_t*>(&check_));
  uv_unref(reinterpret_cast<uv_handle_t*>(&prepare_));
}

WriteBatch::~WriteBatch() {
  if (tBatch == this) tBatch = nullptr;
}

WriteBatch* WriteBatch::forThisThread() { return tBatch; }

void WriteBatch::bindToThisThread() { tBatch = this; }

bool BatchedWriter::deferFlush(size_t bytes, uv_loop_t* loop) {
  if (bytes > WriteBatch::kMaxDeferredBytes) return false;
  WriteBatch* batch = WriteBatch::forThisThread();
  return batch != nullptr && batch->defer(this, loop);
}

void BatchedWriter::cancelFlush() {
  if (!flush_deferred_) return;
  if (WriteBatch* batch = WriteBatch::forThisThread()) batch->cancel(this);
}

bool WriteBatch::defer(BatchedWriter* c, uv_loop_t* loop) {
  if (closed_ || loop != loop_) return false;
  if (!c->flush_deferred_) {
    c->flush_deferred_ = true;
    pending_.push_back(c);
  }
  return true;
}

void WriteBatch::cancel(BatchedWriter* c) {
  if (!c->flush_deferred_) return;
  c->flush_deferred_ = false;
  pending_.erase(std::remove(pending_.begin(), pending_.end(), c), pending_.end());
  // A connection closed by an earlier flush of the batch being run.
  std::replace(running_.begin(), running_.end(), c, static_cast<BatchedWriter*>(nullptr));
}

void WriteBatch::run() {
  if (pending_.empty()) return;
  running_.swap(pending_);
  for (size_t i = 0; i < running_.size(); ++i) {
    BatchedWriter* c = running_[i];
    if (!c) continue;
    c->flush_deferred_ = false;
    c->flushNow();  // may fail and close this or another connection of the batch (cancel)
  }
  running_.clear();
}

void WriteBatch::onCheck(uv_check_t* h) { static_cast<WriteBatch*>(h->data)->run(); }
void WriteBatch::onPrepare(uv_prepare_t* h) { static_cast<WriteBatch*>(h->data)->run(); }

void WriteBatch::close() {
  if (closed_) return;
  run();
  closed_ = true;
  uv_check_stop(&check_);
  uv_prepare_stop(&prepare_);
  uv_close(reinterpret_cast<uv_handle_t*>(&check_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&prepare_), nullptr);
}

}  // namespace sluice
