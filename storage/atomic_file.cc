#include "storage/atomic_file.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fedmoe::storage {
namespace {

absl::Status ErrnoError(std::string_view what, const std::filesystem::path& path) {
  return absl::InternalError(
      absl::StrCat(std::string(what), " ", path.string(), ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Create(const std::filesystem::path& path,
                                                          std::filesystem::perms mode) {
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::string temp_template =
      (directory / absl::StrCat(".", path.filename().string(), ".XXXXXX")).string();
  const int fd = ::mkstemp(temp_template.data());
  if (fd < 0) return ErrnoError("cannot create a temporary file beside", path);
  return AtomicFileWriter(path, temp_template, fd, mode);
}

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path, std::filesystem::path temp_path,
                                   int fd, std::filesystem::perms mode)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd), mode_(mode) {}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)),
      mode_(other.mode_) {}

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = std::exchange(other.fd_, -1);
    mode_ = other.mode_;
  }
  return *this;
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(temp_path_.c_str());
  fd_ = -1;
}

absl::Status AtomicFileWriter::Append(std::string_view bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError("the atomic file writer is already spent");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status status = ErrnoError("cannot write", temp_path_);
      Abandon();
      return status;
    }
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError("the atomic file writer is already spent");
  auto fail = [&](std::string_view what, const std::filesystem::path& about) {
    absl::Status status = ErrnoError(what, about);
    Abandon();
    return status;
  };
  if (::fchmod(fd_, static_cast<mode_t>(mode_)) != 0) return fail("cannot chmod", temp_path_);
  if (::fsync(fd_) != 0) return fail("cannot fsync", temp_path_);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    absl::Status status = ErrnoError("cannot close", temp_path_);
    ::unlink(temp_path_.c_str());
    return status;
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    absl::Status status = ErrnoError("cannot rename into place", path_);
    ::unlink(temp_path_.c_str());
    return status;
  }
  // The rename is durable only once the directory entry is.
  SyncParentDirectory(path_);
  return absl::OkStatus();
}

void SyncParentDirectory(const std::filesystem::path& path) {
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY);
  if (directory_fd >= 0) {
    ::fsync(directory_fd);
    ::close(directory_fd);
  }
}

absl::Status RenameDurably(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoError("cannot rename into place", to);
  SyncParentDirectory(to);
  return absl::OkStatus();
}

absl::StatusOr<std::string> FileSha256(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  bool ok = context != nullptr && EVP_DigestInit_ex(context, EVP_sha256(), nullptr) == 1;
  std::string buffer(size_t{1} << 20, '\0');
  while (ok) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status status = ErrnoError("cannot read", path);
      EVP_MD_CTX_free(context);
      ::close(fd);
      return status;
    }
    if (n == 0) break;
    ok = EVP_DigestUpdate(context, buffer.data(), static_cast<size_t>(n)) == 1;
  }
  std::string digest(32, '\0');
  unsigned int length = 0;
  ok = ok &&
       EVP_DigestFinal_ex(context, reinterpret_cast<unsigned char*>(digest.data()), &length) == 1 &&
       length == 32;
  EVP_MD_CTX_free(context);
  ::close(fd);
  if (!ok) return absl::InternalError("OpenSSL's SHA-256 failed");
  return digest;
}

absl::Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents,
                                 std::filesystem::perms mode) {
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path, mode);
  if (!writer.ok()) return writer.status();
  if (absl::Status status = writer->Append(contents); !status.ok()) return status;
  return writer->Commit();
}

}  // namespace fedmoe::storage
