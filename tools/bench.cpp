// bench: how close one gradgraph training step of the notebook network (784-64-10, ReLU,
// softmax cross-entropy, float32, column-per-example layout) comes to the BLIS GEMMs it needs.
//
// For each case it times, in this process and with the same thread count:
//   * the raw GEMM floor: the five sgemm calls of one step (Z1 = W1 X, Z2 = W2 A1,
//     dW2 = dZ2 A1^T, dA1 = W2^T dZ2, dW1 = dZ1 X^T) with exactly the program's shapes and
//     strides (X stored example-major [m][784] and viewed as {784, m} with strides (1, 784));
//   * the gradgraph step: a gg::Program fetching the loss, an accuracy node and the optimizer's
//     updates (plain SGD full batch; momentum 0.9, lr 0.05 for mini-batches);
// and prints step / floor, GFLOP/s, Program::planned_bytes and the process's peak RSS next to the
// targets. `bench --help` lists the options; docs/performance.md has measured output.
#include <gradgraph/gradgraph.hpp>
#include <gradgraph/idx.hpp>

#include <blis.h>
#include <omp.h>

#include <boost/program_options.hpp>

#include <dirent.h>
#include <xmmintrin.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::int64_t kIn = 784, kHidden = 64, kOut = 10;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

// "12.3 ms", "456 us", "1.23 s".
std::string fmt_time(double s) {
  if (s >= 1.0) return fmt("%.3f s", s);
  if (s >= 1e-3) return fmt("%.2f ms", s * 1e3);
  return fmt("%.1f us", s * 1e6);
}

std::string mb(double bytes) { return fmt("%.1f MB", bytes / 1e6); }

// ---- machine ---------------------------------------------------------------------------------

struct CpuInfo {
  std::string model = "?";
  int logical = 0, family = -1, model_id = -1;
  std::string flags;
  bool has(const std::string& f) const { return (" " + flags + " ").find(" " + f + " ") != std::string::npos; }
};

CpuInfo read_cpuinfo() {
  CpuInfo c;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  auto value = [](const std::string& l) {
    auto p = l.find(':');
    std::string v = p == std::string::npos ? "" : l.substr(p + 1);
    while (!v.empty() && v.front() == ' ') v.erase(v.begin());
    return v;
  };
  while (std::getline(in, line)) {
    if (line.rfind("processor", 0) == 0)
      ++c.logical;
    else if (line.rfind("model name", 0) == 0 && c.model == "?")
      c.model = value(line);
    else if (line.rfind("cpu family", 0) == 0 && c.family < 0)
      c.family = std::atoi(value(line).c_str());
    else if (line.rfind("model\t", 0) == 0 && c.model_id < 0)
      c.model_id = std::atoi(value(line).c_str());
    else if (line.rfind("flags", 0) == 0 && c.flags.empty())
      c.flags = value(line);
  }
  return c;
}

// Peak and current resident set size of this process, from /proc/self/status (kB -> bytes).
std::int64_t status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(in, line))
    if (line.rfind(k, 0) == 0) return std::atoll(line.c_str() + k.size()) * 1024;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::int64_t>(ru.ru_maxrss) * 1024;
}
std::int64_t peak_rss() { return status_bytes("VmHWM"); }
std::int64_t current_rss() { return status_bytes("VmRSS"); }

// Resets the peak RSS to the current RSS (Linux >= 4.0), so that a phase's peak can be read.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

// CPU time (utime + stime, clock ticks) of every thread of this process.
std::map<int, long long> thread_cpu_ticks() {
  std::map<int, long long> out;
  DIR* d = opendir("/proc/self/task");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/stat");
    std::string s;
    std::getline(in, s);
    const auto rp = s.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream rest(s.substr(rp + 2));
    std::string field;
    long long utime = 0, stime = 0;
    // Fields after the command: state(3) ... utime(14) stime(15).
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::atoll(field.c_str());
      if (i == 15) stime = std::atoll(field.c_str());
    }
    out[std::atoi(e->d_name)] = utime + stime;
  }
  closedir(d);
  return out;
}

// Busy clock ticks of the whole machine (all CPUs), from the first line of /proc/stat.
long long system_busy_ticks() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  long long v[8] = {};
  in >> cpu;
  for (long long& x : v) in >> x;
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];  // user nice system irq softirq steal
}

// Which threads burned CPU during a timed phase: oversubscription shows as more busy threads
// than --threads, or as CPU time above threads x wall time.
struct ThreadWatch {
  std::map<int, long long> before;
  Clock::time_point t0;
  struct rusage ru0 {};
  long long sys0 = 0;
  void start() {
    before = thread_cpu_ticks();
    sys0 = system_busy_ticks();
    getrusage(RUSAGE_SELF, &ru0);
    t0 = Clock::now();
  }
  double others = 0;  // other processes' CPUs during the last reported phase
  std::string report() {
    const double wall = seconds_since(t0);
    struct rusage ru1 {};
    getrusage(RUSAGE_SELF, &ru1);
    auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
    const double cpu = tv(ru1.ru_utime) - tv(ru0.ru_utime) + tv(ru1.ru_stime) - tv(ru0.ru_stime);
    const auto after = thread_cpu_ticks();
    const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
    int busy = 0;
    std::string each;
    for (const auto& [tid, ticks] : after) {
      auto it = before.find(tid);
      const double used = static_cast<double>(ticks - (it == before.end() ? 0 : it->second)) / hz;
      if (used > 0.1 * wall) ++busy;
      if (!each.empty()) each.push_back(' ');
      each.append(fmt("%.0f%%", 100.0 * used / std::max(wall, 1e-9)));
    }
    // Other processes on the machine during the phase, in CPUs: the timings are only as good as this is small.
    others = std::max(0.0, static_cast<double>(system_busy_ticks() - sys0) / hz - cpu) / std::max(wall, 1e-9);
    return std::to_string(after.size()) + " threads (" + each + " of wall), busy " + std::to_string(busy) +
           ", CPU/wall " + fmt("%.2f", cpu / std::max(wall, 1e-9)) + "; other processes " + fmt("%.2f", others) +
           " CPUs" + (others > 0.1 ? " (NOISY: the machine was not idle)" : "");
  }
};

// Waits (up to `limit` seconds) until other processes use less than 5% of one CPU over half a
// second: on a shared machine a compile in the background halves every number here.
void wait_quiet(double limit) {
  if (limit <= 0) return;
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  auto t0 = Clock::now();
  for (;;) {
    const long long b0 = system_busy_ticks();
    usleep(500000);
    const double others = static_cast<double>(system_busy_ticks() - b0) / hz / 0.5;
    if (others < 0.05) return;
    if (seconds_since(t0) > limit) {
      std::printf("    (the machine stayed busy: other processes use %.2f CPUs; timing anyway)\n", others);
      return;
    }
  }
}

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// ---- raw BLIS GEMMs ----------------------------------------------------------------------------

// The five GEMMs of one training step, with the program's operands and strides:
//   Z1  {64, m}   = W1 {64, 784} . X {784, m}          X strides (1, 784): example-major data
//   Z2  {10, m}   = W2 {10, 64}  . A1 {64, m}
//   dW2 {10, 64}  = dZ2 {10, m}  . A1^T {m, 64}        A1^T strides (1, m)
//   dA1 {64, m}   = W2^T {64,10} . dZ2 {10, m}         W2^T strides (1, 64)
//   dW1 {64, 784} = dZ1 {64, m}  . X^T {m, 784}        X^T strides (784, 1): contiguous rows
// Z1 and A1 share a buffer, as do dA1 and dZ1 (the program overwrites them in place).
struct GemmNames {
  static constexpr std::array<const char*, 5> name = {"Z1 = W1 X", "Z2 = W2 A1", "dW2 = dZ2 A1^T", "dA1 = W2^T dZ2",
                                                      "dW1 = dZ1 X^T"};
};

