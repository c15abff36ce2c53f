"""Load a vision-language model by hub id or path, and choose which of its parts train.

:func:`load_vlm` is the one way ``ur`` loads a VLM: ``AutoProcessor`` and
``AutoModelForImageTextToText``, exactly as for a released checkpoint
(``Qwen/Qwen2.5-VL-7B-Instruct``, ``llava-hf/llava-onevision-qwen2-7b-ov-hf``, a local copy
of either, or a tiny checkpoint from :mod:`ur.models.tiny`). No network unless
``path_or_id`` is a hub id that is not cached; remote code only when the caller opts in;
weights come from safetensors (transformers reads ``.bin`` files with
``weights_only=True``). A string that could be a local path is one
(:func:`resolve_pretrained`): when it is missing, that is an error, never a request to
the hub.

A VLM has three parts, found by parameter name (transformers 5 layout)::

    family            vision                  projector                     language
    qwen2_vl,         model.visual            model.visual.merger           model.language_model,
    qwen2_5_vl        (patch_embed, blocks)   (2-layer MLP after the        lm_head
                                              2x2 patch merge)
    llava_onevision   model.vision_tower      model.multi_modal_projector,  model.language_model,
                      (SigLIP encoder)        model.image_newline           lm_head

(Qwen3-VL's ``model.visual.deepstack_merger_list`` counts as projector too.) A parameter
that fits none of them stops :func:`trainable_parts` and :func:`lora_wrap` with its name,
so a new family cannot be trained half-frozen by accident.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

PARTS: tuple[str, ...] = ("vision", "projector", "language")

_PROJECTOR_NAMES = frozenset({"multi_modal_projector", "image_newline", "mm_projector"})
_VISUAL_PROJECTOR_NAMES = frozenset({"merger", "deepstack_merger_list"})
_VISION_NAMES = frozenset({"visual", "vision_tower", "vision_model"})
_LANGUAGE_NAMES = frozenset({"language_model", "lm_head"})

HUB_PREFIX = "hf://"
# A hub repository id as huggingface_hub accepts it: "name" or "owner/name", each part
# of letters, digits, "_", "-" and "." that neither starts nor ends with "-" or ".".
_HUB_PART = r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")
# Endings of files, never of a hub id such as "Qwen/Qwen2.5-VL-7B-Instruct".
_FILE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml",
                            ".yml", ".gguf", ".onnx", ".h5", ".msgpack", ".pkl", ".npz",
                            ".zip", ".tar", ".gz", ".txt"})


def resolve_pretrained(path_or_id: str | os.PathLike) -> str:
    """What to hand ``from_pretrained``: a local checkpoint folder, or a hub id only
    where the string cannot be a local path.

    An existing folder is local (``~`` expanded). A string is taken for a local path,
    and its absence is a ``FileNotFoundError`` instead of a download, when it starts
    with ``./``, ``../``, ``/`` or ``~``, has more than the one slash of
    ``owner/name``, ends with a file extension (``.ckpt``, ``.safetensors``, ...),
    names a folder that exists (``checkpoints/run`` where ``checkpoints/`` is here),
    or is not a valid hub id at all. ``hf://owner/name`` always means the hub, for a
    repository whose owner is also the name of a local folder.
    """
    text = os.fspath(path_or_id)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not _HUB_ID.fullmatch(repo) or ".." in repo or "--" in repo:
            raise ValueError(f"{text!r} is not a hub id: expected hf://owner/name")
        return repo
    if not text.strip():
        raise ValueError("the checkpoint is an empty string: expected a folder or a hub id")
    local = Path(text).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists():
        raise NotADirectoryError(
            f"{text} is a file; a checkpoint is a folder as save_pretrained writes it "
            "(config.json and weights), or a hub id")
    if _could_be_local(text):
        raise FileNotFoundError(
            f"{text}: no such checkpoint folder. It looks like a local path, so it is not "
            f"looked up on the Hugging Face hub (write {HUB_PREFIX}owner/name for the hub)")
    return text


def _could_be_local(text: str) -> bool:
    if text in (".", "..") or text.startswith(("./", "../", "/", "~")):
        return True
    if text.count("/") > 1 or Path(text).suffix.lower() in _FILE_SUFFIXES:
        return True
    if "/" in text and Path(text).parent.is_dir():
        return True
    return not _HUB_ID.fullmatch(text) or ".." in text or "--" in text


def load_vlm(
    path_or_id: str | os.PathLike,
    *,
    dtype=None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    device_map=None,
):
    """Load ``(model, processor)`` from a hub id or a local checkpoint directory
    (told apart by :func:`resolve_pretrained`).

    ``dtype``: a ``torch.dtype``, its name (``"bfloat16"``) or ``"auto"`` (the
    checkpoint's own dtype); None leaves the transformers default ("auto" in v5).
    ``attn_implementation`` (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``) and
    ``device_map`` go to ``from_pretrained`` when given. ``trust_remote_code`` runs code
    shipped with the checkpoint; off unless the caller turns it on.
    """
    path_or_id = resolve_pretrained(path_or_id)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_kwargs = {"trust_remote_code": bool(trust_remote_code)}
    if dtype is not None:
        model_kwargs["dtype"] = _as_dtype(dtype)
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=bool(trust_remote_code))
    model = AutoModelForImageTextToText.from_pretrained(path_or_id, **model_kwargs)
    return model, processor


def _as_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(resolved, torch.dtype):
            return resolved
    raise ValueError(f"dtype {dtype!r} is not a torch dtype, a dtype name or 'auto'")


def part_of(name: str) -> str | None:
    """The part ('vision', 'projector', 'language') a parameter or module name is in.

    Works on plain and PEFT-wrapped names (``base_model.model.`` prefixes, ``lora_A``
    leaves). None for names outside the three parts (e.g. the empty root name).
    """
    parts = name.split(".")
    if _PROJECTOR_NAMES.intersection(parts):
        return "projector"
    if _VISION_NAMES.intersection(parts):
        if _VISUAL_PROJECTOR_NAMES.intersection(parts):
            return "projector"
        return "vision"
    if _LANGUAGE_NAMES.intersection(parts):
        return "language"
    return None


def _require_part(name: str) -> str:
    part = part_of(name)
    if part is None:
        raise ValueError(
            f"parameter {name!r} is in none of vision / projector / language; "
            "teach ur.models.loading.part_of this model's layout")
    return part


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part, plus 'total' and 'trainable' (shared tensors counted once)."""
    counts = dict.fromkeys(PARTS, 0)
    seen = set()
    trainable = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        counts[_require_part(name)] += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    counts["total"] = sum(counts[k] for k in PARTS)
    counts["trainable"] = trainable
    return counts


def trainable_parts(model, *, vision: bool, projector: bool, language: bool) -> dict[str, int]:
    """Freeze or unfreeze each part for full fine-tuning; return trainable counts per part.

    UnifiedReward's recipe trains all three; a frozen vision tower (``vision=False``) is
    the usual cheaper variant.
    """
    wanted = {"vision": vision, "projector": projector, "language": language}
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        part = _require_part(name)
        p.requires_grad_(wanted[part])
        if wanted[part]:
            counts[part] += p.numel()
    return counts


def lora_wrap(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "all-linear",
    train_vision: bool = False,
    train_projector: bool = False,
    train_language: bool = True,
):
    """Wrap ``model`` with PEFT LoRA adapters and return the ``PeftModel``.

    Adapters go on the linear layers of the language model (``train_language``) and of
    the vision tower (``train_vision``) whose last name is in ``target_modules``
    (``"all-linear"``: every linear layer; ``lm_head`` never). Leaf names differ per
    tower: Qwen text ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``; Qwen2-VL
    vision ``qkv proj fc1 fc2``; Qwen2.5-VL vision ``qkv proj gate_proj up_proj
    down_proj``; SigLIP ``q_proj k_proj v_proj out_proj fc1 fc2``. ``train_projector``
    trains the projector in full, as a PEFT ``modules_to_save`` copy, so that ``with
    peft_model.disable_adapter():`` still gives the untouched base model (the DPO
    reference). LLaVA-OneVision's ``image_newline`` is a bare parameter and stays frozen.
    Everything else is frozen.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    lora_parts = {p for p, on in (("vision", train_vision), ("language", train_language)) if on}
    if not lora_parts:
        raise ValueError("lora_wrap needs train_language or train_vision (LoRA goes there); to "
                         "train the projector alone, use trainable_parts(projector=True)")
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [target_modules]
    for name, _ in model.named_parameters():
        _require_part(name)

    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lm_head" in name.split("."):
            continue
        if part_of(name) not in lora_parts:
            continue
        if target_modules == "all-linear" or name.rsplit(".", 1)[-1] in target_modules:
            targets.append(name)
    if not targets:
        raise ValueError(f"no linear layer named {target_modules} in the {sorted(lora_parts)} "
                         "part(s) of this model")

    projector = []
    if train_projector:
        # The outermost projector modules (their parents are not projector).
        for name, module in model.named_modules():
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            if (part_of(name) == "projector" and part_of(parent) != "projector"
                    and next(module.parameters(), None) is not None):
                projector.append(name)

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=projector or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def make_trainable(model, *, finetune: str = "full", lora=None, train_vision: bool = True,
                   train_projector: bool = True, train_language: bool = True,
                   gradient_checkpointing: bool = False):
    """``model`` set up to train the chosen parts: in full (``finetune: full``) or with
    LoRA adapters on them (``lora``, a :class:`ur.training.LoraSpec`), optionally with
    gradient checkpointing; in training mode (``from_pretrained`` returns eval mode)."""
    from ur.training import LoraSpec

    if finetune == "lora":
        spec = lora or LoraSpec()
        model = lora_wrap(model, r=spec.r, alpha=spec.alpha, dropout=spec.dropout,
                          target_modules=spec.target_modules, train_vision=train_vision,
                          train_projector=train_projector, train_language=train_language)
    else:
        trainable_parts(model, vision=train_vision, projector=train_projector,
                        language=train_language)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()
