// run_tile for any CPU, built with the compiler's baseline instruction set.
#include "tile_kernel.h"

#include <algorithm>
#include <cstring>

// The 64-byte vectors stay inside this file (internal, inlined): the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#define MNV2_TILE_FN run_tile_generic
#define MNV2_MR 2
#include "tile_kernel_impl.h"
