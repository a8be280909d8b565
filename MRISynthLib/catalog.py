"""Model catalog: which weights exist, their checksums, where they are, how to load them.

The catalog is ``MRISynthLib/Resources/models/catalog.json``: a versioned list of model
cards (id, version, task, architecture config, weights file, SHA256, license, citation,
training data and protocol, measured metrics and timings). Shipped weights sit beside it
in the same folder; a card with a ``url`` instead is downloaded once into the per-user
cache (``MRISYNTH_CACHE`` or ``~/.cache/mrisynth/models``), checksum-verified, and never
downloaded again. Loading always verifies the SHA256 and refuses a mismatch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .config import PACKAGE_DIR, cache_dir
from .data.download import ChecksumError, download, verify
from .fileutil import atomic_output

MODELS_DIR = PACKAGE_DIR / "Resources" / "models"
CATALOG_FILE = MODELS_DIR / "catalog.json"
CATALOG_VERSION = 1


@dataclass
class ModelCard:
    id: str
    version: str
    task: str
    architecture: dict
    weights: str                 # file name (shipped beside the catalog, or cached)
    sha256: str
    license: str = "BSD-3-Clause"
    citation: str = ""
    url: Optional[str] = None    # download source when not shipped
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    description: str = ""

    def shipped_path(self) -> Path:
        return MODELS_DIR / self.weights

    def cached_path(self) -> Path:
        return cache_dir() / "models" / self.weights


def load_catalog(path: Path = CATALOG_FILE) -> Dict[str, ModelCard]:
    if not Path(path).exists():
        return {}
    data = json.loads(Path(path).read_text())
    if data.get("catalog_version") != CATALOG_VERSION:
        raise ValueError(f"{path}: unsupported catalog version {data.get('catalog_version')}")
    return {m["id"]: ModelCard(**m) for m in data["models"]}


def save_catalog(cards: Dict[str, ModelCard], path: Path = CATALOG_FILE) -> None:
    payload = {"catalog_version": CATALOG_VERSION,
               "models": [asdict(c) for c in sorted(cards.values(), key=lambda c: c.id)]}
    with atomic_output(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")


def get_card(model_id: str, catalog: Optional[Dict[str, ModelCard]] = None) -> ModelCard:
    cat = load_catalog() if catalog is None else catalog
    if model_id not in cat:
        raise ValueError(f"unknown model {model_id!r}; the catalog has {sorted(cat)}")
    return cat[model_id]


def list_models(task: Optional[str] = None) -> List[ModelCard]:
    return [c for c in load_catalog().values() if task is None or c.task == task]


def shipped_models(task: str, what: str) -> List[ModelCard]:
    """The catalog's models for ``task`` sorted by id; FileNotFoundError naming ``what`` if none."""
    cands = sorted(list_models(task), key=lambda c: c.id)
    if not cands:
        raise FileNotFoundError(f"no shipped {what} model in the catalog")
    return cands


def weights_path(card: ModelCard, progress: bool = True) -> Path:
    """Path of verified weights: shipped file, else cached download (fetched once)."""
    p = card.shipped_path()
    if p.exists():
        verify(p, card.sha256)
        return p
    if card.url is None:
        raise FileNotFoundError(f"weights {card.weights} for {card.id} are not shipped and have no download URL")
    return download(card.url, card.cached_path(), card.sha256, progress=progress)


def load_state_dict(card: ModelCard, progress: bool = True):
    """The card's weights as a float32 state dict; raises ChecksumError on mismatch."""
    from safetensors.torch import load_file

    sd = load_file(str(weights_path(card, progress=progress)))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def save_weights(state_dict, path, fp16: bool = True) -> str:
    """Write a state dict as safetensors (floating tensors in fp16 if asked); returns SHA256."""
    import torch
    from safetensors.torch import save_file

    from .data.download import sha256sum

    sd = {k: (v.detach().to(torch.float16) if fp16 and v.is_floating_point() else v.detach()).contiguous()
          for k, v in state_dict.items()}
    with atomic_output(path, suffix=".safetensors") as tmp:
        save_file(sd, tmp, metadata={"format": "pt"})
    return sha256sum(path)


