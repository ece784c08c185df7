"""Settings: llama-cpp-python's config file (seed 004's as written, paths changed) and `kamado serve`'s flags."""

from __future__ import annotations

import json
import re

import pytest

from kamado.cli.serve import build_parser, main, settings_from_args
from kamado.server import SettingsError, check_models, load_config_file


def seed004_config(shared, tmp_path) -> dict:
    """The config.json of seed 004, exactly as the tutorial writes it, with its model paths moved into tmp_path."""
    text = (shared / "seeds" / "004_dc908d68b59db09a.txt").read_text(encoding="utf-8")
    config = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    for m in config["models"]:
        path = tmp_path / m["model"].rsplit("/", 1)[1]
        path.write_bytes(b"GGUF")
        m["model"] = str(path)
    return config


def test_seed004_config_loads_as_written(shared, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(seed004_config(shared, tmp_path)))
    warnings: list[str] = []
    settings = load_config_file(config_file, warnings)
    assert (settings.host, settings.port, settings.api_key) == ("0.0.0.0", 20080, None)
    assert settings.model_names() == ["vicuna-13b", "karakuri-8x7b"]
    vicuna, karakuri = settings.models
    assert (vicuna.chat_format, vicuna.n_gpu_layers, vicuna.n_ctx) == ("vicuna", -1, 4096)
    assert karakuri.chat_format == "llama-2"
    assert warnings == []
    check_models(settings)


def test_config_key_errors_name_the_key(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [{"model": str(model), "n_ctxx": 10}]}))
    with pytest.raises(SettingsError, match=r"bad\.json.*unknown setting 'models\.0\.n_ctxx'"):
        load_config_file(bad, [])
    bad.write_text(json.dumps({"port": "eighty", "models": []}))
    with pytest.raises(SettingsError, match="'port'"):
        load_config_file(bad, [])
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="not valid JSON"):
        load_config_file(bad, [])
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.json", [])


def test_llama_cpp_python_keys_without_use_are_named_in_a_warning(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"interrupt_requests": False, "models": [{"model": "m.gguf", "use_mlock": True, "flash_attn": True}]}))
    warnings: list[str] = []
    settings = load_config_file(config, warnings)
    assert settings.models[0].model == str(model)  # relative to the config file
    assert len(warnings) == 2 and "interrupt_requests" in warnings[0] and "flash_attn, use_mlock" in warnings[1]


def test_missing_model_and_duplicate_names_fail_at_startup(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"models": [{"model": str(tmp_path / "nope.gguf")}]}))
    with pytest.raises(SettingsError, match="model file not found: .*nope.gguf"):
        check_models(load_config_file(config, []))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    config.write_text(json.dumps({"models": [{"model": "a.gguf", "model_alias": "x"}, {"model": "a.gguf", "model_alias": "x"}]}))
    with pytest.raises(SettingsError, match="two models are named 'x'"):
        check_models(load_config_file(config, []))


def test_flags(tmp_path):
    model = tmp_path / "gemma.gguf"
    model.write_bytes(b"GGUF")
    args = build_parser().parse_args(["-m", str(model), "-n", "64", "-c", "512", "--port", "8081", "-np", "8"])
    settings = settings_from_args(args)
    assert (settings.host, settings.port, settings.n_predict) == ("127.0.0.1", 8081, 64)
    assert settings.model_names() == ["gemma"] and not settings.strict_model_names
    assert (settings.models[0].n_ctx, settings.models[0].n_parallel) == (512, 8)
    aliased = settings_from_args(build_parser().parse_args(["-m", str(model), "--model-alias", "g", "--api-key", "k"]))
    assert aliased.model_names() == ["g"] and aliased.strict_model_names and aliased.api_key == "k"


def test_flags_override_the_config_file_and_conflicts_fail(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"host": "0.0.0.0", "port": 9000, "models": [{"model": "a.gguf"}]}))
    settings = settings_from_args(build_parser().parse_args(["--config", str(config), "--port", "9001"]))
    assert (settings.host, settings.port, settings.strict_model_names) == ("0.0.0.0", 9001, True)
    with pytest.raises(SettingsError, match="either -m or a --config"):
        settings_from_args(build_parser().parse_args(["--config", str(config), "-m", str(tmp_path / "a.gguf")]))


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["-m", str(tmp_path / "missing.gguf")])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"kamado: error: model file not found: {tmp_path / 'missing.gguf'}"
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit):
        main(["-m", str(tmp_path / "a.gguf"), "--chat-format", "klingon"])
    assert "unknown chat format 'klingon'" in capsys.readouterr().err
