"""The ground-truth-judge testbed (paper §4): the ablations of §6 at toy scale, scored by a known judge."""
