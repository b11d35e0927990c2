"""Training: patch building, synthesis, the loop (loss goes down, resume is exact), the
trained checkpoint working in bpr-refine, and the quality gate trained on it (bpr-train-gate)."""

import csv
import json
import math
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import IdentityNet

import bpr.train.loop as train_loop
from bpr.cli.build_patches import main as build_main
from bpr.cli.package import main as package_main
from bpr.cli.refine import main as refine_main
from bpr.cli.train import main as train_main
from bpr.cli.train_gate import main as train_gate_main
from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.modeling import RefinerConfig, load_refiner, save_refiner
from bpr.refiner import Refiner, default_checkpoint
from bpr.train.augment import random_quarter_turn, random_rotate_zoom
from bpr.train.build_patches import crop_training_patches
from bpr.train.loop import TrainConfig, Trainer, edge_band, training_precision
from bpr.train.patch_store import PatchSet
from bpr.train.synth import LARGE_MIX, NEARLY_RIGHT, RECIPES, parse_mix, synthesize, thin_parts_lost


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("patches") / "davis"
    code = build_main(
        [
            "--gt",
            str(data_dir / "davis-train" / "gt.json"),
            "--images",
            str(data_dir / "davis-train" / "images"),
            "--out",
            str(out),
            "--max-images",
            "6",
            "--draws",
            "2",
            "--workers",
            "1",
            "--quiet",
            "--val-fraction",
            "0.3",
        ]
    )
    assert code == 0
    return out


def test_patch_set_shapes_counts_and_manifest(patch_dir):
    manifest = json.loads((patch_dir / "manifest.json").read_text())
    ps = PatchSet.open([patch_dir])
    n = manifest["total"]
    assert n == sum(len(m) for m in ps.meta) > 6 * 2 * 5  # several patches per draw
    assert ps.images[0].shape[1:] == (64, 64, 3) and ps.coarse[0].shape[1:] == (64, 64)
    assert manifest["draws"] == 2 and set(manifest["mix"]) <= set(RECIPES)
    assert len(ps.indices("train")) + len(ps.indices("val")) == n
    assert len(ps.indices("val")) > 0


