"""Training glue: device choice, batches on a device, a resumable loop whose modules follow the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly.errors import DatasetError
from anomaly.training import TrainConfig, TrainLoop, batches, device_label, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_device_and_label():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("") == resolve_device("auto")
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:  # asking for a GPU that is not there is a typed error, not a crash at the first tensor
        import pytest

        from anomaly.errors import InvalidRequestError

        with pytest.raises(InvalidRequestError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert "CPU" in device_label("cpu") and torch.__version__ in device_label("cpu")


def test_batches_shape_dtype_device_and_augmentation_bounds():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 1.5, (10, 8, 8)).astype(np.float32)
    masks = imgs > 0.5
    x, m = next(batches(imgs, masks, 4, np.random.default_rng(1), augment=True, device="cpu"))
    assert x.shape == (4, 1, 8, 8) and m.shape == (4, 1, 8, 8)
    assert x.dtype == torch.float32 and m.dtype == torch.bool and x.device.type == "cpu"
    assert float(x.min()) >= 0 and float(x.max()) <= 1.5
    x2, _ = next(batches(imgs, masks, 4, np.random.default_rng(1), augment=True, device="cpu"))
    assert torch.equal(x, x2)  # same seed, same batch


def test_train_loop_moves_modules_saves_and_resumes(tmp_path):
    cfg = TrainConfig(seed=0, max_steps=3, minutes=5, device="cpu")
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loop = TrainLoop(cfg, tmp_path, {"net": net}, {"opt": opt})
    for _ in loop:
        loss = net(torch.ones(2, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loop.log(loss=loss.item())
    assert loop.step == 3 and (tmp_path / "state.safetensors").exists()
    net2 = torch.nn.Linear(4, 1)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    cfg2 = TrainConfig(seed=0, max_steps=5, minutes=5, device="cpu", resume=True)
    loop2 = TrainLoop(cfg2, tmp_path, {"net": net2}, {"opt": opt2})
    assert loop2.step == 3
    assert torch.equal(net2.weight, net.weight) and next(net2.parameters()).device.type == "cpu"
    assert opt2.state_dict()["state"][0]["exp_avg"].shape == (1, 4)
    assert sum(1 for _ in loop2) == 2
    # the training time ends with the loop: what the card reads later is what the saved state holds, so a
    # resumed run's figure never reads less than the run it resumed (it did when the card came after a slow finish)
    import time

    from safetensors.torch import load_file

    done = loop2.wall_time_s
    time.sleep(0.2)
    saved = float(load_file(str(tmp_path / "state.safetensors"))["meta.elapsed"][0])
    assert loop2.wall_time_s == done == saved


def test_a_time_limited_loop_shows_the_steps_it_will_reach(tmp_path, capsys):
    """The progress bar of a run that ends at its --minutes budget counts towards the steps it will
    reach at its pace, not towards the 100000-step default it never gets near."""
    import time

    cfg = TrainConfig(seed=0, minutes=0.8 / 60, device="cpu")  # 0.8 s; max_steps stays 100000
    net = torch.nn.Linear(2, 1)
    loop = TrainLoop(cfg, tmp_path, {"net": net}, {"opt": torch.optim.SGD(net.parameters(), lr=0.1)})
    for _ in loop:
        time.sleep(0.01)
    assert 20 < loop.step < 100
    err = capsys.readouterr().err
    assert "/100000" not in err.rsplit("\r", 1)[-1]  # the final bar
    assert f"{loop.step}/{loop.step}" in err.rsplit("\r", 1)[-1]


def test_a_named_split_that_does_not_exist_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    """--train-split / --val-split typos are refused instead of silently falling back to a 10% split."""
    import pytest

    from anomaly.errors import DatasetError
    from anomaly.train import load_training_data, main

    with pytest.raises(DatasetError, match="val_nromal"):
        load_training_data(tiny_dataset, "train", "val_nromal")
    with pytest.raises(DatasetError, match="trian"):
        load_training_data(tiny_dataset, "trian")
    assert main(["zscore", "--data", str(tiny_dataset), "--out", str(tmp_path / "z"), "--val-split", "val_nromal"]) == 2
    assert "no split folder 'val_nromal'" in capsys.readouterr().err
    assert not (tmp_path / "z" / "card.json").exists()
    # an --out that cannot be written: one line, no traceback
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["zscore", "--data", str(tiny_dataset), "--out", str(blocker / "z")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a_file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the defaults still fall back: a folder with train/ only holds out 10% of it for validation
    only = tmp_path / "only_train"
    only.mkdir()
    (only / "train").symlink_to(tiny_dataset / "train", target_is_directory=True)
    train, val, _ = load_training_data(only, "train", "val_normal")
    full, _, _ = load_training_data(tiny_dataset)
    assert len(full) // 10 <= len(val) <= len(full) // 5 and len(train) + len(val) == len(full)
    files = lambda ps: {n.rsplit(":", 1)[0] for n in ps.names}  # noqa: E731
    assert not files(train) & files(val)  # whole files: no slice of a validation file is trained on


def test_hold_out_keeps_the_slices_of_a_volume_together():
    from anomaly.data.prepared import PreparedSet
    from anomaly.train import hold_out_files

    names = [f"vol{v}:{i}" for v in range(5) for i in range(20)]
    ps = PreparedSet(np.zeros((100, 8, 8), np.float32), np.ones((100, 8, 8), bool), np.zeros(100, np.int64), None, names)
    val, train = hold_out_files(ps)
    vf, tf = {n.split(":")[0] for n in val.names}, {n.split(":")[0] for n in train.names}
    assert len(vf) == 1 and not vf & tf and len(val) == 20 and len(train) == 80
    assert hold_out_files(ps)[0].names == val.names  # deterministic
    one = PreparedSet(ps.images[:20], ps.masks[:20], ps.labels[:20], None, names[:20])
    v1, t1 = hold_out_files(one)  # one volume: its slices are split, at least one kept for training
    assert len(v1) == 2 and len(t1) == 18
    import pytest

    from anomaly.errors import DatasetError

    with pytest.raises(DatasetError, match="at least 2 are needed"):
        hold_out_files(one.subset([0]))


def test_hold_out_keeps_the_files_of_a_subject_together(tmp_path):
    """labels.csv's subject column: a subject's files are all held out or all trained on."""
    from anomaly.data.folder import write_image, write_labels
    from anomaly.data.prepared import PreparedSet
    from anomaly.train import _folder_items, _subjects_of, hold_out_files

    rng = np.random.default_rng(0)
    rows = []
    for s in range(6):
        for k in range(3):  # three 2D slices per subject, one file each
            write_image(tmp_path, f"s{s}_{k}", rng.random((16, 16)).astype(np.float32) + 0.1)
            rows.append({"file": f"s{s}_{k}.png", "label": 0, "subject": f"subj{s}"})
    write_labels(tmp_path, rows)
    subjects = _subjects_of(_folder_items(tmp_path))
    assert subjects["s3_1"] == "subj3" and len(subjects) == 18  # keyed like PreparedSet names: file stem
    names = [f"s{s}_{k}:0" for s in range(6) for k in range(3)]
    ps = PreparedSet(np.zeros((18, 8, 8), np.float32), np.ones((18, 8, 8), bool), np.zeros(18, np.int64), None, names)
    subj = lambda p: {subjects[n.split(":")[0]] for n in p.names}  # noqa: E731
    for seed in range(5):
        val, train = hold_out_files(ps, seed=seed, subjects=subjects)
        assert len(val) == 3 and len(subj(val)) == 1 and not subj(val) & subj(train)
    # without subjects, files are drawn one by one: slices of a subject end up on both sides for some seed
    split = [hold_out_files(ps, seed=seed)[0] for seed in range(5)]
    assert any(len(subj(v)) > 1 for v in split)
    assert _subjects_of(_folder_items(tmp_path / "nothing here")) == {}


def _tiny_loop(tmp_path, max_steps, resume=False, out=1):
    net = torch.nn.Linear(4, out)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cfg = TrainConfig(seed=0, max_steps=max_steps, minutes=5, device="cpu", resume=resume)
    return TrainLoop(cfg, tmp_path, {"net": net}, {"opt": opt}, desc="tiny"), net, opt


def test_an_interrupted_loop_saves_its_state_and_resume_says_where_it_goes_on(tmp_path, capsys):
    import os
    import signal

    import pytest

    from anomaly.errors import CheckpointError, TrainingInterrupted

    before = signal.getsignal(signal.SIGTERM)
    loop, net, opt = _tiny_loop(tmp_path, 100)
    with pytest.raises(TrainingInterrupted, match="at step 4.*--resume"):
        for step in loop:
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a job scheduler would
            opt.zero_grad()
            net(torch.ones(2, 4)).pow(2).mean().backward()
            opt.step()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back
    again, net2, _ = _tiny_loop(tmp_path, 100, resume=True)
    assert again.step == 4 and torch.equal(net2.weight, net.weight)
    assert "resuming from step 4" in capsys.readouterr().err
    _tiny_loop(tmp_path, 3, resume=True)  # --steps below the steps done: said, not silently nothing
    assert "already at step 4, not below --steps 3: nothing more to train" in capsys.readouterr().err
    _tiny_loop(tmp_path / "none", 10, resume=True)
    assert "no saved state" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not that of this model"):
        _tiny_loop(tmp_path, 100, resume=True, out=3)  # another architecture's state


def test_train_cli_refuses_budgets_that_train_nothing(tiny_dataset, tmp_path, capsys):
    import pytest

    from anomaly.train import main

    for bad in (["--steps", "0"], ["--minutes", "-1"], ["--batch-size", "0"], ["--lr", "abc"]):
        with pytest.raises(SystemExit) as e:
            main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "x")] + bad)
        assert e.value.code == 2
    assert "must be above 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_blank_image_in_a_training_folder_is_skipped_by_name(tmp_path, capsys):
    from anomaly.data.folder import read_image, write_image
    from anomaly.data.prepared import load_prepared

    v = read_image(Path(__file__).resolve().parents[1] / "assets/templates/mni152_2009a_t1_1mm.nii.gz")
    d = tmp_path / "mine"
    for i in (70, 80, 90):
        write_image(d, f"s{i}", v[i])
    write_image(d, "blank", np.zeros_like(v[80]))
    ps = load_prepared(d, cache=False)
    assert len(ps) == 3 and not any(n.startswith("blank") for n in ps.names)
    assert "skipped blank.png" in capsys.readouterr().err


def test_the_card_says_whether_a_saved_state_was_resumed(tiny_dataset, tmp_path):
    from anomaly.checkpoints import load_card
    from anomaly.train import train

    out = tmp_path / "ae"
    c0 = train("ae", tiny_dataset, out, TrainConfig(seed=0, max_steps=2, batch_size=4, resume=True))
    assert c0["config"]["resume"] is True and c0["resumed_from_saved_state"] is False  # nothing to resume
    c1 = train("ae", tiny_dataset, out, TrainConfig(seed=0, max_steps=4, batch_size=4, resume=True))
    assert c1["resumed_from_saved_state"] is True and c1["train_steps"] == 4
    assert c1["wall_time_s"] >= c0["wall_time_s"]  # training time adds up over the runs
    assert load_card(out)["resumed_from_saved_state"] is True
    c2 = train("ae", tiny_dataset, tmp_path / "fresh", TrainConfig(seed=0, max_steps=2, batch_size=4))
    assert c2["resumed_from_saved_state"] is False
    import os
    import stat

    mask = os.umask(0o022)  # the weights are readable as a plain file would be (safetensors wrote 0600)
    try:
        train("ae", tiny_dataset, tmp_path / "mode", TrainConfig(seed=0, max_steps=1, batch_size=4))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "mode" / "model.safetensors").stat().st_mode) == 0o644
    # the card names its data by content too, whatever path it was given
    import re

    assert re.fullmatch(r"[0-9a-f]{16}", c0["data_fingerprint"]) and c2["data_fingerprint"] == c0["data_fingerprint"]
    from anomaly.train import data_fingerprint, load_training_data

    tr, va, _ = load_training_data(tiny_dataset)
    assert data_fingerprint(tr, va) == c0["data_fingerprint"] != data_fingerprint(tr.subset(np.arange(len(tr) - 1)), va)


def test_calibration_uses_the_extractor_masks_like_evaluate(tiny_dataset, tmp_path):
    """A folder with ground-truth brainmasks/: training may use them, calibration must not, so that
    evaluate --val-data (the real pipeline) reproduces the card's calibration."""
    import shutil

    from PIL import Image

    from anomaly.data.prepared import load_prepared
    from anomaly.evaluate import calibrate_on
    from anomaly.methods.base import get_method
    from anomaly.train import load_training_data, train

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    for split in ("train", "val_normal"):  # "ground truth" masks unlike the extractor's: a centred box
        (data / split / "brainmasks").mkdir()
        for p in sorted((data / split / "images").glob("*.png")):
            with Image.open(p) as im:
                w, h = im.size
            m = np.zeros((h, w), np.uint8)
            m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
            Image.fromarray(m).save(data / split / "brainmasks" / p.name)
    tr, val, _ = load_training_data(data)
    extracted = load_prepared(data / "val_normal", use_brainmasks=False)
    gt = load_prepared(data / "val_normal")
    assert not np.array_equal(gt.masks, extracted.masks)  # the two kinds of masks differ here
    assert val.names == extracted.names and np.array_equal(val.masks, extracted.masks)
    card = train("zscore", data, tmp_path / "z", TrainConfig(seed=0))
    cal = calibrate_on(data / "val_normal", {"zscore": get_method("zscore", tmp_path / "z")}, progress=False)["zscore"]
    assert cal.pixel_threshold == pytest.approx(card["calibration"]["pixel_threshold"], rel=1e-6)


