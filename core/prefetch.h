#pragma once
// prefetchLine: start loading a cache line the caller will soon read or write.
//
// Not __builtin_prefetch: GCC (12) treats it as free of side effects, so an inline function
// whose only effect is a prefetch is discovered "const" and every call to it is deleted.
// BehaviourTracker::prefetch lost its prefetches that way (risk evaluate paid three full cache
// misses on the set locks). A volatile asm is never deleted or merged.

namespace sluice {

inline void prefetchLine(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#elif defined(__aarch64__)
  asm volatile("prfm pstl1keep, %0" : : "Q"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

}  // namespace sluice
