#include <gradgraph/atomic_file.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <streambuf>
#include <vector>

#include <csignal>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace gg::io {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// The temporary file being written, for the signal handler: a fixed buffer and a lock-free flag,
// since a handler may only read memory and call async-signal-safe functions (unlink, raise). One
// at a time is enough: the tools write their files one after another.
char pending_temp[4096];
std::atomic<bool> has_pending_temp{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void register_temp(const std::string& p) {
  has_pending_temp.store(false);
  if (p.size() >= sizeof pending_temp) return;
  std::memcpy(pending_temp, p.c_str(), p.size() + 1);
  has_pending_temp.store(true);
}

void unregister_temp() { has_pending_temp.store(false); }

extern "C" void remove_temp_and_reraise(int sig) {
  if (has_pending_temp.load()) ::unlink(pending_temp);
  // The default action (end the process, with the signal's status for the parent to see).
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

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
    unregister_temp();
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

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

// The mode to give the new file: the replaced file's (a private checkpoint stays private), or -1
// for a new one (then the temporary file's 0666 & ~umask stands). rename() would replace a
// symlink, a FIFO or a device node (as root, /dev/null) with a regular file: refuse instead.
int mode_to_keep(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return -1;
    fail(path, "cannot inspect the target", errno);
  }
  if (!S_ISREG(st.st_mode))
    throw std::runtime_error(path + ": is " + kind_of(st.st_mode) + ", not a regular file; refusing to replace it");
  return static_cast<int>(st.st_mode & 07777);
}

}  // namespace

void check_output_path(const std::string& path) {
  if (path.empty()) throw std::runtime_error("empty file name");
  (void)mode_to_keep(path);
  const std::string dir = directory_of(path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail(path, "cannot use the directory " + dir, errno);
  if (!S_ISDIR(st.st_mode)) throw std::runtime_error(path + ": " + dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) fail(path, "cannot write in the directory " + dir, errno);
}

void remove_temp_files_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = remove_temp_and_reraise;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    // A signal the caller ignores (nohup) stays ignored.
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(sig, &sa, nullptr);
  }
}

std::string temp_path_for(const std::string& path) {
  // pid separates processes, the counter separates threads and calls within one process.
  static std::atomic<unsigned long> counter{0};
  std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  register_temp(tmp);  // the caller's writer creates it next; commit_temp_file ends the registration
  return tmp;
}

void commit_temp_file(const std::string& temp_path, const std::string& path) {
  TempGuard guard{temp_path};
  const int mode = mode_to_keep(path);
  int fd = ::open(temp_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot reopen temporary file " + temp_path, errno);
  if (mode >= 0 && ::fchmod(fd, static_cast<mode_t>(mode)) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, "cannot keep the mode of the file it replaces", err);
  }
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
  const int mode = mode_to_keep(path);
  std::string tmp = temp_path_for(path);  // registered for the signal handler
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
  if (mode >= 0 && ::fchmod(fd, static_cast<mode_t>(mode)) != 0) fail(path, "cannot keep the mode of the file it replaces", errno);

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
