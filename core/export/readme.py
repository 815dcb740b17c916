"""README.md of an export folder: the model card (card.json) in words and tables, with how to load it."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(mean: Any, std: Any, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _mega(value: Any) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _usage(card: dict[str, Any]) -> list[str]:
    p = card["preprocessing"]
    files = {f for facts in card["formats"].values() for f in facts["files"]}
    shape = f"(N, {p['in_chans']}, {p['height']}, {p['width']})"
    lines = ["## Use it", "",
             f"Input: float32 {p['layout']} {shape}, any N (the batch axis is dynamic). Preprocessing, exactly as "
             f"in training: resize to {p['height']}x{p['width']} ({p['resize'].split(',')[0]}), then "
             f"`{p['formula']}` with mean {p['mean']} and std {p['std']} (0-1 scale). Output: "
             f"{card['model']['num_classes']} logits per image, classes in the order of `class_names`.", ""]
    lines += ["```python", "import numpy as np", f"mean = np.array({p['mean']}, np.float32).reshape(1, -1, 1, 1)",
              f"std = np.array({p['std']}, np.float32).reshape(1, -1, 1, 1)",
              f"x = (images_uint8.astype(np.float32) / 255 - mean) / std   # images_uint8: {shape} uint8"]
    if "model.onnx" in files:
        lines += ["", "import onnxruntime as ort",
                  "session = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])",
                  "logits = session.run(None, {'images': x})[0]"]
    if "model.int8.onnx" in files:
        lines += ["logits_int8 = ort.InferenceSession('model.int8.onnx').run(None, {'images': x})[0]"]
    if "config.json" in files:
        lines += ["", "import timm, torch",
                  "model = timm.create_model('local-dir:.', pretrained=True).eval()   # this folder, offline",
                  "logits = model(torch.from_numpy(x))"]
    if "model.pt2" in files:
        lines += ["", "import torch",
                  "program = torch.export.load('model.pt2')   # kdlab wrote it without pickled payloads",
                  "logits = program.module()(torch.from_numpy(x))"]
    lines += ["```", ""]
    return lines


def render_readme(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    m, src, metrics, data = card["model"], card["source"], card["metrics"], card["data"]
    size = f"width {m['width']}" if m.get("width") else "full width"
    lines = [f"# {m['name']}: {m['architecture']} ({size}), {m['num_classes']} classes of {data['name']}", ""]
    what = {"kd": "a distilled student", "scratch": "a student trained from scratch on hard labels (the baseline)"}
    role = what.get(m.get("student_kind") or "", "a teacher")
    lines += [f"{role.capitalize()} of kdlab {src['kind']} `{src['run_id'] or src['folder']}` ({src['name']}"
              + (f", point {src['trial']}" if src.get("trial") is not None else "") + f"), seed {m['seed']}. "
              f"Picked as {card['selection']['rule']}.", "",
              f"Parameters {_mega(m.get('params'))}, {_mega(m.get('flops'))}FLOPs per image. Exported "
              f"{card['created']}.", ""]
    lines += _usage(card)
    lines += ["## Accuracy (test split)", ""]
    rows = [["this model", _f(metrics["test_acc"]), _f(metrics["test_nll"]), metrics["measured"]]]
    for key, label in (("seeds", "its method over seeds"), ("scratch", "scratch baseline over seeds")):
        s = metrics.get(key)
        if s:
            rows.append([f"{label} (`{s['method']}`, n={s['n']})", _pm(s["test_acc_mean"], s["test_acc_std"]),
                         _pm(s["test_nll_mean"], s["test_nll_std"]), "mean +- std"])
    ens = metrics.get("ensemble")
    if ens:
        rows.append([f"teacher ensemble (`{ens['scheme']}`)", _f(ens["test_acc"]), _f(ens["test_nll"]), ""])
    lines += _table(["model", "test acc", "test NLL", "figures"], rows) + [""]
    rec = metrics.get("gain_recovery")
    if rec:
        spread = "" if rec.get("mean") is None else f"; per seed {_f(rec['mean'], 2)} +- {_f(rec['std'], 2)} " \
                                                    f"(n={rec['n']})"
        of_means = "undefined (the ensemble is not more accurate than the scratch student)" \
            if rec.get("of_means") is None else f"{rec['of_means']:.2f} of the means"
        lines += [f"Gain recovery (KD - scratch) / (ensemble - scratch): {of_means}{spread}. Val accuracy of "
                  f"this model {_f(metrics.get('val_acc'))}.", ""]
    d = card.get("distillation")
    if d:
        lines += ["## Distilled from", "",
                  f"Combiner `{d['combiner']}`; KD loss `{d['loss']}`, T = {d['temperature']}, alpha = {d['alpha']}, "
                  f"rounds {d['rounds']}, teaching `{(d['teaching'] or {}).get('mode')}` "
                  f"({(d['teaching'] or {}).get('detail')}).", ""]
        lines += _table(["teacher", "seed", "test acc", "test NLL", "params", "FLOPs", "weights SHA-256"],
                        [[f"{t['name']} (`{t['model']}`)", str(t["seed"]), _f(t["test_acc"]), _f(t["test_nll"]),
                          _mega(t["params"]), _mega(t["flops"]), f"`{t['weights_sha256']}`"]
                         for t in d["teachers"]]) + [""]
    lines += ["## Data", "", f"`{data['name']}`, {data['num_classes']} classes, {data['in_chans']} channel(s), "
              f"{data['image_size']} px. {data['split_hash']}:", ""]
    lines += _table(["split", "images", "SHA-256"], [[name, str(s["images"]), f"`{s['sha256']}`"]
                                                     for name, s in data["splits"].items()]) + [""]
    lines += ["## Speed", ""]
    lines += _table(["runtime", "precision", "batch-1 latency ms", f"img/s at batch {card['runtimes'][0]['batch']}"
                     if card["runtimes"] else "img/s", "threads", "device"],
                    [[r["runtime"], r["precision"], f"{r['latency_ms']:.3f}", f"{r['throughput']:.0f}",
                      str(r["threads"]), r["device"]] for r in card["runtimes"]]) + [""]
    lines += ["Medians over interleaved calls in one process (core.export.timing).", "", "## Verification", "",
              "Each file was reloaded in a fresh object and run on the whole test split against the PyTorch model "
              "(fp32 on the CPU).", ""]
    lines += _table(["format", "runtime", "max abs logit diff", "bound", "argmax agreement", "test acc", "passed"],
                    [[c["format"], f"{c['runtime']} {c['precision']}", f"{c['max_abs_logit_diff']:.2e}",
                      "-" if c["bound"] is None else f"{c['bound']:.0e}", f"{100 * c['argmax_agreement']:.2f}%",
                      _f(c["test_acc"]) + ("" if c.get("acc_change") is None else
                                           f" ({100 * c['acc_change']:+.2f} pts)"), "yes" if c["passed"] else "no"]
                     for c in card["verification"]]) + [""]
    if card.get("skipped"):
        lines += ["Not exported: " + "; ".join(f"{k}: {v}" for k, v in card["skipped"].items()), ""]
    q = card.get("quantization")
    if q:
        lines += [f"int8: onnxruntime static quantization ({q['format']}, {q['activations']} activations, "
                  f"{q['weights']} weights, per-channel {q['per_channel']}, {q['calibration']} calibration on "
                  f"{q['calibration_images']} train images).", ""]
    env = card["environment"]
    lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("executable",) and v),
              "", "## Reproduce", "", "```bash", card["reproduce"], "```", ""]
    config_file = card["reproduce"].split()[2]
    if card.get("reproduce_in_place"):
        lines += [f"(`{config_file}` is the run's config; from the run folder itself, "
                  f"`{card['reproduce_in_place']}` resumes without retraining.)", ""]
    else:
        lines += [f"(`{config_file}` is the sweep point's config: the same teachers and this point's students.)", ""]
    lines += [f"This folder was written by `{card['export_command']}`.", ""]
    return "\n".join(lines)
