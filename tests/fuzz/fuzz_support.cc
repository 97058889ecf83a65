#include "tests/fuzz/fuzz_support.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "logging/log.h"

namespace fedmoe::fuzz {
namespace {

std::filesystem::path MakeScratchDirectory() {
  std::error_code error;
  std::filesystem::path base = "/dev/shm";
  if (!std::filesystem::is_directory(base, error)) base = std::filesystem::temp_directory_path();
  std::filesystem::path directory = base / absl::StrCat("fedmoe-fuzz-", getpid());
  std::filesystem::remove_all(directory, error);
  std::filesystem::create_directories(directory, error);
  if (error) Violated(absl::StrCat("cannot make ", directory.string(), ": ", error.message()));
  return directory;
}

}  // namespace

const std::filesystem::path& ScratchDirectory() {
  static const std::filesystem::path* const directory = [] {
    auto* made = new std::filesystem::path(MakeScratchDirectory());
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(ScratchDirectory(), ignored);
    });
    return made;
  }();
  return *directory;
}

std::filesystem::path WriteScratchFile(std::string_view name, std::span<const uint8_t> bytes) {
  const std::filesystem::path path = ScratchDirectory() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) Violated(absl::StrCat("cannot write ", path.string()));
  return path;
}

void DiscardLogs() {
  static const bool done = [] {
    const int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd < 0) Violated("cannot open /dev/null");
    SetLogFileDescriptor(fd);
    return true;
  }();
  (void)done;
}

void Violated(std::string_view what) {
  std::fprintf(stderr, "fuzz property violated: %.*s\n", static_cast<int>(what.size()),
               what.data());
  std::abort();
}

}  // namespace fedmoe::fuzz
