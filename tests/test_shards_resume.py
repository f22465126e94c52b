"""Restartable shard build: a build SIGKILLed anywhere and run again gives byte-identical shards."""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from engine.corpus.demo import demo_documents
from engine.shards import ShardError, ShardOptions, build_shards, read_vocab_file, train_vocab
from engine.shards.build import LOCK
from engine.shards.vocab import save_tokenizer

NUM_DOCS = 400
CHILD = """
import os, signal, sys
from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, read_vocab_file

vocab, out, kill_at, seq_lens = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4].split(",")]
edit = int(sys.argv[5])

def documents():
    for i, text in enumerate(demo_documents({num_docs}, seed=3)):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield f"demo{{i:05d}}", text + (" changed" if i == edit else "")
    if kill_at == {num_docs}:  # every document read, before the final flush and manifest
        os.kill(os.getpid(), signal.SIGKILL)

options = ShardOptions(seq_lens=seq_lens, valid_fraction=0.1, pack_buffer=64)
result = build_shards(documents(), out, read_vocab_file(vocab), options, batch_documents=8, checkpoint_tokens=3000)
print(result.resumed_documents)
""".format(num_docs=NUM_DOCS)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    save_tokenizer(train_vocab(demo_documents(200, seed=3), 600), folder, True)
    return folder / "vocab.txt"


def build(vocab: Path, out: Path, kill_at: int = -1, seq_lens: str = "32,128",
          edit: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(vocab), str(out), str(kill_at), seq_lens, str(edit)],
                          capture_output=True, text=True)


def folder_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "shards"
    result = build(vocab, out)
    assert result.returncode == 0 and result.stdout.split() == ["0"], result.stderr
    return folder_digest(out)


@pytest.mark.parametrize("kill_at, least_reused, most_reused", [
    (3, 0, 0),                        # before the first checkpoint: nothing to reuse
    (NUM_DOCS // 2, 150, NUM_DOCS // 2),  # mid-corpus, bytes written past the last checkpoint
    (NUM_DOCS, 350, NUM_DOCS),        # every document read, final flush and manifest not written
])
def test_build_killed_and_run_again_gives_the_uninterrupted_bytes(vocab, reference, tmp_path, kill_at,
                                                                  least_reused, most_reused):
    out = tmp_path / "shards"
    killed = build(vocab, out, kill_at)
    assert killed.returncode == -9
    assert not out.exists()
    resumed = build(vocab, out)
    assert resumed.returncode == 0, resumed.stderr
    assert least_reused <= int(resumed.stdout) <= most_reused
    assert folder_digest(out) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no work folder left


def test_checkpoint_of_a_build_with_other_options_is_not_reused(vocab, tmp_path):
    out = tmp_path / "shards"
    assert build(vocab, out, NUM_DOCS // 2).returncode == -9
    resumed = build(vocab, out, seq_lens="64")
    assert resumed.returncode == 0 and int(resumed.stdout) == 0, resumed.stderr
    fresh = build(vocab, tmp_path / "fresh", seq_lens="64")
    assert folder_digest(out) == folder_digest(tmp_path / "fresh")


def test_corpus_changed_since_the_kill_is_refused_and_the_next_run_starts_afresh(vocab, reference, tmp_path):
    out = tmp_path / "shards"
    assert build(vocab, out, NUM_DOCS // 2).returncode == -9
    changed = build(vocab, out, edit=5)
    assert changed.returncode != 0
    assert "the corpus differs from the one an interrupted build" in changed.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    again = build(vocab, out)
    assert again.returncode == 0 and int(again.stdout) == 0
    assert folder_digest(out) == reference


def test_a_second_build_into_the_same_output_is_refused_while_one_runs(vocab, tmp_path):
    work = tmp_path / ".shards.building"
    work.mkdir()
    with open(work / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ShardError, match="another build is writing into"):
            build_shards([("d", "some text")], tmp_path / "shards", read_vocab_file(vocab), ShardOptions())
    assert not (tmp_path / "shards").exists()
