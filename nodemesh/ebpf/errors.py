"""The eBPF datapath's errors.

Every failure the agent can explain is a `DatapathError`; the CLI maps these
to one-line messages (no traceback) in exactly one place, `nodemesh.cmd.agent`.
"""

from __future__ import annotations


class DatapathError(Exception):
    """Base of every error raised by `nodemesh.ebpf`."""


class PrerequisiteMissing(DatapathError):
    """The kernel, a mount or the process's privileges cannot support the agent.

    `missing` says what is absent; `fix` says how an operator provides it.
    """

    def __init__(self, missing: str, fix: str) -> None:
        super().__init__(f"{missing}; {fix}")
        self.missing = missing
        self.fix = fix


class BuildError(DatapathError):
    """clang could not compile a BPF program."""


class LoadError(DatapathError):
    """libbpf or the kernel refused an object, a program or an attachment.

    `errno` is the kernel's answer (0 when unknown): EPERM means privileges,
    EACCES or EINVAL from a program load means the verifier said no.
    """

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class MapError(DatapathError):
    """A pinned map operation failed."""


class PlanError(DatapathError):
    """A datapath plan cannot be applied as it stands (nothing was written)."""


class PlanTooLarge(PlanError):
    """Applying the plan would overflow a map; refused before any write."""