def test_a_held_out_only_set_is_the_held_out_part_of_the_full_set_and_exits_quietly(patch_dir, data_dir, tmp_path):
    """--held-out-only builds the same draws of the same held-out images (numbered as in the
    full set), and nothing else. Run as a command with two worker processes: the pool ends its
    workers with SIGTERM, which must not print a traceback per worker."""
    out = tmp_path / "held_out"
    davis = data_dir / "davis-train"
    args = ["--gt", str(davis / "gt.json"), "--images", str(davis / "images"), "--out", str(out)]
    args += ["--max-images", "6", "--draws", "2", "--workers", "2", "--quiet", "--val-fraction", "0.3"]
    run = subprocess.run(
        [sys.executable, "-m", "bpr.cli.build_patches", *args, "--held-out-only"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.strip().startswith("bpr-build-patches: ")
    full, held_out = PatchSet.open([patch_dir]), PatchSet.open([out])
    assert len(held_out.indices("train")) == 0
    val = full.indices("val")
    assert len(held_out.indices("val")) == len(val) > 0
    (images, coarse, target), (images_full, coarse_full, target_full) = (
        held_out.gather(held_out.indices("val")),
        full.gather(val),
    )
    np.testing.assert_array_equal(images, images_full)  # the same places of the same images
    np.testing.assert_array_equal(target, target_full)
    # the same synthetic draws: OpenCV and torch may round a last bit differently under other
    # thread settings (here another process with two workers), which moves a pixel or two
    assert (coarse != coarse_full).mean() < 1e-4
    images = np.concatenate(held_out.meta)["image"]
    assert set(images) == set(np.concatenate(full.meta)["image"][np.concatenate(full.meta)["split"] == 1])
    assert json.loads((out / "manifest.json").read_text())["held_out_only"] is True


def test_held_out_only_with_no_held_out_image_is_a_one_line_error(data_dir, tmp_path, capsys):
    davis = data_dir / "davis-train"
    args = ["--gt", str(davis / "gt.json"), "--images", str(davis / "images"), "--out", str(tmp_path / "none")]
    assert build_main([*args, "--max-images", "2", "--val-fraction", "0", "--held-out-only", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bpr-build-patches: error: --held-out-only: none of the 2 images") and "\n" not in err


def test_patch_target_is_the_ground_truth_crop_and_image_patch_the_image_crop(patch_dir, data_dir):
    ps = PatchSet.open([patch_dir])
    manifest = json.loads((patch_dir / "manifest.json").read_text())
    gt = load_json(data_dir / "davis-train" / "gt.json")
    by_name = {i["file_name"]: i for i in gt["images"]}
    meta = ps.meta[0]
    for row in (0, len(meta) // 2, len(meta) - 1):
        rec = meta[row]
        info = by_name[manifest["image_files"][rec["image"]]]
        ann = [a for a in gt["annotations"] if a["image_id"] == info["id"]][rec["instance"]]
        g = decode_segmentation(ann["segmentation"], info["height"], info["width"])
        y0, x0 = int(rec["y0"]), int(rec["x0"])
        assert np.array_equal(ps.target[0][row], g[y0 : y0 + 64, x0 : x0 + 64].astype(np.uint8))
        image = read_image(data_dir / "davis-train" / "images" / info["file_name"])
        assert np.array_equal(ps.images[0][row], image[y0 : y0 + 64, x0 : x0 + 64])


@pytest.mark.parametrize("shape", [(480, 854), (40, 90)])  # a DAVIS frame, and one smaller than a patch
def test_a_training_triple_is_what_inference_cuts_at_the_same_place(shape, data_dir):
    gt = load_json(data_dir / "davis-train" / "gt.json")
    info, ann = gt["images"][5], gt["annotations"][5]
    image = read_image(data_dir / "davis-train" / "images" / info["file_name"])
    g = decode_segmentation(ann["segmentation"], info["height"], info["width"])
    h, w = shape
    image = np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))
    g = cv2.resize(g.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    coarse = RECIPES["warp"](image, g, np.random.default_rng(1))
    refiner = Refiner(IdentityNet(RefinerConfig(input_size=64)))
    image_t = torch.from_numpy(image).permute(2, 0, 1)
    job = refiner.prepare(image_t, torch.from_numpy(coarse)[None], refiner.options.updated(cover_all=False))
    assert job.num_patches > 0
    image_p, coarse_p, target_p = crop_training_patches(image, coarse, g, job.corners, 64)
    assert np.array_equal(image_p, job.image_patches.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    assert np.array_equal(coarse_p, job.mask_patches[:, 0].numpy().astype(np.uint8))
    padded_gt = np.pad(g, ((0, max(0, 64 - h)), (0, max(0, 64 - w))), mode="edge")  # an independent oracle
    expected = np.stack([padded_gt[y : y + 64, x : x + 64] for y, x in job.corners]).astype(np.uint8)
    assert np.array_equal(target_p, expected)


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - NEARLY_RIGHT))
def test_every_recipe_differs_from_gt_but_overlaps_it(recipe, data_dir):
    gt = load_json(data_dir / "davis-train" / "gt.json")
    info, ann = gt["images"][3], gt["annotations"][3]
    image = read_image(data_dir / "davis-train" / "images" / info["file_name"])
    g = decode_segmentation(ann["segmentation"], info["height"], info["width"])
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(3):
        c = RECIPES[recipe](image, g, rng)
        assert c.shape == g.shape and c.dtype == bool
        ious.append((c & g).sum() / (c | g).sum())
    assert 0.3 < np.mean(ious) < 0.999


def test_thin_parts_lost_drops_a_leg_far_from_the_body_and_keeps_the_body():
    g = np.zeros((480, 480), bool)
    g[100:300, 100:300] = True  # body
    g[300:460, 190:194] = True  # a 4 px wide leg (thinner than any opening), 160 px long
    image = np.zeros((480, 480, 3), np.uint8)
    for seed in range(6):
        c = thin_parts_lost(image, g, np.random.default_rng(seed))
        assert c[120:280, 120:280].all()
        assert not c[420:460, 190:194].any()  # the leg's far end is always gone


def _share_of_boundary_within(mask: np.ndarray, gt: np.ndarray, px: float) -> float:
    from bpr.evaluate.contours import contour

    dist = cv2.distanceTransform((~contour(gt)).view(np.uint8), cv2.DIST_L2, 5)
    return float((dist[contour(mask)] <= px).mean())


@pytest.mark.parametrize("small,large", [("warp", "warp_large"), ("colour", "colour_large")])
def test_large_recipes_make_errors_beyond_the_f_score_tolerance(small, large, data_dir):
    gt = load_json(data_dir / "davis-train" / "gt.json")
    info, ann = gt["images"][3], gt["annotations"][3]
    image = read_image(data_dir / "davis-train" / "images" / info["file_name"])
    g = decode_segmentation(ann["segmentation"], info["height"], info["width"])
    near = {
        name: np.mean(
            [_share_of_boundary_within(RECIPES[name](image, g, np.random.default_rng(s)), g, 8) for s in range(4)]
        )
        for name in (small, large)
    }
    assert near[large] < near[small]


def test_named_mixes_parse_to_their_weights():
    assert parse_mix("large") == LARGE_MIX
    assert parse_mix("grid=2,thin") == {"grid": 2.0, "thin": 1.0}
    with pytest.raises(ValueError):
        parse_mix("nonsense=1")


def test_synthesize_draws_from_the_mix():
    g = np.zeros((120, 160), bool)
    g[30:90, 40:120] = True
    image = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    names = {synthesize(image, g, rng, {"grid": 1.0})[1].split("+")[0] for _ in range(5)}
    assert names == {"grid"}


def test_a_quarter_turn_turns_image_coarse_and_target_of_a_sample_together():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=g).float()
    coarse, target = (images[:, :1] > 127).float(), (images[:, 1] > 127).to(torch.uint8)
    turned, turned_coarse, turned_target = random_quarter_turn(images, coarse, target, g)
    assert torch.equal(turned_coarse, (turned[:, :1] > 127).float())  # still aligned with the image
    assert torch.equal(turned_target, (turned[:, 1] > 127).to(torch.uint8))
    used = []
    for i in range(64):
        ks = [k for k in range(4) if torch.equal(turned[i], torch.rot90(images[i], k, dims=(-2, -1)))]
        assert len(ks) == 1  # a turn of its own sample, nothing else
        used.append(ks[0])
    assert set(used) == {0, 1, 2, 3}
    assert not torch.equal(turned, images)
    # the inputs themselves are left as they were
    assert torch.equal(images, torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float())


def _bars(n: int, size: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples of a centred horizontal bar (rows 40-55, columns 8-87): image channel 0 shows
    it, coarse and target are it."""
    bar = torch.zeros(n, size, size)
    bar[:, 40:56, 8:88] = 1
    images = torch.stack([bar * 255, torch.full_like(bar, 60), torch.full_like(bar, 90)], dim=1)
    return images, bar[:, None].clone(), bar.to(torch.uint8)


def test_rotate_zoom_turns_and_magnifies_image_coarse_and_target_together():
    images, coarse, target = _bars(64)
    g = torch.Generator().manual_seed(3)
    out_images, out_coarse, out_target = random_rotate_zoom(images, coarse, target, g, share=0.5)
    assert out_coarse.dtype == coarse.dtype and out_target.dtype == target.dtype
    assert set(out_coarse.unique().tolist()) <= {0.0, 1.0}
    # still aligned: the image's bar (255 vs 0, thresholded half way) is the masks' bar
    assert torch.equal(out_coarse[:, 0] > 0.5, out_images[:, 0] > 127.5)
    assert torch.equal(out_target.bool(), out_images[:, 0] > 127.5)
    changed = [not torch.equal(out_target[i], target[i]) for i in range(64)]
    assert 16 <= sum(changed) <= 48  # about half the samples, the others untouched
    for i in range(64):
        if not changed[i]:
            assert torch.equal(out_images[i], images[i])
            continue
        t = out_target[i].float()
        area = float(t.sum())
        assert 80 * 16 * 0.9 <= area <= 80 * 16 * 1.3**2 * 1.05  # magnified by 1 to 1.3
        ys, xs = torch.nonzero(t, as_tuple=True)
        cy, cx = float(ys.float().mean()), float(xs.float().mean())
        assert abs(cy - 47.5) < 1.5 and abs(cx - 47.5) < 1.5  # about the view's centre
        slope = float(((ys - cy) * (xs - cx)).float().mean() / ((xs - cx) ** 2).float().mean())
        assert abs(math.degrees(math.atan(slope))) <= 31  # turned by at most 30 degrees
    assert torch.equal(images, _bars(64)[0])  # the inputs themselves are left as they were


def test_rotate_zoom_with_no_share_changes_nothing():
    images, coarse, target = _bars(8)
    out = random_rotate_zoom(images, coarse, target, torch.Generator().manual_seed(0), share=0.0)
    assert all(torch.equal(a, b) for a, b in zip(out, (images, coarse, target)))


def test_edge_band_marks_pixels_near_a_class_change():
    t = torch.zeros(1, 10, 10, dtype=torch.uint8)
    t[0, :, 5:] = 1
    band = edge_band(t, 1)[0]
    assert band[:, 4:6].all() and not band[:, :4].any() and not band[:, 6:].any()


def test_each_patch_directory_is_one_set_however_often_it_is_listed(patch_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(patch_dir, other)
    one = PatchSet.open([patch_dir])
    shards = len(one.meta)
    groups = PatchSet.open([patch_dir, other, patch_dir, other]).set_indices("val")
    assert list(groups) == [str(patch_dir), str(other)]
    assert np.array_equal(groups[str(patch_dir)], one.indices("val"))  # the first listing's shards
    assert np.array_equal(groups[str(other)][:, 1], one.indices("val")[:, 1])
    assert np.array_equal(groups[str(other)][:, 0], one.indices("val")[:, 0] + shards)


def _coarse_iou(ps: PatchSet, idx: np.ndarray) -> float:
    _, coarse, target = ps.gather(idx)
    return float((coarse & target).sum() / (coarse | target).sum())


def test_eval_per_set_logs_how_well_each_set_is_fit_on_training_and_held_out_patches(patch_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(patch_dir, other)
    ps = PatchSet.open([patch_dir])
    n_val, n_train = len(ps.indices("val")), len(ps.indices("train"))
    cfg = _cfg(patch_dir, patches=[str(patch_dir), str(other), str(other)], iters=4, eval_every=2, eval_per_set=n_val)
    Trainer(cfg, tmp_path / "run").run(progress=False)
    with open(tmp_path / "run" / "heldout_sets.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["split"], r["set"]) for r in rows] == [
        (step, split, d) for step in ("2", "4") for split in ("train", "held-out") for d in (str(patch_dir), str(other))
    ]
    for r in rows:
        if r["split"] == "held-out":  # every held-out patch of the set, each once
            assert int(r["patches"]) == n_val
            assert float(r["coarse_iou"]) == pytest.approx(_coarse_iou(ps, ps.indices("val")), abs=1e-5)
        else:
            assert int(r["patches"]) == min(n_val, n_train)
        assert 0 < float(r["iou"]) <= 1 and 0 < float(r["band_iou"]) <= 1
    # the same patches at every evaluation: the coarse masks score the same
    assert [r["coarse_band_iou"] for r in rows[:4]] == [r["coarse_band_iou"] for r in rows[4:]]


def _cfg(patch_dir, **kw):
    base = dict(
        patches=[str(patch_dir)],
        input_size=64,
        batch_size=8,
        iters=30,
        optimizer="adamw",
        lr=1e-3,
        warmup_iters=0,
        eval_every=15,
        eval_patches=64,
        ckpt_every=10,
        seed=0,
        threads=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_reduce_the_loss_on_a_tiny_set(patch_dir, tmp_path):
    cfg = _cfg(patch_dir, augment=False)
    trainer = Trainer(cfg, tmp_path / "run")
    fixed = trainer.batch(0)
    trainer.batch = lambda step: fixed  # overfit one batch
    losses = [trainer.train_step() for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_trains_in_bf16_only_where_the_cpu_runs_it_natively(native_bf16, monkeypatch):
    monkeypatch.setattr(train_loop, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert training_precision(cpu, amp=True) == ("bf16" if native_bf16 else "fp32")
    assert training_precision(cpu, amp=False) == "fp32"
    assert training_precision(torch.device("cuda"), amp=True) == "fp16"
    assert training_precision(torch.device("cuda"), amp=False) == "fp32"


def test_a_run_without_native_bf16_trains_and_exports_in_fp32(patch_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_loop, "cpu_has_native_bf16", lambda: False)
    trainer = Trainer(_cfg(patch_dir, iters=2, eval_every=2), tmp_path / "run")
    assert "training in fp32" in capsys.readouterr().err
    with trainer._autocast():
        assert not torch.is_autocast_enabled("cpu")
    trainer.run(progress=False)
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["meta"]["train_precision"] == "fp32"


def test_resume_continues_from_the_same_step_with_the_same_weights(patch_dir, tmp_path):
    straight = Trainer(_cfg(patch_dir, iters=20), tmp_path / "a")
    straight.run(progress=False)
    first = Trainer(_cfg(patch_dir, iters=20), tmp_path / "b")
    first.run(progress=False, until_step=10)  # as if the session had ended at step 10
    resumed = Trainer(_cfg(patch_dir, iters=20), tmp_path / "b", resume=True)
    assert resumed.step == 10
    resumed.run(progress=False)
    assert resumed.step == 20
    # Same batches in the same order from the same state -> the same weights (bf16 autocast
    # and CPU kernels are deterministic here).
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-5), k


def test_train_cli_writes_log_plot_and_a_checkpoint_bpr_refine_accepts(patch_dir, tmp_path, data_dir):
    run = tmp_path / "cli"
    assert (
        train_main(
            [
                "--patches",
                str(patch_dir),
                "--out",
                str(run),
                "--iters",
                "12",
                "--batch-size",
                "4",
                "--eval-every",
                "6",
                "--input-size",
                "64",
                "--quiet",
            ]
        )
        == 0
    )
    assert (run / "curves.png").stat().st_size > 1000
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) >= 3
    assert (
        train_main(["--patches", str(patch_dir), "--out", str(run), "--iters", "12", "--quiet"]) == 2
    )  # no silent overwrite
    res = json.loads((data_dir / "davis-dev-real" / "osvos.json").read_text())[:2]
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert (
        refine_main(
            [
                str(tmp_path / "r.json"),
                "--images",
                str(data_dir / "davis-dev-real" / "images"),
                "--image-info",
                str(data_dir / "davis-dev-real" / "gt.json"),
                "--checkpoint",
                str(run / "model.pt"),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "r.refined.json").read_text())) == 2


def test_fine_tuning_adds_a_detail_head_to_a_checkpoint_without_one(patch_dir, tmp_path, random_checkpoint):
    trainer = Trainer(
        _cfg(patch_dir, iters=3, detail_head=True, init_checkpoint=str(random_checkpoint)), tmp_path / "run"
    )
    base = load_refiner(random_checkpoint)
    for k, v in base.state_dict().items():  # every original weight carried over
        assert torch.allclose(trainer.net.state_dict()[k].float(), v.float()), k
    trainer.run(progress=False)
    assert load_refiner(trainer.export()).config.detail_head


def test_fine_tuning_from_the_packaged_default_keeps_its_refiner_and_drops_its_gate(patch_dir, tmp_path):
    """The shipped model carries a quality gate trained on its own refiner; a fine-tuned refiner
    needs a new one (bpr-train-gate), so training starts from every refiner weight only."""
    shipped = default_checkpoint()
    base = load_refiner(shipped)
    trainer = Trainer(_cfg(patch_dir, iters=2, arch=base.config.arch, init_checkpoint=str(shipped)), tmp_path / "run")
    assert base.gate is not None and trainer.net.gate is None
    own = trainer.net.state_dict()
    carried = [k for k in base.state_dict() if not k.startswith("gate.")]
    assert carried and all(torch.equal(own[k].float(), base.state_dict()[k].float()) for k in carried)
    trainer.run(progress=False)
    assert load_refiner(trainer.export()).gate is None


def test_fine_tuning_from_a_pair_keeps_the_first_refiner_and_drops_its_companion(
    patch_dir, tmp_path, random_checkpoint
):
    """A companion is another network: left out, to be paired again with bpr-package --companion."""
    assert package_main([str(random_checkpoint), str(tmp_path / "pair.pt"), "--companion", str(random_checkpoint)]) == 0
    pair = load_refiner(tmp_path / "pair.pt")
    trainer = Trainer(
        _cfg(patch_dir, iters=2, arch=pair.config.arch, init_checkpoint=str(tmp_path / "pair.pt")), tmp_path / "run"
    )
    assert pair.companion is not None and trainer.net.companion is None
    own = trainer.net.state_dict()
    carried = [k for k in pair.state_dict() if not k.startswith(("gate.", "companion."))]
    assert carried and all(torch.equal(own[k].float(), pair.state_dict()[k].float()) for k in carried)


def _gate_args(checkpoint, patches, out, *flags):
    """A bpr-train-gate run of 4 steps of batch 8, scored on 32 held-out patches."""
    short = ["--steps", "4", "--batch-size", "8", "--eval-patches", "32"]
    return [str(checkpoint), "--patches", str(patches), "--out", str(out), *short, *flags]


def test_a_new_gate_does_not_inherit_the_threshold_folded_into_the_old_one(patch_dir, tmp_path, random_checkpoint):
    """bpr-package records a threshold it folds into a gate's bias; retraining the gate replaces
    that bias, so the source's recorded threshold must not travel on (a later --gate-threshold
    would otherwise add to a threshold no longer there)."""
    source = tmp_path / "thresholded.pt"
    save_refiner(load_refiner(random_checkpoint), source, meta={"gate_threshold": 1.5, "note": "kept"}, half=False)
    out = tmp_path / "regated.pt"
    assert train_gate_main(_gate_args(source, patch_dir, out)) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert "gate_threshold" not in meta and meta["note"] == "kept" and "gate_training" in meta


def test_a_patch_weighs_its_stake_to_the_stake_power_and_harm_counts_more():
    from bpr.train.gate import patch_weights

    stake = torch.tensor([-4.0, 0.0, 9.0, 100.0])  # pixels fixed minus broken
    assert patch_weights(stake, 2.0, 1.0).tolist() == [8.0, 0.0, 9.0, 100.0]
    assert patch_weights(stake, 2.0, 0.5).tolist() == [4.0, 0.0, 3.0, 10.0]  # small stakes keep a say


@pytest.mark.parametrize("power", ["0", "1.5"])
def test_a_stake_power_outside_zero_to_one_is_a_one_line_error(patch_dir, tmp_path, random_checkpoint, capsys, power):
    out = tmp_path / "gated.pt"
    assert train_gate_main(_gate_args(random_checkpoint, patch_dir, out, "--stake-power", power)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bpr-train-gate: error: --stake-power must be in (0, 1], got {float(power)}"
    assert not out.exists()


def test_train_gate_adds_a_trained_gate_and_keeps_every_refiner_weight(patch_dir, tmp_path, random_checkpoint):
    out = tmp_path / "gate" / "gated.pt"
    assert train_gate_main(_gate_args(random_checkpoint, patch_dir, out, "--eval-every", "2", "--flip-tta")) == 0
    base, gated = load_refiner(random_checkpoint), load_refiner(out)
    assert not base.config.gate and gated.config.gate and gated.gate is not None
    assert gated.recommended == base.recommended
    own = gated.state_dict()
    added = set(own) - set(base.state_dict())
    assert added and added == {k for k in own if k.startswith("gate.")}
    for k, v in base.state_dict().items():  # the refiner frozen: every weight as it came (fp32 written)
        assert torch.equal(own[k], v), k
    with open(out.with_suffix(".log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "step",
        "loss",
        "lr",
        "patches_per_s",
        "val_fixed_alone",
        "val_fixed_gated",
        "val_fixed_oracle",
        "val_broken_kept",
        "val_kept_share",
        "seconds",
    ]
    assert [r["step"] for r in rows] == ["2", "4"]  # every --eval-every steps and at the end
    for r in rows:  # no gate beats the oracle; broken_kept counts pixels lost (<= 0); a share is a share
        assert float(r["val_fixed_oracle"]) >= max(float(r["val_fixed_gated"]), float(r["val_fixed_alone"]))
        assert float(r["val_broken_kept"]) <= 0 and 0 <= float(r["val_kept_share"]) <= 1
    meta = torch.load(out, weights_only=True)["meta"]["gate_training"]
    assert meta == {
        "from": str(random_checkpoint),
        "patches": [str(patch_dir)],
        "steps": 4,
        "batch_size": 8,
        "gate_width": 16,
        "flip_tta": True,
        "change_margin": 0.0,
        "harm_weight": 1.0,
        "stake_power": 1.0,
        "held_out": False,
        "train_on_scored": False,
        "training_patches": meta["training_patches"],
    }
    assert meta["training_patches"] == len(PatchSet.open([patch_dir]).indices("train"))


def test_train_gate_on_held_out_images_needs_held_out_patches(data_dir, tmp_path, random_checkpoint, capsys):
    no_val = tmp_path / "no_val"
    gt, images = data_dir / "davis-train" / "gt.json", data_dir / "davis-train" / "images"
    build = ["--gt", str(gt), "--images", str(images), "--out", str(no_val), "--max-images", "2", "--draws", "1"]
    assert build_main([*build, "--workers", "1", "--quiet", "--val-fraction", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "gated.pt"
    assert train_gate_main(_gate_args(random_checkpoint, no_val, out, "--held-out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bpr-train-gate: error: --held-out: ") and "no held-out patches" in err
    assert "\n" not in err
    assert not out.exists() and not out.with_suffix(".log.csv").exists()


def test_train_on_scored_needs_held_out_and_is_a_one_line_error(patch_dir, tmp_path, random_checkpoint, capsys):
    out = tmp_path / "gated.pt"
    assert train_gate_main(_gate_args(random_checkpoint, patch_dir, out, "--train-on-scored")) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "bpr-train-gate: error: --train-on-scored needs --held-out (it adds the held-out images that score the gate)"
    )
    assert not out.exists()


def test_train_on_scored_trains_on_every_held_out_patch_and_a_wider_gate_travels(
    patch_dir, tmp_path, random_checkpoint
):
    from bpr.train.gate import split_by_image_parity

    data = PatchSet.open([patch_dir])
    even, odd = split_by_image_parity(data, data.indices("val"))
    assert len(even) and len(odd)  # the fixture holds held-out images of both parities
    runs = {}
    for name, flags in {"split": [], "both": ["--train-on-scored"]}.items():
        out = tmp_path / f"{name}.pt"
        args = _gate_args(random_checkpoint, patch_dir, out, "--held-out", "--gate-width", "8", *flags)
        assert train_gate_main(args) == 0
        runs[name] = torch.load(out, weights_only=True)["meta"]["gate_training"]["training_patches"]
    assert runs == {"split": len(even), "both": len(even) + len(odd)}
    gated = load_refiner(tmp_path / "both.pt")
    assert gated.config.gate_width == 8 and gated.gate.features[0].out_channels == 8


def test_refined_patches_mirror_patch_and_flip_tta_output_together(patch_dir, random_checkpoint):
    """A training batch is mirrored after refining: with flip TTA, exactly the refiner's output
    on the mirrored patch, so the cached output stands for both."""
    from bpr.train.gate import refine_patches, refined_probability

    data = PatchSet.open([patch_dir])
    refiner = Refiner(random_checkpoint, backend="torch")
    rows = data.indices("train")[:12]
    cached = refine_patches(refiner, data, rows, flip_tta=True)
    mirror = np.arange(12) % 3 == 0
    images, coarse, target, prob = cached.batch(np.arange(12), mirror)
    plain_images, plain_coarse, plain_target, plain_prob = cached.batch(np.arange(12))
    assert torch.equal(images[mirror], plain_images[mirror].flip(-1)) and torch.equal(
        images[~mirror], plain_images[~mirror]
    )
    assert torch.equal(target[mirror], plain_target[mirror].flip(-1)) and torch.equal(
        coarse[~mirror], plain_coarse[~mirror]
    )
    with torch.inference_mode():
        fresh = refined_probability(refiner, images, coarse, flip_tta=True)
    assert (fresh - prob).abs().max() < 2e-3  # stored as float16
    assert (plain_prob - prob).abs().max() > 0.1  # a random refiner's output is not mirror-symmetric


def _cityscapes_scene(data_dir, index=3):
    gt = load_json(data_dir / "cityscapes-train" / "gt.json")
    info = gt["images"][index]
    anns = [a for a in gt["annotations"] if a["image_id"] == info["id"]]
    image = read_image(data_dir / "cityscapes-train" / "images" / info["file_name"])
    masks = [decode_segmentation(a["segmentation"], info["height"], info["width"]) for a in anns]
    return image, masks


def test_nearly_right_draws_stay_within_a_pixel_or_two_of_the_ground_truth(data_dir):
    image, masks = _cityscapes_scene(data_dir)
    rng = np.random.default_rng(0)
    kernel = np.ones((5, 5), np.uint8)
    for g in masks:
        c, name = synthesize(image, g, rng, {"near": 1.0})
        assert name == "near"  # no second error on top of a nearly right draw
        grown = cv2.dilate(g.astype(np.uint8), kernel).astype(bool)
        shrunk = cv2.erode(g.astype(np.uint8), kernel).astype(bool)
        assert not (c & ~grown).any() and not (shrunk & ~c).any()  # every change within 2 px of the boundary


def test_low_resolution_nearly_right_draws_keep_smooth_boundaries_and_thin_parts_in_part():
    """A 2 px cord below a body: through 1/1.5-1/3 resolution the body's edge stays within a
    pixel, and the cord survives whole in some draws and thinned in others, never erased and
    never grown past a pixel: the target then teaches a refiner to keep a thin part it is given."""
    g = np.zeros((480, 480), bool)
    g[100:300, 100:300] = True
    g[300:460, 190:192] = True
    image = np.zeros((480, 480, 3), np.uint8)
    cord_kept = []
    for seed in range(8):
        c, name = synthesize(image, g, np.random.default_rng(seed), {"near_lowres": 1.0})
        assert name == "near_lowres"  # no second error on a nearly right draw
        grown = cv2.dilate(g.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        shrunk = cv2.erode(g.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (c & ~grown).any() and not (shrunk & ~c)[:300].any()
        cord_kept.append(c[310:450, 190:192].mean())
    assert min(cord_kept) > 0.4 and max(cord_kept) == 1.0 and min(cord_kept) < 1.0


def test_neighbour_draws_run_into_touching_instances(data_dir):
    image, masks = _cityscapes_scene(data_dir)
    scene = np.logical_or.reduce(masks)
    rng = np.random.default_rng(0)
    into_neighbours, elsewhere = 0, 0
    for g in masks:
        others = scene & ~g
        if not (cv2.dilate(g.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & others).any():
            continue  # no touching neighbour: the recipe falls back to a grid blob
        for _ in range(3):
            c, _ = synthesize(image, g, rng, {"neighbour": 1.0}, second_error=0.0, others=scene)
            added = c & ~g
            into_neighbours += int((added & others).sum())
            elsewhere += int((added & ~others).sum())
    assert into_neighbours > elsewhere  # what the draws add is mostly the neighbours' pixels


def test_scene_patches_keep_small_objects_and_show_their_neighbours(data_dir, tmp_path):
    out = tmp_path / "cs"
    code = build_main(
        [
            "--gt",
            str(data_dir / "cityscapes-train" / "gt.json"),
            "--images",
            str(data_dir / "cityscapes-train" / "images"),
            "--out",
            str(out),
            "--max-images",
            "2",
            "--draws",
            "1",
            "--mix",
            "scene",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    ps = PatchSet.open([out])
    gt = load_json(data_dir / "cityscapes-train" / "gt.json")
    first = {i["id"] for i in gt["images"][:2]}
    anns = [a for a in gt["annotations"] if a["image_id"] in first]
    small = {k for k, a in enumerate(anns) if a["area"] < 32**2}
    meta = np.concatenate(ps.meta)
    images_of = {i["id"]: k for k, i in enumerate(gt["images"][:2])}
    seen = {(int(m["image"]), int(m["instance"])) for m in meta}
    per_image = {}
    for k, a in enumerate(anns):
        per_image.setdefault(a["image_id"], []).append(k)
    small_seen = sum((images_of[anns[k]["image_id"]], per_image[anns[k]["image_id"]].index(k)) in seen for k in small)
    assert len(small) > 5 and small_seen >= 0.8 * len(small)  # small objects get patches (a draw of every one)
    target = np.concatenate([t for t in ps.target])
    # a whole small object inside one patch: the target holds all of it with background around
    whole = [
        (t.sum() > 0) and not t[0].any() and not t[-1].any() and not t[:, 0].any() and not t[:, -1].any()
        for t in target
    ]
    assert sum(whole) > 5


def test_a_run_continued_from_its_weights_keeps_its_schedule(patch_dir, tmp_path, random_checkpoint):
    """A fresh machine without last.pt continues from the committed model.pt at its step."""
    trainer = Trainer(_cfg(patch_dir, iters=30, init_checkpoint=str(random_checkpoint), init_step=20), tmp_path / "run")
    assert trainer.step == 20
    trainer.run(progress=False)
    assert trainer.step == 30
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [30]


def test_keep_weight_charges_breaking_right_pixels_more_than_missing_a_fix():
    from bpr.train.loop import refinement_loss

    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, :, 8:] = 1  # a vertical edge
    coarse = target.clone()
    coarse[0, 3, 7] = 1  # one wrong pixel beside the edge, in the band
    confident = (target.float() * 2 - 1) * 8  # right everywhere, strongly

    def logits(class1):
        return torch.stack([-class1, class1], dim=1)

    breaks_right = confident.clone()
    breaks_right[0, 10, 8] = -8  # moves a pixel the coarse mask had right
    misses_fix = confident.clone()
    misses_fix[0, 3, 7] = 8  # keeps the coarse error
    plain = [refinement_loss(logits(x), target, 2.0, 2) for x in (breaks_right, misses_fix)]
    kept = [refinement_loss(logits(x), target, 2.0, 2, coarse, keep_weight=4.0) for x in (breaks_right, misses_fix)]
    assert torch.isclose(plain[0], plain[1])  # plain CE: one wrong band pixel each, the same loss
    assert kept[0] > 1.5 * kept[1]  # with keep_weight, breaking a right pixel costs more than missing a fix
    assert torch.equal(refinement_loss(logits(misses_fix), target, 2.0, 2, coarse, 0.0), plain[1])  # 0 = off


def test_keep_far_weight_charges_a_hole_punched_far_from_the_edge_and_only_that():
    from bpr.train.loop import refinement_loss

    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, :, 8:] = 1  # a vertical edge: the band (width 2) is columns 6-9
    coarse = target.clone()
    coarse[0, 3, 1] = 1  # a coarse error far from the edge, outside the band
    confident = (target.float() * 2 - 1) * 8

    def logits(class1):
        return torch.stack([-class1, class1], dim=1)

    hole = confident.clone()
    hole[0, 10, 14] = -8  # a right foreground pixel far inside, removed
    misses_fix = confident.clone()
    misses_fix[0, 3, 1] = 8  # keeps the far coarse error
    band_break = confident.clone()
    band_break[0, 10, 8] = -8  # breaks a right pixel in the band
    far = [refinement_loss(logits(x), target, 2.0, 2, coarse, 0.0, 4.0) for x in (hole, misses_fix, band_break)]
    plain = [refinement_loss(logits(x), target, 2.0, 2, coarse) for x in (hole, misses_fix, band_break)]
    assert torch.isclose(plain[0], plain[1])  # without it: one wrong far pixel each, the same loss
    assert far[0] > 3 * far[1]  # the hole now costs 5x a missed fix (weights 5 and 1)
    assert torch.isclose(far[2] / far[0], torch.tensor(3 / 5))  # band pixels keep their own weight (1 + 2)
    band_only = [refinement_loss(logits(x), target, 2.0, 2, coarse, 4.0, 0.0) for x in (hole, misses_fix)]
    assert torch.isclose(band_only[0], band_only[1])  # keep_weight alone does not reach far pixels


def test_a_run_state_is_a_checkpoint_too_and_bpr_package_takes_it(patch_dir, tmp_path, monkeypatch):
    """last.pt loads as the network it holds (its weights exactly), with or without the refiner
    config that states carry since 2026-12-04; bpr-package turns it into a checkpoint."""
    from bpr.cli.package import main as package_main

    trainer = Trainer(_cfg(patch_dir, iters=4, arch="effl0", input_size=64), tmp_path / "run")
    trainer.run(progress=False)
    last = tmp_path / "run" / "last.pt"
    net = load_refiner(last)
    assert net.config == trainer.net.config and net.recommended == {}
    for (key, want), got in zip(trainer.net.state_dict().items(), net.state_dict().values()):
        assert torch.equal(want, got), key

    state = torch.load(last, weights_only=True)
    del state["refiner_config"]  # a state from before: the patch size comes from the run's manifest
    torch.save(state, tmp_path / "old.pt")
    assert load_refiner(tmp_path / "old.pt").config == trainer.net.config
    del state["config"]["detail_head"]  # older still: no detail head then
    torch.save(state, tmp_path / "older.pt")
    assert load_refiner(tmp_path / "older.pt").config == trainer.net.config
    state["config"]["patches"] = [str(tmp_path / "gone")]
    torch.save(state, tmp_path / "moved.pt")
    with pytest.raises(ModelNotAvailableError, match="patch size"):
        load_refiner(tmp_path / "moved.pt")

    averaging = Trainer(_cfg(patch_dir, iters=4, arch="effl0", input_size=64, ema_decay=0.9), tmp_path / "ema")
    averaging.run(progress=False)  # a run that keeps a moving average: its last.pt is the average
    for (key, want), got in zip(
        averaging.ema.state_dict().items(), load_refiner(tmp_path / "ema" / "last.pt").state_dict().values()
    ):
        assert torch.equal(want, got), key

    out = tmp_path / "packaged.pt"
    assert package_main([str(last), str(out), "--flip-tta", "--change-margin", "0.2"]) == 0
    packaged = torch.load(out, weights_only=True)
    assert packaged["meta"]["step"] == 4 and packaged["meta"]["train_seconds"] > 0
    assert packaged["recommended"] == {"flip_tta": True, "change_margin": 0.2}
    assert load_refiner(out).config == trainer.net.config


@pytest.mark.usefixtures("signals_not_ignored")
def test_sigterm_stops_a_run_after_its_step_with_everything_saved(patch_dir, tmp_path):
    """kill / a scheduler's SIGTERM sent to a real bpr-train process: the run ends after the step
    in progress, exits 0 with last.pt and model.pt at that step, and --resume continues from it.
    (A separate process: signalling the test runner itself would reach every library thread in
    it.)"""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    flags = ["--patches", str(patch_dir), "--out", str(out), "--input-size", "64", "--batch-size", "4"]
    flags += ["--eval-every", "100000", "--ckpt-every", "2", "--threads", "1", "--quiet"]
    command = [sys.executable, "-m", "bpr.cli.train", *flags]
    proc = subprocess.Popen([*command, "--iters", "100000"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # last.pt exists: the loop runs, its handlers are installed
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # saved, but not the run asked for
    stopped = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 2 <= stopped < 100000
    assert f"stopping at step {stopped} (SIGTERM)" in err
    assert torch.load(out / "model.pt", weights_only=True)["meta"]["step"] == stopped
    resume = [*command, "--iters", "100000", "--resume", "--until-step"]
    done = subprocess.run([*resume, str(stopped + 2)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == stopped + 2 and state["config"]["iters"] == 100000  # the schedule is kept
    behind = subprocess.run([*resume, str(stopped)], capture_output=True, text=True)
    assert behind.returncode == 2 and "is not past the run's step" in behind.stderr


@pytest.mark.usefixtures("signals_not_ignored")
def test_stop_requests_ask_once_interrupt_twice_and_leave_ignored_signals_alone(patch_dir, tmp_path):
    """The handlers are the run's only while it runs; a second request interrupts at once; a
    signal the launcher ignores (nohup's SIGHUP, a background job's SIGINT) stays ignored.
    (The handler is called directly: no signal is sent to the test runner.)"""
    import signal

    from bpr.train.loop import StopRequest

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.getsignal(s) for s in wanted}
    trainer = Trainer(_cfg(patch_dir, iters=2), tmp_path / "run")
    trainer.run(progress=False)
    assert {s: signal.getsignal(s) for s in wanted} == before and trainer.stopped_by is None

    stop = StopRequest()
    stop.install()
    assert all(signal.getsignal(s) == stop._handle for s in wanted)
    stop._handle(signal.SIGTERM, None)
    assert stop.requested == "SIGTERM" and stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    assert {s: signal.getsignal(s) for s in wanted} == before  # already given back

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == stop._handle
        stop.uninstall()
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])


def test_the_moving_average_is_what_a_run_evaluates_exports_and_resumes(patch_dir, tmp_path):
    """With --ema-decay d every step moves the average toward the new weights by 1 - min(d,
    (1 + step) / (10 + step)) (a fresh run's average follows its weights closely at first);
    evaluation and model.pt use the average, and a resumed run ends with the average an
    uninterrupted one has."""
    cfg = _cfg(patch_dir, iters=12, ema_decay=0.9)
    trainer = Trainer(cfg, tmp_path / "one")
    for step, d in ((0, 0.1), (200, 0.9)):  # (1 + 0) / (10 + 0) = 0.1; at step 200 the decay
        trainer.step = step
        before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
        trainer.train_step()
        after = trainer.net.state_dict()
        for key, averaged in trainer.ema.state_dict().items():
            if averaged.is_floating_point():
                assert torch.allclose(averaged, d * before[key] + (1 - d) * after[key], atol=1e-6), (step, key)

    scores = trainer.evaluate()
    with torch.no_grad():
        trainer.ema.decode_head.conv_seg.bias.copy_(torch.tensor([0.0, 50.0]))  # the average calls all foreground
    assert trainer.evaluate()["val_iou"] != scores["val_iou"]  # evaluation reads the average

    straight = Trainer(cfg, tmp_path / "a")
    straight.run(progress=False)
    averaged, raw = straight.ema.state_dict(), straight.net.state_dict()
    key = "decode_head.conv_seg.weight"
    assert not torch.allclose(averaged[key], raw[key], atol=1e-4)  # the average lags the weights
    exported = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert torch.equal(exported["state_dict"][key], averaged[key].half()) and exported["meta"]["ema_decay"] == 0.9

    first = Trainer(cfg, tmp_path / "b")
    first.run(progress=False, until_step=6)
    resumed = Trainer(cfg, tmp_path / "b", resume=True)
    resumed.run(progress=False)
    for (k, a), b in zip(averaged.items(), resumed.ema.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-5), k
    with pytest.raises(BprInputError, match="ema_decay"):
        Trainer(_cfg(patch_dir, ema_decay=1.0), tmp_path / "c")


def test_a_grabcut_draw_is_the_same_whatever_opencvs_global_rng_did_before(data_dir):
    """Pool workers reach a draw after different earlier calls; a draw must not depend on them."""
    import cv2

    from bpr.io.coco import decode_segmentation, load_json
    from bpr.io.images import read_image
    from bpr.train.synth import grabcut

    root = data_dir / "davis-train"
    gt = load_json(root / "gt.json")
    info = gt["images"][0]
    ann = next(a for a in gt["annotations"] if a["image_id"] == info["id"])
    image = read_image(root / "images" / info["file_name"])
    mask = decode_segmentation(ann["segmentation"], info["height"], info["width"])
    draws = []
    for state in (1, 987654):
        cv2.setRNGSeed(state)
        draws.append(grabcut(image, mask, np.random.default_rng(3)))
    assert draws[0].any() and np.array_equal(draws[0], draws[1])
