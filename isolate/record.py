"""What a sandbox was created with, kept beside its files as meta.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import rootfs
from .net.policy import NetworkPolicy
from .types import Limits


@dataclass(frozen=True)
class SandboxRecord:
    """What a sandbox was created with; kept in meta.json."""

    name: str
    uid: int
    backend: str = "nsjail"
    image: str = rootfs.HOST_IMAGE
    policy: str = "default"
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    exposed_ports: tuple[int, ...] = ()

    def to_json(self) -> str:
        data = {**self.__dict__, "limits": self.limits.to_dict(), "network": self.network.to_dict(), "exposed_ports": list(self.exposed_ports)}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SandboxRecord:
        data = json.loads(text)
        data["limits"] = Limits.from_dict(data.get("limits", {}))
        data["network"] = NetworkPolicy.parse(data.get("network"))
        data["exposed_ports"] = tuple(int(port) for port in data.get("exposed_ports", ()))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
