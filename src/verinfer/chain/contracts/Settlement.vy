# pragma version 0.4.3
"""
@title verinfer settlement
@notice Stakes, user deposits, per-epoch settlement batches, slashing and reputation of the
        verinfer network. Implements docs/settlement-rules.md (protocol version 1) exactly;
        the same rules exist as pure functions in verinfer.protocol.settlement and both are
        checked against tests/vectors/protocol/settlement-v1.json.
@dev Money invariant: self.balance == sum(balances) + sum(stakes) + sum(unbonding.amount)
     + treasury. Value enters only through deposit, stake (its msg.value is a deposit) and
     fund_treasury; it leaves only through withdraw, which pays the caller at most its own
     balance (pull pattern: state updated before the transfer, under a reentrancy lock).
     Nobody, the owner included, can move a balance, a stake or the treasury except by the
     settlement rules. Slash rule: of each slash S of a faulty asserter, the wronged user is
     refunded min(fee, S), challenger_share_bps of the rest is split equally between the
     validators who challenged it (floor) and the remainder goes to the treasury; of each slash
     of a faulty validator, challenger_share_bps goes to the asserter it wrongly challenged and
     the remainder to the treasury. Nothing is burnt.
"""

BPS: constant(uint256) = 10_000
MAX_VALIDATORS: constant(uint256) = 16
# ABI bound of the validator lists: above MAX_VALIDATORS so that an oversized list reverts with
# the rule's own string ("bad validator count") instead of an ABI decoding failure.
MAX_VALIDATOR_LIST: constant(uint256) = 32
MAX_REQUESTS: constant(uint256) = 1024
MAX_CHALLENGES: constant(uint256) = 32
MAX_PROOF_DEPTH: constant(uint256) = 64
MAX_LEAF_BYTES: constant(uint256) = 4096
MAX_ENDPOINT_BYTES: constant(uint256) = 256

# Challenge outcomes, as numbered in verinfer.protocol.settlement.
PASSED: constant(uint8) = 0
ASSERTER_FAULT: constant(uint8) = 1
VALIDATOR_FAULT: constant(uint8) = 2

flag Role:
    SETTLER
    ARBITER
    PAUSER

struct Params:
    min_stake: uint256
    unbonding_delay: uint256
    reward_asserter: uint256
    reward_validators: uint256
    slash: uint256
    protocol_fee_bps: uint256
    discount_bps: uint256
    challenger_share_bps: uint256

struct Unbonding:
    amount: uint256
    release_time: uint256

struct Reputation:
    served: uint256
    challenged: uint256
    passed: uint256
    failed: uint256

struct Node:
    pubkey: bytes32
    endpoint: String[MAX_ENDPOINT_BYTES]
    registered_at: uint256

struct RequestEntry:
    user: address
    asserter: address
    fee: uint256

struct ChallengeEntry:
    user: address
    asserter: address
    fee: uint256
    validators: DynArray[address, MAX_VALIDATOR_LIST]
    outcome: uint8
    faulty_validators: DynArray[address, MAX_VALIDATOR_LIST]

event OwnershipTransferred:
    previous_owner: indexed(address)
    new_owner: indexed(address)

event RoleGranted:
    account: indexed(address)
    role: Role
    sender: indexed(address)

event RoleRevoked:
    account: indexed(address)
    role: Role
    sender: indexed(address)

event Paused:
    account: indexed(address)

event Unpaused:
    account: indexed(address)

event ParamsSet:
    min_stake: uint256
    unbonding_delay: uint256
    reward_asserter: uint256
    reward_validators: uint256
    slash: uint256
    protocol_fee_bps: uint256
    discount_bps: uint256
    challenger_share_bps: uint256

event Deposited:
    sender: indexed(address)
    beneficiary: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event TreasuryFunded:
    sender: indexed(address)
    amount: uint256

event NodeRegistered:
    node: indexed(address)
    pubkey: bytes32
    endpoint: String[MAX_ENDPOINT_BYTES]

event EndpointUpdated:
    node: indexed(address)
    endpoint: String[MAX_ENDPOINT_BYTES]

event Staked:
    node: indexed(address)
    amount: uint256
    total: uint256



event UnstakeRequested:
    node: indexed(address)
    amount: uint256
    release_time: uint256

event UnbondingReleased:
    node: indexed(address)
    amount: uint256

event BatchSettled:
    epoch: indexed(uint256)
    receipts_root: bytes32
    requests: uint256
    challenges: uint256
    fees: uint256

event ChallengeSettled:
    epoch: indexed(uint256)
    asserter: indexed(address)
    user: indexed(address)
    outcome: uint8
    fee: uint256

event DisputeSettled:
    dispute_id: indexed(bytes32)
    asserter: indexed(address)
    outcome: uint8

