"""A miniature of the quickstart for end-to-end tests: a few steps on a 48-record world
with a tiny base pretrained for 2 steps (answer checks on, in the base and the targets,
so the optional path runs end to end). Overlay it on experiments/quickstart.yaml."""

MINI = """
trainer:
  max_steps: {steps}
  val_check_interval: null
  check_val_every_n_epoch: 1
  limit_val_batches: 1
  limit_test_batches: 1
  deterministic: true
model:
  init_args:
    checkpoint: {base}
    tiny:
      pretrain_steps: 2
      answer_checks: true
      batch_size: 8
      world: {{out: {world}, size: 48, seed: 0, difficulty: 1}}
    judge: {{batch_size: 8, max_new_tokens: 24}}
data:
  init_args:
    world: {{out: {world}, size: 48, seed: 0, difficulty: 1}}
    batch_size: 8
    max_eval_records: 2
    templates: {{answer_checks: true}}
"""


def mini_overlay(path, *, world, base, steps=4, extra=""):
    """Write the miniature overlay to ``path`` and return it."""
    path.write_text(MINI.format(steps=steps, world=world, base=base) + extra)
    return path
