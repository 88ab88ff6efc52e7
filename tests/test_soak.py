"""Long soak runs, excluded from `make test`; run them on purpose:

    .venv/bin/python -m pytest -m slow tests/test_soak.py
    make asan && LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
        .venv/bin/python -m pytest -m slow tests/test_soak.py       # the same under ASan/UBSan
"""
import random

import pytest

from test_history import _run_random_history
from test_model import run_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", range(100, 140))
def test_history_model_many_seeds(make_db, seed):
    rng = random.Random(seed)
    db = make_db(workers=rng.choice([1, 2, 3]), max_batch=rng.choice([2, 7, 100_000]), keep_versions=None)
    model, keys, seqs = _run_random_history(db, rng, batches=120)
    for key in keys:
        chain = model.versions.get(key, [])
        history = db.history(key, oldest_first=True)
        assert [(v.seq, v.value) for v in history] == [(s, val) for s, val in chain]
        for seq in seqs:
            assert db.get(key, at_seq=seq) == model.at(key, seq)
    report = db.verify()
    assert report.ok, report.breaks[:5]


@pytest.mark.parametrize("workers,max_batch", [(1, 100_000), (2, 2), (3, 5)])
def test_dict_model_long(make_db, workers, max_batch):
    db = make_db(workers=workers, max_batch=max_batch)
    run_model(db, 2000, steps=40)
    assert db.verify().ok