std::array<double, 5> gemm_flops(std::int64_t m) {
  const double M = static_cast<double>(m);
  return {2.0 * kHidden * kIn * M, 2.0 * kOut * kHidden * M, 2.0 * kOut * M * kHidden, 2.0 * kHidden * kOut * M,
          2.0 * kHidden * M * kIn};
}

double step_flops(std::int64_t m) {
  double s = 0;
  for (double f : gemm_flops(m)) s += f;
  return s;
}

struct GemmSet {
  std::int64_t m;
  const float* X;  // [m][784]
  int threads;
  std::vector<float> W1, W2, H, Z2, dZ2, G, dW1, dW2;

  GemmSet(std::int64_t m_, const float* x, int threads_) : m(m_), X(x), threads(threads_) {
    const auto M = static_cast<std::size_t>(m);
    W1.resize(kHidden * kIn);
    W2.resize(kOut * kHidden);
    H.resize(kHidden * M);
    Z2.resize(kOut * M);
    dZ2.resize(kOut * M);
    G.resize(kHidden * M);
    dW1.resize(kHidden * kIn);
    dW2.resize(kOut * kHidden);
    // Small deterministic values in [-0.05, 0.05): no denormals, no overflow.
    std::uint32_t s = 12345;
    auto fill = [&](std::vector<float>& v) {
      for (float& x : v) {
        s = s * 1664525u + 1013904223u;
        x = static_cast<float>(s >> 8) / 16777216.0f * 0.1f - 0.05f;
      }
    };
    fill(W1), fill(W2), fill(H), fill(Z2), fill(dZ2), fill(G);
  }

  void run(int which) {
    float one = 1.0f, zero = 0.0f;
    const dim_t M = m;
    // Threads per call, as the program sets them (BLIS's expert API), not BLIS's global setting.
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(threads, &rntm);
    switch (which) {
      case 0:  // Z1 {64, m} = W1 {64, 784} . X {784, m}, X strides (1, 784)
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, kHidden, M, kIn, &one, W1.data(), kIn, 1,
                     const_cast<float*>(X), 1, kIn, &zero, H.data(), M, 1, nullptr, &rntm);
        break;
      case 1:  // Z2 {10, m} = W2 {10, 64} . A1 {64, m}
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, kOut, M, kHidden, &one, W2.data(), kHidden, 1, H.data(), M,
                     1, &zero, Z2.data(), M, 1, nullptr, &rntm);
        break;
      case 2:  // dW2 {10, 64} = dZ2 {10, m} . A1^T {m, 64}, A1^T strides (1, m)
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, kOut, kHidden, M, &one, dZ2.data(), M, 1, H.data(), 1, M,
                     &zero, dW2.data(), kHidden, 1, nullptr, &rntm);
        break;
      case 3:  // dA1 {64, m} = W2^T {64, 10} . dZ2 {10, m}, W2^T strides (1, 64)
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, kHidden, M, kOut, &one, W2.data(), 1, kHidden, dZ2.data(), M,
                     1, &zero, G.data(), M, 1, nullptr, &rntm);
        break;
      default:  // dW1 {64, 784} = dZ1 {64, m} . X^T {m, 784}, X^T strides (784, 1)
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, kHidden, kIn, M, &one, G.data(), M, 1, const_cast<float*>(X),
                     kIn, 1, &zero, dW1.data(), kIn, 1, nullptr, &rntm);
        break;
    }
  }
};

struct GemmTimes {
  std::int64_t m = 0;
  std::array<double, 5> each{};  // median seconds per GEMM
  double floor = 0;              // median of the per-rep sum
};

// Times repetitions of the five calls; rep() can be interleaved with gradgraph steps so that the
// floor and the step see the same machine (a shared or throttled VM drifts by 10% and more).
class GemmTimer {
 public:
  GemmTimer(std::int64_t m, const float* X, int threads) : set_(m, X, threads) {}
  // One repetition of the five GEMMs; returns its total time. Untimed when record is false.
  double rep(bool record = true) {
    double sum = 0;
    for (int g = 0; g < 5; ++g) {
      auto t0 = Clock::now();
      set_.run(g);
      const double dt = seconds_since(t0);
      sum += dt;
      if (record) t_[static_cast<std::size_t>(g)].push_back(dt);
    }
    if (record) sums_.push_back(sum);
    return sum;
  }
  GemmTimes result() const {
    GemmTimes out;
    out.m = set_.m;
    for (std::size_t g = 0; g < 5; ++g) out.each[g] = median(t_[g]);
    out.floor = median(sums_);
    return out;
  }

 private:
  GemmSet set_;
  std::array<std::vector<double>, 5> t_;
  std::vector<double> sums_;
};

GemmTimes time_gemms(std::int64_t m, const float* X, int threads, int reps, int warmup) {
  GemmTimer t(m, X, threads);
  for (int r = 0; r < warmup; ++r) t.rep(false);
  for (int r = 0; r < reps; ++r) t.rep();
  return t.result();
}

void print_gemms(const GemmTimes& g) {
  const auto fl = gemm_flops(g.m);
  std::printf("  raw BLIS sgemm, m = %lld (median of each call; floor = median of the 5-call sum)\n",
              static_cast<long long>(g.m));
  std::printf("    %-16s %12s  %7s\n", "GEMM", "time", "rate");
  for (std::size_t i = 0; i < 5; ++i)
    std::printf("    %-16s %12s  %7.1f GFLOP/s\n", GemmNames::name[i], fmt_time(g.each[i]).c_str(),
                fl[i] / g.each[i] / 1e9);
  std::printf("    %-16s %12s  %7.1f GFLOP/s  (%.4f GFLOP)\n", "floor (sum)", fmt_time(g.floor).c_str(),
              step_flops(g.m) / g.floor / 1e9, step_flops(g.m) / 1e9);
}

// ---- the network -------------------------------------------------------------------------------

// The notebook's network through the library: its layer spec, trainer and batch iterator, as
// mnist-train builds them (columns layout: X {784, batch} over example-major rows).
struct Net {
  gg::Graph g{gg::f32};
  gg::train::Model model;
  std::unique_ptr<gg::train::Trainer> trainer;
  Net(gg::train::Optimizer opt, int threads, double sparse_density = gg::kDefaultSparseDensity) {
    model = gg::train::classifier(g, gg::nn::parse("dense64,relu,dense10"), gg::Shape{28, 28}, kOut, gg::nn::Layout::columns);
    gg::train::TrainOptions o;
    o.optimizer = opt;
    o.compile.threads = threads;
    o.compile.seed = 1;
    o.compile.sparse_density = sparse_density;
    trainer = std::make_unique<gg::train::Trainer>(g, model, o);
  }
  gg::Program& program() { return trainer->train_program(); }
  std::vector<gg::Program::Feed> feeds(const gg::train::Batch& b) const {
    return {{model.x, b.x, b.sparse}, {model.labels, b.labels}};
  }
  // "sparse" or "dense" per product that reads X, as the last run chose.
  std::string choices() {
    std::string out;
    for (const auto& c : program().product_choices()) out += (out.empty() ? "" : ", ") + c.name + (c.sparse ? " sparse" : " dense");
    return out;
  }
};

