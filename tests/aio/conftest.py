from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.certs import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder: Path = tmp_path_factory.mktemp("certs")
    return make_certs(folder)
