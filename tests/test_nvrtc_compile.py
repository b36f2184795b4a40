"""Every kernels/*.cu compiles with NVRTC (the compiler CuPy uses on the GPU) to sm_80 and sm_90
machine code, so inline PTX is assembled too - no GPU needed."""

from __future__ import annotations

import re

import pytest

from gpucnn.cuda import nvrtc_check, sass_report, sources

FILES = sorted(sources.read_sources())
ARCHS = ("sm_80", "sm_90")
PTX_TYPO = (
    'extern "C" __global__ void k(float* y)\n{\n    float r;\n'
    '    asm("mov.b33 %0, %1;" : "=f"(r) : "f"(y[0]));\n    y[0] = r;\n}\n'
)


@pytest.fixture(scope="module")
def nvrtc():
    lib = nvrtc_check.load_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)")
    return lib


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_kernel_file_compiles(nvrtc, file, arch):
    # Verbose ptxas: the same compilation the SASS report below reads (memoized).
    result = nvrtc_check.compile_source(sources.read_sources()[file], file, arch, options=nvrtc_check.PTXAS_VERBOSE)
    assert result.ok, result.log
    assert "warning" not in result.log, result.log
    assert result.cubin[:4] == b"\x7fELF"  # machine code, not only PTX


def test_check_all_covers_every_file_and_arch(nvrtc):
    assert nvrtc_check.DEFAULT_ARCHS == ARCHS
    results = nvrtc_check.check_all(("compute_90",))
    assert sorted(r.file for r in results) == FILES
    assert all(r.ok for r in results)
    assert nvrtc_check.nvrtc_version()[0] >= 11


def test_a_broken_kernel_fails_with_file_and_line(nvrtc):
    text = 'extern "C" __global__ void k(float* y)\n{\n    y[0] = undefined_name;\n}\n'
    result = nvrtc_check.compile_source(text, "broken.cu", "compute_90")
    assert not result.ok
    assert "broken.cu(3)" in result.log and "undefined_name" in result.log


def test_host_only_macros_are_not_used(nvrtc):
    """NVRTC has no <math.h>: INFINITY/NAN would compile on the host emulator only."""
    text = 'extern "C" __global__ void k(float* y)\n{\n    y[0] = INFINITY;\n}\n'
    assert not nvrtc_check.compile_source(text, "inf.cu", "compute_80").ok


def test_a_ptx_typo_fails_on_a_real_architecture_only(nvrtc):
    """Why the check targets sm_*: for compute_* NVRTC emits the asm text unassembled."""
    assert nvrtc_check.compile_source(PTX_TYPO, "typo.cu", "compute_80").ok
    for arch in ARCHS:
        result = nvrtc_check.compile_source(PTX_TYPO, "typo.cu", arch)
        assert not result.ok and "'.b33'" in result.log, result.log


def test_ptxas_verbose_output_comes_through_the_log(nvrtc):
    text = sources.read_sources()["reduce.cu"]
    result = nvrtc_check.compile_source(text, "reduce.cu", "sm_80", options=("--ptxas-options=-v",))
    assert result.ok
    assert "Compiling entry function 'scaled_sum' for 'sm_80'" in result.log
    assert "bytes spill stores" in result.log and result.ptx and ".entry scaled_sum" in result.ptx


# ---- SASS report (gpucnn info --kernels) ------------------------------------------------------
TC_FILES = sorted(f for f, text in sources.read_sources().items() if re.search(r"\btc_mma_\w+\s*\(", text))


@pytest.fixture(scope="module")
def report(nvrtc):
    return sass_report.kernel_report(files=["reduce.cu", "batchnorm.cu", "conv2d_igemm.cu", *TC_FILES])


def test_the_report_covers_every_kernel_and_parses_ptxas(report):
    for file in ("reduce.cu", "batchnorm.cu", "conv2d_igemm.cu", *TC_FILES):
        names = {s.name for s in sources.parse_kernels(sources.read_sources()[file], file, sources.read_headers())}
        for arch in ARCHS:
            assert {r["kernel"] for r in report if r["file"] == file and r["arch"] == arch} == names
    rows = {(r["kernel"], r["arch"]): r for r in report}
    for arch in ARCHS:
        assert 0 < rows["scaled_sum", arch]["registers"] <= 255
        assert rows["scaled_sum", arch]["smem"] == 4 * 32  # block_sum's scratch: one float per warp of 1024 threads
        assert rows["scaled_sum", arch]["threads_assumed"] and rows["scaled_sum", arch]["threads"] == 256
        igemm = rows["conv2d_forward_igemm", arch]
        assert igemm["threads"] == 256 and not igemm["threads_assumed"]  # __launch_bounds__(256)
        assert igemm["barriers"] >= 1 and igemm["spill_stores"] == 0
        assert 0 < igemm["occupancy"] <= 1