gg::train::BatchOptions batch_options(std::int64_t size, int threads, std::uint64_t seed) {
  gg::train::BatchOptions bo;
  bo.batch_size = size;
  bo.seed = seed;
  bo.threads = threads;
  return bo;
}

// ---- report rows ---------------------------------------------------------------------------------

struct Row {
  std::string what;
  std::int64_t m = 0;
  double time = 0, floor = 0, flops = 0, target = 0;
  std::optional<double> planned, peak;
  double others = 0;  // the most CPUs other processes used while this row was timed
};

void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-30s %6s %11s %11s %7s %7s %8s %10s %10s %6s\n", "case", "m", "time", "GEMM floor", "ratio", "target",
              "GFLOP/s", "planned", "peak RSS", "noise");
  for (const Row& r : rows) {
    const std::string ratio = r.floor > 0 ? fmt("%.2fx", r.time / r.floor) : "-";
    const std::string target = r.target > 0 ? fmt("<=%.2fx", r.target) : "-";
    const bool miss = r.floor > 0 && r.target > 0 && r.time / r.floor > r.target;
    std::printf("%-30s %6lld %11s %11s %7s %7s %8.1f %10s %10s %6.2f%s\n", r.what.c_str(), static_cast<long long>(r.m),
                fmt_time(r.time).c_str(), r.floor > 0 ? fmt_time(r.floor).c_str() : "-", ratio.c_str(), target.c_str(),
                r.flops > 0 ? r.flops / r.time / 1e9 : 0.0, r.planned ? mb(*r.planned).c_str() : "-",
                r.peak ? mb(*r.peak).c_str() : "-", r.others, miss ? "  MISSED" : "");
  }
  std::printf(
      "(noise: the most CPUs other processes used while a row was timed; above 0.10 the row is not trustworthy)\n");
}

// Per-kernel wall time between two snapshots of the program's profile (the program only
// accumulates): the mean per step of each kernel, largest first, and the share of the step that
// is not in the five GEMMs. `wall` is the measured time per step over the same runs.
void print_kernel_table(const std::vector<gg::Program::StepProfile>& before,
                        const std::vector<gg::Program::StepProfile>& after, double wall, const std::string& title) {
  std::vector<gg::Program::StepProfile> prof = after;
  for (std::size_t i = 0; i < prof.size() && i < before.size(); ++i) {
    prof[i].seconds -= before[i].seconds;
    prof[i].calls -= before[i].calls;
  }
  double total = 0, gemm = 0;
  for (const auto& s : prof) {
    total += s.seconds;
    if (s.op == "matmul") gemm += s.seconds;
  }
  const double per = 1.0 / static_cast<double>(std::max<std::int64_t>(1, prof.empty() ? 1 : prof.front().calls));
  std::printf("  per-kernel profile, %s:\n", title.c_str());
  std::vector<std::size_t> order(prof.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return prof[a].seconds > prof[b].seconds; });
  for (std::size_t i : order) {
    const auto& s = prof[i];
    std::printf("    %2zu %-28s %-26s %12s %6.1f%%\n", i, s.op.c_str(), s.name.c_str(),
                fmt_time(s.seconds * per).c_str(), 100.0 * s.seconds / std::max(total, 1e-12));
  }
  std::printf(
      "    kernels %s per step (GEMMs %s, other kernels %s); the profiled steps took %s each,\n"
      "    so %s per step is outside the kernels (feeds, fetches, dispatch)\n",
      fmt_time(total * per).c_str(), fmt_time(gemm * per).c_str(), fmt_time((total - gemm) * per).c_str(),
      fmt_time(wall).c_str(), fmt_time(wall - total * per).c_str());
}

// Runs `runs` more steps with the program's profiling on and prints the kernel table.
template <typename RunStep>
void print_profile(gg::Program& p, std::int64_t batch, int runs, double quiet, RunStep&& run_step) {
  wait_quiet(quiet);
  ThreadWatch w;
  w.start();
  const auto before = p.profile(batch);
  p.set_profiling(true);
  auto t0 = Clock::now();
  for (int r = 0; r < runs; ++r) run_step();
  const double wall = seconds_since(t0) / runs;
  p.set_profiling(false);
  const std::string threads = w.report();
  print_kernel_table(before, p.profile(batch), wall,
                     std::to_string(runs) + " more steps, m = " + std::to_string(batch) + ", mean per step");
  std::printf("    threads during the profiled steps: %s\n", threads.c_str());
}

// ---- options ---------------------------------------------------------------------------------

struct Options {
  int threads = 2, reps = 20, warmup = 3, steps = 2000, epochs = 3, cnn_steps = 30;
  double wait_quiet = 0, sparse_density = gg::kDefaultSparseDensity;
  std::string data, only = "all";
  bool arch_sweep = false, sweep_child = false, profile = true, ftz = false;
};

// Arch ids of BLIS 0.9's arch_t worth timing on an x86-64 CPU with AVX-512 (knl needs AVX512PF,
// bulldozer, piledriver and steamroller need FMA4: they die with SIGILL on Intel).
struct ArchChoice {
  int id;
  const char* name;
};
constexpr ArchChoice kSweep[] = {{BLIS_ARCH_SKX, "skx"},        {BLIS_ARCH_HASWELL, "haswell"},
                                 {BLIS_ARCH_ZEN3, "zen3"},      {BLIS_ARCH_ZEN2, "zen2"},
                                 {BLIS_ARCH_ZEN, "zen"},        {BLIS_ARCH_SANDYBRIDGE, "sandybridge"},
                                 {BLIS_ARCH_GENERIC, "generic"}};

void blis_header(const CpuInfo& cpu, int threads) {
  cntx_t* c = bli_gks_query_cntx();
  const arch_t id = bli_arch_query_id();
  auto bs = [&](bszid_t b) { return static_cast<long>(bli_cntx_get_blksz_def_dt(BLIS_FLOAT, b, c)); };
  std::printf("machine: %s, family %d model %d, %d logical CPUs (%s)\n", cpu.model.c_str(), cpu.family, cpu.model_id,
              cpu.logical,
              cpu.has("avx512f") ? "AVX-512F, AVX2, FMA"
              : cpu.has("avx2")  ? "AVX2, FMA, no AVX-512"
                                 : "no AVX2");
  std::printf("BLIS %s, sub-configuration '%s' (arch id %d%s), sgemm blocksizes MR %ld NR %ld KC %ld MC %ld NC %ld\n",
              bli_info_get_version_str(), bli_arch_string(id), static_cast<int>(id),
              std::getenv("BLIS_ARCH_TYPE") ? ", forced by BLIS_ARCH_TYPE" : ", auto-detected", bs(BLIS_MR),
              bs(BLIS_NR), bs(BLIS_KC), bs(BLIS_MC), bs(BLIS_NC));
  if (cpu.has("avx512f") && id != BLIS_ARCH_SKX && !std::getenv("BLIS_ARCH_TYPE"))
    std::printf(
        "  note: the CPU has AVX-512 but BLIS runs its '%s' kernels (%s): BLIS 0.9 picks 'skx' only when it can\n"
        "        count the AVX-512 FMA units from the CPUID brand string (Xeon Platinum/Gold/... SKU numbers);\n"
        "        '%s' names none, so it falls back (BLIS_ARCH_DEBUG=1 prints 'Number of FMA units unknown').\n"
        "        BLIS_ARCH_TYPE=%d forces skx; `bench --arch-sweep` measures each kernel set.\n",
        bli_arch_string(id), id == BLIS_ARCH_HASWELL ? "AVX2, 256-bit" : "not AVX-512", cpu.model.c_str(),
        static_cast<int>(BLIS_ARCH_SKX));
  std::printf(
      "threads: %d (BLIS and gradgraph kernels, one libgomp pool); denormals %s; OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s "
      "OMP_NUM_THREADS=%s BLIS_NUM_THREADS=%s\n",
      threads, (_mm_getcsr() & 0x8040) == 0x8040 ? "flushed to zero (--ftz)" : "IEEE (gradgraph's default)",
      env_or("OMP_WAIT_POLICY", "unset"), env_or("GOMP_SPINCOUNT", "unset"), env_or("OMP_NUM_THREADS", "unset"),
      env_or("BLIS_NUM_THREADS", "unset"));
}

