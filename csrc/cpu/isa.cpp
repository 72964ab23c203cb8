#include "isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace mnv2_fused {
namespace cpu {
namespace {

// One compiled copy's entry points and constants, by its suffix.
#define MNV2_ISA_ENTRY(isa)                                                                         \
  Isa{#isa,         run_tiles_##isa,    sum_groups_##isa, project_kept_##isa, pointwise_pool_##isa, \
      linear_##isa, conv3x3_rows_##isa, lanes_##isa(),    max_acc_##isa(),    panel_vectors_##isa()}
const Isa kAvx512 = MNV2_ISA_ENTRY(avx512);
const Isa kAvx2 = MNV2_ISA_ENTRY(avx2);
const Isa kGeneric = MNV2_ISA_ENTRY(generic);
#undef MNV2_ISA_ENTRY

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
