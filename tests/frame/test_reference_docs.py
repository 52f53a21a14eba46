"""The reference documents' examples, with ``daft`` replaced by ``mmbeam`` and data served locally.

000 "Working with Images": hive-partitioned Parquet of dog owners, string concatenation, join with
a dict of dogs, exclude, show(), url.download(on_error="null"), image.decode(), and the
``ClassifyImages`` class UDF exactly as written. Its ``torch.hub.load("NVIDIA/...:torchhub", ...)``
calls are served offline from a torch hub cache folder (``TORCH_HOME``) whose ``hubconf.py`` keeps
the NVIDIA entry points but builds EfficientNet-Lite0 with its pretrained ImageNet weights (the
ResNet50 weights cannot be downloaded here); torch.hub itself loads it.
004 "Processing 300K Images": download -> decode -> resize -> encode -> upload, then show().
"""

from __future__ import annotations

import datetime
import os
import re
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam
from mmbeam import col
from mmbeam.testing.images import encode_sample, make_image

OWNERS = {
    "first_name": ["Ernesto", "James", "Wolfgang", "Shandra", "Zaya"],
    "last_name": ["Evergreen", "Jale", "Winter", "Shamas", "Zaphora"],
    "age": [34, 62, 23, 57, 40],
    "DoB": [datetime.date(1990, 4, 3), datetime.date(1962, 3, 14), datetime.date(2001, 2, 12),
            datetime.date(1967, 1, 2), datetime.date(1984, 4, 7)],
    "country": ["Canada", "Canada", "Germany", "United Kingdom", "United Kingdom"],
    "has_dog": [True, True, None, True, True],
}
DOG_NAMES = ["Ernie", "Jackie", "Wolfie", "Shaggie", "Zadie"]
FULL_NAMES = ["Ernesto Evergreen", "James Jale", "Wolfgang Winter", "Shandra Shamas",
              "Zaya Zaphora"]


@pytest.fixture
def owners_dataset(tmp_path):
    """sample-data-dog-owners-partitioned.pq/country=<c>/part-0.parquet"""
    root = tmp_path / "sample-data-dog-owners-partitioned.pq"
    table = pa.table(OWNERS)
    for country in sorted(set(OWNERS["country"])):
        part = table.filter(pa.compute.equal(table["country"], country)).drop_columns(["country"])
        folder = root / f"country={country}"
        folder.mkdir(parents=True)
        pq.write_table(part, folder / "part-0.parquet")
    return str(root)


@pytest.fixture
def dog_urls(mmbeam_http):
    urls = []
    for i, name in enumerate(DOG_NAMES):
        data = encode_sample(make_image(40 + 8 * i, 30 + 4 * i, seed=i))
        urls.append(mmbeam_http.add(f"ref000/{name}.jpg", data))
    return urls


HUBCONF = textwrap.dedent('''
    """Offline stand-in for NVIDIA/DeepLearningExamples:torchhub: the same entry points, backed by
    EfficientNet-Lite0 and its pretrained ImageNet weights (mmbeam.ops.classify)."""

    dependencies = ["torch", "numpy"]


    def nvidia_resnet50(pretrained=True, **kwargs):
        from mmbeam.ops.classify import ImageClassifier

        return ImageClassifier().model


    class _Utils:
        def prepare_input_from_uri(self, uri, cuda=False):
            import io
            import urllib.request

            import numpy as np
            import torch
            from PIL import Image

            from mmbeam.ops.classify import preprocess

            with urllib.request.urlopen(uri, timeout=30) as response:
                image = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
            return torch.from_numpy(preprocess(image))[None]

        def pick_n_best(self, predictions, n=5):
            from mmbeam.ops.classify import imagenet_label

            results = []
            for row in predictions.numpy():
                best = row.argsort()[::-1][:n]
                results.append([[imagenet_label(i), f"{100 * row[i]:.1f}%"] for i in best])
            return results


    def nvidia_convnets_processing_utils():
        return _Utils()
''')


@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch):
    repo = tmp_path / "torch-home" / "hub" / "NVIDIA_DeepLearningExamples_torchhub"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return repo


def _body_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("┆")])
    return rows[3:]  # names, ---, dtypes


