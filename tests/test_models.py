"""Loading tiny SD1.5/SDXL pipelines (diffusers folder and single-file checkpoint), the one Generate path and the
Load/Generate nodes, all offline on random-weight models built by ``tiny_models``."""
from __future__ import annotations

import contextlib
import socket

import pytest
import torch

import tiny_models
from facesmith.core import generate as gen
from facesmith.core import models, paths
from facesmith.core.progress import Interrupted, Progress

FAST = dict(steps=3, cfg=3.0)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A user models dir: diffusers/tiny-sd15, checkpoints/tiny-sd15.safetensors (configs in configs/sd15/),
    checkpoints/tiny-sdxl.safetensors (configs beside it in checkpoints/tiny-sdxl/)."""
    root = tmp_path_factory.mktemp("models")
    sd15 = tiny_models.build_tiny_sd15(seed=0)
    sd15.save_pretrained(root / "diffusers" / "tiny-sd15", safe_serialization=True)
    tiny_models.save_tiny_checkpoint(sd15, root / "checkpoints" / "tiny-sd15.safetensors")
    tiny_models.copy_config_folder(root / "diffusers" / "tiny-sd15", root / "configs" / "sd15")
    sdxl = tiny_models.build_tiny_sdxl(seed=1)
    sdxl_folder = tmp_path_factory.mktemp("sdxl_diffusers")
    sdxl.save_pretrained(sdxl_folder, safe_serialization=True)
    tiny_models.save_tiny_checkpoint(sdxl, root / "checkpoints" / "tiny-sdxl.safetensors")
    tiny_models.copy_config_folder(sdxl_folder, root / "checkpoints" / "tiny-sdxl")
    return {"root": root, "sd15": sd15, "sdxl": sdxl}


@pytest.fixture
def use_models(models_dir, monkeypatch):
    """Standalone lookup in the tiny models dir only (the pack's built-in assets are left out)."""
    monkeypatch.setattr(paths, "_comfy_folder_paths", None)
    monkeypatch.setattr(paths, "_models_dir_override", None)
    monkeypatch.setattr(paths, "_builtin_roots", [])
    monkeypatch.setenv(paths.ENV_MODELS, str(models_dir["root"]))
    return models_dir


@pytest.fixture(scope="module")
def sd15(models_dir):
    return models.load_pipeline(models_dir["root"] / "diffusers" / "tiny-sd15", device="cpu")


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


# ---------------------------------------------------------------------------------------------------- loading


def test_lists_base_models_with_kind_prefixes(use_models):
    assert models.list_base_models() == [
        "diffusers/tiny-sd15", "checkpoints/tiny-sd15.safetensors", "checkpoints/tiny-sdxl.safetensors",
    ]
    with pytest.raises(ValueError, match="diffusers/<folder name>"):
        models.resolve_base_model("tiny-sd15")
    with pytest.raises(ValueError, match=r"\.\."):
        models.resolve_base_model("checkpoints/../../secret.safetensors")


def test_load_diffusers_folder(sd15, models_dir):
    assert sd15.arch == "sd15" and sd15.name == "tiny-sd15"
    assert sd15.device == torch.device("cpu") and sd15.dtype == torch.float32
    assert sd15.native_size == 16
    assert len(sd15.fingerprint) == 16 and int(sd15.fingerprint, 16) >= 0
    assert sd15.pipe.safety_checker is None
    assert sd15.pipe._progress_bar_config == {"disable": True}
    assert _same_state(models_dir["sd15"].unet, sd15.pipe.unet)


def test_single_file_sd15_equals_its_diffusers_folder(use_models, sd15):
    ckpt = models.load_pipeline("checkpoints/tiny-sd15.safetensors", device="cpu")
    assert ckpt.arch == "sd15" and ckpt.name == "tiny-sd15"
    assert ckpt.extra["config_folder"] == use_models["root"] / "configs" / "sd15"
    for part in ("unet", "vae", "text_encoder"):
        assert _same_state(getattr(use_models["sd15"], part), getattr(ckpt.pipe, part)), part
    assert ckpt.fingerprint == sd15.fingerprint
    request = gen.GenerateRequest(prompt="a face", seed=5, **FAST)
    assert torch.allclose(gen.generate(ckpt, request), gen.generate(sd15, request), atol=1e-5)


def test_single_file_sdxl_with_config_beside_it(use_models):
    ckpt = use_models["root"] / "checkpoints" / "tiny-sdxl.safetensors"
    xl = models.load_pipeline(ckpt, device="cpu")
    assert xl.arch == "sdxl" and xl.extra["config_folder"] == use_models["root"] / "checkpoints" / "tiny-sdxl"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_state(getattr(use_models["sdxl"], part), getattr(xl.pipe, part)), part
    out = gen.generate(xl, gen.GenerateRequest(prompt="a face", seed=1, width=24, height=16, **FAST))
    assert out.shape == (1, 16, 24, 3) and out.dtype == torch.float32
    with pytest.raises(models.ArchMismatch, match="SDXL"):
        models.load_pipeline(ckpt, arch="sd15", device="cpu")


def test_fingerprint_is_dtype_and_device_independent_but_model_specific(sd15, models_dir):
    fresh = tiny_models.build_tiny_sd15(seed=0)
    assert models.compute_fingerprint(fresh, "sd15") == sd15.fingerprint
    assert models.compute_fingerprint(fresh.to(torch.float16), "sd15") == sd15.fingerprint
    assert models.compute_fingerprint(tiny_models.build_tiny_sd15(seed=1), "sd15") != sd15.fingerprint
    with torch.no_grad():  # a LoRA-merged fine-tune changes attention weights only
        fresh.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight.add_(0.01)
    assert models.compute_fingerprint(fresh, "sd15") != sd15.fingerprint


def test_vae_fingerprint_keys_pool_caches_to_the_vae_only(sd15):
    """Training pools cache VAE encodings (``--pool-cache``): a base whose UNet changed keeps them, another VAE
    does not."""
    fresh = tiny_models.build_tiny_sd15(seed=0)
    before = models.vae_fingerprint(fresh)
    assert before == models.vae_fingerprint(sd15) and len(before) == 16
    with torch.no_grad():
        fresh.unet.conv_in.weight.add_(0.01)
    assert models.vae_fingerprint(fresh) == before
    with torch.no_grad():
        fresh.vae.encoder.conv_in.weight.add_(0.01)
    assert models.vae_fingerprint(fresh) != before


def test_fp16_variant_folder_and_lora_guard(tmp_path, sd15, models_dir):
    models_dir["sd15"].save_pretrained(tmp_path / "variant", safe_serialization=True, variant="fp16")
    assert (tmp_path / "variant" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert models.load_pipeline(tmp_path / "variant", device="cpu").fingerprint == sd15.fingerprint

    from peft import LoraConfig

    from checkpoint_convert import pipeline_to_original

    with_lora = tiny_models.build_tiny_sd15(seed=0)
    with_lora.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]))
    with pytest.raises(ValueError, match="LoRA adapters attached"):
        pipeline_to_original(with_lora)


