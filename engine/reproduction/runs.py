"""The study's runs: corpus slices, the teacher's MLM warm-up, the init comparison, the masking comparison.

Each finished unit (the teacher, one init method with one seed, one masking arm with one seed and its
NER scores) is kept as JSON under the work folder, so a stopped study picks up where it stopped
(`open_work`: what is kept when which settings change).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Callable

from engine.io import atomic_write_text, resolve_device
from engine.reproduction.sizes import StudySize

ROOT = Path(__file__).resolve().parents[2]
EVAL_MASK_KEY = 20230713  # held-out masks: the same targets for every run of the study
SEEDED_METHODS = ("random", "distill")  # inits that depend on the seed; fvt and contextual are made once


@dataclass(frozen=True)
class StudyInputs:
    corpus: Path  # text corpus (engine.corpus.readers formats)
    teacher: Path  # headless general-domain HF BERT
    vocab: Path  # the domain vocabulary (vocab.txt)
    ner_data: Path  # folder with <TASK>/{train,devel,test}.tsv
    work: Path  # scratch: shards, runs, init folders, per-unit results


class UnitResults:
    """Per-unit JSON results under `folder`: computed once, reused by a re-run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, compute: Callable[[], dict], log: Callable[[str], None]) -> dict:
        path = self.folder / f"{key}.json"
        if path.is_file():
            log(f"{key}: reusing {path}")
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        result = {**compute(), "wall_s": round(time.perf_counter() - started, 1)}
        atomic_write_text(path, json.dumps(result) + "\n")
        log(f"{key}: done in {result['wall_s']:.0f} s")
        return result


TEACHER_FIELDS = ("train_docs", "context_docs", "seq_len", "teacher_steps", "teacher_batch", "teacher_eval_batches")


def open_work(size: StudySize, inputs: StudyInputs) -> tuple[UnitResults, UnitResults, Path]:
    """(teacher results, unit results, unit folder) for these settings.

    The corpus slices and the warmed-up teacher depend only on the inputs and `TEACHER_FIELDS`: the
    work folder is cleared when those change. Inits and runs live under a folder named by a hash of
    the whole size, so changing a pre-training setting re-runs the units but keeps the teacher.
    """
    base = json.dumps({"inputs": {k: str(v) for k, v in asdict(inputs).items()},
                       "size": {k: getattr(size, k) for k in TEACHER_FIELDS}}, sort_keys=True)
    marker = inputs.work / "study-inputs.json"
    if not (marker.is_file() and marker.read_text(encoding="utf-8") == base):
        if inputs.work.exists() and any(inputs.work.iterdir()) and not marker.is_file():
            raise ValueError(f"--work {inputs.work} holds files but no study-inputs.json: not a study's work "
                             f"folder, left as it is (give an empty or new folder)")
        shutil.rmtree(inputs.work, ignore_errors=True)
        inputs.work.mkdir(parents=True)
        atomic_write_text(marker, base)
    units = inputs.work / ("units-" + hashlib.sha256(json.dumps(asdict(size), sort_keys=True).encode()).hexdigest()[:12])
    return UnitResults(inputs.work / "teacher-results"), UnitResults(units / "results"), units


def prepare_corpus(size: StudySize, inputs: StudyInputs) -> dict[str, Path]:
    """Shards of the first `train_docs` documents under the teacher's and under the domain vocabulary
    (same text, same 5 % held out), and the next `context_docs` documents as JSONL for the init's
    contexts: no init method sees the held-out text through the teacher."""
    from engine.distill.pipeline import iter_corpus
    from engine.shards import ShardOptions, build_shards, read_vocab_file

    paths = {"teacher_shards": inputs.work / "shards-teacher-vocab", "shards": inputs.work / "shards-domain-vocab",
             "contexts": inputs.work / "contexts.jsonl"}
    if all((p / "manifest.json").is_file() for p in (paths["teacher_shards"], paths["shards"])) \
            and paths["contexts"].is_file():
        return paths
    documents = list(islice(iter_corpus(str(inputs.corpus), "auto"), size.train_docs + size.context_docs))
    if len(documents) < size.train_docs + size.context_docs:
        raise ValueError(f"{inputs.corpus}: {len(documents)} documents, the study size needs "
                         f"{size.train_docs} + {size.context_docs}")
    options = ShardOptions(seq_lens=[size.seq_len], valid_fraction=0.05)
    for key, vocab in (("teacher_shards", inputs.teacher / "vocab.txt"), ("shards", inputs.vocab)):
        shutil.rmtree(paths[key], ignore_errors=True)
        build_shards(documents[:size.train_docs], paths[key], read_vocab_file(vocab, lowercase=True), options)
    atomic_write_text(paths["contexts"], "".join(json.dumps({"id": doc_id, "text": text}) + "\n"
                                                 for doc_id, text in documents[size.train_docs:]))
    return paths


