"""The second backend: any local transformers vision-language model folder (Florence-2, Qwen-VL, SmolVLM, LLaVA
families...), loaded strictly offline, with optional LoRA adapters trained by ``facesmith train face-vqa --backend
vlm``.

Before loading: the folder must hold ``config.json``, safetensors weights (``*.safetensors``; pickled ``.bin``
weights are refused) and processor/tokenizer files; what is missing is named. The weights' size is checked
against the device's memory limit (``core/memory.py``) before anything is read. Nothing here touches the network
(``local_files_only=True``, and ``HF_HUB_OFFLINE=1`` while loading).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .infer import LOW_CONFIDENCE, Answer, fit_images
from .questions import answer_value, question_type

KIND = "facesmith-understand-vlm-lora"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class VLMFolderError(FileNotFoundError):
    pass


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def check_vlm_folder(folder: str | os.PathLike) -> Path:
    """Raise :class:`VLMFolderError` naming every missing file; refuse pickled-only weights."""
    root = Path(folder)
    if not root.is_dir():
        raise VLMFolderError(f"vision-language model folder {root} does not exist")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    if not weight_files(root):
        pickled = sorted(p.name for p in root.glob("*.bin"))
        if pickled:
            raise VLMFolderError(f"{root}: only pickled weights ({', '.join(pickled)}); FaceSmith loads safetensors "
                                 "only (pickles can run code when loaded): convert them to model.safetensors")
        missing.append("model.safetensors (or sharded *.safetensors + model.safetensors.index.json)")
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [s for s in shards if not (root / s).is_file()]
    if not any((root / f).is_file() for f in PROCESSOR_FILES):
        missing.append(" or ".join(PROCESSOR_FILES))
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise VLMFolderError(f"{root} is not a complete transformers vision-language model folder; missing: "
                             + "; ".join(missing))
    return root


def check_vlm_size(folder: Path, device="cpu", dtype: torch.dtype = torch.float32) -> int:
    """Bytes the weights take on ``device`` (stored size scaled to ``dtype``); raises MemoryLimitExceeded before
    loading when above the limit."""
    from ..memory import MemoryLimitExceeded, format_size, memory_limit, RAISE_HINT

    stored = sum(p.stat().st_size for p in weight_files(folder))
    stored_dtype = json.loads((folder / "config.json").read_text()).get("torch_dtype") or \
        json.loads((folder / "config.json").read_text()).get("dtype") or "float32"
    stored_es = 2 if str(stored_dtype) in ("float16", "bfloat16") else 4
    need = int(stored * torch.tensor([], dtype=dtype).element_size() / stored_es * 1.2)  # + activations margin
    limit, source = memory_limit(torch.device(device))
    if limit is not None and need > limit:
        raise MemoryLimitExceeded(f"{folder.name}: the model needs about {format_size(need)} in {dtype} "
                                  f"({format_size(stored)} of weights on disk), above the memory limit of "
                                  f"{format_size(limit)} ({source}); choose a smaller model or dtype, or "
                                  f"{RAISE_HINT}", need, limit)
    return need


@contextlib.contextmanager
def _offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_vlm(folder, device="cpu", dtype: torch.dtype = torch.float32):
    """(model, processor) from a local folder, offline, after the file and size checks."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = check_vlm_folder(folder)
    check_vlm_size(root, device, dtype)
    with _offline():
        processor = AutoProcessor.from_pretrained(str(root), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(root), local_files_only=True, dtype=dtype,
                                                            use_safetensors=True)
    return model.to(device).eval(), processor


