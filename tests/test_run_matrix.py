"""perf/run_matrix.py: grid parsing, statistics, report writers, --compare, and one
tiny end-to-end run (files and plots written; timings are not checked)."""
import csv
import json
import os
import sys

import pytest

PERF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf")
sys.path.insert(0, PERF)
import engines  # noqa: E402
import run_matrix as rm  # noqa: E402


def parse(*argv):
    return rm.build_grid(rm.make_parser().parse_args(list(argv)))


def exit_code_and_error(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        rm.main(list(argv))
    return info.value.code, capsys.readouterr().err


# --- grid parsing --------------------------------------------------------------------

def test_lists_take_commas_and_spaces_and_drop_duplicates():
    grid = parse("--workers", "1,2", "4", "2", "--batch", "1", "--value-size", "16,1000",
                 "--keys", "1_000", "--engines", "amdb,dict")
    assert grid["workers"] == [1, 2, 4]
    assert grid["batch"] == [1]
    assert grid["value_size"] == [16, 1000]
    assert grid["keys"] == [1000]
    assert grid["engines"] == ["amdb", "dict"]


def test_workload_order_and_durable_words():
    grid = parse("--workload", "put,mixed", "scan", "--order", "seq", "--durable", "off,on")
    assert grid["workload"] == ["put", "mixed90", "mixed50", "scan"]
    assert grid["order"] == ["sequential"]
    assert grid["durable"] == [False, True]
    assert parse("--workload", "all")["workload"] == list(rm.WORKLOADS)
    assert parse("--durable", "memory")["durable"] == [False]


def test_defaults_full_and_quick():
    full = parse()
    assert full["batch"] == [1, 100, 5000, 100_000]
    assert full["value_size"] == [16, 100, 1000, 16384]
    assert full["durable"] == [False, True]
    assert full["engines"] == list(engines.ENGINES)
    assert full["workers"] == rm.default_workers()
    quick = parse("--quick")
    assert len(rm.expand_cells(quick)) < len(rm.expand_cells(full))
    assert parse("--quick", "--engines", "dict")["engines"] == ["dict"]   # flags override


def test_default_workers_are_powers_of_two_up_to_the_core_count():
    assert rm.default_workers(1) == [1]
    assert rm.default_workers(2) == [1, 2]
    assert rm.default_workers(6) == [1, 2, 4, 6]
    assert rm.default_workers(16) == [1, 2, 4, 8, 16]


def test_expand_cells_is_the_product_grouped_by_data():
    grid = parse("--workload", "put,get", "--batch", "1,10", "--value-size", "16,32",
                 "--keys", "10", "--order", "random,sequential", "--durable", "off")
    cells = rm.expand_cells(grid)
    assert len(cells) == 2 * 2 * 2 * 2
    data_keys = [(c["keys"], c["value_size"], c["order"]) for c in cells]
    # each (keys, value size, order) forms one contiguous run: data built once
    runs = [k for i, k in enumerate(data_keys) if i == 0 or k != data_keys[i - 1]]
    assert len(runs) == len(set(data_keys)) == 4


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers: 0 is impossible"),
    (["--workers", "257"], "--workers: 257 is impossible"),
    (["--workers", ""], "--workers: empty list"),
    (["--workers", ","], "--workers: empty list"),
    (["--batch", "0"], "--batch: 0 is impossible"),
    (["--keys", "-5"], "--keys: -5 is impossible"),
    (["--value-size", "x"], "'x' is not an integer"),
    (["--workload", "bogus"], "unknown value 'bogus'"),
    (["--order", "sideways"], "unknown value 'sideways'"),
    (["--durable", "maybe"], "'maybe' is not off/on"),
    (["--nodes", "0"], "--nodes: 0 is impossible"),
    (["--repeat", "0"], "--repeat: 0 is impossible"),
    (["--keys", "1000000000000", "--value-size", "4000000"], "GiB of memory"),
])
def test_impossible_grids_exit_2_with_a_clear_message(capsys, argv, message):
    code, err = exit_code_and_error(capsys, *argv)
    assert code == 2
    assert message in err