def test_plain_folder_with_brainmasks_holds_out_on_the_extractor_masks_preprocessing_only_those_files(
        tiny_dataset, tmp_path, monkeypatch):
    """A plain folder of healthy scans with ground-truth brainmasks/: the 10% held out for calibration
    are preprocessed again with the extractor's masks, and only those files are."""
    import shutil

    from PIL import Image

    import anomaly.data.prepared as prepared
    from anomaly.train import load_training_data

    data = tmp_path / "plain"
    shutil.copytree(tiny_dataset / "train", data)
    (data / "brainmasks").mkdir()
    for p in sorted((data / "images").glob("*.png")):
        with Image.open(p) as im:
            w, h = im.size
        m = np.zeros((h, w), np.uint8)
        m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
        Image.fromarray(m).save(data / "brainmasks" / p.name)
    n_files = len(list((data / "images").glob("*.png")))
    prepared.load_prepared(data)  # the training pass (cached), as load_training_data makes it
    read = []
    real = prepared.read_image
    monkeypatch.setattr(prepared, "read_image", lambda p, *a, **k: read.append(Path(p).stem) or real(p, *a, **k))
    tr, val, _ = load_training_data(data)
    held = {n.rsplit(":", 1)[0] for n in val.names}
    assert 0 < len(held) < n_files and not held & {n.rsplit(":", 1)[0] for n in tr.names}
    assert sorted(read) == sorted(held)  # the cached training pass, then the held-out files alone
    extracted = prepared.load_prepared(data, use_brainmasks=False)
    keep = [i for i, n in enumerate(extracted.names) if n.rsplit(":", 1)[0] in held]
    assert val.names == [extracted.names[i] for i in keep]
    assert np.array_equal(val.masks, extracted.masks[keep])


