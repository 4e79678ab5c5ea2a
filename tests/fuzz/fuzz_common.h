#pragma once
// Shared by the fuzz targets: an invariant check that survives NDEBUG (a failed check aborts, so
// libFuzzer saves the input as a crash), and a byte reader for the fuzzer-chosen knobs that
// precede the payload.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "fuzz invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                            \
    }                                                                                     \
  } while (0)

namespace sluice::fuzz {

// Takes knob bytes off the front of the input; missing bytes read as 0, so every input is usable.
class Knobs {
 public:
  Knobs(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() {
    if (size_ == 0) return 0;
    size_--;
    return *data_++;
  }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  // What is left after the knobs.
  std::string_view rest() const { return {reinterpret_cast<const char*>(data_), size_}; }

 private:
  const uint8_t* data_;
  size_t size_;
};

}  // namespace sluice::fuzz
