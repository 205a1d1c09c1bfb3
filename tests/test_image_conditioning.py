"""Image conditioning on the one Generate path (groundwork for instruction editing, issue 16): source latents as
extra UNet input channels and separate text/image guidance inside the pipeline's own sampling loop."""
import contextlib

import pytest
import torch

import tiny_models  # noqa: F401


@pytest.fixture(scope="module")
def tiny():
    from facesmith.core.models import as_base_pipeline

    return as_base_pipeline(tiny_models.build_tiny_sd15(seed=0), name="tiny")


class _SourceConditioner:
    def __init__(self, source):
        self.source = source

    def rewrite_prompt(self, prompt):
        return prompt

    @contextlib.contextmanager
    def applied(self, pipe):
        from facesmith.core.image_conditioning import channel_conditioning

        dp = getattr(pipe, "pipe", pipe)
        with channel_conditioning(dp.unet, self.source, pipe=dp):
            yield


def _gen(bp, conds, cfg=3.0):
    from facesmith.core.generate import GenerateRequest, generate

    return generate(bp, GenerateRequest(prompt="a photo of a person, smiling", seed=1, steps=3, cfg=cfg,
                                        scheduler="euler"), conditioners=conds)


def test_untrained_channels_change_nothing_and_everything_is_restored(tiny):
    from facesmith.core.image_conditioning import SourceLatents

    unet = tiny.pipe.unet
    conv = unet.conv_in
    plain = _gen(tiny, [])
    src = SourceLatents(torch.randn(1, 4, 8, 8), image_guidance=2.0)
    same = _gen(tiny, [_SourceConditioner(src)])
    assert torch.allclose(plain, same, atol=1e-4)  # zero extra weights: three branches reduce to plain CFG
    assert unet.conv_in is conv and "forward" not in unet.__dict__
    assert not hasattr(unet, "_facesmith_channel_conditioning")
    # trained (non-zero) channels make the source matter, with and without guidance
    w = torch.randn(conv.out_channels, 4, *conv.kernel_size) * 0.5
    changed = _gen(tiny, [_SourceConditioner(SourceLatents(src.latents, 2.0, w))])
    assert (changed - plain).abs().max() > 1e-3
    no_cfg = _gen(tiny, [_SourceConditioner(SourceLatents(src.latents, 2.0, w))], cfg=1.0)
    assert torch.isfinite(no_cfg).all() and (no_cfg - _gen(tiny, [], cfg=1.0)).abs().max() > 1e-3


def test_dual_guidance_is_what_the_pipeline_formula_gives(tiny):
    from types import SimpleNamespace

    from facesmith.core.image_conditioning import SourceLatents, channel_conditioning, dual_guidance

    unet = tiny.pipe.unet
    torch.manual_seed(0)
    w = torch.randn(unet.conv_in.out_channels, 4, *unet.conv_in.kernel_size) * 0.3
    src = torch.randn(1, 4, 8, 8)
    x = torch.randn(2, 4, 8, 8)
    ehs = torch.randn(4, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])
    g, s_i = 4.0, 1.7
    fake_pipe = SimpleNamespace(do_classifier_free_guidance=True, guidance_scale=g)
    with torch.no_grad():
        with channel_conditioning(unet, SourceLatents(src, s_i, w), pipe=fake_pipe):
            out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=ehs).sample
        u, c = out.chunk(2)
        got = u + g * (c - u)
        conv = unet.conv_in
        # the reference: one plain Conv2d over 4 + 4 channels (what instruction-edit checkpoints store)
        wide = torch.nn.Conv2d(8, conv.out_channels, conv.kernel_size, padding=conv.padding)
        wide.weight.copy_(torch.cat([conv.weight, w], 1))
        wide.bias.copy_(conv.bias)
        unet.conv_in = wide
        try:
            z = torch.zeros(2, 4, 8, 8)
            s = src.expand(2, -1, -1, -1)
            e00 = unet(torch.cat([x, z], 1), t, encoder_hidden_states=ehs[:2]).sample
            ei0 = unet(torch.cat([x, s], 1), t, encoder_hidden_states=ehs[:2]).sample
            eit = unet(torch.cat([x, s], 1), t, encoder_hidden_states=ehs[2:]).sample
        finally:
            unet.conv_in = conv
    assert torch.allclose(got, dual_guidance(e00, ei0, eit, s_i, g), atol=1e-4)
    with pytest.raises(ValueError, match="conv_in"):
        with channel_conditioning(unet, SourceLatents(src, 1.0, torch.zeros(3, 4, 3, 3))):
            pass
