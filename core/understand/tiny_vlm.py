"""A tiny random vision-language model of a real architecture (LLaVA: CLIP vision tower + Llama language model),
built from transformers config classes: the stand-in for a user's VLM folder in the tests and in ``facesmith bench
understand`` (row ``vlm_lora``). No weights are downloaded. Its tokenizer is either the CLIP BPE vocabulary FaceSmith
ships (49,408 tokens, ``tokenizer="clip"``) or a word-level tokenizer built here over the face VQA words
(``tokenizer="words"``, ~150 tokens: a random model learns a small output layer far faster on a CPU)."""
from __future__ import annotations

from pathlib import Path

from ..paths import PACK_ROOT

CLIP_TOKENIZER = PACK_ROOT / "assets" / "clip_tokenizer"


def word_tokenizer():
    """A word-level fast tokenizer over the face VQA words (questions, answers, captions) + <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .questions import WordTokenizer

    words = WordTokenizer.build().words
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if not w.startswith("<")] + ["answer", ":"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def build_tiny_llava(folder, seed: int = 0, hidden: int = 64, layers: int = 2, image_size: int = 64,
                     tokenizer: str = "words") -> Path:
    """Write a tiny random LLaVA (config, safetensors weights, processor, tokenizer) to ``folder``."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    if tokenizer == "clip":
        tok = CLIPTokenizer(str(CLIP_TOKENIZER / "vocab.json"), str(CLIP_TOKENIZER / "merges.txt"))
        tok.add_tokens(["<image>"], special_tokens=True)
    elif tokenizer == "words":
        tok = word_tokenizer()
    else:
        raise ValueError(f"tokenizer must be 'words' or 'clip', got {tokenizer!r}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=image_size, patch_size=16, projection_dim=hidden)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       # a frozen random output layer at the usual 0.02 scale caps logits near +-1 (RMS-normed input
                       # of width 64): wider weights let a LoRA reach confident answers, as a trained head would
                       initializer_range=0.15)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    return folder
