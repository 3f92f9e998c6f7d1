"""dlkit.Permutator: DLKit's scan order, indexing, hashes and batch-array selection."""

import itertools

import pytest

from dlkit import Permutator
from dlkit.config import ConfigError
from dlkit.permutator import SCAN_INDEX_ENV_VARS, point_hash, scan_index_from_env

PARAMS = {"optimizer": ["RMSprop", "Adam", "SGD"], "Width": [32, 64, 128, 256, 512], "Depth": [1, 2, 3, 4],
          "lr": [0.01, 0.001], "decay": [0.01, 0.001]}


def dlkit_reference_permutations(params):
    """DLTools' Permutator, transcribed: sorted keys and a digit counter, last digit fastest."""
    keys = sorted(params.keys())
    sizes = [len(params[k]) for k in keys]
    digits = [0] * len(keys)
    out = []
    while True:
        out.append({k: params[k][d] for k, d in zip(keys, digits)})
        i = len(keys) - 1
        while i >= 0:
            digits[i] += 1
            if digits[i] < sizes[i]:
                break
            digits[i] = 0
            i -= 1
        if i < 0:
            return out


def test_order_matches_dlkit_on_four_keys():
    params = {"Width": [32, 64, 128], "Depth": [1, 2], "lr": [0.1, 0.01, 0.001], "decay": [0.1, 0.01]}
    scan = Permutator(params)
    reference = dlkit_reference_permutations(params)
    assert len(scan) == len(reference) == 36
    assert list(scan) == reference
    assert [scan[i] for i in range(len(scan))] == reference
    assert scan.keys == ["Depth", "Width", "decay", "lr"]  # code-point sort: capitals first


def test_config_scan_of_the_talks():
    scan = Permutator(PARAMS)
    assert len(scan) == 240
    # Combo[0..2] differ only in optimizer, then lr changes (DLKit's documented order).
    assert [p["optimizer"] for p in scan.Permutations()[:3]] == ["RMSprop", "Adam", "SGD"]
    assert scan[3] == {"Depth": 1, "Width": 32, "decay": 0.01, "lr": 0.001, "optimizer": "RMSprop"}
    assert scan[239] == {"Depth": 4, "Width": 512, "decay": 0.001, "lr": 0.001, "optimizer": "SGD"}


def test_index_of_inverts_indexing():
    scan = Permutator(PARAMS)
    for i in range(len(scan)):
        assert scan.index_of(scan[i]) == i
    with pytest.raises(ConfigError, match="not in the grid"):
        scan.index_of({**scan[0], "Width": 33})
    with pytest.raises(ConfigError, match="differ from the scanned keys"):
        scan.index_of({"Width": 32})


@pytest.mark.parametrize("bad", [240, -1, 10**6])
def test_out_of_range_states_valid_range(bad):
    with pytest.raises(ConfigError, match=r"240 points, valid -s values are 0\.\.239"):
        Permutator(PARAMS)[bad]


def test_hashes_stable_unique_and_order_independent():
    scan = Permutator(PARAMS)
    hashes = [scan.hash(i) for i in range(len(scan))]
    assert len(set(hashes)) == len(hashes)
    assert all(len(h) == 8 for h in hashes)
    reordered = dict(reversed(list(scan[17].items())))
    assert point_hash(reordered) == scan.hash(17)
    # Known value: the run identity must not change between versions or processes.
    assert point_hash({"Depth": 1, "Width": 32}) == point_hash({"Width": 32, "Depth": 1})
    assert scan.hash(0) == "c13a2954"


def test_select_from_flag_env_or_default():
    scan = Permutator({"a": [1, 2, 3]})
    assert scan.select(2, environ={"SLURM_ARRAY_TASK_ID": "1"}) == (2, {"a": 3})  # -s wins
    assert scan.select(None, environ={"SLURM_ARRAY_TASK_ID": "1"}) == (1, {"a": 2})
    assert scan.select(None, environ={"PBS_ARRAYID": "2"}) == (2, {"a": 3})
    assert scan.select(None, environ={}) == (0, {"a": 1})
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID='x'"):
        scan_index_from_env({"SLURM_ARRAY_TASK_ID": "x"})
    with pytest.raises(ConfigError, match="valid -s values are 0..2"):
        scan.select(None, environ={"SLURM_ARRAY_TASK_ID": "7"})


def test_pbs_pro_array_index_selects_the_point():
    scan = Permutator({"a": [1, 2, 3]})
    assert SCAN_INDEX_ENV_VARS == ("SLURM_ARRAY_TASK_ID", "PBS_ARRAYID", "PBS_ARRAY_INDEX")
    assert scan.select(None, environ={"PBS_ARRAY_INDEX": "1"}) == (1, {"a": 2})  # PBS Pro
    assert scan.select(None, environ={"PBS_ARRAY_INDEX": ""}) == (0, {"a": 1})  # empty: not set
    # Slurm, then Torque, then PBS Pro; -s wins over all of them.
    assert scan_index_from_env({"PBS_ARRAY_INDEX": "2", "SLURM_ARRAY_TASK_ID": "1"}) == 1
    assert scan_index_from_env({"PBS_ARRAY_INDEX": "2", "PBS_ARRAYID": "0"}) == 0
    assert scan.select(0, environ={"PBS_ARRAY_INDEX": "2"}) == (0, {"a": 1})
    with pytest.raises(ConfigError, match="PBS_ARRAY_INDEX='1.5'"):
        scan_index_from_env({"PBS_ARRAY_INDEX": "1.5"})
    with pytest.raises(ConfigError, match="valid -s values are 0..2"):
        scan.select(None, environ={"PBS_ARRAY_INDEX": "3"})


def test_product_size():
    scan = Permutator({"a": [1, 2], "b": ["x"], "c": [None, 1.5, (1, 2)]})
    assert len(scan) == len(list(itertools.product([1, 2], ["x"], [None, 1.5, (1, 2)])))
