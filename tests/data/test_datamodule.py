import json

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch  # what Lightning calls
from PIL import Image

from ur.data.collate import IGNORE_INDEX, JudgeCollator
from ur.data.datamodule import CorpusError, PreferenceDataModule, SourceSpec, WorldSpec
from ur.data.records import PreferenceRecord
from ur.data.templates import PromptTemplates
from ur.models.tiny import build_tiny_vlm


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = WorldSpec(out=str(tmp_path_factory.mktemp("dm") / "world"), size=64, seed=1)
    spec.manifest()
    return spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, world):
    from ur.data.datamodule import load_records
    from ur.pretrain.tiny_vlm import tokenizer_texts

    records = [r for recs in load_records(world.sources("train"))[0] for r in recs]
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "m",
                          texts=tokenizer_texts(records, PromptTemplates()))


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny)


def fitted(world, processor, **kwargs) -> PreferenceDataModule:
    """A data module of 4-record batches on ``world``, set up for fitting."""
    dm = PreferenceDataModule(world=world, batch_size=4, **kwargs)
    dm.processor = processor
    dm.setup("fit")
    return dm


def test_labels_cover_exactly_the_assistant_answer(world, processor):
    dm = PreferenceDataModule(world=world, processor=None)
    dm.processor = processor
    dm.setup("fit")
    records = dm.datasets["train"].records[:6]
    batch = dm.collator()(records)
    tok = processor.tokenizer
    templates = PromptTemplates()
    for i, r in enumerate(records):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        answer = tok.decode(ids[labels != IGNORE_INDEX])
        assert answer == templates.target(r) + "<|im_end|>"
        # the masked part is the prompt the judge generates from, exactly
        gen = JudgeCollator(processor, templates=templates, with_targets=False)([r])
        prompt = gen["input_ids"][0][gen["attention_mask"][0].bool()]
        n = int((labels == IGNORE_INDEX).logical_and(mask.bool()).sum())
        assert torch.equal(ids[:n], prompt)
        assert labels[:n].eq(IGNORE_INDEX).all() and labels[n:][mask[n:].bool()].ne(IGNORE_INDEX).all()
    # every record's vision tokens are in the batch
    assert batch["image_grid_thw"].shape[0] + batch.get("video_grid_thw", torch.zeros(0, 3)).shape[0] > 0


def test_task_filter_and_counts(world):
    dm = PreferenceDataModule(world=world, tasks=["image_generation", "video_understanding"],
                              forms=["pairwise"])
    dm.setup("fit")
    summary = dm.summary("train")
    assert set(summary["by_task"]) == {"image_generation", "video_understanding"}
    assert summary["by_form"] == {"pairwise": summary["records"]}
    with pytest.raises(ValueError, match="unknown tasks"):
        PreferenceDataModule(world=world, tasks=["image_gen"])


def test_train_tasks_narrow_training_only(world):
    """A task-ablation arm trains on one task and is still evaluated on all of them."""
    dm = PreferenceDataModule(world=world, train_tasks=["video_generation"])
    dm.setup("fit")
    assert set(dm.summary("train")["by_task"]) == {"video_generation"}
    assert set(dm.summary("val")["by_task"]) == {"image_generation", "video_generation",
                                                 "image_understanding", "video_understanding"}
    with pytest.raises(ValueError, match="must be among tasks"):
        PreferenceDataModule(world=world, tasks=["image_generation"], train_tasks=["video_generation"])


def test_pairwise_order_is_randomized_per_seed(world):
    firsts = []
    for seed in (0, 1):
        dm = PreferenceDataModule(world=world, tasks=["video_generation"], forms=["pairwise"], seed=seed)
        dm.setup("fit")
        firsts.append([r.label for r in dm.datasets["train"].records])
    # VideoDPO lists the chosen clip first; the DataModule must not teach that position
    assert "second" in firsts[0] and firsts[0] != firsts[1]


