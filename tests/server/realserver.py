"""`kamado serve` as a user runs it: a subprocess, ready once it prints its startup line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTUP = re.compile(r"kamado: listening on (http://\S+) - serving (.+) \(models load on first use\)")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ServeProcess:
    def __init__(self, args: list[str], cwd: Path | None = None, timeout: float = 120):
        self.proc = subprocess.Popen([sys.executable, "-m", "kamado.cli.main", "serve", *args], cwd=cwd or ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        ready = threading.Event()
        self.url = None
        self.models = None

        def read_stdout():
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                m = STARTUP.search(line)
                if m and not ready.is_set():
                    self.url, self.models = m.group(1), m.group(2)
                    ready.set()
            ready.set()

        def read_stderr():
            for line in self.proc.stderr:
                self.stderr_lines.append(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        ready.wait(timeout)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"kamado serve did not start: {''.join(self.stderr_lines)[-2000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
