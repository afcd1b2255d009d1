// A one-line progress bar on stderr for the long-running tools:
//   [###########-------------------]  42% 210/500  ETA 0:12  loss 0.367
// redrawn in place with '\r', at most ~10 times a second so drawing never costs training time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace gg::tools {

// Whether stderr is a terminal; the caller combines it with "is this run long enough to be worth
// a bar" to decide `enabled`. A bar in a log file would just be noise.
bool stderr_is_terminal();

class Progress {
 public:
  // A disabled Progress does nothing at all, so callers need no `if` around every update.
  Progress(std::int64_t total, bool enabled);
  // Moves to a fresh line if the bar is still on screen (e.g. an exception cut the loop short).
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Records that `done` of `total` steps are complete; `suffix` (e.g. "loss 0.367") ends the line.
  // Redraws only if ~0.1 s passed since the last draw, the bar is not on screen, or done == total.
  void update(std::int64_t done, const std::string& suffix = "");
  // Draws the final state with the elapsed time and ends the line. Later calls do nothing.
  void finish();
  // Erases the bar so the caller can print a normal line; the next update redraws it.
  void clear();

 private:
  void draw(bool final);

  std::int64_t total_;
  bool enabled_;
  std::int64_t done_ = 0;
  std::string suffix_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool shown_ = false;
  bool finished_ = false;
};

}  // namespace gg::tools
