"""IOConfig keeps its secrets out of repr, str, explain() and stage names, but not out of pickles."""

from __future__ import annotations

import contextlib
import io
import pickle

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam.frame as mf
from mmbeam import transforms as mt
from mmbeam.frame import col
from mmbeam.io.config import GCSConfig, HTTPConfig, IOConfig, S3Config

SECRETS = ("s3-secret-key-XYZ", "s3-session-token-XYZ", "gcs-token-XYZ", "bearer-XYZ",
           "cookie-value-XYZ", "api-key-XYZ")


def _config(gcs_token: object = None) -> IOConfig:
    return IOConfig(
        s3=S3Config(endpoint_url="http://127.0.0.1:9", key_id="AKIDEXAMPLE",
                    access_key=SECRETS[0], session_token=SECRETS[1]),
        gcs=GCSConfig(project_id="proj", token=gcs_token or {"refresh_token": SECRETS[2]}),
        http=HTTPConfig(headers=(("Cookie", SECRETS[4]), ("X-Api-Key", SECRETS[5])),
                        bearer_token=SECRETS[3]),
    )


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {text!r}"


@pytest.mark.parametrize("part", ["s3", "gcs", "http", None])
def test_repr_and_str_mask_every_secret(part):
    config = _config() if part is None else getattr(_config(), part)
    for text in (repr(config), str(config), f"{config}", repr([config])):
        _assert_no_secret(text)
        assert "'***'" in text
    if part in ("s3", None):  # the key id names the key; it is not a credential
        assert "key_id='AKIDEXAMPLE'" in repr(config)
    if part in ("http", None):  # header names stay readable
        assert "('Cookie', '***')" in repr(config) and "bearer_token='***'" in repr(config)


def test_unset_secrets_and_auth_methods_stay_readable():
    assert "access_key=None" in repr(S3Config())
    assert "token='anon'" in repr(GCSConfig(token="anon"))
    assert "token='google_default'" in repr(GCSConfig(token="google_default"))
    assert "token='***'" in repr(GCSConfig(token="/secrets/service-account.json"))


def test_pickle_carries_the_real_values_and_equality_holds():
    config = _config(gcs_token=SECRETS[2])
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and hash(copy) == hash(config)
    assert copy.s3.access_key == SECRETS[0] and copy.s3.session_token == SECRETS[1]
    assert copy.gcs.token == SECRETS[2]
    assert copy.http.storage_options()["headers"] == {
        "User-Agent": "mmbeam", "Cookie": SECRETS[4], "X-Api-Key": SECRETS[5],
        "Authorization": f"Bearer {SECRETS[3]}"}
    assert copy != IOConfig(s3=S3Config(access_key="other"), http=_config().http)


def test_explain_and_source_reprs_do_not_show_secrets(tmp_path):
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"]}), tmp_path / "a.parquet")
    config = _config(gcs_token=SECRETS[2])
    df = mf.read_parquet(str(tmp_path), io_config=config)
    df = df.with_column("data", col("url").url.download(on_error="null", io_config=config))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        df.explain(show_all=True)
    _assert_no_secret(out.getvalue() + repr(df._plan))


def test_transform_labels_and_display_data_do_not_show_secrets():
    from apache_beam.transforms.display import DisplayData

    config = _config(gcs_token=SECRETS[2])
    with beam.Pipeline() as p:
        texts = []
        for transform in (mt.Download(io_config=config), mt.Upload("/tmp/x", io_config=config)):
            texts.append(transform.label)
            texts.append(repr(DisplayData.create_from(transform).items))
            _ = p | transform.label + "in" >> beam.Create([]) | transform
    _assert_no_secret(" ".join(texts))


def test_failed_downloads_name_no_secret_in_errors_or_logs(mmbeam_http, caplog):
    """A 401, a 404 and an unreachable S3 endpoint, on the transform and the frame: the failure
    records, the raised errors (with their traceback text) and INFO logs carry no secret."""
    import logging

    import mmbeam
    from mmbeam.testing.collect import run_collect

    caplog.set_level(logging.INFO)
    base = _config(gcs_token=SECRETS[2])
    config = IOConfig(s3=S3Config(endpoint_url=base.s3.endpoint_url, key_id="AKIDEXAMPLE",
                                  access_key=SECRETS[0], session_token=SECRETS[1], num_tries=1),
                      gcs=base.gcs, http=base.http)
    urls = [mmbeam_http.url("status/401"), mmbeam_http.url("status/404"), "s3://bucket/x.bin"]
    good, failed = run_collect(lambda p: p | beam.Create(urls) | mt.Download(
        io_config=config, retries=0).with_exception_handling()).outputs
    assert good == [] and sorted(r.element for r in failed) == sorted(urls)
    texts = [r.error for r in failed]
    for url in urls:
        frame = mf.from_pydict({"url": [url]}).with_column(
            "d", col("url").url.download(io_config=config, retries=0))
        with pytest.raises(mmbeam.errors.MmbeamError) as info:
            frame.collect()
        texts.append(str(info.getrepr()))
    _assert_no_secret("\n".join(texts) + caplog.text)