def _plain_folder(tiny_dataset, tmp_path):
    """A plain folder of the tiny data set's healthy train PNGs plus two small NIfTI volumes."""
    import shutil

    from anomaly.data.folder import read_image, write_image

    data = tmp_path / "own"
    shutil.copytree(tiny_dataset / "train", data)
    v = read_image(ROOT / "assets/templates/mni152_2009a_t1_1mm.nii.gz")
    write_image(data, "volA", v[60:100:8, ::2, ::2].copy(), spacing=(8.0, 2.0, 2.0))
    write_image(data, "volB", v[62:102:8, ::2, ::2].copy(), spacing=(8.0, 2.0, 2.0))
    return data


def test_own_folder_leaves_out_what_is_labelled_anomalous_and_says_so(tiny_dataset, tmp_path, capsys):
    """labels.csv label 1 on a PNG or on a volume without a mask: none of its slices is trained or
    calibrated on (a volume's lesion may be on any slice), with a note; a "Subject" column of any
    case groups the hold-out; the card names the held-out files and times a fit without a loop."""
    from anomaly.data.folder import write_labels
    from anomaly.train import _folder_items, _subjects_of, load_training_data, train

    data = _plain_folder(tiny_dataset, tmp_path)
    pngs = sorted(p.name for p in (data / "images").glob("*.png"))
    rows = [{"file": f, "label": 0, "Subject": f"p{k // 4}"} for k, f in enumerate(pngs)]
    rows[0]["label"] = 1
    rows += [{"file": "volA.nii.gz", "label": 1, "Subject": "vol"}, {"file": "volB.nii.gz", "label": 0, "Subject": "vol"}]
    write_labels(data, rows)
    from anomaly.data.folder import read_image, write_image, write_mask

    # a volume labelled 1 *with* a mask: its lesion slice is left out, its lesion-free slices are healthy
    vc = read_image(data / "images" / "volB.nii.gz").copy()
    write_image(data, "volC", vc, spacing=(8.0, 2.0, 2.0))
    mc = np.zeros(vc.shape, bool)
    mc[2, 20:30, 20:30] = True
    write_mask(data, "volC", mc)
    write_labels(data, rows + [{"file": "volC.nii.gz", "label": 1, "Subject": "volc"}])
    assert _subjects_of(_folder_items(data))["volB"] == "vol"
    (data / "val_lesion").mkdir()  # beside images/, not beside train/: said to be unused
    capsys.readouterr()
    tr, val, _ = load_training_data(data)
    err = capsys.readouterr().err
    assert "val_lesion is not used" in err
    files = {n.rsplit(":", 1)[0] for n in tr.names + val.names}
    assert pngs[0].removesuffix(".png") not in files and "volA" not in files and "volB" in files
    c_slices = {n for n in tr.names + val.names if n.startswith("volC:")}
    assert "volC:2" not in c_slices and len(c_slices) >= 1
    assert "file(s) labelled anomalous" in err and "3 file(s)" in err  # the PNG, volA, volC's lesion slice
    held = {n.rsplit(":", 1)[0] for n in val.names}
    subj = _subjects_of(_folder_items(data))
    assert not {subj[f] for f in held} & {subj[n.rsplit(":", 1)[0]] for n in tr.names}
    card = train("zscore", data, tmp_path / "z", TrainConfig(seed=0))
    assert "(plain folder); held out for calibration" in card["training_data"]
    assert all(f in card["training_data"] for f in held)
    assert card["wall_time_s"] >= 0


