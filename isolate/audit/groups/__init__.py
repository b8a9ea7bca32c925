"""The audit's cases, one module per group of attacks; importing this package registers them in order."""

from . import filesystem, fileapi, hostile_agent, privilege, crosstalk, resources, network, leaks, git  # noqa: F401, I001
