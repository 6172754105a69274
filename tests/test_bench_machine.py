"""bench/machine.py: every bench starts its output with the machine it ran on (CPU model, vector extensions, GPU)."""

from __future__ import annotations

from pathlib import Path

from bench import machine

BENCH = Path(__file__).resolve().parents[1] / "bench"
HELPERS = {"machine.py", "workload.py", "gpu_group.py", "__init__.py"}  # imported by benches, not run alone


def test_the_machine_line_names_cpu_extensions_and_gpu():
    line = machine.machine_line()
    assert line.startswith(f"machine: {machine.cpu_model()}, ") and "GPU: " in line and "native bf16: " in line
    assert all(flag in line for flag in machine.vector_extensions())


def test_every_bench_prints_the_machine_line():
    benches = sorted(path for path in BENCH.glob("*.py") if path.name not in HELPERS)
    assert len(benches) >= 10
    silent = [path.name for path in benches
              if "print_machine()" not in (text := path.read_text()) and "machine_line()" not in text]
    assert silent == [], f"benches that do not print bench.machine's line first: {silent}"
