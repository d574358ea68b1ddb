"""SimPO preference training (reference-free, length-normalised), faithful to the official
princeton-nlp/SimPO trainer; see docs/training.md."""

from simpo_q.train.loss import naive_sequence_logps, sequence_logps, simpo_loss

__all__ = ["naive_sequence_logps", "sequence_logps", "simpo_loss"]
