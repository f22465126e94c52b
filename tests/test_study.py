"""The reproduction study (engine/study.py) and its report: every number of `reproduction.md` comes from
`study.json`; a tiny real run regenerates both; the verdict on each claim follows the figures; a stopped
study resumes from its finished units; bad inputs fail before anything is written."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

import pytest

from engine.reproduction import report
from engine.reproduction.stats import paired_t, significant, steps_to_reach, two_sample_t
from tests.conftest import shared_path, teacher_dir

ROOT = Path(__file__).resolve().parents[1]


def study_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "engine/study.py", *args], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=1500)
    if check:
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def curve(losses: list[float], every: int = 10, new: float = 9.0) -> list[dict]:
    return [{"step": i * every, "loss": loss, "loss_se": 0.01, "new_token_loss": new, "new_token_loss_se": 0.05}
            for i, loss in enumerate(losses)]


def synthetic_study(fvt_curves: list[list[float]]) -> dict:
    """A study JSON with random init falling 8 → 5 in 40 steps and fvt along `fvt_curves` (one per seed)."""
    random_curve = [8.0, 7.0, 6.0, 5.5, 5.0]
    inits = [{"method": "random", "seed": s, "curve": curve(random_curve), "init_seconds": 1.0, "train_seconds": 10.0,
              "wall_s": 12.0} for s in (1, 2, 3)]
    inits += [{"method": "fvt", "seed": s, "curve": curve(c), "init_seconds": 2.0, "train_seconds": 10.0, "wall_s": 12.0}
              for s, c in zip((1, 2, 3), fvt_curves)]
    f1 = {"flat": [0.50, 0.52, 0.51], "bioptimus": [0.60, 0.61, 0.62]}
    masking = [{"arm": arm, "seed": s, "curve": curve([8.0, 6.0]), "train_seconds": 10.0, "wall_s": 30.0,
                "ner": {"ncbi-disease": {split: {"f1": f1[arm][i], "precision": 0.5, "recall": 0.5}
                                         for split in ("devel", "test")}}}
               for arm in ("flat", "bioptimus") for i, s in enumerate((1, 2, 3))]
    size = dict(train_docs=10, context_docs=10, seq_len=128, seeds=[1, 2, 3], steps=40, batch=8, lr=5e-4, warmup=4,
                eval_every=10, eval_rows=64, masking_init="fvt", ner_tasks=["ncbi-disease"], ner_epochs=1, ner_lr=1e-4,
                ner_batch=16, ner_max_length=128, notes=[])
    return {"size_name": "cpu", "size": size, "new_tokens": 100, "wall_s": 60.0,
            "teacher": {"curve": [{"step": 0, "loss": 10.5}, {"step": 10, "loss": 4.25}], "loss_before": 10.5,
                        "loss_after": 4.25, "eval_rows": 64, "wall_s": 30.0, "folder": "t"},
            "inits": inits, "masking": masking,
            "model": {"vocab_size": 30522, "hidden_size": 384, "num_layers": 6, "num_heads": 12,
                      "intermediate_size": 1536, "max_position_embeddings": 512},
            "full_scale": {"config": "configs/bert_base.toml", "steps": 100000, "global_batch": 2048, "seq_len": 128,
                           "gpus": 8},
            "inputs": {"teacher": "x/model", "vocab": "v.txt", "corpus": "c"}, "machine": {"cpu_count": 2},
            "commit": "abc", "time": "now"}


def test_steps_to_reach_is_the_first_evaluated_step_at_or_below_the_target():
    points = curve([8.0, 6.0, 5.0, 5.0])
    assert steps_to_reach(points, 5.0) == 20
    assert steps_to_reach(points, 6.5) == 10
    assert steps_to_reach(points, 4.9) is None


def test_t_statistics_and_their_threshold():
    assert paired_t([0.1, 0.1, 0.1]) == (float("inf"), 2)
    t, df = paired_t([0.1, 0.2, 0.3])
    assert df == 2 and t == pytest.approx(0.2 / (0.1 / 3 ** 0.5))
    t, df = two_sample_t([0.50, 0.52, 0.51], [0.60, 0.61, 0.62])
    assert df == 4 and t == pytest.approx((0.61 - 0.51) / (0.01 * (2 / 3) ** 0.5))
    assert significant(t, df) and not significant(2.0, 4) and significant(2.9, 4) and not significant(4.0, 2)


def test_claim_one_is_met_when_the_recommended_init_needs_half_the_steps_on_every_seed():
    study = synthetic_study([[6.0, 5.0, 4.9, 4.8, 4.7]] * 3)  # reaches random's final 5.0 at step 10 of 40
    summary = report.init_summary(study)
    assert summary["fvt"]["reached"] == {1: 10, 2: 10, 3: 10} and summary["fvt"]["fraction"] == (0.25, 0.0)
    assert summary["random"]["reached"] == {1: 40, 2: 40, 3: 40}
    assert summary["fvt"]["reached_new"] == {1: 0, 2: 0, 3: 0}  # every curve's new-token loss is flat at 9.0
    text = report.render(study, "reproduction")
    assert "Claim 1 at this scale: met** by `fvt`" in text and "0.25 ± 0.00 of the steps" in text


def test_claim_one_is_missed_with_the_miss_counted_when_a_seed_never_gets_there():
    study = synthetic_study([[6.0, 5.0, 4.9, 4.8, 4.7], [7.9, 7.0, 6.0, 5.4, 5.1], [7.9, 7.0, 5.0, 5.0, 5.0]])
    summary = report.init_summary(study)["fvt"]
    assert summary["reached"] == {1: 10, 2: None, 3: 20} and summary["missed"] == 1
    fractions = [0.25, 1.0, 0.5]
    assert summary["fraction"] == pytest.approx((mean(fractions), stdev(fractions)))
    text = report.render(study, "reproduction")
    assert "Claim 1 at this scale: missed** by `fvt`" in text and "1 of 3 seeds never reach it" in text
    assert "| fvt (recommended) |" in text and "10, —, 20" in text


def test_masking_table_states_the_f1_gap_and_its_significance():
    text = report.render(synthetic_study([[6.0, 5.0, 4.9, 4.8, 4.7]] * 3), "reproduction")
    row = next(line for line in text.splitlines() if line.startswith("| ncbi-disease test F1"))
    assert "51.00 ± 1.00" in row and "61.00 ± 1.00" in row and "+10.00" in row and row.endswith("| yes |")
    loss_row = next(line for line in text.splitlines() if line.startswith("| held-out MLM loss"))
    assert loss_row.endswith("| no |")  # identical curves: no difference claimed
    assert "`bioptimus` vs `flat`: significant for ncbi-disease devel F1, ncbi-disease test F1 (3 seeds" in text


def test_cost_section_uses_the_measured_throughput():
    study = synthetic_study([[6.0, 5.0, 4.9, 4.8, 4.7]] * 3)
    tokens = 40 * 8 * 128 * 12  # 12 runs of the study, 10 s of training each
    text = report.render(study, "reproduction")
    assert f"Measured in this run: {tokens / 120:,.0f} training tokens/s" in text
    assert "No GPU measurement is in this JSON" in text


def test_committed_report_is_the_rendering_of_its_json():
    record = ROOT / "docs" / "reproduction" / "study.json"
    assert record.is_file(), "docs/reproduction/study.json is missing: run python engine/study.py --size cpu"
    study = json.loads(record.read_text())
    assert (ROOT / "docs" / "reproduction.md").read_text() == report.render(study, "reproduction"), \
        "docs/reproduction.md is stale: python engine/study.py --report-only --out docs/reproduction"
    for plot in report.PLOTS:
        assert (ROOT / "docs" / "reproduction" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_only_without_a_json_fails_with_one_line(tmp_path):
    result = study_cli("--report-only", "--out", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "study.json" in result.stderr and not (tmp_path / "none.md").exists()


def test_a_missing_input_fails_before_anything_is_written(tmp_path):
    result = study_cli("--size", "tiny", "--corpus", str(tmp_path / "no-corpus"), "--out", str(tmp_path / "out"),
                       "--work", str(tmp_path / "work"), check=False)
    assert result.returncode == 1 and f"--corpus not found: {tmp_path / 'no-corpus'}" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.slow  # a real tiny study: teacher warm-up, 2 inits × 2 seeds, 2 arms × 2 seeds with NER (~3 min)
def test_tiny_study_regenerates_a_report_built_from_its_json_and_resumes_from_finished_units(tmp_path):
    teacher_dir()
    shared_path("vocab", "pubmed-uncased-abstracts-vocab.txt")
    shared_path("ner", "NCBI-disease")
    from engine.corpus.demo import write_demo_corpus

    corpus = write_demo_corpus(tmp_path / "corpus", num_docs=220)
    out, work = tmp_path / "docs" / "reproduction", tmp_path / "work"
    study_cli("--size", "tiny", "--corpus", str(corpus), "--out", str(out), "--work", str(work))

    study = json.loads((out / "study.json").read_text())
    assert [(u["method"], u["seed"]) for u in study["inits"]] == [("random", 1), ("random", 2), ("fvt", 1), ("fvt", 2)]
    assert all([p["step"] for p in u["curve"]] == [0, 2, 4] for u in study["inits"] + study["masking"])
    assert study["teacher"]["loss_after"] < study["teacher"]["loss_before"]
    assert {u["arm"] for u in study["masking"]} == {"flat", "bioptimus"}
    assert all(0.0 <= u["ner"]["ncbi-disease"]["test"]["f1"] <= 1.0 for u in study["masking"])
    # the flat arm from the fvt init is claim 1's fvt run itself: trained once, exported from there
    flat = {u["seed"]: u for u in study["masking"] if u["arm"] == "flat"}
    fvt = {u["seed"]: u for u in study["inits"] if u["method"] == "fvt"}
    assert all(flat[s]["same_run_as"] == f"init-fvt-seed{s}" and flat[s]["curve"] == fvt[s]["curve"] for s in (1, 2))
    assert not list(work.glob("units-*/runs/masking-flat-*")) and list(work.glob("units-*/runs/masking-bioptimus-*"))
    text = (tmp_path / "docs" / "reproduction.md").read_text()
    assert text == report.render(study, "reproduction")
    teacher = study["teacher"]
    assert f"**{teacher['loss_before']:.3f} before**" in text and f"**{teacher['loss_after']:.3f} after**" in text
    finals = [u["curve"][-1]["loss"] for u in study["inits"] if u["method"] == "fvt"]
    assert f"| {mean(finals):.3f} ± {stdev(finals):.3f} |" in text

    edited = copy.deepcopy(study)  # the report follows the JSON, not the run
    edited["teacher"]["loss_after"] = 1.234
    for unit in edited["masking"]:
        unit["ner"]["ncbi-disease"]["test"]["f1"] = 0.9 if unit["arm"] == "bioptimus" else 0.1 + 0.01 * unit["seed"]
    (out / "study.json").write_text(json.dumps(edited))
    study_cli("--report-only", "--out", str(out))
    text = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "**1.234 after**" in text and "90.00 ± 0.00" in text and "11.50 ± 0.71" in text

    [unit] = work.glob("units-*/results/init-fvt-seed2.json")
    unit.unlink()  # as if stopped during that unit
    rerun = study_cli("--size", "tiny", "--corpus", str(corpus), "--out", str(out), "--work", str(work)).stdout
    assert "init-fvt-seed2: done" in rerun and "init-random-seed1: reusing" in rerun
    assert "teacher: reusing" in rerun and "masking-bioptimus-seed2: reusing" in rerun


def test_changing_a_pretraining_setting_keeps_the_teacher_and_a_corpus_setting_clears_the_work(tmp_path):
    from dataclasses import replace

    from engine.reproduction.runs import StudyInputs, open_work
    from engine.reproduction.sizes import TINY

    inputs = StudyInputs(corpus=tmp_path / "c", teacher=tmp_path / "t", vocab=tmp_path / "v", ner_data=tmp_path / "n",
                         work=tmp_path / "work")
    teacher, units, folder = open_work(TINY, inputs)
    teacher.get("teacher", lambda: {"loss_after": 4.0}, log=lambda _: None)
    units.get("init-random-seed1", lambda: {"curve": []}, log=lambda _: None)

    teacher, units_lr, folder_lr = open_work(replace(TINY, lr=TINY.lr / 2), inputs)
    assert folder_lr != folder and (teacher.folder / "teacher.json").is_file()
    assert not (units_lr.folder / "init-random-seed1.json").exists()
    _, units, _ = open_work(TINY, inputs)  # back to the first settings: their units are still there
    assert (units.folder / "init-random-seed1.json").is_file()

    teacher, _, _ = open_work(replace(TINY, train_docs=TINY.train_docs + 1), inputs)
    assert not (teacher.folder / "teacher.json").exists() and not folder.exists()


def test_a_work_folder_the_study_did_not_write_is_refused_and_kept(tmp_path):
    from engine.reproduction.runs import StudyInputs, open_work
    from engine.reproduction.sizes import TINY

    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("a user's file")
    inputs = StudyInputs(corpus=tmp_path / "c", teacher=tmp_path / "t", vocab=tmp_path / "v", ner_data=tmp_path / "n",
                         work=work)
    with pytest.raises(ValueError, match="not a study's work folder"):
        open_work(TINY, inputs)
    assert (work / "notes.txt").read_text() == "a user's file"
