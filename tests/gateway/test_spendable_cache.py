"""The gateway reuses a read of an account's spendable funds for at most SPENDABLE_TTL_S, renews
it off the request path once it is SPENDABLE_REFRESH_S old, and never reuses it across a
settled epoch: what a settlement debits is seen by the next request. Whatever the cache holds,
what the gateway admitted since the read is debited locally, so a spent deposit still gets 402."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway_fakes import NODES, USER
from test_gateway_http import CHAT, PRICE, SPEC, FakeNode, Network, post

from verinfer.api.schemas import ChatCompletionRequest
from verinfer.errors import ChainError
from verinfer.gateway.service import SPENDABLE_REFRESH_S, SPENDABLE_TTL_S, FundsNotCached
from verinfer.protocol import wire


def counting(net: Network) -> list[str]:
    calls: list[str] = []
    read = net.settler.spendable

    def spendable(user: str) -> int:
        calls.append(user)
        return read(user)

    net.settler.spendable = spendable  # type: ignore[method-assign]
    return calls


def refreshed(net: Network) -> None:
    """Wait until the background reads queued so far are done (the refresher is one thread)."""
    net.service.spendable_refresher.submit(lambda: None).result(timeout=10)


def test_reads_are_reused_then_renewed_in_the_background_then_read_again(
        tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    calls = counting(net)
    now = [1000.0]
    net.service.clock = lambda: now[0]
    assert net.service.spendable(USER.address) == 10**9
    net.settler.balances[USER.address.lower()] = 5
    now[0] += SPENDABLE_REFRESH_S / 2
    assert net.service.spendable(USER.address) == 10**9  # fresh: reused, nothing read
    refreshed(net)
    assert len(calls) == 1
    now[0] += SPENDABLE_REFRESH_S / 2
    assert net.service.spendable(USER.address) == 10**9  # old: still used, read again behind
    refreshed(net)
    assert len(calls) == 2
    assert net.service.spendable(USER.address) == 5  # the background read took over
    now[0] += SPENDABLE_TTL_S
    net.settler.balances[USER.address.lower()] = 3
    assert net.service.spendable(USER.address) == 3  # past the TTL: read on the request path
    assert len(calls) == 3


def test_one_background_read_at_a_time_per_account(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    now = [1000.0]
    net.service.clock = lambda: now[0]
    assert net.service.spendable(USER.address) == 10**9
    calls = counting(net)
    release = threading.Event()
    read = net.settler.spendable

    def slow(user: str) -> int:
        release.wait(timeout=10)
        return read(user)

    net.settler.spendable = slow  # type: ignore[method-assign]
    now[0] += SPENDABLE_REFRESH_S
    for _ in range(5):
        assert net.service.spendable(USER.address) == 10**9
    release.set()
    refreshed(net)
    assert len(calls) == 1


def test_a_failed_background_read_is_retried_on_the_request_path_after_the_ttl(
        tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    now = [1000.0]
    net.service.clock = lambda: now[0]
    assert net.service.spendable(USER.address) == 10**9

    def down(user: str) -> int:
        raise ChainError("the chain does not answer")

    net.settler.spendable = down  # type: ignore[method-assign]
    now[0] += SPENDABLE_REFRESH_S
    assert net.service.spendable(USER.address) == 10**9
    refreshed(net)
    now[0] += SPENDABLE_TTL_S
    try:
        net.service.spendable(USER.address)
    except ChainError:
        pass
    else:
        raise AssertionError("a read past the TTL must not fall back on the old value")


def test_a_settled_epoch_drops_the_cached_read(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    calls = counting(net)
    net.service.clock = lambda: 1000.0  # the read never ages here
    assert net.service.spendable(USER.address) == 10**9
    net.store.add_receipt(b"\x01" * 32, USER.address, NODES[0].address, 7, {})
    epoch = net.store.close_epoch(wire.receipts_root)
    net.store.mark_committed(epoch.epoch, "0xc0")
    net.store.set_beacon(epoch.epoch, b"\x02" * 32)
    net.store.mark_decided(epoch.epoch)
    net.settler.balances[USER.address.lower()] = 3
    assert net.service.spendable(USER.address) == 10**9  # nothing settled yet: reused
    net.store.mark_settled(epoch.epoch, "0x5e")
    assert net.service.spendable(USER.address) == 3
    assert len(calls) == 2


def test_a_cached_read_never_lets_a_user_spend_past_the_deposit(tmp_path: Path) -> None:
    """The deposit covers two requests at their longest; the read that said so is reused and
    renewed in the background between requests; the third request is refused all the same,
    because the two receipts the gateway holds are debited from every read."""
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    prompt_len = len(SPEC.prompts.chat(ChatCompletionRequest.model_validate(CHAT).messages))
    net.settler.balances[USER.address.lower()] = PRICE * (prompt_len + 12) * 2
    now = [1000.0]
    net.service.clock = lambda: now[0]
    calls = counting(net)
    for _ in range(2):
        assert post(net, "/v1/chat/completions", CHAT).status_code == 200
        refreshed(net)
        now[0] += (SPENDABLE_REFRESH_S + SPENDABLE_TTL_S) / 2  # the next one renews the read
    third = post(net, "/v1/chat/completions", CHAT)
    assert third.status_code == 402 and "deposit" in third.json()["error"]["message"]
    refreshed(net)
    assert len(calls) == 3  # one read on the request path, then one renewal behind each request
    assert net.store.count_receipts() == 2


def test_preparing_without_a_chain_read_changes_nothing_when_no_read_is_cached(
        tmp_path: Path) -> None:
    """The event loop prepares a request only from a cached read; without one it is told so
    before anything is admitted or reserved, and the request is prepared again off the loop."""
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    calls = counting(net)
    body = ChatCompletionRequest.model_validate(CHAT)
    try:
        net.service.prepare(USER.address, body, read_chain=False)
    except FundsNotCached:
        pass
    else:
        raise AssertionError("prepared without a read of the funds")
    assert calls == [] and net.service._reserved == {} and net.service._admitted == {}
    prepared = net.service.prepare(USER.address, body)  # reads the chain
    assert net.service.prepare(USER.address, body, read_chain=False).max_fee == prepared.max_fee
    assert len(calls) == 1
