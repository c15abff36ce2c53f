"""The judge on a briefly trained tiny model: fast decisions agree with generate-and-parse."""

from collections import Counter
from dataclasses import replace

import lightning as L
import pytest
import torch

from ur.data.collate import IGNORE_INDEX, JudgeCollator
from ur.data.datamodule import PreferenceDataModule, WorldSpec
from ur.data.records import TASKS, JudgeQuery, Media, is_generation
from ur.data.templates import PromptTemplates
from ur.models.tiny import build_tiny_vlm
from ur.pretrain.tiny_vlm import tokenizer_texts
from ur.reward.judge import (
    POINT_SCALES,
    Judge,
    JudgeEnsemble,
    Judgment,
    _from_points,
    pooled,
)
from ur.reward.sft import RewardSFTModule
from ur.training import OptimizerSpec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny judge trained just long enough to answer in the judges' format."""
    root = tmp_path_factory.mktemp("judge")
    world = WorldSpec(out=str(root / "world"), size=160, seed=3, difficulty=0)
    dm = PreferenceDataModule(world=world, batch_size=8, seed=0)
    dm.setup("fit")
    texts = tokenizer_texts(dm.datasets["train"].records, PromptTemplates())
    base = build_tiny_vlm(root / "base", texts=texts, hidden_size=64, num_layers=2, seed=0)
    module = RewardSFTModule(checkpoint=str(base), export=False,
                             optimizer=OptimizerSpec(lr=3e-3, warmup_ratio=0.05))
    dm.processor = module.processor
    torch.manual_seed(0)
    L.Trainer(max_steps=150, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0
              ).fit(module, datamodule=dm)
    module.model.eval()
    dm.setup("test")
    return module, dm


def test_fast_agrees_with_generate_where_generation_parses(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:64]
    queries = [r.query() for r in records]
    fast = Judge(module.model, module.processor, mode="fast", batch_size=16)(queries)
    slow = Judge(module.model, module.processor, mode="generate", batch_size=16,
                 max_new_tokens=64)(queries)
    parsed = [(f, g) for f, g in zip(fast, slow, strict=True) if g.label is not None]
    assert len(parsed) >= 0.5 * len(records), "the trained judge should mostly answer in format"
    agree = sum(f.label == g.label for f, g in parsed) / len(parsed)
    assert agree >= 0.99, f"fast agrees with generate on {agree:.1%} of {len(parsed)} parsed pairs"
    for f in fast:
        assert f.probs is not None and abs(sum(f.probs.values()) - 1) < 1e-5


def test_reading_during_decoding_matches_a_forced_forward(trained):
    """Fast mode reads the verdict's probabilities from the logits greedy decoding computed
    (KV cache); a forced forward pass over prompt + the same evidence + the verdict prefix
    must give the same probabilities: both paths index the same positions."""
    module, dm = trained
    judge = Judge(module.model, module.processor, mode="fast", batch_size=16)
    records = ([r for r in dm.datasets["train"].records if r.form == "pairwise"][:16]
               + [r for r in dm.datasets["train"].records if r.form == "pointwise"
                  and judge._score_tokens(r.scale, " ") is not None][:8])
    own = judge(records)
    inputs = judge._inputs(records)
    width = inputs["input_ids"].shape[1]
    seqs = module.model.generate(**inputs, max_new_tokens=judge.max_new_tokens, do_sample=False,
                                 pad_token_id=judge._pad_id())
    evidence = []
    for r, row in zip(records, seqs[:, width:].tolist(), strict=True):
        k, ids = judge._verdict_start(r, row)
        evidence.append(ids[:k] if k is not None else None)
    checked = [i for i, ev in enumerate(evidence) if ev is not None]
    assert len(checked) >= len(records) // 2, "the trained judge should mostly write verdicts"
    forced = judge._forced_decide([records[i] for i in checked], [evidence[i] for i in checked],
                                  judge._inputs([records[i] for i in checked]))
    for i, f in zip(checked, forced, strict=True):
        assert own[i].probs.keys() == f.probs.keys()
        for key in f.probs:
            assert own[i].probs[key] == pytest.approx(f.probs[key], abs=2e-3), (i, key)