@pytest.fixture
def broken_source(tmp_path):
    rows = [{"id": str(i), "query": "What colour?", "response": ["red", "blue"], "image": "x.png",
             "human_ranking": [0, 1]} for i in range(3)]
    rows.append({"id": "bad1", "query": "What colour?", "response": ["red"], "image": "x.png",
                 "human_ranking": [0, 1]})
    rows.append({"id": "bad2", "response": ["red", "blue"], "image": "x.png", "human_ranking": [0, 1]})
    path = tmp_path / "vl.json"
    path.write_text(json.dumps(rows))
    Image.new("RGB", (28, 28)).save(tmp_path / "x.png")  # setup decodes the media
    return SourceSpec(name="vl_rewardbench", path=str(path))


def test_strict_by_default_lists_every_problem(broken_source):
    dm = PreferenceDataModule(train=[broken_source], val=[broken_source])
    with pytest.raises(CorpusError) as e:
        dm.setup("fit")
    assert len(e.value.problems) == 2
    assert "row 3" in str(e.value) and "row 4" in str(e.value) and "skip_bad" in str(e.value)


def test_skip_bad_counts_and_caps(broken_source):
    dm = PreferenceDataModule(train=[broken_source], val=[broken_source], skip_bad=True)
    dm.setup("fit")
    assert dm.summary("train")["records"] == 3 and dm.summary("train")["skipped"] == 2
    capped = PreferenceDataModule(train=[broken_source], skip_bad=True, max_bad=1)
    with pytest.raises(CorpusError, match="over the limit of 1"):
        capped.setup("fit")


def test_collate_skips_undecodable_media_only_when_asked(world, processor, tmp_path):
    from dataclasses import replace

    from ur.data.records import Media, RecordError

    dm = PreferenceDataModule(world=world, tasks=["image_generation"], forms=["pointwise"])
    dm.setup("fit")
    good = dm.datasets["train"].records[0]
    (tmp_path / "broken.png").write_bytes(b"")
    bad = replace(good, media=(Media("image", path=str(tmp_path / "broken.png"), field="img_path"),))
    strict = JudgeCollator(processor)
    with pytest.raises(RecordError) as e:
        strict([good, bad])
    assert e.value.field == "img_path" and "empty" in str(e.value)
    lenient = JudgeCollator(processor, skip_bad=True)
    batch = lenient([good, bad])
    assert len(batch["records"]) == 1 and lenient.skipped == 1


def test_text_views_follow_each_training_batch(world, processor):
    """Each training batch is the sampler's records, then ``text_views`` understanding
    records (pairs and single answers) without media, their evidence in the prompt and
    their target unchanged."""
    from ur.data.collate import TextView

    templates = PromptTemplates(answer_checks=True)
    plain = PreferenceDataModule(world=world, batch_size=4, templates=templates)
    viewed = PreferenceDataModule(world=world, batch_size=4, templates=templates, text_views=3)
    for dm in (plain, viewed):
        dm.processor = processor
        dm.setup("fit")
    data = viewed.datasets["train"]
    sampler = viewed.train_dataloader().batch_sampler
    batches = list(sampler)
    assert len(batches) == len(plain.train_dataloader())
    n = len(data)
    # the records part is exactly the plain loader's order
    assert [i for b in batches for i in b if i < n] == list(plain.sampler("train", shuffle=True))
    for b in batches:
        views = [data[i] for i in b[-3:]]
        assert all(i < n for i in b[:-3]) and all(isinstance(v, TextView) for v in views)
        assert len({v.record.id for v in views}) == 3
        assert all(v.record.task.endswith("understanding") and v.record.evidence for v in views)
    forms = {data[i].record.form for b in batches for i in b[-3:]}
    assert forms == {"pairwise", "pointwise"}
    # the same draw again for the same seed and epoch, another for the next epoch
    again = PreferenceDataModule(world=world, batch_size=4, templates=templates, text_views=3)
    again.processor = processor
    again.setup("fit")
    assert list(again.train_dataloader().batch_sampler) == batches
    assert list(sampler) != batches

    batch = viewed.collator()([data[batches[0][0]], data[batches[0][-1]]])
    view = data[batches[0][-1]].record
    part = batch["text_views"]  # the view comes padded on its own
    ids, labels = part["input_ids"][0], part["labels"][0]
    text = processor.tokenizer.decode(ids[part["attention_mask"][0].bool()])
    assert f"Text: {view.evidence[0]}.\n" + templates.instruction(view) in text
    assert processor.image_token not in text and processor.video_token not in text
    assert processor.tokenizer.decode(ids[labels != IGNORE_INDEX]) == templates.target(view) + "<|im_end|>"
    assert [r.id for r in batch["records"]] == [data[batches[0][0]].id]
    # only the media record brings pixels
    grids = batch.get("image_grid_thw", torch.zeros(0, 3)).shape[0] + batch.get(
        "video_grid_thw", torch.zeros(0, 3)).shape[0]
    assert grids == len(data[batches[0][0]].media)
    assert not {"pixel_values", "pixel_values_videos"} & set(part)


