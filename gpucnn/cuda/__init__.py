"""CUDA side of gpucnn: kernel sources, the CuPy launcher, the CPU emulation, NVRTC check.

  sources      find kernels/*.cu and parse their kernel signatures
  launcher     CudaLauncher (cupy.RawModule; imports cupy)
  emulator     EmulatedLauncher (host C++ compiler + cuda_emulation.h; no GPU)
  nvrtc_check  compile every kernel with NVRTC through ctypes (no GPU, no CuPy)
"""
