"""The embedded GGUF is verified against its known SHA-256 before it is converted."""

import hashlib

import pytest

from gcrp_assets.lib.training.base_model import (GGUF_FILE, GGUF_SHA256, BaseModelError, convert_gguf,
                                                 packaged_gguf, verify_gguf)


def test_the_packaged_gguf_has_the_known_checksum():
    verify_gguf(packaged_gguf(), GGUF_SHA256)


def test_a_gguf_with_the_embedded_name_but_other_bytes_is_refused_before_conversion(tmp_path):
    fake = tmp_path / GGUF_FILE
    fake.write_bytes(b"GGUF not really")
    out = tmp_path / "model"
    with pytest.raises(BaseModelError, match=GGUF_FILE) as error:
        convert_gguf(fake, out)
    assert str(fake) in str(error.value) and hashlib.sha256(b"GGUF not really").hexdigest() in str(error.value)
    assert not out.exists() and not (tmp_path / "model.tmp").exists()


def test_an_explicit_checksum_is_verified_for_any_file_name(tmp_path):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"x")
    with pytest.raises(BaseModelError, match="other.gguf"):
        convert_gguf(other, tmp_path / "model", expected_sha256="0" * 64)
    verify_gguf(other, hashlib.sha256(b"x").hexdigest().upper())  # case does not matter
