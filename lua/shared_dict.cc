#include "lua/shared_dict.h"

namespace sluice::lua {

namespace {
// Bookkeeping per entry (list node, hash node, key and value headers), so a dictionary of
// many tiny entries is bounded too.
constexpr size_t kEntryOverhead = 96;
}  // namespace

SharedDict::SharedDict(std::string name, size_t capacity_bytes, const Clock& clock)
    : name_(std::move(name)), capacity_(capacity_bytes), clock_(clock) {}

size_t SharedDict::entryBytes(std::string_view key, const SharedValue& v) {
  size_t n = kEntryOverhead + key.size();
  if (const auto* s = std::get_if<std::string>(&v)) n += s->size();
  return n;
}

void SharedDict::eraseLocked(Lru::iterator it) {
  used_ -= it->bytes;
  index_.erase(std::string_view(it->key));
  lru_.erase(it);
}

int SharedDict::makeRoomLocked(size_t need, Nanos now) {
  if (used_ + need <= capacity_) return 0;
  // Expired entries first: dropping them costs nobody anything.
  for (auto it = lru_.begin(); it != lru_.end() && used_ + need > capacity_;) {
    auto next = std::next(it);
    if (expired(*it, now)) eraseLocked(it);
    it = next;
  }
  int evicted = 0;
  while (used_ + need > capacity_ && !lru_.empty()) {
    eraseLocked(std::prev(lru_.end()));
    evicted++;
  }
  return evicted;
}

bool SharedDict::get(std::string_view key, SharedValue* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto f = index_.find(key);
  if (f == index_.end()) return false;
  if (expired(*f->second, clock_.now())) {
    eraseLocked(f->second);
    return false;
  }
  lru_.splice(lru_.begin(), lru_, f->second);
  *out = f->second->value;
  return true;
}

DictStatus SharedDict::set(std::string_view key, const SharedValue& value, Nanos ttl,
                           int* evicted) {
  const Nanos now = clock_.now();
  const size_t bytes = entryBytes(key, value);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto f = index_.find(key); f != index_.end()) eraseLocked(f->second);
  if (bytes > capacity_) return DictStatus::kNoMemory;
  int n = makeRoomLocked(bytes, now);
  if (evicted) *evicted = n;
  lru_.push_front(Entry{std::string(key), value, ttl > 0 ? now + ttl : 0, bytes});
  index_.emplace(std::string_view(lru_.front().key), lru_.begin());
  used_ += bytes;
  return DictStatus::kOk;
}

DictStatus SharedDict::incr(std::string_view key, double delta, const double* init,
                            Nanos init_ttl, double* out) {
  const Nanos now = clock_.now();
  std::lock_guard<std::mutex> lock(mu_);
  auto f = index_.find(key);
  if (f != index_.end() && expired(*f->second, now)) {
    eraseLocked(f->second);
    f = index_.end();
  }
  if (f == index_.end()) {
    if (!init) return DictStatus::kNotFound;
    SharedValue v = *init + delta;
    size_t bytes = entryBytes(key, v);
    if (bytes > capacity_) return DictStatus::kNoMemory;
    makeRoomLocked(bytes, now);
    lru_.push_front(Entry{std::string(key), v, init_ttl > 0 ? now + init_ttl : 0, bytes});
    index_.emplace(std::string_view(lru_.front().key), lru_.begin());
    used_ += bytes;
    *out = *init + delta;
    return DictStatus::kOk;
  }
  auto* d = std::get_if<double>(&f->second->value);
  if (!d) return DictStatus::kNotANumber;
  *d += delta;  // keeps its TTL, like OpenResty
  *out = *d;
  lru_.splice(lru_.begin(), lru_, f->second);
  return DictStatus::kOk;
}

void SharedDict::remove(std::string_view key) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto f = index_.find(key); f != index_.end()) eraseLocked(f->second);
}

bool SharedDict::ttl(std::string_view key, Nanos* out) {
  const Nanos now = clock_.now();
  std::lock_guard<std::mutex> lock(mu_);
  auto f = index_.find(key);
  if (f == index_.end() || expired(*f->second, now)) return false;
  *out = f->second->expires == 0 ? 0 : f->second->expires - now;
  return true;
}

size_t SharedDict::usedBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

size_t SharedDict::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

SharedDictPtr SharedDicts::getOrCreate(const std::string& name, size_t capacity_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& d = dicts_[name];
  if (!d) d = std::make_shared<SharedDict>(name, capacity_bytes, clock_);
  return d;
}

SharedDictPtr SharedDicts::find(std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto f = dicts_.find(name);
  return f == dicts_.end() ? nullptr : f->second;
}

std::map<std::string, SharedDictPtr, std::less<>> SharedDicts::all() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dicts_;
}

}  // namespace sluice::lua
