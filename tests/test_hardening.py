"""What a hostile-but-fair new user broke: each case reproduced as it was found, then fixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.results import read_results

ROOT = Path(__file__).resolve().parent.parent
# Long enough to be interrupted mid-training: teachers of 8 epochs on tiny shapes data.
SLOW = ["--preset", "digits-demo", "--set", "data.name=shapes", "--set", "data.count=200",
        "--set", "data.image_size=16", "--set", "train.epochs=8", "--set", "train.batch_size=16",
        "--set", "teachers=[{model: test_resnet}, {model: test_resnet, label: second}]",
        "--set", "student.model=test_byobnet", "--set", "student.width=null", "--set", "student.seeds=1"]


def kdlab(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def test_ctrl_c_records_the_cancel_in_events_and_results(tmp_path):
    out, store = tmp_path / "run", tmp_path / "store"
    proc = kdlab("run", *SLOW, "--out", str(out), "--store", str(store), "--quiet")
    events = out / "events.jsonl"
    # Interrupt once the first teacher has finished an epoch: the run is mid-training.
    wait_for(lambda: events.is_file() and '"kind": "epoch"' in events.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kinds = [(e["kind"], e["source"]) for e in map(json.loads, events.read_text().splitlines())]
    assert ("cancelled", "run") in kinds and any(k == "cancelled" and s.startswith("teacher/") for k, s in kinds)
    results = read_results(out / "results.json")
    assert results.status == "cancelled" and results.comparison == []
    assert "cancelled" in err and "resume" in err
    from core.store import RunStore
    [run_id] = RunStore(store).run_ids()
    assert RunStore(store).get_run(run_id).status == "cancelled"


def cli(*args: str):
    from click.testing import CliRunner

    from core.cli import main
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("folder", ["/proc/kdlab-out", "/proc/kdlab/deeper", "/sys/kdlab-out"])
def test_an_output_folder_that_cannot_be_created_is_refused_before_anything_is_recorded(tmp_path, command, folder):
    if not Path(folder).parts[1] or not Path("/" + Path(folder).parts[1]).is_dir():
        pytest.skip(f"no {folder.split('/')[1]} here")
    store = tmp_path / "store"
    grid = ["--grid", "distill.alpha=0.5,1"] if command == "sweep" else ["--store", str(store)]
    result = cli(command, "--preset", "digits-demo", *grid, "--out", folder)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: --out:") and folder in last and "cannot be created or written" in last
    assert "Traceback" not in result.output
    if store.exists():
        from core.store import RunStore
        assert RunStore(store).run_ids() == []  # an input error never becomes a store row


def test_the_probe_leaves_no_folder_behind(tmp_path):
    from core.errors import OutputError
    from core.folders import probe_folder
    probe_folder(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        probe_folder(tmp_path / "file")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        probe_folder(tmp_path / "file" / "below")


@pytest.mark.parametrize("name, text, cause", [
    ("tabs.yaml", "name: x\ntrain:\n\tepochs: 3\n",
     "found character '\\t' that cannot start any token at line 3, column 1"),
    ("open.yaml", "teachers: [{model: resnet18}\nname: x\n", "expected ',' or ']', but got '<scalar>' at line 2, column 1"),
    ("bad.toml", 'name = "x"\n[train]\nepochs = \n', "Invalid value (at line 3, column 10)"),
])
def test_config_syntax_errors_keep_the_parsers_cause_and_position(tmp_path, name, text, cause):
    path = tmp_path / name
    path.write_text(text)
    result = cli("show-config", str(path))
    assert result.exit_code == 2
    assert cause in result.output and str(path) in result.output


def test_a_config_path_that_is_not_a_file_says_what_it_is(tmp_path):
    from core import config
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="is a folder"):
        config.read_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        config.read_file(tmp_path / "missing.yaml")


def write_pngs(folder: Path, n: int, colour: tuple[int, int, int]) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 12), colour).save(folder / f"img{i}.png")


def load_folder(root: Path, **kwargs):
    import torch

    from core.config import DataConfig
    from core.data import load_data
    return load_data(DataConfig(name="imagefolder", root=str(root), image_size=8, **kwargs), torch.device("cpu"))


@pytest.mark.parametrize("link, target", [
    ("zloop", "."),                 # the root itself: a class of every image
    ("cats/again", "."),            # the root, from inside a class folder
    ("dogs/cats", "../cats"),       # another class, inside the root
    ("up", ".."),                   # above the root
])
def test_a_link_into_the_data_root_is_refused_by_name(tmp_path, link, target):
    from core.errors import DataError
    root = tmp_path / "root"
    write_pngs(root / "cats", 8, (250, 10, 10))
    write_pngs(root / "dogs", 8, (10, 10, 250))
    (root / link).symlink_to(target, target_is_directory=True)
    with pytest.raises(DataError) as err:
        load_folder(root)
    assert err.value.field == "data.root" and str(root / link) in str(err.value) and "symbolic link" in str(err.value)


def test_a_linked_class_folder_elsewhere_is_a_class(tmp_path):
    write_pngs(tmp_path / "disk" / "birds", 8, (10, 250, 10))
    root = tmp_path / "root"
    write_pngs(root / "cats", 8, (250, 10, 10))
    (root / "birds").symlink_to(tmp_path / "disk" / "birds", target_is_directory=True)
    bundle = load_folder(root)
    assert bundle.class_names == ["birds", "cats"] and len(bundle.train) + len(bundle.val) + len(bundle.test) == 16


def test_the_same_image_reached_twice_is_refused(tmp_path):
    from core.errors import DataError
    root = tmp_path / "root"
    write_pngs(root / "cats", 8, (250, 10, 10))
    write_pngs(root / "dogs", 8, (10, 10, 250))
    (root / "dogs" / "stray.png").symlink_to(root / "cats" / "img0.png")
    with pytest.raises(DataError, match="same image file is reached as"):
        load_folder(root)
    (root / "dogs" / "stray.png").unlink()
    os.link(root / "cats" / "img1.png", root / "dogs" / "hard.png")
    with pytest.raises(DataError, match="hard.png"):
        load_folder(root)


def test_a_class_missing_from_a_split_is_refused_by_name(tmp_path):
    from core.errors import DataError
    root = tmp_path / "root"
    write_pngs(root / "many", 40, (250, 10, 10))
    write_pngs(root / "few", 2, (10, 10, 250))  # 2 images cannot fill train, val and test
    with pytest.raises(DataError) as err:
        load_folder(root)
    assert "'few'" in str(err.value) and "split has no image of class" in str(err.value)
    assert err.value.field in ("data.test_fraction", "data.val_fraction")


TINY_RUN = ["data.name=shapes", "data.count=200", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
            "teachers=[{model: test_resnet}]", "student.model=test_byobnet", "student.width=null",
            "student.seeds=1", "distill.teaching=cached"]


def test_a_teacher_at_chance_level_is_warned(tmp_path):
    from core import config
    from core.pipeline import prepare, run_experiment
    results = run_experiment(prepare(config.load(overrides=TINY_RUN + ["train.lr=10"]), tmp_path), tmp_path)
    [warning] = [w for w in results.warnings if "chance level" in w]
    assert warning.startswith("teachers.0: draw 0 of test_resnet") and "train.lr (now 10)" in warning
    sane = run_experiment(prepare(config.load(overrides=TINY_RUN + ["train.epochs=4"]), tmp_path / "ok"),
                          tmp_path / "ok")
    assert not [w for w in sane.warnings if "chance level" in w]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_weights_file_with_non_finite_values_fails_before_training(tmp_path, bad):
    import torch
    from safetensors.torch import save_file

    from core import config
    from core.errors import ModelError
    from core.models import ModelSpec, build_model
    from core.pipeline import prepare
    state = build_model(ModelSpec("test_resnet"), 4, 1).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(bad)
    save_file(state, str(tmp_path / "w.safetensors"))
    cfg = config.load(overrides=TINY_RUN + [f"teachers=[{{model: test_resnet, weights_file: '{tmp_path / 'w.safetensors'}'}}]"])
    with pytest.raises(ModelError) as err:
        prepare(cfg, tmp_path / "out")
    assert err.value.field == "teachers.0.weights_file" and "non-finite" in str(err.value) and key in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_refused_torch_checkpoint_names_its_cause_in_full(tmp_path):
    import datetime

    import torch

    from core.errors import ModelError
    from core.models.weights import read_state_dict
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "when": datetime.date(2020, 1, 1)}, tmp_path / "c.pth")
    with pytest.raises(ModelError) as err:
        read_state_dict(tmp_path / "c.pth", "teachers.0.weights_file")
    text = str(err.value)
    assert "datetime.date" in text and "refuses to unpickle" in text and "Re-running" not in text
    with pytest.raises(ModelError, match="is a folder"):
        read_state_dict(tmp_path, "teachers.0.weights_file")


def test_shorten_cuts_at_a_sentence_or_a_word():
    from core.models.weights import shorten
    first = "A first sentence of " + "many " * 25 + "words."
    assert shorten(first + " " + "word " * 60) == first  # cut where a sentence ends
    cut = shorten("x" * 5 + " " + "abcdefgh " * 40)
    assert cut.endswith("...") and len(cut) <= 200 and cut[:-3].endswith("abcdefgh")  # whole words only


def test_a_value_given_twice_on_a_grid_axis_is_trained_once(caplog):
    from core.sweep_grid import grid_points, parse_axis
    with caplog.at_level("WARNING", logger="core.sweep_grid"):
        axis = parse_axis("distill.alpha=0.5,0.5,1,1.0,0.9")
    assert axis.values == (0.5, 1, 0.9) and axis.dropped == (0.5, 1.0)
    assert len(grid_points([axis])) == 3
    assert "distill.alpha: 0.5, 1.0 given more than once" in caplog.text
    assert parse_axis("distill.loss=hinton,dkd").warning() is None


@pytest.mark.parametrize("content, what", [
    ("{}", "axes"), ("[]", "not a mapping"), ('{"axes": [], "best": null, "rows": [{"point": "x"}]}', "rows.0"),
    ("{broken", "not valid JSON"),
])
def test_a_malformed_sweep_file_is_named_on_the_compare_page(tmp_path, content, what):
    from streamlit.testing.v1 import AppTest
    folder = tmp_path / "sweep-bad"
    folder.mkdir()
    (folder / "sweep.json").write_text(content)
    (folder / "config.yaml").write_text((ROOT / "tests" / "fixtures" / "config_v1.yaml").read_text())
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "compare.py"), default_timeout=60)
    at.run()
    at.text_input(key="sweep_dir").set_value(str(folder)).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(what in e and "sweep.json" in e for e in errors), errors


def test_an_app_shutdown_mid_run_reads_interrupted_in_the_store_and_in_results_json(tmp_path):
    from core import config
    from core.jobs import JobManager
    from core.store import RunStore
    jobs = JobManager(RunStore(tmp_path), heartbeat_every=0.5)
    run_id = jobs.submit(config.load(overrides=TINY_RUN + ["train.epochs=30"]))
    wait_for(lambda: jobs.store.events(run_id, kinds=["epoch"]), timeout=120)
    jobs.shutdown(timeout=60)
    run = jobs.store.get_run(run_id)
    assert run.status == "interrupted" and run.resumable
    assert read_results(run.run_dir / "results.json").status == "interrupted"
    assert any(e["kind"] == "cancelled" and e["source"] == "run" and e["message"].startswith("interrupted")
               for e in jobs.store.events(run_id))


@pytest.mark.parametrize("damage", [b"", b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\x00" * 50])
def test_a_damaged_store_gives_every_page_one_message_and_a_way_back(tmp_path, monkeypatch, damage):
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.store import RunStore
    data = tmp_path / "store"
    data.mkdir()
    # A finished run's folder survives the damage: reindex must bring it back.
    shutil.copytree(FIXTURE_RUN(tmp_path), data / "20260101-000000-fixture-abcd")
    (data / "kdlab.db").write_bytes(damage)
    monkeypatch.setenv("KDLAB_RUNS", str(data))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if damage == b"":  # an empty file: a fresh store was started; said so, with the way to get runs back
        assert any("0 bytes" in w.value and "reindex" in w.value for w in at.warning), [w.value for w in at.warning]
        at.button(key="store_reindex").click().run()
    else:
        assert [e.value for e in at.error] and "kdlab store recover" in at.error[0].value
        at.button(key="store_recover").click().run()
        assert any("damaged file is now" in s.value for s in at.success)
        assert list(data.glob("kdlab.db.damaged-*")), "the damaged file must be kept"
    assert not at.exception, at.exception
    assert any("1 run(s) added" in s.value for s in at.success), [s.value for s in at.success]
    assert RunStore(data).run_ids() == ["20260101-000000-fixture-abcd"]


def FIXTURE_RUN(tmp_path: Path) -> Path:
    """A run folder as kdlab writes it (config.yaml, results.json v1), without its checkpoints."""
    folder = tmp_path / "fixture-run"
    if not folder.exists():
        folder.mkdir()
        (folder / "config.yaml").write_text((ROOT / "tests" / "fixtures" / "config_v1.yaml").read_text())
        (folder / "results.json").write_text((ROOT / "tests" / "fixtures" / "results_v1.json").read_text())
    return folder


def test_a_viewer_cannot_launch_even_with_a_crafted_request(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.store import RunStore
    from dashboard.access import ROLE_KEY
    monkeypatch.setenv("KDLAB_RUNS", str(tmp_path / "store"))
    monkeypatch.setenv("KDLAB_PASSWORD", "class-pass")
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "setup.py"), default_timeout=60)
    at.session_state[ROLE_KEY] = "viewer"
    at.session_state["launch"] = True        # what a forged "Launch was clicked" message would set
    at.session_state["sweep_launch"] = True
    at.run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key in ("launch", "sweep_launch")]
    assert RunStore(tmp_path / "store").run_ids() == []


def test_a_dashboard_on_a_network_address_without_a_password_opens_nothing(monkeypatch):
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest
    monkeypatch.delenv("KDLAB_PASSWORD", raising=False)
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
        at.run()
    finally:
        st_config.set_option("server.address", before)
    assert not at.exception, at.exception
    assert at.error and "without a password" in at.error[0].value and "KDLAB_PASSWORD" in at.error[0].value
    assert not at.button  # no page ran


@pytest.mark.parametrize("name", ["imagefolder", "cifar10", "mnist"])
def test_setup_offers_data_root_and_blocks_launch_until_the_data_loads(name, tmp_path):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "setup.py"), default_timeout=60)
    at.run()
    at.selectbox(key="data_name").set_value(name).run()
    assert not at.exception, at.exception
    assert any("data.root" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="launch").disabled
    root = next(t for t in at.text_input if "root" in (t.label or "").lower() or "root" in str(t.key))
    assert root is not None  # the field is on the form (More data settings)
