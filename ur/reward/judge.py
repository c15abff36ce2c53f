"""The judge: pairwise ranking and pointwise scoring with a generative reward model.

``judge(queries)`` judges a batch of :class:`~ur.data.records.JudgeQuery` (a labelled
:class:`~ur.data.records.PreferenceRecord` is judged as its ``query()``: the judge never
reads labels); ``judge.rank(...)`` and ``judge.score(...)`` ask one question each.

Two modes, both batched:

``generate``
    Greedy decoding of the whole answer, then parsing of the answer conventions
    (:mod:`ur.data.answers`). An answer that does not parse is reported as unparsed
    (``label``/``score`` = None), never handed to candidate 1.

``fast``
    The verdict is read, not parsed. Decoding runs greedily until the model starts its
    own verdict, as many evidence sentences as it chooses to write, and stops a token
    or two in; the decision then comes from the logits decoding already computed at the
    verdict's positions: pairwise, p(tie) from the first verdict token ("Both" against
    the candidate nouns: the task's, or another task's when the judge names candidates
    that way) and p(1) / p(2) from the token after the noun; pointwise, the
    expected value of the scale's values under the distribution after "Final Score:".
    When the model's own path does not pass those positions in the expected tokens (it
    chose the tie, so p(1) / p(2) were never computed; it never wrote a verdict; it
    spelled it differently), one forced forward pass over ``prompt + evidence + verdict
    prefix`` reads them. It always decides (no parse failures) and gives probabilities.
    Because it reads the same positions greedy decoding takes its verdict from, it
    agrees with ``generate`` except where p(tie) falls between the noun's probability
    and the better number's share of it. A scale whose values do not each start with
    their own token (a tokenizer that splits digits one by one makes 1 and 10 share
    "1") is scored the generate way for those queries. It relies on the verdict
    tokenizing the same after the prefix as inside a whole answer (true for byte-level
    BPE that splits at spaces, checked at start-up).

``both_orders=True`` judges each pairwise query a second time with the candidates
swapped. Fast mode averages the two probability vectors (position bias cancels);
generate mode keeps the verdict when the two agree and calls it a tie when they do not.
Either way each judgment also reports the swapped verdict (mapped back to the original
order) for the position-consistency metric.

``share_prefix=True`` decodes a batch's queries about the same image or clip (the ten
answers to one question, pairwise and pointwise) from their common start run once: the
template, the media and the question pass the model (vision tower included) once per
batch, and each query continues from their cache with its own tokens. The judgments are
those of ``generate`` on the whole rows, to float rounding. It supports the greedy
settings judging uses (suppressed tokens, the checkpoint's repetition penalty) and
refuses a generation config that asks for others.

``describe_first`` (a list of tasks) judges those tasks' questions in two steps. Each
image or clip is first described on its own, greedily, with nothing but the media and
``templates.describe_image`` / ``describe_video`` in view (by ``describer``, another
judge, when given, else by this one); then the question is asked as a text view, the
descriptions written in place of the media (``templates.text_view``). A judge that sees
the caption or the answers while it describes copies them into its evidence; a
description written first cannot (docs/judge_quality.md, "Describe first"). The judge
must have learned text views of those tasks (``PreferenceDataModule(text_views=...,
text_view_tasks=...)``).

``pair_from`` says where a pairwise decision comes from:

``verdict``
    The judge's pairwise verdict (above).
``points``
    Two pointwise judgments, one per candidate, on the task's scale
    (``point_scales``, by default :data:`POINT_SCALES`): the candidate with the higher score wins, equal scores are a
    tie. With score distributions (fast mode), ``probs`` are ``P(A > B) + P(A = B) / 2``
    and its complement for A and B independent, and tie 0; the label follows the larger
    (a tie only when they are equal). An unparsed score leaves the pair unparsed.
    Pointwise questions do not depend on the order, so there is no swapped verdict.
``both``
    The mean of the verdict's probabilities and the points' probabilities, label the
    most probable (fast mode); in generate mode, the verdict where the two agree or
    only one decides, and a tie where they disagree.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ur.data.answers import (
    candidate_noun,
    format_score,
    pairwise_verdict,
    parse_pairwise,
    parse_score,
)
from ur.data.collate import JudgeCollator, TextView, pad_rows
from ur.data.records import TASKS, JudgeQuery, Media, PreferenceRecord, is_generation
from ur.data.templates import PromptTemplates, description

PAIR_FROM: tuple[str, ...] = ("verdict", "points", "both")
POINT_SCALES: dict[str, tuple[float, float]] = {
    "image_generation": (1.0, 5.0), "video_generation": (1.0, 4.0),
    "image_understanding": (0.0, 100.0), "video_understanding": (1.0, 5.0)}
"""The scale a single image, clip or answer is scored on when a judge is asked for
points without a record's own scale (a pairwise decision from points, a generated
sample's score): the scales of the pointwise sources a judge learns each task from,
EvalMuse 1-5, VideoFeedback 1-4, LLaVA-Critic 0-100 and LLaVA video SFT 1-5 (the
synthetic world writes its pointwise records in these). A judge asked on a scale it
never learned answers off its training distribution."""

# Where a verdict starts, and how far it must be written before the decision can be read
# (a pairwise verdict can be read as soon as it is recognised).
_PAIR_START = re.compile(r"\b(?:Image|Video|Answer)\s*[12]\s+is\b|\bBoth\s+(?:images|videos|answers)\b")
_SCORE_START = re.compile(r"\bFinal\s+Score\b")
_SCORE_DONE = re.compile(r"\bFinal\s+Score\s*:\s*\d")

_FLIP = {"first": "second", "second": "first", "tie": "tie", None: None}


@dataclass
class Judgment:
    """One judgment. ``label`` (pairwise) or ``score`` (pointwise, on the query's scale)
    is None when a generated answer did not parse."""

    task: str
    form: str
    label: str | None = None
    score: float | None = None
    text: str = ""
    probs: dict[str, float] | None = None
    label_swapped: str | None = None

    @property
    def parsed(self) -> bool:
        return (self.label if self.form == "pairwise" else self.score) is not None


@dataclass
class Judge:
    """A reward model as a judge. ``judge(queries)`` is the batched entry point;
    :meth:`rank` and :meth:`score` ask one question each."""

    model: object
    processor: object
    templates: PromptTemplates = field(default_factory=PromptTemplates)
    mode: str = "fast"
    num_frames: int = 4
    batch_size: int = 16
    max_new_tokens: int = 96
    both_orders: bool = False
    score_steps: int = 4
    processor_kwargs: dict = field(default_factory=dict)
    pair_from: str = "verdict"
    point_scales: dict = field(default_factory=lambda: dict(POINT_SCALES))
    share_prefix: bool = False
    describe_first: tuple[str, ...] = ()
    describer: Judge | None = None

    def __post_init__(self):
        if self.mode not in ("fast", "generate"):
            raise ValueError(f"judge mode must be 'fast' or 'generate', got {self.mode!r}")
        if self.pair_from not in PAIR_FROM:
            raise ValueError(f"pair_from must be one of {', '.join(PAIR_FROM)}, "
                             f"got {self.pair_from!r}")
        self.describe_first = tuple(self.describe_first)
        unknown = set(self.describe_first) - set(TASKS)
        if unknown:
            raise ValueError(f"describe_first: unknown tasks {sorted(unknown)}; choose from "
                             f"{', '.join(TASKS)}")
        if self.describe_first and self.share_prefix:
            raise ValueError("share_prefix and describe_first cannot be combined: a text "
                             "view has no media to share")
        self.collator = JudgeCollator(self.processor, templates=self.templates,
                                      num_frames=self.num_frames, with_targets=False,
                                      processor_kwargs=self.processor_kwargs)
        self.tokenizer = self.collator.tokenizer
        # Media placeholders are never decoded: one in an answer would ask the model for an
        # image it was not given (a weak or untrained model can pick one).
        self._suppress = media_token_ids(self.processor) or None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype=None, trust_remote_code: bool = False,
                        **kwargs) -> Judge:
        from ur.models.loading import load_vlm

        model, processor = load_vlm(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
        model.eval()
        return cls(model=model, processor=processor, **kwargs)

    # -- one-off calls ---------------------------------------------------------------------
    def rank(self, task: str, prompt: str, a, b, *, media=None) -> Judgment:
        """Which of two candidates is better: images/videos for generation tasks (paths,
        PIL images or Media), answer strings for understanding tasks (with ``media``,
        the image or video they answer about)."""
        if is_generation(task):
            query = JudgeQuery(task=task, form="pairwise", prompt=prompt,
                               media=(_as_media(a, task), _as_media(b, task)))
        else:
            query = JudgeQuery(task=task, form="pairwise", prompt=prompt,
                               media=(_as_media(media, task),), responses=(a, b))
        return self([query])[0]

    def score(self, task: str, prompt: str, x, *, media=None, scale=(1, 5)) -> Judgment:
        """A score on ``scale`` for one image/video (generation) or answer (understanding)."""
        if is_generation(task):
            query = JudgeQuery(task=task, form="pointwise", prompt=prompt,
                               media=(_as_media(x, task),), scale=scale)
        else:
            query = JudgeQuery(task=task, form="pointwise", prompt=prompt,
                               media=(_as_media(media, task),), responses=(x,), scale=scale)
        return self([query])[0]

    # -- batched judging -------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, queries: Sequence[JudgeQuery | PreferenceRecord],
                 memo: dict | None = None) -> list[Judgment]:
        """One judgment per query, in order. Records are judged as their queries, so a
        labelled record and its query get the same judgment.

        Each distinct question is asked once: equal queries in the batch (ten sampled
        answers of which several are the same sentence), and the pointwise questions
        that ``pair_from: points | both`` asks for a pair's candidates, share one
        judgment. ``memo`` (a dict the caller keeps) carries the judgments over to
        later calls, so scoring a candidate a ranking call already scored costs
        nothing (pair construction's point sifting)."""
        asked = [q.query() if isinstance(q, PreferenceRecord) else q for q in queries]
        verdicts = self.pair_from in ("verdict", "both")
        points = self.pair_from in ("points", "both")
        memo = {} if memo is None else memo
        # Every question asked, once: a plan per query names its positions in ``work``.
        work: list[JudgeQuery] = []
        at: dict = {}

        def ask(q: JudgeQuery) -> int:
            key = _memo_key(q)
            if key not in at:
                at[key] = len(work)
                work.append(q)
            return at[key]

        plans = []
        for q in asked:
            split = q.form == "pairwise" and q.instruction is None
            plan = {}
            if verdicts or not split:
                plan["self"] = ask(q)
                if split and self.both_orders:
                    plan["swapped"] = ask(q.swapped())
            if split and points:
                scale = tuple(self.point_scales[q.task])
                plan["points"] = (ask(q.candidate(0, scale)), ask(q.candidate(1, scale)))
            plans.append(plan)
        # A question that cannot be a dict key (a list where a tuple belongs) is judged
        # but not remembered beyond this call.
        keys = [_memo_key(q) for q in work]
        judged = {k: memo[k] for k in keys if k in memo}
        fresh = [(k, q) for k, q in zip(keys, work, strict=True) if k not in judged]
        # Questions read as text views (describe_first) are batched apart from the rest.
        viewed = [(k, q) for k, q in fresh if self._reads_text(q)]
        direct = [(k, q) for k, q in fresh if not self._reads_text(q)]
        descriptions = self._descriptions([q for _, q in viewed], memo) if viewed else {}
        for part in (direct, viewed):
            for start in range(0, len(part), self.batch_size):
                chunk = part[start:start + self.batch_size]
                done = [replace(q, evidence=tuple(descriptions[m] for m in q.media))
                        if self._reads_text(q) else q for _, q in chunk]
                done = self._fast(done) if self.mode == "fast" else self._generate(done)
                judged.update(zip((k for k, _ in chunk), done, strict=True))
        memo.update((k, j) for k, j in judged.items() if not _is_local(k))
        out = [judged[k] for k in keys]
        results = []
        for q, plan in zip(asked, plans, strict=True):
            verdict = out[plan["self"]] if "self" in plan else None
            if "swapped" in plan:
                verdict = self._combine(verdict, out[plan["swapped"]])
            if "points" in plan:
                a, b = (out[k] for k in plan["points"])
                from_points = _from_points(q, a, b)
                verdict = from_points if verdict is None else _with_points(verdict, from_points)
            results.append(verdict)
        return results

    def _reads_text(self, q: JudgeQuery) -> bool:
        return q.task in self.describe_first

    def _descriptions(self, queries: list[JudgeQuery], memo: dict) -> dict[Media, str]:
        """What each image or clip of ``queries`` shows, described on its own (greedy,
        the first sentence, :func:`ur.data.templates.description`); kept in ``memo``."""
        known = memo.setdefault(("descriptions",), {})
        todo = list(dict.fromkeys(m for q in queries for m in q.media if m not in known))
        describer = self.describer or replace(self, describe_first=())
        for start in range(0, len(todo), describer.batch_size):
            chunk = todo[start:start + describer.batch_size]
            kinds = ["image" if m.kind == "image" else "video" for m in chunk]
            asks = [JudgeQuery(task=f"{kind}_generation", form="pointwise", prompt="describe",
                               media=(m,), scale=(0.0, 1.0),
                               instruction=self.templates.describe(kind))
                    for m, kind in zip(chunk, kinds, strict=True)]
            for m, j in zip(chunk, describer._generate(asks), strict=True):
                known[m] = description(j.text)
        return known

    def _combine(self, a: Judgment, b: Judgment) -> Judgment:
        back = _FLIP[b.label]
        if a.probs is not None and b.probs is not None:
            probs = {"first": (a.probs["first"] + b.probs["second"]) / 2,
                     "second": (a.probs["second"] + b.probs["first"]) / 2,
                     "tie": (a.probs["tie"] + b.probs["tie"]) / 2}
            label = max(probs, key=probs.get)
        else:
            probs = None
            label = _agreed(a.label, back)
        return replace(a, label=label, probs=probs, label_swapped=back,
                       text=a.text + "\n---\n" + b.text)

    def _device(self):
        return next(self.model.parameters()).device

    def _inputs(self, queries):
        batch = self.collator([TextView(q) if self._reads_text(q) else q for q in queries])
        batch.pop("records")
        return {k: v.to(self._device()) for k, v in batch.items()}

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate(self, queries) -> list[Judgment]:
        inputs = self._inputs(queries)
        width = inputs["input_ids"].shape[1]
        seqs = self._greedy(queries, inputs, logits=False).sequences
        out = []
        for r, seq in zip(queries, seqs, strict=True):
            text = self._decode(seq[width:])
            if r.form == "pairwise":
                out.append(Judgment(r.task, r.form, label=parse_pairwise(text), text=text))
            else:
                out.append(Judgment(r.task, r.form, score=_clip(parse_score(text), r.scale),
                                    text=text))
        return out

    def _greedy(self, queries, inputs, stop=None, logits: bool = True):
        """Greedy decoding of the batch: ``.sequences`` (prompt and new tokens) and, with
        ``logits``, ``.logits`` (one ``(batch, vocab)`` tensor per new token), by
        ``generate`` or, with ``share_prefix``, from prompts each run once
        (:meth:`_shared_greedy`)."""
        if self.share_prefix:
            return self._shared_greedy(queries, inputs, stop, logits)
        extra = {} if stop is None else {"stopping_criteria": [stop]}
        return self.model.generate(**inputs, **self._decoding(), return_dict_in_generate=True,
                                   output_logits=logits, **extra)

    def _shared_greedy(self, queries, inputs, stop=None, logits: bool = True):
        """Greedy decoding where queries about the same media (the ten answers to one
        image and question) run their common start, media included, once.

        Queries are grouped by their media; a group's prompt is the token prefix all its
        rows share, which must hold every media token (else its rows go alone). One
        forward pass runs the groups' prompts, and each row continues its group's cache
        with its own tokens (:func:`ur.models.prefix.greedy_from_prefixes`). The result
        is ``generate``'s, to float rounding."""
        from ur.models.prefix import greedy_from_prefixes

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows = [r[m.bool()].tolist() for r, m in zip(ids, mask, strict=True)]
        media = set(media_token_ids(self.processor))
        by_media: dict = {}
        for i, q in enumerate(queries):
            by_media.setdefault(tuple(q.media), []).append(i)
        plan = []  # (representative row, prompt length, member rows)
        for members in by_media.values():
            cut = min(_common_prefix([rows[i] for i in members]),
                      min(len(rows[i]) for i in members) - 1)
            if len(members) > 1 and any(t in media for i in members for t in rows[i][cut:]):
                plan += [(i, len(rows[i]) - 1, [i]) for i in members]
            else:
                plan.append((members[0], cut, members))
        prompts = self._inputs([queries[i] for i, _, _ in plan])
        kept = [rows[i][:cut] for i, cut, _ in plan]
        prefixes = dict(prompts, **_left_padded(kept, self._pad_id(), ids.device))
        if "mm_token_type_ids" in prompts:
            types = [row[m.bool()].tolist()[:cut] for row, m, (_, cut, _) in
                     zip(prompts["mm_token_type_ids"], prompts["attention_mask"], plan, strict=True)]
            prefixes["mm_token_type_ids"] = _left_padded(types, 0, ids.device)["input_ids"]
        owner = [0] * len(rows)
        for g, (_, _, members) in enumerate(plan):
            for i in members:
                owner[i] = g
        suffix = _left_padded([rows[i][plan[owner[i]][1]:] for i in range(len(rows))],
                              self._pad_id(), ids.device)
        config = self.model.generation_config
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        new, steps = greedy_from_prefixes(
            self.model, prefixes, torch.tensor(owner, device=ids.device),
            suffix["input_ids"], suffix["attention_mask"], full_ids=ids,
            max_new_tokens=self.max_new_tokens, processors=self._processors(),
            stop=stop or (lambda x, _: torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)),
            eos_ids=eos, pad_id=self._pad_id(), keep_logits=logits)
        return _Decoded(torch.cat([ids, new], dim=1), steps if logits else None)

    def _processors(self):
        """The logits processors ``generate`` applies in greedy decoding with this
        judge's settings and the checkpoint's generation config: its repetition penalty
        and the suppressed media tokens. Other processors of the config are refused."""
        from transformers import LogitsProcessorList
        from transformers.generation import (
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
        )

        config = self.model.generation_config
        unsupported = {name: getattr(config, name, None) for name in _UNSHARED_SETTINGS}
        unsupported = {k: v for k, v in unsupported.items()
                       if v not in (None, 0, [], (), {}) and not (k.endswith("penalty") and v == 1.0)}
        if unsupported:
            raise ValueError(f"share_prefix decodes greedily with a repetition penalty and "
                             f"suppressed tokens only; the checkpoint's generation config "
                             f"also sets {unsupported}: judge with share_prefix off")
        out = LogitsProcessorList()
        if config.repetition_penalty not in (None, 1.0):
            out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        suppress = sorted(set(self._suppress or ()) | set(config.suppress_tokens or ()))
        if suppress:
            out.append(SuppressTokensLogitsProcessor(suppress, device=self._device()))
        return out

    def _decoding(self) -> dict:
        """Greedy decoding settings shared by both modes."""
        return dict(max_new_tokens=self.max_new_tokens, do_sample=False,
                    pad_token_id=self._pad_id(), suppress_tokens=self._suppress)

    def _pad_id(self):
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # -- fast mode -------------------------------------------------------------------------
    def evidence_sentences(self, query) -> int:
        """Evidence sentences kept when a model writes no verdict: one per image or clip
        judged (and, with generation checks, one more per image or clip: its check), or
        one for the context of an understanding task and (with answer checks) two per
        answer checked: its claims (or restatement) and its mark."""
        if self.templates.answer_style == "bare":
            return 0
        if is_generation(query.task):
            return len(query.media) + self.templates.checked_candidates(query)
        return 1 + 2 * self.templates.checked_answers(query)

    def _fast(self, queries) -> list[Judgment]:
        # Pointwise scales whose values do not start with distinct tokens (with a
        # digit-by-digit tokenizer, 1 and 10 both start with "1") are decoded and parsed.
        slow = [i for i, r in enumerate(queries)
                if r.form == "pointwise" and (self._score_tokens(r.scale, " ") is None
                                              or self._score_tokens(r.scale, "") is None)]
        fast = [i for i in range(len(queries)) if i not in set(slow)]
        out: list[Judgment | None] = [None] * len(queries)
        if slow:
            for i, j in zip(slow, self._generate([queries[i] for i in slow]), strict=True):
                out[i] = j
        if fast:
            for i, j in zip(fast, self._fast_decide([queries[i] for i in fast]), strict=True):
                out[i] = j
        return out

    def _verdict_prefix(self, query, sep: str) -> list[int]:
        """The tokens a verdict starts with up to its reading position: the task's noun
        (and the tokens shared before the number), or "Final Score:" (and the tokens
        shared before the value)."""
        if query.form == "pairwise":
            return self._pair_tokens(query.task, sep)[0]
        return self._score_tokens(query.scale, sep)[0]

    def _fast_decide(self, queries) -> list[Judgment]:
        inputs = self._inputs(queries)
        width = inputs["input_ids"].shape[1]
        gen = self._greedy(queries, inputs, _VerdictStop(self.tokenizer, queries, width))
        out: list[Judgment | None] = []
        forced = []
        for i, (r, row) in enumerate(zip(queries, gen.sequences[:, width:].tolist(), strict=True)):
            k, ids = self._verdict_start(r, row)
            # gen.logits: one (batch, vocab) tensor per new token
            logits = [step[i] for step in gen.logits]
            judgment = self._read_own_path(r, ids, k, logits) if k is not None else None
            if judgment is None:
                evidence = ids[:k] if k is not None else _cut_after_sentences(
                    self.tokenizer, ids, self.evidence_sentences(r))
                forced.append((i, evidence))
            out.append(judgment)
        if forced:
            idx = [i for i, _ in forced]
            subset = [queries[i] for i in idx]
            done = self._forced_decide(subset, [ev for _, ev in forced], self._inputs(subset))
            for i, j in zip(idx, done, strict=True):
                out[i] = j
        return out

    def _verdict_start(self, query, ids: list[int]):
        """Where the model's own verdict starts: (token index or None, ids before any
        special token)."""
        special = set(self.tokenizer.all_special_ids)
        end = next((k for k, t in enumerate(ids) if t in special), len(ids))
        ids = ids[:end]
        pieces = [self.tokenizer.decode([t]) for t in ids]
        text = "".join(pieces)
        pattern = _PAIR_START if query.form == "pairwise" else _SCORE_START
        matches = list(pattern.finditer(text))
        if not matches or text != self._decode(ids):
            return None, ids
        at, pos = matches[-1].start(), 0
        for k, piece in enumerate(pieces):
            if pos + len(piece) > at:
                return k, ids
            pos += len(piece)
        return None, ids

    def _read_own_path(self, query, ids, k, logits) -> Judgment | None:
        """The decision from the logits greedy decoding computed on its way through the
        verdict; None when the path does not pass the reading positions in the expected
        tokens (the tie path, an unexpected spelling), and a forced forward reads them."""
        sep = " " if k else ""
        text = self._decode(ids)
        if query.form == "pointwise":
            prefix = self._verdict_prefix(query, sep)
            at = k + len(prefix)
            if ids[k:at] != prefix or at >= len(ids):
                return None
            return self._score_judgment(query, logits[at], text, sep)
        nouns, _ = self._nouns(query.task, sep)
        for which, (prefix, _, _, _) in enumerate(nouns):
            at = k + len(prefix)
            if ids[k:at] == prefix and at < len(ids):
                return self._pair_judgment(query, logits[k], logits[at], text, sep, which)
        return None

    def _pair_judgment(self, query, at_verdict, at_number, text, sep, which=0) -> Judgment:
        nouns, t_tie = self._nouns(query.task, sep)
        probs = _pair_probs(at_verdict, at_number, t_tie, [n[1] for n in nouns], nouns[which][2:])
        return Judgment(query.task, query.form, label=max(probs, key=probs.get), probs=probs,
                        text=text)

    def _score_judgment(self, query, at_value, text, sep) -> Judgment:
        _, values, toks = self._score_tokens(query.scale, sep)
        p = torch.softmax(at_value[toks].float(), dim=0)
        score = float((p * torch.tensor(values, dtype=p.dtype, device=p.device)).sum())
        return Judgment(query.task, query.form, score=score, text=text,
                        probs={f"{v:g}": float(q) for v, q in zip(values, p, strict=True)})

    @torch.no_grad()
    def _forced_decide(self, queries, evidence, inputs) -> list[Judgment]:
        """One forward pass over ``prompt + evidence + verdict prefix`` per query."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        seqs, reads = [], []
        for r, p, ev in zip(queries, prompts, evidence, strict=True):
            seqs.append(p + ev + self._verdict_prefix(r, " " if ev else ""))
            reads.append(len(p) + len(ev))
        width = max(len(s) for s in seqs)
        fwd = dict(inputs, **_left_padded(seqs, self._pad_id(), ids.device))
        if "mm_token_type_ids" in inputs:
            types = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, (row, m) in enumerate(zip(inputs["mm_token_type_ids"], mask, strict=True)):
                t = row[m.bool()].cpu()
                types[i, width - len(seqs[i]):width - len(seqs[i]) + len(t)] = t
            fwd["mm_token_type_ids"] = types.to(ids.device)
        logits = self.model(**fwd).logits.float()
        out = []
        for i, (r, s, ev) in enumerate(zip(queries, seqs, evidence, strict=True)):
            text, sep = self._decode(ev), " " if ev else ""
            if r.form == "pairwise":
                out.append(self._pair_judgment(r, logits[i, width - len(s) + reads[i] - 1],
                                               logits[i, -1], text, sep))
            else:
                out.append(self._score_judgment(r, logits[i, -1], text, sep))
        return out

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _branch(self, after: str, options: list[str]) -> tuple[list[int], list[int]]:
        """How ``after + option`` tokenizes for each option: the tokens all options share
        right after ``after`` (a lone space, with a tokenizer that splits digits from the
        space before them), and the first token where they part. Checks that ``after``
        tokenizes the same on its own as at the start of each whole string."""
        head = self._ids(after)
        seqs = []
        for option in options:
            whole = self._ids(after + option)
            if whole[:len(head)] != head or len(whole) == len(head):
                raise ValueError(f"fast judging needs {after + option!r} to tokenize as "
                                 f"{after!r} + {option!r}; use mode: generate")
            seqs.append(whole[len(head):])
        common = 0
        while all(len(q) > common + 1 for q in seqs) and len({q[common] for q in seqs}) == 1:
            common += 1
        firsts = [q[common] for q in seqs]
        if len(set(firsts)) != len(firsts):
            raise ValueError(f"the options {options} after {after!r} do not part at one token; "
                             "use mode: generate")
        return seqs[0][:common], firsts

    def _pair_tokens(self, task: str, sep: str):
        """Token ids to read a pairwise verdict: the noun (then its shared continuation)
        against the tie verdict's first token, then "1" against "2"."""
        cache = self.__dict__.setdefault("_pair_tok", {})
        key = (task, sep)
        if key not in cache:
            noun = candidate_noun(task)
            tie = pairwise_verdict(task, "tie")
            _, (t_noun, t_tie) = self._branch("", [sep + noun, sep + tie])
            shared, (t_one, t_two) = self._branch(sep + noun, [" 1 is better", " 2 is better"])
            cache[key] = (self._ids(sep + noun) + shared, t_noun, t_tie, t_one, t_two)
        return cache[key]

    def _nouns(self, task: str, sep: str):
        """``([(prefix ids, first token, "1" token, "2" token), ...], tie token)``: the
        task's candidate noun first, then the other tasks' nouns. A verdict is read as
        "some candidate" against the tie, whichever noun the judge names its candidates
        with (generate mode parses them all alike; a judge trained on images alone
        says "Image 1 is better" of two videos, and that is still a decision)."""
        cache = self.__dict__.setdefault("_noun_tok", {})
        key = (task, sep)
        if key not in cache:
            prefix, t_noun, t_tie, t_one, t_two = self._pair_tokens(task, sep)
            nouns = [(prefix, t_noun, t_one, t_two)]
            for noun in ("Image", "Video", "Answer"):
                if noun == candidate_noun(task):
                    continue
                try:
                    _, (t_other, _) = self._branch("", [sep + noun, sep + pairwise_verdict(task, "tie")])
                    shared, (o1, o2) = self._branch(sep + noun, [" 1 is better", " 2 is better"])
                except ValueError:
                    continue
                if t_other != t_tie and t_other not in {n[1] for n in nouns}:
                    nouns.append((self._ids(sep + noun) + shared, t_other, o1, o2))
            cache[key] = (nouns, t_tie)
        return cache[key]

    def _score_tokens(self, scale, sep: str):
        """``(prefix ids, values, first value tokens)`` for reading a score after
        "Final Score:", or None when the values do not part at one token (with a
        tokenizer that splits digits, 1 and 10 both start with "1").

        The values are the scale's integers when it spans at most 10, else ``score_steps``
        even steps (0-100 -> 0, 25, 50, 75, 100)."""
        cache = self.__dict__.setdefault("_score_tok", {})
        key = (tuple(scale), sep)
        if key not in cache:
            lo, hi = scale
            step = 1 if hi - lo <= 10 else (hi - lo) / self.score_steps
            values = [lo + k * step for k in range(int(round((hi - lo) / step)) + 1)]
            try:
                shared, firsts = self._branch(f"{sep}Final Score:",
                                              [f" {format_score(v)}" for v in values])
            except ValueError:
                cache[key] = None
            else:
                cache[key] = (self._ids(f"{sep}Final Score:") + shared, values, firsts)
        return cache[key]


@dataclass
class JudgeEnsemble:
    """Several judges as one (judges of other seeds or recipes): every question is asked
    of each, and the answers are pooled. A judge's systematic errors (a colour it
    mistakes for another, a place it sees everywhere) become the policy's when DPO
    learns from its pairs; judges that err in different ways dilute each other's.

    Pairwise: the mean of the judges' probabilities, the label the most probable; without
    probabilities (generate mode), the label most judges give, a tie when the first two
    labels are level, undecided when none decides. Pointwise: the mean score (undecided
    when a judge's does not parse) and the mean distribution."""

    judges: list

    def __post_init__(self):
        if not self.judges:
            raise ValueError("an ensemble needs at least one judge")

    @property
    def pair_from(self) -> str:
        return self.judges[0].pair_from

    @torch.no_grad()
    def __call__(self, queries: Sequence[JudgeQuery | PreferenceRecord],
                 memo: dict | None = None) -> list[Judgment]:
        memo = {} if memo is None else memo
        each = [judge(queries, memo=memo.setdefault(("ensemble member", k), {}))
                for k, judge in enumerate(self.judges)]
        return [pooled(list(js)) for js in zip(*each, strict=True)]


def pooled(judgments: list[Judgment]) -> Judgment:
    """One judgment from several judges' judgments of the same question."""
    first = judgments[0]
    text = "\n===\n".join(j.text for j in judgments)
    if len(judgments) == 1:
        return first
    probs = None
    if all(j.probs is not None for j in judgments):
        keys = first.probs.keys()
        probs = {k: sum(j.probs[k] for j in judgments) / len(judgments) for k in keys}
    if first.form == "pointwise":
        scores = [j.score for j in judgments]
        score = None if None in scores else sum(scores) / len(scores)
        return Judgment(first.task, first.form, score=score, text=text, probs=probs)
    if probs is not None:
        label = max(probs, key=probs.get)
    else:
        votes = Counter(j.label for j in judgments if j.label is not None).most_common()
        label = (None if not votes else
                 "tie" if len(votes) > 1 and votes[0][1] == votes[1][1] else votes[0][0])
    swapped = {j.label_swapped for j in judgments}
    return Judgment(first.task, first.form, label=label, text=text, probs=probs,
                    label_swapped=swapped.pop() if len(swapped) == 1 else None)


@dataclass
class _Decoded:
    """What :meth:`Judge._shared_greedy` returns, named as ``generate``'s output."""

    sequences: torch.Tensor
    logits: tuple


# Generation-config settings whose logits processors the shared-prefix decoding does not
# apply (greedy decoding applies them in ``generate``).
_UNSHARED_SETTINGS = ("no_repeat_ngram_size", "bad_words_ids", "min_new_tokens", "min_length",
                      "forced_bos_token_id", "forced_eos_token_id", "begin_suppress_tokens",
                      "sequence_bias", "encoder_repetition_penalty")


def _common_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares."""
    n = min(len(r) for r in rows)
    for k in range(n):
        if len({r[k] for r in rows}) > 1:
            return k
    return n


def _left_padded(rows: list[list[int]], pad: int, device) -> dict:
    """Rows padded on the left, with their attention mask, on ``device``."""
    return {"input_ids": pad_rows(rows, pad, left=True).to(device),
            "attention_mask": pad_rows([[1] * len(r) for r in rows], 0, left=True).to(device)}


class _VerdictStop:
    """Stops each row once its verdict is written far enough to read the decision
    (pairwise: "Image 1 is"; pointwise: "Final Score: 4")."""

    def __init__(self, tokenizer, queries, width):
        self.tokenizer, self.width = tokenizer, width
        self.patterns = [_PAIR_START if r.form == "pairwise" else _SCORE_DONE for r in queries]

    def __call__(self, input_ids, scores, **kwargs):
        rows = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        done = [p.search(text) is not None for p, text in zip(self.patterns, rows, strict=True)]
        return torch.tensor(done, device=input_ids.device)


_LOCAL = "unhashable"


def _memo_key(q: JudgeQuery):
    """What makes two questions the same: equal fields. A query whose fields cannot be
    hashed (a list given for a tuple) is its own question."""
    try:
        hash(q)
    except TypeError:
        return (_LOCAL, id(q))
    return q


def _is_local(key) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and key[0] is _LOCAL


def _pair_probs(at_verdict, at_number, t_tie, noun_tokens, number_tokens) -> dict[str, float]:
    """p(first), p(second), p(tie): any candidate noun against the tie's first token,
    then "1" against "2" after the noun."""
    first = torch.softmax(at_verdict[[t_tie, *noun_tokens]].float(), dim=0)
    p_tie = float(first[0])
    which = torch.softmax(at_number[list(number_tokens)].float(), dim=0)
    return {"first": (1 - p_tie) * float(which[0]), "second": (1 - p_tie) * float(which[1]),
            "tie": p_tie}


def _from_points(query, a: Judgment, b: Judgment) -> Judgment:
    """A pairwise judgment from the pointwise judgments of its two candidates."""
    text = f"{a.text}\n---\n{b.text}"
    if a.score is None or b.score is None:
        return Judgment(query.task, "pairwise", text=text)
    probs = None
    if a.probs is not None and b.probs is not None:
        pa = {float(v): p for v, p in a.probs.items()}
        pb = {float(v): p for v, p in b.probs.items()}
        above = sum(p * q for va, p in pa.items() for vb, q in pb.items() if va > vb)
        level = sum(p * q for va, p in pa.items() for vb, q in pb.items() if va == vb)
        first = above + level / 2
        probs = {"first": first, "second": 1 - first, "tie": 0.0}
        margin = probs["first"] - probs["second"]
    else:
        margin = a.score - b.score
    label = "first" if margin > 0 else "second" if margin < 0 else "tie"
    return Judgment(query.task, "pairwise", label=label, text=text, probs=probs)


def _with_points(verdict: Judgment, points: Judgment) -> Judgment:
    """The verdict and the points' decision together (``pair_from: both``)."""
    text = f"{verdict.text}\n---\n{points.text}"
    if verdict.probs is not None and points.probs is not None:
        probs = {k: (verdict.probs[k] + points.probs[k]) / 2 for k in ("first", "second", "tie")}
        return replace(verdict, label=max(probs, key=probs.get), probs=probs, text=text)
    return replace(verdict, label=_agreed(verdict.label, points.label), probs=None, text=text)


def _agreed(a: str | None, b: str | None) -> str | None:
    """Two labels without probabilities as one: the label where they agree or only one
    decides, a tie where they disagree."""
    if a is None or b is None:
        return a or b
    return a if a == b else "tie"


def media_token_ids(processor) -> list[int]:
    """The ids of the processor's image and video placeholder tokens."""
    tokens = [getattr(processor, name, None) for name in ("image_token", "video_token")]
    ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in tokens if t]
    return [i for i in ids if i is not None and i != processor.tokenizer.unk_token_id]


def _cut_after_sentences(tokenizer, ids: list[int], n: int) -> list[int]:
    if n == 0:
        return []
    count = 0
    special = set(tokenizer.all_special_ids)
    for k, t in enumerate(ids):
        if t in special:
            return ids[:k]
        count += tokenizer.decode([t]).count(".")
        if count >= n:
            return ids[:k + 1]
    return ids


def _clip(score, scale):
    if score is None:
        return None
    lo, hi = scale
    return min(max(score, lo), hi)


def _as_media(x, task) -> Media:
    if isinstance(x, Media):
        return x
    kind = "image" if task.startswith("image") else "video"
    if hasattr(x, "save"):  # PIL image
        buf = io.BytesIO()
        x.save(buf, format="PNG")
        return Media(kind="image", data=buf.getvalue(), field="query")
    if x is None:
        raise ValueError(f"{task} needs an {kind}")
    p = Path(x)
    if kind == "video" and p.is_dir():
        return Media(kind="frames", path=str(p.resolve()), field="query")
    return Media(kind=kind, path=str(p.resolve()), field="query")
