"""Secure aggregation: SecAgg (Bonawitz et al. 2017) with the SecAgg+ sparse graph (Bell et al. 2020).

Papers:
- K. Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
  ACM CCS 2017 (eprint 2017/281). Fig. 4, the honest-but-curious variant: rounds 0 AdvertiseKeys,
  1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking. Round 3 (ConsistencyCheck) and the
  signatures exist only for an actively malicious server and are NOT implemented here.
- J. Bell, K. Bonawitz, A. Gascon, T. Lepoint, M. Raykova, "Secure Single-Server Aggregation with
  (Poly)Logarithmic Overhead", ACM CCS 2020 (eprint 2020/704): each client shares secrets with and
  masks against only its k neighbours in a graph the server chooses (SecAgg+).

The package:
- `config`: `SecAggConfig` (t, bits, k, round id), the constants, `SecAggAbort`/`UnmaskRefused`;
- `crypto`: X25519, HKDF-SHA256, ChaCha20-Poly1305, the ChaCha20 PRG and the (OS or test) randomness;
- `messages`: the stage messages as frozen dataclasses with explicit byte layouts (never pickle), and
  `StageBytes`, the per-client byte counts of a round;
- `client`: `Client`, one client's stages, and `ClientSecrets`, its round secrets
  (`Client.export_secrets`/`Client.restore_secrets`) for a process that restarts between stages;
- `server`: `Server`, collecting, forwarding and unmasking, and the SecAgg+ Harary graph;
- `driver`: `run_stages`, the one stage driver over an ``exchange(stage, outgoing)`` function, used by the
  in-process simulation (`run_secagg`) and by Flower (`fedarena.flower.secagg_stages`).

The result is sum_{u in U3} x_u mod 2^bits over the clients U3 whose masked inputs arrived, exactly, or
``SecAggAbort`` and no aggregate when fewer than t clients (or, SecAgg+, neighbours) remain at any stage.
Keys, b_u, Shamir coefficients and the graph come from the OS, fresh per round; ``run_secagg(seed=...)``
switches to a deterministic stream for tests only (results carry ``seeded=True`` to be labelled).
"""

from fedarena.privacy.secagg.client import Client, ClientSecrets, check_input
from fedarena.privacy.secagg.config import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    MAX_ID,
    SHARE_BYTES,
    STAGES,
    VERSION,
    SecAggAbort,
    SecAggConfig,
    UnmaskRefused,
)
from fedarena.privacy.secagg.crypto import Randomness, expand_mask
from fedarena.privacy.secagg.driver import Exchange, SecAggResult, run_secagg, run_stages
from fedarena.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyList,
    MaskedInput,
    StageBytes,
    UnmaskRequest,
    UnmaskShares,
    message_bytes,
    sender_matches,
    sender_of,
)
from fedarena.privacy.secagg.server import Server, harary_graph

__all__ = [
    "CIPHERTEXT_BYTES", "KEY_BYTES", "MAX_ID", "SHARE_BYTES", "STAGES", "VERSION",
    "AdvertiseKeys", "Client", "ClientSecrets", "EncryptedShares", "Exchange", "KeyList", "MaskedInput",
    "Randomness", "SecAggAbort", "SecAggConfig", "SecAggResult", "Server", "StageBytes", "UnmaskRefused",
    "UnmaskRequest", "UnmaskShares", "check_input", "expand_mask", "harary_graph", "message_bytes", "run_secagg",
    "run_stages", "sender_matches", "sender_of",
]