event Slashed:
    node: indexed(address)
    epoch: indexed(uint256)
    amount: uint256
    to_challengers: uint256
    to_user: uint256
    to_treasury: uint256

owner: public(address)
roles: public(HashMap[address, Role])
paused: public(bool)
params: public(Params)

balances: public(HashMap[address, uint256])
stakes: public(HashMap[address, uint256])
unbonding: public(HashMap[address, Unbonding])
treasury: public(uint256)
reputation: public(HashMap[address, Reputation])

nodes: public(HashMap[address, Node])
node_count: public(uint256)
node_at: public(HashMap[uint256, address])

# One storage slot per settled epoch (its receipts root) keeps the per-request cost small;
# counts and totals of a batch are in its BatchSettled event. A root of zero is legal in the
# rules, so that rare case also marks the epoch in `zero_root_settled`.
batch_roots: public(HashMap[uint256, bytes32])
zero_root_settled: HashMap[uint256, bool]
last_epoch: public(uint256)
disputes_settled: public(HashMap[bytes32, bool])


@deploy
def __init__(params: Params):
    self.owner = msg.sender
    log OwnershipTransferred(previous_owner=empty(address), new_owner=msg.sender)
    self._set_params(params)
    initial: Role = Role.SETTLER | Role.ARBITER | Role.PAUSER
    self.roles[msg.sender] = initial
    log RoleGranted(account=msg.sender, role=initial, sender=msg.sender)


# ---------------------------------------------------------------- roles and parameters

@internal
@view
def _only_owner():
    assert msg.sender == self.owner, "caller is not the owner"


@internal
@view
def _only_role(role: Role, message: String[40]):
    assert role in self.roles[msg.sender], message


@internal
@view
def _not_paused():
    assert not self.paused, "paused"


@internal
def _set_params(p: Params):
    assert p.unbonding_delay > 0, "unbonding delay must be positive"
    assert p.slash <= p.min_stake, "slash exceeds min stake"
    assert p.protocol_fee_bps <= BPS, "protocol fee above 10000 bps"
    assert p.discount_bps <= BPS, "discount above 10000 bps"
    assert p.challenger_share_bps <= BPS, "challenger share above 10000 bps"
    self.params = p
    log ParamsSet(
        min_stake=p.min_stake,
        unbonding_delay=p.unbonding_delay,
        reward_asserter=p.reward_asserter,
        reward_validators=p.reward_validators,
        slash=p.slash,
        protocol_fee_bps=p.protocol_fee_bps,
        discount_bps=p.discount_bps,
        challenger_share_bps=p.challenger_share_bps,
    )


@external
def set_params(params: Params):
    self._only_owner()
    self._set_params(params)


@external
def transfer_ownership(new_owner: address):
    self._only_owner()
    assert new_owner != empty(address), "new owner is the zero address"
    log OwnershipTransferred(previous_owner=self.owner, new_owner=new_owner)
    self.owner = new_owner


@external
def grant_role(account: address, role: Role):
    self._only_owner()
    self.roles[account] |= role
    log RoleGranted(account=account, role=role, sender=msg.sender)


@external
def revoke_role(account: address, role: Role):
    self._only_owner()
    self.roles[account] &= ~role
    log RoleRevoked(account=account, role=role, sender=msg.sender)


@external
def pause():
    self._only_role(Role.PAUSER, "caller is not a pauser")
    assert not self.paused, "paused"
    self.paused = True
    log Paused(account=msg.sender)


@external
def unpause():
    self._only_role(Role.PAUSER, "caller is not a pauser")
    assert self.paused, "not paused"
    self.paused = False
    log Unpaused(account=msg.sender)


# ---------------------------------------------------------------- funds in and out

@internal
def _credit_deposit(beneficiary: address, amount: uint256):
    assert beneficiary != empty(address), "beneficiary is the zero address"
    self.balances[beneficiary] += amount
    log Deposited(sender=msg.sender, beneficiary=beneficiary, amount=amount)


@external
@payable
def deposit(beneficiary: address = msg.sender):
    self._not_paused()
    assert msg.value > 0, "zero amount"
    self._credit_deposit(beneficiary, msg.value)


@external
@payable
def fund_treasury():
    self._not_paused()
    assert msg.value > 0, "zero amount"
    self.treasury += msg.value
    log TreasuryFunded(sender=msg.sender, amount=msg.value)


@external
@payable
def stake(amount: uint256):
    """
    @notice Bond `amount` of the caller's balance as stake; any value sent is deposited first.
    """
    self._not_paused()
    if msg.value > 0:
        self._credit_deposit(msg.sender, msg.value)
    assert amount > 0, "zero amount"
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    self.stakes[msg.sender] += amount
    log Staked(node=msg.sender, amount=amount, total=self.stakes[msg.sender])


