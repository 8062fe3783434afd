"""The report's Methods section: how every number and verdict was computed, with this study's
settings filled in."""

from __future__ import annotations

import math

from ..decide.decisions import CHANCE_BAND, FLAT, Decisions
from ..decide.results import StudyResults
from .html import Section, esc


def methods_section(res: StudyResults, dec: Decisions) -> Section:
    """The Methods section for ``res`` judged by ``dec`` (all user strings escaped)."""
    name = "AUC" if res.metric == "auc" else "Dice"
    ev = dec.evaluation
    m, am, sm = ev.margins(res.metric)
    ref = esc(ev.reference)
    mult = {"holm": "Holm's step-down procedure (family-wise error)",
            "bh": "the Benjamini–Hochberg step-up procedure (false-discovery rate); intervals of "
                  "decided questions at level 1 − Rα/K for R decisions (Benjamini &amp; Yekutieli 2005)",
            "none": "no adjustment (each question at α on its own — the family's error grows with its size)"
            }[ev.multiplicity]
    why = ("0.01 AUC (1 AUC point): inside the range of the gains transfer brings with little data "
           "in the Transfusion study (0.3–2.4 AUC points at 5,000 RETINA images) and above its "
           "full-data differences (0–0.3 points), so it separates &quot;matters&quot; from "
           "&quot;noise&quot;"
           if res.metric == "auc" else
           "0.02 Dice: below the median 95 % interval width of MICCAI 2023 segmentation results "
           "(0.03 Dice) and about twice the median gap between first and second place (0.01)")
    seq = ""
    if dec.sequential is not None:
        s = dec.sequential
        lv = ", ".join(f"{a:.4g}" for a in s.levels(ev.alpha))
        seq = f"""<p><b>Adaptive seeds.</b> The study ran with <code>--until-decided --max-seeds
{s.max_seeds}</code>: verdicts were read at {esc(', '.join(map(str, s.looks)))} seeds per cell (looks
fixed before the first run); after each look only the cells of undecided comparisons (the arm and
{ref}) got {s.batch} more seeds. A comparison decided at a look keeps that verdict, its interval,
its seeds and the family it was decided in: every look is replayed on the seeds each cell had at
that look, sanity gates included, so seeds added later for another question of the same arm are
not read for it, and each decision is recorded in the store when it is made. Look <i>l</i>
may spend α(t<sub>l</sub>) − α(t<sub>l−1</sub>) with the O'Brien–Fleming-type spending function
α(t) = 2 − 2Φ(z<sub>1−α/2</sub>/√t) (Lan &amp; DeMets 1983) at information fraction t = seeds /
{s.max_seeds}: here {esc(lv)}. Within a look the multiplicity adjustment runs over the questions
still open there (the family shrinks as questions are decided) at the look's alpha, which bounds
the false claims made at that look; across looks the union bound keeps the total at most α
whatever the correlation between looks. The error rate of this procedure, by simulation of ≥ 2,000
studies, is checked by the test suite (tests/test_decide.py, tests/test_decide_levels.py).</p>"""
    body = f"""<div class="method">
<p><b>Scores.</b> Final score: test {name} of the checkpoint with the best validation {name}.
Cells (model × arm × training-set size) are summarised by the mean and sample standard deviation
over seeds and a 95 % Student-t interval (n − 1 degrees of freedom).</p>
<p><b>Questions.</b> Every arm is compared with the reference arm <b>{ref}</b>
(<code>evaluation.reference</code>) on the same model, training-set size and seeds, paired by seed:
the final test {name} (margin ±{m:g}, <code>evaluation.margin</code>; default {why}), the area under
the validation curve (the trapezoidal area divided by the step span, i.e. the curve's time-averaged
{name}; margin ±{am:g}, <code>evaluation.area_margin</code>) and, for each absolute threshold
({esc(', '.join(f'{t:g}' for t in res.thresholds))}), the speed-up steps({ref}) / steps(arm) on the
log scale (margin {math.exp(sm):.2f}×, <code>evaluation.speed_margin</code>).</p>
<p><b>Verdicts.</b> Two tests per question on the paired differences: the two-sided paired t-test
of no difference, and two one-sided t-tests of a difference of at least the margin (TOST,
Schuirmann 1987). Five answers and <i>undecided</i>: <i>equivalent</i>: TOST rejects — the
1 − 2a interval lies inside ±margin; otherwise, when the difference test rejects — the 1 − a
interval excludes 0 (1× for speed-ups; an interval that spans 1× is never a speed-up) —
<i>better</i>/<i>worse by more than the margin</i> if that whole interval lies beyond +margin /
−margin (a difference shown to matter), else <i>better</i>/<i>worse by less than the margin</i>
(a real difference, not shown to reach the margin); <i>undecided</i>: neither test rejects, with
the reason. The interval shown is the one the verdict was read from, at its level. The
recommendations at the top rest only on a difference beyond the margin or on equivalence: an arm
better by less than the margin is named, never recommended.
A step count is known only to its evaluation interval e (the curve crossed the threshold somewhere
after the previous evaluation), so the standard deviation of a log speed-up is taken as at least
that of the rounding, √(mean over seeds of (e²/12)(1/s<sub>arm</sub>² + 1/s<sub>ref</sub>²)): equal step
counts on every seed are not read as certainty.
All {dec.family_size} questions with data form one family per report; each of the two tests is
adjusted over the family with {mult}, at α = {ev.alpha:g}. So false <i>better</i>/<i>worse</i>
claims and false <i>equivalent</i> claims are each controlled at α; for one question at most one
of the two can be false (a zero difference and a difference beyond the margin exclude each
other). A claim <i>by more than the margin</i> is read from the same interval; its family-wise error
when the true difference is at the margin is checked by simulation (tests/test_decide.py). DeLong's test (DeLong et al. 1988, fast midrank form of Sun &amp; Xu 2014; one-vs-rest macro
AUC with per-example influence for several classes) is shown beside the final-score questions:
it compares the two trained models of one seed on the shared test set, so its uncertainty is the
test set's, not the training randomness'; it does not enter the verdicts.</p>
<p><b>Sanity gates</b>, before any test: a study run with <code>--smoke</code>, or with one seed per
cell, is a pilot — no verdicts, no recommendation. A cell whose every run's test {name} is within
{CHANCE_BAND:g} of chance, or whose validation curve never moved (range &lt; {FLAT:g}), did not learn,
and its comparisons are undecided. A speed-up is undecided when some run never reached the
threshold (or started above it), a question with fewer than two paired seeds too.</p>
<p><b>Seed planning</b> (<code>transfuse study plan FILE</code> and the &quot;seeds needed&quot; column):
the smallest n for which, if the true mean difference δ and paired standard deviation σ are the
ones observed, a decisive verdict (any but undecided) has probability ≥ {ev.power:g} at level
a = α/K, the first step of the adjustment (α with no adjustment): the probability that the
difference test (two-sided at a) or TOST (each side at a) rejects, both counted at once — given
the sample SD s the mean is N(δ, σ²/n), and the verdict is undecided exactly when
max(0, m − t<sub>1−a</sub>s/√n) ≤ |mean| ≤ t<sub>1−a/2</sub>s/√n; that probability is averaged
over the χ²<sub>n−1</sub> distribution of s. A decision by more than the margin needs more.</p>
{seq}
<p><b>Convergence.</b> Steps to threshold: the first evaluated step whose validation {name} reaches
each absolute threshold and each fraction of the run's last validation {name}
({esc(', '.join(f'{t:g}' for t in res.relative))}).</p></div>"""
    return Section("Methods", body, "methods")
