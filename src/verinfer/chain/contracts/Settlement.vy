# pragma version 0.4.3
# pragma optimize codesize
# pragma experimental-codegen
"""
@title verinfer settlement (rules version 2)
@notice Stakes, user deposits and allowances, committed epochs, challenges settled on signed
        evidence, appeals, slashing and reputation of the verinfer network. Implements
        docs/settlement-rules.md (version 2); the pure mirror is verinfer.protocol.settlement.
@dev No role holder is trusted with money. A settler debits a user only within the Allowance
     the user signed (EIP-712, checked with ecrecover), and only for receipts whose ordered
     list hashes to the root it committed before the challenge beacon (a later block's hash)
     was known. Which receipts are challenged follows from that beacon. A challenge passes on
     validators' signed verdicts, a slash needs the accused's own signed receipt and conflicting
     signed verdicts from arbitrators whose eligibility (stake-weighted sortition on the beacon)
     the contract checks one by one, and a slash waits out an appeal window. Money invariant:
     self.balance == sum(balances) + sum(stakes) + sum(unbonding.amount) + sum(escrow)
     + treasury.
"""

BPS: constant(uint256) = 10_000
PPM: constant(uint256) = 1_000_000
MAX_RECEIPTS: constant(uint256) = 512
MAX_VERDICTS: constant(uint256) = 16
# Passes in one `pass_challenges` transaction: about what a 30 M gas block holds.
MAX_PASS_BATCH: constant(uint256) = 160
MAX_ENDPOINT_BYTES: constant(uint256) = 256
MERKLE_STACK: constant(uint256) = 16
SORTITION_BITS: constant(uint256) = 64
BEACON_LOOKBACK: constant(uint256) = 256
CAP_MASK: constant(uint256) = (1 << 96) - 1
U64_MASK: constant(uint256) = (1 << 64) - 1
# A settler may commit an epoch until this long after its end (or one epoch, if longer), and
# settle it until twice that: short epochs under load must not lose their receipts.
MIN_COMMIT_GRACE: constant(uint256) = 60
SECP256K1N_HALF: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
RECEIPT_TYPEHASH: constant(bytes32) = keccak256(
    "Receipt(bytes32 request,bytes32 job,bytes32 outputHash,bytes32 logitsHash,uint32 outputLength,address node,address gateway,address user,uint256 fee,uint256 nonce,uint64 deadline)"
)
VERDICT_TYPEHASH: constant(bytes32) = keccak256(
    "Verdict(bytes32 receipt,bytes32 request,bytes32 outputHash,bytes32 logitsHash,bool valid,uint32 firstInvalidStep,address validator,address gateway)"
)
ALLOWANCE_TYPEHASH: constant(bytes32) = keccak256(
    "Allowance(address user,address settler,uint256 capPerEpoch,uint64 expiry,uint256 nonce)"
)

# Case status of a challenged receipt.
OPEN: constant(uint8) = 1
PASSED: constant(uint8) = 2
ACCUSED: constant(uint8) = 3
SLASHED: constant(uint8) = 4
CLEARED: constant(uint8) = 5
LAPSED: constant(uint8) = 6

# Kinds of evidence on a challenged receipt.
EVIDENCE_PASS: constant(uint8) = 0
EVIDENCE_ACCUSE: constant(uint8) = 1
EVIDENCE_APPEAL: constant(uint8) = 2
EVIDENCE_WRONG_VERDICT: constant(uint8) = 3

flag Role:
    SETTLER
    PAUSER

struct Params:
    min_stake: uint256
    unbonding_delay: uint256
    withdrawal_delay: uint256
    reward_asserter: uint256
    reward_validators: uint256
    slash: uint256
    protocol_fee_bps: uint256
    discount_bps: uint256
    challenger_share_bps: uint256
    challenge_ppm: uint256
    challenge_window: uint256
    appeal_window: uint256

struct Receipt:
    request: bytes32
    job: bytes32
    outputHash: bytes32
    logitsHash: bytes32
    outputLength: uint32
    node: address
    gateway: address
    user: address
    fee: uint256
    nonce: uint256
    deadline: uint64

struct Verdict:
    receipt: bytes32
    request: bytes32
    outputHash: bytes32
    logitsHash: bytes32
    valid: bool
    firstInvalidStep: uint32
    validator: address
    gateway: address

struct PassEvidence:
    receipt: Receipt
    verdicts: DynArray[Verdict, MAX_VERDICTS]
    signatures: DynArray[Bytes[65], MAX_VERDICTS]

struct Allowance:
    user: address
    settler: address
    capPerEpoch: uint256
    expiry: uint64
    nonce: uint256

struct Unbonding:
    amount: uint256
    release_time: uint256

struct Withdrawal:
    amount: uint256
    release_time: uint256

struct Reputation:
    served: uint256
    challenged: uint256
    passed: uint256
    failed: uint256

struct Node:
    registered_at: uint256
    stake_block: uint256

struct Commitment:
    root: bytes32
    count: uint256
    block: uint256
    beacon: bytes32
    total_stake: uint256
    version: uint256
    settled: bool

struct Case:
    settler: address
    node: address
    user: address
    fee: uint256
    escrow: uint256
    status: uint8
    deadline: uint256
    appeal_deadline: uint256

event OwnershipTransferStarted:
    owner: indexed(address)
    pending_owner: indexed(address)

event OwnershipTransferred:
    previous_owner: indexed(address)
    new_owner: indexed(address)

event RoleGranted:
    account: indexed(address)
    role: Role

event RoleRevoked:
    account: indexed(address)
    role: Role

event Paused:
    account: indexed(address)
    until: uint256

event Unpaused:
    account: indexed(address)

event ParamsProposed:
    version: uint256
    ready_at: uint256

