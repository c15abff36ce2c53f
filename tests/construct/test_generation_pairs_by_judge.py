"""Generation pairs by the judge: a generator's samples kept on disk with their oracle
scores (``ur construct oracle-generation``), then judged by `ur predict --config
experiments/construct/generation.yaml` with the miniature judge: every caption once, the
selection rules, pairs in the Pick-a-Pic v2 schema that Diffusion-DPO's data module
reads, and the oracle's check computed from the samples the files hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from minirun import REPO, run_ur
from PIL import Image

from ur.construct.candidates import Samples, read_candidates, write_candidates
from ur.construct.judged import build_pairs, pool_of, winner_loser
from ur.construct.predict import ORACLE_LEVEL_GAP, oracle_level, read_parts
from ur.data.datamodule import SourceSpec
from ur.data.records import Media, RecordError

GENERATION = REPO / "experiments" / "construct" / "generation.yaml"
CAPTIONS, N = 6, 4


def samples(tmp_path: Path, n: int = 2, **kwargs) -> Samples:
    media = []
    for j in range(n):
        path = tmp_path / f"s{j}.png"
        Image.new("RGB", (8, 8), (40 * j, 0, 0)).save(path)
        media.append(Media(kind="image", path=str(path)))
    fields = dict(id="cap-0", task="image_generation", prompt="a red circle", samples=media,
                  seeds=list(range(n)), model="gen", settings={"sample_steps": 2},
                  oracle_scores=[0.5] * n)
    return Samples(**{**fields, **kwargs})


def test_samples_are_written_and_read_back_with_answers_beside_them(tmp_path):
    from ur.construct.candidates import Candidates
    from ur.data.questions import Question

    s = samples(tmp_path, 3)
    q = Question(id="q", task="image_understanding", prompt="What colour?",
                 media=(Media(kind="image", path=str(tmp_path / "s0.png")),))
    c = Candidates(q, ("red", "blue"), "policy", 0, 1.0, 1.0, 0, 8)
    path = write_candidates(tmp_path / "candidates.jsonl", [s, c])
    back = read_candidates(path)
    assert isinstance(back[0], Samples) and isinstance(back[1], Candidates)
    assert [(m.kind, m.path) for m in back[0].samples] == [(m.kind, m.path) for m in s.samples]
    assert (back[0].seeds, back[0].oracle_scores, back[0].settings) == (
        s.seeds, s.oracle_scores, s.settings)
    assert back[1].answers == c.answers


@pytest.mark.parametrize("field,value", [("n", 5), ("seeds", ["a", "b"]),
                                         ("oracle_scores", [0.5]), ("samples", "x.png")])
def test_a_bad_samples_row_names_its_file_row_and_field(tmp_path, field, value):
    path = write_candidates(tmp_path / "candidates.jsonl", [samples(tmp_path)] * 2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError) as e:
        read_candidates(path)
    assert (e.value.file, e.value.row, e.value.field) == (str(path), 1, field)


def test_generated_samples_scored_nearly_alike_are_level_and_answers_only_when_equal():
    gaps = torch.tensor([0.3, 0.05, -0.05, 0.0, -0.2, ORACLE_LEVEL_GAP], dtype=torch.float64)
    assert oracle_level("image_generation", gaps).tolist() == [False, True, True, True, False,
                                                               False]
    assert oracle_level("video_generation", gaps).tolist() == oracle_level(
        "image_generation", gaps).tolist()
    assert oracle_level("image_understanding", gaps).tolist() == [False, False, False, True,
                                                                  False, False]


def test_a_missing_sample_is_not_usable_and_never_chosen(tmp_path):
    s = samples(tmp_path, 3)
    Path(s.samples[1].path).unlink()
    pool = pool_of(s)
    assert pool.usable == (0, 2) and pool.media == ()
    Path(s.samples[2].path).unlink()

    class NeverAsked:
        def __call__(self, queries, memo=None):
            raise AssertionError("a prompt with one usable sample asks the judge nothing")

    built, = build_pairs(NeverAsked(), [pool_of(s)], method="rank_sift")
    assert built.dropped == "too_few" and built.chosen is None


@pytest.fixture(scope="module")
def oracle_samples(tmp_path_factory) -> Path:
    """``ur construct oracle-generation`` of a tiny random text-to-image generator: its
    samples on disk and the oracle's pairs of them."""
    from ur.construct.oracle_generation import construct_oracle_generation_pairs
    from ur.models.generators import TinyGeneratorConfig, build_tiny_generator
    from ur.pretrain.tiny_generator import world_vocabulary

    root = tmp_path_factory.mktemp("generation_pairs")
    config = TinyGeneratorConfig(kind="image", prediction="flow", size=16, patch=2, layers=1,
                                 heads=2, head_dim=8, text_hidden=16, text_layers=1)
    build_tiny_generator(world_vocabulary(), config, seed=1).save_pretrained(
        root / "generator", safe_serialization=True)
    return construct_oracle_generation_pairs(root / "generator", root / "oracle",
                                             kind="image", prompts=CAPTIONS, n=N,
                                             sample_steps=2, min_gap=0.0)


