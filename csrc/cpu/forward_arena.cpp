#include "forward_arena.h"

#include "huge_pages.h"

namespace mnv2_fused {
namespace cpu {
namespace {
thread_local ForwardArena* arena_on_thread = nullptr;
}  // namespace

void ForwardArena::fit() {
  const int64_t need = need_;
  if (need == 0 || (floats() >= need && floats() <= 2 * need)) return;
  block_.reset();  // first: never both at once
  if (use_huge_pages(need)) block_ = huge_page_floats(need);
  if (!block_.defined()) block_ = at::empty({need}, at::TensorOptions().dtype(at::kFloat));
}

ArenaScope::ArenaScope(ForwardArena* arena) : outer_(arena_on_thread) { arena_on_thread = arena; }

ArenaScope::~ArenaScope() { arena_on_thread = outer_; }

ForwardArena* open_arena() { return arena_on_thread; }

}  // namespace cpu
}  // namespace mnv2_fused