_NETWORKS: Dict[tuple, object] = {}


def load_network(card: ModelCard, build, device=None):
    """``build(card.architecture)`` with the card's verified weights, in eval mode on
    ``device``; cached per model (id and SHA256) and device."""
    from .device import resolve_device

    dev = resolve_device(device)
    key = (card.id + "@" + card.sha256, str(dev))
    if key not in _NETWORKS:
        net = build(card.architecture)
        net.load_state_dict(load_state_dict(card))
        _NETWORKS[key] = net.eval().to(dev)
    return _NETWORKS[key]


def _drop_nested_history(training: dict) -> dict:
    """``training`` without the ``history`` entries of its ``continued_from`` levels that
    its own ``history`` already holds (a continued run's card otherwise repeats them at
    every level); entries found only in a nested level stay there."""
    top = training.get("history", {})

    def strip(origin):
        if not isinstance(origin, dict) or not isinstance(origin.get("training"), dict):
            return origin
        t = dict(origin["training"])
        if "history" in t:
            rest = {k: v for k, v in t["history"].items() if top.get(k) != v}
            if rest:
                t["history"] = rest
            else:
                del t["history"]
        if "continued_from" in t:
            t["continued_from"] = strip(t["continued_from"])
        return {**origin, "training": t}

    if "continued_from" not in training:
        return training
    return {**training, "continued_from": strip(training["continued_from"])}


def ship(model_id: str, task: str, architecture: dict, state_dict, fp16: bool = True,
         models_dir: Optional[Path] = None, **fields) -> ModelCard:
    """Write the weights beside the catalog and add (or replace) the model's card.

    ``fields`` are further :class:`ModelCard` fields; metrics and timing already in the
    catalog are kept unless given. Replacing weights keeps the card's provenance: the
    earlier ``training["history"]`` is carried over and the replaced weights' SHA256,
    steps and metrics are added to it (keyed by their step count; "200#2", "200#3" when an
    earlier stage of the same length holds the key), so an export never loses what the
    previous model measured; the ``continued_from`` levels do not repeat history entries
    that the card's own history holds. ``models_dir`` (default: the shipped models
    folder) holds the weights and ``catalog.json``.
    """
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
    catalog_file = models_dir / CATALOG_FILE.name
    fname = f"{model_id}.safetensors"
    sha = save_weights(state_dict, models_dir / fname, fp16=fp16)
    cards = load_catalog(catalog_file)
    old = cards.get(model_id)
    keep = {"metrics": old.metrics, "timing": old.timing} if old else {}
    training = dict(fields.pop("training", old.training if old else {}))
    if old is not None:
        history = {**old.training.get("history", {}), **training.get("history", {})}
        if old.sha256 != sha and old.metrics:
            key = str(old.training.get("steps", "previous"))
            if key in history and history[key].get("sha256") != old.sha256:
                # an earlier stage of the same length holds the key: number this one
                key = next(f"{key}#{n}" for n in range(2, len(history) + 3) if f"{key}#{n}" not in history)
            history.setdefault(key, {"sha256": old.sha256, "metrics": old.metrics})
        if history:
            training["history"] = history
    training = _drop_nested_history(training)
    cards[model_id] = ModelCard(id=model_id, version=fields.pop("version", "1.0"), task=task,
                                architecture=architecture, weights=fname, sha256=sha, training=training,
                                **{**keep, **fields})
    save_catalog(cards, catalog_file)
    return cards[model_id]


__all__ = ["ModelCard", "ship", "load_network", "ChecksumError", "load_catalog", "save_catalog", "get_card", "list_models", "shipped_models",
           "weights_path", "load_state_dict", "save_weights", "MODELS_DIR"]