def engine_script(*args: str) -> None:
    """Run an entry script of the engine as a user would; its output goes to the study's log."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{args[0]} exited {result.returncode}: " + " | ".join(tail))


def warm_teacher(size: StudySize, inputs: StudyInputs, paths: dict[str, Path]) -> dict:
    """The recipe's warm-up step (configs/teacher_mlm.toml) on the teacher-vocabulary shards, exported;
    the held-out MLM loss of the fresh head (step 0) and at every evaluation."""
    from engine.training.metrics import read_metrics

    run, folder = inputs.work / "teacher-run", inputs.work / "teacher-mlm"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    interval = max(1, size.teacher_steps // 4)
    engine_script("engine/pretrain.py", "--config", "configs/teacher_mlm.toml", f"--model.init_from={inputs.teacher}",
                  f"--data.shards={paths['teacher_shards']}", f"--out_dir={run}", f"--steps={size.teacher_steps}",
                  f"--seq_len={size.seq_len}", f"--batch.micro={size.teacher_batch}", f"--eval.interval={interval}",
                  f"--eval.steps={size.teacher_eval_batches}", f"--checkpoint.interval={size.teacher_steps}",
                  "--logging.progress_bar=false",
                  *deepspeed_options(size))
    engine_script("engine/export_hf.py", str(run / "checkpoints"), str(folder))
    curve = [{"step": r["step"], "loss": round(r["loss"], 4)} for r in read_metrics(run / "metrics.jsonl")
             if r["kind"] == "valid"]
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return {"folder": str(folder), "curve": curve, "loss_before": curve[0]["loss"], "loss_after": curve[-1]["loss"],
            "eval_rows": size.teacher_eval_batches * size.teacher_batch}


def deepspeed_config(size: StudySize) -> tuple[Path, str]:
    """(DeepSpeed JSON, precision) of every run of the study: ZeRO-1 bf16 on a GPU, ZeRO-0 fp32 on CPU."""
    if resolve_device(size.device).type == "cuda":
        return ROOT / "ds_configs" / "zero1_bf16.json", "bf16"
    return ROOT / "ds_configs" / "zero0_fp32_cpu.json", "fp32"


def deepspeed_options(size: StudySize) -> list[str]:
    config, precision = deepspeed_config(size)
    return [f"--deepspeed.config={config}", f"--deepspeed.precision={precision}"]


def pretrain_config(size: StudySize, out_dir: Path, init_from: Path, shards: Path, preset: str, seed: int):
    """One pre-training run of the study: `preset` curriculum, AdamW with warm-up then a constant lr."""
    from engine.curriculum.schedule import CurriculumConfig
    from engine.training import config as run_config

    ds_file, precision = deepspeed_config(size)
    return run_config.PretrainConfig(
        out_dir=out_dir, steps=size.steps, seq_len=size.seq_len, seed=seed,
        model=run_config.ModelSection(init_from=init_from),
        data=run_config.DataSection(shards=shards, prefetch=0),
        curriculum=CurriculumConfig(preset=preset),
        optim=run_config.OptimSection(lr=size.lr, eps=1e-8, weight_decay=0.01, warmup_steps=size.warmup,
                                      decay="constant", grad_clip=1.0),
        batch=run_config.BatchSection(micro=size.batch),
        deepspeed=run_config.DeepSpeedSection(config=ds_file, precision=precision),
        checkpoint=run_config.CheckpointSection(interval=size.steps, keep_last=1),
        logging=run_config.LoggingSection(interval=size.eval_every, tensorboard=False, progress_bar=False),
        eval=run_config.EvalSection(interval=size.eval_every))


def held_out_curve(size: StudySize, shards: Path, new_ids: list[int]):
    """The study's held-out set: the first `eval_rows` rows of the valid split, token-masked at 15 %
    with one fixed key, so every run of the study is scored on the same targets."""
    from engine.reproduction.curves import HeldOutCurve
    from engine.shards import PackedShards

    valid = PackedShards(shards, "valid", size.seq_len)
    if len(valid) < size.eval_rows:
        raise ValueError(f"{shards}: {len(valid)} held-out rows, the study size needs {size.eval_rows} "
                         f"(raise train_docs)")
    return HeldOutCurve(valid, new_ids, size.eval_rows, size.batch, mask_key=EVAL_MASK_KEY)


def new_token_ids(teacher: Path, vocab: Path) -> list[int]:
    """Ids of the domain vocabulary that the teacher's lacks: the rows the init methods differ on."""
    from engine.distill.vocab import align, read_vocab

    return align(read_vocab(teacher), read_vocab(vocab), teacher, vocab).new_ids.tolist()


