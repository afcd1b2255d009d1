#include "progress.hpp"

#include <algorithm>
#include <cstdio>

#include <sys/ioctl.h>
#include <unistd.h>

namespace gg::tools {

namespace {

constexpr int kBarWidth = 30;
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);

// "0:07", "12:34", "1:02:03".
std::string clock_text(double seconds) {
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

// Columns of the terminal on stderr; a line longer than that would wrap and '\r' would then
// only return to the start of its last row, leaving a trail of stale bars.
int terminal_columns() {
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

void write_stderr(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stderr);  // one call, so the line is not split by other output
  std::fflush(stderr);
}

}  // namespace

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

Progress::Progress(std::int64_t total, bool enabled)
    : total_(std::max<std::int64_t>(total, 0)), enabled_(enabled), start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (enabled_ && shown_ && !finished_) write_stderr("\n");
}

void Progress::update(std::int64_t done, const std::string& suffix) {
  if (!enabled_ || finished_) return;
  done_ = std::clamp<std::int64_t>(done, 0, total_);
  suffix_ = suffix;
  auto now = std::chrono::steady_clock::now();
  if (shown_ && now - last_draw_ < kRedrawInterval && done_ < total_) return;
  draw(false);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  draw(true);
  write_stderr("\n");
  finished_ = true;
}

void Progress::clear() {
  if (!enabled_ || !shown_) return;
  write_stderr("\r\x1b[K");  // carriage return, then erase to the end of the line
  shown_ = false;
}

void Progress::draw(bool final) {
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  const int filled = std::clamp(static_cast<int>(frac * kBarWidth), 0, kBarWidth);

  std::string line = "[";
  line.append(static_cast<std::size_t>(filled), '#');
  line.append(static_cast<std::size_t>(kBarWidth - filled), '-');
  line += ']';
  char buf[96];
  std::snprintf(buf, sizeof buf, " %3d%% %lld/%lld  ", static_cast<int>(frac * 100), static_cast<long long>(done_),
                static_cast<long long>(total_));
  line += buf;
  if (final)
    line += "took " + clock_text(elapsed);
  else if (done_ > 0)
    line += "ETA " + clock_text(elapsed / static_cast<double>(done_) * static_cast<double>(total_ - done_));
  else
    line += "ETA --:--";
  if (!suffix_.empty()) line += "  " + suffix_;

  std::size_t cols = static_cast<std::size_t>(terminal_columns());
  if (line.size() >= cols) line.resize(cols - 1);
  write_stderr("\r" + line + "\x1b[K");
  shown_ = true;
  last_draw_ = now;
}

}  // namespace gg::tools