def test_wrong_size_masks_in_a_training_folder_are_named_errors(tiny_dataset, tmp_path):
    """A brain mask or a lesion mask of another size than its image: a DatasetError naming both,
    not a crash in preprocessing or a silently dropped slice."""
    import shutil

    from PIL import Image

    from anomaly.data.prepared import load_prepared

    data = tmp_path / "bm"
    shutil.copytree(tiny_dataset / "train", data)
    first = sorted((data / "images").glob("*.png"))[0]
    (data / "brainmasks").mkdir()
    for p in sorted((data / "images").glob("*.png")):
        with Image.open(p) as im:
            w, h = im.size
        Image.fromarray(np.full((h, w), 255, np.uint8)).save(data / "brainmasks" / p.name)
    load_prepared(data)  # cached with these masks
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(data / "brainmasks" / first.name)
    # the cache knows the brain masks changed: the bad one is read and refused
    with pytest.raises(DatasetError, match=rf"brain mask .*{first.name}.* is 10x10 pixels .* must match"):
        load_prepared(data)
    shutil.rmtree(data / "brainmasks")
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / first.name)
    with pytest.raises(DatasetError, match=rf"mask .*{first.name}.* must match"):
        load_prepared(data)


def test_a_truncated_nifti_in_a_training_folder_is_a_one_line_error(tmp_path):
    """nibabel's multi-line message for a cut-off file becomes one line naming the file."""
    from anomaly.data.folder import read_image

    src = ROOT / "assets" / "examples" / "healthy_t1.nii.gz"
    import gzip

    raw = gzip.decompress(src.read_bytes())
    bad = tmp_path / "t.nii"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError) as e:
        read_image(bad)
    assert "t.nii" in str(e.value) and "\n" not in str(e.value)


