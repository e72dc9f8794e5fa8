"""Saving and loading detectors: round trips in a new process, and every way a folder can be wrong."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
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
from causalmad import calibration, persistence
from causalmad.errors import CausalMADWarning

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
    assert det.summary()["valid"] == sum(e["valid"] for e in det.explanations_) >= len(det.valid_) > 0
    assert det.explain(untrusted[-1])["score"] == pytest.approx(scores[-1])


def test_folder_holds_json_safetensors_and_their_checksums(saved):
    folder, _ = saved["scrubbing"]
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "config.json", "state.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == persistence.FORMAT_VERSION
    assert config["causalmad_version"] == cm.__version__
    assert len(config["model_fingerprint"]) == 64
    sums = dict(reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("config.json", "state.safetensors")
    }  # as `sha256sum -c SHA256SUMS` reads it


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
    with pytest.raises(cm.PersistenceError, match="config.json does not match its checksum"):
        cm.load_detector(garbled, PlantedSum())
    with pytest.warns(CausalMADWarning), pytest.raises(cm.PersistenceError, match="not valid JSON"):
        cm.load_detector(garbled, PlantedSum(), trust_modified=True)
    incomplete = copy_folder(src, tmp_path / "incomplete")
    (incomplete / "config.json").unlink()
    with pytest.raises(cm.PersistenceError, match="interrupted save"):
        cm.load_detector(incomplete, PlantedSum())
    future = copy_folder(src, tmp_path / "future")
    config = json.loads((future / "config.json").read_text())
    (future / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(cm.PersistenceError, match="format version 99 by a newer causalmad"):
        cm.load_detector(future, PlantedSum(), trust_modified=True)  # no override for a format it cannot read
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
    with pytest.raises(
        cm.PersistenceError, match="notes is not a causalmad detector folder .it has no config.json"
    ):
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

    def crash_on_second_rename(real=os.rename, calls=[]):  # noqa: B006 -- counts calls
        def rename(src, dst):
            calls.append(dst)
            if len(calls) == 2:  # the old folder is aside, the new one not yet in place
                raise KeyboardInterrupt
            real(src, dst)

        return rename

    monkeypatch.setattr("causalmad.persistence.os.rename", crash_on_second_rename())
    with pytest.raises(KeyboardInterrupt):
        det.save(target, overwrite=True)
    assert (target / "config.json").read_bytes() == before  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "notes"]


def test_state_that_is_not_plain_data_is_named_in_the_error(data, tmp_path):
    trusted, _ = data
    det = make("mahalanobis").fit(trusted)
    det.extra_ = object()
    with pytest.raises(cm.PersistenceError, match=r"state\.extra_: cannot save a builtins\.object"):
        det.save(tmp_path / "det")


def test_encode_decode_round_trips_plain_values_and_records():
    site = cm.Site("blocks.0.hook_resid_post", (3,), head=None, basis=torch.eye(4)[:, :2], label="pca")
    value = {
        "a": (1, 2.5, None, float("nan")),
        "s": {3, 1},
        4: [np.arange(3), site],
        "r": cm.Readout(-1, (0, 1)),
    }
    encoded, tensors = persistence.encode(value)
    json.dumps(encoded, allow_nan=False)
    back = persistence.decode(json.loads(json.dumps(encoded)), tensors)
    assert back["a"][:3] == (1, 2.5, None) and np.isnan(back["a"][3])
    assert back["s"] == {1, 3} and back["r"] == cm.Readout(-1, (0, 1))
    np.testing.assert_array_equal(back[4][0], np.arange(3))
    assert back[4][1].key == site.key and torch.equal(back[4][1].basis, site.basis)
    with pytest.raises(cm.PersistenceError, match="function"):
        persistence.encode(cm.Site("h", positions=lambda ex: [0]))


def test_numpy_integer_positions_save_and_load_as_python_ints():
    value = [cm.Site("h", (np.int64(3),)), cm.Readout(np.int64(-1))]
    encoded, tensors = persistence.encode(value)
    back = persistence.decode(json.loads(json.dumps(encoded)), tensors)
    assert back[0].positions == (3,) and back[0].key == cm.Site("h", (3,)).key
    assert back[1] == cm.Readout(-1) and type(back[1].position) is int
    h = cm.Hypothesis()
    h.add_input("a", lambda ex: int(ex))
    h.add_output("y", lambda a: a, parents=["a"], readout=cm.Readout(position=np.int64(-1)))
    json.dumps(persistence.hypothesis_fingerprint(h))  # a NumPy int would not serialise


def test_every_detector_explains_an_input_as_json(saved, data):
    _, untrusted = data
    for name, (folder, scores) in saved.items():
        det = cm.load_detector(folder, PlantedSum(), sum_hypothesis() if takes_hypothesis(name) else None)
        why = det.explain(untrusted[-1])
        assert isinstance(why, cm.ExplainResult), name
        assert json.loads(json.dumps(why.to_dict())) == why.to_dict(), name
        assert why["score"] == pytest.approx(scores[-1], rel=1e-6, abs=1e-9), name
        assert why["flagged"] == (scores[-1] > det.threshold(0.01))
        if "sites" in why:
            assert why["sites"][0]["z"] >= why["sites"][-1]["z"]


# ---------------------------------------------------------------- a folder is data, checked whole
def resign(folder: Path) -> None:
    """Rewrite SHA256SUMS for the folder's current files (as someone who edits a folder can)."""
    (folder / "SHA256SUMS").write_text(
        "".join(
            f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
            for n in ("config.json", "state.safetensors")
        )
    )


