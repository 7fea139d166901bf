// The device query's source, compiled as host C++ for the CUDA emulator
// (FASTFFNN_BACKEND=emulated): the same file nvcc compiles, not a copy.
#include "../device_info.cu"
