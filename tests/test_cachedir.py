"""Caches on shared nodes (dlkit.cachedir): a private per-user default, no one else's bytes, shared read-only
directories on purpose. The first part runs as any user; the second creates two real users (A and B, in one
group) and runs their parts as real subprocesses under their uids, on one shared sticky "/tmp" (root only)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import dlkit
from dlkit.cachedir import UnsafeDirectoryError, cache_location, data_dir, open_trusted, seal, user_cache_dir
from dlkit.datasets import data_root
from dlkit.experiment import run_main
from dlkit.generators import _shm

ME = os.geteuid()


@pytest.fixture
def node_tmp(monkeypatch, tmp_path):
    """A fresh <tmp> (what tempfile.gettempdir() returns), no $DLKIT_CACHE_DIR, no $SLURM_TMPDIR."""
    tmp = tmp_path / "node-tmp"
    tmp.mkdir()
    monkeypatch.delenv("DLKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    return tmp


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_h5(path, n, first_id):
    with h5py.File(path, "w") as f:
        f["x"] = (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + first_id * 10).astype(np.float32)
        f["id"] = np.arange(first_id, first_id + n, dtype=np.int64)
    os.chmod(path, 0o644)


def h5_rows(*paths) -> dict[str, list[float]]:
    """The reference: id -> x, read with plain h5py."""
    rows = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            rows.update({str(int(i)): [float(v) for v in x] for i, x in zip(f["id"][...], f["x"][...])})
    return rows


# ------------------------------------------------------------------------------------------ any user
def test_default_is_a_private_per_user_dir_in_node_local_storage(node_tmp, tmp_path, monkeypatch):
    old = os.umask(0)  # the mode is exactly 0700, not whatever the umask leaves of it
    try:
        path = cache_location().write
    finally:
        os.umask(old)
    assert path == node_tmp / f"dlkit-cache-{ME}" == user_cache_dir()
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == ME and mode_of(path) == 0o700
    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.setenv("SLURM_TMPDIR", str(job))  # Slurm's per-job node-local directory wins
    assert cache_location().write == job / f"dlkit-cache-{ME}" and mode_of(job / f"dlkit-cache-{ME}") == 0o700


def test_world_writable_default_dir_is_refused_with_one_line(node_tmp, tmp_path):
    path = node_tmp / f"dlkit-cache-{ME}"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeDirectoryError) as ei:
        cache_location()
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg and "writable by group and others (mode 0777)" in msg
    assert "set DLKIT_CACHE_DIR" in msg
    # the generator refuses it the same way (before reading anything)
    from dlkit.generators import MultiClassGenerator, SampleSpec

    write_h5(tmp_path / "d.h5", 8, 0)
    with pytest.raises(UnsafeDirectoryError, match="writable by group and others"):
        MultiClassGenerator([SampleSpec(str(tmp_path / "d.h5"), ["x", "id"], "a")], 4, cache=True)
    assert sorted(os.listdir(path)) == []


def test_group_writable_explicit_dir_is_refused_and_cli_says_it_in_one_line(node_tmp, tmp_path, monkeypatch, capsys):
    shared = tmp_path / "team"
    shared.mkdir()
    os.chmod(shared, 0o775)
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(shared))
    assert run_main(lambda argv: cache_location() and 0, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {shared} is writable by its group (mode 0775)")
    os.chmod(shared, 0o755)
    assert cache_location().write == shared  # the fix the message names


def test_umask_002_directories_and_sealed_files_are_accepted(node_tmp, tmp_path, caplog):
    """Under umask 002 (user private groups) what dlkit creates must still pass its own checks."""
    old = os.umask(0o002)
    try:
        loc = cache_location(tmp_path / "new" / "cache")
        sub = loc.sub("calodnn-premix")
        f = sub.write / "premix-x.h5"
        f.write_bytes(b"data")  # 0664 under this umask
    finally:
        os.umask(old)
    assert mode_of(loc.write) == 0o755 and mode_of(sub.write) == 0o755
    assert mode_of(f) == 0o664
    with caplog.at_level(logging.WARNING, "dlkit.cachedir"):
        assert sub.find("premix-x.h5") is None
    assert "writable by others (mode 0664)" in caplog.text
    seal(f)
    assert mode_of(f) == 0o644 and sub.find("premix-x.h5") == f


def test_open_trusted_reads_only_own_regular_files(tmp_path, caplog):
    own = tmp_path / "own"
    own.write_bytes(b"mine")
    os.chmod(own, 0o644)
    fd = open_trusted(own)
    assert fd is not None and os.read(fd, 10) == b"mine"
    os.close(fd)
    link = tmp_path / "link"
    link.symlink_to(own)
    loose = tmp_path / "loose"
    loose.write_bytes(b"anyone")
    os.chmod(loose, 0o666)
    with caplog.at_level(logging.WARNING, "dlkit.cachedir"):
        assert open_trusted(link) is None and open_trusted(loose) is None
        assert open_trusted(own, owners={ME + 1}) is None
        assert open_trusted(tmp_path / "missing") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and str(link) in warnings[0] and "writable by others (mode 0666)" in warnings[1]
    assert f"uid {ME}" in warnings[2]


def test_dataset_root_gets_the_same_check(monkeypatch, tmp_path):
    monkeypatch.delenv("DLKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root("calodnn") == tmp_path / "xdg" / "dlkit" / "calodnn"
    assert mode_of(tmp_path / "xdg" / "dlkit") == 0o700 and os.stat(tmp_path / "xdg" / "dlkit").st_uid == ME
    os.chmod(tmp_path / "xdg" / "dlkit", 0o777)
    with pytest.raises(UnsafeDirectoryError, match="writable by group and others.*set DLKIT_DATA"):
        data_dir()
    open_data = tmp_path / "open"
    open_data.mkdir()
    os.chmod(open_data, 0o1777)
    monkeypatch.setenv("DLKIT_DATA", str(open_data))
    with pytest.raises(UnsafeDirectoryError, match=f"{open_data} is writable by group and others.*DLKIT_DATA"):
        data_root("calodnn")


def test_premix_is_reused_only_while_no_one_else_can_write_it(node_tmp, tmp_path, caplog):
    from calodnn.data import premix, premix_location
    from dlkit.generators import SampleSpec

    write_h5(tmp_path / "d0.h5", 40, 0)
    write_h5(tmp_path / "d1.h5", 24, 1000)
    samples = [SampleSpec(str(tmp_path / f"d{i}.h5"), ["x", "id"], f"c{i}") for i in range(2)]
    old = os.umask(0o002)  # h5py would leave the file group-writable: premix seals it
    try:
        path = premix(samples, ["x", "id"], ["c0", "c1"], premix_location(), n_workers=1)
    finally:
        os.umask(old)
    assert path.parent == node_tmp / f"dlkit-cache-{ME}" / "calodnn-premix" and mode_of(path) == 0o644
    first = os.stat(path)
    assert premix(samples, ["x", "id"], ["c0", "c1"], premix_location(), n_workers=1) == path
    assert os.stat(path).st_ino == first.st_ino  # reused
    os.chmod(path, 0o666)  # anyone could have rewritten it since
    with caplog.at_level(logging.WARNING, "dlkit.cachedir"):
        assert premix(samples, ["x", "id"], ["c0", "c1"], premix_location(), n_workers=1) == path
    assert f"ignoring {path}: writable by others (mode 0666)" in caplog.text
    assert os.stat(path).st_ino != first.st_ino and mode_of(path) == 0o644  # rebuilt
    ref = h5_rows(tmp_path / "d0.h5", tmp_path / "d1.h5")
    with h5py.File(path, "r") as f:
        ids, xs, labels = f["id"][...], f["x"][...], f["label"][...]
    assert {str(int(i)): [float(v) for v in x] for i, x in zip(ids, xs)} == ref
    assert list(labels) == [0 if i < 1000 else 1 for i in ids]


# ------------------------------------------------------------------------------------------ two real users
@dataclasses.dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


@dataclasses.dataclass
class Node:
    """One shared machine: a base directory all can traverse, two users in one group, tiny data."""

    base: Path
    a: User
    b: User
    gid: int
    data: Path
    script: Path
    pythonpath: str

    def fresh_tmp(self, name: str) -> Path:
        """A new shared <tmp> like /tmp: world-writable with the sticky bit."""
        tmp = self.base / name / "tmp"
        tmp.mkdir(parents=True)
        os.chmod(tmp.parent, 0o755)
        os.chmod(tmp, 0o1777)
        return tmp

    def env(self, user: User, tmp: Path, **extra) -> dict:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(user.home), "TMPDIR": str(tmp),
                "PYTHONPATH": self.pythonpath, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow", "LANG": "C.UTF-8", **extra}

    def popen(self, user: User, argv, env, umask=0o022):
        return subprocess.Popen(argv, user=user.uid, group=user.gid, extra_groups=[], umask=umask, env=env,
                                cwd=self.base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def python(self, user: User, code: str, tmp: Path):
        """A few lines of Python as ``user`` (to plant things the way that user could)."""
        proc = self.popen(user, [sys.executable, "-c", code], self.env(user, tmp))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

    def run(self, user: User, tmp: Path, *args, umask=0o022, **env):
        """tests/cache_user_run.py as ``user``: (exit code, stderr lines, JSON result or None)."""
        out = user.home / f"out-{secrets.token_hex(4)}.json"
        proc = self.popen(user, [sys.executable, str(self.script), str(out), *args], self.env(user, tmp, **env),
                          umask=umask)
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result = json.loads(out.read_text()) if out.exists() else None
        # nothing left behind: the readers are gone, no shared memory of that process
        pids = [p for r in (result if isinstance(result, list) else []) for p in r["workers"]]
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if Path(f"/proc/{p}").exists()], "reader processes left behind"
        assert not [n for n in _shm.list_ours() if n.startswith(f"{_shm.PREFIX}{proc.pid}_")]
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING: All log", "I0000"))]
        return proc.returncode, lines, result

    def gen(self, user: User, tmp: Path, runs, **kw):
        rc, err, result = self.run(user, tmp, "gen", json.dumps(runs), **kw)
        assert rc == 0, "\n".join(err[-20:])
        return result


def _sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def _widen_access(paths) -> list[tuple[Path, int]]:
    """Let other users traverse to ``paths`` (o+x on ancestors lacking it, o+rx on the paths themselves),
    e.g. a venv or clone under a mode-700 directory; returns what to restore."""
    changed = []
    for target in paths:
        target = Path(target)
        chain = [*reversed(target.parents), target]
        for d in chain:
            want = stat.S_IXOTH | (stat.S_IROTH if d == target else 0)
            st = os.stat(d)
            if st.st_mode & want != want:
                changed.append((d, stat.S_IMODE(st.st_mode)))
                os.chmod(d, stat.S_IMODE(st.st_mode) | want)
    return changed


@pytest.fixture(scope="module")
def node():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second real user with useradd (CI runs as root)")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not installed: cannot create a second real user")
    tag = secrets.token_hex(3)
    group, names = f"dlkg{tag}", [f"dlka{tag}", f"dlkb{tag}"]
    created, restore, base = [], [], None
    try:
        r = _sh("groupadd", group)
        if r.returncode:
            pytest.skip(f"groupadd failed: {r.stderr.strip()}")
        created.append(("groupdel", group))
        for name in names:
            r = _sh("useradd", "-M", "-N", "-g", group, "-s", "/bin/false", name)
            if r.returncode:
                pytest.skip(f"useradd failed: {r.stderr.strip()}")
            created.append(("userdel", name))
        import grp
        import pwd

        gid = grp.getgrnam(group).gr_gid
        base = Path(tempfile.mkdtemp(prefix="dlkit-users-"))
        os.chmod(base, 0o755)
        users = []
        for name in names:
            pw = pwd.getpwnam(name)
            home = base / f"home-{name}"
            home.mkdir(mode=0o700)
            os.chown(home, pw.pw_uid, gid)
            users.append(User(name, pw.pw_uid, gid, home))
        data = base / "data"
        data.mkdir(mode=0o755)
        write_h5(data / "d0.h5", 40, 0)
        write_h5(data / "d1.h5", 24, 1000)
        script = base / "run.py"
        shutil.copy(Path(__file__).with_name("cache_user_run.py"), script)
        os.chmod(script, 0o644)
        n = Node(base, users[0], users[1], gid, data, script, str(Path(dlkit.__file__).resolve().parent.parent))
        tmp = n.fresh_tmp("probe")

        def probe():
            try:
                proc = n.popen(n.b, [sys.executable, "-c", "import dlkit.cachedir, h5py"], n.env(n.b, tmp))
            except OSError as exc:  # cannot even exec it
                return str(exc)
            err = proc.communicate(timeout=60)[1]
            return err if proc.returncode else None

        if probe() is not None:
            # the venv or the clone lies under a mode-700 directory (a root home, mktemp -d): open a path
            restore = _widen_access([Path(sys.executable).parent, Path(os.path.realpath(sys.executable)).parent,
                                     Path(sys.prefix), Path(sys.base_prefix), Path(n.pythonpath)])
            err = probe()
            if err is not None:
                pytest.skip(f"user {n.b.name} cannot run {sys.executable} with dlkit: {err.strip().splitlines()[-1:]}")
        yield n
    finally:
        for d, mode in reversed(restore):
            os.chmod(d, mode)
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        for cmd, name in reversed(created):
            _sh(cmd, name)


@pytest.fixture(scope="module")
def first(node):
    """User A's runs on the shared <tmp>: the default cache of d0+d1 and of d0, and the team's shared cache
    (a directory A owns, group-readable with setgid, A's umask 027: files 0640 of the group)."""
    tmp = node.fresh_tmp("shared-node")
    shared = node.base / "team-cache"
    shared.mkdir()
    os.chown(shared, node.a.uid, node.gid)
    os.chmod(shared, 0o2750)
    files = [str(node.data / "d0.h5"), str(node.data / "d1.h5")]
    runs = node.gen(node.a, tmp, [{"cache": "default", "files": files}, {"cache": "default", "files": files[:1]},
                                  {"cache": str(shared), "files": files}], umask=0o027)
    return {"tmp": tmp, "shared": shared, "files": files, "runs": runs}


def _poison(src: Path, dst: Path):
    """A copy of cache ``src`` with every array's bytes overwritten (header intact, so its key still matches)."""
    raw = bytearray(src.read_bytes())
    (n,) = struct.unpack("<Q", raw[11:19])  # b"DLKITCACHE\n" + length + JSON header
    header = json.loads(raw[19:19 + n])
    for a in header["arrays"]:
        size = header["n_rows"] * int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
        raw[a["offset"]:a["offset"] + size] = b"\x7f" * size
    dst.write_bytes(bytes(raw))


def test_second_user_runs_right_after_the_first_with_own_cache(node, first):
    ref = h5_rows(*first["files"])
    a_run = first["runs"][0]
    a_path = Path(a_run["cache_path"])
    assert a_path.parent == first["tmp"] / f"dlkit-cache-{node.a.uid}" and a_run["epochs"] == [ref, ref]
    a_stat = os.stat(a_path)
    runs = node.gen(node.b, first["tmp"], [{"cache": "default", "files": first["files"]}] * 2)
    b_dir = first["tmp"] / f"dlkit-cache-{node.b.uid}"
    b_path = b_dir / a_path.name  # same key: under the old shared <tmp>/dlkit-cache B would have read A's file
    assert [Path(r["cache_path"]) for r in runs] == [b_path, b_path]
    assert any(f"building cache {b_path}" in m for m in runs[0]["log"])
    assert any(f"reading cache {b_path}" in m for m in runs[1]["log"])  # B's second run: B's own cache
    assert not any(str(a_path) in m for r in runs for m in r["log"])
    assert [r["epochs"] for r in runs] == [[ref, ref], [ref, ref]]
    st = os.stat(b_dir)
    assert st.st_uid == node.b.uid and stat.S_IMODE(st.st_mode) == 0o700
    assert os.stat(b_path).st_uid == node.b.uid
    assert os.stat(a_path).st_mtime_ns == a_stat.st_mtime_ns and os.stat(a_path.parent).st_uid == node.a.uid


def test_file_planted_in_second_users_dir_is_not_used(node, first):
    """B's own directory holds a valid-looking cache (right key, poisoned bytes) that B did not write: owned
    by A (only root can put it there: B's directory is mode 700), and beside it a symlink to such a file.
    B ignores both with a warning, trains on the real data and replaces them with its own files."""
    tmp = node.fresh_tmp("planted-file")
    b_dir = tmp / f"dlkit-cache-{node.b.uid}"
    b_dir.mkdir(mode=0o700)
    os.chown(b_dir, node.b.uid, node.gid)
    full, one = (Path(first["runs"][i]["cache_path"]) for i in (0, 1))
    planted = b_dir / full.name
    _poison(full, planted)
    os.chown(planted, node.a.uid, node.gid)
    os.chmod(planted, 0o644)
    target = node.base / "a-public" / one.name
    target.parent.mkdir(mode=0o755)
    _poison(one, target)
    os.chmod(target, 0o644)
    os.symlink(target, b_dir / one.name)
    os.lchown(b_dir / one.name, node.b.uid, node.gid)  # even B's own symlink is not followed for a file
    runs = node.gen(node.b, tmp, [{"cache": "default", "files": first["files"]},
                                  {"cache": "default", "files": first["files"][:1]}])
    ref_full, ref_one = h5_rows(*first["files"]), h5_rows(first["files"][0])
    assert [r["epochs"] for r in runs] == [[ref_full, ref_full], [ref_one, ref_one]]
    assert any(m.startswith(f"WARNING ignoring {planted}: owned by {node.a.name} (uid {node.a.uid}), not you")
               for m in runs[0]["log"])
    assert any(m.startswith(f"WARNING ignoring {b_dir / one.name} (") for m in runs[1]["log"])  # ELOOP
    for path in (planted, b_dir / one.name):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == node.b.uid  # rebuilt, B's own


def test_directory_planted_at_second_users_path_is_refused(node, first):
    """What A can do on a shared /tmp before B's first run: create B's path as A's directory, or as a
    symlink to one. B refuses, in one line that says why and what to set; B's runs read nothing of A's."""
    for kind in ("dir", "symlink"):
        tmp = node.fresh_tmp(f"planted-{kind}")
        b_path = tmp / f"dlkit-cache-{node.b.uid}"
        if kind == "dir":
            code = f"import os; os.mkdir({str(b_path)!r}, 0o755)"
            why = f"belongs to {node.a.name} (uid {node.a.uid}), not you"
        else:
            code = (f"import os; os.mkdir({str(tmp / 'a-dir')!r}, 0o755); "
                    f"os.symlink({str(tmp / 'a-dir')!r}, {str(b_path)!r})")
            why = f"is a symlink planted by {node.a.name} (uid {node.a.uid})"
        node.python(node.a, code, tmp)
        rc, err, result = node.run(node.b, tmp, "locate")
        assert rc == 2 and result is None
        assert err == [f"error: {b_path} {why}: refusing to use it; set DLKIT_CACHE_DIR to a directory of your own"]
        own = node.b.home / f"cache-{kind}"  # the way out the message names
        rc, err, result = node.run(node.b, tmp, "locate", DLKIT_CACHE_DIR=str(own))
        assert rc == 0 and result["write"] == str(own) and os.stat(own).st_uid == node.b.uid


def test_world_writable_cache_dir_is_refused_for_the_second_user(node):
    tmp = node.fresh_tmp("world-writable")
    b_path = tmp / f"dlkit-cache-{node.b.uid}"
    node.python(node.b, f"import os; os.mkdir({str(b_path)!r}); os.chmod({str(b_path)!r}, 0o777)", tmp)
    rc, err, result = node.run(node.b, tmp, "locate")
    assert rc == 2 and result is None
    assert err == [f"error: {b_path} is writable by group and others (mode 0777), so others could plant files in "
                   "it (chmod go-w it if it is yours): refusing to use it; set DLKIT_CACHE_DIR to a directory of "
                   "your own"]
    assert os.listdir(b_path) == []


def test_shared_read_only_dir_is_read_by_the_group_and_never_written(node, first):
    shared = first["shared"]
    a_file = Path(first["runs"][2]["cache_path"])
    assert a_file.parent == shared
    st = os.stat(a_file)
    assert st.st_uid == node.a.uid and st.st_gid == node.gid and stat.S_IMODE(st.st_mode) == 0o640  # group-only

    def snapshot():
        return sorted((p.name, p.stat().st_uid, p.stat().st_mtime_ns, p.stat().st_size) for p in shared.rglob("*"))

    before = snapshot()
    tmp = node.fresh_tmp("team")
    runs = node.gen(node.b, tmp, [{"cache": "default", "files": first["files"]},
                                  {"cache": "default", "files": first["files"][:1]}], DLKIT_CACHE_DIR=str(shared))
    b_dir = tmp / f"dlkit-cache-{node.b.uid}"
    ref_full, ref_one = h5_rows(*first["files"]), h5_rows(first["files"][0])
    assert runs[0]["epochs"] == [ref_full, ref_full] and runs[1]["epochs"] == [ref_one, ref_one]
    assert Path(runs[0]["cache_path"]) == a_file and any(f"reading cache {a_file}" in m for m in runs[0]["log"])
    # data the team's directory does not hold: B builds it in B's own directory
    assert Path(runs[1]["cache_path"]).parent == b_dir and runs[1]["cache_dir"] == str(b_dir)
    assert any(f"building cache {b_dir}" in m for m in runs[1]["log"])
    assert snapshot() == before  # never written
    assert sorted(os.listdir(b_dir)) == [Path(runs[1]["cache_path"]).name]
