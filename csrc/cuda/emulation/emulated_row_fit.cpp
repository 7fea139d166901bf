// The one-block epoch's kernel source, compiled as host C++ for the CUDA
// emulator (FASTFFNN_BACKEND=emulated): the same file nvcc compiles, not a copy.
#include "../row_fit.cu"
