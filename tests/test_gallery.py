"""Fit-store gallery: ids files, dataset locations, page data from a real store and renderer, the CLI
(gallery, filter --exclude, export --with-paths), and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.cli import main
from spin_ray.config import CameraConfig
from spin_ray.data.spin_format import write_spin_npz
from spin_ray.errors import FitStoreError
from spin_ray_sim.fitting_problems import synthetic_problems
from spin_ray.render.renderer import MeshRenderer, overlay
from spin_ray.store.fit_store import FitStore
from spin_ray.curate.gallery import Selection, build_gallery
from spin_ray.curate.gallery_page import render_page, write_page
from spin_ray.curate.sample_ids import format_ids, parse_ids, read_ids
from spin_ray.curate.sample_paths import DatasetLocation, parse_data_flag

N_SAMPLES = 6
IMAGE_W, IMAGE_H = 320, 256
CROP_OFFSET = np.array([48.0, 16.0])  # image pixel = crop pixel + offset (center (160, 128), scale 1.12)
ERRORS = np.array([12.0, 240.0, 55.0, 3.5, 130.0, 80.0])


# -- a tiny SPIN-format dataset rendered from synthetic people ---------------------------------------


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def toy(tmp_path_factory, body):
    """A 6-sample dataset: images of posed people on a gradient, keypoints in image pixels, the truth."""
    camera = CameraConfig()
    folder = tmp_path_factory.mktemp("toy")
    problems = synthetic_problems(body, N_SAMPLES, torch.Generator().manual_seed(3), camera)
    gradient = np.linspace(40, 200, IMAGE_W, dtype=np.float32)
    background = np.stack([np.tile(gradient, (IMAGE_H, 1)), np.full((IMAGE_H, IMAGE_W), 90.0), np.tile(gradient[::-1], (IMAGE_H, 1))], -1)
    masks = []
    with MeshRenderer(IMAGE_W, IMAGE_H, body.faces) as renderer, torch.no_grad():
        vertices = body(axis_angle_pose_to_rotmats(problems.pose), problems.betas).vertices.numpy()
        centre = (112.0 + CROP_OFFSET[0], 112.0 + CROP_OFFSET[1])
        for i in range(N_SAMPLES):
            rgba = renderer.shaded(vertices[i], problems.camera_t[i].numpy(), camera.focal_length, centre, color=(0.9, 0.6, 0.5))
            image = overlay(background.astype(np.uint8), rgba)
            cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            masks.append(rgba[..., 3] > 0)
    kp = problems.keypoints_2d.numpy().copy()
    kp[..., :2] += CROP_OFFSET
    npz = write_spin_npz(
        folder / "toy.npz", imgname=[f"img_{i}.png" for i in range(N_SAMPLES)],
        center=np.tile([160.0, 128.0], (N_SAMPLES, 1)), scale=np.full(N_SAMPLES, 1.12),
        part=kp[:, 25:], openpose=kp[:, :25],
    )
    return {"npz": npz, "root": folder, "problems": problems, "masks": masks,
            "location": DatasetLocation("toy", npz, folder)}


@pytest.fixture
def store(redis_server, body, toy):
    """A namespace of the embedded body model holding the truth of every toy sample with ERRORS."""
    s = FitStore.open(redis_server.url, f"gal-{uuid.uuid4().hex[:10]}", body_model_hash=body.identity)
    p = toy["problems"]
    s.keep_best("toy", np.arange(N_SAMPLES), p.pose.numpy(), p.betas.numpy(), ERRORS, np.arange(N_SAMPLES) * 100, "loop")
    yield s
    s.drop()
    s.close()


def _url(store):
    return store.address.url.get_secret_value()


# -- ids files and locations ----------------------------------------------------------------------


def test_ids_file_round_trip_accepts_filter_output_and_rejects_bad_rows(tmp_path):
    ids = [("coco", 17), ("lsp", 0), ("coco", 3)]
    assert parse_ids(format_ids(ids)) == ids
    # `spin-ray store filter` output (an error column, a repeat, a BOM, blank lines) is an ids file too.
    path = tmp_path / "keep.csv"
    path.write_text("\ufeffdataset,index,error\ncoco,17,1.5\n\ncoco,17,1.5\nlsp,2,0.25\n", encoding="utf-8")
    assert read_ids(path) == [("coco", 17), ("lsp", 2)]
    assert parse_ids("") == []
    with pytest.raises(FitStoreError, match="expected the header 'dataset,index'"):
        parse_ids("coco,17\n")
    with pytest.raises(FitStoreError, match="row 3 has index '-4'"):
        parse_ids("dataset,index\ncoco,1\ncoco,-4\n")
    with pytest.raises(FitStoreError, match="row 2: dataset name 'co:co'"):
        parse_ids("dataset,index\nco:co,1\n")
    with pytest.raises(FitStoreError, match="does not exist"):
        read_ids(tmp_path / "nope.csv")


def test_data_flag_names_npz_and_image_root():
    assert parse_data_flag("coco=d/coco.npz:imgs/coco") == DatasetLocation("coco", Path("d/coco.npz"), Path("imgs/coco"))
    assert parse_data_flag("lsp=d/lsp.npz") == DatasetLocation("lsp", Path("d/lsp.npz"), Path("d"))
    with pytest.raises(FitStoreError, match="expected NAME=NPZ"):
        parse_data_flag("d/coco.npz")


# -- page data ------------------------------------------------------------------------------------


def test_worst_cards_show_crop_aligned_fit_and_keypoints(store, toy, body, tmp_path):
    data = build_gallery(store, Selection("worst", k=4), {"toy": toy["location"]}, tmp_path, body)
    assert data.notices == []
    assert [c.index for c in data.cards] == [1, 4, 5, 2]  # highest errors first
    assert [c.error for c in data.cards] == [240.0, 130.0, 80.0, 55.0]
    assert [c.step for c in data.cards] == [100, 400, 500, 200]
    for card in data.cards:
        assert card.problems == [] and card.source == "loop" and card.imgname == f"img_{card.index}.png"
        crop = cv2.imread(str(tmp_path / card.crop))
        fit = cv2.imread(str(tmp_path / card.overlay))
        assert crop.shape == fit.shape == (224, 224, 3)
        # The stored fit is the truth: its projected keypoints land on the observed ones in the crop.
        observed = np.array(card.keypoints)[:, :2]
        np.testing.assert_allclose(observed, toy["problems"].keypoints_2d[card.index, :, :2].numpy(), atol=0.06)
        assert np.abs(np.array(card.fit_keypoints) - observed).max() < 1.0
        # The crop shows the person where the truth's silhouette says (shifted by the crop offset).
        person = toy["masks"][card.index][16:16 + 224, 48:48 + 224]
        gray = crop.astype(np.float32)
        assert np.abs(gray[person].mean(0) - gray[~person].mean(0)).max() > 20
        # The fit is painted where the person is, and only there.
        changed = np.abs(fit.astype(np.float32) - gray).sum(-1) > 30
        assert (changed & person).sum() > 0.8 * person.sum()
        near = cv2.dilate(person.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # JPEG rings at edges
        assert (changed & ~near).sum() < 0.01 * person.sum()


def test_best_and_ids_selection(store, toy, body, tmp_path):
    build_gallery(store, Selection("worst", k=3), {"toy": toy["location"]}, tmp_path / "b", body)
    (tmp_path / "b" / "images" / "notes.txt").write_text("mine")
    best = build_gallery(store, Selection("best", k=2), {"toy": toy["location"]}, tmp_path / "b", body)
    assert [c.index for c in best.cards] == [3, 0]
    # Written into the same folder again: only this gallery's pictures remain, other files are left alone.
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == [
        "notes.txt", "toy_0_crop.jpg", "toy_0_fit.jpg", "toy_3_crop.jpg", "toy_3_fit.jpg"]
    ids = build_gallery(store, Selection("ids", ids=(("toy", 5), ("toy", 0))), {"toy": toy["location"]}, tmp_path / "i", body)
    assert [(c.dataset, c.index) for c in ids.cards] == [("toy", 5), ("toy", 0)]


def test_bad_input_gives_a_page_that_says_so(redis_server, store, toy, body, tmp_path):
    locations = {"toy": toy["location"]}
    # An empty namespace.
    with FitStore.open(redis_server.url, f"empty-{uuid.uuid4().hex[:8]}") as empty:
        data = build_gallery(empty, Selection("worst"), locations, tmp_path / "e", body)
    assert data.cards == [] and "holds no fits yet" in data.notices[0]
    assert "holds no fits yet" in write_page(data, tmp_path / "e").read_text()
    # Ids that do not exist: an unknown dataset, an index without a fit.
    data = build_gallery(store, Selection("ids", ids=(("toy", 2), ("toy", 99), ("mpii", 1))), locations, tmp_path / "x", body)
    assert [c.index for c in data.cards] == [2]
    assert any("mpii" in n and "no fits" in n for n in data.notices)
    assert any("no stored fit in toy: toy:99" in n for n in data.notices)
    # A missing image: the card says so, and the fit is still drawn (on grey) against the keypoints.
    missing = tmp_path / "root"
    shutil.copytree(toy["root"], missing)
    (missing / "img_1.png").unlink()
    data = build_gallery(store, Selection("worst", k=2), {"toy": DatasetLocation("toy", toy["npz"], missing)}, tmp_path / "m", body)
    card = data.cards[0]
    assert card.index == 1 and card.crop is None and card.overlay is not None
    assert card.problems == [f"image missing or unreadable: {missing / 'img_1.png'}"]
    assert data.cards[1].crop is not None and data.cards[1].problems == []
    # A dataset nobody said where to find: numbers only, and a notice naming the flag that fixes it.
    data = build_gallery(store, Selection("worst", k=2), {}, tmp_path / "n", body)
    assert len(data.cards) == 2 and all(c.crop is None and c.overlay is None for c in data.cards)
    assert "--data toy=NPZ[:IMAGE_ROOT]" in data.notices[0]
    # Fits of another body model: the overlay cannot be trusted, and the page says so.
    with FitStore.open(redis_server.url, f"other-{uuid.uuid4().hex[:8]}", body_model_hash="ab" * 16) as other:
        other.keep_best("toy", [0], np.zeros((1, 72)), np.zeros((1, 10)), [1.0], 0, "static")
        data = build_gallery(other, Selection("worst"), locations, tmp_path / "o", body)
        other.drop()
    assert "--config" in data.notices[0] and len(data.cards) == 1
    # (that zero pose is upside down, so its closed-form camera lands behind the lens: said, not raised)
    assert data.cards[0].overlay is None and "mesh not drawn" in data.cards[0].problems[0]


def test_page_embeds_data_safely(store, toy, body, tmp_path):
    data = build_gallery(store, Selection("worst", k=1), {"toy": toy["location"]}, tmp_path, body)
    data.notices.append("<script>alert(1)</script>")
    data.cards[0].imgname = "</script><b>x"
    page = render_page(data)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    embedded = page.split('id="gallery-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["cards"][0]["imgname"] == "</script><b>x"
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_prediction_hook_draws_a_given_predictor(store, toy, body, tmp_path):
    truth = toy["problems"]
    seen = []

    def predictor(crops):
        seen.append(crops.shape)
        n = len(crops)
        return truth.pose[:n].numpy(), truth.betas[:n].numpy(), truth.camera_t[:n].numpy()

    data = build_gallery(store, Selection("best", k=2), {"toy": toy["location"]}, tmp_path, body, predictor=predictor)
    assert seen == [(2, 224, 224, 3)]
    assert all(c.prediction and (tmp_path / c.prediction).is_file() for c in data.cards)


# -- CLI ------------------------------------------------------------------------------------------


def _store_args(store):
    return ["--url", _url(store), "--namespace", store.namespace]


def test_cli_gallery_filter_exclude_and_export_with_paths(store, toy, tmp_path, capsys):
    data_flag = f"toy={toy['npz']}:{toy['root']}"
    out = tmp_path / "gallery"
    assert main(["store", "gallery", *_store_args(store), "--worst", "3", "--out", str(out), "--data", data_flag]) == 0
    page = (out / "index.html").read_text()
    assert '"index":1' in page and len(list((out / "images").glob("*_fit.jpg"))) == 3

    ids = tmp_path / "exclude.csv"
    ids.write_text("dataset,index\ntoy,1\ntoy,4\ntoy,77\n")
    keep = tmp_path / "keep.csv"
    capsys.readouterr()
    assert main(["store", "filter", *_store_args(store), "--exclude", str(ids), "--out", str(keep)]) == 0
    err = capsys.readouterr().err
    assert "keep 4 of 6 fits (any error, 2 excluded)" in err and "toy:77" in err
    assert read_ids(keep) == [("toy", 0), ("toy", 2), ("toy", 3), ("toy", 5)]
    assert main(["store", "filter", *_store_args(store), "--exclude", str(ids), "--max-error", "60", "--out", str(keep)]) == 0
    assert read_ids(keep) == [("toy", 0), ("toy", 2), ("toy", 3)]
    assert main(["store", "filter", *_store_args(store)]) == 1
    assert "--max-error E, --exclude FILE, or both" in capsys.readouterr().err

    # A curated list flows back: the gallery shows exactly the kept ids.
    assert main(["store", "gallery", *_store_args(store), "--ids", str(keep), "--out", str(tmp_path / "g2"), "--data", data_flag]) == 0
    assert "3 cards" in capsys.readouterr().out

    parquet = tmp_path / "fits.parquet"
    assert main(["store", "export", str(parquet), *_store_args(store), "--with-paths", "--data", data_flag]) == 0
    table = pq.read_table(parquet)
    rows = sorted(zip(table.column("index").to_pylist(), table.column("image_path").to_pylist()))
    assert rows == [(i, str(toy["root"] / f"img_{i}.png")) for i in range(N_SAMPLES)]
    assert table.column("center").to_pylist()[0] == [160.0, 128.0]
    assert table.schema.metadata[b"spin_ray.namespace"] == store.namespace.encode()
    assert store.import_parquet(parquet) == 0  # the extra columns do not stop a re-import (nothing better)
    assert main(["store", "export", str(tmp_path / "f2.parquet"), *_store_args(store), "--with-paths"]) == 1
    assert "--data toy=NPZ[:IMAGE_ROOT]" in capsys.readouterr().err


def test_cli_gallery_shows_a_checkpoints_prediction_beside_the_fit(store, toy, tmp_path, capsys):
    from spin_ray.config import RunConfig
    from spin_ray.model.hmr import HMR
    from spin_ray.train.checkpoint import save_checkpoint

    cfg = RunConfig.model_validate({"data": {"img_res": 64}})
    model = HMR.from_config(cfg.network, cfg.body.num_betas)
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(),
                                                          "config": cfg.model_dump(mode="json")})
    out = tmp_path / "gallery"
    data_flag = f"toy={toy['npz']}:{toy['root']}"
    assert main(["store", "gallery", *_store_args(store), "--worst", "2", "--out", str(out), "--data", data_flag,
                 "--checkpoint", str(checkpoint)]) == 0
    assert len(list((out / "images").glob("*_pred.jpg"))) == 2
    assert main(["store", "gallery", *_store_args(store), "--out", str(tmp_path / "g2"),
                 "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in capsys.readouterr().err


# -- the page in headless Chromium ------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol (one page, blocking calls)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        exe = shutil.which("chromium")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit status {self.proc.poll()})")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while self.evaluate("document.readyState + ' ' + location.href") != f"complete {url}":
            assert time.monotonic() < deadline, f"{url} did not finish loading"
            time.sleep(0.05)

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed and could not be: `make test` installs it through "
                    "scripts/system-deps.sh with SPIN_RAY_TEST_TOOLS=1 (Debian package chromium, needs root)")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) drives chromium: pip install -e '.[dev]'")
    # Chromium's helper processes may still write to the profile for a moment after the browser exits.
    with tempfile.TemporaryDirectory(prefix="spin-ray-chromium-", ignore_cleanup_errors=True) as profile:
        driver = Chromium(Path(profile))
        try:
            yield driver
        finally:
            driver.close()


CARD_ERRORS = "[...document.querySelectorAll('#cards .card')].map(c => Number(c.dataset.error))"


def test_page_in_headless_chromium(browser, store, toy, body, tmp_path):
    # One card's image is missing: the page still loads, and that card says why.
    root = tmp_path / "root"
    shutil.copytree(toy["root"], root)
    (root / "img_3.png").unlink()
    data = build_gallery(store, Selection("worst", k=N_SAMPLES), {"toy": DatasetLocation("toy", toy["npz"], root)}, tmp_path, body)
    url = write_page(data, tmp_path).resolve().as_uri()
    browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    browser.open(url)
    images = browser.evaluate(
        "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))"
        ".then(() => [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]))"
    )
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    screenshot = Path(os.environ.get("SPIN_RAY_GALLERY_SCREENSHOT", tmp_path / "gallery.png"))
    screenshot.write_bytes(base64.b64decode(shot))
    assert cv2.imread(str(screenshot)).shape[1] == 1400

    assert browser.evaluate("document.querySelectorAll('#cards .card').length") == N_SAMPLES
    assert len(images) == 2 * N_SAMPLES - 1  # crop + fit per card, no crop for the missing image
    assert all(width == 224 for _, width in images), images
    assert "image missing or unreadable" in browser.evaluate("document.querySelector('[data-key=\"toy:3\"]').innerText")

    assert browser.evaluate(CARD_ERRORS) == sorted(ERRORS.tolist(), reverse=True)
    browser.evaluate("document.querySelector('[data-key=\"toy:1\"] figure.zoomable').click()")
    assert browser.evaluate("document.querySelector('#lightbox.open img').getBoundingClientRect().width") > 600
    browser.evaluate("document.getElementById('lightbox').click()")
    assert browser.evaluate("document.querySelector('#lightbox.open')") is None
    browser.evaluate("(s => { s.value = 'error-asc'; s.dispatchEvent(new Event('change')); })(document.getElementById('sort'))")
    assert browser.evaluate(CARD_ERRORS) == sorted(ERRORS.tolist())

    browser.evaluate("(f => { f.value = 'error>60 toy'; f.dispatchEvent(new Event('input')); })(document.getElementById('filter'))")
    shown = "[...document.querySelectorAll('#cards .card:not(.hidden)')].map(c => c.dataset.key)"
    assert browser.evaluate(shown) == ["toy:5", "toy:4", "toy:1"]
    assert browser.evaluate("document.getElementById('count').textContent") == f"showing 3 of {N_SAMPLES}"
    browser.evaluate("document.getElementById('mark-visible').click()")
    browser.evaluate("document.querySelector('[data-key=\"toy:4\"] .pick').click()")  # unmark one
    csv_text = browser.evaluate("window.spinRayGallery.idsCsv()")
    assert parse_ids(csv_text) == [("toy", 1), ("toy", 5)]
    assert browser.evaluate("document.getElementById('download').disabled") is False
