"""Several continuations of one prompt, the prompt and its media run once.

A DPO pair, or the candidate answers to one question, share the prompt and its image
or video; only the answers differ. :func:`answer_logits` runs each prompt once (vision
tower included), keeps its keys and values with their gradients, and runs every answer
on top of them. Attention over a kept prefix computes what attention over the whole row
computes, and the positions are the whole row's (M-RoPE for the Qwen2-VL family,
counted tokens otherwise), so the logits are those of running each
prompt + answer row in full, to float rounding, at one prompt's cost instead of one per
answer. ``shared=False`` runs the full rows instead (the same figures; the way that
gradient checkpointing, which drops caches, needs).

:func:`greedy_from_prefixes` does the same for decoding: rows that continue shared
prompts (a judge's questions about one image) decode greedily from one cache of each
prompt.

Batch layout of :func:`answer_logits` (what :class:`ur.data.pairs.PairCollator` makes):

- ``input_ids``, ``attention_mask`` (and ``mm_token_type_ids``): ``P`` prompts padded
  on the left, so every prompt ends in the last column;
- the processor's media tensors (``pixel_values``, ``image_grid_thw``, ...) for those
  prompts, one item after another along the first dimension;
- ``answer_ids``, ``answer_mask``: ``k * P`` answers padded on the right; answer row
  ``j * P + i`` continues prompt ``i``.

Supports: Qwen2-VL, Qwen2.5-VL (M-RoPE through the model's own ``get_rope_index``) and
models with 1-D positions (LLaVA-OneVision) as transformers loads them, peft-wrapped or
not.
"""

from __future__ import annotations

import inspect

import torch

IGNORE_INDEX = -100
ANSWER_KEYS = ("answer_ids", "answer_mask")


def prompt_inputs(batch: dict) -> dict:
    """The model inputs of the prompts: everything but the answers and the records."""
    return {k: v for k, v in batch.items() if k not in (*ANSWER_KEYS, "records")}


