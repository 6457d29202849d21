"""bench/protocol.py end to end on digits with a tiny budget: two methods, one table."""

import json
import subprocess
import sys
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[1] / "bench" / "protocol.py"
TINY = ["train.image_size=16", "train.unet.block_out_channels=[16, 32]", "train.unet.norm_num_groups=4",
        "train.batch_size=16", "train.warmup_steps=0", "train.log_every=1", "train.sample_every=1000",
        "train.checkpoint_every=1000", "synthesize.steps=2", "downstream.epochs=1", "downstream.seeds=1",
        "downstream.model=resnet10t", "downstream.image_size=16"]


def test_protocol_runs_end_to_end_on_digits(tmp_path):
    out = tmp_path / "protocol"
    cmd = [sys.executable, str(PROTOCOL), "--data", "builtin:digits-lt", "--recipe", "quickstart", "--steps", "3",
           "--methods", "plain,cm", "--eval-per-class", "6", "--out", str(out)]
    for assignment in TINY:
        cmd += ["--set", assignment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "protocol.json").read_text())
    assert set(result["methods"]) == {"plain", "cm"}
    assert set(result["downstream"]) == {"real", "reweight", "oversample", "plain", "cm"}
    for method in ("plain", "cm"):
        row = result["methods"][method]
        assert row["fid"]["overall"] is not None and row["fid"]["many"] is not None  # every class was sampled
        assert row["train_images_per_s"] > 0
    table = (out / "protocol.md").read_text()
    assert "| cm |" in table and "| real |" in table and "verdict:" in table
