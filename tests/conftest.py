import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden snapshot files")


@pytest.fixture(autouse=True)
def no_model_endpoint(monkeypatch):
    """No test may reach a real model: forget any endpoint a developer has configured."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HERD_MODEL"):
        monkeypatch.delenv(name, raising=False)
