#include "isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace mnv2_fused {
namespace cpu {
namespace {

const Isa kAvx512{"avx512", run_tiles_avx512, expand_depthwise_avx512, project_kept_avx512, pointwise_pool_avx512,
                  linear_avx512, conv3x3_rows_avx512, lanes_avx512(), max_acc_avx512()};
const Isa kAvx2{"avx2", run_tiles_avx2, expand_depthwise_avx2, project_kept_avx2, pointwise_pool_avx2,
                linear_avx2, conv3x3_rows_avx2, lanes_avx2(), max_acc_avx2()};
const Isa kGeneric{"generic", run_tiles_generic, expand_depthwise_generic, project_kept_generic, pointwise_pool_generic,
                   linear_generic, conv3x3_rows_generic, lanes_generic(), max_acc_generic()};

bool cpu_has(const char* isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (std::string(isa) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  if (std::string(isa) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::string(isa) == "generic";
}

const Isa& pick() {
  const char* forced = std::getenv("MNV2_FUSED_CPU_ISA");
  if (forced && *forced) {
    for (const Isa* isa : {&kAvx512, &kAvx2, &kGeneric})
      if (std::string(forced) == isa->name) {
        TORCH_CHECK(cpu_has(isa->name), "MNV2_FUSED_CPU_ISA=", forced, ": this CPU lacks that instruction set");
        return *isa;
      }
    TORCH_CHECK(false, "MNV2_FUSED_CPU_ISA must be avx512, avx2 or generic, got '", forced, "'");
  }
  for (const Isa* isa : {&kAvx512, &kAvx2})
    if (cpu_has(isa->name)) return *isa;
  return kGeneric;
}

}  // namespace

const Isa& cpu_isa() {
  static const Isa& isa = pick();
  return isa;
}

}  // namespace cpu
}  // namespace mnv2_fused
