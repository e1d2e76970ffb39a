from .naive import delta_rnn_naive  # noqa: F401
