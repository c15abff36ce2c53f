"""Prompt templates: how a record becomes the judge's user turn and its target answer.

Each task and form has an instruction template (a format string over ``{prompt}``,
``{response_1}``, ``{response_2}``, ``{response}``, ``{low}``, ``{high}``) that ends by
naming the answer convention of the released judges (FACTS.md section 1), so a
released UnifiedReward checkpoint understands our prompts and its answers parse.

Targets state the visual evidence before the verdict when a record carries evidence
(``answer_style="evidence"``): "Image 1 shows ... Image 2 shows ... Image 1 is
better". A tiny judge learns that form where a bare verdict stays at chance
(MEASURED.md, Learnability); ``answer_style="bare"`` gives the verdict alone, for the
ablation. With ``answer_checks``, understanding targets also check each answer against
the evidence when the record knows how right its answers are: "The image shows a red
circle on the left. Answer 1: red vs red yes. Right. Answer 2: blue vs red no. Wrong.
Answer 1 is better" (``check_style="claims"``: each claimed value beside the value the
evidence gives, so every comparison is between neighbouring words) or "... Answer 1: It
is red. Right. ..." (``"restate"``). A tiny model learns claims from text in a few
hundred steps; the quickstart's judge learns them from images within its budget when
text views of understanding records (the evidence written in the prompt,
``text_view``) are mixed into its batches (docs/tiny_base.md). Records that ship a
verbatim conversation (``instruction``/``target``) are used as they are, except that
with claims checks a pointwise target gets the answer its instruction embeds checked.

Every template is a plain dataclass field, so an experiment YAML can override any of
them (``data.init_args.templates.image_generation_pairwise: ...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ur.data.answers import candidate_noun, format_score, pairwise_verdict, pointwise_verdict
from ur.data.records import PreferenceRecord, RecordError, is_generation
from ur.data.synthetic.language import answer_claims, caption_claims, shown_and_defects

_PAIR_END = ('Describe each {kind}, then end with "{noun} 1 is better", "{noun} 2 is better" or '
             '"Both {plural} are equally good".')
_POINT_END = 'Describe the {kind}, then end with "Final Score: X" (X from {low} to {high}).'


@dataclass
class PromptTemplates:
    """The judge's prompts, one per task and form; every field can be set from YAML."""

    image_generation_pairwise: str = (
        'Caption: "{prompt}". Which generated image matches the caption better and looks '
        'better? ' + _PAIR_END.format(kind="image", noun="Image", plural="images"))
    """Caption + two images. Placeholders: {prompt}."""
    image_generation_pointwise: str = (
        'Caption: "{prompt}". Rate how well the generated image matches the caption and how '
        'good it looks. ' + _POINT_END.format(kind="image", low="{low}", high="{high}"))
    """Caption + one image. Placeholders: {prompt}, {low}, {high}."""
    video_generation_pairwise: str = (
        'Caption: "{prompt}". Which generated video matches the caption, motion included, '
        'better and looks better? ' + _PAIR_END.format(kind="video", noun="Video", plural="videos"))
    """Caption + two videos. Placeholders: {prompt}."""
    video_generation_pointwise: str = (
        'Caption: "{prompt}". Rate how well the generated video matches the caption, motion '
        'included, and how good it looks. '
        + _POINT_END.format(kind="video", low="{low}", high="{high}"))
    """Caption + one video. Placeholders: {prompt}, {low}, {high}."""
    image_understanding_pairwise: str = (
        'Question: {prompt}\nAnswer 1: {response_1}\nAnswer 2: {response_2}\n'
        'Which answer is more correct for the image? '
        'Describe the image, then end with "Answer 1 is better", "Answer 2 is better" or '
        '"Both answers are equally good".')
    """Image + question + two answers. Placeholders: {prompt}, {response_1}, {response_2}."""
    image_understanding_pointwise: str = (
        'Question: {prompt}\nAnswer: {response}\nRate how correct the answer is for the image. '
        + _POINT_END.format(kind="image", low="{low}", high="{high}"))
    """Image + question + one answer. Placeholders: {prompt}, {response}, {low}, {high}."""
    video_understanding_pairwise: str = (
        'Question: {prompt}\nAnswer 1: {response_1}\nAnswer 2: {response_2}\n'
        'Which answer is more correct for the video? '
        'Describe the video, then end with "Answer 1 is better", "Answer 2 is better" or '
        '"Both answers are equally good".')
    """Video + question + two answers. Placeholders: {prompt}, {response_1}, {response_2}."""
    video_understanding_pointwise: str = (
        'Question: {prompt}\nAnswer: {response}\nRate how correct the answer is for the video. '
        + _POINT_END.format(kind="video", low="{low}", high="{high}"))
    """Video + question + one answer. Placeholders: {prompt}, {response}, {low}, {high}."""
    answer_style: str = "evidence"
    """``evidence``: state what each image/clip shows, then the verdict; ``bare``: verdict only."""
    answer_checks: bool = False
    """Understanding targets (``evidence`` style, records that know how right their
    answers are): after the evidence, check each answer ("Right.", "Partly right." or
    "Wrong."), then the verdict. Off by default (the published answer format); the
    quickstart turns it on, with text views of understanding records, and its tiny judge
    learns understanding verdicts that way (docs/tiny_base.md, "Text views")."""
    check_style: str = "claims"
    """How ``answer_checks`` writes a check. ``claims``: each value the answer claims beside
    the value the evidence gives, and whether they agree, then the mark ("Answer 1: blue
    vs red no, circle vs circle yes. Partly right."): every decision is between
    neighbouring words. Claims are read with the synthetic world's grammar; an answer
    outside it is restated. ``restate``: the answer restated, then its mark ("Answer 1:
    It is blue. Wrong."), slower to learn (docs/tiny_base.md)."""

    generation_checks: bool = False
    """Generation targets (``evidence`` style, records with evidence for every image or
    clip and a caption in the synthetic world's grammar): after each picture's evidence,
    check it against the caption, each value the caption asks for beside the value the
    picture shows, then the defects, and count the faults ("Image 1 shows a red square
    on the left, blurry. Image 1: red vs red yes, circle vs square no, left vs left yes,
    blurry; 2 faults."). The picture with fewer
    faults is the better one on nearly every pair of the world, so the verdict follows
    from two numbers. Off by default (the published answer format)."""

    text_view: str = "Text: {evidence}.\n"
    """What a text view's user turn starts with, before the instruction, in place of the
    media (``PreferenceDataModule(text_views=...)``, and the judge's ``describe_first``).
    Placeholder: {evidence}."""

    describe_image: str = "Describe the image."
    """What a judge with ``describe_first`` asks about each image on its own, before it
    sees the caption, question or answers (:class:`ur.reward.judge.Judge`)."""
    describe_video: str = "Describe the video."
    """The same for each video."""

    def __post_init__(self):
        if self.answer_style not in ("evidence", "bare"):
            raise ValueError(f"answer_style must be 'evidence' or 'bare', got {self.answer_style!r}")
        if self.check_style not in ("restate", "claims"):
            raise ValueError(f"check_style must be 'restate' or 'claims', got {self.check_style!r}")

    def template(self, task: str, form: str) -> str:
        return getattr(self, f"{task}_{form}")

    def instruction(self, record: PreferenceRecord) -> str:
        """The user turn's text (the media themselves are placed by the collate)."""
        if record.instruction is not None:
            return record.instruction
        return self.render(record.task, record.form, record.prompt, record.responses,
                           record.scale)

    def render(self, task: str, form: str, prompt: str, responses=(), scale=None) -> str:
        """An instruction from its parts: what the judge is asked at inference time."""
        fields = {"prompt": prompt}
        if form == "pointwise":
            lo, hi = scale
            fields.update(low=format_score(lo), high=format_score(hi))
        if not is_generation(task):
            if form == "pairwise":
                fields.update(response_1=responses[0], response_2=responses[1])
            else:
                fields.update(response=responses[0])
        return self.template(task, form).format(**fields)

    def text_view_instruction(self, record: PreferenceRecord) -> str:
        """The user turn of a record's text view: its evidence as text, then its own
        instruction (which still names the image or video). Needs evidence."""
        if not record.evidence:
            raise RecordError("a text view needs the record's evidence (the synthetic "
                              "world's records carry it)", row=record.id,
                              field="evidence")
        return self.text_view.format(evidence="; ".join(record.evidence)) + self.instruction(record)

    def description_target(self, kind: str, evidence: str) -> str:
        """What a picture described on its own shows, as a judge is trained to write it:
        the first sentence of its evidence ("The image shows a red circle on the left.")."""
        return f"The {kind} shows {evidence}."

    def describe(self, kind: str) -> str:
        """The instruction that asks for one image's (``kind`` image) or clip's description."""
        return self.describe_image if kind == "image" else self.describe_video

    def evidence_text(self, record: PreferenceRecord) -> str:
        """The sentences stating what each image or clip shows, or "" without evidence."""
        if self.answer_style == "bare" or not record.evidence:
            return ""
        if is_generation(record.task):
            noun = candidate_noun(record.task)
            checked = self.checked_candidates(record)
            if len(record.evidence) == 1:
                text = self.description_target(noun.lower(), record.evidence[0]) + " "
                return text + (self.generation_check(record, noun, 0) if checked else "")
            # Each picture's check follows its own description, so the values it compares
            # are a few words back, not behind the other picture's description.
            return "".join(f"{noun} {i} shows {ev}. "
                           + (self.generation_check(record, f"{noun} {i}", i - 1) if checked else "")
                           for i, ev in enumerate(record.evidence, start=1))
        return (self.description_target(record.modality, record.evidence[0]) + " "
                + self.checks_text(record))

    def generation_check(self, record: PreferenceRecord, name: str, i: int) -> str:
        """Picture ``i`` of a generation record checked against the caption ("Image 1:
        red vs red yes, circle vs square no, left vs left yes, blurry; 2 faults. ")."""
        ev = record.evidence[i]
        return generation_check(name, caption_claims(record.prompt, ev),
                                shown_and_defects(ev)[1]) + " "

    def checked_candidates(self, record: PreferenceRecord) -> int:
        """How many images or clips ``generation_checks`` checks in the record's target:
        each, when the caption is in the world's grammar, else none. 0 with checks off and
        for understanding records."""
        if not (self.generation_checks and self.answer_style == "evidence"
                and is_generation(record.task) and record.target is None):
            return 0
        if caption_claims(record.prompt, "no shape") is None:
            return 0
        return len(record.evidence or record.media)

    def checks_text(self, record: PreferenceRecord) -> str:
        """Each answer checked ("Answer 1: blue vs red no. Wrong. "), or "" when checks are
        off or the record does not know how right its answers are."""
        if not self.answer_checks or is_generation(record.task) or record.response_scores is None:
            return ""
        names = ["Answer"] if len(record.responses) == 1 else [
            f"Answer {i}" for i in range(1, len(record.responses) + 1)]
        evidence = record.evidence[0] if record.evidence else None
        return "".join(self.check(name, record.prompt, text, score, evidence) + " "
                       for name, text, score in zip(names, record.responses,
                                                    record.response_scores, strict=True))

    def check(self, name: str, question: str, answer: str, score: float,
              evidence: str | None) -> str:
        """One answer checked in ``check_style``, named ``name`` ("Answer 1")."""
        claims = (self.check_style == "claims" and evidence is not None
                  and answer_claims(question, answer, evidence))
        return claims_check(name, claims, score) if claims else answer_check(name, answer,
                                                                             score)

    def checked_answers(self, record: PreferenceRecord) -> int:
        """How many answers are checked before the verdict: in ``target(record)`` when the
        record carries what its checks need, else (a record judged at inference) in what
        a judge trained with these templates writes: each response, or the answer a
        verbatim pointwise instruction embeds ("Question: ...\nAnswer: ...", claims
        style). 0 without checks."""
        if not self.answer_checks or is_generation(record.task):
            return 0
        if record.target is not None:  # verbatim: only an embedded answer is ever checked
            if record.evidence:
                return int(self._checked_verbatim(record) is not None)
            return int(self._embeds_answer(record))
        if not record.responses:
            return int(self._embeds_answer(record))
        return len(record.responses)

    def _embeds_answer(self, record: PreferenceRecord) -> bool:
        return (self.check_style == "claims" and record.form == "pointwise"
                and not record.responses
                and embedded_answer(record.instruction or record.prompt) is not None)

    def target(self, record: PreferenceRecord) -> str:
        """The assistant turn the judge is trained to produce for this record."""
        if record.target is not None:
            return self._checked_verbatim(record) or record.target
        if record.form == "pairwise":
            verdict = pairwise_verdict(record.task, record.label)
        else:
            verdict = pointwise_verdict(record.score)
        return self.evidence_text(record) + verdict

    def _checked_verbatim(self, record: PreferenceRecord) -> str | None:
        """A verbatim pointwise target ("The image shows X. Final Score: 3") with its
        embedded answer checked after the evidence, when checks are on and the target
        starts with the evidence; else None. How right the answer is comes from its
        claims; an answer whose claims cannot be read ("It is equally.") is restated and
        marked by the record's score."""
        if not (self.answer_checks and not is_generation(record.task) and record.evidence
                and record.target is not None and self._embeds_answer(record)):
            return None
        lead = self.description_target(record.modality, record.evidence[0]) + " "
        if not record.target.startswith(lead):
            return None
        question, answer = embedded_answer(record.instruction or record.prompt)
        claims = answer_claims(question, answer, record.evidence[0])
        if claims:
            check = claims_check("Answer", claims, sum(c == t for c, t in claims) / len(claims))
        else:
            lo, hi = record.scale
            check = answer_check("Answer", answer, (record.score - lo) / (hi - lo))
        return lead + check + " " + record.target[len(lead):]


