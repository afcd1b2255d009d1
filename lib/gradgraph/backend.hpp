// The BLIS backend: which kernel set runs the GEMMs.
#pragma once

#include <string>

namespace gg {

// BLIS 0.9 chooses its AVX-512 kernels (skx) only when the CPUID brand string tells it how many
// FMA units the CPU has; virtual machines that report a bare "Intel(R) Xeon(R) Processor" get
// the AVX2 (haswell) kernels instead, 35-55% slower on the notebook's GEMMs (docs/performance.md).
// Unless the user chose a kernel set (BLIS_ARCH_TYPE is set) or asks for BLIS's own choice
// (GRADGRAPH_BLIS_AUTO=1), this selects skx on CPUs with AVX-512 F/DQ/BW/VL. It must run before
// BLIS's first call to take effect; Program's constructor calls it.
void select_blis_kernels();

// The kernel set BLIS uses ("skx", "haswell", ...); initialises BLIS.
std::string blis_kernels();

}  // namespace gg
