"""The synthetic world: procedural scenes of coloured shapes (images and short clips),
their captions and questions, degradations, an oracle that scores pixels against
captions and answers against scenes, and a writer that puts all four tasks in both
forms on disk in the public data sets' schemas.

- :mod:`.scene`: vocabulary, scene sampling, captions, questions, parsing
- :mod:`.language`: reading answers in the world's grammar (``answer_claims``)
- :mod:`.render`: scenes to pixels
- :mod:`.degrade`: content and pixel errors
- :mod:`.oracle`: ``score_image``, ``score_video``, ``score_answer``
- :mod:`.world`: judged items for every task and form at a difficulty level
- :mod:`.writer`: ``write_world`` / ``synthesize`` (files + manifest)

The package imports none of its modules itself: the names below are loaded from
their module on first use, so importing one module (the prompt templates import
:mod:`.language`) does not load the oracle, the world or the writer, and the writer,
which uses the templates, can import them without a cycle.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "OracleResult": "oracle",
    "describe_image": "oracle",
    "describe_video": "oracle",
    "score_answer": "oracle",
    "score_image": "oracle",
    "score_video": "oracle",
    "answer_claims": "language",
    "DIFFICULTIES": "world",
    "Item": "world",
    "build_item": "world",
    "read_manifest": "writer",
    "synthesize": "writer",
    "write_world": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
