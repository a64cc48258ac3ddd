"""run_verify's reference cache (the float64 side of a clip computed once per checkpoint, reused by every artifact
of it) and the manifest's clip selection."""

from __future__ import annotations



from compiler import verify
from compiler.verify import Clip, clips_from_manifest, reference_key, run_verify

CLIP = "short/ljspeech_LJ001-0002.flac"  # 1.9 s


def test_reference_key_changes_with_what_the_reference_depends_on(data, tmp_path):
    clip = data / CLIP
    key = reference_key("ck", "numpy", clip, None, [1, 2], {"eot": 1})
    assert key == reference_key("ck", "numpy", clip, None, [2, 1], {"eot": 1})  # order of the suppress list
    others = [reference_key("ck2", "numpy", clip, None, [1, 2], {"eot": 1}),
              reference_key("ck", "transformers", clip, None, [1, 2], {"eot": 1}),
              reference_key("ck", "numpy", data / "short/jfk.flac", None, [1, 2], {"eot": 1}),
              reference_key("ck", "numpy", clip, "en", [1, 2], {"eot": 1}),
              reference_key("ck", "numpy", clip, None, [1], {"eot": 1}),
              reference_key("ck", "numpy", clip, None, [1, 2], {"eot": 2})]
    assert len({key, *others}) == 7
    copy = tmp_path / "copy.flac"  # the clip's bytes, not its name
    copy.write_bytes(clip.read_bytes())
    assert reference_key("ck", "numpy", copy, None, [1, 2], {"eot": 1}) == key


def test_clips_from_manifest_selection(data):
    path = data / "manifest.jsonl"
    texted = clips_from_manifest(path, english_only=True)
    every = clips_from_manifest(path, english_only=True, every=True)
    assert all(c.text and c.language == "en" for c in texted)
    assert {c.path for c in texted} < {c.path for c in every}
    assert any("edge/" in str(c.path) and c.language is None for c in every)  # silence has no language
    assert not any(c.language not in ("en", None) for c in every)
    multi = clips_from_manifest(path, english_only=False, every=True)
    assert any(c.language == "zh" and c.text is None for c in multi)


def test_verify_reference_cache(tiny_en_artifact, tiny_en_checkpoint, data, tmp_path, monkeypatch):
    clips = [Clip(data / CLIP, "in being comparatively modern.", "en")]
    cache = tmp_path / "cache"
    first = run_verify(tiny_en_artifact, tiny_en_checkpoint, clips, log=lambda s: None, cache=cache)
    assert first["reference_cache"]["computed"] == 1 and first["passed"]
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    def no_reference(*a, **k):
        raise AssertionError("the cached reference was not used")

    monkeypatch.setattr(verify, "make_reference", no_reference)
    again = run_verify(tiny_en_artifact, tiny_en_checkpoint, clips, log=lambda s: None, cache=cache)
    assert again["reference_cache"] == {"folder": str(cache), "hits": 1, "computed": 0}
    assert again["worst"] == first["worst"] and again["clips"][0]["ref_tokens"] == first["clips"][0]["ref_tokens"]
    assert again["clips"][0]["tokens"] == again["clips"][0]["ref_tokens"]
    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:1000])  # a write cut short: computed again, not an error
    third = run_verify(tiny_en_artifact, tiny_en_checkpoint, clips, log=lambda s: None, cache=cache)
    assert third["reference_cache"]["computed"] == 1 and third["worst"] == first["worst"]
