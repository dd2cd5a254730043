"""CPU facts and the SIGILL explanation: pure parsing, on captured /proc/cpuinfo and sysctl text."""

from __future__ import annotations

import struct

from modelrunner.runners.engine import probe_model
from modelrunner.runners.engine.cpu import (
    CpuInfo,
    compiled_for,
    missing,
    parse_flags,
    parse_sysctl,
    sigill_reason,
)

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
SAPPHIRE = EPYC.replace("AMD EPYC", "Intel Xeon").replace(
    "avx2 bmi2", "avx2 avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8"
)


def cpu(text: str) -> CpuInfo:
    model, flags = parse_flags(text)
    return CpuInfo("x86_64", model, flags)


class TestFlags:
    def test_parse_cpuinfo(self) -> None:
        c = cpu(EPYC)
        assert c.model == "AMD EPYC"
        assert c.relevant == ("sse4_2", "avx", "f16c", "fma", "avx2")
        assert "avx512f" in c.lacking

    def test_the_tag_differs_between_cpu_kinds_and_is_stable(self) -> None:
        assert cpu(EPYC).tag().startswith("x86_64-avx2-")
        assert cpu(EPYC).tag() == cpu(EPYC).tag()
        assert cpu(SAPPHIRE).tag().startswith("x86_64-amxint8-")

    def test_arm_features(self) -> None:
        model, flags = parse_flags("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
        c = CpuInfo("aarch64", model, flags)
        assert c.relevant == ("asimd", "asimddp", "i8mm")

    def test_macos_sysctl(self) -> None:
        out = (
            "machdep.cpu.brand_string: Apple M2\n"
            "hw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 0\nhw.optional.neon: 1\n"
        )
        assert parse_sysctl(out) == {"asimddp", "asimd"}


class TestSigill:
    def test_names_what_the_binary_was_built_for_when_it_said_so(self) -> None:
        lines = [
            "system_info: n_threads = 2 | CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1"
        ]
        assert compiled_for(lines) == {"avx2", "avx512f", "amx_int8"}
        assert missing(cpu(EPYC), lines) == ("avx512f", "amx_int8")

    def test_otherwise_names_the_strong_sets_this_cpu_lacks(self) -> None:
        assert missing(cpu(EPYC)) == ("avx_vnni", "avx512f", "avx512_vnni", "amx_int8")

    def test_the_message_gives_cause_and_fix(self) -> None:
        text = sigill_reason("/usr/bin/llama-server", cpu(EPYC))
        assert "SIGILL" in text
        assert "avx512f" in text
        assert "modelrunner engine install" in text


class TestProbeModel:
    def test_is_a_deterministic_gguf_with_q4_k_and_q8_0_tensors(self) -> None:
        data = probe_model.build()
        assert data == probe_model.build()
        assert data[:4] == b"GGUF"
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        assert (version, n_tensors) == (3, 12)
        assert n_kv > 10
        for ggml_type in (probe_model.Q4_K, probe_model.Q8_0):
            assert struct.pack("<IQ", ggml_type, 0)[:4] in data
        assert len(data) < 600_000
