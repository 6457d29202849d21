"""Run under `accelerate launch --cpu --num_processes 2`: train a few steps, write this rank's weight fingerprint."""

import hashlib
import json
import sys
from pathlib import Path

from capaug.augment.devices import process_state

from capaug.augment.pipeline import run_training
from capaug.recipes import load_recipe

TINY = {"train.image_size": 16, "train.unet.block_out_channels": [16, 32], "train.unet.norm_num_groups": 4,
        "train.batch_size": 16, "train.steps": 4, "train.warmup_steps": 0, "train.log_every": 1,
        "train.sample_every": 10_000, "train.checkpoint_every": 10_000}

if __name__ == "__main__":
    run = Path(sys.argv[1])
    state = process_state()
    result = run_training("builtin:digits-lt", run, load_recipe("quickstart", TINY))
    digest = hashlib.sha256()
    for name, tensor in sorted(result.unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    (run / f"rank-{state.process_index}.json").write_text(
        json.dumps({"world": state.num_processes, "step": result.step, "weights": digest.hexdigest()}))
