"""The documentation's code runs as written: every ```python block of
README.md on its own (each starts with its imports), and the blocks of
docs/API.md in order in one process (the first opens the `db` the others
use). Each runs in a fresh directory, in a child process."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def python_blocks(name):
    with open(os.path.join(ROOT, name)) as f:
        text = f.read()
    blocks = []
    for match in BLOCK.finditer(text):
        indent = len(match.group(1))
        lines = [line[indent:] for line in match.group(2).splitlines()]
        line_no = text[:match.start()].count("\n") + 1
        blocks.append((line_no, "\n".join(lines) + "\n"))
    return blocks


def run_code(code, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


README_BLOCKS = python_blocks("README.md")


def test_the_docs_have_code_to_run():
    assert len(README_BLOCKS) >= 6 and len(python_blocks("docs/API.md")) >= 3


@pytest.mark.parametrize("line_no, code", README_BLOCKS, ids=[f"README.md:{n}" for n, _ in README_BLOCKS])
def test_readme_block_runs_as_written(line_no, code, tmp_path):
    if "DistributedCluster" in code:
        pytest.importorskip("ray")
    out = run_code(code, tmp_path)
    assert out.returncode == 0, f"README.md line {line_no}:\n{code}\n{out.stderr[-3000:]}"


def test_api_blocks_run_in_order_as_written(tmp_path):
    code = "".join(block for _, block in python_blocks("docs/API.md")) + "db.close()\n"
    out = run_code(code, tmp_path)
    assert out.returncode == 0, f"docs/API.md:\n{code}\n{out.stderr[-3000:]}"
