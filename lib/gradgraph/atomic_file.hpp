// Crash-safe file output: a file is either its old contents or its complete new contents,
// never a truncated mix, because we write a temporary file next to it and rename() it over
// the target only once every byte is on disk.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace gg::io {

// Calls `write` with a binary stream onto a fresh temporary file in the directory of `path`,
// then flushes, fsyncs and renames it over `path`. On failure the temporary file is removed
// and an existing `path` is left untouched. I/O failures throw std::runtime_error
// "<path>: <what failed>: <strerror>"; an exception thrown by `write` itself is rethrown as is.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

// Only a missing path or a regular file is replaced (its mode kept): a symlink, a FIFO, a device
// or a directory at `path` throws std::runtime_error "<path>: is a FIFO, not a regular file; ...".

// What write_file_atomic would refuse, checked before the work that produces the file (tools call
// it before training): `path` is non-empty, missing or a regular file, and its directory exists
// and is writable. Throws std::runtime_error naming `path`.
void check_output_path(const std::string& path);

// Installs handlers for SIGINT, SIGTERM and SIGHUP (unless ignored) that remove the temporary
// file being written, then end the process as the signal would have: an interrupted save leaves
// the old file and no "<path>.tmp.*" behind. For programs (the tools), once at start.
void remove_temp_files_on_signals();

// A fresh temporary name next to `path` ("<path>.tmp.<pid>.<counter>"), for writers that insist
// on a file name (cairo's PNG writer). The file is not created. Finish with commit_temp_file.
std::string temp_path_for(const std::string& path);

// Fsyncs `temp_path` and renames it over `path`. On failure removes `temp_path` and throws
// std::runtime_error naming `path`.
void commit_temp_file(const std::string& temp_path, const std::string& path);

}  // namespace gg::io
