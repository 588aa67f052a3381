"""The test session's own stage cache: no test reads or writes the user's (~/.cache/afd-mini). Subprocesses
inherit it through the environment."""
import os
import shutil
import tempfile


def pytest_configure(config):
    os.environ["AFD_MINI_CACHE"] = tempfile.mkdtemp(prefix="afd-mini-test-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop("AFD_MINI_CACHE", ""), ignore_errors=True)