event Deposited:
    sender: indexed(address)
    beneficiary: indexed(address)
    amount: uint256

event WithdrawalRequested:
    account: indexed(address)
    amount: uint256
    release_time: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event TreasuryFunded:
    sender: indexed(address)
    amount: uint256

event AllowanceSet:
    user: indexed(address)
    settler: indexed(address)
    cap_per_epoch: uint256
    expiry: uint64
    nonce: uint256

event NodeRegistered:
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

event EpochCommitted:
    settler: indexed(address)
    epoch: indexed(uint256)
    receipts_root: bytes32
    count: uint256

event EpochSettled:
    settler: indexed(address)
    epoch: indexed(uint256)
    receipts_root: bytes32
    requests: uint256
    challenged: uint256
    fees: uint256

event Shortfall:
    user: indexed(address)
    node: indexed(address)
    receipt: indexed(bytes32)
    owed: uint256
    paid: uint256

event ChallengeOpened:
    epoch: indexed(uint256)
    receipt: indexed(bytes32)
    node: indexed(address)
    deadline: uint256

event ChallengePassed:
    epoch: indexed(uint256)
    receipt: indexed(bytes32)
    validators: uint256
    rewards_unpaid: uint256

event Accused:
    epoch: indexed(uint256)
    receipt: indexed(bytes32)
    node: indexed(address)
    appeal_deadline: uint256

event AppealUpheld:
    epoch: indexed(uint256)
    receipt: indexed(bytes32)
    node: indexed(address)

event ChallengeLapsed:
    epoch: indexed(uint256)
    receipt: indexed(bytes32)

event Slashed:
    node: indexed(address)
    receipt: indexed(bytes32)
    amount: uint256
    shortfall: uint256
    to_user: uint256
    to_challengers: uint256
    to_treasury: uint256

owner: public(address)
pending_owner: public(address)
roles: public(HashMap[address, Role])

paused_since: uint256
paused_total: uint256
pause_started_at: uint256
max_pause: uint256
params_delay: uint256
EPOCH_SECONDS: public(immutable(uint256))
GENESIS: public(immutable(uint256))
DOMAIN_SEPARATOR: public(immutable(bytes32))
# Fixed at deployment: the params delay, the longest pause, and the committees (expected sizes of
# the two sortitions and the verdicts a pass or an accusation needs).
validators_expected: uint256
validators_quorum: uint256
arbitrators_expected: uint256
arbitrators_quorum: uint256

last_version: uint256
params_at: HashMap[uint256, Params]
next_params_ready_at: uint256

balances: public(HashMap[address, uint256])
withdrawals: public(HashMap[address, Withdrawal])
stakes: public(HashMap[address, uint256])
total_stake: public(uint256)
unbonding: public(HashMap[address, Unbonding])
treasury: public(uint256)
escrow_total: public(uint256)
reputation: public(HashMap[address, Reputation])
unpaid: public(HashMap[address, uint256])
open_cases: public(HashMap[address, uint256])

# A user's current allowance: settler (160 bits) | expiry (64 bits), and its nonce. What an
# allowance grants is kept per (user, settler): cap (96 bits) | expiry (64 bits), the one slot a
# debit reads. What a settlement has taken from a user within the cap lives in transient storage,
# keyed by (epoch, settler): a settler settles each of its epochs once, in one call.
allowance_head: HashMap[address, uint256]
allowance_nonce: public(HashMap[address, uint256])
grants: HashMap[address, HashMap[address, uint256]]
spent_in_settlement: transient(HashMap[uint256, HashMap[address, uint256]])

nodes: public(HashMap[address, Node])
node_count: public(uint256)
node_at: public(HashMap[uint256, address])

commitments: public(HashMap[address, HashMap[uint256, Commitment]])
cases: HashMap[uint256, HashMap[bytes32, Case]]
# The arbitrators whose verdicts carried an accusation: paid from its slash, or slashed on appeal.
accusers: HashMap[uint256, HashMap[bytes32, DynArray[address, MAX_VERDICTS]]]
# Validators slashed for a verdict the arbitration outcome of the receipt contradicts.
wrong_verdicts: HashMap[uint256, HashMap[bytes32, HashMap[address, bool]]]


@deploy
def __init__(params: Params, epoch_seconds: uint256, params_delay: uint256, max_pause: uint256, committees: uint256[4]):
    assert epoch_seconds > 0, "epoch must be positive"
    assert max_pause > 0, "max pause must be positive"
    assert committees[0] <= 255 and committees[2] <= 255, "committee above 255"
    assert committees[1] >= 1 and committees[1] <= MAX_VERDICTS, "bad validator quorum"
    assert committees[3] >= 1 and committees[3] <= MAX_VERDICTS, "bad arbitrator quorum"
    self.validators_expected = committees[0]
    self.validators_quorum = committees[1]
    self.arbitrators_expected = committees[2]
    self.arbitrators_quorum = committees[3]
    EPOCH_SECONDS = epoch_seconds
    GENESIS = block.timestamp
    self.params_delay = params_delay
    self.max_pause = max_pause
    DOMAIN_SEPARATOR = keccak256(
        abi_encode(
            DOMAIN_TYPEHASH, keccak256("verinfer"), keccak256("2"), chain.id, self
        )
    )
    self.owner = msg.sender
    log OwnershipTransferred(previous_owner=empty(address), new_owner=msg.sender)
    self._check_params(params)
    self._check_delays(params)
    self.params_at[0] = params
    log ParamsProposed(version=0, ready_at=block.timestamp)
    initial: Role = Role.SETTLER | Role.PAUSER
    self.roles[msg.sender] = initial
    log RoleGranted(account=msg.sender, role=initial)


# ---------------------------------------------------------------- time, pause, epochs

