"""Named, validated presets. `load_recipe("quickstart")` reads recipes/quickstart.yaml into a `Recipe`.

Overrides use dotted keys (`train.lr=1e-4`); unknown keys anywhere are a `CapaugError` naming the key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from capaug.augment.config import Recipe
from capaug.augment.errors import CapaugError


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def list_recipes() -> dict[str, str]:
    """name -> one-line description."""
    return {name: load_recipe(name).description for name in recipe_names()}


def _read(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, label = _read_file(path), str(path)
    elif name_or_path in recipe_names():
        text, label = resources.files(__name__).joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise CapaugError(f"unknown recipe {name_or_path!r}; choose one of {', '.join(recipe_names())} or a .yaml file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CapaugError(f"recipe {label} is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raise CapaugError(f"recipe file {label} is empty; give it settings (see `capaug recipes`) or leave --recipe out")
    if not isinstance(raw, dict):
        raise CapaugError(f"recipe {label} must be a mapping of settings")
    return label, raw


def _read_file(path: Path) -> str:
    """A recipe file's text; a binary or non-UTF-8 file is refused, not decoded into nonsense."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CapaugError(f"recipe file {path} is not UTF-8 text (byte {e.start}); a recipe is a YAML file") from None
    except OSError as e:
        raise CapaugError(f"cannot read recipe file {path}: {e.strerror or e}") from None


def validate(raw: Mapping[str, Any], label: str = "recipe") -> Recipe:
    """Build a `Recipe`, turning pydantic's report into one line that names the offending key."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise CapaugError(f"{label}: unknown key '{key}'") from None
        message = err["msg"].removeprefix("Value error, ")
        raise CapaugError(f"{label}: bad value for '{key}': {message}") from None


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set `raw["train"]["lr"] = value` for key "train.lr", creating sections as needed."""
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CapaugError(f"override {key}: '{p}' is not a section")
    node[leaf] = value


def load_recipe(name_or_path: str = "quickstart", overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Load a recipe by name or path and apply dotted-key overrides (None values are ignored)."""
    label, raw = _read(name_or_path)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, key, value)
    return validate(raw, f"recipe {label}")


def parse_assignment(text: str) -> tuple[str, Any]:
    """'train.lr=1e-4' -> ('train.lr', 0.0001); the value is read as YAML so lists and numbers work."""
    if "=" not in text:
        raise CapaugError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value
