// What the fuzz targets share. Each target defines LLVMFuzzerTestOneInput; libFuzzer drives it
// in the clang tree that tests/fuzz.sh builds, and replay_main.cc runs a corpus through it in
// every other build (tests/fuzz/CMakeLists.txt).
#ifndef FEDMOE_TESTS_FUZZ_FUZZ_SUPPORT_H_
#define FEDMOE_TESTS_FUZZ_FUZZ_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fedmoe::fuzz {

// A directory of this process's own, made at first use and removed at exit: under /dev/shm
// where it exists, so that the per-input file writes stay in memory.
const std::filesystem::path& ScratchDirectory();

// Writes `bytes` to `name` in the scratch directory, replacing it, and returns the path.
std::filesystem::path WriteScratchFile(std::string_view name, std::span<const uint8_t> bytes);

// Sends the structured logs to /dev/null. Events are still built and escaped (arbitrary bytes
// in a field are part of what is fuzzed); only the terminal is spared.
void DiscardLogs();

// A property the code under test promised and broke: prints it and aborts, which libFuzzer
// reports as a crash with the input that caused it.
[[noreturn]] void Violated(std::string_view what);

}  // namespace fedmoe::fuzz

#define FEDMOE_FUZZ_CHECK(condition, what)            \
  do {                                                \
    if (!(condition)) ::fedmoe::fuzz::Violated(what); \
  } while (false)

#endif  // FEDMOE_TESTS_FUZZ_FUZZ_SUPPORT_H_
