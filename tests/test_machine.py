"""icpo_core.machine: the machine kind a train summary records and the report groups runs by."""

from __future__ import annotations

from icpo_core import machine


def test_cpu_bf16_support_from_the_flags():
    assert machine.cpu_bf16({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) == "amx"
    assert machine.cpu_bf16({"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert machine.cpu_bf16({"avx2", "fma"}) == "none"


def test_machine_reads_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    monkeypatch.setattr(machine, "CPUINFO", info)
    m = machine.machine()
    assert m["cpu"] == "Example CPU 9000" and m["cpu_bf16"] == "avx512_bf16" and m["cores"] >= 1
    assert machine.kind(m).startswith(f"Example CPU 9000 ({m['cores']} cores, bf16: avx512_bf16)")
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    assert machine.machine()["cpu_bf16"] == "none"  # unreadable: no flags claimed


def test_kind_names_the_gpu_and_nothing_without_a_record():
    m = {"cpu": "Example CPU", "cores": 16, "cpu_bf16": "amx", "gpu": "1 x NVIDIA H100"}
    assert machine.kind(m) == "Example CPU (16 cores, bf16: amx), GPU 1 x NVIDIA H100"
    assert machine.kind(None) is None and machine.kind({}) is None
