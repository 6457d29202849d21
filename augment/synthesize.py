"""The synthesis run: target plan -> `OUT/<class>/<class>_<i:06d>.png`, manifest.csv, plan.json, audit, preview.

The state of a run is the files on disk. Image i of class c is made from seed `image_seed(base, c, i)` and saved
atomically as `<class>_<i:06d>.png`, so a rerun skips the indices whose file exists and continues where it
stopped, with neither duplicates nor gaps. Images dropped by a filter are kept under `.rejected/<reason>/` so
their indices are never reused; replacements take the next unused indices. Under `accelerate launch`, process
r owns the indices i = r (mod world size), so shares never collide; the main process writes the manifest,
audit and preview once every process is done. plan.json records the settings, and a rerun with different
settings is refused unless `overwrite` starts again; a higher target continues, a lower one is refused unless
`keep_extra` keeps the images beyond it (listed in the manifest, counted in plan.json) or `overwrite`.

The output folder is an output like any other (`io.claim_output_dir`): it never touches the model folder or the
training data (the split's, or the one recorded in the model's `RUN/split.json`), carries capaug's marker, and
`overwrite` removes only what synthesis wrote there. A writing run holds the run folder's lock (`runlock`).

`cfg.source` minority/majority starts each image from a real training image (`anchors.Anchors`, SDEdit in
`sampling.generate`) at strength `cfg.strength[i % len]`; the manifest names the source image, the audit adds the
distance to it, and a classifier (the filter's, or `label_classifier`) reports per class how many images it
assigns to the class they were made for (`label_fidelity` in plan.json).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from . import io as atomic
from .anchors import Anchors
from .audit import AuditSummary, feature_distances, pair_distances, pixel_distances, summarize
from .config import SynthesisConfig
from .devices import process_state
from .errors import CapaugError
from .grids import save_grid
from .model_io import ModelInfo, file_hash, load_diffusion_model, read_model_info
from .runlock import run_folder_of, run_lock
from .targets import ClassPlan, plan_targets

FORMAT = "capaug-synthetic/1"
MANIFEST_COLUMNS = ["file", "class", "seed", "sampler", "steps", "guidance", "model_hash", "split_hash",
                    "source", "strength", "source_key"]
AUDIT_COLUMNS = ["file", "class", "status", "distance", "nearest_train", "feature_distance", "source_distance"]
REJECTED = ".rejected"
NEAR_COPY, MISCLASSIFIED = "near-copy", "misclassified"
OUTPUT_FILES = ["plan.json", "manifest.csv", "audit.csv", "preview.png", REJECTED]
RESUMABLE = ("target",)  # settings a rerun may change: image i of a class is the same image whatever the target
LEGACY_SETTINGS = {"source": "noise"}  # what a plan.json from before a setting existed was made with
PREVIEW_PER_CLASS = 8
MAX_REJECTED_PER_WANTED = 4  # give up on a class when filters reject this many images per image still wanted

ProgressCallback = Callable[[str, int, int], None]  # (class name, images done, images this process makes)


@dataclass
class SynthesisResult:
    out_dir: Path
    plan: list[ClassPlan]
    made: int = 0  # images this process saved in this call (0 on a complete rerun or a dry run)
    dropped: dict[str, int] = field(default_factory=dict)  # class -> images rejected by filters, over all runs
    audit: list[AuditSummary] = field(default_factory=list)
    manifest: Optional[Path] = None
    label_fidelity: Optional[dict] = None  # plan.json's label_fidelity (None without a classifier)


def image_seed(base_seed: int, class_name: str, index: int) -> int:
    """The seed of image `index` of `class_name`: a hash, so seeds of different classes and runs never overlap."""
    digest = hashlib.sha256(f"{base_seed}/{class_name}/{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63, a valid torch seed


def folder_names(classes: list[str]) -> list[str]:
    """Filesystem-safe, unique folder names for class names (kept as they are when already safe)."""
    names = []
    for label, name in enumerate(classes):
        safe = re.sub(r"[^\w.-]+", "_", name).lstrip(".") or f"class{label}"
        names.append(safe if safe not in names else f"{safe}_{label}")
    return names


def plan_for(model_dir: str | Path, policy: str) -> tuple[ModelInfo, list[ClassPlan]]:
    """The plan from a model folder's recorded training counts (what `--dry-run` shows)."""
    info = read_model_info(model_dir)
    return info, plan_targets(info.classes, info.train_counts, policy)


