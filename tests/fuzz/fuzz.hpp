// Shared by the libFuzzer harnesses (built with clang and -Dfuzz=true) and by fuzz-replay (built
// by the normal suite, which runs every checked-in input through the same code).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <typeinfo>

// Each harness defines its entry point under this name: LLVMFuzzerTestOneInput for libFuzzer, a
// name of its own when fuzz-replay links both harnesses into one executable.
#ifndef GG_FUZZ_ENTRY
#define GG_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace gg::fuzz {

// A finding: say what and abort, so that libFuzzer saves the input and fuzz-replay fails.
[[noreturn]] inline void finding(const char* what, const char* detail = "") {
  std::fprintf(stderr, "fuzz finding: %s%s%s\n", what, *detail ? ": " : "", detail);
  std::fflush(stderr);
  std::abort();
}

// An exception the API does not document for this input: a finding, with its type and message.
[[noreturn]] inline void unexpected(const char* where, const std::exception& e) {
  std::fprintf(stderr, "fuzz finding: %s threw an undocumented %s: %s\n", where, typeid(e).name(), e.what());
  std::fflush(stderr);
  std::abort();
}

}  // namespace gg::fuzz
