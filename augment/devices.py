"""Which processes and devices a run uses, under plain `python` or `accelerate launch`."""

from __future__ import annotations


def wants_cpu() -> bool:
    """Accelerate forms a CPU (gloo) process group only when asked for CPU; without CUDA every launched process
    would otherwise think it is alone."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def process_state():
    """This process's place among the launched processes (rank, world size, device)."""
    from accelerate import PartialState

    return PartialState(cpu=wants_cpu())
