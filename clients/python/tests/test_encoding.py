"""Input encoding (bytes, paths, PIL images, numpy audio) and output decoding, by declared type."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from conftest import PNG, b64, pipeline_result, wav_info

from fusion_client import BadRequest, decode_wav, encode_wav
from fusion_client.encoding import decode_value, encode_inputs, encode_value, sniff_extension


def sent(gateway) -> dict:
    return gateway.bodies()[-1]["inputs"]


@pytest.fixture
def echo(gateway):
    """Every pipeline run answers with an empty result; tests look at what was sent."""
    for name in ("caption_then_classify", "text_to_image", "transcribe", "gallery"):
        gateway.route("POST", f"/v1/pipelines/{name}", pipeline_result({}, {}))
    return gateway


def test_plain_json_values_pass_through(echo, client):
    client.run("text_to_image", prompt="a red square", seed=3, guidance=1.5,
               then_caption=True, negative_prompt="")
    assert sent(echo) == {"prompt": "a red square", "seed": 3, "guidance": 1.5,
                          "then_caption": True, "negative_prompt": ""}


def test_bytes_path_and_str_path_are_read_for_binary_types(echo, client, tmp_path):
    f = tmp_path / "cat.png"
    f.write_bytes(PNG)
    client.run("caption_then_classify", image=f, labels=["cat", "dog"])
    assert sent(echo) == {"image": b64(PNG), "labels": ["cat", "dog"]}
    client.run("caption_then_classify", image=str(f), labels=("cat",))
    assert sent(echo) == {"image": b64(PNG), "labels": ["cat"]}
    client.run("caption_then_classify", {"image": bytearray(PNG), "labels": ["x"]})
    assert sent(echo)["image"] == b64(PNG)


def test_str_for_text_is_never_read_as_a_file(echo, client, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("secret")
    client.run("text_to_image", prompt=str(f))
    assert sent(echo) == {"prompt": str(f)}


def test_base64_and_data_url_strings_pass_for_binary_types(echo, client):
    client.run("caption_then_classify", image=b64(PNG), labels=["a"])
    assert sent(echo)["image"] == b64(PNG)
    client.run("caption_then_classify", image="data:image/png;base64," + b64(PNG), labels=["a"])
    assert sent(echo)["image"] == b64(PNG)


def test_missing_file_is_a_local_bad_request(echo, client):
    with pytest.raises(BadRequest) as info:
        client.run("caption_then_classify", image="no/such/cat.png", labels=["a"])
    assert info.value.field == "inputs.image" and info.value.status is None
    assert "no such file" in info.value.message
    assert echo.count("POST", "/v1/pipelines/caption_then_classify") == 0


def test_unreadable_path_object_is_a_bad_request(tmp_path):
    with pytest.raises(BadRequest, match="cannot read") as info:
        encode_value(tmp_path / "missing.png", "image", "inputs.image")
    assert info.value.field == "inputs.image"


def test_list_of_images(echo, client, tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(PNG)
    client.run("gallery", images=[f, str(f), PNG])
    assert sent(echo) == {"images": [b64(PNG)] * 3}


def test_unsupported_value_type_is_rejected():
    with pytest.raises(BadRequest, match="object"):
        encode_value(object(), None, "inputs.x")


def test_call_guesses_binary_inputs_by_name(gateway, client, tmp_path):
    f = tmp_path / "cat.png"
    f.write_bytes(PNG)
    gateway.route("POST", "/v1/models/captioner/caption",
                  {"outputs": {"text": "a cat"}, "types": {"text": "text"}})
    result = client.call("captioner", "caption", image=str(f), max_new_tokens=5)
    assert sent(gateway) == {"image": b64(PNG), "max_new_tokens": 5}
    assert result.outputs == {"text": "a cat"}


def test_pipeline_types_are_fetched_once_and_refreshed_for_new_names(echo, client):
    client.run("text_to_image", prompt="a")
    client.run("caption_then_classify", image=PNG, labels=["a"])
    assert echo.count("GET", "/v1/pipelines") == 1
    echo.route("POST", "/v1/pipelines/brand_new", pipeline_result({}, {}))
    client.run("brand_new", x=1)
    client.run("brand_new", x=2)  # still unknown: looked up again, then sent untyped
    assert echo.count("GET", "/v1/pipelines") == 3
    assert sent(echo) == {"x": 2}


# ---- PIL and numpy (optional extras) -----------------------------------------------------

def test_pil_image_is_sent_as_png(echo, client):
    Image = pytest.importorskip("PIL.Image")
    client.run("caption_then_classify", image=Image.new("RGB", (3, 2), (0, 255, 0)),
               labels=["a"])
    data = base64.b64decode(sent(echo)["image"])
    assert data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(data)).size == (3, 2)
    cmyk = Image.new("CMYK", (2, 2))
    assert encode_value(cmyk, "image", "f")  # converted, PNG cannot hold CMYK


def test_numpy_uint8_array_as_image():
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    data = base64.b64decode(encode_value(np.zeros((4, 5, 3), np.uint8), "image", "f"))
    assert data.startswith(b"\x89PNG")
    with pytest.raises(BadRequest, match="uint8"):
        encode_value(np.zeros((4, 5), np.float32), "image", "f")


def test_numpy_float_audio_becomes_16k_mono_wav(echo, client):
    np = pytest.importorskip("numpy")
    samples = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 2  # clipped to [-1, 1]
    client.run("transcribe", audio=samples)
    data = base64.b64decode(sent(echo)["audio"])
    assert wav_info(data) == (1, 2, 16000, 16000)
    back, rate = decode_wav(data)
    assert rate == 16000 and back.shape == (16000,)
    assert float(abs(back).max()) <= 1.0
    assert np.allclose(back[:100], np.clip(samples[:100], -1, 1), atol=1e-3)


def test_audio_with_sample_rate_tuple_and_stereo_mixdown(echo, client):
    np = pytest.importorskip("numpy")
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.5)])  # (channels, samples)
    client.run("transcribe", audio=(stereo, 8000))
    data = base64.b64decode(sent(echo)["audio"])
    assert wav_info(data) == (1, 2, 8000, 800)
    back, _ = decode_wav(data)
    assert abs(float(back.mean())) < 1e-3


def test_wav_from_int16_and_other_ints():
    np = pytest.importorskip("numpy")
    pcm = np.array([0, 1000, -1000, 32767], np.int16)
    data = encode_wav(pcm)
    with wave.open(io.BytesIO(data)) as w:
        assert np.array_equal(np.frombuffer(w.readframes(4), "<i2"), pcm)
    u8 = encode_wav(np.array([128, 255, 0], np.uint8))
    back, _ = decode_wav(u8)
    assert back[0] == 0 and back[1] > 0.98 and back[2] < -0.99
    with pytest.raises(ValueError):
        encode_wav(np.zeros((2, 2, 2)))


def test_bad_audio_array_is_a_bad_request():
    np = pytest.importorskip("numpy")
    with pytest.raises(BadRequest, match="1-D") as info:
        encode_value(np.zeros((2, 2, 2), np.float32), "audio", "inputs.audio")
    assert info.value.field == "inputs.audio"


def test_numpy_values_for_other_types():
    np = pytest.importorskip("numpy")
    assert encode_value(np.float32(0.5), "float", "f") == 0.5
    assert encode_value(np.int64(3), "int", "f") == 3
    assert encode_value(np.array([0.25, 0.5]), "embedding", "f") == [0.25, 0.5]
    assert encode_inputs({"labels": np.array(["a", "b"])}, {"labels": "list[text]"}) == \
        {"labels": ["a", "b"]}
    with pytest.raises(BadRequest, match="dtype object"):
        encode_value(np.array([{"a": 1}], dtype=object), "json", "f")


# ---- outputs ----------------------------------------------------------------------------

def test_outputs_decoded_by_declared_type(gateway, client):
    pytest.importorskip("PIL")
    wav = b"RIFF\0\0\0\0WAVEfmt "
    gateway.route("POST", "/v1/pipelines/gallery", pipeline_result(
        {"images": [b64(PNG), b64(PNG)], "thumb": b64(PNG), "speech": b64(wav),
         "vec": [0.1, 0.2]},
        {"images": "list[image]", "thumb": "image", "speech": "audio", "vec": "embedding"}))
    out = client.run("gallery", images=[PNG]).outputs
    assert [im.size for im in out["images"]] == [(2, 1), (2, 1)]
    assert out["thumb"].size == (2, 1)
    assert out["speech"] == wav
    assert out["vec"] == [0.1, 0.2]


def test_decode_images_false_keeps_bytes(gateway):
    from fusion_client import FusionClient

    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result(
        {"image": b64(PNG)}, {"image": "image"}))
    with FusionClient(transport=gateway.transport, decode_images=False) as client:
        assert client.run("text_to_image", prompt="p").outputs["image"] == PNG


def test_undecodable_image_bytes_are_kept():
    pytest.importorskip("PIL")
    assert decode_value(b64(b"not an image"), "image") == b"not an image"
    assert decode_value("%%% not base64", "image") == "%%% not base64"


def test_sniff_extension():
    assert sniff_extension(PNG) == ".png"
    assert sniff_extension(b"\xff\xd8\xff\xe0") == ".jpg"
    assert sniff_extension(b"RIFF\0\0\0\0WAVEfmt ") == ".wav"
    assert sniff_extension(b"fLaC") == ".flac"
    assert sniff_extension(b"zzz") == ".bin"


def test_import_does_not_pull_numpy_pil_torch_or_ray():
    code = ("import sys, fusion_client, fusion_client.cli; "
            "bad = [m for m in ('numpy', 'PIL', 'torch', 'ray') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    import fusion_client

    env = {**os.environ, "PYTHONPATH": str(Path(fusion_client.__file__).parent.parent)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_request_body_is_json(echo, client):
    client.run("text_to_image", prompt="p")
    request = echo.requests[-1]
    assert request.headers["content-type"] == "application/json"