def test_both_orders_report_the_swapped_verdict(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:8]
    queries = [r.query() for r in records]
    judged = Judge(module.model, module.processor, mode="fast", both_orders=True)(queries)
    single = Judge(module.model, module.processor, mode="fast")(queries)
    back = Judge(module.model, module.processor, mode="fast")([q.swapped() for q in queries])
    flip = {"first": "second", "second": "first", "tie": "tie"}
    for j, s, b in zip(judged, single, back, strict=True):
        assert j.label_swapped == flip[b.label]
        avg_first = (s.probs["first"] + b.probs["second"]) / 2
        assert j.probs["first"] == pytest.approx(avg_first, abs=1e-5)


def test_pointwise_scores_stay_on_the_scale(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pointwise"][:16]
    for j, r in zip(Judge(module.model, module.processor, mode="fast")(records), records,
                    strict=True):
        assert j.score is None or r.scale[0] <= j.score <= r.scale[1]


def test_unparsed_answers_are_never_candidate_one(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:8]
    # two new tokens cannot hold a verdict: every answer must come back unparsed
    cut = Judge(module.model, module.processor, mode="generate", max_new_tokens=2)(records)
    assert all(j.label is None and not j.parsed for j in cut)


def test_evidence_kept_without_a_verdict_counts_the_checks(trained):
    """With answer checks, the evidence a verdict is forced after holds the context
    sentence and two sentences per answer checked, embedded answers included."""
    module, dm = trained
    checks = Judge(module.model, module.processor, templates=PromptTemplates(answer_checks=True))
    plain = Judge(module.model, module.processor)
    records = dm.datasets["train"].records
    pair = next(r for r in records if r.task == "image_understanding" and r.form == "pairwise")
    embedded = next(r for r in records if r.task == "image_understanding"
                    and r.form == "pointwise")  # LLaVA-Critic style: the answer in the prompt
    generation = next(r for r in records if r.task == "image_generation" and r.form == "pairwise")
    queries = [r.query() for r in (pair, embedded, generation)]
    assert [checks.evidence_sentences(q) for q in queries] == [5, 3, 2]
    assert [plain.evidence_sentences(q) for q in queries] == [1, 1, 2]
    # The count is what the targets hold, on every understanding record of the world.
    for r in records:
        if not is_generation(r.task):
            assert checks.templates.target(r).count(". ") == checks.evidence_sentences(r.query()), r.id
    # With generation checks, one more sentence per picture: its check, on every record.
    gen = Judge(module.model, module.processor,
                templates=PromptTemplates(answer_checks=True, generation_checks=True))
    assert gen.evidence_sentences(generation.query()) == 4
    for r in records:
        if is_generation(r.task):
            assert gen.templates.target(r).count(". ") == gen.evidence_sentences(r.query()), r.id


def test_a_record_is_judged_as_its_query(trained):
    """The judge never reads labels: a labelled record, its query and the record with
    another label get the same judgment."""
    module, dm = trained
    judge = Judge(module.model, module.processor, mode="fast", both_orders=True)
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:4] + [
        r for r in dm.datasets["train"].records if r.form == "pointwise"][:4]
    relabelled = [replace(r, label={"first": "second", "second": "tie", "tie": "first"}[r.label])
                  if r.form == "pairwise" else replace(r, score=r.scale[0]) for r in records]
    by_record, by_query = judge(records), judge([r.query() for r in records])
    assert by_record == by_query == judge(relabelled)


