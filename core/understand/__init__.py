"""Face understanding (UniF2ace): the engine's own understanding models, separate from the SynthFace judges.

- ``questions``: the closed question set (six attributes + 13 identity traits), answer words, the word tokenizer;
- ``data``: the face dataset in UniF2ace-130K's shape (captions + multi-turn VQA per image) from SynthFace with
  held-out identities, and the loader for a user's folder of images + JSONL of captions/questions/answers;
- ``model``: the unified transformer over image tokens and text tokens with the multi-level grouped mixture of
  experts (token-level + sequence-level experts; understanding and generation groups) and its dense twin;
- ``infer``: answering, describing and attribute reading with confidences; saving and loading the weights;
- ``vlm``: the second backend, any local transformers vision-language folder (offline) with optional LoRA.

The judges in ``core/judges`` stay evaluation instruments: nothing here imports or trains them.
"""