def make_init(size: StudySize, inputs: StudyInputs, teacher: Path, contexts: Path, method: str, seed: int) -> Path:
    """The init folder of `method` (one per seed for seeded methods), made by `engine.distill` once."""
    from engine.distill.pipeline import config_from_args, run as distill_run

    seed = seed if method in SEEDED_METHODS else 0
    folder = inputs.work / "inits" / f"{method}-seed{seed}"
    if (folder / "distill_report.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    config = config_from_args(dict(teacher=str(teacher), vocab=str(inputs.vocab), corpus=str(contexts), out=str(folder),
                                   method=method, k=size.init_k, distill_epochs=size.distill_epochs, seed=seed,
                                   device=size.device, max_context_chars=200,
                                   cache_dir=str(inputs.work / "distill-cache")))
    distill_run(config, log=lambda *_: None)
    return folder


INIT_ARM = "flat"  # the masking every init is compared under


def init_run(inputs: StudyInputs, method: str, seed: int) -> Path:
    return inputs.work / "runs" / f"init-{method}-seed{seed}"


def init_unit(size: StudySize, inputs: StudyInputs, teacher: Path, paths: dict[str, Path], new_ids: list[int],
              method: str, seed: int) -> dict:
    """One init method with one seed: make the init, pre-train `steps`, the held-out curve."""
    from engine.reproduction.curves import train_with_curve

    started = time.perf_counter()
    init = make_init(size, inputs, teacher, paths["contexts"], method, seed)
    init_seconds = time.perf_counter() - started

    config = pretrain_config(size, init_run(inputs, method, seed), init, paths["shards"], INIT_ARM, seed)
    keep = method == size.masking_init and INIT_ARM in size.arms  # that masking arm is this very run
    trained = train_with_curve(config, held_out_curve(size, paths["shards"], new_ids), resolve_device(size.device),
                               keep_checkpoint=keep)
    report = json.loads((init / "distill_report.json").read_text(encoding="utf-8"))
    return {"method": method, "seed": seed, "init_seconds": round(init_seconds, 1),
            "mlm_head_fit": report.get("mlm_head_fit"), **trained}


