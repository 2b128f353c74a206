"""The parse pool: the same store, tasks and quarantine reasons as in-process checks; lazy
start; clean shutdown (close, Ctrl-C, an exception); a crashed worker falls back in-process."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.files import ingest_files
from fhir_bridge.sync.ingest import Ingestor, IngestResult, ProfilePolicy
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.pool import (
    MAX_RESTARTS,
    ParsePool,
    PendingCheck,
    auto_workers,
    encode,
)
from tests.sync.test_ingest_pages import _hl7_examples, _samples, _second_pass, _state
from tests.utils import NOW, ROOT

SOURCE = "main-ehr"  # _state reads this source's hashes


@pytest.fixture(scope="module")
def pool(profile_set):
    """Two started workers that take pages of any size; closed after the module."""
    started = ParsePool(profile_set, 2, min_resources=0, min_page=1)
    started.wait_ready(60)
    yield started
    started.close()


def _ingestor(store, rules, profile_set, pool: ParsePool | None) -> Ingestor:
    urls = tuple(p.url for p in profile_set.profiles)
    return Ingestor(
        store,
        rules,
        TaskService(store, lambda: NOW, []),
        lambda: NOW,
        profile_set=profile_set,
        policies={SOURCE: ProfilePolicy(urls), "lenient": ProfilePolicy(urls, quarantine=False)},
        pool=pool,
    )


def _run(ingestor: Ingestor, pages: list[tuple[str, list[Any]]], initial: bool) -> IngestResult:
    total = IngestResult()
    for rtype, rows in pages:
        for start in range(0, len(rows), 150):  # several chunks per page, several pages
            chunk = copy.deepcopy(rows[start : start + 150])
            total.add(ingestor.ingest(SOURCE, chunk, rtype, initial=initial))
    return total


def _figures(result: IngestResult) -> tuple[Any, ...]:
    return (
        result.received,
        result.stored,
        result.unchanged,
        result.quarantined,
        result.tasks_created,
        result.tasks_updated,
        result.tasks_closed,
        result.tasks_reopened,
        result.rule_errors,
        result.max_last_updated,
        result.tasks_by_rule,
    )


def _odd_pages() -> list[tuple[str, list[Any]]]:
    """The HL7 examples (some break the bridge profiles) and items that are not resources."""
    odd: list[Any] = [
        "not a resource",
        {"resourceType": "Patient"},  # no id
        {"resourceType": "Patient", "id": "nan", "gender": float("nan")},  # pickled, not JSON
        {"resourceType": "Patient", "id": "big", "multipleBirthInteger": 2**70},
        {"resourceType": "Nonsense", "id": "x"},
    ]
    return [(None, _hl7_examples()), ("Patient", odd)]  # type: ignore[list-item]


def test_pool_gives_the_in_process_store_tasks_and_quarantine(tmp_path, rules, profile_set, pool):
    """Sample first load, a changing second sync and the HL7 examples: the same figures, tasks,
    history, quarantine reasons and stored hashes with the pool as without."""
    samples = _samples()
    first = [
        (t, samples[t]) for t in dependency_order(DEFAULT_RESOURCE_TYPES, rules) if t in samples
    ]
    states, figures = [], []
    before = pool.pages_checked
    for name, used in (("in-process", None), ("pool", pool)):
        store = SqliteStore(tmp_path / f"{name}.db")
        try:
            ingestor = _ingestor(store, rules, profile_set, used)
            runs = [
                _run(ingestor, first, initial=True),
                _run(ingestor, _second_pass(samples), initial=False),
                _run(ingestor, _odd_pages(), initial=False),
            ]
            figures.append([_figures(r) for r in runs])
            states.append(_state(store))
        finally:
            store.close()
    assert pool.pages_checked - before >= 10  # the pool really did the pages
    assert figures[0] == figures[1]
    assert figures[0][0][4] > 100 and figures[0][2][3] > 3  # tasks made, examples quarantined
    assert states[0] == states[1]


def test_warn_policy_logs_the_same_with_the_pool(store, rules, profile_set, pool):
    """A warn source stores violators and logs one line each, as in-process."""
    ingestor = _ingestor(store, rules, profile_set, pool)
    docs = _hl7_examples()
    with capture_logs() as logs:
        result = ingestor.ingest("lenient", docs)
    in_process = Ingestor(
        SqliteStore(":memory:"),
        rules,
        TaskService(store, lambda: NOW, []),
        lambda: NOW,
        profile_set=profile_set,
        policies=ingestor.policies,
    )
    with capture_logs() as expected:
        in_process.ingest("lenient", copy.deepcopy(docs))
    in_process.store.close()
    assert result.quarantined == 0
    warned = [e for e in logs if e["event"] == "profile_violation_stored"]
    assert warned and warned == [e for e in expected if e["event"] == "profile_violation_stored"]


def test_small_jobs_start_no_pool(store, rules, profile_set):
    """Below min_resources no process starts: unit tests and the demo pay nothing."""
    lazy = ParsePool(profile_set, 2, min_resources=2000)
    try:
        ingestor = _ingestor(store, rules, profile_set, lazy)
        ingestor.ingest(SOURCE, copy.deepcopy(_samples()["Patient"]), "Patient")
        assert lazy.pids() == [] and not lazy.ready()
        assert ingestor.precheck(SOURCE, [{"resourceType": "Patient"}], "Patient", 10) is None
    finally:
        lazy.close()


def test_first_big_page_is_checked_in_process_while_workers_start(store, rules, profile_set):
    """The page that starts the pool does not wait for it; a later page goes to the workers."""
    lazy = ParsePool(profile_set, 1, min_resources=1)
    try:
        ingestor = _ingestor(store, rules, profile_set, lazy)
        patients = _samples()["Patient"] * 2  # 60: above min_page
        ingestor.ingest(SOURCE, copy.deepcopy(patients), "Patient")
        assert lazy.pages_checked == 0
        lazy.wait_ready(60)
        ingestor.ingest(SOURCE, copy.deepcopy(patients), "Patient")
        assert lazy.pages_checked == 1
        ingestor.ingest(SOURCE, copy.deepcopy(patients[:20]), "Patient")  # below min_page
        assert lazy.pages_checked == 1
    finally:
        lazy.close()


def test_background_start_leaves_pages_in_process_until_ready(profile_set):
    """A pool started in the background takes no page before its workers are ready (they are
    checked in-process), then takes them."""
    own = ParsePool(profile_set, 1, min_resources=0)
    page = copy.deepcopy(_samples()["Patient"]) * 2
    try:
        own.start(background=True)
        assert own.submit(page, "Patient", ()) is None
        own.wait_ready(60)
        pending = own.submit(page, "Patient", ())
        assert pending is not None
        results = pending.results()
        assert results is not None and len(results) == len(page)
    finally:
        own.close()


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    """The pids still alive (not zombies) after waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def test_close_stops_the_workers(profile_set):
    """close() leaves no worker process behind."""
    own = ParsePool(profile_set, 2, min_resources=0)
    pids = own.wait_ready(60)
    assert len(set(pids)) >= 1 and all(_alive(p) for p in pids)
    own.close()
    assert _wait_gone(pids) == []
    assert own.submit([{"resourceType": "Patient"}], "Patient", ()) is None


