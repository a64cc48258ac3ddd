"""``mwc verify --reference onnxruntime``: an ONNX export's own graphs run by onnxruntime, behind the numpy
reference's encode/decode interface. Checked on a tiny random export (tests/test_readers_more.export_onnx) against
the numpy float64 reference built from what the ONNX reader made of the same export."""

from __future__ import annotations

import numpy as np
import pytest
from test_readers_more import export_onnx

from compiler.errors import MwcError
from compiler.readers import load_checkpoint
from compiler.reference import NumpyWhisper


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def add_present_outputs(folder, ck) -> None:
    """Re-export the decoder as optimum's with-cache exports look: logits plus present.N.encoder.key/value."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from compiler.reference_hf import TransformersWhisper

    model = TransformersWhisper(ck).model.to(torch.float32)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.proj_out = model.model, model.proj_out

        def forward(self, input_ids, encoder_hidden_states):
            h = self.model.decoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   encoder_hidden_states=encoder_hidden_states, use_cache=False, return_dict=False)[0]
            layer = self.model.decoder.layers[0].encoder_attn
            b, t, _ = encoder_hidden_states.shape
            heads = lambda x: x.view(b, t, 2, -1).transpose(1, 2)  # noqa: E731
            return (self.proj_out(h), heads(layer.k_proj(encoder_hidden_states)),
                    heads(layer.v_proj(encoder_hidden_states)))

    del transformers
    with torch.no_grad():
        torch.onnx.export(Decoder(), (torch.tensor([[50258, 50259]]), torch.randn(1, 1500, 64)),
                          str(folder / "decoder_model.onnx"), input_names=["input_ids", "encoder_hidden_states"],
                          output_names=["logits", "present.0.encoder.key", "present.0.encoder.value"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}, opset_version=17,
                          do_constant_folding=True, dynamo=False)


@pytest.mark.parametrize("present", [False, True], ids=["logits-only", "present-outputs"])
def test_onnxruntime_reference_matches_numpy(tmp_path, present):
    pytest.importorskip("onnxruntime")
    from compiler.reference_ort import OnnxRuntimeWhisper

    export_onnx(tmp_path / "onnx", randomize=True)
    ck = load_checkpoint(str(tmp_path / "onnx"))
    if present:
        add_present_outputs(tmp_path / "onnx", ck)
        ck = load_checkpoint(str(tmp_path / "onnx"))
    ort, ref = OnnxRuntimeWhisper(ck), NumpyWhisper(ck)
    assert ("present.0.encoder.key" in ort._outputs) == present
    mel = np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32) * 0.5
    got, want = ort.encode(mel), ref.encode(mel)
    assert rel(got["xa"], want["xa"]) < 1e-4
    for (k, v), (wk, wv) in zip(got["cross"], want["cross"]):
        assert k.shape == wk.shape and rel(k, wk) < 1e-4 and rel(v, wv) < 1e-4
    tokens = np.array([[50258, 50259, 50359, 440, 1029]], dtype=np.int64)
    logits, _ = ort.decode(tokens, got, None)
    want_logits, _ = ref.decode(tokens, want, None)
    assert logits.shape == want_logits.shape and rel(logits, want_logits) < 1e-4
    # the "cache" is the prefix: two steps give the one-pass logits
    first, cache = ort.decode(tokens[:, :3], got, None)
    rest, _ = ort.decode(tokens[:, 3:], got, cache)
    np.testing.assert_allclose(np.concatenate([first, rest], 1), logits, rtol=0, atol=1e-5)


def test_onnxruntime_reference_needs_an_onnx_checkpoint(tiny_en_checkpoint):
    from compiler.verify import make_reference

    with pytest.raises(MwcError) as e:
        make_reference("onnxruntime", tiny_en_checkpoint)
    assert "\n" not in str(e.value) and "ct2" in str(e.value) and "--reference numpy" in str(e.value)
