#!/usr/bin/env bash
# gradgraph as other projects see it (issue 12): installed, then found through gradgraph.pc alone.
#
# usage: bash tests/test_downstream.sh SOURCE_DIR BUILD_DIR MESON
#
# Stages `meson install` of BUILD_DIR (already built: meson test builds first) into a temporary
# directory with --destdir, then checks:
#   - the installed headers are exactly lib/gradgraph/*.hpp and the generated ops.hpp, and each
#     compiles on its own (-Wall -Wextra -Wpedantic -Werror) with gradgraph.pc's Cflags and nothing
#     else, every gradgraph header it reads coming from the staged install;
#   - gradgraph.pc's flags name no source or build directory and no -march;
#   - libgradgraph.a, libgradgraph.so.0.1.0 with the soname libgradgraph.so.0, and the MNIST tools;
#   - examples/downstream, copied out of the source tree, builds with meson (shared and static)
#     and with CMake (shared and static) from PKG_CONFIG_PATH alone, and both programs run: they
#     learn XOR and exit non-zero if the loss did not drop. The shared ones find the staged
#     libgradgraph.so.0 through the RUNPATH both build systems give a build tree's programs.
set -uo pipefail

src=${1:?usage: test_downstream.sh SOURCE_DIR BUILD_DIR MESON}
build=${2:?usage: test_downstream.sh SOURCE_DIR BUILD_DIR MESON}
meson=${3:?usage: test_downstream.sh SOURCE_DIR BUILD_DIR MESON}
failures=0
passes=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
pass() {
  echo "ok: $*"
  passes=$((passes + 1))
}
# fatal WHAT LOG: a step the rest depends on failed; show its log and stop.
fatal() {
  echo "FAIL: $1; its output:" >&2
  sed 's/^/    | /' "$2" >&2
  echo "downstream: stopped after $passes checks passed ($((failures + 1)) failed)" >&2
  exit 1
}

# What the test drives must be there: a missing tool is a failure, never a skip (scripts/install-deps
# installs cmake and pkg-config).
for tool in cmake pkg-config ninja "${CXX:-c++}" readelf ldd; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "FAIL: $tool is not installed; scripts/install-deps (as root) installs what the suite needs" >&2
    exit 1
  }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gg-downstream.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/stage
log=$tmp/log