int arch_sweep(const Options& o, const char* self) {
  std::printf("sgemm under each BLIS sub-configuration (BLIS_ARCH_TYPE=<id>), %d threads, median of %d reps:\n",
              o.threads, o.reps);
  std::printf("%-12s %4s %4s %4s | %-36s | %-36s | %s\n", "config", "id", "MR", "NR",
              "full batch m=60000: floor, GFLOP/s", "mini-batch m=128: floor, GFLOP/s", "noise");
  for (const ArchChoice& a : kSweep) {
    std::string cmd = "BLIS_ARCH_TYPE=" + std::to_string(a.id) + " '" + std::string(self) +
                      "' --sweep-child --threads " + std::to_string(o.threads) + " --reps " + std::to_string(o.reps) +
                      " --wait-quiet " + std::to_string(o.wait_quiet) + " --data '" + o.data + "'";
    std::fflush(stdout);
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("cannot run " + cmd);
    char buf[512];
    std::string out;
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int rc = pclose(p);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    std::printf("%-12s %4d %s\n", a.name, a.id,
                rc == 0 ? out.c_str() : ("failed (status " + std::to_string(rc) + ")").c_str());
  }
  return 0;
}

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "bench: times one training step of the notebook network (784-64-10, float32) in gradgraph against\n"
      "the raw BLIS GEMMs it needs, and prints one table.\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help and exit")
    ("threads", po::value(&o.threads)->default_value(2), "threads for BLIS and gradgraph's kernels")
    ("reps", po::value(&o.reps)->default_value(20), "timed full-batch steps (and raw full-batch GEMM repetitions)")
    ("warmup", po::value(&o.warmup)->default_value(3), "untimed full-batch steps first")
    ("steps", po::value(&o.steps)->default_value(2000), "timed mini-batch steps (batch 128, fixed data)")
    ("epochs", po::value(&o.epochs)->default_value(3),
       "timed mini-batch epochs (469 shuffled batches each) after one warm-up epoch")
    ("data", po::value(&o.data)->default_value(gg::data::default_data_dir()),
       "MNIST directory (raw or gzipped IDX files)")
    ("only", po::value(&o.only)->default_value("all"),
       "fullbatch, minibatch, cnn, all, gemm (raw GEMMs only), density (sparse against dense products by density) "
       "or roofline (memory bandwidth and GEMM peak)")
    ("sparse-density", po::value(&o.sparse_density)->default_value(gg::kDefaultSparseDensity),
       "the programs' CompileOptions::sparse_density (0: dense GEMMs only)")
    ("cnn-steps", po::value(&o.cnn_steps)->default_value(30), "timed steps of the reference CNN (batch 128)")
    ("wait-quiet", po::value(&o.wait_quiet)->default_value(0),
       "before each timed phase, wait up to this many seconds for the machine to be idle")
    ("ftz", "flush denormals to zero (FTZ and DAZ in MXCSR, set before any thread starts): an experiment; "
       "gradgraph itself does not")
    ("no-profile", "skip the per-kernel profile (extra profiled steps after the timed ones)")
    ("arch-sweep", "time the raw GEMMs under every BLIS sub-configuration that runs on this CPU "
       "(re-runs itself with BLIS_ARCH_TYPE)")
    ("sweep-child", "internal: one line of --arch-sweep");
  // clang-format on
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  if (vm.count("help")) {
    std::cout << desc
              << "\nEnvironment: BLIS_ARCH_TYPE=<arch id> forces a BLIS kernel set (0 skx, 3 haswell, 6 zen3);\n"
                 "OMP_WAIT_POLICY / GOMP_SPINCOUNT change how libgomp's idle threads wait.\n";
    return std::nullopt;
  }
  po::notify(vm);
  o.arch_sweep = vm.count("arch-sweep") > 0;
  o.sweep_child = vm.count("sweep-child") > 0;
  o.profile = vm.count("no-profile") == 0;
  o.ftz = vm.count("ftz") > 0;
  if (o.threads < 1) throw std::invalid_argument("--threads must be at least 1");
  if (o.reps < 1 || o.steps < 1 || o.epochs < 1 || o.warmup < 0)
    throw std::invalid_argument("--reps, --steps and --epochs must be at least 1, --warmup at least 0");
  if (o.only != "all" && o.only != "fullbatch" && o.only != "minibatch" && o.only != "cnn" && o.only != "gemm" &&
      o.only != "density" && o.only != "roofline")
    throw std::invalid_argument("--only must be fullbatch, minibatch, cnn, all, gemm, density or roofline (got " + o.only + ")");
  if (!(o.sparse_density >= 0 && o.sparse_density <= 1)) throw std::invalid_argument("--sparse-density must be in [0, 1]");
  if (o.cnn_steps < 1) throw std::invalid_argument("--cnn-steps must be at least 1");
  return o;
}

// ---- the reference CNN -------------------------------------------------------------------------

// One GEMM as gradgraph's convolution and dense kernels issue it: C {m, n} = A {m, k} B {k, n},
// each operand with (row, column) strides. `images` > 0: the per-image form the convolution
// kernels issue, that many GEMMs split over the threads, each on one thread with its operands
// in cache (an ideal the kernels, which also run im2col, cannot beat).
struct CnnGemm {
  const char* name;
  dim_t m, n, k;
  inc_t ars, acs, brs, bcs, crs, ccs;
  dim_t images = 0;
};

// The GEMMs of one training step of the reference CNN at batch b: conv1 (no input gradient: the
// images need none), conv2, and the two dense layers (rows layout). Each convolution product
// appears twice, as one GEMM over the whole batch's im2col and per image; the floor counts the
// faster of the two.
std::vector<CnnGemm> cnn_gemms(dim_t b) {
  const dim_t p1 = 28 * 28, p2 = 14 * 14, k1 = 9, k2 = 32 * 9;
  return {
      {"conv1 fwd", 32, b * p1, k1, k1, 1, b * p1, 1, b * p1, 1},
      {"conv1 fwd", 32, p1, k1, k1, 1, p1, 1, p1, 1, b},
      {"conv1 wgrad", k1, 32, b * p1, b * p1, 1, 1, b * p1, 1, k1},
      {"conv1 wgrad", k1, 32, p1, p1, 1, 1, p1, 1, k1, b},
      {"conv2 fwd", 64, b * p2, k2, k2, 1, b * p2, 1, b * p2, 1},
      {"conv2 fwd", 64, p2, k2, k2, 1, p2, 1, p2, 1, b},
      {"conv2 dgrad", k2, b * p2, 64, 1, k2, b * p2, 1, b * p2, 1},
      {"conv2 dgrad", k2, p2, 64, 1, k2, p2, 1, p2, 1, b},
      {"conv2 wgrad", k2, 64, b * p2, b * p2, 1, 1, b * p2, 1, k2},
      {"conv2 wgrad", k2, 64, p2, p2, 1, 1, p2, 1, k2, b},
      {"dense1 fwd", b, 128, 3136, 3136, 1, 128, 1, 128, 1},
      {"dense1 dgrad", b, 3136, 128, 128, 1, 1, 128, 3136, 1},
      {"dense1 wgrad", 3136, 128, b, 1, 3136, 128, 1, 128, 1},
      {"dense2 fwd", b, 10, 128, 128, 1, 10, 1, 10, 1},
      {"dense2 dgrad", b, 128, 10, 10, 1, 1, 10, 128, 1},
      {"dense2 wgrad", 128, 10, b, 1, 128, 10, 1, 10, 1},
  };
}

