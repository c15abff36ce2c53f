"""The synthetic world: procedural scenes of coloured shapes (images and short clips),
their captions and questions, degradations, an oracle that scores pixels against
captions and answers against scenes, and a writer that puts all four tasks in both
forms on disk in the public data sets' schemas.

- :mod:`.scene`: vocabulary, scene sampling, captions, questions, parsing
- :mod:`.render`: scenes to pixels
- :mod:`.degrade`: content and pixel errors
- :mod:`.oracle`: ``score_image``, ``score_video``, ``score_answer``
- :mod:`.world`: judged items for every task and form at a difficulty level
- :mod:`.writer`: ``write_world`` / ``synthesize`` (files + manifest)
"""

from ur.data.synthetic.oracle import (
                                      OracleResult,
                                      describe_image,
                                      describe_video,
                                      score_answer,
                                      score_image,
                                      score_video,
)
from ur.data.synthetic.world import DIFFICULTIES, Item, build_item
from ur.data.synthetic.writer import read_manifest, synthesize, write_world

__all__ = ["DIFFICULTIES", "Item", "OracleResult", "build_item", "describe_image",
           "describe_video", "read_manifest", "score_answer", "score_image", "score_video",
           "synthesize", "write_world"]
