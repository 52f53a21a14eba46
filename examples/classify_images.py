"""Classify pet photos with a class UDF: the "Working with Images" reference pipeline, offline.

Owners (hive-partitioned Parquet) are joined with their pets (a dict with photo URLs), the photos
are downloaded from a loopback HTTP server, decoded, and classified by EfficientNet-Lite0 (a real
pretrained ImageNet model, loaded once per worker process by the UDF's ``__init__``). The photos
are scikit-image's bundled samples. Prints the table of the reference, ``[label, "52.3%"]`` per
row:

    python examples/classify_images.py
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import tempfile

import numpy as np

import mmbeam
from mmbeam import DataType, col
from mmbeam.testing import FaultServer

OWNERS = {
    "first_name": ["Ernesto", "James", "Wolfgang", "Shandra", "Zaya"],
    "last_name": ["Evergreen", "Jale", "Winter", "Shamas", "Zaphora"],
    "age": [34, 62, 23, 57, 40],
    "DoB": [datetime.date(1990, 4, 3), datetime.date(1962, 3, 14), datetime.date(2001, 2, 12),
            datetime.date(1967, 1, 2), datetime.date(1984, 4, 7)],
    "country": ["Canada", "Canada", "Germany", "United Kingdom", "United Kingdom"],
    "has_dog": [True, True, None, True, True],
}
#: pet name -> scikit-image sample photo
PETS = {"Ernie": "chelsea", "Jackie": "coffee", "Wolfie": "astronaut", "Shaggie": "rocket",
        "Zadie": "camera"}


def write_owners(folder: str) -> str:
    """The owners as ``<folder>/owners.pq/country=<c>/part-0.parquet``; returns the root."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = os.path.join(folder, "owners.pq")
    table = pa.table(OWNERS)
    for country in sorted(set(OWNERS["country"])):
        part = table.filter(pc.equal(table["country"], country)).drop_columns(["country"])
        os.makedirs(os.path.join(root, f"country={country}"), exist_ok=True)
        pq.write_table(part, os.path.join(root, f"country={country}", "part-0.parquet"))
    return root


def sample_photo(name: str) -> bytes:
    """A scikit-image sample photo (``chelsea``, ``coffee`` ...) as JPEG bytes."""
    from PIL import Image
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB").save(out, "JPEG",
                                                                           quality=92)
    return out.getvalue()


def serve_pets(server: FaultServer) -> dict[str, str]:
    """Put each pet's photo on ``server``; pet name -> URL."""
    return {pet: server.add(f"pets/{photo}.jpg", sample_photo(photo))
            for pet, photo in PETS.items()}


@mmbeam.udf(return_dtype=DataType.fixed_size_list(dtype=DataType.string(), size=2))
class ClassifyImages:
    def __init__(self):
        # Expensive initialisation: build EfficientNet-Lite0 and load its pretrained weights
        from mmbeam.ops.classify import ImageClassifier

        self.classifier = ImageClassifier()

    def __call__(self, images):
        # A batch of decoded images -> [label, "52.3%"] per image
        return self.classifier.classify(images.to_pylist())


def family_frame(owners_root: str, pet_urls: dict[str, str]) -> mmbeam.Frame:
    """Owners joined with their pets, photos downloaded and decoded (the reference's steps)."""
    df = mmbeam.read_parquet(owners_root + "/**")
    df = df.with_column("full_name", col("first_name") + " " + col("last_name"))
    names = [f"{f} {last}" for f, last in zip(OWNERS["first_name"], OWNERS["last_name"],
                                              strict=True)]
    df_dogs = mmbeam.from_pydict({"urls": list(pet_urls.values()), "full_name": names,
                                  "dog_name": list(pet_urls)})
    df_family = df.join(df_dogs, on="full_name").exclude("first_name", "last_name", "DoB",
                                                          "country", "age")
    df_family = df_family.with_column("image_bytes", col("urls").url.download(on_error="null"))
    return df_family.with_column("image", col("image_bytes").image.decode())


def classify(owners_root: str, pet_urls: dict[str, str]) -> mmbeam.Frame:
    df_family = family_frame(owners_root, pet_urls)
    return df_family.with_column("classify_breed", ClassifyImages(col("image")))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as folder, FaultServer() as server:
        classified = classify(write_owners(folder), serve_pets(server))
        classified.select("dog_name", "image", "classify_breed").show()


if __name__ == "__main__":
    main()
