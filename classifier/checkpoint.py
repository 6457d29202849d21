"""One-file classifier checkpoints and the `ClassifierBundle` other stages use for inference.

A checkpoint is a safetensors file: the timm model's weights plus, in the file's metadata, what is needed to
rebuild and feed it (model name, classes, channels, image size, normalization). Synthesis's confidence filter
and `capaug evaluate` (in-domain features) load it without knowing how it was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from capaug.augment.errors import CapaugError
from capaug.augment.io import atomic_path

FORMAT = "capaug-classifier/1"
METADATA_KEY = "capaug"


@dataclass
class ClassifierInfo:
    """How to rebuild and feed a classifier; `extra` holds provenance (split hash, seed, val score)."""

    model: str
    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    format: str = FORMAT
    extra: dict = field(default_factory=dict)


class ClassifierBundle:
    """A trained classifier ready for inference on uint8 images (N, H, W, C), any size, grey or RGB."""

    def __init__(self, model: torch.nn.Module, info: ClassifierInfo, device: str | torch.device = "cpu",
                 batch_size: int = 256):
        from .transforms import AlbumentationsTransform, eval_transform

        self.model = model.to(device).eval()
        self.info = info
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.transform = AlbumentationsTransform(
            eval_transform(info.image_size, info.channels, info.mean, info.std), info.channels)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities, float32 (N, K), columns in `classes` order."""
        return self._run(images, lambda x: self.model(x).float().softmax(dim=1), len(self.classes))

    def features(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Penultimate-layer features, float32 (N, D): timm's pooled pre-logits."""
        model = self.model
        return self._run(images, lambda x: model.forward_head(model.forward_features(x), pre_logits=True).float(),
                         model.num_features)

    @torch.no_grad()
    def _run(self, images, fn, width: int) -> np.ndarray:
        outputs = [np.zeros((0, width), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(np.asarray(im)) for im in images[start:start + self.batch_size]])
            outputs.append(fn(batch.to(self.device)).cpu().numpy())
        return np.concatenate(outputs)


def save_classifier(path: str | Path, model: torch.nn.Module, info: ClassifierInfo) -> None:
    """Write the weights and `info` as one safetensors file, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(asdict(info))})


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ClassifierBundle:
    """Rebuild the timm model of a checkpoint written by `save_classifier`."""
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CapaugError(f"classifier checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = (f.metadata() or {}).get(METADATA_KEY)
        state = load_file(str(path))
    except Exception as e:  # not a safetensors file at all
        raise CapaugError(f"{path} is not a capaug classifier checkpoint ({type(e).__name__})") from e
    if metadata is None:
        raise CapaugError(f"{path} is a safetensors file without capaug classifier metadata")
    info = ClassifierInfo(**json.loads(metadata))
    if info.format != FORMAT:
        raise CapaugError(f"{path} has format {info.format}; this capaug reads {FORMAT}")
    model = timm.create_model(info.model, num_classes=len(info.classes), in_chans=info.channels)
    model.load_state_dict(state)
    return ClassifierBundle(model, info, device)
