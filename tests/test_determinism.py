"""Thread counts are runtime knobs (params.yaml ``runtime``): a training step must give the same bytes whatever
the number of torch CPU threads, or moving them out of the stages' DVC params would hide a result change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

TRAIN = """
import hashlib, sys
import torch
sys.path.insert(0, {tests!r})
from micro_models import micro_qwen2_5_vl
from skinflow.determinism import seed_everything

torch.set_num_threads({threads})
seed_everything(0)
model = micro_qwen2_5_vl(0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(3):
    ids = torch.randint(3, 280, (4, 48))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().numpy().tobytes())
print(digest.hexdigest())
"""


def _train_digest(threads: int) -> str:
    done = subprocess.run([sys.executable, "-c", TRAIN.format(tests=str(TESTS), threads=threads)],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def test_training_steps_give_the_same_bytes_on_one_and_on_several_threads():
    assert _train_digest(1) == _train_digest(2) == _train_digest(4)
