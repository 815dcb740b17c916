"""Learn: the ideas behind the lab in short, with formulas and small figures to play with in class."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import streamlit as st

# Run on its own (`streamlit run dashboard/views/learn.py`, or AppTest.from_file) only dashboard/views/
# is on sys.path, not the project root.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import figures  # noqa: E402

# One example used throughout: a teacher that is sure it sees a cat and thinks a dog is the next best.
CLASSES = ["cat", "dog", "fox", "car", "ship"]
TEACHER_LOGITS = [6.0, 4.0, 2.5, -1.0, -2.0]
STUDENT_LOGITS = [2.0, 2.5, 1.0, 0.5, 0.0]

st.title("Learn")
st.caption("Why ensembles help, why the lab averages logits, what temperature and alpha do, and when a "
           "distilled student is the better deal. Sources: Hinton, Vinyals, Dean 2015 (arXiv:1503.02531); "
           "Wood et al. 2023, A Unified Theory of Diversity in Ensemble Learning (arXiv:2301.03962).")

# Lazy tabs: only the open tab's content runs and reaches the browser (a tab click reruns the page), so
# the page is a quarter of the work to draw, and to tear down when the user switches to another page.
averaging, centroid, distill, choose = st.tabs(
    ["Averaging: variance, not bias", "Average logits", "Temperature and alpha", "Ensemble or student?"],
    key="learn_tab", on_change="rerun")

if averaging.open:
    with averaging:
        st.subheader("Averaging reduces variance, not bias")
        st.markdown(
            "Train the same network with different seeds and you get different predictors. Model each one as "
            "the truth plus a systematic error $b$ (the **bias**, the same for every seed) plus a seed-dependent "
            "error $\\varepsilon_i$ with variance $\\sigma^2$ and correlation $\\rho$ between two members:")
        st.latex(r"f_i = f^\ast + b + \varepsilon_i, \qquad \bar f = \frac{1}{M}\sum_{i=1}^{M} f_i")
        st.latex(r"\mathbb{E}[\bar f] - f^\ast = b, \qquad "
                 r"\operatorname{Var}[\bar f] = \sigma^2\Big(\rho + \frac{1-\rho}{M}\Big)")
        st.latex(r"\mathbb{E}\big[(\bar f - f^\ast)^2\big] = b^2 + \sigma^2\Big(\rho + \frac{1-\rho}{M}\Big)")
        st.markdown(
            "The average keeps the bias and divides the independent part of the variance by $M$. The shared part "
            "$\\rho\\sigma^2$ never goes away: members that make the same mistakes do not cancel them, so the "
            "gain flattens after a handful of members.")
        a, b, c, d = st.columns(4)
        members = a.slider("members M", 1, 20, 5, key="avg_members")
        bias = b.slider("bias b", -1.0, 1.0, 0.5, 0.1, key="avg_bias")
        noise = c.slider("noise σ", 0.1, 2.0, 1.0, 0.1, key="avg_noise")
        rho = d.slider("correlation ρ", 0.0, 1.0, 0.2, 0.05, key="avg_rho")
        st.plotly_chart(figures.averaging_demo(members, bias, noise, rho), width="stretch", key="averaging_demo")
        st.markdown(
            "**For classifiers** there is an exact analogue for cross-entropy under the logit average "
            "(Wood et al. 2023), with expectations over training draws $D$:")
        st.latex(r"\mathbb{E}_D\big[\ell(y, \bar q)\big] = "
                 r"\underbrace{\frac{1}{M}\sum_i \ell(y, q_i^\ast)}_{\text{average bias}} + "
                 r"\underbrace{\frac{1}{M}\sum_i \mathbb{E}_D\, \mathrm{KL}(q_i^\ast \,\|\, q_i)}"
                 r"_{\text{average variance}} - "
                 r"\underbrace{\mathbb{E}_D\, \frac{1}{M}\sum_i \mathrm{KL}(\bar q \,\|\, q_i)}"
                 r"_{\text{diversity} \;\geq\; 0}")
        st.markdown(
            "Bias and variance are the members' own; the ensemble only adds the diversity term, which is "
            "subtracted. Members trained the same way share one central model $q^\\ast$, so their ensemble has "
            "the same bias: averaging seeds attacks variance only. Different architectures can also differ in "
            "bias, and the diversity term then captures that too. Estimating bias and variance needs at least two "
            "seeds per member; the Diagnostics page shows the terms of a run.\n\n"
            "Under **majority vote** the 0/1 loss splits into *effects*, and the diversity-effect can be "
            "negative: a vote can be worse than its average member.")

if centroid.open:
    with centroid:
        st.subheader("Why the lab averages logits: the cross-entropy centroid")
        st.markdown("Averaging the members' logits and taking the softmax gives the **normalised geometric mean** "
                    "of their probabilities, since $\\log \\operatorname{softmax}(z)_k = z_k - \\log\\sum_j e^{z_j}$ "
                    "and the second term does not depend on the class:")
        st.latex(r"\operatorname{softmax}\Big(\frac{1}{M}\sum_i z_i\Big)_k = "
                 r"\frac{\prod_i q_{ik}^{1/M}}{\sum_j \prod_i q_{ij}^{1/M}} =: \bar q_k")
        st.markdown("It is the prediction closest to all members in the direction cross-entropy measures, the "
                    "**centroid**, and the ensemble's loss is then exactly the average member loss minus a "
                    "diversity that does not depend on the label:")
        st.latex(r"\bar q = \arg\min_q \frac{1}{M}\sum_i \mathrm{KL}(q \,\|\, q_i)")
        st.latex(r"-\log \bar q_y = \frac{1}{M}\sum_i \big(-\log q_{iy}\big) - "
                 r"\frac{1}{M}\sum_i \mathrm{KL}(\bar q \,\|\, q_i) \quad \text{for every label } y")
        st.markdown("Averaging probabilities, $\\frac{1}{M}\\sum_i q_i$, is the centroid of the squared (Brier) "
                    "loss and minimises $\\frac{1}{M}\\sum_i \\mathrm{KL}(q_i \\,\\|\\, q)$ instead; under "
                    "cross-entropy its gain over the members is a Jensen gap that depends on the label. "
                    "Two classes, three members; move their probabilities of class A:")
        cols = st.columns(3)
        probs = [col.slider(f"member {i + 1}: P(A)", 0.01, 0.99, v, 0.01, key=f"centroid_p{i}")
                 for i, (col, v) in enumerate(zip(cols, (0.9, 0.6, 0.2)))]
        st.plotly_chart(figures.centroid_demo(probs), width="stretch", key="centroid_demo")
        g = figures.centroids(probs)["geometric"]
        member_loss = sum(-math.log(p) for p in probs) / len(probs)
        diversity = -math.log(math.prod(p ** (1 / 3) for p in probs) + math.prod((1 - p) ** (1 / 3) for p in probs))
        st.markdown(f"If the label is A: ensemble loss $-\\log \\bar q_A$ = **{-math.log(g):.3f}** nats = "
                    f"average member loss {member_loss:.3f} − diversity {diversity:.3f}.")
        st.markdown(
            "**Other combiners** (`ensemble.scheme`; Setup shows each one's formula):\n\n"
            "| scheme | when it helps |\n|---|---|\n"
            "| mean_logit | the default: the cross-entropy centroid above |\n"
            "| mean_prob | the Brier centroid; keeps more mass on classes only some members like |\n"
            "| vote | hard labels only; for comparison |\n"
            "| learned | members of unequal quality: one weight each, fitted on val |\n"
            "| uncertainty | members sure on some examples and unsure on others: per-example weights |\n"
            "| stacking | enough val data to learn class-by-class corrections |\n"
            "| bradley_terry | members sure about different pairs of classes: weights per example and class pair |")
        st.markdown("**Bradley-Terry.** A member's probabilities are a vote on every pair of classes, "
                    "$q_{ij} = p_i / (p_i + p_j)$. Each vote counts by the inverse variance of its Beta "
                    "posterior, the votes are averaged per pair, and the strengths $s$ that best explain "
                    "the averaged votes are the ensemble's probabilities:")
        st.latex(r"P_{ij} = \sum_m w_{mij}\, q_{mij}, \quad "
                 r"w_{mij} \propto 1 / \operatorname{Var} \mathrm{Beta}(c\, q_{mij} + 1,\; c\,(1 - q_{mij}) + 1), "
                 r"\quad s = \arg\max_s \sum_{i \ne j} P_{ij} \log \frac{s_i}{s_i + s_j}")
        st.markdown("One member gives back its own probabilities ($q_{ij}$ is already a Bradley-Terry "
                    "preference with strengths $p$). The concentration $c$ is fitted on val; $c = 0$ counts "
                    "every vote the same, a large $c$ lets near-certain votes dominate.")

if distill.open:
    with distill:
        st.subheader("Distillation: temperature T and weight alpha")
        st.markdown("The student (logits $z_s$) learns from the teacher's softened probabilities and from the "
                    "labels (Hinton et al. 2015):")
        st.latex(r"\mathcal{L} = \alpha\, T^2\, \mathrm{KL}\big(p_T \,\|\, q_T\big) + (1 - \alpha)\, "
                 r"\mathrm{CE}\big(\operatorname{softmax}(z_s), y\big)")
        st.latex(r"p_T = \operatorname{softmax}(z_t / T), \qquad q_T = \operatorname{softmax}(z_s / T)")
        st.markdown(
            "- **T** softens both distributions. At $T = 1$ a confident teacher puts almost all its mass on one "
            "class; at higher $T$ the small probabilities it gives the other classes (a cat looks more like a dog "
            "than a car) become visible and carry information the label alone does not.\n"
            "- **alpha** balances imitating the teacher against fitting the labels: $\\alpha = 1$ is pure "
            "imitation, $\\alpha = 0$ is training from scratch. A common CIFAR-100 setting is $T = 4$, "
            "$\\alpha = 0.9$.\n"
            "- The KL sums over classes and averages over examples (`batchmean`); averaging over classes as well "
            "silently divides the term by the number of classes.")
        left, right = st.columns(2)
        temperature = left.slider("temperature T", 0.5, 20.0, 4.0, 0.5, key="kd_temperature")
        alpha = right.slider("alpha", 0.0, 1.0, 0.9, 0.05, key="kd_alpha")
        st.plotly_chart(figures.softmax_temperature(TEACHER_LOGITS, temperature, CLASSES), width="stretch",
                        key="softmax_temperature")
        parts = figures.kd_loss_parts(TEACHER_LOGITS, STUDENT_LOGITS, 0, temperature, alpha)
        m1, m2, m3 = st.columns(3)
        m1.metric("T² · KL (soft)", f"{parts['kd']:.3f}")
        m2.metric("CE (hard, label cat)", f"{parts['ce']:.3f}")
        m3.metric("loss", f"{parts['loss']:.3f}",
                  help="alpha * soft + (1 - alpha) * hard for one example: teacher logits "
                       f"{TEACHER_LOGITS}, student logits {STUDENT_LOGITS}")
        st.markdown("**Why $T^2$.** The gradient of the soft term on the student's logits is")
        st.latex(r"\frac{\partial}{\partial z_{s,k}} \mathrm{KL}(p_T \,\|\, q_T) = \frac{q_{T,k} - p_{T,k}}{T} "
                 r"\;\approx\; \frac{z_{s,k} - z_{t,k}}{K\,T^2}")
        st.markdown("for large $T$ ($K$ classes, both logit vectors with zero mean), so it shrinks like $1/T^2$. "
                    "Multiplying by $T^2$ keeps its size roughly constant, and alpha "
                    "keeps the same meaning whatever T is. At very high T distillation becomes matching the "
                    "logits themselves.")
        st.plotly_chart(figures.kd_gradient_scale(TEACHER_LOGITS, STUDENT_LOGITS, temperature), width="stretch",
                        key="kd_gradient_scale")

if choose.open:
    with choose:
        st.subheader("Ensemble or distilled student?")
        st.markdown(
            "| | ensemble of M teachers | distilled student |\n"
            "|---|---|---|\n"
            "| accuracy | usually the best; gains shrink after a few members | keeps part of the ensemble's gain |\n"
            "| inference time | M forward passes per image | one small forward pass |\n"
            "| memory | M sets of weights | one small set |\n"
            "| training | M trainings | the same M trainings, then one student (teacher logits cached once) |\n"
            "| uncertainty | members' disagreement is a free signal | one model, no disagreement to read |")
        st.markdown("How much of the gain the student keeps, reported as mean ± std over seeds:")
        st.latex(r"\text{gain recovery} = \frac{\text{acc}_{\text{KD student}} - \text{acc}_{\text{scratch student}}}"
                 r"{\text{acc}_{\text{ensemble}} - \text{acc}_{\text{scratch student}}}")
        st.markdown(
            "Reference points: speech recognition (Hinton et al. 2015), one model 58.9% frame accuracy, 10-model "
            "ensemble 61.1%, one distilled model 60.8%: over 80% of the gain kept. CIFAR-100 (CRD, ICLR 2020), "
            "teacher resnet32x4 79.42%, student resnet8x4 72.50% from scratch and 73.33% with KD, means over "
            "runs: single runs on small data are noise.\n\n"
            "**Pick the ensemble** when accuracy or uncertainty estimates matter most and serving M models is "
            "affordable (offline scoring, few queries). **Pick the student** when latency, memory or cost per "
            "query matter (phones, high traffic): you pay the teachers' training once and serve one small model.")
        st.markdown("**When does distillation pay?** Measured in this lab on digits: the same preset on a share "
                    "of the train split (val and test unchanged), two student widths, over teacher seeds.")
        saved = figures.read_kd_pays()
        if saved is None:
            st.info("No saved measurement yet: `python benchmarks/when_kd_pays.py` writes "
                    "assets/when_kd_pays.json, which this chart is drawn from.")
        else:
            st.plotly_chart(figures.kd_pays_curve(saved), width="stretch", key="kd_pays_curve")
            st.caption(figures.kd_pays_caption(saved))
        left, right = st.columns(2)
        m = left.slider("teachers M", 1, 10, 5, key="cost_members")
        fraction = right.slider("student size (fraction of one teacher)", 0.05, 1.0, 0.25, 0.05, key="cost_fraction")
        st.plotly_chart(figures.deployment_cost(m, fraction), width="stretch", key="deployment_cost")