def test_init_from_starts_from_saved_weights_and_the_card_says_so(tiny_dataset, tmp_path, capsys):
    """--init-from: a checkpoint's weights start the networks (fine-tuning on one's own healthy scans)."""
    from anomaly.checkpoints import load_card
    from anomaly.errors import CheckpointError
    from anomaly.train import main, train

    base = train("ae", tiny_dataset, tmp_path / "base", TrainConfig(seed=0, max_steps=3, batch_size=4))
    # zero steps after the start: the networks hold exactly the saved weights
    loop, net, _ = _tiny_loop(tmp_path / "a", 10)
    from safetensors.torch import save_file

    save_file({"weight": torch.full((1, 4), 0.5), "bias": torch.zeros(1)}, str(tmp_path / "a" / "model.safetensors"))
    cfg = TrainConfig(seed=0, max_steps=10, minutes=5, device="cpu", init_from=str(tmp_path / "a"))
    net2 = torch.nn.Linear(4, 1)
    TrainLoop(cfg, tmp_path / "w", {"net": net2}, {"opt": torch.optim.Adam(net2.parameters())})
    assert torch.equal(net2.weight, torch.full((1, 4), 0.5))
    assert "starting from the weights" in capsys.readouterr().err
    # weights under a prefix (a sub-network of a larger checkpoint) are found too
    save_file({"asr.weight": torch.ones(1, 4), "asr.bias": torch.zeros(1)}, str(tmp_path / "a" / "model.safetensors"))
    TrainLoop(cfg, tmp_path / "w2", {"net": net2}, {"opt": torch.optim.Adam(net2.parameters())})
    assert torch.equal(net2.weight, torch.ones(1, 4))
    with pytest.raises(CheckpointError, match="do not fit"):
        net3 = torch.nn.Linear(4, 3)
        TrainLoop(cfg, tmp_path / "w3", {"net": net3}, {"opt": torch.optim.Adam(net3.parameters())})

    # through the CLI: the card names the checkpoint it started from
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "ft"), "--steps", "2",
                 "--batch-size", "4", "--device", "cpu", "--init-from", str(tmp_path / "base")]) == 0
    card = load_card(tmp_path / "ft")
    assert card["initialised_from"]["checkpoint_hash"] == base["checkpoint_hash"]
    assert card["initialised_from"]["train_steps"] == 3 and card["config"]["init_from"] == str(tmp_path / "base")
    # another method's checkpoint, or a folder without weights: a clear message, exit status 2
    assert main(["vae", "--data", str(tiny_dataset), "--out", str(tmp_path / "v"), "--steps", "1",
                 "--init-from", str(tmp_path / "base")]) == 2
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "v"), "--steps", "1",
                 "--init-from", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "of the method 'ae', not 'vae'" in err and "no trained checkpoint" in err
    assert not (tmp_path / "v").exists()  # refused before anything is read or written
    # refused too: a method without networks, the source as output, --calibrate-only, weights that are not the card's
    assert main(["zscore", "--data", str(tiny_dataset), "--out", str(tmp_path / "z"), "--init-from", str(tmp_path / "base")]) == 2
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "base"), "--steps", "1",
                 "--init-from", str(tmp_path / "base")]) == 2
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "ft"), "--calibrate-only",
                 "--init-from", str(tmp_path / "base")]) == 2
    import shutil

    shutil.copytree(tmp_path / "base", tmp_path / "lfs", ignore=shutil.ignore_patterns("work"))
    (tmp_path / "lfs" / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3\n")
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "l"), "--init-from", str(tmp_path / "lfs")]) == 2
    err = capsys.readouterr().err
    assert "fits no network" in err and "overwrite the checkpoint" in err and "--calibrate-only" in err
    assert "does not match the hash" in err and "Traceback" not in err
    assert load_card(tmp_path / "base")["checkpoint_hash"] == base["checkpoint_hash"]  # the source is untouched
    # a resumed fine-tune keeps where it began; a later run from random weights in the same folder does not
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "ft"), "--steps", "4", "--batch-size", "4",
                 "--device", "cpu", "--resume", "--init-from", str(tmp_path / "base")]) == 0
    card = load_card(tmp_path / "ft")
    assert card["resumed_from_saved_state"] and card["initialised_from"]["checkpoint_hash"] == base["checkpoint_hash"]
    assert main(["ae", "--data", str(tiny_dataset), "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "4",
                 "--device", "cpu"]) == 0
    assert "initialised_from" not in load_card(tmp_path / "ft")
    # the record is written when a fresh run starts, so a run stopped (Ctrl-C) before its card still has it
    from anomaly.train import INIT_RECORD, _read_record, _start_record

    _start_record(tmp_path / "cut", TrainConfig(init_from=str(tmp_path / "base")))
    assert (tmp_path / "cut" / "work" / INIT_RECORD).is_file()
    assert _read_record(tmp_path / "cut")["checkpoint_hash"] == base["checkpoint_hash"]
    _start_record(tmp_path / "cut", TrainConfig())  # then a fresh run from random weights there: no record
    assert _read_record(tmp_path / "cut") is None