def test_missing_config_error_says_which_files_go_where(tmp_path, monkeypatch, models_dir):
    lonely_root = tmp_path / "models"
    ckpt = lonely_root / "checkpoints" / "lonely.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes((models_dir["root"] / "checkpoints" / "tiny-sd15.safetensors").read_bytes())
    monkeypatch.setattr(paths, "_comfy_folder_paths", None)
    monkeypatch.setattr(paths, "_builtin_roots", [])
    monkeypatch.setenv(paths.ENV_MODELS, str(lonely_root))
    with pytest.raises(FileNotFoundError) as info:
        models.load_pipeline("checkpoints/lonely.safetensors", device="cpu")
    message = str(info.value)
    for part in ("lonely.safetensors", "SD1.5", "model_index.json", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json", "tokenizer/", "scheduler/scheduler_config.json",
                 str(lonely_root / "configs" / "lonely"), str(lonely_root / "configs" / "sd15"),
                 str(lonely_root / "checkpoints" / "lonely")):
        assert part in message, part

    # an incomplete config folder names what is missing
    broken = lonely_root / "configs" / "sd15"
    tiny_models.copy_config_folder(models_dir["root"] / "configs" / "sd15", broken)
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing unet/config.json"):
        models.load_pipeline(ckpt, device="cpu")
    # an explicit config folder for the wrong arch is refused
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):
        models.load_pipeline(ckpt, device="cpu", config=models_dir["root"] / "checkpoints" / "tiny-sdxl")