// Median seconds of each GEMM (random data) and the median of the per-rep sums of the faster form
// of each product: the floor.
struct CnnFloor {
  std::vector<double> each;
  double floor = 0;
};
CnnFloor time_cnn_gemms(dim_t b, int threads, int reps) {
  const std::vector<CnnGemm> gs = cnn_gemms(b);
  const int copies = std::max(1, threads);  // per-image GEMMs: one set of operands per thread
  std::vector<std::vector<float>> a, bb, c;
  gg::Generator rng(gg::RngKind::standard, 5);
  for (const CnnGemm& g : gs) {
    const std::size_t n = g.images > 0 ? static_cast<std::size_t>(copies) : 1;
    a.emplace_back(static_cast<std::size_t>(g.m * g.k) * n);
    bb.emplace_back(static_cast<std::size_t>(g.k * g.n) * n);
    c.emplace_back(static_cast<std::size_t>(g.m * g.n) * n);
    for (float& v : a.back()) v = static_cast<float>(rng.uniform() - 0.5);
    for (float& v : bb.back()) v = static_cast<float>(rng.uniform() - 0.5);
  }
  std::vector<std::vector<double>> t(gs.size());
  std::vector<double> sums;
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(threads, &rntm);
  float one = 1, zero = 0;
  for (int r = 0; r < reps + 2; ++r) {
    std::map<std::string, double> best;
    for (std::size_t i = 0; i < gs.size(); ++i) {
      const CnnGemm& g = gs[i];
      auto t0 = Clock::now();
      if (g.images == 0) {
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, g.m, g.n, g.k, &one, a[i].data(), g.ars, g.acs, bb[i].data(),
                     g.brs, g.bcs, &zero, c[i].data(), g.crs, g.ccs, nullptr, &rntm);
      } else {
#pragma omp parallel num_threads(copies)
        {
          const int id = omp_get_thread_num(), nt = omp_get_num_threads();
          rntm_t one_thread = BLIS_RNTM_INITIALIZER;
          bli_rntm_set_num_threads(1, &one_thread);
          float* ai = a[i].data() + g.m * g.k * id;
          float* bi = bb[i].data() + g.k * g.n * id;
          float* ci = c[i].data() + g.m * g.n * id;
          for (dim_t img = g.images * id / nt; img < g.images * (id + 1) / nt; ++img)
            bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, g.m, g.n, g.k, &one, ai, g.ars, g.acs, bi, g.brs, g.bcs,
                         &zero, ci, g.crs, g.ccs, nullptr, &one_thread);
        }
      }
      const double dt = seconds_since(t0);
      if (r >= 2) {
        t[i].push_back(dt);
        auto [it, fresh] = best.emplace(g.name, dt);
        if (!fresh) it->second = std::min(it->second, dt);
      }
    }
    if (r >= 2) {
      double sum = 0;
      for (const auto& [name, dt] : best) sum += dt;
      sums.push_back(sum);
    }
  }
  CnnFloor f;
  for (auto& v : t) f.each.push_back(median(v));
  f.floor = median(sums);
  return f;
}

Row bench_cnn(const gg::train::Dataset& train, const Options& o) {
  constexpr std::int64_t kB = 128;
  const gg::nn::Spec spec = gg::nn::reference_cnn(kOut);
  std::printf("\n[reference CNN, m = %lld, Adam lr 1e-3: %s]\n", static_cast<long long>(kB), spec.text().c_str());
  gg::Graph g(gg::f32);
  const gg::train::Model m = gg::train::classifier(g, spec, gg::Shape{28, 28}, kOut, gg::nn::Layout::nchw);
  gg::train::TrainOptions to;
  to.optimizer = {.kind = gg::train::Optimizer::Kind::adam, .lr = 1e-3};
  to.compile.threads = o.threads;
  to.compile.seed = 1;
  gg::train::Trainer trainer(g, m, to);
  gg::Program& p = trainer.train_program();
  gg::train::BatchOptions bo = batch_options(kB, p.threads(), 7);
  bo.layout = gg::nn::Layout::nchw;
  gg::train::Batches batches(train, bo);
  const gg::train::Batch& b = batches.next();
  const std::vector<gg::Program::Feed> feeds = {{m.x, b.x}, {m.labels, b.labels}};
  for (int r = 0; r < 3; ++r) p.run(feeds);
  const double planned = static_cast<double>(p.planned_bytes(kB));

  std::vector<double> t;
  ThreadWatch w;
  wait_quiet(o.wait_quiet);
  w.start();
  for (int r = 0; r < o.cnn_steps; ++r) {
    auto t0 = Clock::now();
    p.run(feeds);
    t.push_back(seconds_since(t0));
  }
  const std::string threads = w.report();
  const double step = median(t);
  const CnnFloor f = time_cnn_gemms(kB, o.threads, o.cnn_steps);
  const std::vector<CnnGemm> gs = cnn_gemms(kB);
  double flops = 0;
  std::printf("  raw BLIS sgemm of the step's convolution (im2col) and dense products, m = %lld; each convolution\n"
              "  product as one GEMM over the batch and as %lld per-image GEMMs on one thread each (the floor takes the faster):\n",
              static_cast<long long>(kB), static_cast<long long>(kB));
  for (std::size_t i = 0; i < gs.size(); ++i) {
    const double images = static_cast<double>(std::max<dim_t>(1, gs[i].images));
    const double fl = 2.0 * static_cast<double>(gs[i].m) * static_cast<double>(gs[i].n) * static_cast<double>(gs[i].k) * images;
    if (i == 0 || std::strcmp(gs[i].name, gs[i - 1].name) != 0) flops += fl;
    const std::string form = gs[i].images > 0 ? "x " + std::to_string(gs[i].images) + " images" : std::string();
    std::printf("    %-14s %4ld x %6ld x %6ld %-11s %10s  %6.1f GFLOP/s\n", gs[i].name, static_cast<long>(gs[i].m),
                static_cast<long>(gs[i].n), static_cast<long>(gs[i].k), form.c_str(), fmt_time(f.each[i]).c_str(),
                fl / f.each[i] / 1e9);
  }
  std::printf("    floor (sum)    %10s  %.3f GFLOP\n", fmt_time(f.floor).c_str(), flops / 1e9);
  std::printf("  gradgraph step: median %s over %d steps, %d kernels, %.0f images/s (an epoch of 469 steps: %.1f s)\n",
              fmt_time(step).c_str(), o.cnn_steps, p.num_steps(kB), static_cast<double>(kB) / step, step * 469);
  std::printf("    threads during the steps: %s; planned arena %s\n", threads.c_str(), mb(planned).c_str());
  if (o.profile) print_profile(p, kB, std::max(5, o.cnn_steps / 2), o.wait_quiet, [&] { p.run(feeds); });
  return {"reference CNN step (Adam)", kB, step, f.floor, flops, 1.5, planned, std::nullopt, w.others};
}

// ---- the benchmark -----------------------------------------------------------------------------

