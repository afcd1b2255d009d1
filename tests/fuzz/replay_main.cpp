// fuzz-replay: runs the harnesses' entry points over checked-in inputs, without libFuzzer, so the
// normal suite (gcc, and the sanitizer build) replays every seed and reproducer:
//   fuzz-replay idx DIR... checkpoint DIR...
// A word names the harness for the directories after it. A finding aborts (the harness's own
// check, or a sanitizer report); an empty directory list is an error, so a moved corpus cannot pass
// by replaying nothing.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int gg_fuzz_idx(const std::uint8_t* data, std::size_t size);
extern "C" int gg_fuzz_checkpoint(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  int (*harness)(const std::uint8_t*, std::size_t) = nullptr;
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "idx" || arg == "checkpoint") {
      harness = arg == "idx" ? gg_fuzz_idx : gg_fuzz_checkpoint;
      continue;
    }
    if (!harness) {
      std::fprintf(stderr, "fuzz-replay: %s: name a harness (idx or checkpoint) before its directories\n", argv[i]);
      return 2;
    }
    std::error_code ec;
    std::vector<fs::path> paths;
    for (const auto& e : fs::directory_iterator(arg, ec))
      if (e.is_regular_file()) paths.push_back(e.path());
    if (ec) {
      std::fprintf(stderr, "fuzz-replay: %s: %s\n", argv[i], ec.message().c_str());
      return 2;
    }
    std::sort(paths.begin(), paths.end());
    for (const fs::path& p : paths) {
      std::ifstream in(p, std::ios::binary);
      std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::fprintf(stderr, "%s\n", p.c_str());
      harness(bytes.data(), bytes.size());
      ++files;
    }
  }
  if (files == 0) {
    std::fprintf(stderr, "fuzz-replay: no inputs found\n");
    return 2;
  }
  std::fprintf(stderr, "fuzz-replay: %d inputs, no findings\n", files);
  return 0;
}
