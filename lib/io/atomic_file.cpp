#include <gradgraph/atomic_file.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <streambuf>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace gg::io {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw std::runtime_error(path + ": " + what + ": " + errno_text(err));
}

std::string directory_of(const std::string& path) {
  std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// A stream buffer writing straight to a file descriptor. We use it instead of std::ofstream
// because we need the descriptor for fsync() and the errno of a failed write() for the message.
class FdBuf : public std::streambuf {
 public:
  explicit FdBuf(int fd) : fd_(fd), buf_(1 << 16) { setp(buf_.data(), buf_.data() + buf_.size()); }
  int error() const { return error_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* s, std::streamsize n) override {
    // Large blocks (tensor data) bypass the buffer: no point copying megabytes through it.
    if (n >= static_cast<std::streamsize>(buf_.size())) {
      if (!drain() || !write_all(s, static_cast<std::size_t>(n))) return 0;
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }

  int sync() override { return drain() ? 0 : -1; }

 private:
  bool drain() {
    std::size_t n = static_cast<std::size_t>(pptr() - pbase());
    bool ok = write_all(pbase(), n);
    setp(buf_.data(), buf_.data() + buf_.size());
    return ok;
  }

  bool write_all(const char* p, std::size_t n) {
    if (error_) return false;
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  int fd_;
  std::vector<char> buf_;
  int error_ = 0;
};

// Removes the temporary file unless released; keeps every failure path from leaking it.
struct TempGuard {
  std::string path;
  bool armed = true;
  ~TempGuard() {
    if (armed) ::unlink(path.c_str());
  }
};

bool fsync_retry(int fd) {
  while (::fsync(fd) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

// The rename is only durable once the directory entry is on disk too. Best effort: the new
// file is already in place, so a failure here is not worth reporting as a failed write.
void fsync_directory(const std::string& path) {
  int dfd = ::open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  fsync_retry(dfd);
  ::close(dfd);
}

}  // namespace

std::string temp_path_for(const std::string& path) {
  // pid separates processes, the counter separates threads and calls within one process.
  static std::atomic<unsigned long> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

void commit_temp_file(const std::string& temp_path, const std::string& path) {
  TempGuard guard{temp_path};
  int fd = ::open(temp_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot reopen temporary file " + temp_path, errno);
  bool synced = fsync_retry(fd);
  int err = errno;
  ::close(fd);
  if (!synced) fail(path, "fsync failed", err);
  if (::rename(temp_path.c_str(), path.c_str()) != 0) fail(path, "cannot rename temporary file into place", errno);
  guard.armed = false;
  fsync_directory(path);
}

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  if (path.empty()) throw std::runtime_error("write_file_atomic: empty file name");
  std::string tmp = temp_path_for(path);
  // O_EXCL: never clobber a file someone else happens to have at that name.
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail(path, "cannot create temporary file " + tmp, errno);
  TempGuard guard{tmp};
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd >= 0) ::close(fd);
    }
  } closer{fd};

  FdBuf buf(fd);
  std::ostream os(&buf);
  write(os);  // exceptions propagate unchanged; the guards clean up
  os.flush();
  if (buf.error()) fail(path, "write failed", buf.error());
  if (!os) throw std::runtime_error(path + ": write failed: output stream is in an error state");
  if (!fsync_retry(fd)) fail(path, "fsync failed", errno);
  closer.fd = -1;
  if (::close(fd) != 0) fail(path, "close failed", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail(path, "cannot rename temporary file into place", errno);
  guard.armed = false;
  fsync_directory(path);
}

}  // namespace gg::io