def test_unsupported_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="SD2"):
        models.detect_arch_from_keys(["cond_stage_model.model.token_embedding.weight", "model.diffusion_model.x"])
    with pytest.raises(ValueError, match="refiner"):
        models.detect_arch_from_keys(["conditioner.embedders.0.model.text_projection"])
    with pytest.raises(ValueError, match="no text encoder"):
        models.detect_arch_from_keys(["model.diffusion_model.out.2.weight"])
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="only from .safetensors"):
        models.load_pipeline(pickled, device="cpu")
    with pytest.raises(FileNotFoundError, match="neither"):
        models.load_pipeline(tmp_path / "nothing-here", device="cpu")


def test_no_network_during_load_and_generate(models_dir, monkeypatch):
    calls = []

    def refuse(name):
        def fn(*args, **kwargs):
            calls.append((name, args[:2]))
            raise OSError(f"network access attempted: {name}")
        return fn

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    root = models_dir["root"]
    for source in (root / "diffusers" / "tiny-sd15", root / "checkpoints" / "tiny-sd15.safetensors",
                   root / "checkpoints" / "tiny-sdxl.safetensors"):
        base = models.load_pipeline(source, device="cpu", config=root / "configs" / "sd15"
                                    if source.name == "tiny-sd15.safetensors" else None)
        assert gen.generate(base, gen.GenerateRequest(prompt="a face", steps=2)).shape[0] == 1
    assert calls == []


# --------------------------------------------------------------------------------------------------- generate


def test_generate_shape_range_and_determinism(sd15):
    request = gen.GenerateRequest(prompt="a smiling face", negative_prompt="blurry", seed=7, batch_size=2, **FAST)
    first = gen.generate(sd15, request)
    assert first.shape == (2, 16, 16, 3) and first.dtype == torch.float32 and first.device.type == "cpu"
    assert first.min() >= 0.0 and first.max() <= 1.0 and first.std() > 0
    assert torch.equal(gen.generate(sd15, request), first)
    other = gen.generate(sd15, gen.GenerateRequest(prompt="a smiling face", negative_prompt="blurry", seed=8,
                                                   batch_size=1, **FAST))
    assert not torch.allclose(other[0], first[0], atol=1e-3)
    assert torch.allclose(other[0], first[1], atol=1e-4)  # image i of a batch == seed + i alone
    wide = gen.generate(sd15, gen.GenerateRequest(prompt="a face", width=32, height=24, **FAST))
    assert wide.shape == (1, 24, 32, 3)


@pytest.mark.parametrize("name", [n for n in gen.SCHEDULER_NAMES])
def test_every_scheduler_runs_and_the_pipeline_keeps_its_own(sd15, name):
    own = sd15.pipe.scheduler
    out = gen.generate(sd15, gen.GenerateRequest(prompt="a face", scheduler=name, steps=2, seed=3))
    assert out.shape == (1, 16, 16, 3) and torch.isfinite(out).all()
    assert sd15.pipe.scheduler is own


def test_scheduler_configs_keep_the_model_settings():
    from diffusers import DDPMScheduler

    config = DDPMScheduler(prediction_type="v_prediction", clip_sample=True, beta_schedule="scaled_linear").config
    ddim = gen.make_scheduler("ddim", config)
    assert ddim.config.clip_sample is False and ddim.config.prediction_type == "v_prediction"
    dpm = gen.make_scheduler("dpmpp_2m", config)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.prediction_type == "v_prediction"
    assert gen.make_scheduler("euler_ancestral", config).config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("field,value,match", [
    ("width", 70, "must be a multiple of 8, got 70"),
    ("height", -8, "from 0 to"),
    ("steps", 0, "from 1 to"),
    ("seed", -1, "from 0 to"),
    ("batch_size", 1.5, "whole number"),
    ("cfg", "7", "number"),
    ("scheduler", "karras", "must be one of"),
    ("prompt", None, "must be text"),
])
def test_request_validation_names_the_field(field, value, match):
    request = gen.GenerateRequest(prompt="x")
    setattr(request, field, value)
    with pytest.raises(gen.InvalidRequest, match=match) as info:
        request.validate()
    assert info.value.field == field