def test_text_views_of_generation_records_show_each_pictures_evidence(world, processor):
    from ur.data.collate import TextView

    templates = PromptTemplates(generation_checks=True)
    dm = PreferenceDataModule(world=world, batch_size=4, templates=templates, text_views=3,
                              text_view_tasks=["image_generation", "video_generation"])
    dm.processor = processor
    dm.setup("fit")
    data = dm.datasets["train"]
    views = [data[i] for b in dm.train_dataloader().batch_sampler for i in b[-3:]]
    assert all(isinstance(v, TextView) and v.record.task.endswith("generation") for v in views)
    assert {v.record.form for v in views} == {"pairwise", "pointwise"}
    pair = next(v.record for v in views if v.record.form == "pairwise")
    batch = dm.collator()([data[0], TextView(pair)])["text_views"]
    text = processor.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert f"Text: {pair.evidence[0]}; {pair.evidence[1]}.\n" in text
    labels = batch["labels"][0]
    target = processor.tokenizer.decode(batch["input_ids"][0][labels != IGNORE_INDEX])
    assert target == templates.target(pair) + "<|im_end|>" and "faults." in target
    with pytest.raises(ValueError, match="text_view_tasks"):
        PreferenceDataModule(world=world, text_views=3, text_view_tasks=["image_editing"])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_describe_views_follow_the_text_views(world, processor):
    """``describe_views`` adds single images or clips of the training records after the
    text views, each with the instruction to describe it alone and its evidence as the
    target; the records and text views drawn are those of the run without them."""
    from ur.data.collate import DescribeView, TextView

    templates = PromptTemplates(answer_checks=True)
    viewed = fitted(world, processor, templates=templates, text_views=3)
    described = fitted(world, processor, templates=templates, text_views=3, describe_views=2)
    data = described.datasets["train"]
    batches = list(described.train_dataloader().batch_sampler)
    assert [b[:-2] for b in batches] == list(viewed.train_dataloader().batch_sampler)
    views = [data[i] for b in batches for i in b[-2:]]
    assert all(isinstance(v, DescribeView) for v in views)
    assert {v.record.task for v in views} == {
        "image_generation", "video_generation", "image_understanding", "video_understanding"}
    assert all(isinstance(data[i], TextView) for b in batches for i in b[-5:-2])
    pair = next(v for v in views if v.record.task == "video_generation" and v.index == 1)
    batch = described.collator()([data[0], pair])
    row = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    labels = batch["labels"][1][batch["attention_mask"][1].bool()]
    prompt = processor.tokenizer.decode(row[labels == IGNORE_INDEX])
    assert "Describe the video." in prompt and pair.record.prompt not in prompt
    target = processor.tokenizer.decode(row[labels != IGNORE_INDEX])
    assert target == f"The video shows {pair.record.evidence[1]}.<|im_end|>"
    assert batch["video_grid_thw"].shape[0] == len(data[0].media) * (
        data[0].modality == "video") + 1
    with pytest.raises(ValueError, match="describe_views"):
        PreferenceDataModule(world=world, describe_views=-1)