def synthesize(
    model_dir: str | Path,
    out_dir: str | Path,
    cfg: SynthesisConfig = SynthesisConfig(),
    *,
    split=None,
    classifier=None,
    label_classifier=None,
    overwrite: bool = False,
    keep_extra: bool = False,
    dry_run: bool = False,
    device=None,
    on_progress: Optional[ProgressCallback] = None,
) -> SynthesisResult:
    """Generate the images `cfg.target` asks for, resuming whatever an earlier call left in `out_dir`.

    `split` (a `split.Split`, the one the model was trained on) enables the memorization audit, near-copy
    dropping, real rows in the preview and `cfg.resize`. `classifier` (a path for
    `classifier.checkpoint.load_classifier`, or a loaded bundle) enables the confidence filter and a
    feature-space audit column. `label_classifier` (the same kinds) only reports label fidelity; `classifier`
    reports it too. `cfg.source` minority/majority needs `split`. `keep_extra` accepts a lowered target, keeping
    the images beyond it.
    """
    info, plan = plan_for(model_dir, cfg.target)
    out_dir = Path(out_dir)
    if split is not None:
        _check_split(split, info)
    known = split if split is not None else _recorded_split(model_dir, info)
    inputs = [model_dir, known.source.get("path") if known is not None else None]
    atomic.check_output(out_dir, inputs)
    if cfg.source != "noise":
        if split is None:
            raise CapaugError(f"--source {cfg.source} starts from training images: pass --run")
        Anchors(split, cfg.source).check([p.label for p in plan if p.generate])
    if dry_run:
        return SynthesisResult(out_dir, plan)
    if split is None and (cfg.near_copy_threshold is not None or cfg.resize):
        raise CapaugError("dropping near-copies and --resize need the training split: pass --run")
    state = process_state()
    if state.is_main_process:
        _adopt_unmarked(out_dir, info)
    state.wait_for_everyone()
    atomic.check_replaceable(out_dir, overwrite=overwrite, resume=not overwrite)  # every process refuses alike
    with run_lock(run_folder_of(out_dir), "synthesize"):
        return _synthesize(model_dir, out_dir, cfg, info, plan, inputs, split, classifier, label_classifier,
                           overwrite, keep_extra, device, on_progress)


def _synthesize(model_dir, out_dir, cfg, info, plan, inputs, split, classifier, label_classifier, overwrite,
                keep_extra, device, on_progress) -> SynthesisResult:
    """The writing part of `synthesize`, under the run lock."""
    state = process_state()
    bundle, classifier_id = _classifier(classifier, info.classes, state.device)
    judge = (bundle, classifier_id) if bundle is not None else _classifier(label_classifier, info.classes, state.device)
    data_size = _data_size(split) if cfg.resize else None
    settings = _settings(cfg, info, data_size, classifier_id)
    run = _Run(out_dir, info, cfg, split, bundle, data_size, state.process_index, state.num_processes, judge)
    extra = {} if overwrite else _check_resumable(out_dir, settings, run, plan, keep_extra)
    state.wait_for_everyone()
    if state.is_main_process:
        atomic.claim_output_dir(out_dir, "synthesize", inputs=inputs, overwrite=overwrite, resume=True,
                                entries=_entries(info))
        atomic.write_json(out_dir / "plan.json", _plan_json(settings, plan, "running"))
    state.wait_for_everyone()

    done_before = {p.name: run.indices(p) for p in plan}  # every process reads the same state before any writes
    state.wait_for_everyone()
    unet, scheduler, _ = load_diffusion_model(model_dir, device=device if device is not None else state.device)
    made = 0
    for p in plan:
        made += run.generate_share(p, done_before[p.name], unet, scheduler,
                                   on_progress if state.is_main_process else None)
    state.wait_for_everyone()
    result = SynthesisResult(out_dir, plan, made)
    if state.is_main_process:
        run.finish(plan, settings, result, extra)
    state.wait_for_everyone()
    return result