def answer_logits(model, batch: dict, shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of every answer row, shaped for a shifted log-likelihood
    (:func:`ur.align.losses.sequence_logps`): column 0 is the prompt's last token, whose
    logits predict the answer's first token; labels are -100 there and on padding."""
    prompt = prompt_inputs(batch)
    answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
    n_prompts = prompt["input_ids"].shape[0]
    copies = answers.shape[0] // n_prompts
    if copies * n_prompts != answers.shape[0]:
        raise ValueError(f"{answers.shape[0]} answer rows do not split evenly over "
                         f"{n_prompts} prompts")
    positions = prompt_positions(model, prompt)
    steps = torch.arange(1, answers.shape[1] + 1, device=positions.device)
    tail = torch.cat([positions[..., -1:] + steps] * copies, dim=-2)
    mask = torch.cat([prompt["attention_mask"].repeat(copies, 1), answer_mask], dim=1)
    if shared and not _drops_caches(model):
        from transformers import DynamicCache

        cache = DynamicCache()
        head = model(**prompt, position_ids=positions, use_cache=True, logits_to_keep=1,
                     **{_cache_keyword(model): cache}).logits
        cache.reorder_cache(torch.arange(n_prompts, device=answers.device).repeat(copies))
        rest = model(input_ids=answers, attention_mask=mask, position_ids=tail,
                     use_cache=True, **{_cache_keyword(model): cache}).logits
        logits = torch.cat([head.repeat(copies, 1, 1), rest], dim=1)
    else:
        rows = {k: torch.cat([v] * copies) for k, v in prompt.items()
                if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        rows["input_ids"] = torch.cat([prompt["input_ids"].repeat(copies, 1), answers], dim=1)
        rows["attention_mask"] = mask
        if "mm_token_type_ids" in prompt:
            types = prompt["mm_token_type_ids"].repeat(copies, 1)
            rows["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(answers).to(types)], 1)
        rows["position_ids"] = torch.cat([torch.cat([positions] * copies, dim=-2), tail], dim=-1)
        logits = model(**rows, logits_to_keep=answers.shape[1] + 1).logits
    labels = torch.cat([torch.full_like(answers[:, :1], IGNORE_INDEX),
                        answers.masked_fill(answer_mask == 0, IGNORE_INDEX)], dim=1)
    return logits, labels


def prompt_positions(model, prompt: dict) -> torch.Tensor:
    """Position ids of left-padded prompts: ``(3, P, L)`` M-RoPE ids from the model's own
    ``get_rope_index`` for the Qwen2-VL family, else ``(P, L)`` counting real tokens."""
    mask = prompt["attention_mask"]
    counted = (mask.long().cumsum(-1) - 1).clamp(min=0)
    rope = _rope_index(model)
    if rope is None:
        return counted
    if "mm_token_type_ids" not in prompt:  # text only: M-RoPE's three axes coincide
        return counted.unsqueeze(0).expand(3, -1, -1)
    keys = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
    positions, _ = rope(prompt["input_ids"], attention_mask=mask,
                        **{k: prompt[k] for k in keys if k in prompt})
    return positions


def _rope_index(model):
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module.get_rope_index
    return None


def _drops_caches(model) -> bool:
    """Gradient checkpointing recomputes layers without their caches while training."""
    base = _unwrapped(model)
    name = ("is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    return bool(getattr(base, name, False) and model.training and torch.is_grad_enabled())


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_keyword(model) -> str:
    """``cache`` in transformers releases that renamed it, ``past_key_values`` before."""
    parameters = inspect.signature(type(_unwrapped(model)).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def greedy_from_prefixes(model, prefixes: dict, owner: torch.Tensor, suffix_ids: torch.Tensor,
                         suffix_mask: torch.Tensor, *, full_ids: torch.Tensor, max_new_tokens: int,
                         processors, stop, eos_ids=(), pad_id: int = 0,
                         keep_logits: bool = True) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Greedy decoding of rows that continue shared prompts, each prompt run once.

    ``prefixes`` holds ``G`` prompts (left-padded, with their media tensors);
    ``owner[r]`` names the prompt row ``r`` continues, ``suffix_ids`` / ``suffix_mask``
    (left-padded) the tokens row ``r`` adds before decoding starts. ``full_ids`` is what
    ``model.generate`` would have been given for the same rows (prefix + suffix, left
    padded): the logits processors (a repetition penalty) and ``stop`` read it with the
    new tokens appended, as they do inside ``generate``.

    Rows finish at an ``eos_ids`` token or when ``stop(ids)`` (a bool per row) says so,
    and are padded with ``pad_id`` after; decoding ends when every row has finished or
    after ``max_new_tokens``. Returns the new tokens ``(R, T)`` and the raw logits of
    each step (one ``(R, vocab)`` tensor per new token), as ``generate`` returns them
    with ``output_logits=True`` (none unless ``keep_logits``)."""
    from transformers import DynamicCache

    positions = prompt_positions(model, prefixes)
    cache = DynamicCache()
    keyword = _cache_keyword(model)
    model(**prefixes, position_ids=positions, use_cache=True, logits_to_keep=1,
          **{keyword: cache})
    cache.reorder_cache(owner)
    at = positions[..., -1:].index_select(-2, owner) + suffix_mask.long().cumsum(-1)
    mask = torch.cat([prefixes["attention_mask"].index_select(0, owner), suffix_mask], dim=1)
    logits = model(input_ids=suffix_ids, attention_mask=mask, position_ids=at, use_cache=True,
                   logits_to_keep=1, **{keyword: cache}).logits[:, -1]
    at = at[..., -1:]
    ids = full_ids
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=ids.device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    new, raw = [], []
    for step in range(max_new_tokens):
        if keep_logits:
            raw.append(logits)
        # The processors must not touch the raw logits handed back.
        token = processors(ids, logits.clone() if keep_logits else logits).argmax(-1)
        token = token.masked_fill(done, pad_id)
        new.append(token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done = done | torch.isin(token, eos) | stop(ids, logits)
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        at = at + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=at,
                       use_cache=True, **{keyword: cache}).logits[:, -1]
    return torch.stack(new, dim=1), tuple(raw)
