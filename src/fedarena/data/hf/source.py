"""Where an hf: dataset comes from: local files (parquet, csv, json, save_to_disk) or the local Hugging Face
cache, offline (see the package docstring)."""



from __future__ import annotations

import contextlib
import glob
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedarena.core.types import FedarenaError
from fedarena.data.spec import HF_BUILDERS as BUILDERS
from fedarena.data.spec import HF_PREFIX as PREFIX


def parse_name(name: str) -> tuple[str, str | None]:
    """``hf:NAME[:CONFIG]`` -> (NAME, CONFIG or None)."""
    body = name[len(PREFIX):] if name.startswith(PREFIX) else name
    source, _, config = body.partition(":")
    return source, config or None


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE and HF_DATASETS_OFFLINE on, in the environment and in the already-imported
    ``datasets``/``huggingface_hub`` constants (read at import), restored afterwards."""
    import datasets
    import huggingface_hub.constants as hub

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update({k: "1" for k in saved_env})
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow's sort options, inside flwr-datasets
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _file_list(builder: str, files: str) -> list[str]:
    if not files.strip():
        raise FedarenaError(f"hf:{builder} reads local files: set data.files to a path, a glob or a comma-separated "
                            "list of them")
    out = []
    for item in (f.strip() for f in files.split(",") if f.strip()):
        path = str(Path(item).expanduser())
        if any(c in path for c in "*?["):
            if not glob.glob(path, recursive=True):
                raise FedarenaError(f"data.files: no file matches {item}")
        elif not Path(path).exists():
            raise FedarenaError(f"data.files: {item} does not exist")
        out.append(path)
    return out


def _pool(ds: Any) -> Any:
    """A ``Dataset`` from a ``Dataset`` or ``DatasetDict`` (splits concatenated in their order), indices flattened."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in ds])
    return ds.flatten_indices() if ds._indices is not None else ds


def load_source(name: str, files: str = "") -> tuple[Any, str]:
    """The ``datasets.Dataset`` that ``hf:NAME`` names, and a description of where it came from for messages."""
    import datasets

    source, config = parse_name(name)
    try:
        with offline():
            if source == "disk":
                (path,) = _file_list(source, files)[:1]
                if not (Path(path) / "dataset_info.json").is_file() and not (Path(path) / "dataset_dict.json").is_file():
                    raise FedarenaError(f"data.files: {path} is not a datasets save_to_disk directory "
                                        "(no dataset_info.json or dataset_dict.json)")
                return _pool(datasets.load_from_disk(path)), path
            if source in BUILDERS:
                paths = _file_list(source, files)
                return _pool(datasets.load_dataset(source, data_files=paths, split="train")), ", ".join(paths)
            if files:
                raise FedarenaError(f"data.files is for local files (hf:parquet, hf:csv, hf:json, hf:disk); "
                                    f"hf:{source} is a Hub dataset")
            return _pool(datasets.load_dataset(source, config)), f"hf:{source}"
    except FedarenaError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        if source in BUILDERS:
            detail = " ".join(str(exc).split())[:300]
            raise FedarenaError(f"hf:{source}: cannot read data.files={files}: {type(exc).__name__}: {detail}") from None
        cfg = f", '{config}'" if config else ""
        raise FedarenaError(
            f"hf:{source}{':' + config if config else ''} is not in the local Hugging Face cache and fedarena does "
            f"not download at run time: download it once with `python -c \"import datasets; datasets.load_dataset("
            f"'{source}'{cfg}).save_to_disk('DIR')\"` and run with --data hf:disk --set data.files=DIR "
            f"(or `hf download {source} --repo-type dataset --local-dir DIR` and --data hf:parquet "
            f"--set data.files='DIR/**/*.parquet')"
        ) from None


# ---------------------------------------------------------------- columns
