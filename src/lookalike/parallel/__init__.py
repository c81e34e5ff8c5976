"""Several processes as one (torchrun): the world (ranks, start signal, parameter broadcast) and
the collectives that combine data statistics across ranks."""