# --- the staged install ---------------------------------------------------------------------
"$meson" install -C "$build" --destdir "$stage" --no-rebuild >"$log" 2>&1 || fatal "meson install -C $build --destdir $stage" "$log"
mapfile -t pcs < <(find "$stage" -name gradgraph.pc)
[[ ${#pcs[@]} -eq 1 ]] || { echo "FAIL: expected one gradgraph.pc under $stage, found ${#pcs[@]}: ${pcs[*]}" >&2; exit 1; }
pcdir=$(dirname "${pcs[0]}")
# PKG_CONFIG_PATH alone: gradgraph.pc is relocatable (pkgconfig.relocatable), no sysroot needed.
export PKG_CONFIG_PATH=$pcdir
unset PKG_CONFIG_SYSROOT_DIR
[[ $(pkg-config --variable=pcfiledir gradgraph 2>&1) == "$pcdir" ]] ||
  { echo "FAIL: pkg-config does not find the staged gradgraph.pc ($pcdir): $(pkg-config --variable=pcfiledir gradgraph 2>&1)" >&2; exit 1; }
includedir=$(realpath -m "$(pkg-config --variable=includedir gradgraph)")
libdir=$(realpath -m "$(pkg-config --variable=libdir gradgraph)")
prefix=$(realpath -m "$(pkg-config --variable=prefix gradgraph)")
if [[ $includedir != "$stage"/* || $libdir != "$stage"/* ]]; then
  # shellcheck disable=SC2016  # the literal ${pcfiledir} of a relocatable .pc
  grep -q '^prefix=${pcfiledir}' "${pcs[0]}" ||
    echo "FAIL: gradgraph.pc is not relocatable ($(grep '^prefix=' "${pcs[0]}")): $build was set up before" \
      "pkgconfig.relocatable=true became meson.build's default; run: meson configure $build -Dpkgconfig.relocatable=true" >&2
  echo "FAIL: gradgraph.pc's includedir $includedir or libdir $libdir is outside the staged install $stage" >&2
  exit 1
fi
pass "gradgraph.pc points into the staged install ($prefix)"

# --- gradgraph.pc's flags -------------------------------------------------------------------
flags="$(pkg-config --cflags --libs gradgraph) $(pkg-config --static --cflags --libs gradgraph)"
if grep -q -- '-march' <<<"$flags"; then fail "gradgraph.pc passes -march to its users: $flags"; else pass "no -march in gradgraph.pc"; fi
if grep -qF -e "$(realpath "$src")" -e "$(realpath "$build")" <<<"$flags"; then
  fail "gradgraph.pc names the source or build tree: $flags"
else
  pass "gradgraph.pc names neither the source nor the build tree"
fi
static_libs=$(pkg-config --static --libs gradgraph)
for want in -lgradgraph -lblis -fopenmp -lz; do
  if grep -q -- "$want\b" <<<"$static_libs"; then
    pass "static linking flags have $want"
  else
    fail "pkg-config --static --libs gradgraph lacks $want: $static_libs"
  fi
done

# --- the headers ----------------------------------------------------------------------------
expected=$( (cd "$src/lib/gradgraph" && ls -- *.hpp; echo ops.hpp) | sort)
installed=$( (cd "$includedir/gradgraph" 2>/dev/null && ls -- *.hpp) | sort)
if [[ $expected == "$installed" ]]; then
  pass "the installed headers are lib/gradgraph/*.hpp and ops.hpp ($(wc -w <<<"$installed") files)"
else
  fail "installed headers differ from lib/gradgraph/*.hpp + ops.hpp: not installed: $(comm -23 <(echo "$expected") <(echo "$installed") | xargs) / not expected: $(comm -13 <(echo "$expected") <(echo "$installed") | xargs)"
fi
# check_header NAME: compiles #include <gradgraph/NAME> alone; every gradgraph header it reads
# must be the staged one (a copy in /usr/local/include would otherwise hide one not installed).
check_header() {
  local h=$1 out=$tmp/headers/$1
  mkdir -p "$out"
  # shellcheck disable=SC2046  # the flags are words
  if ! "${CXX:-c++}" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror $(pkg-config --cflags gradgraph) \
      -MD -MF "$out/deps" -x c++ - -o "$out/o" <<<"#include <gradgraph/$h>" >"$out/log" 2>&1; then
    echo "<gradgraph/$h> does not compile on its own against the installed headers:" >"$out/failed"
    head -n 20 "$out/log" >>"$out/failed"
    return
  fi
  local f
  # The make rule's words: drop the line continuations, one path a line.
  # shellcheck disable=SC1003  # '\\' is tr's backslash, no quote escaped
  for f in $(tr -d '\\' <"$out/deps" | tr ' ' '\n' | grep '/gradgraph/'); do
    [[ $(realpath -m "$f") == "$stage"/* ]] || echo "<gradgraph/$h> reads $f, which is not the staged install" >>"$out/failed"
  done
}
export -f check_header
export tmp stage CXX
# Two at a time: the suite runs on two cores next to other tests.
(cd "$includedir/gradgraph" && ls -- *.hpp) | xargs -P 2 -I{} bash -c 'check_header {}'
for h in $installed; do
  if [[ -f $tmp/headers/$h/failed ]]; then
    fail "$(cat "$tmp/headers/$h/failed")"
  else
    pass "<gradgraph/$h> compiles on its own from the install"
  fi
done

# --- the libraries and the tools ------------------------------------------------------------
if [[ -f $libdir/libgradgraph.a ]]; then pass "libgradgraph.a installed"; else fail "no libgradgraph.a in $libdir"; fi
so=$libdir/libgradgraph.so.0.1.0
if [[ -f $so ]]; then
  soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  if [[ $soname == libgradgraph.so.0 ]]; then
    pass "libgradgraph.so.0.1.0 has the soname libgradgraph.so.0"
  else
    fail "libgradgraph.so.0.1.0's soname is '$soname', not libgradgraph.so.0"
  fi
  if [[ $(readlink "$libdir/libgradgraph.so.0") == libgradgraph.so.0.1.0 && $(readlink "$libdir/libgradgraph.so") == libgradgraph.so.0 ]]; then
    pass "libgradgraph.so -> libgradgraph.so.0 -> libgradgraph.so.0.1.0"
  else
    fail "the libgradgraph.so symlinks are not .so -> .so.0 -> .so.0.1.0"
  fi
else
  fail "no $so"
fi
for t in mnist-train mnist-eval mnist-predict; do
  if [[ -x $prefix/bin/$t ]] && "$prefix/bin/$t" --help >/dev/null 2>&1; then
    pass "bin/$t installed and runs"
  else
    fail "bin/$t is not installed under $prefix or does not run --help"
  fi
done

# --- examples/downstream, built out of the source tree --------------------------------------
cp -r "$src/examples/downstream" "$tmp/downstream"
# meson test puts the build tree's lib/ on LD_LIBRARY_PATH (this test depends on the library), and
# LD_LIBRARY_PATH wins over RUNPATH: the programs would load the build tree's libgradgraph.so.0.
unset LD_LIBRARY_PATH
# run_program WHAT BINARY LINKAGE: runs it (exit 0 = XOR learned, weights round-tripped) and checks
# where libgradgraph comes from: the staged .so (shared) or nowhere (static).
run_program() {
  local what=$1 bin=$2 linkage=$3
  if "$bin" "$tmp/$what.st" >"$log" 2>&1; then
    pass "$what: $(head -n 1 "$log")"
  else
    fail "$what exited non-zero:"
    sed 's/^/    | /' "$log" >&2
  fi
  local lib
  lib=$(ldd "$bin" | awk '/libgradgraph/ { print $3 }')
  if [[ $linkage == shared ]]; then
    if [[ $(realpath -m "$lib") == "$libdir/libgradgraph.so.0.1.0" ]]; then
      pass "$what loads the staged libgradgraph.so.0"
    else
      fail "$what loads libgradgraph from '$lib', not the staged $libdir"
    fi
  elif [[ -z $lib ]]; then
    pass "$what needs no libgradgraph.so"
  else
    fail "$what, linked static, loads $lib"
  fi
}

"$meson" setup "$tmp/build-meson" "$tmp/downstream" >"$log" 2>&1 || fatal "meson setup of examples/downstream" "$log"
ninja -C "$tmp/build-meson" -j 2 >"$log" 2>&1 || fatal "building examples/downstream with meson" "$log"
pass "examples/downstream builds with meson (dependency('gradgraph'), shared and static)"
run_program "meson xor-shared" "$tmp/build-meson/xor-shared" shared
run_program "meson xor-static" "$tmp/build-meson/xor-static" static

cmake -S "$tmp/downstream" -B "$tmp/build-cmake" -G Ninja >"$log" 2>&1 || fatal "cmake configure of examples/downstream" "$log"
cmake --build "$tmp/build-cmake" -j 2 >"$log" 2>&1 || fatal "building examples/downstream with cmake" "$log"
pass "examples/downstream builds with CMake (pkg_check_modules IMPORTED_TARGET, shared and static)"
run_program "cmake xor-shared" "$tmp/build-cmake/xor-shared" shared
run_program "cmake xor-static" "$tmp/build-cmake/xor-static" static

echo "downstream: $passes checks passed, $failures failed"
[[ $failures -eq 0 ]]