def test_the_samples_on_disk_are_what_the_oracle_scored(oracle_samples):
    from ur.data.sources.pickapic_v2 import read
    from ur.data.synthetic.oracle import score_image

    pools = read_candidates(oracle_samples / "candidates.jsonl")
    assert len(pools) == CAPTIONS and all(p.n == N for p in pools)
    for p in pools:
        for m, stored in zip(p.samples, p.oracle_scores, strict=True):
            pixels = np.asarray(Image.open(m.path).convert("RGB"))
            assert score_image(pixels, p.prompt).score == pytest.approx(stored)
    # The oracle's pairs are the best and worst of those very files.
    by_caption = {p.prompt: p for p in pools}
    for pair in read(oracle_samples / "image_pairs.parquet"):
        files = [Path(m.path).read_bytes() for m in by_caption[pair.prompt].samples]
        best = int(np.argmax(by_caption[pair.prompt].oracle_scores))
        assert pair.media[0].data == files[best]


def test_sampling_reports_its_first_and_last_batch_in_a_log(oracle_samples, capsys):
    """Written to a log (not a terminal), progress names the first batch and the last, so
    a run's log shows it finished sampling however few batches it had."""
    from ur.construct.oracle_generation import sample_candidates
    from ur.models.generators import denoising_of, load_generator

    denoising = denoising_of(load_generator(oracle_samples.parent / "generator"))
    samples = sample_candidates(denoising, ["a red circle", "a blue square"], 2, batch_size=1,
                                num_inference_steps=1)
    assert samples.shape[:2] == (2, 2)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sampled")]
    assert said[0] == "sampled 1/4 candidates" and said[-1] == "sampled 4/4 candidates"


def test_clips_are_kept_as_frame_folders_the_video_pairs_point_to(tmp_path):
    from ur.construct.oracle_generation import construct_oracle_generation_pairs
    from ur.data.media import load_media
    from ur.data.sources.videodpo import read
    from ur.data.synthetic.oracle import score_video
    from ur.models.generators import TinyGeneratorConfig, build_tiny_generator
    from ur.pretrain.tiny_generator import world_vocabulary

    config = TinyGeneratorConfig(kind="video", prediction="flow", size=8, patch=2, layers=1,
                                 heads=2, head_dim=8, text_hidden=16, text_layers=1)
    build_tiny_generator(world_vocabulary(), config, seed=1).save_pretrained(
        tmp_path / "generator", safe_serialization=True)
    out = construct_oracle_generation_pairs(tmp_path / "generator", tmp_path / "oracle",
                                            kind="video", prompts=2, n=2, sample_steps=2,
                                            num_frames=2, min_gap=0.0)
    pools = {p.prompt: p for p in read_candidates(out / "candidates.jsonl")}
    for p in pools.values():
        for m, stored in zip(p.samples, p.oracle_scores, strict=True):
            assert m.kind == "frames" and Path(m.path).is_relative_to(out / "candidates")
            assert score_video(load_media(m, 2), p.prompt).score == pytest.approx(stored)
    pairs = list(read(out / "video_pairs.jsonl"))
    assert pairs
    for pair in pairs:
        best = int(np.argmax(pools[pair.prompt].oracle_scores))
        assert Path(pair.media[0].path).resolve() == Path(pools[pair.prompt].samples[best].path)


