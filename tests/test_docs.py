"""The configuration contract: every setting is documented in .env.example and the README, and nothing more."""

from __future__ import annotations

import re

from app.settings import Settings
from tests.servers import ROOT


def _env_names() -> set[str]:
    return {"FAL_KEY" if name == "fal_key" else f"FALGATE_{name.upper()}" for name in Settings.model_fields}


def test_env_example_matches_settings() -> None:
    documented = set(re.findall(r"^#?(FALGATE_[A-Z_]+|FAL_KEY)=", (ROOT / ".env.example").read_text(), re.M))
    assert documented == _env_names()


def test_readme_mentions_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in _env_names() if name not in readme)
    assert not missing, f"README's configuration table lacks {missing}"