def _ingest_despite_the_pool(ingestor: Ingestor) -> tuple[list[dict[str, Any]], list[Any]]:
    """Ingest the sample Patients through a pool that fails: every one is stored anyway;
    the Patients and the `parse_pool_failed` log events (at least one)."""
    patients = copy.deepcopy(_samples()["Patient"])
    with capture_logs() as logs:
        result = ingestor.ingest(SOURCE, patients, "Patient")
    assert result.received == len(patients) and result.stored == len(patients)
    failed = [e for e in logs if e["event"] == "parse_pool_failed"]
    assert failed
    return patients, failed


def test_crashed_worker_falls_back_in_process_and_a_fresh_pool_follows(store, rules, profile_set):
    """A killed worker: the page is checked in-process with a warning, nothing is lost, and
    the next page starts a fresh pool."""
    own = ParsePool(profile_set, 1, min_resources=0, min_page=1)
    try:
        [pid] = own.wait_ready(60)
        ingestor = _ingestor(store, rules, profile_set, own)
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid])
        patients, failed = _ingest_despite_the_pool(ingestor)
        assert failed[0]["fallback"] == "in-process"
        assert failed[0]["log_level"] == "warning"
        own.wait_ready(60)  # a fresh pool
        again = ingestor.ingest(SOURCE, copy.deepcopy(patients), "Patient")
        assert again.unchanged == len(patients) and own.pages_checked == 1
    finally:
        own.close()


def test_hung_worker_is_killed_and_the_page_checked_in_process(store, rules, profile_set):
    """A worker that stops answering (here: SIGSTOP) holds a page no longer than the page
    timeout: it is killed, the page is checked in-process with a warning, nothing is lost."""
    own = ParsePool(profile_set, 1, min_resources=0, min_page=1, page_timeout=2)
    try:
        [pid] = own.wait_ready(60)
        ingestor = _ingestor(store, rules, profile_set, own)
        os.kill(pid, signal.SIGSTOP)
        _, failed = _ingest_despite_the_pool(ingestor)
        assert failed[0]["error"] == "TimeoutError"
        assert failed[0]["fallback"] == "in-process"
        assert _wait_gone([pid]) == []  # killed, not left stopped
        assert own.pages_checked == 0
    finally:
        own.close()


