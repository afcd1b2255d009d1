#include <gradgraph/backend.hpp>

#include <blis.h>

#include <cstdlib>
#include <mutex>

namespace gg {

void select_blis_kernels() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (std::getenv("BLIS_ARCH_TYPE") || std::getenv("GRADGRAPH_BLIS_AUTO")) return;
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")))
      return;
    // BLIS 0.9 reads the variable as the numeric arch_t value (a name would parse as 0).
    setenv("BLIS_ARCH_TYPE", std::to_string(static_cast<int>(BLIS_ARCH_SKX)).c_str(), 0);
  });
}

std::string blis_kernels() {
  select_blis_kernels();
  bli_init();  // with BLIS_ARCH_TYPE set, querying before bli_init aborts in BLIS 0.9.0
  return bli_arch_string(bli_arch_query_id());
}

}  // namespace gg