def test_tensor_core_kernels_use_hmma_without_spills(report):
    if sass_report.find_disassembler() is None:
        pytest.skip("no cuobjdump/nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    if not TC_FILES:
        pytest.skip("no kernel file calls tc_mma_*")
    tc_rows = [r for r in report if r["file"] in TC_FILES]
    assert tc_rows
    for r in tc_rows:
        assert r["hmma"] > 0, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
    assert all(r["hmma"] == 0 for r in report if r["file"] == "reduce.cu")
    assert any(r["ldgsts"] > 0 for r in tc_rows)  # cp.async became LDGSTS


def test_reductions_are_warp_shuffles_with_two_barriers(report):
    """block_sum and the BatchNorm moment merge reduce inside each warp with shuffles (SHFL) and
    meet once in shared memory: two block barriers per reduction, not one per tree level."""
    if sass_report.find_disassembler() is None:
        pytest.skip("no cuobjdump/nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    rows = {(r["kernel"], r["arch"]): r for r in report}
    for arch in ARCHS:
        for kernel, reductions in (("scaled_sum", 1), ("batchnorm2d_backward_partial", 1),
                                   ("batchnorm2d_partial_stats", 1), ("batchnorm2d_finalize_stats", 1)):
            row = rows[kernel, arch]
            assert row["shfl"] >= 5, row  # log2(32) levels at least
            # the shared-memory tree this replaced compiled to 3 BARs per reduction (its loop
            # ran one per level: 10 barriers for 256 threads; this runs 2)
            assert row["bar"] <= 2 * reductions, row
            assert row["spill_stores"] == 0, row


def test_the_table_lists_every_row(report):
    table = sass_report.format_kernel_table(report)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["kernel", "arch", "thr", "regs"]
    assert len(lines) == len(report) + 3  # header, rule, footnote for assumed threads
    assert "no __launch_bounds__" in lines[-1]
    row = {**report[0], **{key: None for key in sass_report.COUNTED.values()}, "threads_assumed": False}
    assert " - " in sass_report.format_kernel_table([row])


@pytest.mark.parametrize("arch, threads, registers, smem, want", [
    ("sm_80", 256, 64, 8448, (4, 0.5, "registers")),  # 2048 regs/warp: 32 warps
    ("sm_80", 256, 65, 0, (3, 0.375, "registers")),  # 72 regs after rounding: 28 warps, 3 blocks of 8
    ("sm_80", 1024, 16, 0, (2, 1.0, "warps")),
    ("sm_80", 128, 32, 100 * 1024, (1, 0.0625, "shared memory")),  # 101 KiB with the reserve
    ("sm_90", 128, 32, 100 * 1024, (2, 0.125, "shared memory")),  # 228 KiB per SM
    ("sm_90", 32, 8, 0, (32, 0.5, "blocks")),
    ("sm_80", 128, 32, 200 * 1024, (0, 0.0, "shared memory")),  # over the 163 KiB per block
])
def test_occupancy_by_hand(arch, threads, registers, smem, want):
    blocks, occ, limiter = sass_report.occupancy(arch, threads, registers, smem)
    assert (blocks, occ, limiter) == want


def test_occupancy_refuses_unknown_input():
    with pytest.raises(ValueError, match="no SM limits for 'sm_70'"):
        sass_report.occupancy("sm_70", 128, 32, 0)
    with pytest.raises(ValueError, match="threads per block must be 1..1024, got 2048"):
        sass_report.occupancy("sm_80", 2048, 32, 0)
    with pytest.raises(ValueError, match="unknown kernel file"):
        sass_report.kernel_report(files=["nope.cu"])


def test_parsers_read_both_disassembler_formats():
    cuobjdump = (
        "\t\tFunction : k1\n"
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
        "        /*0010*/              @!P0 HMMA.1684.F32.TF32 R4, R8, R12, R4 ;\n"
        "        /*0020*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R6.64] ;\n"
        "\t\tFunction : k2\n"
        "        /*0000*/                   LDSM.16.M88.4 R8, [R3] ;\n"
        "        /*0010*/                   SHFL.BFLY PT, R5, R4, 0x10, 0x1f ;\n"
        "        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;\n"
    )
    nvdisasm = cuobjdump.replace("\t\tFunction : k1", ".text.k1:").replace("\t\tFunction : k2", ".text.k2:")
    for text in (cuobjdump, nvdisasm):
        counts = sass_report.parse_sass(text)
        assert counts["k1"] == {"hmma": 1, "ldsm": 0, "ldgsts": 1, "shfl": 0, "bar": 0, "instructions": 3}
        assert counts["k2"] == {"hmma": 0, "ldsm": 1, "ldgsts": 0, "shfl": 1, "bar": 1, "instructions": 3}
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers, 8192 bytes smem, 400 bytes cmem[0]\n")
    assert sass_report.parse_ptxas_log(log) == {"k": {"registers": 40, "spill_stores": 8, "spill_loads": 4,
                                                      "stack": 16, "smem": 8192, "barriers": 1}}
    ptx = ".visible .entry k(\n\t.param .u64 k_param_0\n)\n.maxntid 128, 1, 1\n{\n}\n.visible .entry j()\n{\n}"
    assert sass_report.parse_launch_bounds(ptx) == {"k": 128}
