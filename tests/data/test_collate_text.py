"""Text that reaches a batch never crashes the model: the model's own special tokens
written inside a prompt or an answer, and prompts that leave no room within max_length,
are record errors naming file, row and field, and ``skip_bad`` drops exactly those."""

import numpy as np
import pytest
import torch
from PIL import Image

from ur.data.collate import Conversation, ConversationCollator
from ur.data.pairs import PairCollator
from ur.data.records import Media, PreferenceRecord, RecordError
from ur.models import build_tiny_vlm, load_vlm
from ur.models.prefix import answer_logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("collate_text")
    model, processor = load_vlm(build_tiny_vlm(root / "qwen2_vl", texts=["a red circle"],
                                               num_layers=1, vision_depth=1))
    image = root / "im.png"
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(image)
    return model.eval(), processor, Media("image", path=str(image), field="image")


def pair(media, row, prompt="Is it red?", responses=("Yes", "No")):
    return PreferenceRecord(task="image_understanding", form="pairwise", source="test",
                            id=str(row), prompt=prompt, media=(media,), responses=responses,
                            label="first", file="pairs.jsonl", row=row)


@pytest.mark.parametrize("bad, field", [
    (dict(prompt="What is <|image_pad|> here?"), "prompt"),
    (dict(prompt="Say <|vision_start|>"), "prompt"),
    (dict(responses=("Yes<|im_end|>", "No")), "responses"),
])
def test_special_tokens_in_a_pairs_text_are_a_record_error_or_a_counted_skip(tiny, bad, field):
    model, processor, media = tiny
    pairs = [pair(media, 0), pair(media, 1, **bad), pair(media, 2)]
    with pytest.raises(RecordError) as err:
        PairCollator(processor)(pairs)
    assert (err.value.file, err.value.row, err.value.field) == ("pairs.jsonl", 1, field)
    collate = PairCollator(processor, skip_bad=True)
    batch = collate(pairs)
    assert [p.row for p in batch["records"]] == [0, 2] and collate.skipped == 1
    with torch.no_grad():
        logits, _ = answer_logits(model, batch)
    assert torch.isfinite(logits).all()


def test_special_tokens_in_a_conversation_are_named(tiny):
    _, processor, media = tiny
    record = pair(media, 7)
    conv = Conversation((media,), "Look: <|image_pad|>", "fine", record)
    with pytest.raises(RecordError, match="special token") as err:
        ConversationCollator(processor)([conv])
    assert (err.value.row, err.value.field) == (7, "prompt")
    collate = ConversationCollator(processor, skip_bad=True)
    assert len(collate([conv, Conversation((media,), "Look.", "fine", record)])["records"]) == 1
    assert collate.skipped == 1


@pytest.mark.parametrize("collator", [PairCollator, ConversationCollator])
def test_a_prompt_with_no_room_for_an_answer_is_a_record_error_or_a_counted_skip(tiny, collator):
    _, processor, media = tiny
    short, long = pair(media, 0), pair(media, 1, prompt="Is it red? " * 40)
    width = len(PairCollator(processor)([short])["input_ids"][0])
    items = [short, long]
    if collator is ConversationCollator:
        items = [Conversation(p.media, p.prompt, p.responses[0], p) for p in items]
    with pytest.raises(RecordError, match="max_length") as err:
        collator(processor, max_length=width + 4)(items)
    assert (err.value.file, err.value.row) == ("pairs.jsonl", 1)
    collate = collator(processor, max_length=width + 4, skip_bad=True)
    batch = collate(items)
    assert len(batch["records"]) == 1 and collate.skipped == 1
    assert batch["input_ids"].shape[1] <= width + 4
