"""Saving and loading detectors: round trips in a new process, and every way a folder can be wrong."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis
from test_detectors import fit_kwargs
from test_detectors import make as make_detector

import causalmad as cm
from causalmad import persistence

ROUND_TRIP = sorted(cm.DETECTORS)  # every registered detector, baselines and skyline included


def make(name):
    return make_detector(name, (PlantedSum(), sum_hypothesis()))


def takes_hypothesis(name: str) -> bool:
    return "hypothesis" in inspect.signature(cm.DETECTORS[name]).parameters


@pytest.fixture(scope="module")
def data():
    trusted = planted_data(300, 0, 0, 0.05)
    untrusted = torch.cat([planted_data(60, 0, 3, 0.05), planted_data(60, 1, 4, 0.05)])
    return trusted, untrusted


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """Each detector fitted, scored and saved once; returns name -> (folder, scores)."""
    trusted, untrusted = data
    root = tmp_path_factory.mktemp("saved")
    out = {}
    labels = np.r_[np.zeros(60, dtype=int), np.ones(60, dtype=int)]
    for name in ROUND_TRIP:
        det = make(name).fit(trusted, **fit_kwargs(name, untrusted, labels))
        out[name] = (det.save(root / name), det.score(untrusted))
    return out


def test_round_trip_in_a_new_process_gives_identical_scores(saved, data, tmp_path):
    _, untrusted = data
    np.save(tmp_path / "untrusted.npy", untrusted.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import PlantedSum, sum_hypothesis
        import causalmad as cm
        x = torch.from_numpy(np.load({str(tmp_path / "untrusted.npy")!r}))
        for name, folder, with_h in {[(n, str(f), takes_hypothesis(n)) for n, (f, _) in saved.items()]!r}:
            h = sum_hypothesis() if with_h else None
            det = cm.load_detector(folder, PlantedSum(), hypothesis=h)
            assert det.name == name, det.name
            np.save({str(tmp_path)!r} + "/" + name + ".npy", det.score(x))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    for name, (_, scores) in saved.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), scores)


def test_loaded_detector_keeps_thresholds_and_explanations(saved, data):
    _, untrusted = data
    folder, scores = saved["scrubbing"]
    det = cm.ScrubbingDetector.load(folder, PlantedSum(), sum_hypothesis())
    assert det.threshold(0.05) == pytest.approx(np.quantile(det.heldout_scores_, 0.95, method="higher"))
    assert det.summary()["valid"] == len(det.valid_) > 0
    assert det.explain(untrusted[-1])["score"] == pytest.approx(scores[-1])


def test_folder_holds_only_json_and_safetensors(saved):
    folder, _ = saved["scrubbing"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "state.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == persistence.FORMAT_VERSION
    assert config["causalmad_version"] == cm.__version__
    assert len(config["model_fingerprint"]) == 64


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_or_corrupted_folders_are_refused(saved, tmp_path):
    src, _ = saved["mahalanobis"]
    truncated = copy_folder(src, tmp_path / "truncated")
    state = truncated / "state.safetensors"
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])
    with pytest.raises(cm.PersistenceError, match="truncated or corrupted"):
        cm.load_detector(truncated, PlantedSum())
    garbled = copy_folder(src, tmp_path / "garbled")
    (garbled / "config.json").write_text('{"format_version": 1, "detec')
    with pytest.raises(cm.PersistenceError, match="not valid JSON"):
        cm.load_detector(garbled, PlantedSum())
    incomplete = copy_folder(src, tmp_path / "incomplete")
    (incomplete / "config.json").unlink()
    with pytest.raises(cm.PersistenceError, match="interrupted save"):
        cm.load_detector(incomplete, PlantedSum())
    future = copy_folder(src, tmp_path / "future")
    config = json.loads((future / "config.json").read_text())
    (future / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(cm.PersistenceError, match="format version 99"):
        cm.load_detector(future, PlantedSum())
    with pytest.raises(cm.PersistenceError, match="not a folder"):
        cm.load_detector(tmp_path / "nowhere", PlantedSum())


def test_folder_from_another_model_or_hypothesis_is_refused(saved):
    folder, _ = saved["scrubbing"]
    other = PlantedSum()
    with torch.no_grad():
        other.enc.weight[0, 0] += 1e-3
    with pytest.raises(cm.PersistenceError, match="different model"):
        cm.load_detector(folder, other, sum_hypothesis())
    with pytest.raises(cm.PersistenceError, match="with hypothesis 'sum'"):
        cm.load_detector(folder, PlantedSum())
    renamed = sum_hypothesis()
    renamed.name = "other"
    with pytest.raises(cm.PersistenceError, match="another structure"):
        cm.load_detector(folder, PlantedSum(), renamed)
    changed = cm.Hypothesis("sum")  # same graph, a different mechanism for s
    changed.add_input("a", lambda ex: round(float(ex[0])))
    changed.add_input("b", lambda ex: round(float(ex[1])))
    changed.add_variable("s", lambda a, b: a + b + 1, parents=["a", "b"])
    changed.add_output("y", lambda s: s, parents=["s"], readout=cm.Readout())
    with pytest.raises(cm.PersistenceError, match="mechanisms changed"):
        cm.load_detector(folder, PlantedSum(), changed)
    with pytest.raises(cm.PersistenceError, match="not a MahalanobisDetector"):
        cm.MahalanobisDetector.load(folder, PlantedSum(), sum_hypothesis())


def test_saving_refuses_to_clobber_and_an_interrupted_save_leaves_nothing(data, tmp_path, monkeypatch):
    trusted, _ = data
    det = make("mahalanobis").fit(trusted)
    with pytest.raises(cm.NotFittedError):
        make("mahalanobis").save(tmp_path / "unfitted")
    target = det.save(tmp_path / "det")
    before = (target / "config.json").read_bytes()
    with pytest.raises(cm.PersistenceError, match="already exists"):
        det.save(target)
    (tmp_path / "notes").mkdir()
    with pytest.raises(cm.PersistenceError, match="not a detector folder"):
        det.save(tmp_path / "notes", overwrite=True)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        det.save(tmp_path / "fresh")
    with pytest.raises(KeyboardInterrupt):
        det.save(target, overwrite=True)
    assert not (tmp_path / "fresh").exists()
    assert (target / "config.json").read_bytes() == before  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "notes"]  # no temporary folders left


def test_state_that_is_not_plain_data_is_named_in_the_error(data, tmp_path):
    trusted, _ = data
    det = make("mahalanobis").fit(trusted)
    det.extra_ = object()
    with pytest.raises(cm.PersistenceError, match=r"state\.extra_: cannot save a builtins\.object"):
        det.save(tmp_path / "det")


def test_encode_decode_round_trips_plain_values_and_records():
    site = cm.Site("blocks.0.hook_resid_post", (3,), head=None, basis=torch.eye(4)[:, :2], label="pca")
    value = {"a": (1, 2.5, None, float("nan")), "s": {3, 1}, 4: [np.arange(3), site], "r": cm.Readout(-1, (0, 1))}
    encoded, tensors = persistence.encode(value)
    json.dumps(encoded, allow_nan=False)
    back = persistence.decode(json.loads(json.dumps(encoded)), tensors)
    assert back["a"][:3] == (1, 2.5, None) and np.isnan(back["a"][3])
    assert back["s"] == {1, 3} and back["r"] == cm.Readout(-1, (0, 1))
    np.testing.assert_array_equal(back[4][0], np.arange(3))
    assert back[4][1].key == site.key and torch.equal(back[4][1].basis, site.basis)
    with pytest.raises(cm.PersistenceError, match="function"):
        persistence.encode(cm.Site("h", positions=lambda ex: [0]))


def test_every_detector_explains_an_input_as_json(saved, data):
    _, untrusted = data
    for name, (folder, scores) in saved.items():
        det = cm.load_detector(folder, PlantedSum(), sum_hypothesis() if takes_hypothesis(name) else None)
        why = det.explain(untrusted[-1])
        json.dumps(why)
        assert why["score"] == pytest.approx(scores[-1], rel=1e-6, abs=1e-9), name
        assert why["flagged"] == (scores[-1] > det.threshold(0.01))
        if "sites" in why:
            assert why["sites"][0]["z"] >= why["sites"][-1]["z"]
