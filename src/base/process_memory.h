#pragma once
// This process's memory as the kernel counts it, for progress lines and the memory planner's
// check against reality.
#include <cstdint>

namespace qlora {

// Resident set size now (from /proc/self/statm; 0 when unknown).
int64_t current_rss_bytes();
// High-water mark of the resident set size (getrusage ru_maxrss).
int64_t peak_rss_bytes();
// Memory the kernel says new allocations can get without swapping (MemAvailable in
// /proc/meminfo); 0 when unknown.
int64_t available_memory_bytes();

}  // namespace qlora