def test_unknown_engine_lists_the_installed_ones(capsys):
    code, err = exit_code_and_error(capsys, "--engines", "amdb,mongo")
    assert code == 2
    assert "unknown engine(s) mongo" in err
    assert "installed here:" in err and "dict" in err and "sqlite3" in err


def test_a_missing_peer_is_skipped_with_a_notice(monkeypatch, capsys):
    def not_installed(self):
        raise ImportError("No module named 'plyvel'")
    monkeypatch.setattr(engines.PlyvelEngine, "load", not_installed)
    grid = parse("--engines", "plyvel,dict")
    variants, info = rm.load_variants(grid, print)
    assert [v.name for v in variants] == ["dict"]
    assert info["plyvel"]["status"].startswith("skipped: not available")
    assert "NOTICE plyvel skipped" in capsys.readouterr().out


def test_check_memory_refuses_what_cannot_fit():
    grid = parse("--keys", "1000", "--value-size", "100")
    with pytest.raises(rm.GridError, match="memory"):
        rm.check_memory(grid, available=1000, shm_free=1 << 40)
    with pytest.raises(rm.GridError, match="/dev/shm"):
        rm.check_memory(grid, available=1 << 40, shm_free=1000)
    rm.check_memory(grid, available=1 << 40, shm_free=1 << 40)


# --- statistics ------------------------------------------------------------------------

def test_summarize_median_and_spread():
    stats = rm.summarize([100.0, 300.0, 200.0])
    assert stats == {"n": 3, "median": 200.0, "min": 100.0, "max": 300.0, "spread_pct": 100.0}
    assert rm.summarize([10.0, 20.0])["median"] == 15.0
    assert rm.summarize([5.0])["spread_pct"] == 0.0
    assert rm.summarize([])["median"] is None


def row(engine, median, workers=None, workload="put", status="ok", durable=False, spread=1.0):
    r = {"workload": workload, "batch": 100, "value_size": 16, "keys": 1000, "order": "random",
         "durable": durable, "nodes": 1, "engine": engine, "workers": workers,
         "status": status, "reason": None if status == "ok" else "because",
         "repeats": 3, "samples_ops_s": [median] * 3 if median else [],
         "median_ops_s": median, "min_ops_s": median, "max_ops_s": median,
         "spread_pct": spread if median else None, "median_s": 1000 / median if median else None,
         "peak_rss_owner_mib": 50.0, "rss_owner_start_mib": 40.0,
         "peak_rss_workers_mib": 30.0 if engine == "amdb" else None,
         "peak_rss_total_mib": 80.0, "stored_bytes": 64000, "bytes_per_key": 64.0}
    return r


def test_ratio_is_amdb_over_the_best_real_peer_of_the_same_cell():
    rows = rm.add_ratios([row("amdb", 300.0, 1), row("amdb", 600.0, 2), row("lmdb", 200.0),
                          row("plyvel", 100.0), row("dict", 10_000.0),
                          row("lmdb", 900.0, workload="get"), row("amdb", 450.0, 2, "get")])
    amdb = {(r["workload"], r["workers"]): r for r in rows if r["engine"] == "amdb"}
    assert amdb[("put", 1)]["ratio_vs_best_peer"] == pytest.approx(1.5)
    assert amdb[("put", 2)]["ratio_vs_best_peer"] == pytest.approx(3.0)
    assert amdb[("put", 2)]["best_peer"] == "lmdb"          # dict is a reference, not a peer
    assert amdb[("get", 2)]["ratio_vs_best_peer"] == pytest.approx(0.5)


# --- workloads (on dict: fast, and the checks must pass) -----------------------------

