"""Feature extractors for the generative metrics: images in, one feature vector per image out.

FID-style numbers are only as meaningful as the features. Inception (ImageNet) features are the convention for
natural images but say little about small greyscale medical images, and their weights need a download; so the
default is an in-domain classifier trained on the real training split. Every extractor maps uint8 images
(N, H, W, C) to float64 features (N, D), so `genmetrics` never sees pixels.

`--features` accepts:
- `classifier`: the in-domain reference classifier (`capaug.classifier`), penultimate-layer features;
- `inception`: torchmetrics' FID Inception-v3 (needs torch-fidelity and its downloaded weights);
- a file: a capaug classifier checkpoint (`.safetensors`), a `torch.export` program (`.pt2`) or a TorchScript
  module (both fed float (N, C, H, W) in [0, 1] at the images' own size; output flattened per image), or
  else torch-fidelity Inception weights for offline Inception features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .errors import CapaugError

BATCH = 64
INCEPTION_HINT = "use --features classifier (the default) or a local TorchScript / .pt2 / classifier checkpoint file"


class ClassifierFeatures:
    """Penultimate-layer features of a capaug classifier (`ClassifierBundle.features`)."""

    def __init__(self, bundle, source: str):
        self.bundle = bundle
        self.description = {"kind": "classifier", "source": source, "model": bundle.info.model,
                            "image_size": bundle.info.image_size}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.bundle.features(images).astype(np.float64)


class ModuleFeatures:
    """A torch module fed float images in [0, 1], (N, C, H, W); its output is flattened per image."""

    def __init__(self, module: torch.nn.Module, source: str, device: torch.device):
        self.module, self.device = module, device
        self.description = {"kind": "module", "source": source}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return _batched(images, lambda x: self.module(x.float().div(255).to(self.device)).flatten(1))


class InceptionFeatures:
    """torchmetrics' FID Inception-v3 pool features (2048-d); grey images are repeated to three channels."""

    def __init__(self, device: torch.device, weights: Optional[str] = None):
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise CapaugError(f"Inception features need torch-fidelity (pip install torch-fidelity); {INCEPTION_HINT}")
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                     feature_extractor_weights_path=weights)
        except Exception as e:  # a failed download or an unreadable weights file, whatever its type
            where = weights or "torch-fidelity's download (offline?)"
            raise CapaugError(f"cannot load Inception weights from {where}: {str(e).splitlines()[0] if str(e) else e!r}; "
                              f"{INCEPTION_HINT}") from e
        self.net, self.device = net.to(device), device
        self.description = {"kind": "inception", "source": weights or "torchmetrics", "dims": 2048}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return _batched(images, lambda x: self.net(x.expand(-1, 3, -1, -1).contiguous().to(self.device)))


@torch.no_grad()
def _batched(images: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """`fn` on uint8 (B, C, H, W) batches of uint8 (N, H, W, C) images, concatenated as float64 (N, D)."""
    parts = [fn(torch.as_tensor(np.asarray(images[i : i + BATCH])).permute(0, 3, 1, 2)).double().cpu().numpy()
             for i in range(0, len(images), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _module_from_file(path: Path, device: torch.device) -> Optional[torch.nn.Module]:
    """A `.pt2` exported program or a TorchScript module; None when the file is neither."""
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module().to(device)
        except Exception as e:  # torch.export raises several types for foreign files
            raise CapaugError(f"{path} is not a torch.export program: {e}") from e
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        return None


def load_features(spec: str, *, reference: Callable[[], object], device: str | torch.device = "cpu"):
    """The extractor named by `--features`; `reference()` supplies the in-domain classifier when it is asked for."""
    device = torch.device(device)
    if spec == "classifier":
        return ClassifierFeatures(reference(), "reference classifier trained on the real training split")
    if spec == "inception":
        return InceptionFeatures(device)
    path = Path(spec)
    if not path.is_file():
        raise CapaugError(f"--features must be classifier, inception or an existing file; {spec} is none of these")
    if path.suffix == ".safetensors":
        from capaug.classifier.checkpoint import load_classifier

        return ClassifierFeatures(load_classifier(path, device), str(path))
    module = _module_from_file(path, device)
    if module is not None:
        return ModuleFeatures(module, str(path), device)
    try:
        return InceptionFeatures(device, weights=str(path))
    except CapaugError as e:
        raise CapaugError(f"{path} is not a classifier checkpoint, .pt2 or TorchScript file; as Inception weights: {e}") from e
