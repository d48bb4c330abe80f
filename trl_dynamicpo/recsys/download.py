"""Fetch the public raw files that `build.build_dataset` reads (`trl-dynamicpo data build ... --download`).

- LLaRA's split tables and catalogues: the Hugging Face dataset `joyliao7777/LLaRA` (one folder per dataset:
  `lastfm/`, `movielens/`, `steam/`), through `huggingface_hub`.
- S-DPO's published LastFM validation and test prompts (`lastfm-val.json`, `lastfm-test.json`) from its GitHub
  repository: the source of those splits when LLaRA's tables for them are not there, else the reference the built
  splits are compared with.

The files land directly in the raw folder under their own names; `build_dataset` then checks the sha256 of those it
knows (`build.PUBLISHED_SHA256`) before reading anything. Needs network access; the build itself never does.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .build import DATASETS, SPLITS, raw_table_names


logger = logging.getLogger(__name__)

LLARA_HUB_DATASET = "joyliao7777/LLaRA"
SDPO_RAW_URL = "https://raw.githubusercontent.com/chenyuxin1999/S-DPO/HEAD/data/lastfm-sft-cans20/{name}"
SDPO_FILES = {"lastfm": ("lastfm-val.json", "lastfm-test.json")}


def hub_files_for(dataset: str, repo_files: Iterable[str]) -> list[str]:
    """The files of LLaRA's Hub dataset that `build_dataset(dataset, ...)` reads: the dataset folder's split tables
    and catalogue (other files, such as checkpoints or item embeddings, are left out)."""
    spec = DATASETS[dataset]
    catalogues = {name.lower() for name in spec.catalogue_files}
    tables = set().union(*(raw_table_names(dataset, split) for split in SPLITS))
    picked = []
    for name in repo_files:
        path = PurePosixPath(name)
        if len(path.parts) == 2 and path.parts[0].lower() == dataset and path.name.lower() in catalogues | tables:
            picked.append(name)
    return sorted(picked)


def download_raw(dataset: str, raw_dir: str | os.PathLike, *, revision: str | None = None) -> list[Path]:
    """Download the public raw files of `dataset` (lastfm, steam or movielens) into `raw_dir`; returns their paths.

    Raises:
        ValueError: for a dataset without public raw files (`llara`: bring your own).
        FileNotFoundError: when the Hub dataset holds none of the files expected for `dataset`.
    """
    from huggingface_hub import hf_hub_download, list_repo_files

    if dataset not in DATASETS or DATASETS[dataset].padding_id is None:
        public = [name for name, spec in DATASETS.items() if spec.padding_id is not None]
        raise ValueError(f"no public raw files to download for {dataset!r}; --download covers {', '.join(public)}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    names = hub_files_for(dataset, list_repo_files(LLARA_HUB_DATASET, repo_type="dataset", revision=revision))
    if not names:
        raise FileNotFoundError(f"the Hub dataset {LLARA_HUB_DATASET} has no {dataset}/ split tables or catalogue")
    paths = []
    for name in names:
        cached = hf_hub_download(LLARA_HUB_DATASET, name, repo_type="dataset", revision=revision)
        target = raw_dir / PurePosixPath(name).name
        shutil.copyfile(cached, target)
        logger.info("downloaded %s/%s -> %s", LLARA_HUB_DATASET, name, target)
        paths.append(target)
    for name in SDPO_FILES.get(dataset, ()):
        target = raw_dir / name
        with urllib.request.urlopen(SDPO_RAW_URL.format(name=name), timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
        logger.info("downloaded S-DPO's %s -> %s", name, target)
        paths.append(target)
    return paths
