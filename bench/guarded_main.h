// A benchmark's way out on an exception: nlohmann::json throws on misuse and on malformed input
// (PyTorch's reference output), and threads and allocations throw when the machine runs out.
// A benchmark prints one line naming itself and exits 1, rather than terminate with a core.
#ifndef FEDMOE_BENCH_GUARDED_MAIN_H_
#define FEDMOE_BENCH_GUARDED_MAIN_H_

#include <cstdio>
#include <exception>
#include <functional>

namespace fedmoe::bench {

inline int GuardedMain(const char* name, const std::function<int()>& run) {
  try {
    return run();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", name, error.what());
    return 1;
  }
}

}  // namespace fedmoe::bench

#endif  // FEDMOE_BENCH_GUARDED_MAIN_H_
