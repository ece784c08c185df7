"""`kamado perplexity`: llama-perplexity's statistics, output lines and number for the real Gemma 3 270M."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from kamado.cli import perplexity

# llama-perplexity on the same model and text (reference README): PPL = 24.6676 +/- 2.51983
LLAMA_CPP_PPL, LLAMA_CPP_ERR = 24.6676, 2.51983
SEED_TEXT = "seeds/001_3eca53226205c1ab.txt"


def test_running_statistics_follow_llama_perplexity():
    nlls = [2.5, 3.25, 1.0, 4.5, 0.75, 3.0]
    r = perplexity.RunningPerplexity()
    r.add(nlls[:2])
    assert r.ppl == pytest.approx(math.exp((2.5 + 3.25) / 2))
    r.add(nlls[2:])
    # llama-perplexity: mean, then the standard error of the mean NLL, sqrt(var / (n - 1)), times PPL
    n = len(nlls)
    mean = sum(nlls) / n
    var = sum(v * v for v in nlls) / n - mean * mean
    assert r.ppl == pytest.approx(math.exp(mean))
    assert r.uncertainty() == pytest.approx(math.sqrt(var / (n - 1)) * math.exp(mean))
    same = perplexity.RunningPerplexity()
    same.add([1.0, 1.0, 1.0])
    assert same.uncertainty() is None


@pytest.mark.parametrize("argv, needle", [
    (["-c", "2"], "--ctx-size must be at least 4"),
    (["--chunks", "0"], "--chunks must be a positive number"),
])
def test_bad_values(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        perplexity.main(["-f", __file__, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and needle in err


@pytest.mark.realmodel
def test_text_too_short_is_reported_before_loading(gemma_path, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        perplexity.main(["-m", str(gemma_path), "-f", str(short), "-c", "256"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert re.search(r"short\.txt: \d+ tokens; perplexity with a context of 256 needs at least 512", err)
    assert "model loaded" not in err


@pytest.mark.realmodel
@pytest.mark.slow
def test_matches_llama_perplexity(gemma_path, shared):
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "perplexity", "-m", str(gemma_path), "-f", str(shared / SEED_TEXT),
                           "-c", "256", "-b", "256"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    running = [float(v) for v in re.findall(r"\[(?:\d+)\]([0-9.]+),", proc.stdout)]
    assert re.findall(r"\[(\d+)\]", proc.stdout) == [str(i) for i in range(1, 9)], "8 chunks, as llama-perplexity"
    final = re.search(r"^Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)$", proc.stdout, re.M)
    assert final, proc.stdout
    ppl, err = float(final.group(1)), float(final.group(2))
    assert running[-1] == ppl
    assert abs(ppl - LLAMA_CPP_PPL) / LLAMA_CPP_PPL < 0.005, f"PPL {ppl} vs llama.cpp {LLAMA_CPP_PPL}"
    assert abs(err - LLAMA_CPP_ERR) / LLAMA_CPP_ERR < 0.05


@pytest.mark.realmodel
@pytest.mark.slow
def test_chunks_limits_the_work(gemma_path, shared):
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "perplexity", "-m", str(gemma_path), "-f", str(shared / SEED_TEXT),
                           "-c", "128", "--chunks", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"\[1\][0-9.]+,\nFinal estimate: PPL = [0-9.]+ \+/- [0-9.]+\n", proc.stdout), proc.stdout
