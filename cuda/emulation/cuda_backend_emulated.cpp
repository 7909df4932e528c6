// The CUDA backend's own source, compiled for the host emulator.
#define CROSSCODER_CUDA_EMULATION 1
#include "../cuda_backend.cu"
#include "emulated_backend.hpp"
