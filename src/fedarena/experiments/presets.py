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
    offline: bool  # runs as shipped, on embedded data: nothing to download, no files of one's own
    needs: str = ""  # what it needs beside the package when not offline (one phrase)

    @property
    def where(self) -> str:
        """``offline``, or what the preset needs to run (``fedarena list``)."""
        return "offline" if self.offline else f"needs {self.needs}"


PRESETS = {p.name: p for p in (
    Preset("next-word", "next-character prediction on phones, one client per writer (embedded Shakespeare, one "
                        "client per speaking role, LEAF's LSTM)", offline=True),
    Preset("keyword-spotting", "keyword spotting on phones and speakers, one client per speaker (Speech Commands "
                               "v0.02 by speaker_id, log-mel features, CNN)", offline=False,
           needs="a download: google/speech_commands, read with --data hf:disk --set data.files=DIR"),
    Preset("medical-imaging", "hospitals that cannot pool their images, one client per hospital (Fed-ISIC2019 "
                              "by center, 6 hospitals, 64x64 dermoscopy images, CNN with BatchNorm)", offline=False,
           needs="a download: flwrlabs/fed-isic2019, read with --data hf:disk --set data.files=DIR"),
    Preset("mobile-iid", "phones whose data follow one distribution: the case that favours one global model "
                         "(digits, IID over 50 clients, MLP)", offline=True),
    Preset("wearables", "activity recognition on watches and phones, one client per wearer (your own "
                        "per-client npz files, MLP)", offline=False,
           needs="your own per-client npz files: --data npz-dir:PATH"),
)}


def preset_file(name: str) -> Path:
    """The preset's config file, or FedarenaError naming the presets there are."""
    if name not in PRESETS:
        raise FedarenaError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    path = resources.files("fedarena").joinpath(f"presets/{name}.toml")
    if not path.is_file():
        raise FedarenaError(f"preset '{name}' has no config file in this installation ({path})")
    return Path(str(path))