// ---- the density threshold -----------------------------------------------------------------------

// The two products of the notebook's first layer that read X (Z1 = W1 X and dW1 = G X^T, X {784, m}
// over example-major rows, as mnist-train feeds it) from the nonzeros and as dense GEMMs, over a
// range of densities, uniformly random nonzeros (no locality: MNIST's pixels, clustered in the
// middle of the image, are kinder). Where the sparse time crosses the dense one is the default
// of CompileOptions::sparse_density.
void bench_density(const Options& o) {
  std::printf("\n[sparse against dense products by density: Z1 = W1 X and dW1 = G X^T, W1 {64, 784}, uniformly random nonzeros]\n");
  std::printf("  %8s %8s %12s %12s %8s\n", "m", "density", "sparse", "dense", "ratio");
  for (std::int64_t m : {std::int64_t{60000}, std::int64_t{128}}) {
    gg::Graph g(gg::f32);
    const gg::Value x = g.input("X", {kIn, gg::dyn}), gz = g.input("G", {kHidden, gg::dyn});
    const gg::Value w = g.param("W1", {kHidden, kIn});
    const gg::Value z = gg::matmul(w, x), dw = gg::matmul(gz, x, false, true);
    gg::Program sp(g, {z, dw}, {.threads = o.threads, .sparse_density = 1.0});
    gg::Program dp(g, {z, dw}, {.threads = o.threads, .sparse_density = 0.0});
    gg::Tensor rows(gg::f32, {m, kIn}), gv(gg::f32, {kHidden, m});
    gg::Generator rng(gg::RngKind::standard, 5);
    for (std::int64_t i = 0; i < kHidden * m; ++i) static_cast<float*>(gv.data())[i] = static_cast<float>(rng.uniform() - 0.5);
    const int reps = m > 1000 ? std::max(3, o.reps / 4) : 400;
    for (double d : {0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6}) {
      float* xr = static_cast<float*>(rows.data());
      for (std::int64_t i = 0; i < m * kIn; ++i) xr[i] = rng.uniform() < d ? static_cast<float>(rng.uniform()) : 0.0f;
      const gg::TensorView xv = rows.view().transposed();
      gg::SparseMatrix nz = gg::to_sparse(xv, 1);
      if (m >= gg::train::kCrossGroups) gg::add_cross_blocks(nz, o.threads);  // as Batches does for a full data set
      auto time = [&](gg::Program& p) {
        p.run({{x, xv, &nz}, {gz, gv.view()}});
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
          auto t0 = Clock::now();
          p.run({{x, xv, &nz}, {gz, gv.view()}});
          t.push_back(seconds_since(t0));
        }
        return median(t);
      };
      wait_quiet(o.wait_quiet / 10);
      const double ts = time(sp), td = time(dp);
      std::printf("  %8lld %7.1f%% %12s %12s %7.2fx\n", static_cast<long long>(m), nz.density() * 100, fmt_time(ts).c_str(),
                  fmt_time(td).c_str(), ts / td);
    }
  }
}

// ---- the machine's limits ------------------------------------------------------------------------

// What a roofline needs: memory bandwidth (a STREAM-like triad a = b + s c over three 128 MB
// float32 arrays, each thread its share, counting 12 bytes moved per element) and the GEMM peak
// (a square 2048 sgemm, the best of a few), both on the benchmark's thread count.
void bench_roofline(const Options& o) {
  std::printf("\n[the machine's limits: memory bandwidth and GEMM peak, %d threads]\n", o.threads);
  const std::int64_t n = std::int64_t{32} << 20;
  std::vector<float> a(static_cast<std::size_t>(n), 0.0f), b(static_cast<std::size_t>(n), 1.0f), c(static_cast<std::size_t>(n), 2.0f);
  wait_quiet(o.wait_quiet);
  std::vector<double> t;
  for (int r = 0; r < 10; ++r) {
    auto t0 = Clock::now();
#pragma omp parallel for num_threads(o.threads) schedule(static)
    for (std::int64_t i = 0; i < n; ++i) a[static_cast<std::size_t>(i)] = b[static_cast<std::size_t>(i)] + 0.5f * c[static_cast<std::size_t>(i)];
    t.push_back(seconds_since(t0));
  }
  const double best = *std::min_element(t.begin(), t.end());
  std::printf("  triad a = b + s c, 3 x %s: best %s, %.1f GB/s (median %.1f GB/s)\n", mb(static_cast<double>(n) * 4).c_str(),
              fmt_time(best).c_str(), 12.0 * static_cast<double>(n) / best / 1e9, 12.0 * static_cast<double>(n) / median(t) / 1e9);
  const dim_t s = 2048;
  std::vector<float> x(static_cast<std::size_t>(s * s), 0.5f), y(static_cast<std::size_t>(s * s), 0.25f), z(static_cast<std::size_t>(s * s));
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(o.threads, &rntm);
  float one = 1, zero = 0;
  double gbest = 1e30;
  for (int r = 0; r < 6; ++r) {
    auto t0 = Clock::now();
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, s, s, s, &one, x.data(), s, 1, y.data(), s, 1, &zero, z.data(), s, 1, nullptr, &rntm);
    gbest = std::min(gbest, seconds_since(t0));
  }
  std::printf("  sgemm 2048^3: best %s, %.1f GFLOP/s\n", fmt_time(gbest).c_str(), 2.0 * s * s * s / gbest / 1e9);
}

