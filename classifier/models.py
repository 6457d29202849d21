"""timm classifiers by name, with the two ways to start from weights: timm's own (online) or a local file.

`--weights FILE` is the offline path. The file (safetensors or a torch state dict, e.g. timm's own download or
a capaug classifier checkpoint) initialises the backbone: the first conv is adapted to the data's channels the
way timm adapts pretrained weights, the head is always trained afresh, and a file that does not fit the model
is refused with the names of the missing weights rather than silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.nn as nn

from capaug.augment.errors import CapaugError


def create_classifier(
    name: str,
    num_classes: int,
    in_chans: int,
    *,
    pretrained: bool = False,
    weights: Optional[str] = None,
) -> nn.Module:
    """`timm.create_model(name)` with `num_classes` outputs and `in_chans` input channels."""
    import timm

    if not timm.is_model(name):
        raise CapaugError(f"unknown timm model {name!r}; see timm.list_models() for the names")
    if pretrained and weights:
        raise CapaugError("give either --pretrained or --weights FILE, not both")
    try:
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    except (RuntimeError, OSError) as e:
        raise CapaugError(f"cannot get timm's pretrained weights for {name} (offline? use --weights FILE): "
                          f"{_first_line(e)}") from e
    if weights:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, weights: str) -> None:
    """Load every non-head weight of `model` from the file `weights`; refuse a file that misses any."""
    from timm.models import adapt_input_conv, load_state_dict

    path = Path(weights)
    if not path.is_file():
        raise CapaugError(f"classifier weights file {weights} does not exist")
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # any unreadable file: torch, safetensors and pickle raise different types
        raise CapaugError(f"cannot read classifier weights {weights}: {_first_line(e)}") from e
    head = {f"{name}.{p}" for name in _classifier_names(model) for p in ("weight", "bias")}
    state = {k: v for k, v in state.items() if k not in head}
    first_conv = f"{model.pretrained_cfg.get('first_conv', '')}.weight"
    own = model.state_dict()
    if first_conv in state and first_conv in own and state[first_conv].shape[1] != own[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(own[first_conv].shape[1], state[first_conv])
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CapaugError(f"weights {weights} do not fit the model: {k} has shape {tuple(state[k].shape)}, "
                          f"the model needs {tuple(own[k].shape)}; is it a checkpoint of the same --model?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in head]
    if missing:
        raise CapaugError(f"weights {weights} lack {len(missing)} of the model's weights (e.g. {missing[0]}); "
                          "is it a checkpoint of the same --model?")


def _classifier_names(model: nn.Module) -> list[str]:
    names = model.pretrained_cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