@pytest.mark.parametrize("workload", ["put", "get", "mixed90", "mixed50", "put_array"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("order", ["sequential", "random"])
def test_every_workload_verifies_on_a_correct_engine(tmp_path, workload, batch, order):
    data = rm.Data(50, 24, order, seed=1)
    plan = rm.make_plan(data, workload, batch, seed=1)
    measured = rm.run_once(engines.DictEngine(), False, plan, data, str(tmp_path))
    assert measured["seconds"] > 0 and measured["owner_hwm"] > 0


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_scan_counts_every_item(tmp_path, order):
    data = rm.Data(50, 24, order, seed=1)
    engine = engines.Sqlite3Engine()
    engine.load()
    for batch in (1, 7, 100):
        rm.run_once(engine, False, rm.make_plan(data, "scan", batch, seed=1), data, str(tmp_path))


def test_a_wrong_answer_fails_the_cell(tmp_path):
    class LosingDict(engines.DictEngine):
        def put_items(self, db, items):
            for key, value in list(items)[:-1]:      # drops the last write
                db[key] = value
    data = rm.Data(50, 24, "sequential", seed=1)
    data.sample = [49]
    plan = rm.make_plan(data, "put", 1, seed=1)
    with pytest.raises(rm.VerifyError, match="returned None"):
        rm.run_once(LosingDict(), False, plan, data, str(tmp_path))


def test_mixed_plan_has_the_requested_write_share():
    data = rm.Data(4000, 8, "random", seed=3)
    assert 300 < rm.make_plan(data, "mixed90", 1, seed=3).writes < 500
    assert 1700 < rm.make_plan(data, "mixed50", 1, seed=3).writes < 2300


# --- report writers ----------------------------------------------------------------------

def report(rows, created="2026-01-01T00:00:00+00:00", cpu="Test CPU"):
    return {
        "schema": rm.SCHEMA, "created": created, "argv": [], "elapsed_s": 1.0,
        "interrupted": False,
        "machine": {"cpu_model": cpu, "cpu_count": 2, "cpus_usable": 2, "memory_gib": 8.0,
                    "python": "CPython 3.11", "platform": "Linux"},
        "engines": {"amdb": {"status": "ok", "version": "amdb 0", "settings": "s"},
                    "lmdb": {"status": "ok", "version": "lmdb 0", "settings": "s"},
                    "dict": {"status": "ok", "version": "py", "settings": "s"}},
        "grid": {"workers": [1, 2], "batch": [100], "value_size": [16], "keys": [1000],
                 "order": ["random"], "workload": ["put"], "durable": [False, True],
                 "nodes": [1], "engines": ["amdb", "lmdb", "dict"]},
        "config": {"repeat": 3, "warmup": 1, "tmp_parent": "/tmp", "tmp_fstype": "ext4"},
        "results": rm.add_ratios(rows), "plots": ["scaling.png"],
    }


def sample_rows():
    return [row("amdb", 3_000_000.0, 1), row("amdb", 5_000_000.0, 2), row("lmdb", 2_000_000.0),
            row("dict", 20_000_000.0),
            row("amdb", None, 1, status="skipped", durable=True),
            row("amdb", None, 2, status="skipped", durable=True),
            row("lmdb", 1_500_000.0, durable=True), row("dict", None, status="skipped", durable=True)]


def test_csv_has_one_line_per_measurement(tmp_path):
    path = tmp_path / "results.csv"
    rm.write_csv(path, rm.add_ratios(sample_rows()))
    with open(path) as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == list(rm.CSV_FIELDS)
    assert len(lines) == len(sample_rows())
    first = lines[0]
    assert first["engine"] == "amdb" and first["workers"] == "1" and first["durable"] == "off"
    assert float(first["median_ops_s"]) == 3_000_000.0
    assert float(first["ratio_vs_best_peer"]) == pytest.approx(1.5)
    assert first["samples_ops_s"].count(";") == 2
    lmdb = lines[2]
    assert lmdb["workers"] == "" and lmdb["ratio_vs_best_peer"] == ""
    assert lines[4]["status"] == "skipped" and lines[4]["durable"] == "on"


def test_json_round_trips(tmp_path):
    path = tmp_path / "results.json"
    rm.write_json(path, report(sample_rows()))
    loaded = rm.load_report(str(path))
    assert loaded["results"][1]["ratio_vs_best_peer"] == pytest.approx(2.5)
    assert loaded["machine"]["cpu_model"] == "Test CPU"


def test_markdown_summary_table():
    text = rm.summary_markdown(report(sample_rows()))
    assert "Machine: Test CPU, 2 cores" in text
    assert "| workload | batch | value B | keys | order | durable | workers | amdb ops/s |" in text
    assert "| put | 100 | 16 | 1,000 | random | off | 2 | 5M ±1% | 2M ±1% | 20M ±1% | 2.50x (lmdb) |" \
        in text
    # the durable cell: AmDb skipped in one line, the peer still measured
    assert "| put | 100 | 16 | 1,000 | random | on | all | skipped | 1.5M ±1% | skipped | n/a |" in text
    assert "- skipped amdb w=1: 1 cell(s): because" in text
    assert "## Memory" in text and "[scaling.png](scaling.png)" in text


# --- compare -------------------------------------------------------------------------------

def test_compare_flags_changes_beyond_the_noise():
    a = report(sample_rows())
    rows_b = sample_rows()
    rows_b[0]["median_ops_s"] = 1_500_000.0           # amdb w=1: -50%
    rows_b[1]["median_ops_s"] = 5_100_000.0           # amdb w=2: +2%, noise
    rows_b[2]["median_ops_s"] = 3_000_000.0           # lmdb: +50%
    b = report(rows_b, created="2026-01-02T00:00:00+00:00", cpu="Other CPU")
    text, worse = rm.compare_reports(a, b, threshold=5.0)
    assert worse == 1
    assert "| put | 100 | 16 | 1,000 | random | off | amdb w=1 | 3M | 1.5M | -50.0% | SLOWER |" in text
    assert "| amdb w=2 | 5M | 5.1M | +2.0% | ~ |" in text
    assert "| lmdb | 2M | 3M | +50.0% | faster |" in text
    assert "different machines" in text


def test_compare_from_the_command_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    rm.write_json(a, report(sample_rows()))
    rm.write_json(b, report(sample_rows()))
    assert rm.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "0 slower, 0 faster" in out
    (tmp_path / "bad.json").write_text("{}")
    code, err = exit_code_and_error(capsys, "--compare", str(a), str(tmp_path / "bad.json"))
    assert code == 2 and "not a run_matrix results.json" in err
    code, err = exit_code_and_error(capsys, "--compare", str(a), str(tmp_path / "none.json"))
    assert code == 2 and "cannot read" in err


# --- end to end ----------------------------------------------------------------------------

def test_tiny_end_to_end_run_writes_every_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("make asan-test: matplotlib's ft2font throws C++ exceptions that a preloaded "
                    "ASan runtime cannot intercept (CHECK failed in __cxa_throw), not AmDb code")
    out = tmp_path / "out"
    code = rm.main(["--engines", "amdb,dict", "--workers", "1,2", "--workload", "put,get,scan",
                    "--batch", "1,50", "--value-size", "16", "--keys", "200",
                    "--order", "random", "--durable", "off,on", "--nodes", "1,2",
                    "--repeat", "1", "--warmup", "0", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("results.csv", "results.json", "summary.md") + rm.PLOT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in rm.PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    rows = results["results"]
    measured = [r for r in rows if r["status"] == "ok"]
    # memory only, nodes=1: amdb w=1, w=2 and dict in put/get, amdb only in scan;
    # durable: amdb w=1, w=2 in put/get/scan (dict has no durable mode)
    assert len(measured) == 3 * 2 * 2 + 2 * 2 + 2 * 3 * 2
    assert all(r["median_ops_s"] > 0 and r["repeats"] == 1 for r in measured)
    amdb = [r for r in measured if r["engine"] == "amdb"]
    assert all(r["bytes_per_key"] > 16 and r["peak_rss_workers_mib"] > 0 for r in amdb)
    durable = [r for r in rows if r["engine"] == "amdb" and r["durable"] and r["nodes"] == 1]
    assert len(durable) == 2 * 3 * 2 and all(r["status"] == "ok" for r in durable)
    clustered = [r for r in rows if r["nodes"] == 2]
    assert clustered and all(r["status"] == "skipped" for r in clustered)
    assert results["machine"]["cpu_count"] == os.cpu_count()
    assert results["engines"]["amdb"]["version"].startswith("amdb ")
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| put | 50 | 16 | 200 | random | off | 2 |" in (out / "summary.md").read_text()
    assert "amdb ops/s" in printed
