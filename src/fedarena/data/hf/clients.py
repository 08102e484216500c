"""Rows into clients: flwr-datasets' partitioners (or fedarena's own), each client's train/test split, and
next-token windows (see the package docstring)."""



from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedarena.core.rng import derive_seed, numpy_rng
from fedarena.core.types import FedarenaError, FederatedData
from fedarena.data.hf.columns import CHAR_SEQ_LEN, NEXT, UNK, WORD_SEQ_LEN, Columns
from fedarena.data.hf.features import _kind, _labels, _words, features_of, resolve_columns, word_vocab
from fedarena.data.hf.source import load_source, offline
from fedarena.data.partition import add_feature_noise, quantity_partition, split_train_test
from fedarena.data.shakespeare import VOCAB, client_ids, encode, split_point, window_starts, windows
from fedarena.data.spec import HF_TOKENS as TOKENS
from fedarena.data.spec import DataConfig


def _flwr_parts(partitioner: Any, table: dict[str, Any]) -> list[np.ndarray]:
    """Row indices of every partition of a flwr-datasets partitioner over a small dataset of ``__row`` and the
    partitioning column."""
    import datasets

    partitioner.dataset = datasets.Dataset.from_dict(table)
    return [np.asarray(partitioner.load_partition(i)["__row"], dtype=np.int64)
            for i in range(partitioner.num_partitions)]


def natural_clients(ids: list[Any], column: str, where: str) -> tuple[list[str], list[np.ndarray], int]:
    """(client ids, row indices of each, rows without an id) by ``NaturalIdPartitioner`` on `column`."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    rows = np.array([i for i, v in enumerate(ids) if v is not None], dtype=np.int64)
    if not len(rows):
        raise FedarenaError(f"{where}: column '{column}' (data.partition_by) has no values")
    p = NaturalIdPartitioner(partition_by="__id")
    try:
        parts = _flwr_parts(p, {"__row": rows, "__id": [ids[i] for i in rows]})
    except TypeError as exc:
        raise FedarenaError(f"{where}: column '{column}' (data.partition_by) values cannot be ordered ({exc})") from None
    names = client_ids([str(p.partition_id_to_natural_id[i]) for i in range(len(parts))])  # safe as file names
    return list(names), parts, len(ids) - len(rows)


def split_clients(partition: str, labels: np.ndarray, num_clients: int, *, alpha: float, shards_per_client: int,
                  min_size: int, seed: int) -> list[np.ndarray]:
    """Row indices of `num_clients` clients by `partition` (iid, dirichlet, shards, quantity, feature)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    n = len(labels)
    if num_clients * min_size > n:
        raise FedarenaError(f"{n} samples cannot give each of {num_clients} clients at least {min_size} (data.min_train "
                            f"+ data.min_test); use at most {n // min_size} clients (data.num_clients)")
    flwr_seed = derive_seed(seed, f"partition:hf:{partition}") % 2**32
    rows = np.arange(n, dtype=np.int64)
    try:
        if partition in ("iid", "feature"):
            perm = numpy_rng(seed, "partition:hf:iid").permutation(n)
            parts = _flwr_parts(IidPartitioner(num_clients), {"__row": perm})
        elif partition == "dirichlet":
            parts = _flwr_parts(DirichletPartitioner(num_clients, "__label", alpha, min_partition_size=min_size,
                                                     self_balancing=True, seed=flwr_seed),
                                {"__row": rows, "__label": labels})
        elif partition == "shards":
            parts = _flwr_parts(ShardPartitioner(num_clients, "__label", num_shards_per_partition=shards_per_client,
                                                 seed=flwr_seed), {"__row": rows, "__label": labels})
        elif partition == "quantity":
            parts = quantity_partition(n, num_clients, alpha, min_size, seed)
        else:
            raise FedarenaError(f"partition '{partition}' cannot be used with hf data")
    except ValueError as exc:
        raise FedarenaError(f"{partition} partition of {n} samples into {num_clients} clients: {exc}") from None
    for i, part in enumerate(parts):
        if len(part) < min_size:
            raise FedarenaError(f"{partition} partition gives client {i} {len(part)} samples, fewer than {min_size} "
                                "(data.min_train + data.min_test); use fewer clients or another partition")
    return parts