class RecordingConditioner:
    """Rewrites the prompt and marks the UNet while applied; optionally passes extra pipeline arguments."""

    def __init__(self, suffix=", smiling", extra=None, log=None):
        self.suffix, self.extra, self.log = suffix, extra, log if log is not None else []

    def rewrite_prompt(self, prompt):
        return prompt + self.suffix

    @contextlib.contextmanager
    def applied(self, pipe):
        unet = pipe.pipe.unet
        before = getattr(unet, "facesmith_test_mark", 0)
        unet.facesmith_test_mark = before + 1
        self.log.append("enter")
        try:
            yield
        finally:
            if before:
                unet.facesmith_test_mark = before
            else:
                del unet.facesmith_test_mark
            self.log.append("exit")

    def extra_kwargs(self):
        assert getattr(self, "log")[-1] == "enter"  # read while applied
        return dict(self.extra or {})


def test_conditioners_rewrite_prompt_apply_and_restore(sd15):
    log = []
    cond = RecordingConditioner(extra={"guidance_rescale": 0.0}, log=log)
    assert isinstance(cond, gen.Conditioner)
    request = gen.GenerateRequest(prompt="a face", seed=2, **FAST)
    with_cond = gen.generate(sd15, request, [cond])
    plain = gen.generate(sd15, gen.GenerateRequest(prompt="a face, smiling", seed=2, **FAST))
    assert torch.allclose(with_cond, plain, atol=1e-6)
    assert log == ["enter", "exit"] and not hasattr(sd15.pipe.unet, "facesmith_test_mark")


def test_conditioner_conflicts_and_bad_objects_are_refused(sd15):
    request = gen.GenerateRequest(prompt="a face", steps=1)
    a, b = RecordingConditioner(extra={"guidance_rescale": 0.1}), RecordingConditioner(extra={"guidance_rescale": 0.2})
    with pytest.raises(ValueError, match="both set pipeline argument 'guidance_rescale'"):
        gen.generate(sd15, request, [a, b])
    assert a.log == ["enter", "exit"] and b.log == ["enter", "exit"]
    with pytest.raises(ValueError, match="may not set 'generator'"):
        gen.generate(sd15, request, [RecordingConditioner(extra={"generator": None})])
    with pytest.raises(TypeError, match="does not implement"):
        gen.generate(sd15, request, ["not a conditioner"])


class SharingConditioner(RecordingConditioner):
    """Conditioners of this kind coordinate through ``prepare_conditioners``: each but the first drops its suffix."""

    calls = []

    @staticmethod
    def prepare_conditioners(conditioners):
        SharingConditioner.calls.append(list(conditioners))
        out, first = [], True
        for c in conditioners:
            if isinstance(c, SharingConditioner):
                out.append(c if first else RecordingConditioner(suffix="", log=c.log))
                first = False
            else:
                out.append(c)
        return out


def test_prepare_conditioners_hook_runs_once_and_leaves_the_originals(sd15):
    a, b, plain = SharingConditioner(", smiling"), SharingConditioner(", smiling"), RecordingConditioner(", old")
    SharingConditioner.calls.clear()
    request = gen.GenerateRequest(prompt="a face", seed=2, **FAST)
    out = gen.generate(sd15, request, [a, plain, b])
    assert SharingConditioner.calls == [[a, plain, b]]  # one call per distinct hook, with the caller's list
    assert a.suffix == b.suffix == ", smiling" and b.log == ["enter", "exit"] and plain.log == ["enter", "exit"]
    expected = gen.generate(sd15, gen.GenerateRequest(prompt="a face, smiling, old", seed=2, **FAST))
    assert torch.allclose(out, expected, atol=1e-6)

    class Bad(RecordingConditioner):
        @staticmethod
        def prepare_conditioners(conditioners):
            return None

    with pytest.raises(TypeError, match="Bad.prepare_conditioners returned NoneType, not a list"):
        gen.generate(sd15, request, [Bad()])


