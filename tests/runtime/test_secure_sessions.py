"""The server's secure aggregators against nodes that lie: what they cannot use is ignored, never trusted."""

from __future__ import annotations

import numpy as np
from conftest import with_sections

from geofed_secure.runtime.secure import SecureInputLayout, in_process
from geofed_secure.runtime.transcript import Transcript
from geofed_secure.wire.round import AggregateRelease, encode_message

ANCHOR_DIGEST = "ab" * 32


def _round(config, inputs_scale=0.1, silent=()):
    aggregator, sessions = in_process(config, ANCHOR_DIGEST, seed=1)
    layout = SecureInputLayout.for_round({"m.lora_B": np.zeros((2, 3), np.float32)}, 4, clip=config.secure.clip)
    rng = np.random.default_rng(0)
    vectors = {k: rng.uniform(-inputs_scale, inputs_scale, layout.length) for k in sessions}
    transcript = Transcript()
    opening = aggregator.open(1, layout, tuple(sessions), transcript)
    for node_id, session in sessions.items():
        if node_id in silent:
            continue
        aggregator.receive(1, node_id, session.open(opening[node_id], vectors[node_id], layout).blob, transcript)
    return aggregator, sessions, layout, vectors, transcript, opening


def test_ckks_ignores_a_release_off_the_layout_and_asks_the_next_contributor(tiny_config):
    config = with_sections(tiny_config, secure={"protocol": "ckks", "clip": 100.0})
    aggregator, sessions, layout, vectors, transcript, _ = _round(config)
    asked = aggregator.next_stage(1, transcript)
    (first,) = asked
    sums = {k: np.zeros(v.shape, np.float32) for k, v in layout.unflatten(np.zeros(layout.length)).items()}
    field = next(k for k, v in sums.items() if v.ndim == 2)
    sums[field] = sums[field].T.copy()  # every field named right, one transposed
    forged = AggregateRelease(federation_id=config.federation.id, round=1, node_id=first, anchor_digest=ANCHOR_DIGEST,
                              contributors=tuple(sorted(sessions)), sums=sums)
    aggregator.receive(1, first, encode_message(forged), transcript)  # the wrong shape: ignored
    second = aggregator.next_stage(1, transcript)
    assert list(second) != [first]  # the next contributor in id order is asked
    (node_id, blob), = second.items()
    aggregator.receive(1, node_id, sessions[node_id].step(blob).blob, transcript)
    assert aggregator.next_stage(1, transcript) == {}
    result = aggregator.result(1, layout, tuple(sessions))
    expected = layout.unflatten(sum(vectors.values()))
    for key, value in expected.items():
        np.testing.assert_allclose(result.sums[key], value, atol=1e-4, err_msg=key)


def test_masking_ignores_a_message_sent_in_another_nodes_name(tiny_config):
    config = with_sections(tiny_config, secure={"protocol": "masking"})
    aggregator, sessions, layout, vectors, transcript, opening = _round(config, silent=("img-a", "tab"))
    # neither img-a nor tab has answered; img-a's channel now carries tab's (valid, signed) key advertisement
    tab_advert = sessions["tab"].open(opening["tab"], vectors["tab"], layout).blob
    aggregator.receive(1, "img-a", tab_advert, transcript)
    assert "img-a" not in aggregator._answered and "tab" not in aggregator.server._adverts  # taken for nobody
    aggregator.receive(1, "tab", tab_advert, transcript)  # on tab's own channel it counts
    assert "tab" in aggregator._answered
