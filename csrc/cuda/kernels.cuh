// Every torch-free CUDA kernel of the `cuda` backend (for the compile check; each op's .cu includes
// only its own header).
#pragma once

#include "block_scores.cuh"
#include "matmul.cuh"
