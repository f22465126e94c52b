"""`engine/prepare_data.py`: summary on success, documented options, one-line errors without output."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.corpus.demo import write_demo_corpus
from engine.shards import PackedShards

SCRIPT = Path(__file__).resolve().parents[1] / "engine" / "prepare_data.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_demo_corpus(tmp_path_factory.mktemp("corpus") / "demo", num_docs=120)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_builds_shards_and_prints_summary(corpus, tmp_path):
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab-size", 500,
                 "--seq-len", 64, 128, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "documents 120" in result.stdout and "packing efficiency" in result.stdout
    assert re.search(r"seq 64 train: [\d,]+ sequences", result.stdout)
    assert len(PackedShards(tmp_path / "out", "train", 128)) > 0
    saved = json.loads((tmp_path / "out" / "resolved_config.json").read_text())
    assert saved["shards"]["seq_lens"] == [64, 128] and saved["vocab_size"] == 500


def test_help_documents_every_option():
    result = run("--help")
    assert result.returncode == 0
    for option in ("--corpus", "--format", "--out", "--vocab", "--vocab-size", "--min-frequency", "--seq-len",
                   "--valid-fraction", "--cased", "--pack-buffer", "--workers", "--batch-documents",
                   "--checkpoint-tokens", "--overwrite", "--quiet", "--text-field", "--id-field"):
        assert option in result.stdout


def test_missing_corpus_fails_without_output(tmp_path):
    result = run("--corpus", tmp_path / "nowhere", "--out", tmp_path / "out", "--vocab-size", 500)
    assert_one_line_error(result, "corpus not found")
    assert not (tmp_path / "out").exists()


def test_malformed_jsonl_line_fails_naming_file_and_line_without_output(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"text": "fine words " * 30}) + "\n{broken\n", encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fine", "words"]) + "\n")
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab", vocab, "--quiet")
    assert_one_line_error(result, r"docs\.jsonl:2: malformed JSON line")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "vocab.txt"]


def test_vocab_without_special_tokens_fails(corpus, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab", vocab)
    assert_one_line_error(result, r"vocab\.txt: missing special token\(s\) \[CLS\], \[SEP\], \[MASK\]")
    assert not (tmp_path / "out").exists()


def test_out_holding_different_shards_fails_and_keeps_them(corpus, tmp_path):
    assert run("--corpus", corpus, "--out", tmp_path / "out", "--vocab-size", 500, "--quiet").returncode == 0
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab-size", 500, "--seq-len", 64, "--quiet")
    assert_one_line_error(result, "already holds different shards")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest


def test_bad_option_value_fails_naming_the_option(corpus, tmp_path):
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab-size", 500, "--valid-fraction", 1.5)
    assert_one_line_error(result, "valid_fraction")
    assert not (tmp_path / "out").exists()


# -- never lose or silently replace a user's data ----------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["txt", "auto"])
def test_out_inside_the_corpus_is_refused(corpus, fmt):
    before = _snapshot(corpus)
    result = run("--corpus", corpus, "--format", fmt, "--out", corpus / "shards", "--vocab-size", 500, "--quiet")
    assert_one_line_error(result, r"lies inside --corpus")
    assert _snapshot(corpus) == before


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """Shards of `corpus` and the vocabulary they were built with (for same-tokenizer rebuilds)."""
    out = tmp_path_factory.mktemp("built") / "shards"
    result = run("--corpus", corpus, "--out", out, "--vocab-size", 500, "--seq-len", 64, "--quiet")
    assert result.returncode == 0, result.stderr
    vocab = out.parent / "vocab.txt"
    vocab.write_bytes((out / "vocab.txt").read_bytes())
    return out, vocab


def _summary(result) -> str:
    """The build's summary line: stdout after the resolved-config line that every entry script prints first."""
    lines = [line for line in result.stdout.splitlines() if not line.startswith("resolved ")]
    return lines[0] if lines else ""


def test_shards_of_another_corpus_are_not_replaced_without_overwrite(built, tmp_path):
    out, vocab = built
    shards = tmp_path / "shards"
    shutil.copytree(out, shards)
    other = write_demo_corpus(tmp_path / "other", num_docs=60, seed=5)
    before = _snapshot(shards)
    result = run("--corpus", other, "--out", shards, "--vocab", vocab, "--seq-len", 64, "--quiet")
    assert_one_line_error(result, r"already holds shards of another corpus")
    assert _snapshot(shards) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left"
    result = run("--corpus", other, "--out", shards, "--vocab", vocab, "--seq-len", 64, "--quiet", "--overwrite")
    assert result.returncode == 0 and _summary(result).startswith("replaced:"), result.stderr


def test_rebuild_over_a_damaged_shard_repairs_it_instead_of_reporting_unchanged(corpus, built, tmp_path):
    out, vocab = built
    shards = tmp_path / "shards"
    shutil.copytree(out, shards)
    ids = shards / "seq64" / "train.ids.bin"
    good = ids.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    ids.write_bytes(bytes(damaged))
    result = run("--corpus", corpus, "--out", shards, "--vocab", vocab, "--seq-len", 64, "--quiet")
    assert result.returncode == 0, result.stderr
    assert _summary(result).startswith("replaced:"), result.stdout
    assert ids.read_bytes() == good


def test_killed_run_continues_from_its_checkpoint_and_writes_the_same_bytes(tmp_path):
    corpus = write_demo_corpus(tmp_path / "corpus", num_docs=1500)
    args = ["--corpus", corpus, "--vocab-size", 500, "--seq-len", 64, 128, "--workers", 1, "--batch-documents", 4,
            "--checkpoint-tokens", 2000, "--quiet"]
    assert run(*args, "--out", tmp_path / "whole").returncode == 0
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args), "--out", str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".out.building" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the build finished before its first checkpoint could be seen"
    result = run(*args, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert re.search(r"resumed an interrupted build: [\d,]+ documents reused", result.stdout)

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "resolved_config.json"}  # names --out
    assert digest(tmp_path / "out") == digest(tmp_path / "whole")


def test_checkpoint_interval_must_be_positive(corpus, tmp_path):
    result = run("--corpus", corpus, "--out", tmp_path / "out", "--vocab-size", 500, "--checkpoint-tokens", 0)
    assert_one_line_error(result, "checkpoint_tokens must be at least 1")
    assert not (tmp_path / "out").exists()