def ner_scores(size: StudySize, inputs: StudyInputs, model: Path, seed: int, out: Path) -> dict:
    """Fine-tune and score each NER task on `model`: {task: {split: {f1, precision, recall}}}."""
    from engine.ner.finetune import FinetuneConfig
    from engine.ner.model_io import load_tokenizer
    from engine.ner.tasks import load_task
    from engine.ner.unit import run_unit

    config = FinetuneConfig(lr=size.ner_lr, epochs=size.ner_epochs, batch_size=size.ner_batch,
                            max_length=size.ner_max_length, context=min(32, (size.ner_max_length - 2) // 4),
                            device=size.device, progress_bar=False, max_train_sentences=size.ner_train_sentences)
    scores = {}
    for name in size.ner_tasks:
        task = load_task(inputs.ner_data, name, max_train_sentences=size.ner_train_sentences)
        if size.ner_eval_sentences is not None:
            for split in ("devel", "test"):
                task.splits[split].sentences = task.splits[split].sentences[:size.ner_eval_sentences]
        result = run_unit(model, load_tokenizer(model), task, seed, config, out)
        scores[name] = {split: {k: round(result[split][k], 4) for k in ("f1", "precision", "recall")}
                        for split in ("devel", "test")}
        scores[name]["sentences"] = result["sizes"]
    return scores


def masking_unit(size: StudySize, inputs: StudyInputs, teacher: Path, paths: dict[str, Path], new_ids: list[int],
                 arm: str, seed: int, init_result: dict | None = None) -> dict:
    """One curriculum arm with one seed from the recommended init: held-out curve, export, NER F1.

    The `flat` arm from the recommended init is the same run as that init's comparison run (same init,
    seed, masking and steps), so with `init_result` it is trained once and exported from there.
    """
    from engine.reproduction.curves import train_with_curve
    from engine.training.export import export_checkpoint

    init = make_init(size, inputs, teacher, paths["contexts"], size.masking_init, seed)
    same_run = arm == INIT_ARM and init_result is not None
    run = init_run(inputs, size.masking_init, seed) if same_run else inputs.work / "runs" / f"masking-{arm}-seed{seed}"
    if same_run and (run / "checkpoints").is_dir():  # the init comparison already trained this arm: export it
        trained = {key: init_result[key] for key in ("curve", "train_seconds")}
    else:
        config = pretrain_config(size, run, init, paths["shards"], arm, seed)
        trained = train_with_curve(config, held_out_curve(size, paths["shards"], new_ids), resolve_device(size.device),
                                   keep_checkpoint=True)
    model = inputs.work / "models" / f"{arm}-seed{seed}"
    shutil.rmtree(model, ignore_errors=True)
    export_checkpoint(run / "checkpoints", model, tokenizer_dir=paths["shards"])
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    ner = ner_scores(size, inputs, model, seed, inputs.work / "ner" / f"{arm}-seed{seed}")
    shutil.rmtree(model, ignore_errors=True)
    same = {"same_run_as": f"init-{size.masking_init}-seed{seed}"} if same_run else {}
    return {"arm": arm, "seed": seed, "init": size.masking_init, **trained, **same, "ner": ner}


def run_study(size: StudySize, inputs: StudyInputs, log: Callable[[str], None] = print) -> dict:
    """All parts in order; the figures of `study.json` (without the machine/commit envelope)."""
    started = time.perf_counter()
    teacher_results, results, units = open_work(size, inputs)
    paths = prepare_corpus(size, inputs)
    teacher = teacher_results.get("teacher", lambda: warm_teacher(size, inputs, paths), log)
    inputs = replace(inputs, work=units)  # inits, runs, models and NER folders of these settings
    teacher_folder = Path(teacher["folder"])
    new_ids = new_token_ids(teacher_folder, inputs.vocab)
    inits = [results.get(f"init-{method}-seed{seed}",
                         lambda m=method, s=seed: init_unit(size, inputs, teacher_folder, paths, new_ids, m, s), log)
             for method in size.methods for seed in size.seeds]
    init_of = {(unit["method"], unit["seed"]): unit for unit in inits}
    masking = [results.get(f"masking-{arm}-seed{seed}",
                           lambda a=arm, s=seed: masking_unit(size, inputs, teacher_folder, paths, new_ids, a, s,
                                                              init_of.get((size.masking_init, s))), log)
               for arm in size.arms for seed in size.seeds]
    return {"size": asdict(size), "new_tokens": len(new_ids), "teacher": teacher, "inits": inits, "masking": masking,
            "wall_s": round(time.perf_counter() - started, 1)}