@internal
@view
def _pause_elapsed() -> uint256:
    if self.paused_since == 0:
        return 0
    return min(block.timestamp, self.paused_since + self.max_pause) - self.paused_since


@internal
@view
def _paused() -> bool:
    return self.paused_since != 0 and block.timestamp < self.paused_since + self.max_pause


@internal
@view
def _now() -> uint256:
    # Clock of every delay and window: wall time less the time spent paused, so a pause
    # neither lets a delay run out nor makes a deadline pass.
    return block.timestamp - self.paused_total - self._pause_elapsed()


@external
@view
def committees() -> uint256[4]:
    """
    @notice Expected validators, verdicts a pass needs, expected arbitrators, verdicts an
            accusation needs (fixed at deployment).
    """
    return [self.validators_expected, self.validators_quorum, self.arbitrators_expected, self.arbitrators_quorum]


@external
@view
def paused() -> bool:
    return self._paused()


@internal
@view
def _grace() -> uint256:
    return max(EPOCH_SECONDS, MIN_COMMIT_GRACE)


@internal
@view
def _since_end(epoch: uint256) -> uint256:
    # Seconds since the end of `epoch` (zero before it ends).
    end: uint256 = GENESIS + (epoch + 1) * EPOCH_SECONDS
    return block.timestamp - min(block.timestamp, end)


@internal
@view
def _current_epoch() -> uint256:
    return (block.timestamp - GENESIS) // EPOCH_SECONDS


@external
@view
def current_epoch() -> uint256:
    return self._current_epoch()


@internal
@view
def _not_paused():
    assert not self._paused(), "paused"


# ---------------------------------------------------------------- owner, roles, parameters

@internal
@view
def _only_owner():
    assert msg.sender == self.owner, "caller is not the owner"


@internal
@pure
def _check_params(p: Params):
    assert p.unbonding_delay > 0, "unbonding delay must be positive"
    assert p.slash <= p.min_stake, "slash exceeds min stake"
    assert p.protocol_fee_bps <= BPS, "protocol fee above 10000 bps"
    assert p.discount_bps <= BPS, "discount above 10000 bps"
    assert p.challenger_share_bps <= BPS, "challenger share above 10000 bps"
    assert p.challenge_ppm <= PPM, "challenge ppm above 1000000"


@internal
@view
def _check_delays(p: Params):
    # A user's deposit can leave only after every epoch that could still debit it has been
    # settled (commit window + settlement window + challenge window); a node's stake only after
    # a slash of such an epoch could also have gone through its appeal window.
    settle_span: uint256 = EPOCH_SECONDS + 2 * self._grace() + p.challenge_window
    assert p.withdrawal_delay > settle_span, "withdrawal delay too short"
    assert p.unbonding_delay > settle_span + p.appeal_window, "unbonding delay too short"


@internal
@view
def _version() -> uint256:
    # Proposed parameters become current once their delay is over, without a transaction.
    ready: uint256 = self.next_params_ready_at
    if ready != 0 and block.timestamp >= ready:
        return self.last_version + 1
    return self.last_version


@external
def propose_params(params: Params):
    """
    @notice Propose parameters that become current `params_delay` seconds from now (a later proposal
            before then replaces this one). Epochs committed before keep the parameters they
            were committed under.
    """
    self._only_owner()
    self._check_params(params)
    self._check_delays(params)
    current: uint256 = self._version()
    self.last_version = current
    self.params_at[current + 1] = params
    ready: uint256 = block.timestamp + self.params_delay
    self.next_params_ready_at = ready
    log ParamsProposed(version=current + 1, ready_at=ready)


@external
@view
def params() -> Params:
    return self.params_at[self._version()]


@external
def transfer_ownership(new_owner: address):
    self._only_owner()
    assert new_owner != empty(address), "new owner is the zero address"
    self.pending_owner = new_owner
    log OwnershipTransferStarted(owner=msg.sender, pending_owner=new_owner)


@external
def accept_ownership():
    """
    @notice The proposed owner takes over, with every role the previous owner held.
    """
    new_owner: address = self.pending_owner
    assert msg.sender == new_owner, "not the pending owner"
    previous: address = self.owner
    handed: Role = self.roles[previous]
    self.roles[previous] = empty(Role)
    self.roles[new_owner] |= handed
    self.owner = new_owner
    self.pending_owner = empty(address)
    log OwnershipTransferred(previous_owner=previous, new_owner=new_owner)


@external
def grant_role(account: address, role: Role):
    self._only_owner()
    assert account != empty(address), "account is the zero address"
    self.roles[account] |= role
    log RoleGranted(account=account, role=role)


@external
def revoke_role(account: address, role: Role):
    self._only_owner()
    self.roles[account] &= ~role
    log RoleRevoked(account=account, role=role)


@external
def pause():
    """
    @notice Stop inflows, commits and settlement for at most `max_pause` seconds; clocks stop meanwhile.
            A pause may start only 2 * `max_pause` after the previous one started, so pauses
            hold at most half of any long stretch of time.
    """
    assert Role.PAUSER in self.roles[msg.sender], "caller is not a pauser"
    assert not self._paused(), "paused"
    last: uint256 = self.pause_started_at
    assert last == 0 or block.timestamp >= last + 2 * self.max_pause, "pause cooldown"
    if self.paused_since != 0:
        # The previous pause ran out on its own: count it whole.
        self.paused_total += self.max_pause
    self.paused_since = block.timestamp
    self.pause_started_at = block.timestamp
    log Paused(account=msg.sender, until=block.timestamp + self.max_pause)


@external
def unpause():
    assert Role.PAUSER in self.roles[msg.sender], "caller is not a pauser"
    assert self._paused(), "not paused"
    self.paused_total += block.timestamp - self.paused_since
    self.paused_since = 0
    log Unpaused(account=msg.sender)


# ---------------------------------------------------------------- signatures

