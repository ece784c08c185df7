"""Flag parsing, --help and one-line errors of `kamado run`, `bench`, `perplexity` and `env` (no model needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kamado.cli import bench, env, perplexity, run

COMMANDS = {"run": run, "bench": bench, "perplexity": perplexity, "env": env}


def call(module, argv, capsys):
    """Run a command's main in-process; return (exit code, stdout, stderr)."""
    try:
        code = module.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", COMMANDS)
def test_help_explains_every_flag(name, capsys):
    parser = COMMANDS[name].build_parser()
    code, out, _ = call(COMMANDS[name], ["--help"], capsys)
    assert code == 0
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in out, f"kamado {name} --help does not mention {flag}"
        if action.option_strings and action.dest != "help":
            assert action.help, f"kamado {name}: flag {action.option_strings} has no explanation"


def test_run_accepts_llama_cli_flag_names():
    # The flags issue 6 lists, spelled as llama-cli users type them.
    args = run.build_parser().parse_args([
        "-m", "x.gguf", "-p", "hi", "-f", "p.txt", "-n", "-1", "-c", "1024", "-i", "-cnv", "-sys", "be brief", "--color",
        "-s", "42", "--temp", "0.7", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.1", "--repeat-penalty", "1.1",
        "--repeat-last-n", "32", "--presence-penalty", "0.5", "--frequency-penalty", "0.25", "-r", "User:", "--stop", "<|im_end|>",
        "--ignore-eos", "-ngl", "10", "-t", "2", "-b", "256", "--chat-template", "chatml", "--jinja", "-e", "--verbose-prompt",
    ])
    assert (args.model, args.prompt, args.n_predict, args.ctx_size, args.interactive, args.conversation) == ("x.gguf", "hi", -1, 1024,
                                                                                                          True, True)
    assert (args.system_prompt, args.color, args.seed, args.temp, args.top_k, args.n_gpu_layers) == ("be brief", "on", 42, 0.7, 20, 10)
    assert (args.reverse_prompt, args.stop, args.ignore_eos, args.threads, args.batch_size) == (["User:"], ["<|im_end|>"], True, 2, 256)
    for alias in (["--gpu-layers", "3"], ["--n-gpu-layers", "3"]):
        assert run.build_parser().parse_args(alias).n_gpu_layers == 3
    assert run.build_parser().parse_args(["-no-cnv"]).conversation is False
    assert run.build_parser().parse_args(["-co", "-p", "x"]).color == "on"
    assert run.build_parser().parse_args([]).color == "auto"


@pytest.mark.parametrize("name, argv, needle", [
    ("run", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("run", ["-n", "many"], "invalid int value: 'many'"),
    ("run", ["--temp"], "expected one argument"),
    ("bench", ["-p", "1,x"], "expected comma-separated integers"),
    ("bench", ["-pg", "512"], "expected PROMPT,GEN"),
    ("bench", ["-o", "xml"], "invalid choice: 'xml'"),
    ("perplexity", [], "the following arguments are required: -f/--file"),
    ("env", ["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_end_in_one_line(name, argv, needle, capsys):
    code, out, err = call(COMMANDS[name], argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err and err.startswith(f"kamado {name}: error: ")
    assert out == ""


@pytest.mark.parametrize("name, argv", [
    ("run", ["-m", "/nonexistent/model.gguf", "-p", "hi"]),
    ("bench", ["-m", "/nonexistent/model.gguf"]),
    ("perplexity", ["-m", "/nonexistent/model.gguf", "-f", __file__]),
    ("env", ["-m", "/nonexistent/model.gguf"]),
])
def test_missing_model_file(name, argv, capsys):
    code, _, err = call(COMMANDS[name], argv, capsys)
    assert code == 1
    assert err == "kamado: error: model file not found: /nonexistent/model.gguf\n"


def test_missing_prompt_and_text_files(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    code, _, err = call(run, ["-m", str(model), "-f", str(tmp_path / "absent.txt")], capsys)
    assert code == 1 and err.count("\n") == 1 and "cannot read prompt file" in err and "absent.txt" in err
    code, _, err = call(perplexity, ["-m", str(model), "-f", str(tmp_path / "absent.txt")], capsys)
    assert code == 1 and err.count("\n") == 1 and "cannot read text file" in err


def test_not_utf8_prompt_file(tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_bytes("量子".encode("shift_jis"))
    code, _, err = call(run, ["-f", str(bad)], capsys)
    assert code == 1 and err.count("\n") == 1 and "is not UTF-8" in err


def test_corrupt_model_is_one_line_error(tmp_path, capsys):
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"NOTAGGUF" * 8)
    code, _, err = call(perplexity, ["-m", str(model), "-f", __file__], capsys)
    assert code == 1 and err.count("\n") == 1 and "broken.gguf" in err


def test_dispatcher_reports_bad_flag_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "run", "--frobnicate"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "--frobnicate" in proc.stderr


@pytest.mark.parametrize("typed, meant", [
    (r"line one\nline two", "line one\nline two"),
    (r"tab\there", "tab\there"),
    (r"quote \" and \' and backslash \\", "quote \" and ' and backslash \\"),
    (r"hex \x41\x7a", "hex Az"),
    (r"unknown \q and \u3042 stay", r"unknown \q and \u3042 stay"),
    (r"bad hex \xZZ stays", r"bad hex \xZZ stays"),
    ("trailing backslash \\", "trailing backslash \\"),
    (r"日本語\nです", "日本語\nです"),
    (r"<start_of_turn>user\nHello!<end_of_turn>\n", "<start_of_turn>user\nHello!<end_of_turn>\n"),
])
def test_escapes_as_llama_cpp(typed, meant):
    # Expected values follow llama.cpp's string_process_escapes (common/common.cpp).
    assert run.process_escapes(typed) == meant


def test_no_escape_keeps_prompt(capsys):
    args = run.build_parser().parse_args(["-p", r"a\nb", "--no-escape"])
    assert run.read_prompt(args) == r"a\nb"
    args = run.build_parser().parse_args(["-p", r"a\nb"])
    assert run.read_prompt(args) == "a\nb"


def test_timing_lines_count_like_llama_cpp():
    timer = run.Timer()
    timer.add({"prompt_tokens": 10, "completion_tokens": 5}, first_token_s=0.1, total_s=0.5)
    timer.add({"prompt_tokens": 20, "completion_tokens": 1}, first_token_s=0.2, total_s=0.2)
    lines = timer.report(load_s=1.5, total_s=2.0).splitlines()
    assert "load time =    1500.00 ms" in lines[0]
    assert "prompt eval time =     300.00 ms /    30 tokens" in lines[1] and "100.00 tokens per second" in lines[1]
    assert "eval time =     400.00 ms /     4 runs" in lines[2] and "10.00 tokens per second" in lines[2]
    assert "total time =    2000.00 ms /    34 tokens" in lines[3]


@pytest.mark.parametrize("argv", [["-no-cnv"], ["-st"], ["-no-cnv", "-st", "-i"]])
def test_nothing_to_answer_is_reported_before_loading(argv, capsys):
    # -m names a missing file: the prompt check must come first, so no model is needed to see it
    code, _, err = call(run, ["-m", "/nonexistent.gguf", *argv], capsys)
    assert code == 1 and err == "kamado: error: nothing to answer: give a prompt with -p/-f, or -i for an interactive session\n"
