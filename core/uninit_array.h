#pragma once
// Stack room for up to N objects, left uninitialised. For per-request arrays sized for the
// worst case (16 limit rules) of which a request uses a few: value-initialising the whole array
// cost more than the work on the elements used. Every element is assigned before it is read.
#include <cstddef>
#include <type_traits>

namespace sluice {

template <class T, size_t N>
union UninitArray {
  static_assert(std::is_trivially_destructible_v<T> && std::is_trivially_copyable_v<T>,
                "only for plain records: nothing is constructed or destroyed");
  UninitArray() {}  // deliberately leaves items_ alone
  T& operator[](size_t i) { return items_[i]; }
  const T& operator[](size_t i) const { return items_[i]; }
  T* data() { return items_; }
  const T* data() const { return items_; }

  T items_[N];
};

}  // namespace sluice