def test_init_from_is_refused_when_fit_starts_no_network_from_it(tiny_dataset, tmp_path):
    """A method that trains networks but not through TrainLoop cannot honour --init-from: the run
    says so and saves nothing, rather than writing a card that claims a start it did not make."""
    from anomaly.errors import CheckpointError
    from anomaly.methods.base import AnomalyMethod, MethodOutput, _REGISTRY, register
    from anomaly.train import train

    @register
    class OwnLoop(AnomalyMethod):
        name = "ownloopprobe"
        title = paper = citation = "probe"

        @classmethod
        def fit(cls, train_set, val_set, out_dir, cfg):
            return {"w": torch.ones(2)}, {"train_steps": 1}

        def predict(self, images, masks, seed=0):
            return MethodOutput(pseudo_healthy=images, residual=np.abs(images - images.mean()).astype(np.float32))

    try:
        train("ownloopprobe", tiny_dataset, tmp_path / "base", TrainConfig(seed=0))
        with pytest.raises(CheckpointError, match="did not start any network from"):
            train("ownloopprobe", tiny_dataset, tmp_path / "ft", TrainConfig(seed=0, init_from=str(tmp_path / "base")))
        assert not (tmp_path / "ft" / "card.json").exists()
    finally:
        _REGISTRY.pop("ownloopprobe", None)


