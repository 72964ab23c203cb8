// On compilers or CPUs without the instruction set, its entry points run the generic kernel.
#define MNV2_FWD_CAT2(a, b) a##b
#define MNV2_FWD_CAT(a, b) MNV2_FWD_CAT2(a, b)
namespace mnv2_fused {
namespace cpu {
void MNV2_FWD_CAT(run_tiles_, MNV2_FORWARD_TO_GENERIC)(const BlockArgs& a, const TilePlan& p, int64_t t0,
                                                      int64_t t1, int64_t group, RingState* ring, float* s,
                                                      float* channel_sums) {
  run_tiles_generic(a, p, t0, t1, group, ring, s, channel_sums);
}
void MNV2_FWD_CAT(expand_depthwise_, MNV2_FORWARD_TO_GENERIC)(const BlockArgs& a, const TilePlan& p, int64_t images,
                                                             int64_t c0, int64_t c1, float* scratch) {
  expand_depthwise_generic(a, p, images, c0, c1, scratch);
}
void MNV2_FWD_CAT(project_kept_, MNV2_FORWARD_TO_GENERIC)(const BlockArgs& a, int64_t p0, int64_t p1, int64_t j0,
                                                         int64_t j1, GateInto into, float* copy) {
  project_kept_generic(a, p0, p1, j0, j1, into, copy);
}
void MNV2_FWD_CAT(pointwise_pool_, MNV2_FORWARD_TO_GENERIC)(const PoolArgs& a, int64_t n0, int64_t n1,
                                                           int64_t j0, int64_t j1) {
  pointwise_pool_generic(a, n0, n1, j0, j1);
}
void MNV2_FWD_CAT(linear_, MNV2_FORWARD_TO_GENERIC)(const LinearArgs& a, int64_t n0, int64_t n1, int64_t j0,
                                                   int64_t j1) {
  linear_generic(a, n0, n1, j0, j1);
}
void MNV2_FWD_CAT(conv3x3_rows_, MNV2_FORWARD_TO_GENERIC)(const BlockArgs& a, int64_t n, int64_t r0, int64_t r1,
                                                         float* scratch) {
  conv3x3_rows_generic(a, n, r0, r1, scratch);
}
int64_t MNV2_FWD_CAT(lanes_, MNV2_FORWARD_TO_GENERIC)() { return lanes_generic(); }
int64_t MNV2_FWD_CAT(max_acc_, MNV2_FORWARD_TO_GENERIC)() { return max_acc_generic(); }
}  // namespace cpu
}  // namespace mnv2_fused
