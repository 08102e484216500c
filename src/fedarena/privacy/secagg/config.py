"""Settings, constants and errors of one SecAgg round (Bonawitz et al., ACM CCS 2017; SecAgg+ of Bell et al.,
ACM CCS 2020): the threshold t, the modulus 2^bits, the SecAgg+ degree k and the round id."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedarena.core.types import FedarenaError
from fedarena.privacy import shamir
from fedarena.privacy.fixedpoint import _check_bits

log = logging.getLogger("fedarena.privacy.secagg")

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmasking")  # Fig. 4 rounds 0, 1, 2, 4
VERSION = b"fedarena-secagg/1"
KEY_BYTES = 32
SHARE_BYTES = shamir.share_size(KEY_BYTES)
CIPHERTEXT_BYTES = 2 * SHARE_BYTES + 16  # two shares + Poly1305 tag
MAX_ID = (1 << 32) - 2  # ids travel as uint32 and Shamir points are id + 1


class SecAggAbort(FedarenaError):
    """The secure-aggregation round cannot finish (too few clients, bad message): no aggregate."""


class UnmaskRefused(SecAggAbort):
    """A client refused the server's unmask request because it could reveal an input."""


def abort(message: str, cls: type[SecAggAbort] = SecAggAbort) -> SecAggAbort:
    """The exception to raise (logged once here): the round ends without an aggregate."""
    log.warning("secagg round aborted: %s", message)
    return cls(f"secagg abort: {message}")


@dataclass(frozen=True)
class SecAggConfig:
    """Threshold t, modulus 2^bits, SecAgg+ degree k (None: complete graph) and the round id."""

    threshold: int
    bits: int = 32
    neighbours: int | None = None
    round_id: int = 0

    def group_size(self, n_clients: int) -> int:
        """Holders of each client's shares (the client and its neighbours) among n clients."""
        if self.neighbours is None or self.neighbours >= n_clients - 1:
            return n_clients
        return self.neighbours + 1

    def check_fields(self) -> None:
        """Refuse, naming the value, a setting that is wrong whatever the number of clients."""
        _check_bits(self.bits)
        if not 0 <= self.round_id < 1 << 32:
            raise FedarenaError(f"secagg round_id must be in [0, 2^32), got {self.round_id}")
        if self.neighbours is not None and (self.neighbours < 2 or self.neighbours % 2):
            raise FedarenaError(
                f"secagg neighbours must be an even number >= 2 (Harary graph degree), got {self.neighbours}"
            )

    def validate(self, n_clients: int) -> None:
        """Refuse, naming the value, any setting that cannot run with ``n_clients`` clients."""
        self.check_fields()
        group = self.group_size(n_clients)
        if not 2 <= self.threshold <= group:
            raise FedarenaError(
                f"secagg threshold must be in [2, {group}] for {n_clients} clients "
                f"(neighbourhood of {group} incl. the client), got {self.threshold}"
            )