def test_an_edit_to_any_byte_of_config_json_is_refused(saved, tmp_path):
    src, _ = saved["mahalanobis"]
    folder = copy_folder(src, tmp_path / "edited")
    original = (folder / "config.json").read_bytes()
    for i in range(len(original)):
        edited = bytearray(original)
        edited[i] ^= 0x01
        (folder / "config.json").write_bytes(bytes(edited))
        # (an edit of the format version to 3 claims a newer format: refused as one, with no override)
        with pytest.raises(
            cm.PersistenceError,
            match=r"edited/config\.json does not match its checksum|"
            r"format version 3 by a newer causalmad",
        ):
            persistence.read_config(folder)
    (folder / "config.json").write_bytes(original + b"\n")  # harmless, but not what was saved
    with pytest.raises(cm.PersistenceError, match="trust_modified=True"):
        cm.load_detector(folder, PlantedSum())
    with pytest.warns(CausalMADWarning, match="config.json does not match its checksum"):
        det = cm.load_detector(folder, PlantedSum(), trust_modified=True)
    np.testing.assert_array_equal(det.heldout_scores_, cm.load_detector(src, PlantedSum()).heldout_scores_)


def test_every_file_in_the_folder_is_covered(saved, tmp_path):
    src, _ = saved["mahalanobis"]
    edited = copy_folder(src, tmp_path / "state")
    state = bytearray((edited / "state.safetensors").read_bytes())
    state[-1] ^= 0x01
    (edited / "state.safetensors").write_bytes(bytes(state))
    with pytest.raises(
        cm.PersistenceError, match=r"state\.safetensors does not match its checksum in SHA256SUMS"
    ):
        cm.load_detector(edited, PlantedSum())
    extra = copy_folder(src, tmp_path / "extra")
    (extra / "notes.txt").write_text("hello")
    with pytest.raises(cm.PersistenceError, match=r"notes\.txt is not covered by SHA256SUMS"):
        cm.load_detector(extra, PlantedSum())
    for lines in ("", "not a checksum\n"):
        bad = copy_folder(src, tmp_path / f"sums{len(lines)}")
        (bad / "SHA256SUMS").write_text(lines)
        with pytest.raises(cm.PersistenceError, match="SHA256SUMS"):
            cm.load_detector(bad, PlantedSum())
    gone = copy_folder(src, tmp_path / "nosums")
    (gone / "SHA256SUMS").unlink()
    with pytest.raises(cm.PersistenceError, match="has no SHA256SUMS"):
        cm.load_detector(gone, PlantedSum())
    with pytest.warns(CausalMADWarning, match="has no SHA256SUMS"):
        cm.load_detector(gone, PlantedSum(), trust_modified=True)