def test_broken_results_fall_back(profile_set):
    """A page whose futures break mid-way answers None (check in-process) and logs why."""
    own = ParsePool(profile_set, 1, min_resources=0)
    broken: Future[list[Any]] = Future()
    broken.set_exception(BrokenProcessPool("a worker died"))
    with capture_logs() as logs:
        assert PendingCheck(own, [broken], 3).results() is None
    assert logs[0]["event"] == "parse_pool_failed" and logs[0]["error"] == "BrokenProcessPool"
    own.close()


def test_a_pool_that_cannot_start_falls_back_and_gives_up(store, rules, profile_set, monkeypatch):
    """Processes that cannot start never fail a page: in-process, a warning, and after
    MAX_RESTARTS tries the pool stays off."""
    own = ParsePool(profile_set, 1, min_resources=0, min_page=1)

    def refuse() -> None:
        raise OSError("cannot fork")

    monkeypatch.setattr(own, "_start", refuse)
    ingestor = _ingestor(store, rules, profile_set, own)
    with capture_logs() as logs:
        for _ in range(MAX_RESTARTS + 2):
            result = ingestor.ingest(SOURCE, copy.deepcopy(_samples()["Patient"]), "Patient")
            assert result.received == 30
    failed = [e for e in logs if e["event"] == "parse_pool_failed"]
    assert len(failed) == MAX_RESTARTS + 1 and failed[-1]["gave_up"] is True
    assert not own.enabled
    own.close()


def test_a_stale_failure_leaves_the_fresh_pool_running(profile_set):
    """A page that failed in an earlier (replaced) pool does not stop the running one."""
    own = ParsePool(profile_set, 1, min_resources=0)
    try:
        pids = own.wait_ready(60)
        broken: Future[list[Any]] = Future()
        broken.set_exception(BrokenProcessPool("the old pool's worker died"))
        stale = PendingCheck(own, [broken], 3, executor=object())  # type: ignore[arg-type]
        assert stale.results() is None
        assert own.ready() and own.pids() == pids
    finally:
        own.close()


_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from multiprocessing import forkserver
    from fhir_bridge.logging import configure_logging
    from fhir_bridge.validate.pool import ParsePool
    from fhir_bridge.validate.profiles import ProfileSet

    configure_logging("WARNING")  # logs on stderr: stdout carries the pids
    pool = ParsePool(ProfileSet.load(Path(sys.argv[1])), 2, min_resources=0)
    pids = pool.wait_ready(60) + [forkserver._forkserver._forkserver_pid]
    print(json.dumps(pids), flush=True)
    page = [{"resourceType": "Patient", "id": f"p{i}", "gender": "male"} for i in range(400)]
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")  # no close(): the interpreter's exit must stop the pool
    try:
        while True:
            pool.submit(page, "Patient", ()).results()
    finally:
        pool.close()
    """
)


@pytest.mark.parametrize("ending", ["ctrl-c", "raise"])
def test_no_orphans_after_ctrl_c_or_an_exception(tmp_path, ending):
    """Ctrl-C while pages are checked, or an uncaught exception: every worker and the
    forkserver are gone once the process has exited."""
    script = tmp_path / "pool_child.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "profiles"), ending],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        if ending == "ctrl-c":
            time.sleep(0.5)  # pages in flight
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode != 0
    assert _wait_gone(pids) == []


def test_encode_keeps_values_json_would_change():
    """NaN, big integers and lone surrogates go pickled; plain resources as orjson."""
    assert encode([{"resourceType": "Patient", "id": "a"}])[1] is False
    assert encode([{"x": float("nan")}])[1] is True
    assert encode([{"x": 2**70}])[1] is True
    assert encode([{"x": "\ud800"}])[1] is True
    assert encode([{"x": None}])[1] is True


def test_auto_workers_leaves_a_cpu_to_the_writer():
    """auto: none on one or two CPUs, one per CPU beyond the first above (at most 8)."""
    assert [auto_workers(n) for n in (1, 2, 3, 4, 64)] == [0, 0, 2, 3, 8]


def test_file_ingest_uses_the_pool_for_a_big_job(tmp_path, rules, profile_set):
    """A file ingest estimated above min_resources sends batches to the pool, same result."""
    lines = [json.dumps(r) for r in _samples()["Patient"]]
    (tmp_path / "Patient.ndjson").write_text("\n".join(lines * 4))
    own = ParsePool(profile_set, 1, min_resources=1)
    try:
        own.wait_ready(60)
        results = []
        for used in (None, own):
            store = SqliteStore(":memory:")
            report = ingest_files(
                _ingestor(store, rules, profile_set, used), SOURCE, [tmp_path], batch_size=60
            )
            results.append(_figures(report.result))
            store.close()
        assert results[0] == results[1] and own.pages_checked >= 2
    finally:
        own.close()
