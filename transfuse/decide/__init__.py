"""The statistics of a study, apart from running it: paired intervals, TOST and difference tests,
Holm/BH, the five verdicts at a margin, sequential looks, convergence questions, study results.

Imports nothing above the run store (``transfuse.store``, ``transfuse.config``, ``transfuse.errors``
and ``transfuse.arms``), so ``report/`` and ``analysis/`` depend on it without the runner.

- :mod:`.stats` — summaries, paired t, DeLong;
- :mod:`.verdicts` — the decision rule, multiplicity, alpha spending, power and seeds needed;
- :mod:`.design` — the margin the current seeds decide, and the margin a plan can;
- :mod:`.evaluation` — the study's ``evaluation:`` settings and sequential looks;
- :mod:`.selection` — which stored runs are the study's current cells;
- :mod:`.results` / :mod:`.convergence` — a stored study's cells, seeds and curves;
- :mod:`.decisions` / :mod:`.recommend` — the questions, their verdicts and the recommendations.
"""
