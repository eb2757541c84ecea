"""Bad signed input at the node changes nothing: a refused job or challenge (bad signature,
for another node or validator, expired, not the request signed) burns no nonce, so the
gateway's genuine message with that nonce is still served; a replay is refused with 409.
(Status codes of plain bad requests: test_server.py's `test_bad_input_gets_a_4xx_envelope`.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_server import (
    DOMAIN,
    GATEWAY_KEY,
    OTHER_KEY,
    RunningNode,
    _bundle,
    _challenge,
    _job,
    _job_body,
    _post,
    _verify_body,
    node,  # noqa: F401  (the fixture)
)

from verinfer.protocol import wire

PROMPT = [90, 91, 92]


@pytest.mark.parametrize(("nonce", "job_args", "body_args", "status", "fragment"), [
    (601, {"key": OTHER_KEY}, {}, 401, "signed by"),  # bad signature on the gateway's name
    (602, {"node_address": wire.address_of(OTHER_KEY)}, {}, 403, "node"),  # another node's job
    (603, {"deadline": 1000}, {}, 403, "deadline"),  # expired
    (604, {}, {"max_tokens": 7}, 403, "does not commit to this request"),
])
def test_a_refused_job_burns_no_nonce(node: RunningNode, nonce: int,  # noqa: F811
                                     job_args: dict[str, Any], body_args: dict[str, Any], status: int,
                                     fragment: str) -> None:
    bad = _post(node, "/v1/completions",
                _job_body(node, PROMPT, _job(node, PROMPT, nonce=nonce, **job_args), **body_args))
    assert bad.status_code == status, bad.text
    assert fragment in bad.json()["error"]["message"]
    good = _post(node, "/v1/completions", _job_body(node, PROMPT, _job(node, PROMPT, nonce=nonce)))
    assert good.status_code == 200, good.text  # the genuine job with that nonce still runs
    again = _post(node, "/v1/completions", _job_body(node, PROMPT, _job(node, PROMPT, nonce=nonce)))
    assert again.status_code == 409 and "already served" in again.json()["error"]["message"]


def test_a_refused_challenge_burns_no_nonce(node: RunningNode) -> None:  # noqa: F811
    served = _post(node, "/v1/completions", _job_body(node, PROMPT, _job(node, PROMPT, nonce=650)))
    assert served.status_code == 200, served.text
    bundle = _bundle(served.json()["verinfer"])
    output = list(bundle.output_token_ids)
    forged = wire.Challenge(
        receipt=bundle.receipt_id, request=bundle.request.hash_struct(),
        output_hash=wire.output_hash(output), validator=node.address,
        gateway=wire.address_of(GATEWAY_KEY), nonce=651, deadline=int(time.time()) + 60)
    signed = wire.Signed(forged, wire.sign(DOMAIN, forged, OTHER_KEY)).to_json()
    refused = _post(node, "/verify", _verify_body(bundle, signed, output))
    assert refused.status_code == 401 and "signed by" in refused.json()["error"]["message"]
    elsewhere = _challenge(node, bundle, output, 651, validator=wire.address_of(OTHER_KEY))
    refused = _post(node, "/verify", _verify_body(bundle, elsewhere, output))
    assert refused.status_code == 403 and "validator" in refused.json()["error"]["message"]
    genuine = _challenge(node, bundle, output, 651)
    assert _post(node, "/verify", _verify_body(bundle, genuine, output)).status_code == 200
    replayed = _post(node, "/verify", _verify_body(bundle, genuine, output))
    assert replayed.status_code == 409 and "already answered" in replayed.json()["error"]["message"]