@pytest.mark.slow
def test_working_with_images_example(owners_dataset, dog_urls, offline_torch_hub, capsys):
    # Read parquet file containing sample dog owners
    df = mmbeam.read_parquet(owners_dataset + "/**")

    # Combine "first_name" and "last_name" to create new column "full_name"
    df = df.with_column("full_name", col("first_name") + " " + col("last_name"))
    df.select("full_name", "age", "country", "has_dog").show()
    first = capsys.readouterr().out
    assert "│ full_name         ┆ age   ┆ country        ┆ has_dog │" in first
    assert "│ Utf8              ┆ Int64 ┆ Utf8           ┆ Boolean │" in first
    assert sorted(r[0] for r in _body_rows(first)) == sorted(FULL_NAMES)
    assert first.rstrip().endswith("(Showing first 5 of 5 rows)")

    # Create dataframe of dogs
    df_dogs = mmbeam.from_pydict({"urls": dog_urls, "full_name": FULL_NAMES,
                                  "dog_name": DOG_NAMES})

    # Join owners with dogs, dropping some columns
    df_family = df.join(df_dogs, on="full_name").exclude("first_name", "last_name", "DoB",
                                                          "country", "age")
    df_family.show()
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1] == "│ full_name         ┆ has_dog ┆ urls                           ┆ dog_name │"
    assert lines[2] == "│ ---               ┆ ---     ┆ ---                            ┆ ---      │"
    assert lines[3] == "│ Utf8              ┆ Boolean ┆ Utf8                           ┆ Utf8     │"
    assert lines[0] == "╭───────────────────┬─────────┬────────────────────────────────┬──────────╮"
    rows = {r[0]: r for r in _body_rows(text)}
    assert set(rows) == set(FULL_NAMES)
    assert rows["Wolfgang Winter"][1] == "None" and rows["Wolfgang Winter"][3] == "Wolfie"
    assert all(rows[n][1] == "true" for n in FULL_NAMES if n != "Wolfgang Winter")
    assert all(rows[n][2].startswith("http://127.0.0.1:") and rows[n][2].endswith("…")
               for n in FULL_NAMES)
    assert text.rstrip().endswith("(Showing first 5 of 5 rows)")
    family = df_family.to_pydict()
    assert list(family) == ["full_name", "has_dog", "urls", "dog_name"]
    by_name = dict(zip(family["full_name"], family["has_dog"], strict=True))
    assert by_name["Wolfgang Winter"] is None and len(by_name) == 5

    df_family = df_family.with_column("image_bytes", col("urls").url.download(on_error="null"))
    df_family.show()
    text = capsys.readouterr().out
    assert "┆ image_bytes                    │" in text and "┆ Binary                         │" in text
    assert all(r[4] == 'b"\\xff\\xd8\\xff\\xe0\\x00\\x10JFI…' for r in _body_rows(text))

    df_family = df_family.with_column("image", mmbeam.col("image_bytes").image.decode())
    df_family.select("dog_name", "image").show()
    text = capsys.readouterr().out
    assert "┆ Image[MIXED] │" in text and text.count("<Image>") == 5
    images = dict(zip(*df_family.select("dog_name", "image").to_pydict().values(), strict=True))
    assert images["Ernie"].shape == (30, 40, 3) and images["Zadie"].shape == (46, 72, 3)

    # import additional libraries, these are necessary for PyTorch
    import torch

    @mmbeam.udf(return_dtype=mmbeam.DataType.fixed_size_list(dtype=mmbeam.DataType.string(),
                                                             size=2))
    class ClassifyImages:
        def __init__(self):
            # Perform expensive initializations - create and load the pre-trained model
            self.model = torch.hub.load("NVIDIA/DeepLearningExamples:torchhub", "nvidia_resnet50",
                                        pretrained=True)
            self.utils = torch.hub.load("NVIDIA/DeepLearningExamples:torchhub",
                                        "nvidia_convnets_processing_utils")
            self.model.eval().to(torch.device("cpu"))

        def __call__(self, images_urls):
            batch = torch.cat([self.utils.prepare_input_from_uri(uri)
                               for uri in images_urls]).to(torch.device("cpu"))

            with torch.no_grad():
                output = torch.nn.functional.softmax(self.model(batch), dim=1)

            results = self.utils.pick_n_best(predictions=output, n=1)
            return [result[0] for result in results]

    classified_images_df = df_family.with_column("classify_breed",
                                                 ClassifyImages(mmbeam.col("urls")))
    classified_images_df.select("dog_name", "image", "classify_breed").show()
    text = capsys.readouterr().out
    assert "│ dog_name ┆ image        ┆ classify_breed" in text
    assert "│ Utf8     ┆ Image[MIXED] ┆ FixedSizeList[Utf8; 2]" in text
    rows = _body_rows(text)
    assert sorted(r[0] for r in rows) == sorted(DOG_NAMES) and all(r[1] == "<Image>" for r in rows)
    # [label, 52.3%] per row, cut with … when wider than the column (as in the reference)
    assert all(re.fullmatch(r"\[[^,\]]+(, \d{1,3}\.\d%\]|.*…)", r[2]) for r in rows), rows
    assert text.rstrip().endswith("(Showing first 5 of 5 rows)")


