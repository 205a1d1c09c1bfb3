"""Answering, describing, attribute reading and drawing with the unified face model, with confidences.

Every answer carries the model's probability of it (product of its token probabilities under greedy decoding) and
``low_confidence``: True when the question is outside the trained question set (or has words the model never saw),
the answer is not one of the question type's answers, or the probability is below ``threshold``. A low-confidence
answer is a guess and says so in ``text_marked``; it is never presented as a fact.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data import SequenceBuilder, decode_codes, to_model_images
from .model import UnifiedFaceModel
from .questions import PHRASINGS, TYPES, WordTokenizer, answer_value, answer_words, question_type

LOW_CONFIDENCE = 0.5


@dataclass
class Answer:
    text: str
    confidence: float
    low_confidence: bool
    reason: str = ""
    qtype: str | None = None

    @property
    def text_marked(self) -> str:
        return f"{self.text} (low confidence {self.confidence:.2f}: {self.reason})" if self.low_confidence else self.text

    def to_dict(self) -> dict:
        return asdict(self)


def fit_images(images: np.ndarray, size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) of any size -> (N, size, size, 3): centre square crop, area resize."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    out = np.zeros((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        s = min(h, w)
        crop = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BOX if s >= size else Image.BICUBIC))
    return out


class UnifiedUnderstander:
    """The unified model behind one interface (the VLM backend offers the same methods)."""

    backend = "unified"

    def __init__(self, model: UnifiedFaceModel, tok: WordTokenizer, info: dict | None = None,
                 threshold: float = LOW_CONFIDENCE):
        self.model, self.tok, self.info, self.threshold = model.eval(), tok, info or {}, threshold
        self.builder = SequenceBuilder(tok, model.n_image)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _word_logits(self, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[..., self.tok.code_offset:] = float("-inf")  # understanding writes words, never image codes
        for s in ("<pad>", "<unk>", "<bos>", "<ask>", "<describe>", "<draw>", "<answer>"):
            out[..., self.tok[s]] = float("-inf")
        return out

    @torch.no_grad()
    def _decode(self, prefixes: list[list[int]], images: torch.Tensor | None, max_new_tokens: int, group: int = 0,
                codes: bool = False, generator: torch.Generator | None = None, temperature: float = 0.0):
        """Greedy (or sampled) continuation of equal-length prefixes; returns (ids per row, prob per row)."""
        tokens = torch.tensor(prefixes, dtype=torch.long, device=self.device)
        b = len(prefixes)
        image_at = torch.arange(b, device=self.device) if images is not None else torch.zeros(0, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        logp = torch.zeros(b, dtype=torch.float64, device=self.device)
        out = [[] for _ in range(b)]
        cond = torch.zeros_like(tokens, dtype=torch.bool)
        if group == 1:
            end = prefixes[0].index(self.tok["<answer>"])
            cond[:, 1:end] = True
        elif images is not None:
            cond[:, 1:1 + self.model.n_image] = True
        groups = torch.full((b,), group, dtype=torch.long, device=self.device)
        for _ in range(max_new_tokens):
            if tokens.shape[1] > self.model.cfg.max_len:
                break
            logits, _ = self.model(tokens, images, image_at, groups,
                                   torch.cat([cond, torch.zeros(b, tokens.shape[1] - cond.shape[1],
                                                                dtype=torch.bool)], 1))
            last = logits[:, -1].float()
            if codes:
                mask = torch.full_like(last, float("-inf"))
                mask[:, self.tok.code_offset:] = 0
                last = last + mask
            else:
                last = self._word_logits(last)
            probs = last.softmax(-1)
            if temperature > 0:
                nxt = torch.multinomial((last / temperature).softmax(-1), 1, generator=generator)[:, 0]
            else:
                nxt = probs.argmax(-1)
            p = probs.gather(1, nxt[:, None])[:, 0]
            for i in range(b):
                if not done[i]:
                    logp[i] += float(torch.log(p[i].clamp(min=1e-12)))
                    if not codes and int(nxt[i]) == self.tok["<eos>"]:
                        done[i] = True
                    else:
                        out[i].append(int(nxt[i]))
            if bool(done.all()):
                break
            tokens = torch.cat([tokens, nxt[:, None]], 1)
        return out, logp.exp().tolist()

    def _images(self, images) -> torch.Tensor:
        return to_model_images(fit_images(images, self.model.cfg.image_size)).to(self.device)

    def answer(self, images, questions, max_new_tokens: int = 4) -> list[Answer]:
        """One answer per image; ``questions`` is one string for all or one per image."""
        x = self._images(images)
        qs = [questions] * len(x) if isinstance(questions, str) else list(questions)
        if len(qs) != len(x):
            raise ValueError(f"{len(qs)} questions for {len(x)} images: give one question, or one per image")
        answers: list[Answer | None] = [None] * len(x)
        by_q: dict[str, list[int]] = {}
        for i, q in enumerate(qs):
            by_q.setdefault(q, []).append(i)
        for q, rows in by_q.items():
            prefix = self.builder.understanding_prefix("<ask>") + self.tok.encode(q) + [self.tok["<answer>"]]
            ids, probs = self._decode([prefix] * len(rows), x[rows], max_new_tokens)
            qtype, unknown = question_type(q), self.tok.unknown(q)
            for i, seq, p in zip(rows, ids, probs):
                text = self.tok.decode(seq)
                reasons = []
                if unknown:
                    reasons.append(f"words the model never saw: {', '.join(unknown)}")
                if qtype is None:
                    reasons.append("question outside the trained question set")
                elif answer_value(qtype, text) is None:
                    reasons.append(f"{text!r} is not one of the answers it learned for this question")
                if p < self.threshold:
                    reasons.append(f"probability {p:.2f} < {self.threshold}")
                answers[i] = Answer(text, float(p), bool(reasons), "; ".join(reasons), qtype)
        return answers

    def describe(self, images, max_new_tokens: int = 90) -> list[Answer]:
        x = self._images(images)
        ids, probs = self._decode([self.builder.understanding_prefix("<describe>")] * len(x), x, max_new_tokens)
        out = []
        for seq, p in zip(ids, probs):
            # a caption is long: its probability is the geometric mean per word (a per-token confidence)
            per_token = p ** (1.0 / max(1, len(seq) + 1))
            low = per_token < self.threshold
            out.append(Answer(self.tok.decode(seq), float(per_token), low,
                              f"mean token probability {per_token:.2f} < {self.threshold}" if low else ""))
        return out

    @torch.no_grad()
    def attributes(self, images, types: list[str] | None = None) -> list[dict]:
        """Every question type read as a distribution over its answers (each answer's sequence probability under
        the canonical question, normalised): ``[{type: {"value", "answer", "confidence", "low_confidence"}}]``."""
        from .questions import values

        x = self._images(images)
        types = list(types or TYPES)
        n = len(x)
        out = [dict() for _ in range(n)]
        # every (type, answer) sequence, right-padded to one length: one batched forward per chunk of images instead
        # of one per answer (the model is causal and routes on the image tokens, so the padding after an answer
        # changes nothing before it)
        seqs, spans = [], []
        for t in types:
            q = self.builder.understanding_prefix("<ask>") + self.tok.encode(PHRASINGS[t][0]) + [self.tok["<answer>"]]
            for w in answer_words(t):
                a = self.tok.encode(w) + [self.tok["<eos>"]]
                seqs.append(q + a)
                spans.append((len(q) - 1, a))
        r, width = len(seqs), max(len(q) for q in seqs)
        tokens = torch.full((r, width), self.tok["<pad>"], dtype=torch.long)
        target = torch.zeros((r, width), dtype=torch.long)
        valid = torch.zeros((r, width), dtype=torch.bool)
        for k, (seq, (start, a)) in enumerate(zip(seqs, spans)):
            tokens[k, :len(seq)] = torch.tensor(seq)
            target[k, start:start + len(a)] = torch.tensor(a)
            valid[k, start:start + len(a)] = True
        scores = np.zeros((n, r))
        chunk = max(1, 256 // r)
        for i0 in range(0, n, chunk):
            m = min(chunk, n - i0)
            rows = torch.arange(m).repeat_interleave(r)
            pt = self.model.patch(x[i0:i0 + m])  # each image's tokens once, shared by its r rows
            logits, _ = self.model(tokens.repeat(m, 1).to(self.device), None,
                                   torch.arange(m * r, device=self.device), None, None, patches=pt[rows])
            lp = self._word_logits(logits.float()).log_softmax(-1).cpu()
            got = lp.gather(2, target.repeat(m, 1)[..., None])[..., 0].masked_fill(~valid.repeat(m, 1), 0.0)
            scores[i0:i0 + m] = got.sum(1).view(m, r).double().numpy()
        k0 = 0
        for t in types:
            words = answer_words(t)
            sc = scores[:, k0:k0 + len(words)]
            k0 += len(words)
            p = np.exp(sc - sc.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            for i in range(n):
                k = int(p[i].argmax())
                out[i][t] = {"value": values(t)[k], "answer": words[k], "confidence": round(float(p[i, k]), 4),
                             "low_confidence": bool(p[i, k] < self.threshold)}
        return out

    @torch.no_grad()
    def draw(self, captions: list[str], seed: int = 0, temperature: float = 0.7) -> np.ndarray:
        """Generation: a caption -> 16 image codes (sampled) -> a 64 px image from the patch codebook."""
        g = torch.Generator().manual_seed(int(seed))
        prefixes = [[self.tok["<draw>"]] + self.tok.encode(c) + [self.tok["<answer>"]] for c in captions]
        images = np.zeros((len(captions), self.model.cfg.image_size, self.model.cfg.image_size, 3), np.uint8)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            by_len.setdefault(len(p), []).append(i)
        for _, rows in by_len.items():
            ids, _ = self._decode([prefixes[i] for i in rows], None, self.model.n_image, group=1, codes=True,
                                  generator=g, temperature=temperature)
            codes = np.asarray(ids) - self.tok.code_offset
            images[rows] = decode_codes(codes, self.model.codebook, self.model.cfg.grid, self.model.cfg.image_size)
        return images


def load_understander(path, device: str = "cpu") -> UnifiedUnderstander:
    from .weights import load_unified

    model, tok, info = load_unified(path, device)
    return UnifiedUnderstander(model, tok, info)
