"""Firewall model: read nftables / iptables rulesets and decide whether a packet gets in."""

from collectors.firewall.model import (
    Decision,
    Evaluation,
    FirewallError,
    Packet,
    RuleRef,
    Ruleset,
    evaluate,
)
from collectors.firewall.reader import Run, local_runner, read_ruleset, ssh_runner

__all__ = [
    "Decision",
    "Evaluation",
    "FirewallError",
    "Packet",
    "RuleRef",
    "Ruleset",
    "Run",
    "evaluate",
    "local_runner",
    "read_ruleset",
    "ssh_runner",
]
