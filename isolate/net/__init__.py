"""Sandbox networking: policies (policy), addresses (pool), namespaces and veths (netns), the firewall (nft),
name files (names), and one sandbox's network from start to destroy (network)."""