# --------------------------------------------------------------------------- one run's files


class _Run:
    """Paths, filters and the generate/finish steps of one synthesis run."""

    def __init__(self, out_dir, info, cfg, split, bundle, data_size, rank, world, judge=(None, None)):
        self.out_dir, self.info, self.cfg, self.split, self.bundle = out_dir, info, cfg, split, bundle
        self.data_size, self.rank, self.world = data_size, rank, world
        self.judge, self.judge_id = judge  # the classifier that reports label fidelity, and its id
        self.anchors = Anchors(split, cfg.source) if cfg.source != "noise" else None
        self.folders = dict(zip(info.classes, folder_names(info.classes)))
        self._train_cache: tuple[str, np.ndarray, list[str]] | None = None
        self._reader = None

    def path(self, class_name: str, index: int, reason: str | None = None) -> Path:
        folder = self.folders[class_name]
        base = self.out_dir if reason is None else self.out_dir / REJECTED / reason
        return base / folder / f"{folder}_{index:06d}.png"

    def indices(self, p: ClassPlan, reason: str | None = None) -> list[int]:
        """Seed indices present on disk: kept images (reason None) or images a filter rejected."""
        base = self.out_dir if reason is None else self.out_dir / REJECTED / reason
        pattern = re.compile(rf"{re.escape(self.folders[p.name])}_(\d{{6,}})\.png")
        found = (pattern.fullmatch(f.name) for f in (base / self.folders[p.name]).glob("*.png"))
        return sorted(int(m.group(1)) for m in found if m)

    def generate_share(self, p: ClassPlan, kept: list[int], unet, scheduler, on_progress) -> int:
        """Make this process's share of the images class `p` still needs; returns how many were saved."""
        wanted = p.generate - len(kept)
        share = max(0, wanted // self.world + (self.rank < wanted % self.world))
        if share == 0:
            return 0
        used = set(kept) | set(self.indices(p, NEAR_COPY)) | set(self.indices(p, MISCLASSIFIED))
        free = (i for i in range(self.rank, 1 << 62, self.world) if i not in used)
        done = rejected = 0
        if on_progress is not None:
            on_progress(p.name, 0, share)
        while done < share:
            batch = [next(free) for _ in range(min(self.cfg.batch_size, share - done))]
            images = self._sample(unet, scheduler, p, batch)
            reasons = self._rejections(p, images)
            for index, image, reason in zip(batch, images, reasons):
                _save_png(self.path(p.name, index, reason), image)
            done += reasons.count(None)
            rejected += len(batch) - reasons.count(None)
            if rejected > MAX_REJECTED_PER_WANTED * share:
                raise CapaugError(
                    f"class '{p.name}': filters rejected {rejected} of {done + rejected} synthetic images; "
                    "lower --drop-near-copies, raise --filter-confidence or train the model longer"
                )
            if on_progress is not None:
                on_progress(p.name, done, share)
        return done

    def _sample(self, unet, scheduler, p: ClassPlan, indices: list[int]) -> np.ndarray:
        from .sampling import generate

        cfg = self.cfg
        anchored = {}
        if self.anchors is not None:
            anchored = {"init_images": self.source_images(p, indices), "strength": [self.strength(i) for i in indices]}
        images = generate(
            unet, scheduler, [p.label] * len(indices), [image_seed(cfg.seed, p.name, i) for i in indices],
            sampler=cfg.sampler, steps=cfg.steps, guidance=cfg.guidance, null_class=self.info.null_class,
            batch_size=cfg.batch_size, **anchored,
        )
        if self.data_size is None:
            return images
        return np.stack([_resize(image, self.data_size) for image in images])

    def _rejections(self, p: ClassPlan, images: np.ndarray) -> list[str | None]:
        """Per image: None (keep), NEAR_COPY or MISCLASSIFIED."""
        reasons: list[str | None] = [None] * len(images)
        if self.bundle is not None:
            proba = np.asarray(self.bundle.predict_proba(images))
            predicted = [self.bundle.classes[k] for k in proba.argmax(axis=1)]
            for i, (name, confidence) in enumerate(zip(predicted, proba.max(axis=1))):
                if name != p.name and confidence > self.cfg.filter_confidence:
                    reasons[i] = MISCLASSIFIED
        if self.cfg.near_copy_threshold is not None:
            train, _ = self.train_images(p)
            distance, _ = pixel_distances(self.model_view(images), train)
            for i, d in enumerate(distance):
                if reasons[i] is None and d < self.cfg.near_copy_threshold:
                    reasons[i] = NEAR_COPY
        return reasons

    # ------------------------------------------------------------------ real-anchored sources

    def strength(self, index: int) -> float:
        """Image i's strength: the list mixed evenly by index."""
        return self.cfg.strength[index % len(self.cfg.strength)]

    def source_key(self, p: ClassPlan, index: int) -> str:
        return self.anchors.key(p.label, image_seed(self.cfg.seed, p.name, index))

    def source_images(self, p: ClassPlan, indices: list[int]) -> np.ndarray:
        """The source images of images `indices` of class `p`, as the diffusion model was trained on them."""
        if self._reader is None:  # one reader: an npz source loads its arrays once
            self._reader = self.split.reader()
        return np.concatenate([self.model_view(self._reader.read(self.source_key(p, i))[None]) for i in indices])

    # ------------------------------------------------------------------ audit views

    def model_view(self, images: np.ndarray) -> np.ndarray:
        """Images at the model's resolution and channels, the way training saw them (for pixel distances)."""
        size, channels = self.info.image_size, self.info.channels
        if images.shape[1:] == (size, size, channels):
            return images
        from .datasets import diffusion_transform

        transform = diffusion_transform(size, channels)
        views = [((transform(image) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy() for image in images]
        return np.stack(views)

    def train_images(self, p: ClassPlan) -> tuple[np.ndarray, list[str]]:
        """The class's training images at model resolution, and their keys (one class cached at a time)."""
        if self._train_cache is None or self._train_cache[0] != p.name:
            reader = self.split.reader()
            keys = [key for key, label in self.split.train if label == p.label]
            views = np.concatenate([self.model_view(reader.read(key)[None]) for key in keys])
            self._train_cache = (p.name, views, keys)
        return self._train_cache[1], self._train_cache[2]

    # ------------------------------------------------------------------ main process, after every share

    def finish(self, plan: list[ClassPlan], settings: dict, result: SynthesisResult, extra: dict[str, int]) -> None:
        kept = {p.name: self.indices(p) for p in plan}
        rejected = {p.name: {r: self.indices(p, r) for r in (NEAR_COPY, MISCLASSIFIED)} for p in plan}
        for p in plan:
            if len(kept[p.name]) != p.generate + extra.get(p.name, 0):
                raise RuntimeError(f"class {p.name}: {len(kept[p.name])} images on disk, the plan says {p.generate}")
        result.dropped = {name: sum(map(len, by_reason.values())) for name, by_reason in rejected.items()}
        result.manifest = self.out_dir / "manifest.csv"
        atomic.write_text(result.manifest, _csv(MANIFEST_COLUMNS, self._manifest_rows(plan, kept)))
        audit_rows, fidelity = [], {}
        for p in (p for p in plan if kept[p.name] and (self.split is not None or self.judge is not None)):
            # every image the model made for the class, kept or dropped: the honest rates
            made = [(i, None) for i in kept[p.name]] + [(i, r) for r, ids in rejected[p.name].items() for i in ids]
            saved = np.stack([_read_png(self.path(p.name, i, r)) for i, r in made])
            if self.split is not None:
                rows, summary = self._audit_class(p, made, self.model_view(saved))
                audit_rows += rows
                result.audit.append(summary)
            if self.judge is not None:
                fidelity[p.name] = self._label_fidelity(p, saved)
        if self.split is not None:
            atomic.write_text(self.out_dir / "audit.csv", _csv(AUDIT_COLUMNS, audit_rows))
        if self.judge is not None:
            result.label_fidelity = {"classifier": self.judge_id, "classes": fidelity}
        self._preview(plan, kept)
        atomic.write_json(
            self.out_dir / "plan.json",
            _plan_json(settings, plan, "complete", dropped=result.dropped, kept_beyond_target=extra or None,
                       audit=[s.to_dict() for s in result.audit] or None, label_fidelity=result.label_fidelity),
        )

    def _manifest_rows(self, plan, kept) -> list[dict]:
        cfg, info = self.cfg, self.info
        anchored = self.anchors is not None
        return [
            {"file": self.path(p.name, i).relative_to(self.out_dir).as_posix(), "class": p.name,
             "seed": image_seed(cfg.seed, p.name, i), "sampler": cfg.sampler, "steps": cfg.steps,
             "guidance": cfg.guidance, "model_hash": info.model_hash, "split_hash": info.split_hash,
             "source": cfg.source, "strength": self.strength(i) if anchored else "",
             "source_key": self.source_key(p, i) if anchored else ""}
            for p in plan for i in kept[p.name]
        ]

    def _audit_class(self, p: ClassPlan, made: list[tuple[int, str | None]], images: np.ndarray):
        """Audit the class's made images (model view): nearest training image, and the source image's distance."""
        threshold = self.cfg.near_copy_threshold if self.cfg.near_copy_threshold is not None else self.cfg.audit_threshold
        paths = [self.path(p.name, i, r) for i, r in made]
        train, keys = self.train_images(p)
        distance, nearest = pixel_distances(images, train)
        features = [""] * len(made)
        if self.bundle is not None:  # both sides at model resolution, like the pixel distances
            features = [f"{d:.6f}" for d in feature_distances(self.bundle.features(images), self.bundle.features(train))]
        source = None
        if self.anchors is not None:
            source = pair_distances(images, self.source_images(p, [i for i, _ in made]))
        rows = [
            {"file": path.relative_to(self.out_dir).as_posix(), "class": p.name, "status": reason or "kept",
             "distance": f"{d:.6f}", "nearest_train": keys[j], "feature_distance": f,
             "source_distance": f"{source[n]:.6f}" if source is not None else ""}
            for n, (path, (_, reason), d, j, f) in enumerate(zip(paths, made, distance, nearest, features))
        ]
        return rows, summarize(p.name, distance, threshold, source)

    def _label_fidelity(self, p: ClassPlan, images: np.ndarray) -> dict:
        """How many of the class's made images (as saved) the classifier assigns to the class."""
        predicted = np.asarray(self.judge.predict_proba(images)).argmax(axis=1)
        hits = int((predicted == self.judge.classes.index(p.name)).sum())
        return {"images": len(images), "as_class": hits, "rate": hits / len(images)}

    def _preview(self, plan, kept) -> None:
        """Two rows per class: real training images (when the split is known), then synthetic ones."""
        rows = []
        reader = self.split.reader() if self.split is not None else None
        for p in plan:
            if reader is not None:
                keys = [key for key, label in self.split.train if label == p.label][:PREVIEW_PER_CLASS]
                rows.append(np.concatenate([self.model_view(reader.read(key)[None]) for key in keys]))
            shown = [_read_png(self.path(p.name, i)) for i in kept[p.name][:PREVIEW_PER_CLASS]]
            size, channels = self.info.image_size, self.info.channels
            rows.append(self.model_view(np.stack(shown)) if shown else np.zeros((0, size, size, channels), np.uint8))
        save_grid(self.out_dir / "preview.png", rows)


# --------------------------------------------------------------------------- helpers


def _check_split(split, info: ModelInfo) -> None:
    if split.hash != info.split_hash:
        raise CapaugError(
            f"the model was trained on split {info.split_hash[:12]}, the run's split.json is {split.hash[:12]} (mismatched split)"
        )


def _classifier(classifier, classes: list[str], device):
    """(bundle or None, an id recorded in plan.json); a path is loaded with the classifier package."""
    if classifier is None:
        return None, None
    if isinstance(classifier, (str, Path)):
        path = Path(classifier)
        if not path.exists():
            raise CapaugError(f"classifier {path} does not exist")
        from capaug.classifier.checkpoint import load_classifier

        bundle = load_classifier(path, device=device)
        ident = file_hash(path) if path.is_file() else str(path.resolve())
    else:
        bundle, ident = classifier, type(classifier).__name__
    missing = sorted(set(classes) - set(bundle.classes))
    if missing:
        raise CapaugError(f"the filter classifier does not know the classes {', '.join(missing)}")
    return bundle, ident


def _data_size(split) -> list[int]:
    """(height, width) of the data, read from the first training image."""
    return list(split.reader().read(split.train[0][0]).shape[:2])


def _settings(cfg: SynthesisConfig, info: ModelInfo, data_size, classifier_id) -> dict:
    """Everything that decides which images a run makes: a resumed run must match it exactly."""
    return {
        "model_hash": info.model_hash, "split_hash": info.split_hash, "target": cfg.target,
        "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed,
        "resize": data_size, "near_copy_threshold": cfg.near_copy_threshold,
        "classifier": classifier_id, "filter_confidence": cfg.filter_confidence if classifier_id else None,
        "source": cfg.source, "strength": list(cfg.strength) if cfg.source != "noise" else None,
    }


def _plan_json(settings: dict, plan: list[ClassPlan], status: str, **extra) -> dict:
    return {"format": FORMAT, "status": status, "settings": settings, "classes": [p.to_dict() for p in plan],
            **{k: v for k, v in extra.items() if v is not None}}


def _recorded_split(model_dir, info: ModelInfo):
    """The split recorded next to a model in its run folder (`RUN/diffusion/model` -> `RUN/split.json`), if it
    is the one the model was trained on: how `--model M --out DIR` knows the data it must stay out of."""
    from .split import SPLIT_FILE, load_split

    run = Path(model_dir).resolve().parent.parent
    if not (run / SPLIT_FILE).is_file():
        return None
    try:
        split = load_split(run)
    except CapaugError:
        return None
    return split if split.hash == info.split_hash else None


def _entries(info: ModelInfo) -> list[str]:
    """The top-level names a synthesis run writes in its output folder (recorded in capaug's marker)."""
    return [*folder_names(info.classes), *OUTPUT_FILES]


def _adopt_unmarked(out_dir: Path, info: ModelInfo) -> None:
    """A synthesis folder from before output markers (it has our plan.json) gets its marker."""
    try:
        ours = json.loads((out_dir / "plan.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return
    if ours and atomic.read_marker(out_dir) is None:
        atomic.mark_output(out_dir, "synthesize", _entries(info))


def _check_resumable(out_dir: Path, settings: dict, run: _Run, plan: list[ClassPlan], keep_extra: bool) -> dict[str, int]:
    """Refuse a rerun that would make other images than the ones on disk, or fewer than are there unless
    `keep_extra`; returns class -> images kept beyond the target."""
    path = out_dir / "plan.json"
    if path.is_file():
        try:
            before = {**LEGACY_SETTINGS, **json.loads(path.read_text())["settings"]}
        except (ValueError, KeyError, TypeError):
            raise CapaugError(f"{path} is unreadable; pass --overwrite to start again") from None
        changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items()
                   if before.get(k) != v and k not in RESUMABLE]
        if changed:
            raise CapaugError(f"{out_dir} was made with other settings ({'; '.join(changed)}); pass --overwrite to start again")
    on_disk = {p.name: len(run.indices(p)) for p in plan}
    extra = {p.name: on_disk[p.name] - p.generate for p in plan if on_disk[p.name] > p.generate}
    if extra and not keep_extra:
        shown = ", ".join(f"{name}: {on_disk[name]} on disk, {on_disk[name] - n} wanted" for name, n in extra.items())
        raise CapaugError(f"{out_dir} holds more synthetic images than the lowered target asks for ({shown}); "
                          "pass --keep-extra to keep them all or --overwrite to start again")
    return extra


def _resize(image: np.ndarray, size: list[int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC))
    return out[..., None] if out.ndim == 2 else out


def _save_png(path: Path, image: np.ndarray) -> None:
    atomic.save_image(path, Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image))


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _csv(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