def test_the_judge_pairs_a_generators_samples_for_diffusion_dpo(oracle_samples, mini_fit,
                                                              tmp_path):
    from ur.data.generation_pairs import GenerationPairsDataModule

    out = tmp_path / "judge_pairs"
    run_ur("predict", "--config", str(GENERATION),
           "--model.init_args.judge", str(mini_fit / "export"),
           "--data.init_args.candidates", str(oracle_samples / "candidates.jsonl"),
           "--data.init_args.out", str(out), "--data.init_args.batch_size", "4",
           cwd=tmp_path)
    rows = read_parts(out)  # raises on a caption done twice
    assert len(rows) == CAPTIONS
    kept = []
    for row in rows:
        b = row["built"]
        assert [tuple(p) for p in b["pairs"]] == [(0, 1), (2, 3)]
        if b["chosen"] is None:
            continue
        kept.append(row)
        decided = [winner_loser(tuple(p), v) for p, v in zip(b["pairs"], b["verdicts"],
                                                             strict=True)]
        assert b["chosen"] in [d[0] for d in decided if d]
        assert b["rejected"] in [d[1] for d in decided if d]
        assert b["scores"][str(b["chosen"])] > b["scores"][str(b["rejected"])]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == len(kept)
    assert set(summary["files"]) == {"image_understanding", "video_understanding",
                                     "image_generation"}
    if kept:  # the oracle's check, by hand from the scores each sample carries
        figures = summary["tasks"]["image_generation"]
        gaps = [r["oracle_scores"][r["built"]["chosen"]] - r["oracle_scores"][r["built"]["rejected"]]
                for r in kept]
        assert figures["oracle_agreement"] == pytest.approx(
            sum(g >= ORACLE_LEVEL_GAP for g in gaps) / len(gaps))
        assert figures["oracle_ties"] == sum(abs(g) < ORACLE_LEVEL_GAP for g in gaps)
    # Diffusion-DPO's data module reads the pairs, chosen first, as the files on disk.
    assert kept, "the miniature judge decided no caption: nothing to read back"
    pools = {p.id: p for p in read_candidates(oracle_samples / "candidates.jsonl")}
    dm = GenerationPairsDataModule(train=[SourceSpec(
        "pickapic_v2", str(out / "image_generation_pairs.parquet"))])
    dm.setup("fit")
    read = {p.id: p for p in dm.pairs["train"]}
    assert len(read) == len(kept)
    for row in kept:
        c, r = row["built"]["chosen"], row["built"]["rejected"]
        pair = read[f"{row['id']}-c{c}-r{r}"]
        files = [Path(m.path).read_bytes() for m in pools[row["id"]].samples]
        assert (pair.media[0].data, pair.media[1].data) == (files[c], files[r])