@internal
@view
def _typed_digest(struct_hash: bytes32) -> bytes32:
    return keccak256(concat(b"\x19\x01", DOMAIN_SEPARATOR, struct_hash))


@internal
@pure
def _signer(digest: bytes32, signature: Bytes[65]) -> address:
    # 65 bytes r || s || v, v in {27, 28}, low s (EIP-2): one signature per message.
    assert len(signature) == 65, "bad signature length"
    r: uint256 = convert(extract32(signature, 0), uint256)
    s: uint256 = convert(extract32(signature, 32), uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    assert v == 27 or v == 28, "bad signature v"
    assert s <= SECP256K1N_HALF, "signature s not low"
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address), "bad signature"
    return signer


@internal
@view
def _receipt_digest(r: Receipt) -> bytes32:
    return self._typed_digest(
        keccak256(
            abi_encode(
                RECEIPT_TYPEHASH, r.request, r.job, r.outputHash, r.logitsHash, r.outputLength,
                r.node, r.gateway, r.user, r.fee, r.nonce, r.deadline
            )
        )
    )


@internal
@view
def _verdict_digest(v: Verdict) -> bytes32:
    return self._typed_digest(
        keccak256(
            abi_encode(
                VERDICT_TYPEHASH, v.receipt, v.request, v.outputHash, v.logitsHash, v.valid,
                v.firstInvalidStep, v.validator, v.gateway
            )
        )
    )


# ---------------------------------------------------------------- funds in and out

@external
@payable
def deposit(beneficiary: address):
    self._not_paused()
    assert msg.value > 0, "zero amount"
    assert beneficiary != empty(address), "zero beneficiary"
    self.balances[beneficiary] += msg.value
    log Deposited(sender=msg.sender, beneficiary=beneficiary, amount=msg.value)


@external
@payable
def fund_treasury():
    self._not_paused()
    assert msg.value > 0, "zero amount"
    self.treasury += msg.value
    log TreasuryFunded(sender=msg.sender, amount=msg.value)


