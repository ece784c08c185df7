"""`kamado bench`: llama-bench's tests, table and output formats."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from kamado.cli import bench


def make_result(n_prompt, n_gen, samples_ns):
    return bench.Result("gemma-3-270m-q4_k_m.gguf", "gemma3 270M Q4_K - Medium", 246587904, 268098176, "CPU", 2, 2048, 99,
                        n_prompt, n_gen, "2026-11-25T00:00:00Z", samples_ns)


def test_test_list_follows_llama_bench_defaults():
    parse = bench.build_parser().parse_args
    assert bench.tests_of(parse([])) == [(512, 0), (0, 128)]
    assert bench.tests_of(parse(["-p", "128,256", "-n", "64", "-pg", "512,128"])) == [(128, 0), (256, 0), (0, 64), (512, 128)]
    assert bench.tests_of(parse(["-p", "0", "-n", "32"])) == [(0, 32)]


def test_statistics_are_per_repetition_rates():
    r = make_result(128, 0, [100_000_000, 200_000_000])  # 128 tokens in 0.1 s and in 0.2 s
    s = r.stats()
    assert s["avg_ts"] == pytest.approx((1280 + 640) / 2)
    assert s["stddev_ts"] == pytest.approx(452.5483, rel=1e-6)  # sample standard deviation of 1280 and 640
    assert s["avg_ns"] == 150_000_000
    assert r.test_name == "pp128"
    assert make_result(0, 64, [1]).test_name == "tg64"
    assert make_result(512, 128, [1]).test_name == "pp512+tg128"


def test_markdown_table_layout():
    out = io.StringIO()
    bench.print_markdown([make_result(128, 0, [100_000_000, 200_000_000]), make_result(0, 64, [800_000_000])], out)
    lines = out.getvalue().splitlines()
    # llama-bench's header and alignment row
    assert lines[0] == ("| model                          |       size |     params | backend    | threads |            test |"
                        "                  t/s |")
    assert lines[1] == ("| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: |"
                        " -------------------: |")
    assert lines[2] == ("| gemma3 270M Q4_K - Medium      | 235.16 MiB |   268.10 M | CPU        |       2 |           pp128 |"
                        "      960.00 ± 452.55 |")
    assert lines[3].endswith("|            tg64 |         80.00 ± 0.00 |")


def test_csv_and_json_carry_llama_bench_fields():
    results = [make_result(128, 0, [100_000_000, 200_000_000])]
    out = io.StringIO()
    bench.print_results(results, "csv", out)
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert (row["model_type"], row["n_prompt"], row["n_gen"], row["n_threads"]) == ("gemma3 270M Q4_K - Medium", "128", "0", "2")
    assert float(row["avg_ts"]) == pytest.approx(960.0)
    out = io.StringIO()
    bench.print_results(results, "json", out)
    record = json.loads(out.getvalue())[0]
    assert record["samples_ns"] == [100_000_000, 200_000_000] and record["samples_ts"] == pytest.approx([1280.0, 640.0])
    assert record["model_size"] == 246587904 and record["model_n_params"] == 268098176


def test_model_type_label():
    meta = {"general.architecture": "qwen2", "general.size_label": "0.5B", "general.file_type": 15}
    assert bench.model_type(meta, 630167424) == "qwen2 0.5B Q4_K - Medium"
    assert bench.model_type({"general.architecture": "llama", "general.file_type": 7}, 7_000_000_000) == "llama 7B Q8_0"


@pytest.mark.parametrize("argv, needle", [
    (["-p", "0", "-n", "0"], "no tests to run"),
    (["-r", "0"], "-r/--repetitions must be at least 1"),
    (["-t", "0"], "-t/--threads must be at least 1"),
])
def test_bad_values(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and needle in err


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_bench_rows_for_each_model_and_test(gemma_path):
    argv = ["-m", str(gemma_path), "-m", str(gemma_path), "-p", "16", "-n", "4", "-pg", "16,4", "-r", "2", "-t", "2"]
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "bench", *argv, "-o", "json"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [(r["n_prompt"], r["n_gen"]) for r in records] == [(16, 0), (0, 4), (16, 4)] * 2
    for r in records:
        assert len(r["samples_ns"]) == 2 and all(ns > 0 for ns in r["samples_ns"]) and r["avg_ts"] > 0
        assert r["model_type"] == "gemma3 270M Q4_K - Medium" and r["n_threads"] == 2
        assert r["model_size"] > 200 * 2**20 and r["model_n_params"] == 268098176


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_bench_markdown(gemma_path):
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "bench", "-m", str(gemma_path), "-p", "16", "-n", "4", "-r", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| gemma3")]
    assert len(rows) == 2
    assert re.search(r"\| +pp16 \| +[0-9.]+ ± [0-9.]+ \|$", rows[0]) and re.search(r"\| +tg4 \| +[0-9.]+ ± [0-9.]+ \|$", rows[1])