def test_malformed_views_follow_the_other_views(world, processor):
    """``malformed_views`` adds garbled understanding records after the text and describe
    views: the records and views drawn are those of the run without them, each garbled
    record is one of the training split's with an answer changed, and its target checks
    that answer against the evidence."""
    templates = PromptTemplates(answer_checks=True)
    plain = fitted(world, processor, templates=templates, text_views=3, describe_views=2)
    garbled = fitted(world, processor, templates=templates, text_views=3, describe_views=2,
                     malformed_views=2)
    data = garbled.datasets["train"]
    batches = list(garbled.train_dataloader().batch_sampler)
    assert [b[:-2] for b in batches] == list(plain.train_dataloader().batch_sampler)
    drawn = [data[i] for b in batches for i in b[-2:]]
    originals = {r.id: r for r in data.records}
    assert all(isinstance(m, PreferenceRecord) and m.id.endswith("-malformed") for m in drawn)
    assert {m.task for m in drawn} == {"image_understanding", "video_understanding"}
    for m in drawn:
        r = originals[m.id.removesuffix("-malformed")]
        assert m.media == r.media and m.evidence == r.evidence
        assert (m.responses, m.instruction) != (r.responses, r.instruction)
    pair = next(m for m in data.malformed if m.form == "pairwise" and m.label != "tie")
    target = templates.target(pair)
    assert target.endswith(("Answer 1 is better", "Answer 2 is better"))
    assert ("Wrong." in target or "Partly right." in target) and "Right." in target
    batch = garbled.collator()([data[i] for i in batches[0]])
    assert len(batch["records"]) == 4 + 2 + 2 and batch["text_views"]["input_ids"].shape[0] == 3
    # fixed by the seed: the same garbled copies in another run of the same seed
    again = PreferenceDataModule(world=world, batch_size=4, malformed_views=1)
    again.setup("fit")
    assert again.datasets["train"].malformed == data.malformed
    with pytest.raises(ValueError, match="malformed_views must be >= 0"):
        PreferenceDataModule(world=world, malformed_views=-1)


def test_malformed_views_need_evidence(broken_source, world):
    dm = PreferenceDataModule(train=[broken_source], skip_bad=True, malformed_views=2)
    with pytest.raises(ValueError, match="malformed_views=2 needs understanding records"):
        dm.setup("fit")
    arm = PreferenceDataModule(world=world, train_tasks=["video_generation"], malformed_views=2)
    arm.setup("fit")  # a generation-only arm: nothing to garble, plain batches
    assert arm.datasets["train"].malformed == []


def test_restyle_answers_rewords_a_share_of_the_training_descriptions(world, processor):
    """``restyle_answers`` rewords the description answers of a seeded share of the
    training records in place: the same records in the same order, validation untouched,
    and the same share of records in another run of the same seed."""
    plain = fitted(world, processor)
    half = fitted(world, processor, restyle_answers=0.5)
    every = fitted(world, processor, restyle_answers=1.0)
    before = plain.datasets["train"].records

    def changed(dm):
        return [i for i, (a, b) in enumerate(zip(before, dm.datasets["train"].records,
                                                 strict=True)) if a != b]

    assert [r.id for r in every.datasets["train"].records] == [r.id for r in before]
    assert every.datasets["val"].records == plain.datasets["val"].records
    assert all("Describe the" in before[i].prompt for i in changed(every))
    assert 0 < len(changed(half)) < len(changed(every))
    # a record drawn into the share is reworded as in a run that rewords them all
    assert all(half.datasets["train"].records[i] == every.datasets["train"].records[i]
               for i in changed(half))
    again = fitted(world, processor, restyle_answers=0.5)
    assert again.datasets["train"].records == half.datasets["train"].records
    with pytest.raises(ValueError, match="restyle_answers must be between 0 and 1"):
        PreferenceDataModule(world=world, restyle_answers=1.5)