@external
def request_withdrawal(amount: uint256):
    """
    @notice Ask to withdraw `amount` of the balance after `withdrawal_delay`; until then it can
            still pay for what the caller was served. A new request replaces the previous one.
    """
    assert amount > 0, "zero amount"
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    release: uint256 = self._now() + self.params_at[self._version()].withdrawal_delay
    self.withdrawals[msg.sender] = Withdrawal(amount=amount, release_time=release)
    log WithdrawalRequested(account=msg.sender, amount=amount, release_time=release)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @notice Pay `amount` to the caller from matured unbonding stake (released into the balance
            first, unless a challenge against the caller is open) and a matured withdrawal
            request. Allowed while paused.
    """
    assert amount > 0, "zero amount"
    now: uint256 = self._now()
    released: uint256 = 0
    u: Unbonding = self.unbonding[msg.sender]
    if u.amount > 0 and now >= u.release_time and self.open_cases[msg.sender] == 0:
        released = u.amount
        self.balances[msg.sender] += released
        self.unbonding[msg.sender] = empty(Unbonding)
        log UnbondingReleased(node=msg.sender, amount=released)
    w: Withdrawal = self.withdrawals[msg.sender]
    requested: uint256 = 0
    if w.amount > 0 and now >= w.release_time:
        requested = w.amount
    assert amount <= released + requested, "withdrawal not due"
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    from_request: uint256 = amount - min(amount, released)
    if from_request > 0:
        self.withdrawals[msg.sender].amount = w.amount - from_request
    log Withdrawn(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ---------------------------------------------------------------- allowances

@external
def set_allowance(a: Allowance, signature: Bytes[65]):
    """
    @notice Record an allowance the user signed (anyone may submit it). It replaces the current
            one only with a higher nonce, and before the current one expires only to extend it
            (same settler, cap and expiry not lower): no user escapes a debit it authorized.
    """
    digest: bytes32 = self._typed_digest(
        keccak256(abi_encode(ALLOWANCE_TYPEHASH, a.user, a.settler, a.capPerEpoch, a.expiry, a.nonce))
    )
    assert a.user != empty(address), "user is the zero address"
    assert self._signer(digest, signature) == a.user, "bad allowance signature"
    assert a.nonce > self.allowance_nonce[a.user], "allowance nonce too low"
    head: uint256 = self.allowance_head[a.user]
    old_settler: address = convert(convert(head >> 96, uint160), address)
    old_expiry: uint256 = head & U64_MASK
    cap: uint256 = min(a.capPerEpoch, CAP_MASK)
    expiry: uint256 = convert(a.expiry, uint256)
    if old_settler != empty(address) and block.timestamp < old_expiry:
        assert a.settler == old_settler and cap >= self.grants[a.user][old_settler] >> 64 and expiry >= old_expiry, "allowance can only grow until it expires"
    self.allowance_nonce[a.user] = a.nonce
    self.allowance_head[a.user] = (convert(convert(a.settler, uint160), uint256) << 96) | expiry
    # A grant to a previous settler stays: it covers only epochs that began before it expired.
    self.grants[a.user][a.settler] = (cap << 64) | expiry
    log AllowanceSet(user=a.user, settler=a.settler, cap_per_epoch=cap, expiry=a.expiry, nonce=a.nonce)


@external
@view
def allowance_of(user: address) -> (address, uint256, uint256):
    """
    @notice The user's current allowance: (settler, cap per epoch, expiry).
    """
    settler: address = convert(convert(self.allowance_head[user] >> 96, uint160), address)
    grant: uint256 = self.grants[user][settler]
    return (settler, grant >> 64, grant & U64_MASK)


@internal
def _charge(user: address, settler: address, epoch: uint256, spend_key: uint256, fee: uint256) -> uint256:
    # What can be taken: within the settler's grant for an epoch that began before it expired,
    # less what this settlement took from the user already, then within the balance.
    grant: uint256 = self.grants[user][settler]
    if GENESIS + epoch * EPOCH_SECONDS >= grant & U64_MASK:
        return 0
    cap: uint256 = grant >> 64
    spent: uint256 = self.spent_in_settlement[spend_key][user]
    take: uint256 = min(min(fee, cap - min(cap, spent)), self.balances[user])
    if take > 0:
        self.balances[user] -= take
        self.spent_in_settlement[spend_key][user] = spent + take
    return take


# ---------------------------------------------------------------- nodes and stake

@external
def register(endpoint: String[MAX_ENDPOINT_BYTES]):
    """
    @notice Register the caller's account as a node: its key is the account's key (the
            transaction proves it is held), once per key. The endpoint is published in the
            event only (later changes travel in the DHT's signed announcements).
    """
    self._not_paused()
    assert self.nodes[msg.sender].registered_at == 0, "already registered"
    self.nodes[msg.sender] = Node(registered_at=block.timestamp, stake_block=0)
    self.node_at[self.node_count] = msg.sender
    self.node_count += 1
    log NodeRegistered(node=msg.sender, endpoint=endpoint)


@external
@view
def is_active(node: address) -> bool:
    pv: uint256 = self._version()
    return self.nodes[node].registered_at != 0 and self.stakes[node] >= self.params_at[pv].min_stake


@external
@payable
def stake(amount: uint256):
    """
    @notice Bond `amount` of the caller's balance; value sent is deposited first. Stake added
            after an epoch's commit does not count in that epoch's sortition.
    """
    self._not_paused()
    if msg.value > 0:
        self.balances[msg.sender] += msg.value
        log Deposited(sender=msg.sender, beneficiary=msg.sender, amount=msg.value)
    assert amount > 0, "zero amount"
    assert self.nodes[msg.sender].registered_at != 0, "not registered"
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    self.stakes[msg.sender] += amount
    self.total_stake += amount
    self.nodes[msg.sender].stake_block = block.number
    log Staked(node=msg.sender, amount=amount, total=self.stakes[msg.sender])


@external
def unstake(amount: uint256):
    # Unbonding stake stays slashable; a node with an open challenge cannot start leaving.
    assert amount > 0, "zero amount"
    assert self.open_cases[msg.sender] == 0, "open challenge"
    assert self.stakes[msg.sender] >= amount, "insufficient stake"
    self.stakes[msg.sender] -= amount
    self.total_stake -= amount
    release: uint256 = self._now() + self.params_at[self._version()].unbonding_delay
    self.unbonding[msg.sender] = Unbonding(
        amount=self.unbonding[msg.sender].amount + amount, release_time=release
    )
    log UnstakeRequested(node=msg.sender, amount=amount, release_time=release)


@internal
def _slash(node: address, amount: uint256) -> uint256:
    # Stake first, then unbonding; a slash larger than both takes what is there.
    bonded: uint256 = self.stakes[node]
    from_stake: uint256 = min(amount, bonded)
    from_unbonding: uint256 = min(amount - from_stake, self.unbonding[node].amount)
    self.stakes[node] = bonded - from_stake
    self.total_stake -= from_stake
    self.unbonding[node].amount -= from_unbonding
    return from_stake + from_unbonding


# ---------------------------------------------------------------- commit, beacon, settle

@external
def commit_epoch(epoch: uint256, receipts_root: bytes32, count: uint256):
    """
    @notice Commit the receipts of `epoch` (this epoch, or a closed one within its grace: one
            epoch or 60 seconds after its end, whichever is longer) before the beacon that
            decides their challenges exists: the root over their digests in strictly increasing
            order, and their number. Once per settler and epoch.
    """
    assert Role.SETTLER in self.roles[msg.sender], "caller is not a settler"
    self._not_paused()
    current: uint256 = self._current_epoch()
    assert epoch <= current, "epoch in the future"
    assert self._since_end(epoch) < self._grace(), "commit window closed"
    assert count <= MAX_RECEIPTS, "too many receipts"
    assert self.commitments[msg.sender][epoch].block == 0, "epoch already committed"
    self.commitments[msg.sender][epoch] = Commitment(
        root=receipts_root,
        count=count,
        block=block.number,
        beacon=empty(bytes32),
        total_stake=self.total_stake,
        version=self._version(),
        settled=False,
    )
    log EpochCommitted(settler=msg.sender, epoch=epoch, receipts_root=receipts_root, count=count)


@internal
def _beacon(settler: address, epoch: uint256) -> bytes32:
    c: Commitment = self.commitments[settler][epoch]
    assert c.block != 0, "epoch not committed"
    if c.beacon != empty(bytes32):
        return c.beacon
    source: uint256 = c.block + 1
    assert block.number > source, "beacon not yet available"
    assert block.number - source <= BEACON_LOOKBACK, "beacon lapsed"
    beacon: bytes32 = blockhash(source)
    self.commitments[settler][epoch].beacon = beacon
    return beacon


@external
def fix_beacon(settler: address, epoch: uint256) -> bytes32:
    """
    @notice Record the beacon of a committed epoch: the hash of the block after the commit.
            Anyone may call it, within 256 blocks of that block.
    """
    return self._beacon(settler, epoch)


@internal
@pure
def _challenge_limit(ppm: uint256) -> uint256:
    # Largest draw that is challenged: draw * PPM < ppm * 2^256 (exact, as in the mirror).
    q: uint256 = max_value(uint256) // PPM
    r: uint256 = max_value(uint256) % PPM
    return ppm * q + (ppm * (r + 1) - 1) // PPM


@internal
@pure
def _is_challenged(digest: bytes32, beacon: bytes32, ppm: uint256) -> bool:
    if ppm == 0:
        return False
    if ppm >= PPM:
        return True
    draw: uint256 = convert(sha256(concat(b"verinfer/challenge/v1", digest, beacon)), uint256)
    return draw <= self._challenge_limit(ppm)


@external
def settle_epoch(epoch: uint256, receipts: DynArray[Receipt, MAX_RECEIPTS]):
    """
    @notice Settle the caller's committed epoch with the full ordered list of its receipts: the
            list must hash to the committed root. Unchallenged receipts are paid at once (within
            each user's allowance and balance; a shortfall is recorded, never reverted); each
            challenged one is escrowed and opened as a case until its evidence arrives.
    """
    self._not_paused()
    c: Commitment = self.commitments[msg.sender][epoch]
    assert c.block != 0, "epoch not committed"
    assert not c.settled, "epoch already settled"
    assert self._since_end(epoch) < 2 * self._grace(), "settlement window closed"
    assert len(receipts) == c.count, "count differs from commitment"
    beacon: bytes32 = self._beacon(msg.sender, epoch)
    pv: uint256 = c.version
    start: uint256 = GENESIS + epoch * EPOCH_SECONDS
    ppm: uint256 = self.params_at[pv].challenge_ppm
    fee_bps: uint256 = self.params_at[pv].protocol_fee_bps
    # The epoch is below 2^64 (not beyond the current one): the key is exact.
    spend_key: uint256 = (epoch << 160) | convert(convert(msg.sender, uint160), uint256)

    # Merkle root over the digests as verinfer.protocol.merkle builds it (an odd node is carried
    # up), folded as a stack of perfect subtrees so that memory stays O(log n).
    stack: bytes32[MERKLE_STACK] = empty(bytes32[MERKLE_STACK])
    heights: uint256[MERKLE_STACK] = empty(uint256[MERKLE_STACK])
    depth: uint256 = 0
    previous: bytes32 = empty(bytes32)
    fees: uint256 = 0
    challenged: uint256 = 0
    cut_total: uint256 = 0
    for r: Receipt in receipts:
        digest: bytes32 = self._receipt_digest(r)
        assert convert(digest, uint256) > convert(previous, uint256), "receipts not in digest order"
        previous = digest
        assert r.gateway == msg.sender, "receipt names another gateway"
        assert r.node != empty(address) and r.user != empty(address), "zero address in receipt"
        assert convert(r.deadline, uint256) >= start and convert(r.deadline, uint256) < start + EPOCH_SECONDS, "receipt outside its epoch"

        h: bytes32 = sha256(concat(b"\x00", digest))
        height: uint256 = 0
        for _k: uint256 in range(MERKLE_STACK):
            if depth == 0 or heights[depth - 1] != height:
                break
            depth -= 1
            h = sha256(concat(b"\x01", stack[depth], h))
            height += 1
        stack[depth] = h
        heights[depth] = height
        depth += 1

        take: uint256 = self._charge(r.user, msg.sender, epoch, spend_key, r.fee)
        if take < r.fee:
            # Saturates: fees near 2^256 never make the batch revert on an overflow.
            owed: uint256 = self.unpaid[r.user]
            self.unpaid[r.user] = owed + min(r.fee - take, max_value(uint256) - owed)
            log Shortfall(user=r.user, node=r.node, receipt=digest, owed=r.fee, paid=take)
        if self._is_challenged(digest, beacon, ppm):
            deadline: uint256 = self._now() + self.params_at[pv].challenge_window
            self.cases[epoch][digest] = Case(
                settler=msg.sender, node=r.node, user=r.user, fee=r.fee, escrow=take,
                status=OPEN, deadline=deadline, appeal_deadline=0,
            )
            self.escrow_total += take
            self.open_cases[r.node] += 1
            challenged += 1
            log ChallengeOpened(epoch=epoch, receipt=digest, node=r.node, deadline=deadline)
        else:
            cut: uint256 = take * fee_bps // BPS
            self.balances[r.node] += take - cut
            cut_total += cut
            self.reputation[r.node].served += 1
        fees += take

    root: bytes32 = sha256(b"\x00")
    if depth > 0:
        root = stack[depth - 1]
        for _k: uint256 in range(MERKLE_STACK):
            if depth <= 1:
                break
            depth -= 1
            root = sha256(concat(b"\x01", stack[depth - 1], root))
    assert root == c.root, "receipts differ from commitment"
    self.treasury += cut_total
    self.commitments[msg.sender][epoch].settled = True
    log EpochSettled(
        settler=msg.sender, epoch=epoch, receipts_root=c.root, requests=len(receipts),
        challenged=challenged, fees=fees,
    )


# ---------------------------------------------------------------- challenges on evidence

@internal
@view
def _eligible(tag: Bytes[32], c: Commitment, digest: bytes32, member: address, expected: uint256) -> bool:
    # Stake-weighted sortition, one member at a time (Algorand-style): eligible iff its 64-bit
    # ticket H(tag, beacon, receipt, member) is below 2^64 * expected * stake / total stake at
    # the commit. Stake bonded after the commit does not count.
    node: Node = self.nodes[member]
    if node.registered_at == 0 or node.stake_block >= c.block or c.total_stake == 0:
        return False
    ticket: uint256 = convert(sha256(concat(tag, c.beacon, digest, convert(member, bytes20))), uint256) >> (256 - SORTITION_BITS)
    return ticket * c.total_stake < (self.stakes[member] * expected) << SORTITION_BITS


@internal
def _committee(
    tag: Bytes[32],
    c: Commitment,
    settler: address,
    digest: bytes32,
    r: Receipt,
    verdicts: DynArray[Verdict, MAX_VERDICTS],
    signatures: DynArray[Bytes[65], MAX_VERDICTS],
    expected: uint256,
    agree: bool,
) -> DynArray[address, MAX_VERDICTS]:
    # Every verdict: signed by its validator, distinct (strictly increasing addresses), not the
    # asserter, drawn by the sortition, about this receipt, and agreeing (or conflicting) with it.
    assert len(verdicts) == len(signatures), "one signature per verdict"
    members: DynArray[address, MAX_VERDICTS] = []
    previous: uint256 = 0
    for i: uint256 in range(len(verdicts), bound=MAX_VERDICTS):
        v: Verdict = verdicts[i]
        assert self._signer(self._verdict_digest(v), signatures[i]) == v.validator, "bad verdict signature"
        member: uint256 = convert(convert(v.validator, uint160), uint256)
        assert member > previous, "verdicts out of order"
        previous = member
        assert v.validator != r.node, "asserter in committee"
        assert v.gateway == settler, "verdict names another gateway"
        assert v.receipt == digest and v.request == r.request and v.outputHash == r.outputHash, "verdict of another receipt"
        agrees: bool = v.valid and v.logitsHash == r.logitsHash
        assert agrees == agree, "verdict against the claim"
        assert self._eligible(tag, c, digest, v.validator, expected), "not drawn by the sortition"
        members.append(v.validator)
    return members


@internal
def _pay_node(case: Case, pv: uint256):
    # The escrowed fee goes to the node as for an unchallenged request.
    cut: uint256 = case.escrow * self.params_at[pv].protocol_fee_bps // BPS
    self.escrow_total -= case.escrow
    self.balances[case.node] += case.escrow - cut
    self.treasury += cut
    self.reputation[case.node].served += 1
    self.open_cases[case.node] -= 1


@internal
def _log_slash(node: address, digest: bytes32, taken: uint256, due: uint256, to_user: uint256, to_challengers: uint256, to_treasury: uint256):
    log Slashed(
        node=node, receipt=digest, amount=taken, shortfall=due - taken, to_user=to_user,
        to_challengers=to_challengers, to_treasury=to_treasury,
    )


@internal
def _from_treasury(to: address, amount: uint256) -> uint256:
    # A reward the treasury cannot cover is paid as far as it goes, never reverted.
    paid: uint256 = min(amount, self.treasury)
    self.treasury -= paid
    self.balances[to] += paid
    return amount - paid


@internal
def _pass(
    epoch: uint256,
    receipt: Receipt,
    verdicts: DynArray[Verdict, MAX_VERDICTS],
    signatures: DynArray[Bytes[65], MAX_VERDICTS],
):
    # PASS evidence on one case, the same checks alone (`submit_evidence`) or in a batch.
    digest: bytes32 = self._receipt_digest(receipt)
    case: Case = self.cases[epoch][digest]
    assert case.status != 0, "no challenge"
    c: Commitment = self.commitments[case.settler][epoch]
    pv: uint256 = c.version
    assert case.status == OPEN, "wrong challenge state"
    assert self._now() <= case.deadline, "deadline passed"
    members: DynArray[address, MAX_VERDICTS] = self._committee(
        b"verinfer/sortition/v2/validator", c, case.settler, digest, receipt, verdicts,
        signatures, self.validators_expected, True
    )
    n: uint256 = len(members)
    assert n >= self.validators_quorum, "too few verdicts"
    self.cases[epoch][digest].status = PASSED
    self._pay_node(case, pv)
    unpaid: uint256 = self._from_treasury(case.node, self.params_at[pv].reward_asserter)
    for v: address in members:
        unpaid += self._from_treasury(v, self.params_at[pv].reward_validators // n)
    unpaid += self._from_treasury(case.user, case.escrow * self.params_at[pv].discount_bps // BPS)
    self.reputation[case.node].challenged += 1
    self.reputation[case.node].passed += 1
    log ChallengePassed(epoch=epoch, receipt=digest, validators=n, rewards_unpaid=unpaid)


@external
def pass_challenges(epoch: uint256, cases: DynArray[PassEvidence, MAX_PASS_BATCH]):
    """
    @notice PASS evidence (`submit_evidence` kind 0) on many challenged receipts of `epoch`
            in one transaction; anyone may submit it. Each case is checked and paid exactly
            as it would be alone, in list order. All or nothing: a case that would be refused
            alone (including one listed twice: it is no longer open) reverts the whole batch
            with its reason.
    """
    self._not_paused()
    assert len(cases) > 0, "no evidence"
    for i: uint256 in range(len(cases), bound=MAX_PASS_BATCH):
        self._pass(epoch, cases[i].receipt, cases[i].verdicts, cases[i].signatures)


@external
def submit_evidence(
    kind: uint8,
    epoch: uint256,
    receipt: Receipt,
    receipt_signature: Bytes[65],
    verdicts: DynArray[Verdict, MAX_VERDICTS],
    signatures: DynArray[Bytes[65], MAX_VERDICTS],
):
    """
    @notice Evidence on a challenged receipt; anyone may submit it.
            kind PASS (0), before the challenge deadline: at least `validators_quorum` verdicts
            of drawn validators that agree with the receipt. Pays the escrowed fee to the node,
            and from the treasury (as far as it goes) R_A, R_V shared by the validators and the
            user's discount.
            kind ACCUSE (1), before the challenge deadline: the asserter's own signed receipt
            and at least `arbitrators_quorum` conflicting verdicts of drawn arbitrators. The
            slash waits out `appeal_window` (see `execute_slash`).
            kind APPEAL (2), within the appeal window: more drawn arbitrators agreeing with the
            receipt than accused it. The node is paid its fee; each accuser is slashed.
            kind WRONG_VERDICT (3), once arbitration decided the case: verdicts of drawn
            validators that the outcome contradicts (agreeing with a receipt whose node was
            slashed, or conflicting with one cleared on appeal). Each validator is slashed
            once per receipt, to the treasury.
    """
    self._not_paused()
    assert kind <= EVIDENCE_WRONG_VERDICT, "unknown evidence kind"
    if kind == EVIDENCE_PASS:
        self._pass(epoch, receipt, verdicts, signatures)
        return
    digest: bytes32 = self._receipt_digest(receipt)
    case: Case = self.cases[epoch][digest]
    assert case.status != 0, "no challenge"
    c: Commitment = self.commitments[case.settler][epoch]
    pv: uint256 = c.version
    now: uint256 = self._now()
    tag: Bytes[32] = b"verinfer/sortition/v2/arbitrator"
    expected: uint256 = self.arbitrators_expected
    agree: bool = kind != EVIDENCE_ACCUSE
    if kind == EVIDENCE_WRONG_VERDICT:
        tag = b"verinfer/sortition/v2/validator"
        expected = self.validators_expected
        assert case.status == SLASHED or case.status == CLEARED, "no arbitration outcome"
        agree = case.status == SLASHED
    elif kind == EVIDENCE_APPEAL:
        assert case.status == ACCUSED, "wrong challenge state"
        assert now <= case.appeal_deadline, "appeal window closed"
    else:
        assert case.status == OPEN, "wrong challenge state"
        assert now <= case.deadline, "deadline passed"
    members: DynArray[address, MAX_VERDICTS] = self._committee(
        tag, c, case.settler, digest, receipt, verdicts, signatures, expected, agree
    )
    n: uint256 = len(members)

    if kind == EVIDENCE_ACCUSE:
        assert self._signer(digest, receipt_signature) == receipt.node, "bad receipt signature"
        assert n >= self.arbitrators_quorum, "too few verdicts"
        appeal_deadline: uint256 = now + self.params_at[pv].appeal_window
        self.cases[epoch][digest].status = ACCUSED
        self.cases[epoch][digest].appeal_deadline = appeal_deadline
        self.accusers[epoch][digest] = members
        log Accused(epoch=epoch, receipt=digest, node=receipt.node, appeal_deadline=appeal_deadline)
    elif kind == EVIDENCE_WRONG_VERDICT:
        assert n > 0, "too few verdicts"
        for v: address in members:
            assert not self.wrong_verdicts[epoch][digest][v], "verdict already slashed"
            self.wrong_verdicts[epoch][digest][v] = True
            taken: uint256 = self._slash(v, self.params_at[pv].slash)
            self.treasury += taken
            self.reputation[v].failed += 1
            self._log_slash(v, digest, taken, self.params_at[pv].slash, 0, 0, taken)
    else:
        accusers: DynArray[address, MAX_VERDICTS] = self.accusers[epoch][digest]
        assert n > len(accusers), "appeal needs more arbitrators"
        self.cases[epoch][digest].status = CLEARED
        self._pay_node(case, pv)
        to_node: uint256 = self.params_at[pv].slash * self.params_at[pv].challenger_share_bps // BPS
        for accuser: address in accusers:
            taken: uint256 = self._slash(accuser, self.params_at[pv].slash)
            share: uint256 = min(taken, to_node)
            self.balances[case.node] += share
            self.treasury += taken - share
            self.reputation[accuser].failed += 1
            self._log_slash(accuser, digest, taken, self.params_at[pv].slash, 0, share, taken - share)
        log AppealUpheld(epoch=epoch, receipt=digest, node=case.node)


@external
def finalize(epoch: uint256, digest: bytes32):
    """
    @notice Close a challenged receipt whose time is up; anyone may call it.
            An open challenge past its deadline with no evidence lapses: it settles as an
            unchallenged request (the escrowed fee to the node; nobody rewarded or slashed).
            An accusation past its appeal window is executed: the asserter loses what its
            stake and unbonding hold, up to `slash`; the user gets its escrowed fee back and up
            to the fee again; the accusing arbitrators share `challenger_share_bps` of the rest
            (their pay for arbitration); the treasury keeps the remainder.
    """
    self._not_paused()
    case: Case = self.cases[epoch][digest]
    pv: uint256 = self.commitments[case.settler][epoch].version
    now: uint256 = self._now()
    if case.status == OPEN:
        assert now > case.deadline, "deadline not passed"
        self.cases[epoch][digest].status = LAPSED
        self._pay_node(case, pv)
        log ChallengeLapsed(epoch=epoch, receipt=digest)
        return
    assert case.status == ACCUSED, "nothing to finalize"
    assert now > case.appeal_deadline, "appeal window open"
    self.cases[epoch][digest].status = SLASHED
    self.escrow_total -= case.escrow
    self.balances[case.user] += case.escrow
    self.open_cases[case.node] -= 1
    slash: uint256 = self.params_at[pv].slash
    taken: uint256 = self._slash(case.node, slash)
    to_user: uint256 = min(case.fee, taken)
    rest: uint256 = taken - to_user
    accusers: DynArray[address, MAX_VERDICTS] = self.accusers[epoch][digest]
    n: uint256 = len(accusers)
    share: uint256 = rest * self.params_at[pv].challenger_share_bps // BPS // n
    self.balances[case.user] += to_user
    for a: address in accusers:
        self.balances[a] += share
    self.treasury += rest - share * n
    self.reputation[case.node].challenged += 1
    self.reputation[case.node].failed += 1
    self._log_slash(case.node, digest, taken, slash, to_user, share * n, rest - share * n)


@external
@view
def case_of(epoch: uint256, digest: bytes32) -> (uint8, address, address, uint256, uint256, uint256, uint256):
    """
    @notice (status, node, user, fee, escrow, deadline, appeal deadline) of a challenged receipt;
            status 0 when there is none.
    """
    case: Case = self.cases[epoch][digest]
    return (case.status, case.node, case.user, case.fee, case.escrow, case.deadline, case.appeal_deadline)
