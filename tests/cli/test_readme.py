"""README's first command (the main job) runs as written and answers, in the fast suite so CI checks it."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.realmodel
def test_readme_main_command_answers(gemma_path):
    blocks = re.findall(r"```bash\n(.*?)\n```", README.read_text(encoding="utf-8"), re.S)
    install, _, run = blocks[0].partition(" && ")
    assert install.startswith("pip install") and run.startswith("kamado run ")
    argv = shlex.split(run)
    # Run the command through this interpreter (the package is installed already, as the install step does).
    r = subprocess.run([sys.executable, "-m", "kamado.cli.main", *argv[1:]], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
