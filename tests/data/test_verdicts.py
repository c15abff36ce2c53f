"""Pairwise verdicts are read from the verdict sentence, not from any word "tie": the
table holds judge answers with the label each must parse to (None: no verdict, which
must never become candidate 1 or a tie)."""

from __future__ import annotations

import pytest

from ur.data.answers import pairwise_verdicts, parse_pairwise

VERDICTS = [
    # a winner beside a tie word that is no verdict
    ("Answer 1 is better; this is not a tie.", "first"),
    ("Image 2 is better after a tie-break.", "second"),
    ("The tie-breaker is colour, so Image 1 is better.", "first"),
    ("Video 2 is better: its motion is tied to the caption.", "second"),
    ("Answer 2 is better. It isn't a tie.", "second"),
    ("It's not a tie: Answer 1 is clearly better.", "first"),
    ("The bow is untied in Image 1, so Image 2 is better.", "second"),
    ("Answer 2 is better despite a tie in fluency.", "second"),
    ("It is a tie on accuracy, but Response 1 is better overall.", "first"),
    ("Rather than call it a tie, I find Answer 2 is slightly better.", "second"),
    # a winner, then a tie that overrules it
    ("Image 1 is better in colour, but overall it is a tie.", "tie"),
    ("Answer 2 is better at grammar; overall, both answers are equally good.", "tie"),
    # ties stated as verdicts
    ("Both images are equally good", "tie"),
    ("Both are equally good.", "tie"),
    ("It is a tie.", "tie"),
    ("It's a tie between the two answers.", "tie"),
    ("Overall Judgment: Tie", "tie"),
    ("Both answers are accurate and complete.\nTie.", "tie"),
    ("Neither answer is better.", "tie"),
    ("I'd call it a tie.", "tie"),
    # winners stated as verdicts, the last one deciding
    ("Image 1 shows a red circle. Image 2 shows a blue one. Image 2 is better", "second"),
    ("Overall Judgment: **Answer 1 is better**", "first"),
    ("Answer 2 is the better one.", "second"),
    ("The user claims \"Answer 1 is better\", but Answer 2 is better.", "second"),
    ("I don't think Answer 1 is better; Answer 2 is better.", "second"),
    # no verdict: quoted, denied, hedged, asked, or only words containing "tie"
    ("The question asks \"is it a tie?\" and the answers disagree.", None),
    ("The prompt says 'Answer 1 is better'.", None),
    ("I don't think Answer 1 is better.", None),
    ("Answer 1 is not better than Answer 2.", None),
    ("It is not a tie.", None),
    ("Say whether it is a tie.", None),
    ("Is Answer 1 better? Answer 1 is better?", None),
    ("The tie-break was not needed.", None),
    ("The ribbon is tied to the box and untied in the other image.", None),
    ("Both answers are tied to the question's wording.", None),
    ("Both have merits; hard to say.", None),
    ("", None),
]


@pytest.mark.parametrize("text, label", VERDICTS)
def test_parse_pairwise_reads_the_verdict(text, label):
    assert parse_pairwise(text) == label


def test_verdicts_name_the_candidates_they_compare():
    found = pairwise_verdicts("Video 1 is better at motion. Both videos are equally good. "
                              "It's a tie.")
    assert [(v.label, v.noun) for v in found] == [("first", "video"), ("tie", "video"),
                                                 ("tie", None)]