def test_rank_and_score_ask_one_unlabelled_question(trained):
    module, dm = trained
    judge = Judge(module.model, module.processor, mode="fast")
    records = dm.datasets["train"].records
    gen = next(r for r in records if r.task == "image_generation" and r.form == "pairwise")
    und = next(r for r in records if r.task == "image_understanding" and r.form == "pairwise"
               and r.instruction is None)
    point = next(r for r in records if r.task == "image_generation" and r.form == "pointwise"
                 and r.instruction is None)
    assert judge.rank(gen.task, gen.prompt, *gen.media) == judge([gen])[0]
    assert judge.rank(und.task, und.prompt, *und.responses, media=und.media[0]) == judge([und])[0]
    scored = judge.score(point.task, point.prompt, point.media[0], scale=point.scale)
    assert scored == judge([point])[0] and point.scale[0] <= scored.score <= point.scale[1]


def test_a_query_has_no_target_to_train_on(trained):
    module, dm = trained
    query = dm.datasets["train"].records[0].query()
    assert JudgeCollator(module.processor, with_targets=False)([query])["input_ids"].shape[0] == 1
    with pytest.raises(TypeError, match="no target"):
        JudgeCollator(module.processor)([query])


def test_decoding_never_writes_a_media_placeholder(tmp_path):
    """An untrained model's greedy answers pick image and video placeholders on some of
    these records (the next forward pass then finds more media tokens than media, and
    transformers raises); the judge suppresses the placeholders, so both modes decode
    to the end."""
    from ur.data.datamodule import load_records
    from ur.data.synthetic import write_world
    from ur.reward.judge import media_token_ids

    write_world(tmp_path / "world", size=160, seed=0, difficulty=1)
    spec = WorldSpec(out=str(tmp_path / "world"), size=160)
    train = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
    base = build_tiny_vlm(tmp_path / "tiny", texts=tokenizer_texts(train, PromptTemplates()))
    picked = [r for r in train if r.task in ("video_understanding", "image_generation")][:64]
    for mode in ("fast", "generate"):
        judge = Judge.from_pretrained(base, mode=mode, batch_size=16, max_new_tokens=96)
        assert len(media_token_ids(judge.processor)) == 2
        assert len(judge(picked)) == len(picked)


def test_the_test_loop_logs_the_loss_per_target_token_and_intervals(trained):
    module, dm = trained
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    out = trainer.test(module, datamodule=dm, verbose=False)[0]
    total, tokens = 0.0, 0
    with torch.no_grad():  # by hand: each batch's mean token loss, weighted by its tokens
        for batch in dm.test_dataloader():
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total, tokens = total + float(module(batch).loss) * n, tokens + n
    assert out["test/loss"] == pytest.approx(total / tokens, rel=1e-4)
    for task in ("image_generation", "video_understanding"):
        name = f"test/{task}/pair_acc_tau"
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
    # the world's pairs are also scored per kind of difference, each non-tie pair once
    for task in TASKS:
        untied = [r for r in dm.datasets["test"].records
                  if r.task == task and r.form == "pairwise" and r.label != "tie"]
        per_kind = {k.rsplit("@", 1)[1]: v for k, v in out.items()
                    if k.startswith(f"test/{task}/pair_count@")}
        assert sum(per_kind.values()) == len(untied) == out[f"test/{task}/pair_count"] - sum(
            r.label == "tie" for r in dm.datasets["test"].records
            if r.task == task and r.form == "pairwise")
        kinds = Counter(dm.difference_kinds(untied))
        assert per_kind == pytest.approx(dict(kinds)), task


def test_points_decide_a_pair_from_its_two_candidates_scores(trained):
    """pair_from=points: the label follows P(A > B) + P(A = B) / 2 of the two pointwise
    score distributions the judge gives each candidate on its own."""
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:12]
    judged = Judge(module.model, module.processor, mode="fast", pair_from="points",
                   both_orders=True)(records)
    plain = Judge(module.model, module.processor, mode="fast")
    for r, j in zip(records, judged, strict=True):
        q = r.query()
        a, b = plain([q.candidate(0, POINT_SCALES[r.task]), q.candidate(1, POINT_SCALES[r.task])])
        pa = {float(v): p for v, p in a.probs.items()}
        pb = {float(v): p for v, p in b.probs.items()}
        first = sum(p * pb[w] for v, p in pa.items() for w in pb if v > w) \
            + sum(p * pb[v] for v, p in pa.items() if v in pb) / 2
        assert j.probs["first"] == pytest.approx(first, abs=1e-4)
        assert j.probs["tie"] == 0
        assert j.label == ("first" if first > 0.5 else "second")
        assert j.label_swapped is None  # scores do not depend on the order