def prompt_text(processor, question: str) -> str:
    """The model's own chat template when it has one, else ``<image> QUESTION Answer:``."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    token = getattr(processor, "image_token", "<image>")
    return f"{token} {question} Answer:"


def _strip_trailing_specials(ids: list[int], tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids) - {getattr(tokenizer, "image_token_id", None)}
    while ids and ids[-1] in special:
        ids = ids[:-1]
    return ids


def encode_prompts(processor, images: np.ndarray, questions: list[str], answers: list[str] | None = None):
    """Processor inputs for (image, question[, answer]) rows, right-padded; with answers also ``labels`` (-100
    everywhere but the answer tokens and the end token). Prompts end where the answer starts (a tokenizer's
    trailing end token after the prompt is dropped)."""
    from PIL import Image

    tok = processor.tokenizer
    pil = [Image.fromarray(im) for im in images]
    prompts = [prompt_text(processor, q) for q in questions]
    enc = processor(images=pil, text=prompts, return_tensors="pt", padding=True)
    rows = []
    for i in range(len(prompts)):
        ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        rows.append(_strip_trailing_specials(ids, tok))
    labels = None
    if answers is not None:
        eos = tok.eos_token_id
        full, labels_rows = [], []
        for ids, a in zip(rows, answers):
            a_ids = tok(" " + a, add_special_tokens=False)["input_ids"] + [eos]
            full.append(ids + a_ids)
            labels_rows.append([-100] * len(ids) + a_ids)
        rows = full
    t = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    left = answers is None  # generation: pad on the left so every row continues at the end
    input_ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    if answers is not None:
        labels = torch.full((len(rows), t), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(t - len(r), t) if left else slice(0, len(r))
        input_ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
        if labels is not None:
            labels[i, sl] = torch.tensor(labels_rows[i])
    out = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    out.update(input_ids=input_ids, attention_mask=mask)
    if labels is not None:
        out["labels"] = labels
    return out


class VLMUnderstander:
    """A local VLM (+ optional LoRA) behind the same interface as the unified model."""

    backend = "vlm"

    def __init__(self, model, processor, info: dict | None = None, threshold: float = LOW_CONFIDENCE,
                 image_size: int | None = None):
        self.model, self.processor, self.info, self.threshold = model.eval(), processor, info or {}, threshold
        self.image_size = image_size

    def _fit(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        return fit_images(images, self.image_size) if self.image_size else images

    @torch.no_grad()
    def answer(self, images, questions, max_new_tokens: int = 8, seed: int = 0) -> list[Answer]:
        images = self._fit(images)
        qs = [questions] * len(images) if isinstance(questions, str) else list(questions)
        if len(qs) != len(images):
            raise ValueError(f"{len(qs)} questions for {len(images)} images: give one question, or one per image")
        torch.manual_seed(int(seed))
        enc = encode_prompts(self.processor, images, qs)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        eos = self.processor.tokenizer.eos_token_id
        answers = []
        for i in range(len(images)):
            logp, ids = 0.0, []
            for step, scores in enumerate(out.scores):
                tok_id = int(new[i, step])
                logp += float(scores[i].float().log_softmax(-1)[tok_id])
                if tok_id == eos:
                    break
                ids.append(tok_id)
            # CLIP-style BPE vocabularies mark word ends with </w>; some tokenizer builds leave it in decode()
            text = " ".join(self.processor.tokenizer.decode(ids, skip_special_tokens=True).replace("</w>", " ")
                            .split())
            p = float(np.exp(logp))
            qtype = question_type(qs[i])
            reasons = []
            if qtype is None:
                reasons.append("question outside the face VQA question set it was tuned on")
            elif answer_value(qtype, text) is None:
                reasons.append(f"{text!r} is not one of this question's answers")
            if p < self.threshold:
                reasons.append(f"probability {p:.2f} < {self.threshold}")
            answers.append(Answer(text, p, bool(reasons), "; ".join(reasons), qtype))
        return answers

    def describe(self, images, max_new_tokens: int = 60) -> list[Answer]:
        out = self.answer(images, "Describe the face in detail.", max_new_tokens)
        for a in out:  # not a question the LoRA learned: always a guess unless the base model is a captioner
            a.low_confidence = a.low_confidence or a.confidence < self.threshold
        return out


# ----------------------------------------------------------------------------------------------------- LoRA files


def add_lora(model, rank: int = 8, alpha: float | None = None, targets=DEFAULT_TARGETS):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets), lora_dropout=0.0)
    return get_peft_model(model, cfg)


def save_lora(path, peft_model, folder, info: dict | None = None, overwrite: bool = False,
              extra: dict | None = None) -> Path:
    """The LoRA weights (peft names) plus ``extra`` full weights (e.g. a trained projector, under ``full.NAME``)."""
    from peft import get_peft_model_state_dict

    from ..formats import save_safetensors

    cfg = peft_model.peft_config["default"]
    meta = {"facesmith_kind": KIND, "base_folder": Path(folder).name, "rank": cfg.r, "alpha": cfg.lora_alpha,
            "targets": sorted(cfg.target_modules), "base_config_sha": config_fingerprint(folder), **(info or {})}
    tensors = dict(get_peft_model_state_dict(peft_model))
    tensors.update({f"full.{k}": v for k, v in (extra or {}).items()})
    return save_safetensors(path, tensors, meta, overwrite=overwrite)


def config_fingerprint(folder) -> str:
    import hashlib

    return hashlib.sha256((Path(folder) / "config.json").read_bytes()).hexdigest()[:16]


def load_lora(model, path, folder):
    from peft import set_peft_model_state_dict

    from ..formats import load_safetensors

    tensors, meta = load_safetensors(path)
    if meta.get("facesmith_kind") != KIND:
        raise ValueError(f"{path} is not a FaceSmith VLM LoRA (facesmith_kind={meta.get('facesmith_kind')!r})")
    if meta.get("base_config_sha") != config_fingerprint(folder):
        raise ValueError(f"{path} was trained on {meta.get('base_folder')!r}, not on {Path(folder).name!r} (the "
                         "model configs differ)")
    peft_model = add_lora(model, int(meta["rank"]), float(meta["alpha"]), json.loads(meta["targets"]))
    full = {k[len("full."):]: v for k, v in tensors.items() if k.startswith("full.")}
    set_peft_model_state_dict(peft_model, {k: v for k, v in tensors.items() if not k.startswith("full.")})
    if full:
        params = dict(peft_model.named_parameters())
        unknown = [k for k in full if k not in params]
        if unknown:
            raise ValueError(f"{path}: weights for parameters this model does not have: {unknown[:3]}")
        with torch.no_grad():
            for k, v in full.items():
                params[k].copy_(v)
    return peft_model.eval()


def load_vlm_understander(folder, lora: str | os.PathLike | None = None, device="cpu",
                          dtype: torch.dtype = torch.float32, image_size: int | None = None) -> VLMUnderstander:
    model, processor = load_vlm(folder, device, dtype)
    info = {"folder": str(folder)}
    if lora:
        model = load_lora(model, lora, folder)
        info["lora"] = str(lora)
    return VLMUnderstander(model, processor, info, image_size=image_size)
