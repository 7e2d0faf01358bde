"""Sources that are not one local GeoTIFF: COGs over HTTP, band stacks, STAC items.

A loopback HTTP server (range requests, bytes counted) serves COGs and a STAC item built
here, so nothing needs the internet.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import NAIP, requires_samples
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoseg import sources
from geoseg.raster import open_raster

CRS = "EPSG:32633"
ORIGIN = (600000.0, 5800000.0)
#: Sentinel-2 L2A from baseline 04.00: DN = (reflectance + 0.1) * 10000.
SCALE, OFFSET = 1e-4, -0.1


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves files under ``root``; ``/_stats`` gives bytes and range requests per file,
    ``/_reset`` clears them."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = root
        self.served: dict[str, int] = {}
        self.ranges: dict[str, int] = {}
        self.lock = threading.Lock()


class Loopback:
    """The client side of a ``RangeServer`` running in its own process.

    Its own process, not a thread of the test's: GDAL holds the GIL in some calls that
    fetch over HTTP (the directory listing after an open), which a server thread in this
    process could then never answer.
    """

    def __init__(self, root: Path):
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(root)], stdout=subprocess.PIPE, text=True
        )
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=5) as response:
            return json.loads(response.read())

    @property
    def served(self) -> dict[str, int]:
        return self.stats()["served"]

    @property
    def ranges(self) -> dict[str, int]:
        return self.stats()["ranges"]

    def reset(self) -> None:
        urllib.request.urlopen(f"{self.url}/_reset", timeout=5).close()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of files under the server's root, with single byte ranges.

    Paths under /slow/ sleep 3 s first (past a short GDAL_HTTP_TIMEOUT).
    """

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if name in ("_stats", "_reset"):
            with self.server.lock:
                if name == "_reset":
                    self.server.served.clear()
                    self.server.ranges.clear()
                text = json.dumps({"served": self.server.served, "ranges": self.server.ranges})
            payload = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if name.startswith("slow/"):
            time.sleep(3)
            name = name[len("slow/") :]
        path = self.server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if found:
            start = int(found[1])
            end = min(int(found[2]) if found[2] else end, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            chunk = data[start : end + 1]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            with self.server.lock:
                self.server.served[name] = self.server.served.get(name, 0) + len(chunk)
                self.server.ranges[name] = self.server.ranges.get(name, 0) + bool(found)


def write_cog(path: Path, data: np.ndarray, res: float, *, nodata=0, **extra) -> Path:
    data = data if data.ndim == 3 else data[None]
    transform = Affine(res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1])
    profile = dict(
        driver="COG",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=CRS,
        transform=transform,
        nodata=nodata,
        blocksize=256,
        compress="DEFLATE",
    )
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


#: Reflectance of the scene's two halves: west open water, east vegetation.
WATER = {"blue": 0.07, "green": 0.06, "red": 0.04, "nir": 0.02, "swir16": 0.01, "swir22": 0.005}
LAND = {"blue": 0.04, "green": 0.07, "red": 0.05, "nir": 0.35, "swir16": 0.20, "swir22": 0.10}
ASSETS = {  # asset key: (common name, Sentinel-2 band, resolution in metres)
    "blue": ("blue", "B02", 10),
    "green": ("green", "B03", 10),
    "red": ("red", "B04", 10),
    "nir": ("nir", "B08", 10),
    "swir16": ("swir16", "B11", 20),
    "swir22": ("swir22", "B12", 20),
}
SIZE_10M = 256


