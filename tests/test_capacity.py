import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from capaug.augment.capacity import (
    CapacityLayer,
    SplitGate,
    add_capacity,
    capacity_gate,
    capacity_layers,
    capacity_outside_up,
    capacity_parameters,
    capacity_rank,
    fold_capacity,
    freeze_base,
)
from capaug.augment.config import TrainConfig, UNetConfig
from capaug.augment.errors import CapaugError
from capaug.augment.unet import build_unet

K = 3


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    cfg = TrainConfig(image_size=16, unet=UNetConfig(block_out_channels=[16, 32], norm_num_groups=8, dropout=0.1))
    return build_unet(cfg, K, channels=3)


def randomize_capacity(unet, scale=0.05):
    """Make B non-zero so the terms change the output (at init B = 0)."""
    with torch.no_grad():
        for p in capacity_parameters(unet):
            p.normal_(0, scale)


def inputs(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.arange(n) % (K + 1)


def test_build_unet_has_null_class_and_mirrored_blocks():
    unet = tiny_unet()
    assert unet.config.num_class_embeds == K + 1 and unet.config.sample_size == 16
    assert unet.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D")
    assert unet.config.up_block_types == ("AttnUpBlock2D", "UpBlock2D")


def test_rank_formula():
    assert capacity_rank(64, 32, 0.1) == 3
    assert capacity_rank(5, 100, 0.1) == 1
    assert capacity_rank(256, 128, 0.25) == 32


def test_terms_follow_the_weight_they_sit_next_to():
    unet = tiny_unet()
    names = add_capacity(unet, rho=0.25, targets=("up",))
    for name in names:
        layer = unet.get_submodule(name)
        base, term = layer.base, layer.terms["expert"]
        c_out, c_in = base.weight.shape[:2]
        assert term.A.weight.shape == (capacity_rank(c_in, c_out, 0.25), c_in, *base.kernel_size)
        assert (term.A.stride, term.A.padding, term.A.dilation) == (base.stride, base.padding, base.dilation)
        assert term.B.kernel_size == (1, 1) and term.B.out_channels == c_out
        assert term.A.bias is None and term.B.bias is None
        assert torch.all(term.B.weight == 0) and term.A.weight.abs().sum() > 0


def test_target_selection():
    up = tiny_unet()
    names = add_capacity(up, targets=("up",))
    assert names and all(n.startswith("up_blocks.") and n.endswith(("conv1", "conv2", "conv")) for n in names)
    assert any("upsamplers" in n for n in names) and not capacity_outside_up(up)

    down = tiny_unet()
    names = add_capacity(down, targets=("down",))
    assert all(n.startswith("down_blocks.") for n in names) and any("downsamplers" in n for n in names)
    assert capacity_outside_up(down)

    attention = tiny_unet()
    names = add_capacity(attention, targets=("attention",))
    assert names and all(isinstance(attention.get_submodule(n).base, nn.Linear) for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"to_q", "to_k", "to_v", "0"}

    pattern = tiny_unet()
    assert add_capacity(pattern, targets=("up_blocks.1.resnets.*.conv1",)) == [
        "up_blocks.1.resnets.0.conv1",
        "up_blocks.1.resnets.1.conv1",
    ]
    with pytest.raises(CapaugError):
        add_capacity(tiny_unet(), targets=("no_such_layer",))


def test_at_init_on_and_off_agree():
    unet = tiny_unet().eval()
    add_capacity(unet)
    x, t, y = inputs()
    with torch.no_grad(), capacity_gate(unet, 0.0):
        off = unet(x, t, y).sample
    with torch.no_grad():
        on = unet(x, t, y).sample
    assert torch.equal(on, off)


def test_every_gate_form_gives_the_same_rows():
    unet = tiny_unet().eval()
    add_capacity(unet, targets=("up", "attention"))
    randomize_capacity(unet)
    x, t, y = inputs()
    with torch.no_grad():
        with capacity_gate(unet, 1.0):
            on = unet(x, t, y).sample
        with capacity_gate(unet, 0.0):
            off = unet(x, t, y).sample
        with capacity_gate(unet, torch.tensor([1.0, 0.0, 1.0, 0.0])):
            mixed = unet(x, t, y).sample
        with capacity_gate(unet, SplitGate(2)):
            split = unet(x, t, y).sample
    assert (on - off).abs().max() > 1e-3
    torch.testing.assert_close(mixed[0::2], on[0::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1::2], off[1::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(split, torch.cat([on[:2], off[2:]]), atol=1e-5, rtol=0)


def test_fold_gives_a_plain_unet_that_round_trips(tmp_path):
    unet = tiny_unet().eval()
    add_capacity(unet, targets=("up", "attention"))
    randomize_capacity(unet)
    x, t, y = inputs()
    with torch.no_grad():
        expected = unet(x, t, y).sample
        fold_capacity(unet)
        assert not capacity_layers(unet)
        assert set(unet.state_dict()) == set(tiny_unet().state_dict())
        unet.save_pretrained(tmp_path)
        loaded = UNet2DModel.from_pretrained(tmp_path).eval()
        assert (loaded(x, t, y).sample - expected).abs().max() < 1e-4
        assert (unet(x, t, y).sample - expected).abs().max() < 1e-4


def test_lora_variant_general_always_on_expert_gated_and_folded():
    unet = tiny_unet().eval()
    add_capacity(unet, targets=("up",), sets=("general", "expert"))
    randomize_capacity(unet)
    x, t, y = inputs()
    with torch.no_grad():
        with capacity_gate(unet, 0.0):
            general_only = unet(x, t, y).sample
        both = unet(x, t, y).sample
        for p in capacity_parameters(unet, "general"):
            p.zero_()
        with capacity_gate(unet, 0.0):
            base_only = unet(x, t, y).sample
    assert (general_only - base_only).abs().max() > 1e-3  # the general set stays on when the gate is off
    assert (both - general_only).abs().max() > 1e-3

    freeze_base(unet, train_class_embedding=True)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".terms." in n or n.startswith("class_embedding") for n in trainable)
    assert "class_embedding.weight" in trainable
    assert len(capacity_parameters(unet)) == 2 * len(capacity_parameters(unet, "expert"))

    with torch.no_grad():
        expected = unet(x, t, y).sample
        fold_capacity(unet)
        assert isinstance(unet.up_blocks[0].resnets[0].conv1, nn.Conv2d)
        assert not isinstance(unet.up_blocks[0].resnets[0].conv1, CapacityLayer)
        assert (unet(x, t, y).sample - expected).abs().max() < 1e-4


def test_under_autocast_a_small_low_rank_term_is_not_rounded_into_a_bf16_weight():
    torch.manual_seed(0)
    layer = CapacityLayer(nn.Conv2d(16, 16, 3, padding=1), rank=2, sets=("expert",))
    with torch.no_grad():
        layer.terms["expert"].B.weight.normal_(0, 1e-4)  # B A far below bf16's resolution of W
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        exact = layer.terms["expert"](x)  # B A x in float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            on, off = layer(x), None
            layer.gate = 0.0
            off = layer(x)
            layer.gate = torch.tensor([1.0, 0.0])
            mixed = layer(x)
            layer.gate = SplitGate(1)
            split = layer(x)
    assert on.dtype == torch.float32  # the sum is kept in float32
    torch.testing.assert_close(on - off, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed, torch.cat([on[:1], off[1:]]))
    torch.testing.assert_close(split, torch.cat([on[:1], off[1:]]))


def test_native_28px_unet_runs_28_14_7_and_sizes_it_cannot_halve_are_refused():
    cfg = TrainConfig(image_size=28, unet=UNetConfig(block_out_channels=[8, 16, 16], attention_levels=[False, True, False],
                                                     norm_num_groups=4))
    unet = build_unet(cfg, K, channels=1).eval()
    add_capacity(unet)
    with torch.no_grad():
        out = unet(torch.randn(2, 1, 28, 28), torch.tensor([10, 500]), torch.tensor([0, K])).sample
    assert out.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="divisible by 8"):
        TrainConfig(image_size=28, unet=UNetConfig(block_out_channels=[8, 16, 16, 16], attention_levels=[False] * 4))


def test_unet_with_terms_runs_under_bf16_autocast_for_every_gate_form():
    unet = tiny_unet().eval()
    add_capacity(unet, targets=("up", "attention"))
    randomize_capacity(unet)
    x, t, y = inputs()
    with torch.no_grad():
        exact = unet(x, t, y).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = {}
            for name, gate in [("on", 1.0), ("off", 0.0), ("mixed", torch.tensor([1.0, 0.0, 1.0, 0.0])),
                               ("split", SplitGate(2))]:
                with capacity_gate(unet, gate):
                    outs[name] = unet(x, t, y).sample.float()
    assert (outs["on"] - exact).abs().max() < 0.1  # bf16 compute, same function
    torch.testing.assert_close(outs["mixed"][0::2], outs["on"][0::2], atol=1e-2, rtol=0)
    torch.testing.assert_close(outs["split"], torch.cat([outs["on"][:2], outs["off"][2:]]), atol=1e-2, rtol=0)
