"""``hf:NAME[:CONFIG]``: data read through Hugging Face ``datasets``, split among clients by Flower Datasets'
partitioners (``flwr-datasets``) or fedarena's own.

Sources (offline first: nothing is downloaded at run time)

- ``hf:parquet``, ``hf:csv``, ``hf:json`` with ``data.files`` (a path, a glob, or a comma-separated list of
  them): ``datasets.load_dataset(builder, data_files=...)``; ``hf:disk`` with ``data.files=DIR``: a
  ``save_to_disk`` directory (``datasets.load_from_disk``). A ``DatasetDict`` (several splits) is pooled:
  fedarena makes each client's own train/test split.
- ``hf:OWNER/NAME[:CONFIG]`` (a Hub dataset): loaded from the local Hugging Face cache only, with
  ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set for the load, so it never waits on the network; a dataset
  that is not cached is refused with one line saying how to download it and point ``data.files`` at it.
- ``datasets`` keeps its own Arrow cache of what it reads (``HF_DATASETS_CACHE``); fedarena itself unpickles
  nothing: columns are read as Arrow arrays, images and WAV audio are decoded from their bytes here.

Columns

- ``data.label``: the label column; unset: the first of :data:`LABEL_COLUMNS` present. Class labels become
  0..K-1: a ``ClassLabel`` column keeps its own K and indices (a value outside [0, K) is refused); any other
  column (integers, whole floats, strings, booleans) maps its distinct values, sorted, to 0..K-1. With
  ``data.tokens = "char"`` and a text feature, a label column of single characters is read in the character
  vocabulary instead (next-character data such as ``flwrlabs/shakespeare``), K = 80. The mapping is
  ``details["label_mapping"]`` (value -> index). ``data.label = "next"`` (the default for a text feature
  with no label column): next-token windows, see below.
- ``data.features``: one column, or a comma-separated list of scalar columns (stacked into a vector);
  unset: the first of :data:`FEATURE_COLUMNS` present, else every numeric column other than the label and
  ``data.partition_by``. By the column's type:
  - image (``datasets.Image``, or a struct of ``bytes``/``path``): decoded with Pillow, grayscale kept as one
    channel, anything else converted to RGB, resized to ``data.image_size`` squared when that is set
    (bilinear), float32 (C, H, W) scaled to [0, 1] (8-bit / 255, 16-bit / 65535);
  - audio (``datasets.Audio``, or such a struct holding a WAV file): 16 kHz PCM WAV decoded with the standard
    library's ``wave``, mixed to mono, cut or zero-padded to 1 s, then log-mel features (1, 40, 101):
    :func:`log_mel` (``torch.stft`` and a mel filterbank written here; torchaudio is not a dependency);
  - array (lists, ``Array2D``...): float32 as is (no scaling), every row the same shape;
  - scalar columns: float32 (N, k);
  - text (a string column), by ``data.tokens``:
    - ``char``: LEAF's 80-character vocabulary (the embedded ``shakespeare`` set's; other characters read
      as a space), int64 (N, seq_len) with ``data.seq_len`` (0: 80), keeping a text's last ``seq_len``
      characters and padding shorter ones on the left with spaces;
    - ``word``: lowercased words (``[a-z0-9']+`` runs), a vocabulary of index 0 = padding, 1 = unknown and
      the ``data.vocab_size`` most frequent words of the clients' train splits (ties alphabetical), int64
      (N, seq_len) (0: 25 words), last words kept, padded on the left with 0;
    - ``bow``: the same word vocabulary as a bag of words: float32 (N, vocab_size + 2), each text's word
      counts divided by its number of words (for mlr/mlp; fedarena's lstm predicts its own vocabulary,
      so it cannot classify word sequences into other classes).
  NaN or infinite features, nulls, and rows of different shapes are refused naming the column.
- Next-token windows (``data.label = "next"``, tokens ``char`` or ``word``): a client's text is its rows'
  texts in order (each ending with a newline for ``char``), encoded, cut by position (the first
  ``1 - test_fraction`` of its tokens train, the rest test, as the embedded Shakespeare set) and read as
  windows of ``seq_len`` tokens starting every ``seq_len`` tokens, each labelled with the token after it;
  K is the vocabulary's size.

Partitions (``data.partition``)

- ``natural`` (the default): flwr-datasets' ``NaturalIdPartitioner`` on ``data.partition_by``: one client per
  distinct value (sorted), client ids are the values (made safe as file names as the embedded Shakespeare
  set's: other characters than letters, digits, ``.``, ``_``, ``-`` become ``_``). Rows with no value are left out
  (``details["rows_without_id"]``), and so are clients too small for ``data.min_train`` + ``data.min_test``
  (``details["dropped_clients"]``): real natural partitions have long tails (most Sentiment140 users have a
  tweet or two). ``data.num_clients`` unset: every client that remains; K: the K with the most samples
  (ties: the smaller id), in id order. Neither depends on the seed.
- ``dirichlet``: flwr-datasets' ``DirichletPartitioner`` over the labels (``data.alpha``, self-balancing,
  ``min_partition_size`` = min_train + min_test), seeded from the run seed.
- ``shards``: flwr-datasets' ``ShardPartitioner`` (``data.shards_per_client`` label-sorted shards each),
  seeded from the run seed.
- ``iid``: flwr-datasets' ``IidPartitioner`` on the rows permuted by the run seed (it takes contiguous
  shards in row order and has no seed of its own; a file sorted by writer would otherwise give each client a
  few writers).
- ``quantity`` and ``feature``: fedarena's own (:mod:`.partition`), flwr-datasets having no seeded match.
Each client's rows are then split into its own train and test (``split_train_test``: ``data.test_fraction``,
seeded). The same spec, files and seed give the same clients. :func:`fedarena.data.load_federated` then moves
``data.val_fraction`` of each client's train rows into its validation split (:mod:`fedarena.data.validation`:
stratified by label where it can be, else at random; next-token windows: the last train windows, by position).
"""

from fedarena.data.hf.clients import load_hf
from fedarena.data.hf.columns import Columns
from fedarena.data.hf.features import log_mel, mel_filterbank
from fedarena.data.hf.source import offline, parse_name

__all__ = ["Columns", "load_hf", "log_mel", "mel_filterbank", "offline", "parse_name"]