@external
def unstake(amount: uint256):
    # Unbonding stake stays slashable until released; a new request restarts the delay for
    # the whole unbonding amount, so nothing leaves earlier than `unbonding_delay`.
    self._not_paused()
    assert amount > 0, "zero amount"
    assert self.stakes[msg.sender] >= amount, "insufficient stake"
    self.stakes[msg.sender] -= amount
    release: uint256 = block.timestamp + self.params.unbonding_delay
    self.unbonding[msg.sender] = Unbonding(
        amount=self.unbonding[msg.sender].amount + amount, release_time=release
    )
    log UnstakeRequested(node=msg.sender, amount=amount, release_time=release)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @notice Pay `amount` of the caller's balance to the caller, after moving its matured
            unbonding stake (if any) into that balance.
    @dev Allowed while paused: a pause must never lock anyone out of what they are owed.
    """
    assert amount > 0, "zero amount"
    u: Unbonding = self.unbonding[msg.sender]
    if u.amount > 0 and block.timestamp >= u.release_time:
        self.balances[msg.sender] += u.amount
        self.unbonding[msg.sender] = empty(Unbonding)
        log UnbondingReleased(node=msg.sender, amount=u.amount)
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ---------------------------------------------------------------- node registry

@external
def register(pubkey: bytes32, endpoint: String[MAX_ENDPOINT_BYTES]):
    """
    @notice Record the caller's Ed25519 public key and endpoint. Identity only: stake is bonded
            with `stake`, and a node is active when registered with at least `min_stake`.
    """
    self._not_paused()
    assert self.nodes[msg.sender].registered_at == 0, "already registered"
    assert pubkey != empty(bytes32), "empty public key"
    self.nodes[msg.sender] = Node(pubkey=pubkey, endpoint=endpoint, registered_at=block.timestamp)
    self.node_at[self.node_count] = msg.sender
    self.node_count += 1
    log NodeRegistered(node=msg.sender, pubkey=pubkey, endpoint=endpoint)


@external
def set_endpoint(endpoint: String[MAX_ENDPOINT_BYTES]):
    self._not_paused()
    assert self.nodes[msg.sender].registered_at != 0, "not registered"
    self.nodes[msg.sender].endpoint = endpoint
    log EndpointUpdated(node=msg.sender, endpoint=endpoint)


@external
@view
def is_active(node: address) -> bool:
    return self.nodes[node].registered_at != 0 and self.stakes[node] >= self.params.min_stake


# ---------------------------------------------------------------- settlement

@internal
def _slash(node: address, amount: uint256):
    # Stake first, then the unbonding amount: unstaking does not escape a pending slash.
    stake_now: uint256 = self.stakes[node]
    assert stake_now + self.unbonding[node].amount >= amount, "slash exceeds stake"
    from_stake: uint256 = min(amount, stake_now)
    self.stakes[node] = stake_now - from_stake
    self.unbonding[node].amount -= amount - from_stake


@internal
def _apply_request(r: RequestEntry):
    assert self.balances[r.user] >= r.fee, "insufficient balance"
    cut: uint256 = r.fee * self.params.protocol_fee_bps // BPS
    self.balances[r.user] -= r.fee
    self.balances[r.asserter] += r.fee - cut
    self.treasury += cut
    self.reputation[r.asserter].served += 1


@internal
@pure
def _check_challenge(c: ChallengeEntry):
    # Same checks, same order, same strings as verinfer.protocol.settlement._check_challenge.
    assert c.outcome <= VALIDATOR_FAULT, "unknown outcome"
    n: uint256 = len(c.validators)
    assert n >= 1 and n <= MAX_VALIDATORS, "bad validator count"
    for i: uint256 in range(n, bound=MAX_VALIDATOR_LIST):
        for j: uint256 in range(i, bound=MAX_VALIDATOR_LIST):
            assert c.validators[j] != c.validators[i], "duplicate validator"
    nf: uint256 = len(c.faulty_validators)
    for i: uint256 in range(nf, bound=MAX_VALIDATOR_LIST):
        for j: uint256 in range(i, bound=MAX_VALIDATOR_LIST):
            assert c.faulty_validators[j] != c.faulty_validators[i], "duplicate validator"
    assert c.asserter not in c.validators, "asserter is validator"
    for f: address in c.faulty_validators:
        assert f in c.validators, "faulty not a validator"
    assert (nf > 0) == (c.outcome == VALIDATOR_FAULT), "bad faulty validators"


@internal
def _apply_challenge(c: ChallengeEntry, epoch: uint256):
    self._check_challenge(c)
    p: Params = self.params
    n: uint256 = len(c.validators)
    per_validator: uint256 = p.reward_validators // n
    discount: uint256 = c.fee * p.discount_bps // BPS

    if c.outcome == ASSERTER_FAULT:
        self._slash(c.asserter, p.slash)
        refund: uint256 = min(c.fee, p.slash)
        rest: uint256 = p.slash - refund
        share: uint256 = rest * p.challenger_share_bps // BPS // n
        self.balances[c.user] += refund
        for v: address in c.validators:
            self.balances[v] += share
        self.treasury += rest - share * n
        self.reputation[c.asserter].challenged += 1
        self.reputation[c.asserter].failed += 1
        log Slashed(
            node=c.asserter,
            epoch=epoch,
            amount=p.slash,
            to_challengers=share * n,
            to_user=refund,
            to_treasury=rest - share * n,
        )
    else:
        # PASSED and VALIDATOR_FAULT: the asserter was right. Payouts first (the treasury check
        # sees the treasury before the slashes below refill it), then the slashes in list order.
        honest: uint256 = n - len(c.faulty_validators)
        payout: uint256 = p.reward_asserter + per_validator * honest + discount
        assert self.treasury >= payout, "insufficient treasury"
        self.treasury -= payout
        self.balances[c.asserter] += p.reward_asserter
        for v: address in c.validators:
            if v not in c.faulty_validators:
                self.balances[v] += per_validator
        self.balances[c.user] += discount
        self.reputation[c.asserter].challenged += 1
        self.reputation[c.asserter].passed += 1
        to_asserter: uint256 = p.slash * p.challenger_share_bps // BPS
        for f: address in c.faulty_validators:
            self._slash(f, p.slash)
            self.balances[c.asserter] += to_asserter
            self.treasury += p.slash - to_asserter
            self.reputation[f].failed += 1
            log Slashed(
                node=f,
                epoch=epoch,
                amount=p.slash,
                to_challengers=to_asserter,
                to_user=0,
                to_treasury=p.slash - to_asserter,
            )
    log ChallengeSettled(
        epoch=epoch, asserter=c.asserter, user=c.user, outcome=c.outcome, fee=c.fee
    )


@external
@view
def epoch_settled(epoch: uint256) -> bool:
    return self.batch_roots[epoch] != empty(bytes32) or self.zero_root_settled[epoch]


@external
def settle_batch(
    epoch: uint256,
    receipts_root: bytes32,
    requests: DynArray[RequestEntry, MAX_REQUESTS],
    challenges: DynArray[ChallengeEntry, MAX_CHALLENGES],
):
    self._only_role(Role.SETTLER, "caller is not a settler")
    self._not_paused()
    assert self.batch_roots[epoch] == empty(bytes32), "epoch already settled"
    assert not self.zero_root_settled[epoch], "epoch already settled"
    fees: uint256 = 0
    for r: RequestEntry in requests:
        self._apply_request(r)
        fees += r.fee
    for c: ChallengeEntry in challenges:
        self._apply_challenge(c, epoch)
    if receipts_root == empty(bytes32):
        self.zero_root_settled[epoch] = True
    else:
        self.batch_roots[epoch] = receipts_root
    self.last_epoch = max(self.last_epoch, epoch)
    log BatchSettled(
        epoch=epoch,
        receipts_root=receipts_root,
        requests=len(requests),
        challenges=len(challenges),
        fees=fees,
    )


@external
def settle_dispute(dispute_id: bytes32, epoch: uint256, challenge: ChallengeEntry):
    # Arbitration that concludes after its epoch's batch was posted is settled on its own.
    self._only_role(Role.ARBITER, "caller is not an arbiter")
    self._not_paused()
    assert not self.disputes_settled[dispute_id], "dispute already settled"
    self.disputes_settled[dispute_id] = True
    self._apply_challenge(challenge, epoch)
    log DisputeSettled(dispute_id=dispute_id, asserter=challenge.asserter, outcome=challenge.outcome)


@external
@view
def verify_receipt(
    epoch: uint256,
    leaf: Bytes[MAX_LEAF_BYTES],
    proof: DynArray[bytes32, MAX_PROOF_DEPTH],
    sibling_is_left: uint256,
) -> bool:
    """
    @notice True when `leaf` (a receipt's canonical bytes) is in the receipts tree of the
            settled batch of `epoch`. Same hashing as verinfer.protocol.merkle:
            leaf = sha256(0x00 || data), node = sha256(0x01 || left || right).
    @param sibling_is_left Bit i set when the sibling at level i is on the left.
    """
    root: bytes32 = self.batch_roots[epoch]
    if root == empty(bytes32) and not self.zero_root_settled[epoch]:
        return False
    h: bytes32 = sha256(concat(b"\x00", leaf))
    i: uint256 = 0
    for sibling: bytes32 in proof:
        if (sibling_is_left >> i) & 1 == 1:
            h = sha256(concat(b"\x01", sibling, h))
        else:
            h = sha256(concat(b"\x01", h, sibling))
        i += 1
    return h == root
