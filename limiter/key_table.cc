#include "limiter/key_table.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace sluice::limiter::detail {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

void* mapTableMemory(size_t bytes) {
  // Over-map by one huge page, then trim the head and tail so the table starts 2 MB aligned
  // (transparent huge pages only back aligned 2 MB ranges).
  const size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();  // config load time, never the data path
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  const size_t head = aligned - start;
  const size_t mapped = (bytes + 4095) & ~size_t{4095};
  if (head > 0) munmap(raw, head);
  if (span - head > mapped) munmap(reinterpret_cast<void*>(aligned + mapped), span - head - mapped);
  void* table = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(table, mapped, MADV_HUGEPAGE);  // advisory: without THP the table still works
#endif
  return table;
}

void unmapTableMemory(void* memory, size_t bytes) {
  if (memory != nullptr) munmap(memory, (bytes + 4095) & ~size_t{4095});
}

}  // namespace sluice::limiter::detail