def scene_band(common: str, res: int, rng) -> np.ndarray:
    """DNs of one band: water in the west half, land in the east, a little noise."""
    n = SIZE_10M * 10 // res
    reflectance = np.where(np.arange(n)[None, :] < n // 2, WATER[common], LAND[common])
    reflectance = reflectance + rng.normal(0, 0.003, (n, n))
    return np.round((reflectance - OFFSET) / SCALE).astype("uint16")


def stac_item(item_id: str, hrefs: dict[str, str], *, keys=tuple(ASSETS)) -> dict:
    assets = {}
    for key in keys:
        common, band, res = ASSETS[key]
        assets[key] = {
            "href": hrefs[key],
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "eo:bands": [{"name": band, "common_name": common}],
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "spatial_resolution": res,
                    "scale": SCALE,
                    "offset": OFFSET,
                }
            ],
        }
    assets["thumbnail"] = {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    x0, y1 = ORIGIN
    x1, y0 = x0 + SIZE_10M * 10, y1 - SIZE_10M * 10
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": item_id,
        "bbox": [x0, y0, x1, y1],  # not lon/lat, but nothing here reads it
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
        },
        "properties": {"datetime": "2023-08-01T10:00:00Z", "proj:epsg": 32633},
        "links": [],
        "assets": assets,
    }


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The loopback server and what it serves: a large COG, per-band COGs, STAC items."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(16)
    # A large COG of noise (incompressible), so one chip is a small part of the file.
    write_cog(root / "large.tif", rng.integers(1, 60000, (2048, 2048)).astype("uint16"), 10)
    for common, band, res in ASSETS.values():
        write_cog(root / f"T33UUP_20230801_{band}_{res}m.tif", scene_band(common, res, rng), res)
    server = Loopback(root)
    hrefs = {k: f"T33UUP_20230801_{b}_{r}m.tif" for k, (_, b, r) in ASSETS.items()}
    (root / "item.json").write_text(json.dumps(stac_item("S2A_T33UUP_20230801", hrefs)))
    absolute = {k: f"{server.url}/{v}" for k, v in hrefs.items()}
    collection = {
        "type": "FeatureCollection",
        "features": [stac_item("S2A_first", absolute), stac_item("S2B_second", absolute)],
    }
    (root / "items.json").write_text(json.dumps(collection))
    rgb_only = stac_item("S2A_rgb", hrefs, keys=("blue", "green", "red"))
    (root / "rgb_item.json").write_text(json.dumps(rgb_only))
    visual = stac_item("S2A_visual", hrefs, keys=())
    visual["assets"]["visual"] = {
        "href": "visual.tif",
        "type": "image/tiff",
        "roles": ["data"],
        "eo:bands": [{"common_name": c} for c in ("red", "green", "blue")],
    }
    (root / "visual_item.json").write_text(json.dumps(visual))
    if NAIP.exists():
        with rasterio.open(NAIP) as src:
            data = src.read(window=Window(0, 0, 512, 512))
            profile = dict(
                driver="COG",
                width=512,
                height=512,
                count=4,
                dtype="uint8",
                crs=src.crs,
                transform=src.window_transform(Window(0, 0, 512, 512)),
                nodata=0,
                blocksize=256,
                compress="DEFLATE",
            )
        with rasterio.open(root / "naip_chip.tif", "w", **profile) as dst:
            dst.write(data)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def http_env(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")


# Source text ----------------------------------------------------------------------------


def test_urls_map_to_gdal_virtual_file_systems():
    assert sources.gdal_path("https://host/a/b.tif") == "/vsicurl/https://host/a/b.tif"
    assert sources.gdal_path("s3://bucket/key/b.tif") == "/vsis3/bucket/key/b.tif"
    assert sources.gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    # a URL that went through pathlib (which collapses '//') is restored
    assert str(sources.source_path(Path("https://host/a/b.tif"))) == "https://host/a/b.tif"
    assert sources.output_stem("https://host/a/scene_01.tif?sig=abc") == "scene_01"
    assert sources.source_path(Path("https://host/a/scene.tif")).stem == "scene"


def test_cluster_workers_get_absolute_stacks_and_untouched_urls(remote, monkeypatch):
    from geoseg.distributed import _access_problems, absolute_path

    monkeypatch.chdir(remote.root)
    stack = "green=T33UUP_20230801_B03_10m.tif,nir=T33UUP_20230801_B08_10m.tif"
    absolute = absolute_path(stack)
    assert absolute == ",".join(
        f"{name}={remote.root / file}" for name, file in (p.split("=") for p in stack.split(","))
    )
    url = f"{remote.url}/large.tif"
    assert sources.source_text(absolute_path(Path(url))) == url  # not /cwd/http:/...
    assert _access_problems([absolute, url], []) == []
    assert _access_problems(["green=/nowhere/B03.tif"], []) == ["do not see /nowhere/B03.tif"]


# Remote COGs ----------------------------------------------------------------------------


def test_a_chip_of_a_large_remote_cog_fetches_a_small_part_of_it(remote):
    size = (remote.root / "large.tif").stat().st_size
    remote.reset()
    with (
        rasterio.Env(**sources.GDAL_HTTP_DEFAULTS),
        open_raster(f"{remote.url}/large.tif", require_crs=True) as source,
    ):
        data, valid = source.read(Window(1024, 1024, 256, 256))
        assert source.width == 2048 and source.crs == rasterio.crs.CRS.from_string(CRS)
    with rasterio.open(remote.root / "large.tif") as local:
        assert np.array_equal(data[0], local.read(1, window=Window(1024, 1024, 256, 256)))
    served = remote.served["large.tif"]
    print(
        f"one 256x256 chip of the remote COG: {served} bytes served of {size} "
        f"({100 * served / size:.1f}%), {remote.ranges['large.tif']} range requests"
    )
    assert remote.ranges["large.tif"] >= 1
    assert served < size / 10


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_local_raster_read_under_the_cli_settings_is_not_held_in_memory(tmp_path, monkeypatch):
    # The remote file cache is per open file and would keep the bytes read (32 MB here,
    # incompressible) for as long as the raster is open; the page cache has them already.
    monkeypatch.delenv("VSI_CACHE", raising=False)
    path = tmp_path / "noise.tif"
    profile = dict(driver="GTiff", width=4096, height=4096, count=1, dtype="uint16")
    profile.update(tiled=True, blockxsize=512, blockysize=512, crs=CRS)
    profile.update(transform=Affine(10, 0, 500000, 0, -10, 6000000))
    noise = np.random.default_rng(17).integers(1, 60000, (4096, 4096)).astype("uint16")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(noise, 1)
    del noise
    settings = {**sources.GDAL_HTTP_DEFAULTS, "GDAL_CACHEMAX": 1 << 20}
    with rasterio.Env(**settings), open_raster(path) as source:
        before = _resident_mb()
        for row in range(0, 4096, 512):
            for col in range(0, 4096, 512):
                source.read(Window(col, row, 512, 512))
        grown = _resident_mb() - before
    assert grown < 12, f"reading a 32 MB local raster kept {grown:.0f} MB resident"
    assert "VSI_CACHE" in sources.remote_open_settings()
    monkeypatch.setenv("VSI_CACHE", "FALSE")
    assert "VSI_CACHE" not in sources.remote_open_settings()  # the environment wins


@requires_samples()
def test_predict_a_url_gives_the_local_mask_named_after_the_file(remote, tmp_path, invoke):
    url = f"{remote.url}/naip_chip.tif"
    result = invoke(
        "predict", url, "-o", tmp_path / "masks", "--backend", "spectral", "--bands", "naip", "-q"
    )
    out = tmp_path / "masks" / "naip_chip.tif"
    assert f"mask: {out}" in result.output
    invoke(
        "predict",
        remote.root / "naip_chip.tif",
        "-o",
        tmp_path / "local.tif",
        "--backend",
        "spectral",
        "--bands",
        "naip",
        "-q",
    )
    with rasterio.open(out) as mask, rasterio.open(tmp_path / "local.tif") as local:
        assert mask.transform == local.transform and mask.crs == local.crs
        assert np.array_equal(mask.read(1), local.read(1))
        assert (mask.read(1) == 1).any()  # the NAIP chip holds water


@requires_samples()
def test_index_prompts_and_tile_read_a_remote_cog(remote, tmp_path, invoke):
    url = f"{remote.url}/naip_chip.tif"
    local = remote.root / "naip_chip.tif"
    invoke("index", url, "-o", tmp_path / "ndwi.tif", "--bands", "naip", "-q")
    invoke("index", local, "-o", tmp_path / "ndwi_local.tif", "--bands", "naip", "-q")
    with (
        rasterio.open(tmp_path / "ndwi.tif") as index,
        rasterio.open(tmp_path / "ndwi_local.tif") as ref,
    ):
        assert index.transform == ref.transform and index.crs == ref.crs
        assert np.array_equal(index.read(1), ref.read(1), equal_nan=True)
    result = invoke("prompts", url, "-o", tmp_path / "prompts.gpkg", "--bands", "naip", "-q")
    assert "positive" in result.output
    result = invoke(
        "tile",
        url,
        "-o",
        tmp_path / "chips",
        "--bands",
        "naip",
        "--size",
        "256",
        "--overlap",
        "0",
        "-q",
    )
    assert "4 chips" in result.output
    chips = sorted((tmp_path / "chips" / "images").glob("*.tif"))
    assert chips[0].name.startswith("naip_chip")
    with rasterio.open(chips[0]) as chip, rasterio.open(local) as src:
        assert chip.crs == src.crs and chip.transform == src.transform
        assert np.array_equal(chip.read(), src.read(window=Window(0, 0, 256, 256)))


def test_tile_a_band_stack_at_a_coarser_resolution(remote, tmp_path, invoke):
    result = invoke(
        "tile",
        local_stack(remote),
        "-o",
        tmp_path / "chips",
        "--size",
        "64",
        "--overlap",
        "0",
        "--resolution",
        "20",
        "--resampling",
        "average",
        "-q",
    )
    assert "4 chips" in result.output  # 128 x 128 px at 20 m
    chip = sorted((tmp_path / "chips" / "images").glob("*.tif"))[0]
    assert chip.name.startswith("T33UUP_20230801_r")  # the band files' common prefix
    with (
        rasterio.open(chip) as data,
        rasterio.open(remote.root / "T33UUP_20230801_B11_20m.tif") as swir,
    ):
        assert data.res == (20.0, 20.0) and data.descriptions == ("green", "nir", "swir1")
        assert np.array_equal(data.read(3), swir.read(1, window=Window(0, 0, 64, 64)))


# Band stacks and STAC items --------------------------------------------------------------


def local_stack(remote) -> str:
    root = remote.root
    return ",".join(
        f"{name}={root / f'T33UUP_20230801_{band}_{res}m.tif'}"
        for name, band, res in (("green", "B03", 10), ("nir", "B08", 10), ("swir1", "B11", 20))
    )


def test_a_stac_item_over_http_reads_as_the_local_band_stack(remote):
    item = f"{remote.url}/item.json"
    with open_raster(item) as stac, open_raster(local_stack(remote)) as stack:
        assert stac.band_names == ("blue", "green", "red", "nir", "swir1", "swir2")
        assert stack.band_names == ("green", "nir", "swir1")
        # the finest band's grid
        assert (stac.width, stac.height, stac.res) == (256, 256, (10.0, 10.0))
        assert stac.transform == stack.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
        assert stac.crs == stack.crs == rasterio.crs.CRS.from_string(CRS)
        window = Window(40, 60, 128, 128)
        names = ("green", "nir", "swir1")
        remote_data, remote_valid = stac.read(window, names)
        local_data, local_valid = stack.read(window, names)
        assert np.array_equal(remote_data, local_data) and np.array_equal(remote_valid, local_valid)
        # raster:bands scale and offset reach the VRT, so reflectance is known
        assert stac.dataset.scales == (SCALE,) * 6 and stac.dataset.offsets == (OFFSET,) * 6
        from geoseg.water import raster_reflectance

        reflectance = raster_reflectance(stac)
        assert reflectance.known and reflectance.offset["swir1"] == OFFSET
        water_green = reflectance.apply(remote_data[:1, :, :20], "green")
        assert abs(float(water_green.mean()) - WATER["green"]) < 0.002
    with rasterio.open(remote.root / "T33UUP_20230801_B03_10m.tif") as green:
        assert np.array_equal(remote_data[0], green.read(1, window=window))
    # The 20 m band, brought onto the 10 m grid: nearest is each pixel repeated 2x2 ...
    with open_raster(item, "green,swir1", resampling="nearest") as stac:
        swir = stac.read(Window(0, 0, 256, 256), ["swir1"])[0][0]
    with rasterio.open(remote.root / "T33UUP_20230801_B11_20m.tif") as src:
        native = src.read(1)
        upsampled = src.read(1, out_shape=(256, 256), resampling=Resampling.bilinear)
    assert np.array_equal(swir, np.repeat(np.repeat(native, 2, 0), 2, 1))
    # ... bilinear is what GDAL gives reading the file at 10 m
    with open_raster(item, "green,swir1") as stac:
        assert np.array_equal(stac.read(Window(0, 0, 256, 256), ["swir1"])[0][0], upsampled)
    # the finest of the bands read: swir1 alone stays on its 20 m grid
    with open_raster(item, "swir1") as stac:
        assert stac.res == (20.0, 20.0)
    # --resolution: the stack is built on a 20 m grid, the 10 m bands averaged
    with open_raster(item, "green,swir1", resolution=20, resampling="average") as stac:
        assert (stac.width, stac.res) == (128, (20.0, 20.0))
        data = stac.read(Window(0, 0, 128, 128))[0]
        assert np.array_equal(data[1], native)


def test_a_band_folder_is_one_stack(remote, tmp_path):
    folder = tmp_path / "S2A_MSIL2A_20230801T100031_N0509_R122_T33UUP_20230801T160000.SAFE"
    img = folder / "GRANULE" / "L2A_T33UUP_A042000_20230801T100000" / "IMG_DATA"
    for sub, band, res in (
        ("R10m", "B03", 10),
        ("R10m", "B08", 10),
        ("R20m", "B11", 20),
        ("R20m", "B03", 20),
    ):
        (img / sub).mkdir(parents=True, exist_ok=True)
        target = img / sub / f"T33UUP_20230801T100031_{band}_{res}m.jp2"
        target.symlink_to(
            remote.root / f"T33UUP_20230801_{band}_{'10' if band != 'B11' else '20'}m.tif"
        )
    assert sources.output_stem(folder) == folder.stem
    with open_raster(folder) as stack, open_raster(local_stack(remote)) as local:
        assert stack.band_names == ("green", "nir", "swir1")  # B03 at 10 m, not 20 m
        window = Window(0, 0, 256, 256)
        assert np.array_equal(stack.read(window)[0], local.read(window)[0])
        # baseline 05.09 >= 04.00: the -1000 offset
        assert stack.dataset.offsets == (OFFSET,) * 3
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(
        "bands:\n"
        + "".join(
            f"  {p.split('=')[0]}: {p.split('=')[1]}\n" for p in local_stack(remote).split(",")
        )
        + "resolution: 20\n"
    )
    with open_raster(stack_file) as stack:
        assert stack.band_names == ("green", "nir", "swir1") and stack.res == (20.0, 20.0)


def test_predict_water_on_a_stac_item_with_the_spectral_backend(remote, tmp_path, invoke):
    result = invoke(
        "predict",
        f"{remote.url}/item.json",
        "-o",
        tmp_path / "water",
        "--backend",
        "spectral",
        "-q",
    )
    out = tmp_path / "water" / "S2A_T33UUP_20230801.tif"
    assert f"mask: {out}" in result.output
    with rasterio.open(out) as mask:
        assert mask.crs == rasterio.crs.CRS.from_string(CRS)
        assert mask.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
        values = mask.read(1)
    # west half water, east half land, from reflectance the item's scale/offset give
    assert (values[:, :120] == 1).mean() > 0.99 and (values[:, 136:] == 0).mean() > 0.99
    # a local item file with relative hrefs works the same, and names the output by id
    invoke(
        "predict",
        remote.root / "item.json",
        "-o",
        tmp_path / "local",
        "--backend",
        "spectral",
        "-q",
    )
    with rasterio.open(tmp_path / "local" / "S2A_T33UUP_20230801.tif") as local:
        assert np.array_equal(local.read(1), values)


def test_an_item_collection_is_a_batch(remote, tmp_path, invoke):
    result = invoke(
        "predict",
        remote.root / "items.json",
        "-o",
        tmp_path / "water",
        "--backend",
        "spectral",
        "--option",
        "index=mndwi",
        "-q",
    )
    assert sorted(p.name for p in (tmp_path / "water").glob("*.tif")) == [
        "S2A_first.tif",
        "S2B_second.tif",
    ]
    assert "2 done" in result.output or result.output.count("mask:") == 2
    result = invoke(
        "tile",
        remote.root / "items.json",
        "-o",
        tmp_path / "chips",
        "--size",
        "128",
        "--overlap",
        "0",
        "--bands",
        "green,nir,swir1",
        "-q",
    )
    assert "8 chips" in result.output
    names = sorted(p.name for p in (tmp_path / "chips" / "images").glob("*.tif"))
    assert names[0].startswith("S2A_first") and names[-1].startswith("S2B_second")
    with rasterio.open(tmp_path / "chips" / "images" / names[0]) as chip:
        assert chip.count == 3 and chip.descriptions == ("green", "nir", "swir1")


def test_index_and_prompts_on_a_stac_item(remote, tmp_path, invoke):
    item = f"{remote.url}/item.json"
    invoke("index", item, "-o", tmp_path / "mndwi.tif", "--index", "mndwi", "-q")
    with rasterio.open(tmp_path / "mndwi.tif") as index:
        values = index.read(1)
        assert index.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    assert (values[:, :120] > 0.1).all() and (values[:, 136:] < -0.1).all()
    result = invoke(
        "prompts", item, "-o", tmp_path / "prompts.gpkg", "--size", "128", "--overlap", "0", "-q"
    )
    assert "positive" in result.output
    import geopandas as gpd

    points = gpd.read_file(tmp_path / "prompts.gpkg", layer="points")
    assert len(points) and points.crs.to_epsg() == 32633
    assert (points[points.label == 1].geometry.x < ORIGIN[0] + 1280).all()


# One-line errors ------------------------------------------------------------------------


def one_line_error(result, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("geoseg: error")]
    assert lines, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_missing_url_is_one_line(remote, tmp_path, invoke):
    url = f"{remote.url}/missing.tif"
    result = invoke("index", url, "-o", tmp_path / "x.tif", expect=2)
    one_line_error(result, url, "404")
    result = invoke("predict", url, "-o", tmp_path / "m", "--backend", "spectral", expect=2)
    assert url in result.output and "https:/" not in result.output
    result = invoke(
        "predict",
        f"{remote.url}/missing.json",
        "-o",
        tmp_path / "m",
        "--backend",
        "spectral",
        expect=2,
    )
    assert "missing.json" in result.output and "404" in result.output


def test_a_server_that_does_not_answer_in_time_is_one_line(remote, tmp_path, invoke, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    url = f"{remote.url}/slow/T33UUP_20230801_B03_10m.tif"
    started = time.perf_counter()
    result = invoke("index", url, "-o", tmp_path / "x.tif", "--bands", "green=1", expect=2)
    one_line_error(result, url, "in time", "GDAL_HTTP_TIMEOUT")
    assert time.perf_counter() - started < 10


def test_a_stac_item_without_the_needed_bands_is_one_line(remote, tmp_path, invoke):
    item = remote.root / "rgb_item.json"
    result = invoke("index", item, "-o", tmp_path / "x.tif", "--index", "mndwi", expect=2)
    one_line_error(result, str(item), "swir1")
    result = invoke(
        "predict",
        item,
        "-o",
        tmp_path / "m",
        "--backend",
        "spectral",
        "--bands",
        "green,nir,swir1",
        expect=2,
    )
    one_line_error(result, "nir, swir1")
    result = invoke(
        "predict",
        remote.root / "visual_item.json",
        "-o",
        tmp_path / "m",
        "--backend",
        "spectral",
        expect=2,
    )
    one_line_error(result, "S2A_visual", "no single-band raster asset")
    result = invoke("index", remote.root / "items.json", "-o", tmp_path / "x.tif", expect=2)
    one_line_error(result, "ItemCollection of 2 items", "items.json#S2A_first")


if __name__ == "__main__":  # the loopback server's process: python test_sources.py ROOT
    server = RangeServer(Path(sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