def test_training_a_method_the_consensus_lacks_says_how_to_add_it(tiny_checkpoints, tiny_dataset, tmp_path, capsys):
    import shutil

    from anomaly.checkpoints import load_card
    from anomaly.train import train

    root = tmp_path / "root"
    for n in ("zscore", "ae", "consensus"):
        shutil.copytree(tiny_checkpoints / n, root / n)
    members = load_card(root / "consensus")["members"]
    assert "vae" not in members
    train("vae", tiny_dataset, root / "vae", TrainConfig(seed=0, max_steps=2, batch_size=4))
    err = capsys.readouterr().err
    assert f"the consensus in {root} does not include vae" in err
    assert f"python -m anomaly.train consensus --data {tiny_dataset} --out {root / 'consensus'}" in err
    assert load_card(root / "consensus")["members"] == members  # told, not changed behind the user's back


def test_a_calibration_on_few_healthy_slices_is_flagged(tmp_path, capsys):
    """Two PNGs train and calibrate (one slice each), but the card, stderr and the app's methods
    table say the percentiles rest on almost nothing."""
    from anomaly.checkpoints import load_card
    from anomaly.data.folder import read_image, write_image
    from anomaly.train import MIN_CALIBRATION_SLICES, train
    from anomaly.ui.callbacks import _validation_cell
    from tests.conftest import TEMPLATE

    v = read_image(TEMPLATE)
    for i in (60, 70):
        write_image(tmp_path / "two", f"s{i}", v[i:i + 1].astype(np.float32))
    train("zscore", tmp_path / "two", tmp_path / "z", TrainConfig(seed=0))
    card = load_card(tmp_path / "z")
    assert card["calibration"]["n_slices"] < MIN_CALIBRATION_SLICES
    assert "calibrated on 1 healthy slice(s) only" in card["calibration_warning"]
    assert "warning: zscore: calibrated on 1 healthy slice(s)" in capsys.readouterr().err
    assert "calibrated on few healthy slices" in _validation_cell(card)


