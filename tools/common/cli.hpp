// What every tool's main() does with errors: one line "<tool>: <what>" on stderr, exit 2 for a bad
// flag or argument (with a pointer to --help), 1 for anything else (bad data, I/O).
#pragma once

#include <gradgraph/atomic_file.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>

namespace gg::tools {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// parse(argc, argv) returns std::optional<Options> (empty after --help); run(options) returns the
// exit code.
template <typename Parse, typename Run>
int cli_main(const char* tool, int argc, char** argv, Parse parse, Run run) {
  gg::io::remove_temp_files_on_signals();  // Ctrl-C during a save leaves no temporary file
  try {
    auto o = parse(argc, argv);
    if (!o) return 0;
    return run(*o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s (see --help)\n", tool, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
    return 1;
  }
}

}  // namespace gg::tools
