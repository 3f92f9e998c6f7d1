"""dlkit.scan at scale: what a worker and ``status`` keep incrementally gives the answers a full listing gives.

The references are independent of the bookkeeping under test: the marker files read one by one
(``final_states_from_markers``, and ``status`` of the same ledger with its index removed), and "exactly once"
counted from the attempt records and the run directories (``scan_helpers``).
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dlkit.scan.api import open_scan, status_rows
from dlkit.scan.ledger import Decision, Ledger
from dlkit.scan.worker import Slot, Worker, _Todo, point_command
from scan_helpers import ended_attempts, write_config

pytestmark = pytest.mark.timeout(240)


def _finish_elsewhere(ledger: Ledger, index: int, state: str = "done", code: int = 0) -> None:
    """What another worker does to run point ``index`` to its end, through the ledger's own protocol."""
    token = f"otherhost-{os.getpid() + 1}-{uuid.uuid4().hex[:8]}"
    assert ledger.acquire(index, token, {"host": "otherhost", "pid": 1})
    ledger.record_start(index, token, {"attempt": 1, "host": "otherhost"})
    assert ledger.end(index, token)
    outcome = "done" if code == 0 else "failed"
    attempt = ledger.record_end(index, token, {"exit_code": code, "outcome": outcome, "epochs": 1,
                                               "host": "otherhost", "last_error": None if code == 0 else "boom"})
    ledger.finish_point(index, attempt, Decision(state, outcome))
    ledger.remove_lease(index, token)


def test_todo_walks_open_points_in_order():
    todo = _Todo([5, 3, 9, 1, 3])
    assert list(todo) == [5, 3, 9, 1] and len(todo) == 4
    seen = []
    for point in todo:  # dropping points while walking, the walk goes on over the open ones
        seen.append(point)
        todo.discard(9)
        todo.discard(point)
    assert seen == [5, 3, 1] and len(todo) == 0 and not list(todo)
    todo.discard(42)  # not one of its points
    assert 5 not in todo and 42 not in todo


def test_points_made_final_by_another_worker_while_this_one_runs(tmp_path):
    n = 8
    config = write_config(tmp_path, n=n, epochs=1, epoch_time=0)
    out = tmp_path / "out"
    ledger = open_scan("toy", config, output_base=out, lease_timeout=5)
    _finish_elsewhere(ledger, 6)  # final before the worker starts
    calls = []

    def before_fill(worker, final):
        calls.append(set(final))
        if len(calls) == 1:  # while this worker runs, another one ends points 2 and 7 (7 failed)
            _finish_elsewhere(ledger, 2)
            _finish_elsewhere(ledger, 7, state="failed", code=2)

    worker = Worker(ledger, point_command(ledger), [Slot("a"), Slot("b")], wait_for_others=False,
                    before_fill=before_fill)
    assert worker.run() == 0
    reference = ledger.final_indices()  # the full listing of done/ and failed/
    assert worker.final == reference == set(range(n))
    assert calls[-1] <= reference
    for index in (2, 6, 7):  # never run here: the one attempt is the other worker's
        assert [a["host"] for a in ended_attempts(ledger, index)] == ["otherhost"]
    done_here = [i for i in range(n) if i not in (2, 6, 7)]
    for index in done_here:
        assert [a["outcome"] for a in ended_attempts(ledger, index)] == ["done"]
    assert sorted(ledger.done_indices()) == sorted(done_here + [2, 6])
    assert ledger.final_states() == ledger.final_states_from_markers()


def test_a_retry_followed_by_a_new_run(tmp_path):
    n = 5
    config = write_config(tmp_path, n=n, epochs=1, epoch_time=0, extra=", 'UserErrorPoints': [1, 3]")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy", "-C", str(config),
           "--OutputBase", str(out), "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 1  # 1 and 3 failed
    (ledger,) = Ledger.find(out)
    assert ledger.failed_indices() == {1, 3}
    assert ledger.retry() == [1, 3]
    worker = Worker(ledger, point_command(ledger), [Slot("a")], wait_for_others=False)
    assert worker.run() == 0  # (the worker returns 0; its points failed again with exit 2)
    assert worker.final == ledger.final_indices() == set(range(n))
    for index in (1, 3):
        assert [a["exit_code"] for a in ended_attempts(ledger, index)] == [2, 2]
    for index in (0, 2, 4):  # done points never ran again
        assert [a["exit_code"] for a in ended_attempts(ledger, index)] == [0]
    assert ledger.final_states() == ledger.final_states_from_markers()
    assert {i: m["attempts"] for i, m in ledger.final_states().items() if i in (1, 3)} == {1: 2, 3: 2}


