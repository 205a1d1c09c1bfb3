"""Placeholder tokens: checks, a per-tokenizer cache of tokenizer copies with the tokens added, and the text-encoder
embedding wrapper that looks the new token ids up in a given tensor (so nothing in the pipeline is resized).

A concept with ``n`` vectors uses the tokens ``<tok>``, ``<tok>#1`` ... ``<tok>#(n-1)``; prompts name only ``<tok>``
and :func:`expand_prompt` writes the rest. (The ``#`` form is deliberately not diffusers' ``<tok>_1`` convention, so
diffusers' own textual-inversion prompt expansion never expands a prompt a second time.)
"""
from __future__ import annotations

import copy
import re
import threading
import weakref

import torch

CLASS_WORD = "person"
DEFAULT_TOKEN = "<fs-person>"


def vector_tokens(token: str, n_vectors: int) -> list[str]:
    return [token] + [f"{token}#{i}" for i in range(1, int(n_vectors))]


def check_token_text(token: str) -> str:
    """The token's spelling: non-empty, no whitespace, no '#', lowercase (CLIP lowercases prompts)."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError("the concept token is empty; use a made-up word such as '<fs-person>'")
    if any(ch.isspace() for ch in token):
        raise ValueError(f"the concept token {token!r} contains whitespace; use one made-up word such as '<fs-person>'")
    if "#" in token:
        raise ValueError(f"the concept token {token!r} may not contain '#' (FaceSmith names extra vectors '<tok>#1')")
    if token != token.lower():
        raise ValueError(f"the concept token {token!r} must be lowercase (the CLIP tokenizer lowercases prompts, so "
                         f"'{token}' and '{token.lower()}' would be the same token); use {token.lower()!r}")
    return token


def _in_vocab(tokenizer, piece: str) -> bool:
    unk = tokenizer.unk_token_id
    i = tokenizer.convert_tokens_to_ids(piece)
    return i is not None and (i != unk or piece == tokenizer.unk_token)


_real_word_cache: dict = {}


def real_word(tokenizer, token: str) -> str | None:
    """The vocabulary entry ``token`` already is (``'person</w>'``), or None if it is a made-up word."""
    key = (id(tokenizer), len(tokenizer), token)
    if key in _real_word_cache:
        return _real_word_cache[key]
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    word = None
    if token not in added and _in_vocab(tokenizer, token):
        word = token
    else:
        pieces = tokenizer.tokenize(token)
        if len(pieces) == 1 and pieces[0] not in added and _in_vocab(tokenizer, pieces[0]):
            word = pieces[0]
    if len(_real_word_cache) > 1000:
        _real_word_cache.clear()
    _real_word_cache[key] = word
    return word


def check_token_free(tokenizer, token: str, n_vectors: int = 1) -> None:
    """Raise ``ValueError`` if ``token`` (or one of its vector tokens) is a real word or already added."""
    check_token_text(token)
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    for t in vector_tokens(token, n_vectors):
        if t in added:
            raise ValueError(
                f"the concept token {t!r} is already used by another concept applied to this pipeline; give each "
                "concept its own token"
            )
    word = real_word(tokenizer, token)
    if word is not None:
        raise ValueError(
            f"the concept token {token!r} is already a word in the tokenizer's vocabulary ({word!r}); a concept "
            "needs a made-up word such as '<fs-person>' so that prompts can still use the real word"
        )


def check_prompt_has(prompt: str, token: str) -> None:
    if token not in prompt.lower():
        raise ValueError(
            f"the prompt does not contain the concept token {token!r}: write it where the person goes, e.g. "
            f"'a photo of {token} smiling' (prompt was {prompt!r})"
        )


def expand_prompt(prompt: str, token: str, n_vectors: int) -> str:
    """``"a photo of <tok>"`` -> ``"a photo of <tok> <tok>#1"`` for a 2-vector concept (case-insensitive)."""
    if n_vectors <= 1:
        return prompt
    replacement = " ".join(vector_tokens(token, n_vectors))
    return re.sub(re.escape(token) + r"(?!#)", lambda _m: replacement, prompt, flags=re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- tokenizer copies

_lock = threading.Lock()
_copies: dict[int, tuple[weakref.ref, dict]] = {}


def tokenizer_with(tokenizer, tokens: list[str]):
    """A copy of ``tokenizer`` with ``tokens`` added (cached per tokenizer object and its length), and the first
    new id. The original tokenizer is never modified."""
    key = (len(tokenizer), tuple(tokens))
    with _lock:
        entry = _copies.get(id(tokenizer))
        if entry is None or entry[0]() is not tokenizer:
            for k in [k for k, (ref, _) in _copies.items() if ref() is None]:
                del _copies[k]
            entry = (weakref.ref(tokenizer), {})
            _copies[id(tokenizer)] = entry
        cache = entry[1]
        if key not in cache:
            tok = copy.deepcopy(tokenizer)
            start = len(tok)
            added = tok.add_tokens(list(tokens))
            if added != len(tokens):
                raise ValueError(f"could not add the concept tokens {tokens} to the tokenizer (some already exist)")
            ids = tok.convert_tokens_to_ids(list(tokens))
            if ids != list(range(start, start + len(tokens))):
                raise RuntimeError(f"unexpected ids {ids} for new tokens (expected from {start})")
            if len(cache) > 8:
                cache.clear()
            cache[key] = (tok, start)
        return cache[key]


# ----------------------------------------------------------------------------------------------- embedding wrapper


class ExtraEmbedding(torch.nn.Module):
    """A token-embedding module: ids ``>= start`` read rows of ``extra`` (``(n, dim)``, or ``(B, n, dim)`` for a
    different concept per batch row), every other id goes to the wrapped embedding. ``extra`` may require grad."""

    def __init__(self, base: torch.nn.Module, start: int, extra: torch.Tensor):
        super().__init__()
        self.base = base
        self.start = int(start)
        self.extra = extra

    @property
    def weight(self):  # code that reads the embedding matrix (fingerprints, resizing) sees the base one
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.start + int(self.extra.shape[-2])

    @property
    def embedding_dim(self) -> int:
        return int(self.extra.shape[-1])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids >= self.start
        out = self.base(input_ids.masked_fill(mask, 0))
        n = self.extra.shape[-2]
        rel = (input_ids - self.start).clamp(0, n - 1)
        extra = self.extra.to(device=out.device, dtype=out.dtype)
        if extra.dim() == 2:
            vals = extra[rel]
        else:
            if extra.shape[0] != input_ids.shape[0]:
                raise ValueError(f"per-row concept embeddings for {extra.shape[0]} rows, but the batch has "
                                 f"{input_ids.shape[0]} prompts")
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
            vals = extra[rows, rel]
        return torch.where(mask[..., None], vals, out)


class swapped_embedding:
    """Context manager: ``text_encoder``'s token embedding wrapped by ``ExtraEmbedding`` meanwhile."""

    def __init__(self, text_encoder, start: int, extra: torch.Tensor):
        self.te, self.start, self.extra = text_encoder, start, extra

    def __enter__(self):
        self.original = self.te.get_input_embeddings()
        self.wrapper = ExtraEmbedding(self.original, self.start, self.extra)
        self.te.set_input_embeddings(self.wrapper)
        return self.wrapper

    def __exit__(self, *exc):
        self.te.set_input_embeddings(self.original)
        return False