def _keep(names: list[str], parts: list[np.ndarray], sizes: list[int], least: int, num_clients: int | None,
          where: str) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Natural clients with at least `least` samples; the `num_clients` largest of them (ties: id order)."""
    kept = [i for i, s in enumerate(sizes) if s >= least]
    dropped = [names[i] for i, s in enumerate(sizes) if s < least]
    if not kept:
        raise FedarenaError(f"{where}: no client has the {least} samples that data.min_train + data.min_test need")
    if num_clients is not None:
        if num_clients > len(kept):
            raise FedarenaError(f"data.num_clients ({num_clients}) exceeds the {len(kept)} clients of {where} with at "
                                f"least {least} samples; lower it, or leave it unset for all of them")
        kept = sorted(sorted(kept, key=lambda i: (-sizes[i], i))[:num_clients])
    return [names[i] for i in kept], [parts[i] for i in kept], dropped


# ---------------------------------------------------------------- the loader


def _offsets(parts: list[np.ndarray]) -> tuple[int, ...]:
    return (0, *(int(o) for o in np.cumsum([len(p) for p in parts])))


def load_hf(name: str, cols: Columns, *, partition: str = "natural", num_clients: int | None = None,
            alpha: float = 0.3, shards_per_client: int = 2, feature_sigma: float = 0.1, test_fraction: float = 0.25,
            min_train: int = 5, min_test: int = 2, seed: int = 0) -> FederatedData:
    """The federated data of ``hf:NAME`` (see the module docstring). Raises :class:`FedarenaError` naming the
    file or column on bad input."""
    with offline():
        return _load(name, cols, partition, num_clients, alpha, shards_per_client, feature_sigma, test_fraction,
                     min_train, min_test, seed)


def _load(name: str, cols: Columns, partition: str, num_clients: int | None, alpha: float, shards_per_client: int,
          feature_sigma: float, test_fraction: float, min_train: int, min_test: int, seed: int) -> FederatedData:
    if cols.tokens not in TOKENS:
        raise FedarenaError(f"unknown data.tokens '{cols.tokens}'; valid: {', '.join(TOKENS)}")
    ds, where = load_source(name, cols.files)
    if len(ds) == 0:
        raise FedarenaError(f"{where}: no rows")
    features, label = resolve_columns(ds, cols, where)
    if partition == "natural" and not cols.partition_by:
        raise FedarenaError("--partition natural needs data.partition_by, the column whose values are the clients")
    kind = _kind(ds.features[features[0]], ds.data.column(features[0])) if len(features) == 1 else "scalar"
    if label == NEXT and (kind != "text" or cols.tokens == "bow"):
        raise FedarenaError(f"{where}: data.label=next (next-token windows) needs a text feature and data.tokens "
                            f"char or word; column '{features[0]}' is {ds.features[features[0]]}")
    if partition == "feature" and (kind == "text" and cols.tokens != "bow"):
        raise FedarenaError("--partition feature adds noise to float features; token indices cannot take it")
    split = replace(DataConfig(), test_fraction=test_fraction, min_train=min_train, min_test=min_test)
    least = min_train + min_test
    details: dict[str, Any] = {"source": name, "files": cols.files, "features": ",".join(features), "label": label,
                               "partition_by": cols.partition_by, "test_fraction": test_fraction}
    if kind == "text":
        details["tokens"] = cols.tokens
    if label == NEXT:
        return _next_token(ds, features[0], cols, partition, num_clients, split, details, where, seed)
    y, k, mapping = _labels(ds, label, cols.tokens == "char" and kind == "text", where)
    details["label_mapping"] = mapping if len(mapping) <= 1000 else f"{len(mapping)} classes"
    if partition == "natural":
        names, parts, missing = natural_clients(ds.data.column(cols.partition_by).to_pylist(), cols.partition_by, where)
        names, parts, dropped = _keep(names, parts, [len(p) for p in parts], least, num_clients, where)
        details |= {"rows_without_id": missing, "dropped_clients": len(dropped)}
    else:
        parts = split_clients(partition, y, num_clients or 20, alpha=alpha, shards_per_client=shards_per_client,
                              min_size=least, seed=seed)
        names = [str(i) for i in range(len(parts))]
        details |= {"alpha": alpha} if partition in ("dirichlet", "quantity") else {}
        details |= {"shards_per_client": shards_per_client} if partition == "shards" else {}
        details |= {"feature_sigma": feature_sigma} if partition == "feature" else {}
    splits = [split_train_test(p, i, split, seed) for i, p in enumerate(parts)]
    train, test = [tr for tr, _ in splits], [te for _, te in splits]
    train_rows, test_rows = np.concatenate(train), np.concatenate(test)
    vocab: dict[str, int] = {}
    if kind == "text" and cols.tokens != "char":
        texts = ds.data.column(features[0]).take(train_rows)
        if texts.null_count:  # checked here as features_of checks it: the vocabulary is built first
            raise FedarenaError(f"{where}: column '{features[0]}' has {texts.null_count} missing values")
        vocab = word_vocab(texts.to_pylist(), cols.vocab_size)
        details["vocabulary_size"] = len(vocab) + 2
    x_train = features_of(ds, features, train_rows, cols, vocab, where)
    x_test = features_of(ds, features, test_rows, cols, vocab, where)
    train_offsets, test_offsets = _offsets(train), _offsets(test)
    if partition == "feature":
        add_feature_noise(x_train, train_offsets, feature_sigma, seed, "train")
        add_feature_noise(x_test, test_offsets, feature_sigma, seed, "test")
    return FederatedData(
        name=name, client_ids=tuple(names),
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)), y_train=torch.from_numpy(y[train_rows]),
        train_offsets=train_offsets,
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)), y_test=torch.from_numpy(y[test_rows]),
        test_offsets=test_offsets, num_classes=k, partition=partition, details=details,
    )


def _next_token(ds: Any, column: str, cols: Columns, partition: str, num_clients: int | None, split: DataConfig,
                details: dict[str, Any], where: str, seed: int) -> FederatedData:
    """Next-token windows of each client's text (see the module docstring)."""
    if partition not in ("natural", "iid", "quantity"):
        raise FedarenaError(f"--partition {partition} needs class labels; next-token windows take natural, iid or "
                            "quantity")
    texts = ds.data.column(column)
    if texts.null_count:
        raise FedarenaError(f"{where}: column '{column}' has {texts.null_count} missing values")
    values = texts.to_pylist()
    if partition == "natural":
        names, parts, missing = natural_clients(ds.data.column(cols.partition_by).to_pylist(), cols.partition_by, where)
        details["rows_without_id"] = missing
    else:
        parts = split_clients(partition, np.zeros(len(values), dtype=np.int64), num_clients or 20, alpha=0.3,
                              shards_per_client=1, min_size=1, seed=seed)
        parts = [np.sort(p) for p in parts]  # a client's text in row order
        names = [str(i) for i in range(len(parts))]
    seq_len = cols.seq_len or (CHAR_SEQ_LEN if cols.tokens == "char" else WORD_SEQ_LEN)
    if cols.tokens == "char":
        streams: list[Any] = ["".join(values[r] + "\n" for r in p) for p in parts]
        cuts = [split_point(len(s), split.test_fraction) for s in streams]
        codes = [encode(s) for s in streams]
        k = len(VOCAB)
    else:
        streams = [[w for r in p for w in _words(values[r])] for p in parts]
        cuts = [split_point(len(s), split.test_fraction) for s in streams]
        counts = Counter(w for s, c in zip(streams, cuts) for w in s[:c])
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: cols.vocab_size]
        vocab = {w: i + 2 for i, w in enumerate(ranked)}
        codes = [np.array([vocab.get(w, UNK) for w in s], dtype=np.int64) for s in streams]
        k = len(vocab) + 2
        details["vocabulary_size"] = k
    starts = [(window_starts(0, c, seq_len, seq_len), window_starts(c, len(s), seq_len, seq_len))
              for s, c in zip(codes, cuts)]
    sizes = [min(len(tr) - split.min_train, len(te) - split.min_test) for tr, te in starts]
    if partition == "natural":
        total = [len(tr) + len(te) if size >= 0 else -1 for (tr, te), size in zip(starts, sizes)]
        names, kept, dropped = _keep(names, [np.array([i]) for i in range(len(names))], total, 0, num_clients, where)
        chosen = [int(p[0]) for p in kept]
        details["dropped_clients"] = len(dropped)
    else:
        bad = [i for i, s in enumerate(sizes) if s < 0]
        if bad:
            raise FedarenaError(f"{partition} partition gives client {bad[0]} fewer than data.min_train "
                                f"{split.min_train} train or data.min_test {split.min_test} test windows of {seq_len} "
                                "tokens; use fewer clients")
        chosen = list(range(len(parts)))
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    for i in chosen:
        for j, s in enumerate(("train", "test")):
            x, y = windows(codes[i], starts[i][j], seq_len)
            xs[s].append(x)
            ys[s].append(y)
    details["seq_len"] = seq_len
    return FederatedData(
        name=details["source"], client_ids=tuple(names),
        x_train=torch.from_numpy(np.concatenate(xs["train"])), y_train=torch.from_numpy(np.concatenate(ys["train"])),
        train_offsets=_offsets(ys["train"]),
        x_test=torch.from_numpy(np.concatenate(xs["test"])), y_test=torch.from_numpy(np.concatenate(ys["test"])),
        test_offsets=_offsets(ys["test"]), num_classes=k, partition=partition, details=details,
    )