def _rows_without_index(ledger: Ledger, tmp_path: Path) -> list[dict]:
    copy = Ledger(tmp_path / "copy" / ".dlkit-scan" / ledger.name)
    shutil.copytree(ledger.path, copy.path)
    shutil.rmtree(copy.path / "index")
    return status_rows(copy)


def test_status_from_the_index_equals_status_from_the_markers(tmp_path):
    n = 12
    config = write_config(tmp_path, n=n, epochs=1, epoch_time=0)
    ledger = open_scan("toy", config, output_base=tmp_path / "out", lease_timeout=5)
    for index in range(9):
        _finish_elsewhere(ledger, index, *(("failed", 1) if index in (3, 4, 5) else ("done", 0)))
    # point 0's row lost (its writer was killed between the marker and the append); point 8's marker written
    # by an older dlkit (no journal at all)
    journals = list((ledger.path / "index").glob("*.jsonl"))
    assert len(journals) == 1  # one writer: this process
    lines = journals[0].read_text().splitlines()
    journals[0].write_text("".join(line + "\n" for line in lines if json.loads(line)["point"] not in (0, 8)))
    # 3 and 4 retried: 3 fails again (a new marker in failed/ beside its old row), 4 is pending again
    assert ledger.retry() == [3, 4, 5] and ledger.failed_indices() == set()
    _finish_elsewhere(ledger, 3, "failed", 1)
    _finish_elsewhere(ledger, 5, "done", 0)  # retried, then done: its old row says failed, the marker done
    with open(journals[0], "a") as f:  # a torn last line of a writer killed mid-append
        f.write('{"point": 9, "state": "do')
    rows = ledger.index_rows()
    assert 0 not in rows and 8 not in rows and len(rows[3]) == 2
    assert ledger.final_states() == ledger.final_states_from_markers()
    assert set(ledger.final_states()) == {0, 1, 2, 3, 5, 6, 7, 8}
    assert ledger.final_states()[3]["attempts"] == 2 and ledger.final_states()[5]["state"] == "done"
    got = status_rows(ledger)
    assert got == _rows_without_index(ledger, tmp_path)
    assert [r["state"] for r in got] == ["done", "done", "done", "failed", "pending", "done", "done", "done",
                                         "done", "pending", "pending", "pending"]


def test_ledger_writes_leave_nothing_beside_their_files_and_the_sweep_takes_dead_leftovers(tmp_path):
    config = write_config(tmp_path, n=2, epochs=1, epoch_time=0)
    ledger = open_scan("toy", config, output_base=tmp_path / "out", lease_timeout=5)
    _finish_elsewhere(ledger, 0)
    assert sorted(os.listdir(ledger.path / "done")) == ["0.json"]  # no temporary file was ever beside it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = ledger.new_token().rsplit("-", 2)[0]
    leftovers = [ledger.path / "tmp" / f".0.json.tmp-{host}-{dead}-0123456789ab",
                 ledger.path / "tmp" / f"{host}-{dead}-deadbeef"]
    leftovers[0].write_text("{")
    leftovers[1].mkdir()
    live = ledger.path / "tmp" / f".1.json.tmp-{host}-{os.getpid()}-0123456789ab"
    live.write_text("{")
    assert ledger.sweep_tmp() == 2
    assert not any(p.exists() for p in leftovers) and live.exists()
    with pytest.raises(FileNotFoundError):  # a lease's file never brings back its directory
        ledger.write(ledger.lease_dir(1) / "heartbeat.json", {"seq": 1}, mkdir=False)
    assert not ledger.lease_dir(1).exists() and os.listdir(ledger.path / "tmp") == [live.name]