def test_a_format_1_folder_is_refused_unless_trusted(saved, data, tmp_path):
    """Format 1 checksummed only the state: loading it by default would let anyone who
    edits a folder skip the checksum by writing format_version 1."""
    src, scores = saved["mahalanobis"]
    old = copy_folder(src, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config.update(
        format_version=1, state_sha256=hashlib.sha256((old / "state.safetensors").read_bytes()).hexdigest()
    )
    (old / "config.json").write_text(json.dumps(config))
    (old / "SHA256SUMS").unlink()
    with pytest.raises(cm.PersistenceError, match=r"format version 1.*refit it"):
        cm.load_detector(old, PlantedSum())
    with pytest.warns(CausalMADWarning, match="format version 1"):
        det = cm.load_detector(old, PlantedSum(), trust_modified=True)
    np.testing.assert_array_equal(det.score(data[1]), scores)


def test_a_folder_saved_before_an_argument_existed_loads_with_what_it_was_fitted_with(saved, data, tmp_path):
    """``params_before_saved``: a scrubbing folder without ``combination`` was fitted,
    and its threshold set, with Simes by family alone; it loads with that, not the default."""
    src, _ = saved["scrubbing"]
    old = copy_folder(src, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    assert config["params"].pop("combination") == "both"
    (old / "config.json").write_text(json.dumps(config))
    with pytest.warns(CausalMADWarning, match="config.json does not match its checksum"):
        det = cm.load_detector(old, PlantedSum(), sum_hypothesis(), trust_modified=True)
    assert det.combination == "by-family"
    lp = calibration.log_p_values(
        det.divergences(data[1]), det.calibration_, det.column_resolutions(), det.two_sided_
    )
    np.testing.assert_allclose(det.score(data[1]), -calibration.by_family(lp, det.families_))
    assert cm.load_detector(src, PlantedSum(), sum_hypothesis()).combination == "both"


# ---------------------------------------------------------------- overwrite=True and leftovers
def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_a_detector_folder(data, tmp_path):
    trusted, _ = data
    det = make("mahalanobis").fit(trusted)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"format_version": 1, "detector": "mine"}')
    (project / "src" / "main.py").write_text("print('my work')\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    lookalike = copy_folder(det.save(tmp_path / "det"), tmp_path / "lookalike")
    (lookalike / "results.csv").write_text("mine\n")
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "config.json").write_text('{"colour": "blue"}')
    (tmp_path / "file.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "det")
    before = tree(tmp_path)
    for path, message in (
        (project, r"holds data\.csv, src, which causalmad does not write"),
        (lookalike, "holds results.csv"),
        (settings, "config.json is not a detector's"),
        (tmp_path / "file.json", "is a file"),
        (tmp_path / "link", "symbolic link"),
    ):
        with pytest.raises(cm.PersistenceError, match=message):
            det.save(path, overwrite=True)
    assert tree(tmp_path) == before  # nothing touched
    det.save(tmp_path / "det", overwrite=True)  # a detector folder is replaced
    cm.load_detector(tmp_path / "det", PlantedSum())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_save_are_removed_by_the_next(data, tmp_path, caplog):
    trusted, _ = data
    det = make("mahalanobis").fit(trusted)
    pid = dead_pid()
    target = det.save(tmp_path / "det")
    saved_config = (target / "config.json").read_bytes()
    target.rename(tmp_path / f".det.causalmad-old-{pid}")  # killed after moving the old folder aside
    (tmp_path / f".det.causalmad-tmp-{pid}").mkdir()  # ... with its new folder half written
    (tmp_path / f".det.causalmad-tmp-{pid}" / "state.safetensors").write_bytes(b"half")
    (tmp_path / ".det.causalmad-tmp-notapid").mkdir()  # not a name causalmad writes: left alone
    (tmp_path / f".det.causalmad-tmp-{os.getppid()}").mkdir()  # a live writer's: left alone
    with caplog.at_level("WARNING", logger="causalmad.persistence"):
        done = persistence.remove_stale(target)
    assert sorted(p.name for p in done) == [f".det.causalmad-old-{pid}", f".det.causalmad-tmp-{pid}"]
    assert (target / "config.json").read_bytes() == saved_config  # the old folder is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".det.causalmad-tmp-notapid", f".det.causalmad-tmp-{os.getppid()}", "det"]
    )
    assert (
        f"put back {target}" in caplog.text and f"removed {tmp_path}/.det.causalmad-tmp-{pid}" in caplog.text
    )


def test_a_save_killed_in_another_process_leaves_nothing_after_the_next_save(data, tmp_path, caplog):
    trusted, _ = data
    torch.save(trusted, tmp_path / "trusted.pt")
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import safetensors.torch
        from conftest import PlantedSum
        import causalmad as cm
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = killed
        cm.MahalanobisDetector(PlantedSum()).fit(torch.load({str(tmp_path / "trusted.pt")!r})).save(
            {str(tmp_path / "det")!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    assert proc.wait(timeout=300) == -signal.SIGKILL
    # what the kill left: its half-written folder and the writers' lock file, which no one holds now
    assert sorted(p.name for p in tmp_path.glob(".det.*")) == [
        ".det.causalmad-lock",
        f".det.causalmad-tmp-{proc.pid}",
    ]
    with caplog.at_level("WARNING", logger="causalmad.persistence"):
        make("mahalanobis").fit(trusted).save(tmp_path / "det")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "trusted.pt"]
    assert "killed before it finished" in caplog.text


def test_a_folder_saved_before_an_argument_existed_loads_with_the_behaviour_it_was_fitted_with(
    saved, data, tmp_path
):
    """A scrubbing folder whose config predates ``hypothesis_statistic`` and
    ``counterfactual_resolution`` was fitted with the mean over sources and one resolution
    for every column: it loads with those, not with today's defaults."""
    src, _ = saved["scrubbing"]
    folder = copy_folder(src, tmp_path / "older")
    config = json.loads((folder / persistence.CONFIG).read_text())
    assert config["params"].pop("hypothesis_statistic") == "median"
    assert config["params"].pop("counterfactual_resolution") == 1e-6
    assert config["params"].pop("interchange_outputs") == "downstream"
    assert config["params"].pop("part_statistic") == "trimmed"
    assert config["params"].pop("lower_tail") == "log"
    assert config["params"].pop("upper_tail") == "gpd"
    (folder / persistence.CONFIG).write_text(json.dumps(config))
    sums = "".join(
        f"{persistence.sha256_file(folder / n)}  {n}\n" for n in (persistence.CONFIG, persistence.STATE)
    )
    (folder / persistence.CHECKSUMS).write_text(sums)
    older = cm.ScrubbingDetector.load(folder, PlantedSum(), sum_hypothesis())
    assert older.hypothesis_statistic == "mean" and older.counterfactual_resolution is None
    assert older.interchange_outputs == "all" and older.part_statistic == "mean"
    assert older.lower_tail == "exponential" and older.upper_tail == "exponential"
    np.testing.assert_array_equal(older.column_resolutions(), older.min_scale)
    today = cm.ScrubbingDetector.load(src, PlantedSum(), sum_hypothesis())
    assert today.hypothesis_statistic == "median" and today.counterfactual_resolution == 1e-6
    assert today.part_statistic == "trimmed" and today.lower_tail == "log" and today.upper_tail == "gpd"
    # what scoring reads is checked on loading, before anything computes with it
    for where, key, value, message in [
        ("params", "counterfactual_resolution", 0, "counterfactual_resolution must be a positive number"),
        ("params", "interchange_outputs", "some", "interchange_outputs must be one of"),
        ("state", "two_sided_", [True], "two_sided_ has shape"),
    ]:
        config = json.loads((src / persistence.CONFIG).read_text())
        config[where][key] = value
        (folder / persistence.CONFIG).write_text(json.dumps(config))
        with pytest.raises(cm.CausalMADError, match=message), pytest.warns(CausalMADWarning):
            cm.ScrubbingDetector.load(folder, PlantedSum(), sum_hypothesis(), trust_modified=True)
