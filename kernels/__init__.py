"""CUDA C++ sources of gpucnn's kernels; shipped in the wheel as package data."""