def test_processing_300k_images_example(tmp_path, mmbeam_http, monkeypatch):
    names = [f"ref004/{i}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        mmbeam_http.add(name, encode_sample(make_image(300 + 10 * i, 200, seed=i)))
    meta = tmp_path / "validation-images-parquet"
    meta.mkdir()
    pq.write_table(pa.table({"path": [mmbeam_http.url("files/" + n) for n in names[:6]]}),
                   meta / "part-0.parquet")
    pq.write_table(pa.table({"path": [mmbeam_http.url("files/" + n) for n in names[6:]]}),
                   meta / "part-1.parquet")
    monkeypatch.chdir(tmp_path)

    # Download images
    df = mmbeam.read_parquet(str(meta))
    df = df.with_column("image", df["path"].url.download().image.decode())

    # Resize
    df = df.with_column("resized", df["image"].image.resize(256, 256))

    # Save results
    df = df.with_column("encoded", df["resized"].image.encode("JPEG"))
    df = df.with_column("path", df["path"].url.upload("processed_images"))

    # Preview results
    mmbeam_http.reset_stats()
    df.show()
    # show() downloads only the rows it shows (8 of 12)
    assert sum(mmbeam_http.hits("files/" + n) for n in names) == 8
    uploaded = os.listdir(tmp_path / "processed_images")
    assert len(uploaded) == 8

    # Collect to run on the full dataset
    out = df.collect().to_pydict()
    assert [r.shape for r in out["resized"]] == [(256, 256, 3)] * 12
    assert all(re.search(r"processed_images/", p) for p in out["path"])
    assert out["image"][0].shape == (200, 300, 3)
    assert out["encoded"][0][:2] == b"\xff\xd8"
    assert len(os.listdir(tmp_path / "processed_images")) == 12
    assert np.asarray(out["resized"][3]).dtype == np.uint8


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head node in its own processes (``ray start --head``), reached as
    ``ray://127.0.0.1:<port>`` through Ray Client; its workers run in ``head.cwd``."""
    pytest.importorskip("ray")
    from mmbeam.testing import RayHead

    with RayHead(num_cpus=2, cwd=str(tmp_path_factory.mktemp("ray-head-cwd"))) as head:
        yield head


def _images_parquet(folder, mmbeam_http, names) -> str:
    meta = folder / "validation-images-parquet"
    meta.mkdir(parents=True)
    urls = [mmbeam_http.url("files/" + n) for n in names]
    pq.write_table(pa.table({"path": urls[:6]}), meta / "part-0.parquet")
    pq.write_table(pa.table({"path": urls[6:]}), meta / "part-1.parquet")
    return str(meta)


CLUSTER_EXAMPLE = """\
# Same processing code as above, just point to cluster
import mmbeam
mmbeam.context.set_runner_ray({address!r})

df = mmbeam.read_parquet(
    {parquet!r}
)

df = df.with_column("image", df["path"].url.download().image.decode())
df = df.with_column("resized", df["image"].image.resize(256, 256))
df = df.with_column("encoded", df["resized"].image.encode("JPEG"))
df = df.with_column("path", df["path"].url.upload("processed_images"))

# Collect to run on the full dataset
df.collect()
"""


def _run_script(code: str, cwd: str, result: str) -> dict:
    """Run ``code`` as a user's script (a fresh interpreter in ``cwd``), then return its
    ``df.to_pydict()`` (pickled to ``result``)."""
    import pickle
    import subprocess
    import sys

    script = os.path.join(cwd, "example.py")
    with open(script, "w") as f:
        f.write(code + f"\nimport pickle\npickle.dump(df.to_pydict(), open({result!r}, 'wb'))\n")
    done = subprocess.run([sys.executable, script], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(result, "rb") as f:
        return pickle.load(f)


@pytest.mark.slow
def test_processing_300k_images_cluster_example_on_ray(ray_head, tmp_path, mmbeam_http):
    """004's "Scaling to Distributed" code as written, run as a script (``daft`` -> ``mmbeam``,
    ``ray://...`` -> the local head's Ray Client address, the S3 input moved to a local folder
    of loopback URLs as above); the same rows and files as on the local runner."""
    names = [f"ref004-cluster/{i}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        mmbeam_http.add(name, encode_sample(make_image(280 + 10 * i, 190, seed=40 + i)))
    parquet = _images_parquet(tmp_path / "data", mmbeam_http, names)
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    local_code = CLUSTER_EXAMPLE.format(address="-", parquet=parquet).replace(
        "mmbeam.context.set_runner_ray('-')", "mmbeam.context.set_runner_local()")
    expected = _run_script(local_code, str(local_dir), str(tmp_path / "local.pkl"))
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    got = _run_script(CLUSTER_EXAMPLE.format(address=ray_head.client_address, parquet=parquet),
                      str(driver_dir), str(tmp_path / "ray.pkl"))
    # "processed_images" is relative to the cluster workers' folder: they did the writing
    assert not (driver_dir / "processed_images").exists()

    def by_file(out: dict) -> dict:
        return {os.path.basename(p): i for i, p in enumerate(out["path"])}

    local_rows, ray_rows = by_file(expected), by_file(got)
    assert sorted(ray_rows) == sorted(local_rows) and len(ray_rows) == 12
    for name, i in local_rows.items():
        j = ray_rows[name]
        assert got["path"][j] == os.path.join(ray_head.cwd, "processed_images", name)
        assert np.array_equal(np.asarray(got["resized"][j]), np.asarray(expected["resized"][i]))
        assert got["encoded"][j] == expected["encoded"][i]
        assert np.asarray(got["resized"][j]).shape == (256, 256, 3)
    written = {n: (local_dir / "processed_images" / n).read_bytes() for n in local_rows}
    on_cluster = os.path.join(ray_head.cwd, "processed_images")
    assert {n: open(os.path.join(on_cluster, n), "rb").read() for n in ray_rows} == written
