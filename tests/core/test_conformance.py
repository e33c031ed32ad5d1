"""The conformance vectors in docs/vectors: the code produces them exactly,
and they say what an implementation reading them must do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reliable_tcp.testing import conformance
from reliable_tcp.core import frames as f

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text())  # type: ignore[no-any-return]


def test_the_stored_vectors_are_what_the_code_produces() -> None:
    # A change to the codec or the engine that changes a byte on the wire
    # shows up here; regenerate with `python -m reliable_tcp.testing.conformance write docs/vectors`
    # only when the change is meant (and docs/protocol.md says so).
    assert conformance.check(str(VECTORS)) == []


@pytest.mark.parametrize("vector", load("frames.json"), ids=lambda v: v["name"])
def test_every_frame_vector_decodes_to_its_fields_and_encodes_back(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    (frame,) = f.FrameDecoder(1 << 20).feed(data)
    assert conformance.describe(frame) == vector["frame"]
    assert f.encode(frame) == data


@pytest.mark.parametrize("vector", load("bad-frames.json"), ids=lambda v: v["name"])
def test_every_bad_frame_gets_its_verdict_however_it_is_split(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert conformance.verdict_of(data, vector["limit"]) == vector["verdict"]
    decoder = f.FrameDecoder(vector["limit"])
    with pytest.raises(f.FrameError):
        for i in range(len(data)):  # byte by byte: the verdict comes as soon as the bytes allow
            decoder.feed(data[i : i + 1])


def test_transcripts_cover_every_reject_code_and_every_frame_type() -> None:
    transcripts = load("transcripts.json")
    seen_types = {frame["type"] for t in transcripts for step in t["steps"] for frame in step.get("frames", [])}
    seen_rejects = {
        frame["reason"] for t in transcripts for step in t["steps"] for frame in step.get("frames", [])
        if frame["type"] == "REJECT"
    }
    assert seen_types == {t.name for t in f.FrameType}
    expected = {r.name for r in f.RejectReason} - {"UNSUPPORTED_VERSION", "HANDSHAKE_TIMEOUT"}  # no engine sends these
    assert expected <= seen_rejects


@pytest.mark.parametrize("transcript", load("transcripts.json"), ids=lambda t: t["name"])
def test_every_transcript_step_is_exactly_its_frames(transcript: dict[str, Any]) -> None:
    for step in transcript["steps"]:
        if "hex" in step:
            frames = f.FrameDecoder(1 << 24).feed(bytes.fromhex(step["hex"]))
            assert [conformance.describe(x) for x in frames] == step["frames"]


PLAYABLE = [t for t in load("transcripts.json") if conformance.client_playable(t)]


def test_all_but_the_transcripts_with_a_broken_client_are_playable_from_the_client_role() -> None:
    broken = {t["name"] for t in load("transcripts.json")} - {t["name"] for t in PLAYABLE}
    assert broken == {"reject PROTOCOL_ERROR", "reject BAD_SEQUENCE"}  # their client bytes are injected


@pytest.mark.parametrize("transcript", PLAYABLE, ids=lambda t: t["name"])
def test_the_client_role_replays_from_the_transcript_alone(transcript: dict[str, Any]) -> None:
    """Issue 25, item 10: a transcript says enough (config, tokens, the
    application's calls, the clock, the connection events) for a fresh
    client to write exactly the client's steps."""
    assert conformance.replay_client(transcript) == []