def class_embedding(tokenizer, text_encoder, class_word: str = CLASS_WORD, n_vectors: int = 1) -> torch.Tensor:
    """The input embedding of ``class_word`` (its first token) repeated ``n_vectors`` times: ``(n, dim)`` float32."""
    ids = tokenizer(class_word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"class word {class_word!r} has no tokens")
    weight = text_encoder.get_input_embeddings().weight
    row = weight[ids[0]].detach().float().cpu()
    return row.unsqueeze(0).repeat(int(n_vectors), 1).clone()


def clean_words(words) -> str:
    """Words as one line, without stray spaces or commas at the ends ("" for None)."""
    return " ".join(str(words or "").split()).strip(" ,")


def with_words(text: str, words: str, token: str) -> str:
    """``text`` with ``words`` (who the person is, e.g. ``"olive skin, oval face"``) right after the first ``token``:
    ``"a photo of <tok>, olive skin, oval face, smiling"``; unchanged when ``words`` is empty."""
    return text.replace(token, f"{token}, {words}", 1) if words else text


def word_vectors(tokenizer, text_encoder, words: str) -> torch.Tensor:
    """The input embeddings of ``", " + words`` (no start/end tokens): ``(m, dim)`` float32. Appended to a concept's
    vectors they make ``"<tok>"`` read exactly as ``"<tok>, words"`` would (CLIP adds positions after the token
    embeddings), so the words travel inside the concept and its exported embedding."""
    ids = tokenizer(f", {words}", add_special_tokens=False).input_ids
    weight = text_encoder.get_input_embeddings().weight
    return weight[torch.as_tensor(ids, dtype=torch.long)].detach().float().cpu().clone()


def put_token(text: str, token: str, class_word: str = CLASS_WORD) -> str:
    """``text`` with ``token`` where it names the class (``a person`` -> ``token``), else
    ``a photo of token, text``."""
    for pattern in (rf"\b(a|an|the)\s+{re.escape(class_word)}\b", rf"\b{re.escape(class_word)}\b"):
        new, n = re.subn(pattern, token, text, count=1, flags=re.IGNORECASE)
        if n:
            return new
    text = text.strip()
    return f"a photo of {token}" + (f", {text}" if text else "")
