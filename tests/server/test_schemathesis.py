"""schemathesis against the server's own OpenAPI document: no 5xx, and every response matches the schema the
server publishes (status codes, content types, bodies). The models are FakeLlama stand-ins, so generated requests
exercise the HTTP layer in full (validation, streaming, aggregation, errors) in bounded time.

positive_data_acceptance is left out on purpose: a schema-valid request may still be refused for what only the
model can judge (a logit_bias token beyond the vocabulary, a prompt longer than the context) - with a 400.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from kamado.server import ModelSettings, ServerSettings, create_app  # noqa: E402
from tests.server.fake_backend import FakeLlama  # noqa: E402


def _app(tmp_dir):
    path = tmp_dir / "fake.gguf"
    path.write_bytes(b"GGUF")
    settings = ServerSettings(models=[ModelSettings(model=str(path), model_alias="fake", n_ctx=512)], strict_model_names=False)
    return create_app(settings, loader=lambda ms: FakeLlama(n_ctx=ms.n_ctx), memory_of=lambda ms: 1)


def _tmp_dir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="kamado-schemathesis-"))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_tmp_dir()))

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance, checks.negative_data_rejection]


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_conformance(case):
    case.call_and_validate(checks=CHECKS)


@pytest.fixture(scope="module")
def real_schema(gemma_path):
    """The OpenAPI document of a real `kamado serve` with the real Gemma 3 270M (short answers: -n 4)."""
    from tests.server.realserver import ServeProcess

    server = ServeProcess(["-m", str(gemma_path), "-c", "256", "-n", "4", "--port", "0", "-np", "2"])
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    assert server.stop() == 0


real = schemathesis.pytest.from_fixture("real_schema")


@pytest.mark.slow
@pytest.mark.realmodel
@real.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_conformance_real_model(case):
    case.call_and_validate(checks=CHECKS, timeout=120)