def test_progress_and_interrupt_restore_everything(sd15):
    seen = []
    gen.generate(sd15, gen.GenerateRequest(prompt="a face", steps=4, scheduler="euler"),
                 progress=Progress(on_update=lambda done, total: seen.append((done, total))))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    own, cond = sd15.pipe.scheduler, RecordingConditioner()
    stop_after_two = Progress(should_stop=lambda: stop_after_two._done >= 2, label="gen")
    with pytest.raises(Interrupted, match="gen interrupted at step 2"):
        gen.generate(sd15, gen.GenerateRequest(prompt="a face", steps=6, scheduler="dpmpp_2m"), [cond],
                     progress=stop_after_two)
    assert cond.log == ["enter", "exit"] and sd15.pipe.scheduler is own
    assert not hasattr(sd15.pipe.unet, "facesmith_test_mark")


# ------------------------------------------------------------------------------------------------------ nodes


@pytest.fixture(scope="module")
def node_modules():
    from facesmith.nodes import generate as generate_nodes
    from facesmith.nodes import loaders

    return loaders, generate_nodes


def test_nodes_honour_the_contract(node_modules, use_models):
    for module in node_modules:
        assert module.NODE_CLASS_MAPPINGS
        assert module.NODE_DISPLAY_NAME_MAPPINGS.keys() == module.NODE_CLASS_MAPPINGS.keys()
        for key, cls in module.NODE_CLASS_MAPPINGS.items():
            assert key.startswith("FaceSmith") and "(FaceSmith)" in module.NODE_DISPLAY_NAME_MAPPINGS[key]
            assert cls.CATEGORY.startswith("FaceSmith/") and len(cls.DESCRIPTION) > 40
            assert callable(getattr(cls, cls.FUNCTION)) and len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
            spec = cls.INPUT_TYPES()
            inputs = {**spec["required"], **spec.get("optional", {})}
            for name, entry in inputs.items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{key}.{name} has no tooltip"
    loader_inputs = node_modules[0].FaceSmithLoadBaseModel.INPUT_TYPES()["required"]
    # the built-in default stays selectable (shipped workflows stay valid) and says how to build it when missing
    assert loader_inputs["model"][0] == models.list_base_models() + ["diffusers/synthface-base"]
    assert loader_inputs["model"][1]["default"] == "diffusers/synthface-base"
    with pytest.raises(ValueError, match=r"input 'model' .*synthface-base.*facesmith assets --build"):
        node_modules[0].FaceSmithLoadBaseModel().load("diffusers/synthface-base")
    seed = node_modules[1].FaceSmithGenerate.INPUT_TYPES()["required"]["seed"][1]
    assert seed["control_after_generate"] is True and seed["max"] == 2**64 - 1


