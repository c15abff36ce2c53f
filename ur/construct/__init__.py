"""Construction: preference pairs built from a policy's own samples.

A policy (a vision-language model, or a generator) answers each prompt several times;
something that knows better (the judge, or on the synthetic world the oracle) ranks
the candidates, and the best and the worst become a DPO pair, written to disk in the
task's pair schema (:data:`ur.data.sources.PAIR_SCHEMAS`) for ``ur.align`` to read. Every
pair can be traced back to the samples it was cut from, and the samples to the model
and settings that drew them.

- :mod:`.candidates`: the questions a policy answers, N sampled answers per question
  (``sample_answers``), and the samples on disk (``Candidates``, JSONL).
- :mod:`.oracle_pairs`: pairs by the synthetic world's oracle (the ceiling arm of the
  alignment experiments), and the oracle accuracy of a policy's answers.

The modules are imported on use: ``from ur.construct.oracle_pairs import oracle_pairs``.
"""
