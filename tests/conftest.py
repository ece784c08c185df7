import pytest

from tests import realmodels


@pytest.fixture(scope="session")
def shared():
    return realmodels.shared_dir()


@pytest.fixture(scope="session")
def gemma_path():
    return realmodels.gemma_path()


@pytest.fixture(scope="session")
def qwen_path():
    return realmodels.qwen_path()