int run(const Options& o, const char* self) {
  if (o.arch_sweep) return arch_sweep(o, self);
  // Threads created later (libgomp's pool) inherit the floating-point environment.
  if (o.ftz) _mm_setcsr(_mm_getcsr() | 0x8040);

  bli_thread_set_num_threads(o.threads);
  omp_set_num_threads(o.threads);
  const bool full = o.only == "all" || o.only == "fullbatch";
  const bool mini = o.only == "all" || o.only == "minibatch";
  const bool cnn = o.only == "all" || o.only == "cnn";
  const bool gemm_only = o.only == "gemm";

  if (!o.sweep_child) blis_header(read_cpuinfo(), o.threads);

  auto t_load = Clock::now();
  const gg::train::Dataset train = gg::train::load_idx(o.data, "train");
  if (train.features() != kIn) throw std::runtime_error(o.data + ": images are not 28x28");
  const std::int64_t n = train.count;
  // The whole training set normalised to float32 rows once, by the library's full-batch iterator:
  // what the full-batch step reads, and what the raw GEMMs read.
  gg::train::Batches whole(train, batch_options(0, o.threads, 1));
  const gg::train::Batch& all = whole.next();
  const float* images = static_cast<const float*>(all.x.data);
  const double train_bytes = static_cast<double>(n * kIn * sizeof(float)), byte_bytes = static_cast<double>(train.pixels.size());
  if (!o.sweep_child)
    std::printf("data: %s, %lld training images: %s as bytes, normalised to float32 = %s (loaded in %.2f s)\n",
                o.data.c_str(), static_cast<long long>(n), mb(byte_bytes).c_str(), mb(train_bytes).c_str(),
                seconds_since(t_load));

  constexpr std::int64_t kBatch = 128;
  const std::int64_t steps_per_epoch = (n + kBatch - 1) / kBatch;
  const std::int64_t last_batch = n - (steps_per_epoch - 1) * kBatch;

  if (o.sweep_child) {
    wait_quiet(o.wait_quiet);
    ThreadWatch w;
    w.start();
    GemmTimes big = time_gemms(n, images, o.threads, o.reps, 2);
    GemmTimes small = time_gemms(kBatch, images, o.threads, std::max(o.steps, 200), 50);
    w.report();
    cntx_t* c = bli_gks_query_cntx();
    std::printf("%4ld %4ld | %10s %7.1f GFLOP/s (Z1 %5.1f) | %10s %7.1f GFLOP/s (Z1 %5.1f) | %5.2f\n",
                static_cast<long>(bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, c)),
                static_cast<long>(bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, c)), fmt_time(big.floor).c_str(),
                step_flops(n) / big.floor / 1e9, gemm_flops(n)[0] / big.each[0] / 1e9, fmt_time(small.floor).c_str(),
                step_flops(kBatch) / small.floor / 1e9, gemm_flops(kBatch)[0] / small.each[0] / 1e9, w.others);
    return 0;
  }

  std::vector<Row> rows;

  // -- full batch --------------------------------------------------------------------------------
  if (gemm_only) {
    std::printf("\n[raw GEMMs only]\n");
    ThreadWatch w;
    wait_quiet(o.wait_quiet);
    w.start();
    GemmTimes g = time_gemms(n, images, o.threads, o.reps, 2);
    GemmTimes g128 = time_gemms(kBatch, images, o.threads, std::max(o.steps, 200), 100);
    GemmTimes glast = time_gemms(last_batch, images, o.threads, std::max(o.steps, 200), 100);
    GemmTimes g128_1 = time_gemms(kBatch, images, 1, std::max(o.steps, 200), 100);
    print_gemms(g);
    print_gemms(g128);
    std::printf("    (on one thread, m = 128: floor %s)\n", fmt_time(g128_1.floor).c_str());
    std::printf("    threads during the raw GEMMs: %s\n", w.report().c_str());
    const double epoch_floor = static_cast<double>(steps_per_epoch - 1) * g128.floor + glast.floor;
    rows.push_back({"raw GEMM floor", n, g.floor, g.floor, step_flops(n), 0, std::nullopt, std::nullopt, w.others});
    rows.push_back({"raw GEMM floor", kBatch, g128.floor, g128.floor, step_flops(kBatch), 0, std::nullopt, std::nullopt,
                    w.others});
    rows.push_back({"raw GEMM floor, epoch", n, epoch_floor, epoch_floor,
                    static_cast<double>(steps_per_epoch - 1) * step_flops(kBatch) + step_flops(last_batch), 0,
                    std::nullopt, std::nullopt, w.others});
  }

  if (full) {
    std::printf("\n[full batch, m = %lld, plain SGD, lr 0.1]\n", static_cast<long long>(n));
    // Memory first, with nothing else allocated: the program's peak RSS over the training data.
    const bool phase_peak = reset_peak_rss();
    const std::int64_t rss_before = current_rss();
    Net net({.kind = gg::train::Optimizer::Kind::sgd, .lr = 0.1}, o.threads, o.sparse_density);
    gg::Program& p = net.program();
    const double planned = static_cast<double>(p.planned_bytes(n));
    const std::vector<gg::Program::Feed> feeds = net.feeds(all);
    for (int r = 0; r < o.warmup; ++r) p.run(feeds);
    const double peak = static_cast<double>(peak_rss());
    // The same step with dense GEMMs only, timed in the same loop.
    Net dense_net({.kind = gg::train::Optimizer::Kind::sgd, .lr = 0.1}, o.threads, 0.0);
    gg::Program& pd = dense_net.program();
    const std::vector<gg::Program::Feed> dense_feeds = dense_net.feeds(all);
    for (int r = 0; r < o.warmup; ++r) pd.run(dense_feeds);

    // Then the step and the raw GEMMs, interleaved rep by rep (same machine state for both).
    GemmTimer gt(n, images, o.threads);
    gt.rep(false);
    double loss = 0, acc = 0;
    std::vector<double> t, td;
    ThreadWatch w;
    wait_quiet(o.wait_quiet);
    w.start();
    for (int r = 0; r < o.reps; ++r) {
      gt.rep();
      auto t0 = Clock::now();
      p.run(feeds);
      loss = p.scalar(net.trainer->loss());
      acc = p.scalar(net.trainer->accuracy());
      t.push_back(seconds_since(t0));
      t0 = Clock::now();
      pd.run(dense_feeds);
      (void)pd.scalar(dense_net.trainer->loss());
      td.push_back(seconds_since(t0));
    }
    const std::string threads_seen = w.report();
    const GemmTimes g = gt.result();
    const double step = median(t), dense_step = median(td);
    print_gemms(g);
    std::printf("  gradgraph step: median %s over %d steps (min %s, max %s), %d kernels, loss %.4f, accuracy %.2f%%\n",
                fmt_time(step).c_str(), o.reps, fmt_time(*std::min_element(t.begin(), t.end())).c_str(),
                fmt_time(*std::max_element(t.begin(), t.end())).c_str(), p.num_steps(n), loss, acc * 100);
    std::printf("    products that read X: %s (images %.1f%% nonzero, sparse at most %.0f%%)\n", net.choices().c_str(),
                whole.density() * 100, o.sparse_density * 100);
    std::printf("  gradgraph step, dense GEMMs only: median %s (min %s, max %s)\n", fmt_time(dense_step).c_str(),
                fmt_time(*std::min_element(td.begin(), td.end())).c_str(), fmt_time(*std::max_element(td.begin(), td.end())).c_str());
    std::printf("    threads during the steps and raw GEMMs: %s\n", threads_seen.c_str());
    // The nonzeros (index and value) and their cross blocks (16-bit offset, value, block pointers).
    const double sparse_bytes =
        all.sparse ? static_cast<double>(all.sparse->nnz() * 8 + (all.sparse->groups() + 1) * 8 +
                                         (all.sparse->has_cross() ? all.sparse->nnz() * 6 +
                                                                        static_cast<std::int64_t>(all.sparse->cross.ptr.size()) * 8
                                                                  : 0))
                   : 0.0;
    const double data_bytes = train_bytes + byte_bytes + sparse_bytes;
    std::printf("  memory: training set f32 %s + bytes %s + nonzeros %s + planned arena %s (unshared %s) + parameters %s\n",
                mb(train_bytes).c_str(), mb(byte_bytes).c_str(), mb(sparse_bytes).c_str(), mb(planned).c_str(),
                mb(static_cast<double>(p.unshared_bytes(n))).c_str(), mb(static_cast<double>(p.param_bytes())).c_str());
    std::printf("    peak RSS %s%s (RSS before compiling %s); peak / (data + planned) = %.3f (target <= 1.25)%s\n",
                mb(peak).c_str(), phase_peak ? " while compiling and running the program" : " of the process",
                mb(static_cast<double>(rss_before)).c_str(), peak / (data_bytes + planned),
                peak / (data_bytes + planned) > 1.25 ? "  MISSED" : "");
    if (o.profile) print_profile(p, n, std::max(5, o.reps / 2), o.wait_quiet, [&] { p.run(feeds); });
    rows.push_back({net.choices().find("sparse") != std::string::npos ? "full-batch step (SGD, sparse X)" : "full-batch step (SGD)",
                    n, step, g.floor, step_flops(n), net.choices().find("sparse") != std::string::npos ? 0.6 : 1.10, planned,
                    peak, w.others});
    rows.push_back({"full-batch step (SGD, dense)", n, dense_step, g.floor, step_flops(n), 1.10, std::nullopt, std::nullopt,
                    w.others});
  }

  // -- mini-batch --------------------------------------------------------------------------------
  if (mini) {
    std::printf("\n[mini-batch, m = %lld, momentum 0.9, lr 0.05; epoch = %lld steps, last batch %lld]\n",
                static_cast<long long>(kBatch), static_cast<long long>(steps_per_epoch),
                static_cast<long long>(last_batch));
    reset_peak_rss();
    // The library's batch iterator: a fresh seeded shuffle per epoch, each batch gathered and
    // normalised from bytes into buffers allocated once, split over the program's threads.
    Net net({.kind = gg::train::Optimizer::Kind::momentum, .lr = 0.05, .momentum = 0.9}, o.threads, o.sparse_density);
    gg::Program& p = net.program();
    const double planned = static_cast<double>(p.planned_bytes(kBatch));
    gg::train::Batches batches(train, batch_options(kBatch, p.threads(), 7));
    const gg::train::Batch* current = &batches.next();
    const float* bx = static_cast<const float*>(current->x.data);
    auto step_on = [&](const gg::train::Batch& b) {
      p.run(net.feeds(b));
      return p.scalar(net.trainer->loss());
    };
    GemmTimer g128(kBatch, bx, o.threads), glast(last_batch, bx, o.threads), g128_1(kBatch, bx, 1);

    // Steps on one fixed batch (the iterator's first), each followed by one rep of the raw GEMMs.
    for (int r = 0; r < 100; ++r) {
      step_on(*current);
      g128.rep(false);
      glast.rep(false);
    }
    std::vector<double> t;
    t.reserve(static_cast<std::size_t>(o.steps));
    ThreadWatch w;
    wait_quiet(o.wait_quiet);
    w.start();
    for (int r = 0; r < o.steps; ++r) {
      g128.rep();
      if (r % 4 == 0) glast.rep();
      if (r % 4 == 2) g128_1.rep();
      auto t0 = Clock::now();
      step_on(*current);
      t.push_back(seconds_since(t0));
    }
    const std::string threads_steps = w.report();
    const double step_noise = w.others;
    const GemmTimes f128 = g128.result(), flast = glast.result(), f128_1 = g128_1.result();
    const double step = median(t);
    double mean = 0;
    for (double x : t) mean += x;
    mean /= static_cast<double>(t.size());
    print_gemms(f128);
    std::printf("    (last batch m = %lld: floor %s; m = 128 on one thread: floor %s)\n",
                static_cast<long long>(last_batch), fmt_time(flast.floor).c_str(), fmt_time(f128_1.floor).c_str());
    std::printf("  gradgraph step: median %s (mean %s) over %d steps, %d kernels\n", fmt_time(step).c_str(),
                fmt_time(mean).c_str(), o.steps, p.num_steps(kBatch));
    std::printf("    threads during the steps and raw GEMMs: %s\n", threads_steps.c_str());
    if (o.profile) print_profile(p, kBatch, 500, o.wait_quiet, [&] { step_on(*current); });

    // Epochs: the iterator's batches (the rest of the first epoch is run before timing starts),
    // one step each, the loss read. After each, the raw GEMMs of an epoch (468 reps at m = 128,
    // one at the last batch's size), timed the same way, as a sum.
    std::vector<double> epoch_t, gather_t, floor_t;
    double last_loss = 0;
    while (!current->last) current = &batches.next();
    // One epoch; returns {wall, gather} seconds.
    auto run_epoch = [&]() {
      double gsum = 0;
      auto t0 = Clock::now();
      for (std::int64_t s = 0; s < steps_per_epoch; ++s) {
        auto tg = Clock::now();
        const gg::train::Batch& b = batches.next();
        gsum += seconds_since(tg);
        last_loss = step_on(b);
      }
      return std::pair<double, double>{seconds_since(t0), gsum};
    };
    for (int e = 0; e <= o.epochs; ++e) {  // epoch 0 is the warm-up (it plans the last batch's size)
      if (e == 1) {
        wait_quiet(o.wait_quiet);
        w.start();
      }
      const auto [et, gsum] = run_epoch();
      double fsum = 0;
      for (std::int64_t s = 0; s + 1 < steps_per_epoch; ++s) fsum += g128.rep(false);
      fsum += glast.rep(false);
      if (e > 0) {
        epoch_t.push_back(et);
        gather_t.push_back(gsum);
        floor_t.push_back(fsum);
      }
    }
    const std::string threads_epochs = w.report();
    const double epoch_noise = w.others;
    const double epoch = median(epoch_t), gath = median(gather_t), epoch_floor = median(floor_t);
    const double epoch_flops = static_cast<double>(steps_per_epoch - 1) * step_flops(kBatch) + step_flops(last_batch);
    const double peak = static_cast<double>(peak_rss());
    std::printf("  epoch: median %s over %d epochs (gather %s of it, %s per batch), loss after the last %.4f\n",
                fmt_time(epoch).c_str(), o.epochs, fmt_time(gath).c_str(),
                fmt_time(gath / static_cast<double>(steps_per_epoch)).c_str(), last_loss);
    std::printf(
        "  epoch GEMM floor: %s measured (469 reps after each epoch); from the step medians %lld x %s + %s = %s\n",
        fmt_time(epoch_floor).c_str(), static_cast<long long>(steps_per_epoch - 1), fmt_time(f128.floor).c_str(),
        fmt_time(flast.floor).c_str(),
        fmt_time(static_cast<double>(steps_per_epoch - 1) * f128.floor + flast.floor).c_str());
    std::printf("    threads during the epochs and their raw GEMMs: %s\n", threads_epochs.c_str());
    if (o.profile) {
      // The kernels as an epoch sees them (fresh batches, the optimizer state of real training).
      wait_quiet(o.wait_quiet);
      const auto before = p.profile(kBatch);
      p.set_profiling(true);
      const auto [et, gsum] = run_epoch();
      p.set_profiling(false);
      print_kernel_table(before, p.profile(kBatch), (et - gsum) / static_cast<double>(steps_per_epoch),
                         "one more epoch, the " + std::to_string(steps_per_epoch - 1) +
                             " steps at m = 128, mean per step (the gather is not a kernel: see above)");
    }
    std::printf("  memory: planned arena %s at m = 128, peak RSS %s\n", mb(planned).c_str(), mb(peak).c_str());
    rows.push_back(
        {"mini-batch step (momentum)", kBatch, step, f128.floor, step_flops(kBatch), 0, planned, peak, step_noise});
    std::printf("  products that read X: %s\n", net.choices().c_str());
    rows.push_back(
        {"mini-batch epoch (469 steps)", n, epoch, epoch_floor, epoch_flops, 1.2, planned, peak, epoch_noise});
    rows.push_back({"  of which gather", n, gath, 0, 0, 0, std::nullopt, std::nullopt, epoch_noise});
    rows.push_back({"  epoch without gather", n, epoch - gath, epoch_floor, epoch_flops, 0, std::nullopt, std::nullopt,
                    epoch_noise});
  }

  if (cnn) rows.push_back(bench_cnn(train, o));
  if (o.only == "density") bench_density(o);
  if (o.only == "roofline") bench_roofline(o);

  print_table(rows);
  std::printf("peak RSS of the process: %s\n", mb(static_cast<double>(peak_rss())).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The kernel set every Program uses (gg::select_blis_kernels), so the raw GEMMs run on the
  // same kernels; then BLIS: with BLIS_ARCH_TYPE set, querying before bli_init() aborts in 0.9.0.
  gg::select_blis_kernels();
  bli_init();
  try {
    std::optional<Options> o = parse(argc, argv);
    if (!o) return 0;
    char self[4096] = {};
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    return run(*o, len > 0 ? self : argv[0]);
  } catch (const po::error& e) {
    std::fprintf(stderr, "bench: %s (see --help)\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
}
