"""The run store: ids, the run life cycle, database-enforced finality, export and concurrency."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing as mp
import sqlite3
from dataclasses import replace

import pytest

from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id, spec_from_dict
from transfuse.store import RunFinishedError, Store


def make_spec(**kw) -> RunSpec:
    base = dict(data=DataSpec(name="synthetic:store", n_train=10), model=ModelSpec("cbr_tiny", 2),
                train=TrainSpec(steps=5, batch_size=4), seed=0, study="s1")
    base.update(kw)
    return RunSpec(**base)


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "ws")


def raw(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.path, isolation_level=None)


# -- run ids -------------------------------------------------------------------------------------
def test_run_id_is_stable_and_canonical():
    spec = make_spec()
    rid = run_id(spec)
    assert len(rid) == 12 and all(c in "0123456789abcdef" for c in rid)
    assert rid == run_id(make_spec())  # equal specs, equal ids
    # Canonical JSON: sorted keys, no whitespace, defaults written out; the id is its SHA-256.
    js = spec.to_json()
    assert " " not in js and "\n" not in js
    assert list(json.loads(js)) == sorted(json.loads(js))
    assert json.loads(js)["train"]["optimizer"] == "sgd"
    d = json.loads(js)
    d["data"].pop("data_root")  # where the files sit is not part of what the run is
    assert rid == hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert run_id(make_spec(data=replace(spec.data, data_root="/elsewhere"))) == rid
    # A spec survives the dict round trip (as in YAML/JSON files) with the same id.
    assert run_id(spec_from_dict(json.loads(js))) == rid
    # Key order of the input does not matter.
    d = json.loads(js)
    shuffled = {k: d[k] for k in reversed(list(d))}
    shuffled["train"] = {k: d["train"][k] for k in reversed(list(d["train"]))}
    assert run_id(spec_from_dict(shuffled)) == rid


@pytest.mark.parametrize("change", [
    dict(seed=1),
    dict(study="s2"),
    dict(study=None),
    dict(model=ModelSpec("cbr_small", 2)),
    dict(model=ModelSpec("cbr_tiny", 3)),
    dict(init=InitSpec("random", source="x")),
    dict(train=TrainSpec(steps=5, batch_size=4, lr=0.02)),
    dict(train=TrainSpec(steps=6, batch_size=4)),
    dict(train=TrainSpec(steps=5, batch_size=4, schedule="step")),
    dict(data=DataSpec(name="synthetic:store", n_train=11)),
    dict(data=DataSpec(name="synthetic:store", n_train=10, split_seed=1)),
    dict(data=DataSpec(name="synthetic:store", n_train=10, label_columns=("a",))),
], ids=lambda c: next(iter(c)) + "=" + str(next(iter(c.values())))[:30])
def test_run_id_is_spec_sensitive(change):
    assert run_id(make_spec(**change)) != run_id(make_spec())


def test_all_ids_distinct():
    specs = [make_spec(seed=s, model=ModelSpec(m, 2)) for s in range(20) for m in ("cbr_tiny", "cbr_small")]
    assert len({run_id(s) for s in specs}) == len(specs)


# -- life cycle ----------------------------------------------------------------------------------
def test_start_log_finish_round_trip(store):
    spec = make_spec()
    rid = store.start_run(spec, env={"torch": "x", "threads": 2})
    assert rid == run_id(spec)
    assert store.status(rid) == "running"
    store.set_info(rid, data_info={"n": 10}, model_info={"name": "cbr_tiny"}, init_report={"s": "random"})
    store.log_metrics(rid, 0, "val", {"auc": 0.5, "loss": 0.7})
    store.log_metrics(rid, 5, "train", {"loss": 0.6, "lr": 0.0})
    store.log_metrics(rid, 5, "val", {"auc": 0.75, "loss": 0.55, "auc/b": float("nan")})
    store.finish_run(rid, step=5, test_metrics={"auc": 0.8, "acc": 0.9, "auc/b": math.nan},
                     summary={"best_step": 5, "steps": 5})
    r = store.get_run(rid)
    assert r.status == "finished" and r.run_id == rid and r.study == "s1"
    assert r.spec == spec.to_dict()
    assert r.env == {"torch": "x", "threads": 2}
    assert r.data_info == {"n": 10} and r.model_info == {"name": "cbr_tiny"}
    assert r.init_report == {"s": "random"}
    assert r.summary == {"best_step": 5, "steps": 5}
    assert r.error is None
    assert r.finished >= r.started >= r.created - 1e-6
    assert r.wall_seconds == pytest.approx(r.finished - r.started)
    assert r.run_dir == str(store.run_dir(rid))
    assert store.get_run(rid[:6]).run_id == rid  # unique prefix
    rows = store.metrics(rid)
    assert rows == [
        (0, "val", "auc", 0.5), (0, "val", "loss", 0.7),
        (5, "test", "acc", 0.9), (5, "test", "auc", 0.8), (5, "test", "auc/b", None),
        (5, "train", "loss", 0.6), (5, "train", "lr", 0.0),
        (5, "val", "auc", 0.75), (5, "val", "auc/b", None), (5, "val", "loss", 0.55),
    ]
    assert store.final_metrics(rid) == {"acc": 0.9, "auc": 0.8, "auc/b": None}
    assert [x.run_id for x in store.list_runs(status="finished")] == [rid]
    assert store.list_runs(status="running") == [] and store.list_runs(study="other") == []


def test_store_reopens_with_same_data(store):
    rid = store.start_run(make_spec())
    store.log_metrics(rid, 1, "val", {"auc": 0.6})
    again = Store(store.workspace)  # schema creation is idempotent
    assert again.metrics(rid) == [(1, "val", "auc", 0.6)]
    assert again.status(rid) == "running" and again.status("nope") is None


def test_unknown_run_id(store):
    from transfuse.errors import TransfuseError

    with pytest.raises(TransfuseError, match="no run"):
        store.get_run("deadbeef")


def _finished(store: Store) -> str:
    rid = store.start_run(make_spec())
    store.log_metrics(rid, 1, "val", {"auc": 0.6})
    store.finish_run(rid, step=1, test_metrics={"auc": 0.7}, summary={})
    return rid


def test_finished_run_is_final_via_api(store):
    rid = _finished(store)
    before = (store.get_run(rid), store.metrics(rid))
    with pytest.raises(RunFinishedError, match=rid):
        store.start_run(make_spec())
    with pytest.raises(sqlite3.IntegrityError, match="finished"):
        store.log_metrics(rid, 2, "val", {"auc": 0.1})
    with pytest.raises(sqlite3.IntegrityError, match="finished"):
        store.log_metrics(rid, 1, "val", {"auc": 0.1})  # INSERT OR REPLACE of an existing row
    with pytest.raises(sqlite3.IntegrityError, match="finished"):
        store.finish_run(rid, step=1, test_metrics={"auc": 0.0}, summary={})
    with pytest.raises(sqlite3.IntegrityError, match="finished"):
        store.set_info(rid, data_info={"tampered": True})
    store.fail_run(rid, "late error")  # a no-op on a finished run
    assert (store.get_run(rid), store.metrics(rid)) == before


@pytest.mark.parametrize("sql", [
    "UPDATE runs SET status = 'running' WHERE run_id = ?",
    "UPDATE runs SET summary = '{}' WHERE run_id = ?",
    "UPDATE runs SET run_id = 'other' WHERE run_id = ?",
    "DELETE FROM runs WHERE run_id = ?",
    "DELETE FROM metrics WHERE run_id = ?",
    "INSERT INTO metrics VALUES (?, 99, 'val', 'auc', 0.1)",
    "INSERT OR REPLACE INTO metrics VALUES (?, 1, 'val', 'auc', 0.1)",
    "UPDATE metrics SET value = 0.99 WHERE run_id = ?",
    "UPDATE metrics SET run_id = 'other' WHERE run_id = ?",
], ids=lambda s: s.split(" WHERE")[0][:40])
def test_finished_run_is_final_even_with_raw_sql(store, sql):
    rid = _finished(store)
    before = (store.get_run(rid), store.metrics(rid))
    con = raw(store)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="finished"):
            con.execute(sql, (rid,))
    finally:
        con.close()
    assert (store.get_run(rid), store.metrics(rid)) == before


def test_metrics_of_running_run_can_be_moved_but_not_into_finished(store):
    rid = _finished(store)
    other = store.start_run(make_spec(seed=7))
    store.log_metrics(other, 2, "val", {"auc": 0.3})
    con = raw(store)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="finished"):
            con.execute("UPDATE metrics SET run_id = ? WHERE run_id = ?", (rid, other))
        con.execute("UPDATE metrics SET value = 0.4 WHERE run_id = ?", (other,))  # running: allowed
    finally:
        con.close()
    assert store.metrics(other) == [(2, "val", "auc", 0.4)]
    assert store.metrics(rid) == [(1, "test", "auc", 0.7), (1, "val", "auc", 0.6)]


def test_crashed_run_restarts_cleanly(store):
    spec = make_spec()
    rid = store.start_run(spec, env={"attempt": 1})
    created = store.get_run(rid).created
    for step in range(0, 30, 10):
        store.log_metrics(rid, step, "val", {"auc": 0.5, "loss": 1.0})
    # The process dies here: the run stays 'running' with partial metrics.
    assert store.status(rid) == "running" and len(store.metrics(rid)) == 6
    assert store.start_run(spec, env={"attempt": 2}) == rid
    r = store.get_run(rid)
    assert r.status == "running" and r.env == {"attempt": 2}
    assert r.created == created and r.started >= created
    assert store.metrics(rid) == []  # the partial curve is gone
    store.log_metrics(rid, 0, "val", {"auc": 0.55})
    store.finish_run(rid, step=5, test_metrics={"auc": 0.9}, summary={"steps": 5})
    assert store.metrics(rid) == [(0, "val", "auc", 0.55), (5, "test", "auc", 0.9)]
    assert len(store.list_runs()) == 1


def test_fail_run_then_retry(store):
    spec = make_spec()
    rid = store.start_run(spec)
    store.log_metrics(rid, 0, "val", {"auc": 0.5})
    store.fail_run(rid, "FloatingPointError: training loss is nan")
    r = store.get_run(rid)
    assert r.status == "failed" and r.error == "FloatingPointError: training loss is nan"
    assert r.finished is not None
    assert store.list_runs(status="failed")[0].run_id == rid
    # A failed run is not final: it may be retried, cleanly.
    store.start_run(spec)
    r = store.get_run(rid)
    assert r.status == "running" and r.error is None and r.finished is None
    assert store.metrics(rid) == []


def test_status_values_are_checked(store):
    rid = store.start_run(make_spec())
    con = raw(store)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("UPDATE runs SET status = 'done' WHERE run_id = ?", (rid,))
    finally:
        con.close()


# -- export --------------------------------------------------------------------------------------
def _populate(store: Store) -> dict[str, list]:
    rids = {}
    for seed, study in ((0, "s1"), (1, "s1"), (2, "s2")):
        rid = store.start_run(make_spec(seed=seed, study=study))
        store.log_metrics(rid, 0, "val", {"auc": 0.5 + seed / 10, "loss": 0.7})
        store.log_metrics(rid, 3, "val", {"auc": 0.6 + seed / 10, "auc/x": math.nan})
        if seed != 1:
            store.finish_run(rid, step=3, test_metrics={"auc": 0.8, "acc": 0.75}, summary={})
        rids[rid] = store.metrics(rid)
    return rids


def test_export_json_round_trip(store):
    rids = _populate(store)
    rows = json.loads(store.export(fmt="json"))
    assert len(rows) == sum(len(v) for v in rids.values())
    back: dict[str, list] = {}
    for row in rows:
        assert row["dataset"] == "synthetic:store" and row["model"] == "cbr_tiny"
        assert row["init"] == "random"
        assert row["status"] == store.status(row["run_id"])
        back.setdefault(row["run_id"], []).append((row["step"], row["split"], row["metric"], row["value"]))
    assert back == rids
    s1 = json.loads(store.export(fmt="json", study="s1"))
    assert {r["study"] for r in s1} == {"s1"} and {r["seed"] for r in s1} == {0, 1}


def test_export_csv_round_trip(store):
    rids = _populate(store)
    text = store.export(fmt="csv")
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["run_id", "study", "status", "dataset", "model", "init", "arm", "seed",
                                 "step", "split", "metric", "value"]
    back: dict[str, list] = {}
    statuses = {}
    for row in reader:
        value = float(row["value"]) if row["value"] != "" else None  # NaN/undefined → empty
        back.setdefault(row["run_id"], []).append((int(row["step"]), row["split"], row["metric"], value))
        statuses[row["run_id"]] = row["status"]
    assert back == rids
    assert sorted(statuses.values()) == ["finished", "finished", "running"]
    assert store.export(fmt="csv", study="nope").strip().count("\n") == 0  # header only


# -- SQLite settings and concurrency -------------------------------------------------------------
def test_wal_mode(store):
    con = raw(store)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    finally:
        con.close()
    assert {"finished_runs_are_final", "finished_runs_stay", "no_metrics_after_finish",
            "finished_metrics_stay", "finished_metrics_unchanged"} <= names


N_STEPS = 60


def _writer(workspace: str, seed: int, barrier, shared_rid: str) -> None:
    store = Store(workspace)  # both processes also race on creating the schema
    barrier.wait(timeout=60)
    rid = store.start_run(make_spec(seed=seed))
    for step in range(N_STEPS):
        store.log_metrics(rid, step, "val", {"auc": step / N_STEPS, "loss": float(seed)})
        # Both processes also append to one shared run (distinct steps per writer).
        store.log_metrics(shared_rid, step * 2 + seed - 100, "val", {"auc": float(seed)})
    store.finish_run(rid, step=N_STEPS, test_metrics={"auc": 0.5 + seed}, summary={"seed": seed})


def test_concurrent_writers_lose_nothing(tmp_path):
    ws = tmp_path / "ws"
    shared = Store(ws).start_run(make_spec(seed=-1))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(ws), s, barrier, shared)) for s in (100, 101)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = Store(ws)
    finished = store.list_runs(status="finished")
    assert sorted(r.spec["seed"] for r in finished) == [100, 101]
    for r in finished:
        rows = store.metrics(r.run_id)
        assert len(rows) == N_STEPS * 2 + 1
        assert store.final_metrics(r.run_id) == {"auc": 0.5 + r.spec["seed"]}
        assert r.summary == {"seed": r.spec["seed"]}
    shared_rows = store.metrics(shared)
    assert len(shared_rows) == 2 * N_STEPS
    assert sorted(v for *_, v in shared_rows) == [100.0] * N_STEPS + [101.0] * N_STEPS