def test_resume_on_other_data_is_refused_and_a_fresh_start_over_a_saved_state_says_so(tiny_dataset, tmp_path, capsys):
    import shutil

    from anomaly.train import main, train

    out = tmp_path / "ae"
    train("ae", tiny_dataset, out, TrainConfig(seed=0, max_steps=2, batch_size=4))
    assert (out / "work" / "data.json").is_file()
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    victim = sorted((other / "train" / "images").iterdir())[0]
    victim.unlink()  # other data: one training file fewer
    capsys.readouterr()
    assert main(["ae", "--data", str(other), "--out", str(out), "--steps", "4", "--batch-size", "4",
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the saved state" in err and "was trained on other data" in err and "Traceback" not in err
    # the same data resumes; training afresh over a saved state says that it does
    assert train("ae", tiny_dataset, out, TrainConfig(seed=0, max_steps=3, batch_size=4, resume=True))["resumed_from_saved_state"]
    train("ae", tiny_dataset, out, TrainConfig(seed=0, max_steps=1, batch_size=4))
    assert "holds the saved state of an earlier run: starting afresh over it" in capsys.readouterr().err
    # the earlier run's state (step 3) went with it: what a later --resume finds is the fresh run's (step 1)
    from safetensors.torch import load_file

    states = list((out / "work").rglob("state.safetensors"))
    assert states and all(int(load_file(str(st))["meta.step"][0]) == 1 for st in states)


def test_files_in_images_that_are_not_read_are_named(tmp_path, capsys):
    from anomaly.data.folder import read_folder, read_image, write_image
    from tests.conftest import TEMPLATE

    v = read_image(TEMPLATE)
    write_image(tmp_path / "ds", "s60", v[60:61].astype(np.float32))
    (tmp_path / "ds" / "images" / "README.txt").write_text("notes")
    (tmp_path / "ds" / "images" / "series").mkdir()
    (tmp_path / "ds" / "images" / ".DS_Store").write_text("")
    assert [it.name for it in read_folder(tmp_path / "ds")] == ["s60"]
    err = capsys.readouterr().err
    assert "also holds README.txt, series/: not read" in err and ".DS_Store" not in err
    read_folder(tmp_path / "ds")
    assert "not read" not in capsys.readouterr().err  # said once


def test_a_4d_volume_in_a_data_set_is_refused_with_what_to_do(tmp_path):
    import nibabel as nib

    from anomaly.data.folder import read_image
    from anomaly.errors import DatasetError

    p = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 4, 3), np.float32), np.eye(4)), str(p))
    with pytest.raises(DatasetError, match="4D file holds 3 volumes: save the one meant as its own NIfTI"):
        read_image(p)


def test_calibrate_only_on_enough_slices_drops_the_few_slices_warning(tiny_dataset, tmp_path):
    from anomaly.checkpoints import load_card, write_card
    from anomaly.train import train

    out = tmp_path / "z"
    train("zscore", tiny_dataset, out, TrainConfig(seed=0))
    card = load_card(out)
    card["calibration_warning"] = "calibrated on 1 healthy slice(s) only"  # as a first fit on two files left it
    write_card(out, card)
    train("zscore", tiny_dataset, out, TrainConfig(seed=0), calibrate_only=True)
    n = load_card(out)["calibration"]["n_slices"]
    from anomaly.train import MIN_CALIBRATION_SLICES

    assert ("calibration_warning" in load_card(out)) == (n < MIN_CALIBRATION_SLICES)
    assert load_card(out).get("calibration_warning") != "calibrated on 1 healthy slice(s) only"