def test_points_are_asked_on_the_scales_the_judge_learned(trained):
    """A candidate is scored on the scale of the task's pointwise training records
    (VideoFeedback's 1-4 for video generation, not the 1-10 of other video sets)."""
    _, dm = trained
    learned = {r.task: r.scale for r in dm.datasets["train"].records if r.form == "pointwise"}
    assert learned == POINT_SCALES


def test_both_averages_the_verdict_and_the_points(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:12]
    kwargs = dict(mode="fast", both_orders=True)
    both = Judge(module.model, module.processor, pair_from="both", **kwargs)(records)
    verdict = Judge(module.model, module.processor, **kwargs)(records)
    points = Judge(module.model, module.processor, pair_from="points", **kwargs)(records)
    for b, v, p in zip(both, verdict, points, strict=True):
        for key in ("first", "second", "tie"):
            assert b.probs[key] == pytest.approx((v.probs[key] + p.probs[key]) / 2, abs=1e-5)
        assert b.label == max(b.probs, key=b.probs.get)
        assert b.label_swapped == v.label_swapped


def test_pairs_from_points_by_hand():
    """Generate mode gives scores without distributions: the higher score wins, equal
    scores tie, and a score that did not parse leaves the pair undecided."""
    q = JudgeQuery(task="image_generation", form="pairwise", prompt="a red circle",
                   media=(Media(kind="image", path="/a.png", field="a"),
                          Media(kind="image", path="/b.png", field="b")))

    def point(score, probs=None):
        return Judgment("image_generation", "pointwise", score=score, probs=probs)

    assert _from_points(q, point(4.0), point(3.0)).label == "first"
    assert _from_points(q, point(2.0), point(3.0)).label == "second"
    assert _from_points(q, point(3.0), point(3.0)).label == "tie"
    assert _from_points(q, point(None), point(3.0)).label is None
    assert _from_points(q, point(5.0), point(None)).label is None
    # distributions: A is 1 or 2 (even odds), B is always 1 -> P(A > B) + P(A = B) / 2 = 3/4
    j = _from_points(q, point(1.5, {"1": 0.5, "2": 0.5}), point(1.0, {"1": 1.0, "2": 0.0}))
    assert j.probs == pytest.approx({"first": 0.75, "second": 0.25, "tie": 0.0})
    assert j.label == "first"
    with pytest.raises(ValueError, match="pair_from"):
        Judge(None, None, pair_from="scores")


def _rows_judged(model):
    """A forward hook counting the prompt rows the model is run on (each generate's first
    step sees a batch's whole prompts; later steps one token a row)."""
    rows = []

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            rows.append(ids.shape[0])
    return rows, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_each_distinct_question_is_asked_once(trained):
    """Equal queries in a batch share one judgment, and a memo carries judgments over to
    the next call: the answers are those of asking each question alone."""
    module, dm = trained
    judge = Judge(module.model, module.processor, mode="fast", batch_size=16)
    records = [r for r in dm.datasets["train"].records if r.form == "pointwise"
               and judge._score_tokens(r.scale, " ") is not None][:3]
    queries = [r.query() for r in records]
    alone = [judge([q])[0] for q in queries]
    rows, handle = _rows_judged(module.model)
    try:
        memo = {}
        repeated = judge([queries[0], queries[1], queries[0], queries[1], queries[0]], memo=memo)
        first_call = sum(rows)
        again = judge([queries[1], queries[2]], memo=memo)
    finally:
        handle.remove()
    assert first_call == 2, "two distinct questions, two prompt rows"
    assert sum(rows) == 3, "the second call asks only the question the memo lacks"
    for j, k in zip(repeated + again, [0, 1, 0, 1, 0, 1, 2], strict=True):
        assert j.score == pytest.approx(alone[k].score, abs=1e-4)