def test_nodes_load_and_generate_with_clear_errors(node_modules, use_models):
    loaders, generate_nodes = node_modules
    (base,) = loaders.FaceSmithLoadBaseModel().load("diffusers/tiny-sd15", "auto", "cpu", "auto")
    assert isinstance(base, models.BasePipeline) and base.arch == "sd15"
    node = generate_nodes.FaceSmithGenerate()
    args = dict(pipeline=base, prompt="a face", negative_prompt="", seed=4, steps=2, cfg=2.0, width=0, height=0,
                batch_size=2, scheduler="dpmpp_2m")
    (images,) = node.run(**args, concepts=[RecordingConditioner()])
    assert images.shape == (2, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 1.0

    with pytest.raises(ValueError, match=r"^Generate \(FaceSmith\): input 'width' must be a multiple of 8, got 70$"):
        node.run(**{**args, "width": 70})
    with pytest.raises(ValueError, match=r"^Generate \(FaceSmith\): input 'concepts' got a str"):
        node.run(**args, concepts=["oops"])
    with pytest.raises(ValueError, match=r"^Generate \(FaceSmith\): input 'pipeline'"):
        node.run(**{**args, "pipeline": "not a pipeline"})
    with pytest.raises(ValueError, match=r"^Load Base Model \(FaceSmith\): input 'model' .*not found"):
        loaders.FaceSmithLoadBaseModel().load("checkpoints/missing.safetensors")
    with pytest.raises(ValueError, match=r"^Load Base Model \(FaceSmith\): input 'arch' .*SD1.5"):
        loaders.FaceSmithLoadBaseModel().load("checkpoints/tiny-sd15.safetensors", "sdxl", "cpu", "auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^Load Base Model \(FaceSmith\): input 'device' .*CUDA"):
            loaders.FaceSmithLoadBaseModel().load("diffusers/tiny-sd15", "auto", "cuda", "auto")


def test_whole_pack_exports_these_nodes():
    import facesmith.nodes as pack_nodes

    for key in ("FaceSmithLoadBaseModel", "FaceSmithGenerate"):
        assert key in pack_nodes.NODE_CLASS_MAPPINGS and key in pack_nodes.NODE_DISPLAY_NAME_MAPPINGS


# ------------------------------------------------------------------------------------- full-size key layouts


def _meta_state(cls, **config):
    with torch.device("meta"):
        model = cls(**config) if config else cls
    return model.state_dict(), model.config


FULL_UNETS = {
    "sd15": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                 attention_head_dim=8),
    "sdxl": dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
KNOWN_ORIGINAL_KEYS = {  # keys real checkpoints have (diffusers detects model types by some of them)
    "sd15": ["model.diffusion_model.output_blocks.11.0.skip_connection.weight",
             "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
             "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.output_blocks.2.1.conv.weight",
             "model.diffusion_model.output_blocks.5.2.conv.weight",
             "model.diffusion_model.middle_block.2.emb_layers.1.bias",
             "model.diffusion_model.out.2.weight", "model.diffusion_model.time_embed.2.weight"],
    "sdxl": ["model.diffusion_model.label_emb.0.2.weight", "model.diffusion_model.output_blocks.2.2.conv.weight",
             "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight",
             "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.bias"],
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_unet_layout_roundtrips_through_diffusers(arch):
    """The converter on full-size SD1.5/SDXL UNets (meta tensors, no memory): real key names, and diffusers' own
    single-file conversion maps every tensor back to where it came from."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from checkpoint_convert import unet_to_original

    state, config = _meta_state(UNet2DConditionModel, **FULL_UNETS[arch])
    original = unet_to_original(state, config)
    assert len(original) == len(state)
    for key in KNOWN_ORIGINAL_KEYS[arch]:
        assert key in original, key
    back = convert_ldm_unet_checkpoint(original, dict(config))
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


def test_full_size_vae_and_text_encoder_layouts():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import checkpoint_convert as cc

    state, config = _meta_state(AutoencoderKL, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    original = cc.vae_to_original(state, config)
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in original
    back = convert_ldm_vae_checkpoint(original, dict(config))
    assert back.keys() == state.keys() and all(back[k].shape == state[k].shape for k in state)

    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    with torch.device("meta"):
        te1 = CLIPTextModel(clip_l).state_dict()
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            projection_dim=1280)).state_dict()
    assert CHECKPOINT_KEY_NAMES["clip"] in cc.clip_to_original(te1, cc.SD15_CLIP_PREFIX)
    assert CHECKPOINT_KEY_NAMES["clip_sdxl"] in cc.clip_to_original(te1, cc.SDXL_CLIP_PREFIX)
    open_clip = cc.open_clip_to_original(te2, cc.SDXL_OPENCLIP_PREFIX)
    assert CHECKPOINT_KEY_NAMES["xl_base"] in open_clip and CHECKPOINT_KEY_NAMES["open_clip_sdxl"] in open_clip
    assert open_clip["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
