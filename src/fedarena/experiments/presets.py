"""Use cases as presets: each a documented config file shipped in the package (`fedarena/presets/NAME.toml`),
so `fedarena compare --preset NAME` is `fedarena compare --config <that file>`; other flags and `--set` still
apply on top. `fedarena list` names them and says which run offline."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fedarena.core.types import FedarenaError


@dataclass(frozen=True)
class Preset:
    name: str
    use_case: str
    offline: bool  # runs on embedded data, with no download


PRESETS = {p.name: p for p in (
    Preset("next-word", "next-character prediction on phones, one client per writer (embedded Shakespeare, one "
                        "client per speaking role, LEAF's LSTM)", offline=True),
    Preset("mobile-iid", "phones whose data follow one distribution: the case that favours one global model "
                         "(digits, IID over 50 clients, MLP)", offline=True),
)}


def preset_file(name: str) -> Path:
    """The preset's config file, or FedarenaError naming the presets there are."""
    if name not in PRESETS:
        raise FedarenaError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    path = resources.files("fedarena").joinpath(f"presets/{name}.toml")
    if not path.is_file():
        raise FedarenaError(f"preset '{name}' has no config file in this installation ({path})")
    return Path(str(path))