def test_text_views_padded_apart_give_the_loss_of_one_padded_batch(world, tiny):
    """A training batch's text views are padded to their own longest row, not the
    records', and the training loss over both parts is the mean token loss of the same
    rows padded as one batch."""
    from ur.data.collate import Conversation, ConversationCollator
    from ur.reward.sft import RewardSFTModule

    module = RewardSFTModule(checkpoint=str(tiny), export=False)
    templates = PromptTemplates(answer_checks=True)
    dm = PreferenceDataModule(world=world, batch_size=4, templates=templates, text_views=3)
    dm.processor = module.processor
    dm.setup("fit")
    items = [dm.datasets["train"][i] for i in next(iter(dm.train_dataloader().batch_sampler))]
    batch = dm.collator()(items)
    rows = [batch["attention_mask"].sum(1), batch["text_views"]["attention_mask"].sum(1)]
    assert [len(r) for r in rows] == [4, 3]
    assert [int(r.max()) for r in rows] == [batch["input_ids"].shape[1],
                                            batch["text_views"]["input_ids"].shape[1]]
    whole = ConversationCollator(module.processor)([Conversation.of(x, templates) for x in items])
    assert whole["input_ids"].shape[1] == max(int(r.max()) for r in rows)
    with torch.no_grad():
        apart = module.training_step(batch, 0)
        expected = module(whole).loss
    assert apart.item() == pytest.approx(expected.item(), rel=1e-5)


def test_text_views_need_evidence(broken_source, world, processor):
    dm = PreferenceDataModule(train=[broken_source], skip_bad=True, text_views=2)
    with pytest.raises(ValueError, match="text_views=2 needs records of image_understanding, "
                                         "video_understanding with evidence"):
        dm.setup("fit")
    # a generation-only arm of a task ablation has nothing to view: plain batches
    arm = PreferenceDataModule(world=world, batch_size=4, train_tasks=["image_generation"],
                               text_views=2)
    arm.processor = processor
    arm.setup("fit")
    batch = next(iter(arm.train_dataloader()))
    assert len(batch["records"]) == 4 and all(r.media for r in batch["records"])
    with pytest.raises(ValueError, match="text_views must be >= 0"):
        PreferenceDataModule(world=world, text_views=-1)


def train_loader(world, processor, **kwargs):
    return fitted(world, processor, **kwargs).train_dataloader()


@pytest.mark.parametrize("text_views", [0, 3])
def test_training_batches_follow_an_epoch_set_after_the_iterator(world, processor, text_views):
    """Lightning creates the training iterator, then sets the sampler's epoch. With a
    worker, the batches must still be that epoch's (a resumed run replayed epoch 0's)."""
    def first_ids(set_epoch_after_iter: bool) -> list[str]:
        loader = train_loader(world, processor, num_workers=1, text_views=text_views)
        if not set_epoch_after_iter:
            _set_sampler_epoch(loader, 3)
        it = iter(loader)
        if set_epoch_after_iter:
            _set_sampler_epoch(loader, 3)
        batch = next(it)
        ids = [r.id for r in batch["records"]]
        del it, loader  # stop the worker
        return ids

    at_epoch_3 = first_ids(set_epoch_after_iter=False)
    assert first_ids(set_epoch_after_iter=True) == at_epoch_3
    epoch_0 = next(iter(train_loader(world, processor, text_views=text_views)))
    assert [r.id for r in epoch_0["records"]] != at_epoch_3


@pytest.mark.parametrize("text_views", [0, 3])
def test_training_loader_resumes_within_an_epoch(world, processor, text_views):
    """A training loader given another's state (the epoch and the batches it handed out)
    gives the rest of that epoch; given it at another epoch, that whole epoch."""
    def loader():
        return train_loader(world, processor, num_workers=1, text_views=text_views)

    def ids(batches):
        return [[r.id for r in b["records"]] + [r.id for r in b.get("text_views", {}).get(
            "records", [])] for b in batches]

    first = loader()
    _set_sampler_epoch(first, 2)
    it = iter(first)
    head = [next(it), next(it)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    whole = ids(head + list(it))
    assert len(whole) == len(first) > 3

    again = loader()
    again.load_state_dict(state)
    _set_sampler_epoch(again, 2)
    assert ids(again) == whole[2:]
    assert again.state_dict() == {"epoch": 2, "batches": len(whole)}
    _set_sampler_epoch(again, 2)
    assert ids(again) == whole  # the next pass over that epoch starts at its beginning

    later = loader()
    later.load_state_dict(state)
    _set_sampler_epoch(later, 3)
    assert len(ids(later)) == len(whole)
