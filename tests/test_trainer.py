"""The Trainer in one process on the CPU: a stop request checkpoints and ends the loop at an
optimizer-step boundary, the run resumes from there to the uninterrupted run's losses, and the
process group and the resolved config are handled as `engine/pretrain.py` promises."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.corpus.demo import demo_documents
from engine.pretrain import main
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import complete_tags, read_run_state
from engine.training.config import PretrainConfig
from engine.training.metrics import read_metrics
from engine.training.setup import Dist, init_distributed, prepare_run, shutdown_distributed
from engine.training.trainer import RESOLVED_CONFIG, Trainer

pytestmark = pytest.mark.slow  # several in-process DeepSpeed runs: ~1 min on 2 cores

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer") / "shards"
    docs = demo_documents(200, seed=2)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], root, train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    return root


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def overrides(shards: Path, out_dir: Path) -> list[str]:
    return [f"--data.shards={shards}", "--seq_len=64", f"--steps={STEPS}", f"--out_dir={out_dir}",
            "--batch.micro=4", "--batch.grad_accum=2", "--checkpoint.interval=100", "--logging.interval=1",
            "--eval.interval=0", "--logging.progress_bar=false", "--logging.tensorboard=false"]


def train_losses(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "train"}


def run_in_process(shards: Path, out_dir: Path, resume: str | None = None, stop_during_step: int | None = None):
    """Train like engine/pretrain.py does; with `stop_during_step`, a stop is requested while that
    step's first micro-batch is being read (as a signal handler would, mid-step)."""
    config = load_config(PretrainConfig, ROOT / "configs/tiny_demo.toml", overrides(shards, out_dir))
    dist = Dist(0, 1, 0, torch.device("cpu"))
    plan = prepare_run(config, dist, resume)
    init_distributed(dist)
    trainer = Trainer(plan)
    if stop_during_step is not None:
        read = plan.stream.next_micro_batch

        def read_and_maybe_stop():
            item = read()
            if item.step + 1 == stop_during_step and item.micro_step == 0:
                trainer.request_stop()
            return item
        plan.stream.next_micro_batch = read_and_maybe_stop
    try:
        trainer.train()
    finally:
        trainer.close()
        plan.stream.close()
        shutdown_distributed()
    return trainer


def test_stop_request_checkpoints_at_the_step_boundary_and_resume_matches_an_uninterrupted_run(shards, tmp_path):
    reference = run_in_process(shards, tmp_path / "reference")
    assert not reference.stopped_early and sorted(train_losses(tmp_path / "reference")) == list(range(1, STEPS + 1))

    stopped = run_in_process(shards, tmp_path / "run", stop_during_step=3)
    assert stopped.stopped_early and stopped.state.step == 3
    assert max(train_losses(tmp_path / "run")) == 3, "the step in flight finishes, no further one starts"
    tags = complete_tags(tmp_path / "run" / "checkpoints")
    assert [t.name for t in tags] == ["step_00000003"], "the stop saved a checkpoint of the step it ended on"
    state = read_run_state(tags[0])
    assert (state["step"], state["data"]["step"], state["data"]["micro_step"]) == (3, 3, 0)

    resumed = run_in_process(shards, tmp_path / "run", resume="auto")
    assert resumed.state.step == STEPS and not resumed.stopped_early
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "reference")
    assert resumed.state.consumed_tokens == reference.state.consumed_tokens


def test_pretrain_leaves_no_process_group_behind_and_saves_the_resolved_config(shards, tmp_path):
    out = tmp_path / "run"
    env_before = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    assert main(["--config", str(ROOT / "configs/tiny_demo.toml"), *overrides(shards, out)]) == 0
    assert not torch.distributed.is_initialized()
    # The rendezvous variables it set are taken back: a process started later must not inherit its port.
    assert {key: os.environ.get(key) for key in env_before} == env_before
    saved = json.loads((out / RESOLVED_CONFIG).read_text())
    assert saved["model"]["vocab_size"] == 1024 and saved["config"]["steps"] == STEPS
    assert saved["derived"]["global_batch"] == 8
    assert read_run_state(complete_tags(out / "checkpoints")[-1])["model"] == saved["model"]


def test_a_failing_resume_leaves_no_process_group_and_writes_nothing(shards, tmp_path):
    out = tmp_path / "run"
    assert main(["--config", str(ROOT / "configs/tiny_demo.toml"), *overrides(shards, out)]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SystemExit) as exc:  # the saved data position belongs to another seed
        main(["--config", str(ROOT / "configs/tiny_demo.toml"), *overrides(shards, out), "--seed=99",
              "--resume", "auto"])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "data position does not fit" in message and "\n" not in message
    assert not torch.distributed.is_initialized()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
