#pragma once
// sluice.shared.DICT: process-wide key/value dictionaries with TTL, owned by C++ so they outlive
// every Lua VM (a reload builds new VMs; the host hands the same SharedDicts to them). Each
// dictionary is bounded in bytes: expired entries go first, then the least recently used.
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "core/clock.h"

namespace sluice::lua {

// nil is represented by "absent"; these are the storable types.
using SharedValue = std::variant<bool, double, std::string>;

enum class DictStatus : uint8_t {
  kOk,
  kNotFound,
  kNotANumber,
  kNoMemory,  // the entry alone is larger than the dictionary
};

class SharedDict {
 public:
  SharedDict(std::string name, size_t capacity_bytes, const Clock& clock);

  // ttl <= 0: never expires.
  bool get(std::string_view key, SharedValue* out);
  // `evicted` counts live entries pushed out to make room (OpenResty's "forcible").
  DictStatus set(std::string_view key, const SharedValue& value, Nanos ttl, int* evicted = nullptr);
  // incr on a missing key: kNotFound unless `init` is given, then key = init + delta.
  DictStatus incr(std::string_view key, double delta, const double* init, Nanos init_ttl,
                  double* out);
  void remove(std::string_view key);
  // Remaining TTL; false if missing. 0 means no expiry.
  bool ttl(std::string_view key, Nanos* out);

  const std::string& name() const { return name_; }
  size_t capacity() const { return capacity_; }
  size_t usedBytes() const;
  size_t size() const;

 private:
  struct Entry {
    std::string key;
    SharedValue value;
    Nanos expires = 0;  // 0: never
    size_t bytes = 0;
  };
  using Lru = std::list<Entry>;  // front = most recent

  static size_t entryBytes(std::string_view key, const SharedValue& v);
  bool expired(const Entry& e, Nanos now) const { return e.expires != 0 && e.expires <= now; }
  void eraseLocked(Lru::iterator it);
  // Makes room for `need` bytes; returns how many live entries were evicted.
  int makeRoomLocked(size_t need, Nanos now);

  const std::string name_;
  const size_t capacity_;
  const Clock& clock_;
  mutable std::mutex mu_;
  Lru lru_;
  std::unordered_map<std::string_view, Lru::iterator> index_;  // views into Entry::key
  size_t used_ = 0;
};
using SharedDictPtr = std::shared_ptr<SharedDict>;

// All dictionaries of the process, by name. Built from config by the host; a reload may add
// dictionaries (existing ones keep their data; a changed size takes effect on restart).
class SharedDicts {
 public:
  explicit SharedDicts(const Clock& clock) : clock_(clock) {}
  SharedDictPtr getOrCreate(const std::string& name, size_t capacity_bytes);
  SharedDictPtr find(std::string_view name) const;
  std::map<std::string, SharedDictPtr, std::less<>> all() const;

 private:
  const Clock& clock_;
  mutable std::mutex mu_;
  std::map<std::string, SharedDictPtr, std::less<>> dicts_;
};
using SharedDictsPtr = std::shared_ptr<SharedDicts>;

}  // namespace sluice::lua