def test_two_processes_judge_every_caption_once(oracle_samples, mini_fit, tmp_path):
    out = tmp_path / "judge_pairs_ddp"
    run = run_ur("predict", "--config", str(GENERATION),
                 "--model.init_args.judge", str(mini_fit / "export"),
                 "--data.init_args.candidates", str(oracle_samples / "candidates.jsonl"),
                 "--data.init_args.out", str(out), "--data.init_args.batch_size", "2",
                 "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path,
                 timeout=600)
    rows = read_parts(out)  # raises on a caption done twice
    pools = read_candidates(oracle_samples / "candidates.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in pools)
    assert len({p.name for p in out.glob("parts/*")}) >= 2  # each rank wrote its own parts
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == CAPTIONS
    assert summary["pairs"] == sum(r["built"]["chosen"] is not None for r in rows)
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    recorded = json.loads((run_dir / "metrics.json").read_text())["predict"]
    assert recorded["construct/prompts"] == CAPTIONS
    assert recorded["construct/pairs"] == summary["pairs"]


def test_every_sample_is_a_pointwise_record_with_the_oracles_points(oracle_samples):
    """image_pointwise.json: each sample once, read by the EvalMuse adapter a judge trains
    through, its file the sample's and its points the oracle's score on the 1-5 scale."""
    from ur.data.sources.evalmuse import read
    from ur.data.synthetic.world import to_scale

    pools = read_candidates(oracle_samples / "candidates.jsonl")
    stored = {Path(m.path).resolve(): s for p in pools
              for m, s in zip(p.samples, p.oracle_scores, strict=True)}
    records = list(read(oracle_samples / "image_pointwise.json"))
    assert len(records) == CAPTIONS * N
    assert {Path(r.media[0].path).resolve() for r in records} == set(stored)
    for r in records:
        assert r.score == to_scale(stored[Path(r.media[0].path).resolve()], (1, 5))
        assert 1 <= r.score <= 5


def test_construction_shows_a_small_sample_at_the_size_the_judge_learned(oracle_samples,
                                                                           mini_fit, tmp_path):
    """The generation config's processor keywords reach the judge: a 16-pixel sample is
    encoded as the processor encodes the same picture at 84 pixels, where without them
    the tiny processor makes it a single token."""
    import yaml

    from ur.construct.judged import point_query
    from ur.construct.predict import ConstructModule

    kwargs = yaml.safe_load(GENERATION.read_text())["model"]["init_args"]["processor_kwargs"]
    pool = pool_of(read_candidates(oracle_samples / "candidates.jsonl")[0])
    big = tmp_path / "sample_at_84.png"
    Image.open(pool.candidates[0].path).convert("RGB").resize((84, 84)).save(big)

    def grid(module, media):
        query = point_query("image_generation", pool.prompt, (), (media,), 0)
        return module.judge.collator([query])["image_grid_thw"].tolist()

    shown = ConstructModule(judge=str(mini_fit / "export"), processor_kwargs=kwargs)
    plain = ConstructModule(judge=str(mini_fit / "export"))
    at_84 = grid(plain, Media(kind="image", path=str(big)))
    assert grid(shown, pool.candidates[0]) == at_84
    assert grid(plain, pool.candidates[0]) != at_84


def test_construction_shows_a_small_clip_at_the_size_the_judge_learned(mini_fit, tmp_path):
    """The same for clips: a clip of 16-pixel frames is encoded as the same frames at 84
    pixels, where without the config's keywords each frame is shrunk to one patch."""
    import yaml

    from ur.construct.judged import point_query
    from ur.construct.predict import ConstructModule

    kwargs = yaml.safe_load(GENERATION.read_text())["model"]["init_args"]["processor_kwargs"]
    small, big = tmp_path / "clip_16", tmp_path / "clip_84"
    small.mkdir(), big.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        frame = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        frame.save(small / f"{i:02d}.png")
        frame.resize((84, 84)).save(big / f"{i:02d}.png")

    def grid(module, folder):
        query = point_query("video_generation", "a red circle moving left", (),
                            (Media(kind="frames", path=str(folder)),), 0)
        return module.judge.collator([query])["video_grid_thw"].tolist()

    shown = ConstructModule(judge=str(mini_fit / "export"), processor_kwargs=kwargs)
    plain = ConstructModule(judge=str(mini_fit / "export"))
    at_84 = grid(plain, big)
    assert grid(shown, small) == at_84
    assert grid(plain, small) != at_84


def test_the_summary_splits_the_score_spread_within_and_across_captions(oracle_samples):
    """Two captions scored (0.2, 0.4) and (0.6, 0.6): within a caption the standard
    deviations are 0.1 and 0, mean 0.05; the captions' means 0.3 and 0.6 spread by 0.15;
    the variance 0.0275 holds 0.005 within a caption. The summary reports the same for
    the samples it scored."""
    from ur.construct.oracle_generation import score_spread

    assert score_spread([[0.2, 0.4], [0.6, 0.6]]) == pytest.approx(
        {"within_caption": 0.05, "across_captions": 0.15, "within_share": 0.005 / 0.0275})
    assert score_spread([[0.5, 0.5], [0.5, 0.5]])["within_share"] == 0.0
    pools = read_candidates(oracle_samples / "candidates.jsonl")
    summary = json.loads((oracle_samples / "summary.json").read_text())
    assert summary["score_spread"] == pytest.approx(
        score_spread([p.oracle_scores for p in pools]))
