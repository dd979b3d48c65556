"""The campaign's hosts: network namespaces on one switch, made and removed by the script.

Every host is a network namespace with one veth leg on a bridge that lives in a
namespace of its own (`tdf-sw`), so the machine's own network is never touched except
for one veth into the root namespace, where the campaign's driver (user agents and
senders) runs. Addresses come from 198.18.0.0/24, the range RFC 2544 sets aside for
benchmark networks: nothing of this reaches any other machine.

Faults act on this topology: `block` drops packets between two hosts (iptables DROP in
the receiving host's namespace, so connections hang instead of failing fast) and
`shape` makes a host's link slow and lossy: random loss with iptables' statistic match,
and latency from a narrow token bucket (tc tbf) in front of its leg. (tc netem would
add a fixed delay, but the kernels of these machines are built without it.)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

BRIDGE = "tdfbr0"  # inside the switch's own namespace


def lab_prefix(lab: int) -> str:
    """Names of lab `lab`'s namespaces and links: campaigns in different labs (a long run
    and `make test`'s short one) can run at once."""
    return "tdf-" if lab == 0 else f"tdf{lab}-"


@dataclass(frozen=True)
class Host:
    """One namespace on the switch."""

    name: str
    address: str
    prefix: str = "tdf-"

    @property
    def namespace(self) -> str:
        return f"{self.prefix}{self.name}"

    @property
    def leg(self) -> str:
        """The veth end inside the host (the other end is on the bridge)."""
        return "eth0"

    @property
    def port(self) -> str:
        """The veth end on the bridge, named for the host."""
        return f"{self.prefix}{self.name}"[:15]

    def run(self, *command: str) -> list[str]:
        """`command` as run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *command]


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, capture_output=True, text=True)


class Network:
    """The switch, the hosts on it and the driver's leg in the root namespace."""

    def __init__(self, hosts: dict[str, int], lab: int = 0) -> None:
        self.prefix = lab_prefix(lab)
        self.subnet = f"198.18.{lab}"  # RFC 2544's benchmark range, a /24 per lab
        self.driver_address = f"{self.subnet}.1"
        self.switch = f"{self.prefix}sw"
        self.hosts = {
            name: Host(name, f"{self.subnet}.{last}", self.prefix) for name, last in hosts.items()
        }
        self._blocked: set[tuple[str, str]] = set()
        self._shaped: dict[str, float] = {}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def create(self) -> None:
        self.destroy()  # what a crashed earlier run left behind
        sh("ip", "netns", "add", self.switch)
        switch = ["ip", "netns", "exec", self.switch]
        sh(*switch, "ip", "link", "add", BRIDGE, "type", "bridge")
        sh(*switch, "ip", "link", "set", BRIDGE, "up")
        sh(*switch, "ip", "link", "set", "lo", "up")
        for host in self.hosts.values():
            sh("ip", "netns", "add", host.namespace)
            temporary = f"{self.prefix}tmp"
            sh("ip", "link", "add", host.port, "type", "veth", "peer", "name", temporary)
            sh("ip", "link", "set", temporary, "netns", host.namespace)
            sh("ip", "link", "set", host.port, "netns", self.switch)
            sh(*switch, "ip", "link", "set", host.port, "master", BRIDGE, "up")
            inside = ["ip", "netns", "exec", host.namespace]
            sh(*inside, "ip", "link", "set", temporary, "name", host.leg)
            sh(*inside, "ip", "addr", "add", f"{host.address}/24", "dev", host.leg)
            sh(*inside, "ip", "link", "set", host.leg, "up")
            sh(*inside, "ip", "link", "set", "lo", "up")
        # The driver's leg: the root namespace reaches every host, and only them.
        driver, on_switch = f"{self.prefix}driver", f"{self.prefix}drv-sw"
        sh("ip", "link", "add", driver, "type", "veth", "peer", "name", on_switch)
        sh("ip", "link", "set", on_switch, "netns", self.switch)
        sh(*switch, "ip", "link", "set", on_switch, "master", BRIDGE, "up")
        sh("ip", "addr", "add", f"{self.driver_address}/24", "dev", driver)
        sh("ip", "link", "set", driver, "up")

    def destroy(self) -> None:
        sh("ip", "link", "del", f"{self.prefix}driver", check=False)
        names = sh("ip", "netns", "list", check=False).stdout.split()
        for name in names:
            if name.startswith(self.prefix):
                sh("ip", "netns", "del", name, check=False)

    # Faults --------------------------------------------------------------------------

    def block(self, source: str, target: str) -> None:
        """Drop every packet from `source` to `target` (a black hole, not a reset)."""
        address = self.driver_address if source == "driver" else self[source].address
        sh(*self[target].run("iptables", "-I", "INPUT", "-s", address, "-j", "DROP"))
        self._blocked.add((source, target))

    def unblock(self, source: str, target: str) -> None:
        address = self.driver_address if source == "driver" else self[source].address
        sh(*self[target].run("iptables", "-D", "INPUT", "-s", address, "-j", "DROP"), check=False)
        self._blocked.discard((source, target))

    def shape(self, host: str, rate_kbit: int, loss_percent: float) -> None:
        """A slow, lossy link: packets leaving `host` queue behind `rate_kbit` (up to 2 s
        of latency) and `loss_percent` of those arriving are dropped."""
        leg = self[host].leg
        sh(
            *self[host].run(
                "tc", "qdisc", "replace", "dev", leg, "root", "tbf",
                "rate", f"{rate_kbit}kbit", "burst", "16kbit", "latency", "2000ms",
            )
        )  # fmt: skip
        sh(*self[host].run(*self._loss_rule("-I", loss_percent)))
        self._shaped[host] = loss_percent

    def _loss_rule(self, action: str, loss_percent: float) -> list[str]:
        return [
            "iptables", action, "INPUT", "-m", "statistic", "--mode", "random",
            "--probability", f"{loss_percent / 100:.3f}", "-j", "DROP",
        ]  # fmt: skip

    def unshape(self, host: str) -> None:
        sh(*self[host].run("tc", "qdisc", "del", "dev", self[host].leg, "root"), check=False)
        loss = self._shaped.pop(host, None)
        if loss is not None:
            sh(*self[host].run(*self._loss_rule("-D", loss)), check=False)

    def heal(self) -> None:
        """Lift every block and every shaping."""
        for source, target in list(self._blocked):
            self.unblock(source, target)
        for host in list(self._shaped):
            self.unshape(host)