_EMBEDDED = re.compile(r"^Question: (?P<q>[^\n]+)\nAnswer: (?P<a>[^\n]+)\n")


def embedded_answer(instruction: str) -> tuple[str, str] | None:
    """(question, answer) from an instruction written with a pointwise understanding
    template ("Question: ...\nAnswer: ...\n..."), or None."""
    m = _EMBEDDED.match(instruction)
    return (m["q"], m["a"]) if m else None


def with_embedded_answer(record: PreferenceRecord, old: str, new: str) -> PreferenceRecord:
    """``record`` with the answer its verbatim instruction embeds (``old``, as
    :func:`embedded_answer` reads it) replaced by ``new``, in the prompt too when the
    prompt is the instruction."""
    instruction = record.instruction.replace(f"\nAnswer: {old}\n", f"\nAnswer: {new}\n", 1)
    return replace(record, instruction=instruction,
                   prompt=instruction if record.prompt == record.instruction else record.prompt)


def answer_check(name: str, text: str, score: float) -> str:
    """One answer restated and marked: "Answer 1: It is red. Right."."""
    return f"{name}: {as_sentence(text)} {answer_mark(score)}"


def claims_check(name: str, claims: list[tuple[str, str]], score: float) -> str:
    """One answer's claims checked: "Answer 2: blue vs red no, circle vs circle yes. Partly
    right."."""
    said = ", ".join(f"{c} vs {t} {'yes' if c == t else 'no'}" for c, t in claims)
    return f"{name}: {said}. {answer_mark(score)}"


def generation_check(name: str, claims: list[tuple[str, str]], defects: tuple[str, ...]) -> str:
    """One generated picture checked against its caption: "Image 1: red vs red yes, circle
    vs square no, left vs left yes, blurry; 2 faults."."""
    said = ", ".join([f"{c} vs {t} {'yes' if c == t else 'no'}" for c, t in claims]
                     + list(defects))
    faults = sum(c != t for c, t in claims) + len(defects)
    return f"{name}: {said}; {faults} {'fault' if faults == 1 else 'faults'}."


def answer_mark(score: float) -> str:
    """How an answer's check reads: fully right, fully wrong, or in between."""
    if score >= 1.0:
        return "Right."
    return "Wrong." if score <= 0.0 else "Partly right."


_DESCRIPTION_LEAD = re.compile(r"^(?:the|this) (?:image|video|clip|picture) shows\s+", re.I)


def description(text: str) -> str:
    """What a described image or clip shows, as text views write it: the model's first
    sentence without its lead ("The image shows a red circle on the left. ..." -> "a red
    circle on the left")."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".!? ")
    return _DESCRIPTION_LEAD.sub("", first)


def as_sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."
