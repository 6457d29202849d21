"""Which sampler gives clean images from a briefly trained generator: the share of samples the run's reference
classifier does not recognise as their class, per sampler (issue: ODE samplers give noise images at short budgets).

For each sampler (default DPM-Solver++ 25, DDIM 50, DDPM 50 and 100 steps) the run's folded model draws
`--per-class` images of every class with the same seeds; the reference classifier (trained on the real training
split, `RUN/eval/reference_classifier.safetensors`, trained here when absent) predicts each one. A sample is
unrecognised when the predicted class is not its class. The real validation images give the classifier's own
floor: a sampler cannot be judged cleaner than the classifier can see.

    python bench/sampler_check.py --run runs/protocol-retina/cm --recipe retinamnist --per-class 50
Writes RUN/sampler_check.json and RUN/sampler_check.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from capaug.augment.io import write_json, write_text
from capaug.augment.model_io import load_diffusion_model
from capaug.augment.sampling import SAMPLERS, generate
from capaug.augment.split import load_split
from capaug.classifier.reference import reference_for_run
from capaug.recipes import load_recipe, parse_assignment

DEFAULT_SAMPLERS = "dpmsolver++:25,ddim:50,ddpm:50,ddpm:100"


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """'dpmsolver++:25,ddpm:50' -> [("dpmsolver++", 25), ("ddpm", 50)]."""
    out = []
    for item in text.split(","):
        name, _, steps = item.partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"sampler {item!r}: expected NAME:STEPS with NAME one of {', '.join(SAMPLERS)}")
        out.append((name, int(steps)))
    return out


def unrecognised(bundle, images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Overall and per-class share of images whose predicted class is not their label."""
    wrong = bundle.predict_proba(images).argmax(axis=1) != labels
    per_class = [float(wrong[labels == k].mean()) if (labels == k).any() else None for k in range(num_classes)]
    return {"overall": float(wrong.mean()), "per_class": per_class}


def check_samplers(run: str | Path, samplers: list[tuple[str, int]], per_class: int, downstream_cfg, seed: int = 0,
                   device: str = "cpu") -> dict:
    run = Path(run)
    split = load_split(run)
    unet, noise_scheduler, info = load_diffusion_model(run / "diffusion" / "model", device=device)
    bundle = reference_for_run(run, split, downstream_cfg, device=device)
    k = len(split.classes)
    reader = split.reader()
    val = [(key, label) for key, label in split.val]
    real = unrecognised(bundle, [reader.read(key) for key, _ in val], np.array([y for _, y in val]), k)
    labels = np.repeat(np.arange(k), per_class)
    seeds = [seed + i for i in range(len(labels))]  # the same noise for every sampler
    rows = {}
    for name, steps in samplers:
        start = time.time()
        images = generate(unet, noise_scheduler, labels.tolist(), seeds, sampler=name, steps=steps, null_class=k,
                          device=device)
        rows[f"{name} {steps}"] = unrecognised(bundle, images, labels, k) | {"seconds": time.time() - start}
    return {"run": str(run), "classes": split.classes, "per_class": per_class, "image_size": info.image_size,
            "real_val": real, "samplers": rows}


def table(result: dict) -> str:
    head = "| sampler | unrecognised | " + " | ".join(result["classes"]) + " | seconds |\n"
    head += "|---" * (len(result["classes"]) + 3) + "|\n"

    def line(name, r, seconds="-"):
        cells = " | ".join("-" if v is None else f"{v:.0%}" for v in r["per_class"])
        return f"| {name} | {r['overall']:.0%} | {cells} | {seconds} |"

    lines = [line("real val images", result["real_val"])]
    lines += [line(name, r, f"{r['seconds']:.0f}") for name, r in result["samplers"].items()]
    return (f"{result['run']}: {result['per_class']} samples per class, share the reference classifier does not "
            f"recognise as their class (real val images: the classifier's own floor)\n\n" + head + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained run folder (RUN/diffusion/model)")
    parser.add_argument("--recipe", default="quickstart", help="its downstream section trains the reference classifier")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="comma list of NAME:STEPS")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", help="recipe override KEY=VALUE (repeatable)")
    args = parser.parse_args()
    try:
        samplers = parse_samplers(args.samplers)
    except ValueError as e:
        parser.error(str(e))
    recipe = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set or []))
    result = check_samplers(args.run, samplers, args.per_class, recipe.downstream, args.seed, args.device)
    write_json(Path(args.run) / "sampler_check.json", result)
    write_text(Path(args.run) / "sampler_check.md", table(result))
    print(table(result))


if __name__ == "__main__":
    main()
