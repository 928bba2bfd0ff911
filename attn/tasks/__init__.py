"""Layer 3: where batches come from.

`base` (the `Task` protocol, `Vocabulary`, data streams, batch helpers), `synthetic` (copy, reverse,
sort), `seed` (the lecture notes' cue, two-cue and word-sense tagging tasks), `ner` (CoNLL files and
hashed features) with `conlleval` (entity scores), `translation` (parallel text, SentencePiece, BLEU),
`text` (plain text for a language model: characters or subwords, windows, samples)
and `registry` (the names a config may give `config.task.name`).
"""

from attn.tasks.base import SPECIALS, Batch, Task, Vocabulary
from attn.tasks.registry import TASK_NAMES, make_task
from attn.tasks.synthetic import SyntheticSeq2Seq

__all__ = ["SPECIALS", "TASK_NAMES", "Batch", "SyntheticSeq2Seq", "Task", "Vocabulary", "make_task"]