def test_sifting_reuses_the_points_ranking_asked(trained):
    """rank_sift with pair_from=both scores every candidate of a ranked pair while ranking;
    point sifting then asks the judge nothing new, and the pairs are those built with
    every question asked afresh."""
    module, dm = trained
    from ur.construct.judged import Pool, build_pairs

    question = next(r for r in dm.datasets["train"].records
                    if r.task == "image_understanding" and r.form == "pairwise")
    answers = ("It is red.", "It is blue.", "It is red.", "It is green.", "It is a circle.",
               "It is blue.")
    pool = Pool(question.id, question.task, question.prompt, question.media, answers,
                tuple(range(len(answers))))
    judge = Judge(module.model, module.processor, mode="fast", pair_from="both", batch_size=64)
    rows, handle = _rows_judged(module.model)
    try:
        built = build_pairs(judge, [pool], method="rank_sift")[0]
    finally:
        handle.remove()
    # 3 pairs: 3 verdicts, and 4 distinct answers scored once each (the ranking's points)
    assert sum(rows) <= 3 + 4, rows
    fresh = Judge(module.model, module.processor, mode="fast", pair_from="both", batch_size=1)
    again = build_pairs(fresh, [pool], method="rank_sift")[0]
    assert (built.chosen, built.rejected, built.dropped) == (again.chosen, again.rejected,
                                                             again.dropped)
    for i, s in built.scores.items():
        assert s == pytest.approx(again.scores[i], abs=1e-3)


def test_an_ensemble_pools_its_judges_by_hand():
    def pair(label, probs=None, swapped=None):
        return Judgment("image_understanding", "pairwise", label=label, probs=probs,
                        text=str(label), label_swapped=swapped)

    # probabilities: their mean decides
    a = pair("first", {"first": 0.6, "second": 0.3, "tie": 0.1}, swapped="first")
    b = pair("second", {"first": 0.2, "second": 0.7, "tie": 0.1}, swapped="first")
    got = pooled([a, b])
    assert got.probs == pytest.approx({"first": 0.4, "second": 0.5, "tie": 0.1})
    assert got.label == "second" and got.label_swapped == "first"
    assert got.text == "first\n===\nsecond"
    # labels alone: the majority, a tie when level, undecided when none decides
    assert pooled([pair("first"), pair("first"), pair("second")]).label == "first"
    assert pooled([pair("first"), pair("second"), pair(None)]).label == "tie"
    assert pooled([pair(None), pair(None)]).label is None
    assert pooled([a, pair("second", swapped="second")]).label_swapped is None
    # points: the mean score, undecided when one does not parse
    pts = [Judgment("image_understanding", "pointwise", score=s) for s in (80.0, 40.0)]
    assert pooled(pts).score == pytest.approx(60.0)
    assert pooled([*pts, Judgment("image_understanding", "pointwise")]).score is None
    with pytest.raises(ValueError, match="at least one judge"):
        JudgeEnsemble([])


def test_an_ensemble_of_one_judge_twice_judges_as_that_judge(trained):
    module, dm = trained
    records = [r for r in dm.datasets["train"].records if r.form == "pairwise"][:8]
    kwargs = dict(mode="fast", pair_from="both", batch_size=16)
    alone = Judge(module.model, module.processor, **kwargs)(records)
    twice = JudgeEnsemble([Judge(module.model, module.processor, **kwargs),
                           Judge(module.model, module.processor, **kwargs)])(records)
    for a, t in zip(alone, twice, strict=True):
        assert t.label == a.label
        for key in a.probs:
            assert t.probs[key] == pytest.approx(a.probs[key], abs=1e-5)
