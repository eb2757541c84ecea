"""verinfer.chain: the settlement contract, its web3 client and the embedded dev chain."""
